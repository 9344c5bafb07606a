"""Trust review of evaluation and reports: methods that cannot be paired, near-duplicates of
any feature scale, and data checks made from the store the rows name."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_report import make_row

from featpipe.evaluate.leakage import check_data
from featpipe.report import ids_sha256
from featpipe.report.advice import recommendation
from featpipe.report.summary import summarize


def _unpairable(case: str) -> list[dict]:
    """A probe and a better fine-tune (on validation) that tested the same 120 images, but in
    another order, or on another seed only (a `featpipe finetune --seed 3` into the run)."""
    probe = make_row("toy/logreg@pooled", acc=0.80)
    tune = make_row("toy/finetune:full", "finetune", acc=0.81, mode="full", fit_seconds=60)
    probe["val_accuracy"], tune["val_accuracy"] = 0.80, 0.85
    if case == "order":
        tune["test"]["ids_sha256"] = ids_sha256(map(str, reversed(range(120))))
    else:
        tune["seed"] = 3
    return [probe, tune]


@pytest.mark.parametrize("case", ["order", "seed"])
def test_methods_that_cannot_be_paired_are_not_called_untied(case):
    # Rows keep only a hash of their test ids: images in another order cannot be matched up,
    # so no comparison is made. The recommendation said "No other method is statistically
    # tied with it on test" of methods it never compared, and left out whether fine-tuning
    # paid for its cost without a word.
    text = " ".join(recommendation(summarize(_unpairable(case)), n_boot=100))
    assert text.startswith("Use toy/finetune:full")
    assert "No other method is statistically tied" not in text
    assert (
        "toy/logreg@pooled could not be compared with it (no seed of both tested the same "
        "images in the same order)."
    ) in text
    assert (
        "Whether fine-tuning paid for its cost is not known: the best fine-tune and the best "
        "probe on validation, toy/finetune:full and toy/logreg@pooled, could not be compared"
    ) in text
    # Paired as they should be, the usual sentences come back.
    rows = _unpairable(case)
    rows[1]["test"]["ids_sha256"], rows[1]["seed"] = rows[0]["test"]["ids_sha256"], 0
    text = " ".join(recommendation(summarize(rows), n_boot=100))
    assert "could not be compared" not in text and "Fine-tuning did not pay" in text


@pytest.mark.parametrize("scale", [0.0, 1e-21, 1e21])
def test_test_images_with_the_same_features_as_a_train_image_are_found_at_any_scale(scale):
    # Near-duplicates divided each row by its norm, floored at 1e-12: rows of all-zero
    # features (the same features: the model cannot tell the images apart) had cosine 0, as
    # did rows whose squares underflow (1e-21) or overflow (1e21) in float32.
    ids = ["same", "other", "val", "copy", "distinct"]
    splits = ["train", "train", "val", "test", "test"]
    features = np.array(
        [[1, 2, 3, 4], [4, 0, 1, 0], [0, 1, 0, 0], [1, 2, 3, 4], [0, 0, 5, 1]], np.float32
    )
    features[[0, 3]] *= scale
    checks = check_data(ids, np.zeros(5, int), splits, ["x"], features=features)
    assert checks.near == [["copy", "same", pytest.approx(1.0, abs=1e-6)]]
    # Distinct images stay apart: a zero row is no near-duplicate of a row with features.
    features[0] = [1, 2, 3, 4]
    checks = check_data(ids, np.zeros(5, int), splits, ["x"], features=features)
    assert checks.near == ([] if scale == 0 else [["copy", "same", pytest.approx(1.0, 1e-6)]])


def test_data_checks_use_only_the_store_the_rows_were_computed_on(tmp_path):
    # The data checks opened whatever file was at a probe row's store path: a store
    # re-extracted there on other data (`featpipe extract ... --overwrite`) was checked as
    # the run's data, and a damaged file there stopped the whole report with a store error.
    import shutil

    from test_report_advice import source_with_duplicates

    from featpipe.data import ArraySource
    from featpipe.extract import extract
    from featpipe.report import write_report

    store = extract(source_with_duplicates(), "toy", ["pooled"], cache_dir=tmp_path, progress=False)
    row = make_row("toy/logreg@pooled", n=8)
    where = tmp_path / "features.h5"
    row["provenance"]["store"] = {"path": str(where), "key": store.key}
    shutil.copy(store.path, where)
    assert "## Data checks" in write_report(tmp_path / "a", [row])["report.md"].read_text()

    rng = np.random.default_rng(1)  # other images, no duplicates: another key
    other = ArraySource(
        rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8), np.arange(20) % 2, name="other"
    )
    shutil.copy(extract(other, "toy", ["pooled"], cache_dir=tmp_path, progress=False).path, where)
    md = write_report(tmp_path / "b", [row])["report.md"].read_text()
    assert "## Data checks" not in md and "other/" not in md
    where.write_bytes(b"damaged")
    md = write_report(tmp_path / "c", [row])["report.md"].read_text()
    assert "## Data checks" not in md and "Use toy/logreg@pooled" in md


def test_an_image_copied_many_times_is_shown_with_its_test_copy():
    # Many copies of one image (all-black frames): the example listed the group's first three
    # members, here three train images, so the finding never named the test image that leaks.
    ids = [f"black{i}" for i in range(5)] + ["t0", "t1", "v0"]
    splits = ["train"] * 5 + ["test", "test", "val"]
    hashes = ["black"] * 6 + ["other", "black"]
    checks = check_data(ids, np.zeros(8, int), splits, ["x"], hashes=hashes)
    assert checks.duplicated_test == {"t0"}
    assert "Examples: black0 (train) = t0 (test) = v0 (val) (7 copies)." in checks.lines()[0]
    two = check_data(ids[5:], np.zeros(3, int), splits[5:], ["x"], hashes=["a", "b", "a"])
    assert "Examples: t0 (test) = v0 (val)." in two.lines()[0]  # no count: each one shown


def test_the_table_of_all_pairs_says_what_an_empty_cell_means():
    # Methods that could not be paired left empty cells beside the differences, unexplained.
    from featpipe.report.content import build_document
    from featpipe.report.markdown import render_markdown

    rows = [*_unpairable("order"), make_row("toy/knn@pooled", acc=0.6, head="knn")]
    md = render_markdown(build_document(rows, n_boot=50))
    appendix = md[md.index("## Appendix: All paired comparisons") :]
    assert (
        "An empty cell: the two could not be compared (no seed of both tested the same images "
        "in the same order)."
    ) in appendix
    rows[1]["test"]["ids_sha256"] = rows[0]["test"]["ids_sha256"]  # every pair compared
    assert "An empty cell" not in render_markdown(build_document(rows, n_boot=50))


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("val_accuracy", float("nan"), "'val_accuracy' is nan"),
        (
            "history",
            [{"epoch": 1}, {"epoch": 2, "val_loss": float("inf")}],
            "'history[1].val_loss'",
        ),
    ],
)
def test_a_row_holding_nan_or_infinity_is_refused_naming_the_field(tmp_path, field, value, named):
    # append_result (public: rows of one's own) refused such a row with json's bare
    # "ValueError: Out of range float values are not JSON compliant", naming nothing.
    from featpipe.report import ResultsFormatError, append_result, write_results

    row = make_row("toy/logreg@pooled")
    row[field] = value
    with pytest.raises(ResultsFormatError, match=re.escape(named)) as caught:
        append_result(tmp_path / "results.jsonl", row)
    assert "new row for 'toy/logreg@pooled'" in str(caught.value)
    assert "write null for a value that is not known" in str(caught.value)
    assert not (tmp_path / "results.jsonl").exists()
    # write_results wrote it as NaN or Infinity, which no JSON reader but Python's takes.
    with pytest.raises(ResultsFormatError, match=re.escape(named)):
        write_results(tmp_path / "results.jsonl", [make_row("toy/knn@pooled"), row])
    assert not (tmp_path / "results.jsonl").exists()


def test_near_duplicates_hold_a_bounded_block_of_similarities():
    # Each block of 1024 test rows was compared with every train and val row at once: 1024 x
    # 1.3 million cosines (5 GB) on ImageNet, at the end of a run, for its report.
    import tracemalloc

    rng = np.random.default_rng(0)
    n_ref = 40_000
    features = rng.normal(size=(n_ref + 1030, 4)).astype(np.float32)
    features[n_ref + 1029] = features[123] * 3  # the last test row copies train row 123
    splits = ["train"] * n_ref + ["test"] * 1030
    ids = [str(i) for i in range(len(splits))]
    tracemalloc.start()
    try:
        checks = check_data(ids, np.zeros(len(ids), int), splits, ["x"], features=features)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20  # 1024 x 40,000 float32 cosines are 156 MiB
    assert [str(n_ref + 1029), "123", pytest.approx(1.0)] in checks.near
    # The same findings as all similarities at once (the first of equals on ties).
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit[n_ref:] @ unit[:n_ref].T
    expected = {
        (str(n_ref + i), str(j)) for i, j in enumerate(sims.argmax(1)) if sims[i, j] >= 0.99
    }
    assert {(t, r) for t, r, _ in checks.near} == expected


def test_a_deterministic_method_is_compared_with_any_seed_of_another():
    # A deterministic probe runs once, with the first seed: seeds change nothing for it. A
    # fine-tune whose first seed did not finish (or was recorded with another --seed) was
    # compared with nothing, though the probe's one row stands for every seed.
    from featpipe.report.summary import compare_pair

    knn = make_row("toy/knn@pooled", acc=0.8, head="knn")
    knn["deterministic"], knn["val_accuracy"] = True, 0.80
    tunes = [
        make_row("toy/finetune:full", "finetune", acc=0.9, seed=s, mode="full") for s in (1, 2)
    ]
    for row in tunes:
        row["val_accuracy"] = 0.85
    probe, tune = summarize([knn, *tunes])
    for a, b in ((tune, probe), (probe, tune)):
        paired = compare_pair(a, b, n_boot=100)
        assert paired is not None and paired.seed == 1  # the fine-tune's seed, not the probe's
    text = " ".join(recommendation([probe, tune], n_boot=100))
    assert "could not be compared" not in text and "(test, seed 1)" in text
    # Two methods with seeds both ran still pair on a seed of both only.
    other = summarize([make_row("toy/logreg@pooled", seed=0), *tunes])
    assert compare_pair(other[1], other[0], n_boot=100) is None


@pytest.mark.parametrize("val", [None, float("nan")])
def test_a_tied_cheaper_method_without_a_validation_score_is_not_said_to_score_0(val):
    # "validation 0.0 %" was quoted for a method that has no validation score.
    chosen = make_row("toy/logreg@pooled", acc=0.8, fit_seconds=5.0)
    cheap = make_row("toy/knn@pooled", acc=0.8, head="knn", fit_seconds=0.1)
    cheap["val_accuracy"] = val
    text = recommendation(summarize([chosen, cheap]), n_boot=100)[0]
    assert "The cheapest of these is toy/knn@pooled" in text
    assert "validation 0.0 %" not in text and "included; no validation score, 80.8 % on" in text


def test_a_p_value_that_underflows_is_not_printed_as_0():
    # 4,000 against 1,000 discordant pairs (a large test set): the chi-square tail underflows
    # to 0.0 and the sentence read "McNemar p=0.0", a p-value no test gives.
    from featpipe.evaluate import compare

    a = np.r_[np.ones(4000, bool), np.zeros(1000, bool), np.ones(5000, bool)]
    b = np.r_[np.zeros(4000, bool), np.ones(1000, bool), np.ones(5000, bool)]
    comparison = compare("A", a, "B", b, n_boot=0)
    assert comparison.mcnemar.p_value == 0.0 and comparison.significant
    assert comparison.sentence() == "A beats B by 30.0 points (McNemar p<1e-300)"
    small = compare("A", a[:200], "B", b[:200], n_boot=0)  # p = 5.7e-45, printed as it is
    assert "(McNemar p=5.7e-45)" in small.sentence()
