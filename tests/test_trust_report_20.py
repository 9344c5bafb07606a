"""Report wording: the usual layer advice keeps one decimal, and leakage counts agree in
number with their verbs."""

from __future__ import annotations

from test_report import make_row

from featpipe.evaluate.leakage import DataChecks
from featpipe.report.advice import recommendation
from featpipe.report.summary import summarize


def _layer_text(rows: list[dict]) -> str:
    return " ".join(recommendation(summarize(rows), n_boot=200))


def _probe(layer: str, val: float) -> dict:
    row = make_row(f"toy/logreg@{layer}", acc=0.8, layer=layer, n=300)
    row["val_accuracy"] = val
    return row


def test_a_final_layer_best_on_validation_shows_one_decimal():
    # Before: "validation 76.6800 %": the best layer was told apart from itself.
    text = _layer_text([_probe("stage1", 0.70), _probe("pooled", 0.7668)])
    assert "The best layer on validation is pooled (toy/logreg@pooled, validation 76.7 %," in text
    assert "no intermediate layer beat the final one" in text


def test_layers_without_the_final_one_show_one_decimal():
    # Before: "validation 76.6800 %" when no final layer was run.
    text = _layer_text([_probe("stage1", 0.70), _probe("stage2", 0.7668)])
    assert "The best layer on validation is stage2 (toy/logreg@stage2, validation 76.7 %," in text


def _checks(n_dup: int) -> DataChecks:
    test_ids = [str(i) for i in range(5)]
    groups = [[["train", f"t{i}"], ["test", str(i)]] for i in range(n_dup)]
    near = [[str(i), f"t{i}", 0.99] for i in range(n_dup)]
    return DataChecks("content", groups, near, "pooled", {}, test_ids, near_hash=near, hash_bits=6)


def test_one_test_image_with_a_copy_has_a_singular_verb():
    # Before: "1 of the 5 test images have a copy" (and "have a near-duplicate").
    text = " ".join(_checks(1).lines())
    assert "1 of the 5 test images has a copy in train or val" in text
    assert text.count("1 of the 5 test images has a near-duplicate in train or val") == 2
    assert "have a" not in text
    text = " ".join(_checks(2).lines())
    assert "2 of the 5 test images have a copy in train or val" in text
    assert text.count("2 of the 5 test images have a near-duplicate in train or val") == 2
