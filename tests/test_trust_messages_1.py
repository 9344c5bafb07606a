"""Long lists in messages: the first few and how many more, in one form everywhere
(``featpipe.words.listed``). Before, ~20 messages wrote it by hand, each a little differently:
" and 3 more", " (and 3 more)", "; and 4 more", " and more" with no count, "1 more labels"."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_chunked_store
from test_trust_leakage_8 import conflict_line
from test_trust_store_8 import _flip
from torch import nn

import featpipe.words
from featpipe.backbones.weights import load_strict
from featpipe.data.arrays import ArraySource
from featpipe.data.manifest import CSVSource
from featpipe.errors import ConfigError, SourceError, UnreadableStoreError
from featpipe.store import FeatureStore
from featpipe.words import listed


# -- the helper ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("items", "said"),
    [
        ([], ""),
        (["a"], "a"),
        (["a", "b", "c"], "a, b, c"),  # exactly as many as shown: no "and 0 more"
        (["a", "b", "c", "d"], "a, b, c and 1 more"),
        ([str(i) for i in range(12_345)], "0, 1, 2 and 12,342 more"),
    ],
)
def test_listed_shows_the_first_few_and_counts_the_rest(items, said):
    assert listed(items) == said
    assert listed(iter(items)) == said  # a generator, counted by reading it


def test_listed_says_its_noun_in_the_number_it_counts():
    assert listed("abcd", noun="label") == "a, b, c and 1 more label"
    assert listed("abcdefg", 2, sep=" = ", noun="label") == "a = b and 5 more labels"
    assert listed("ab", noun="label") == "a, b"


def test_listed_formats_only_the_items_it_shows_when_told_the_total():
    formatted = []

    class Item:
        def __str__(self) -> str:
            formatted.append(self)
            return "x"

    assert listed((Item() for _ in range(10**6)), 2, sep="; ", total=10**6) == (
        "x; x and 999,998 more"
    )
    assert len(formatted) == 2


def test_listed_counts_a_total_beyond_the_items_it_was_given():
    # the ids of the first rows read for an error, and how many rows there are
    assert listed(["'a'", "'b'", "'c'"], total=7) == "'a', 'b', 'c' and 4 more"
    assert listed(["'a'"], total=7) == "'a' and 6 more"  # not "and 4 more": one was shown
    assert listed([], total=2) == "2 more"


def test_words_imports_nothing_heavy():
    """Heads, data checks and the report use it: importing it alone loads no numpy or torch."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('words', {featpipe.words.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted({'numpy', 'torch', 'h5py', 'sklearn'} & sys.modules.keys()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- real messages ---------------------------------------------------------------------------
def test_integer_labels_far_apart_count_the_empty_classes_with_separators():
    """data.arrays: said "(and 1994 more)" where the other messages say "and 3 more"."""
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ArraySource(images, [0, 2000])
    (message,) = [str(w.message) for w in caught if "no image has" in str(w.message)]
    assert "no image has 1,999 of them ('1', '2', '3', '4', '5' and 1,994 more)" in message


def test_a_manifest_of_missing_files_lists_five_and_counts_the_rest(tmp_path):
    """data.manifest: said "(and 2 more)"."""
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\n" + "".join(f"gone{i}.png,cat\n" for i in range(7)))
    with pytest.raises(SourceError) as raised:
        CSVSource(csv)
    message = str(raised.value)
    assert "line 2: " in message and "gone4.png'" in message and "gone5" not in message
    assert "gone4.png' and 2 more. Paths are relative" in message


def test_a_state_dict_missing_many_keys_names_five(tmp_path):
    """backbones.weights: sorted keys, the first five, then the count."""
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(5)))
    with pytest.raises(ConfigError) as raised:
        load_strict(model, {}, "nothing.pt")
    assert "10 missing keys ('0.bias', '0.weight', '1.bias', '1.weight', '2.bias' and 5 more)" in (
        str(raised.value)
    )


def test_chunks_that_fail_their_checksum_are_named_each(tmp_path):
    """store.reader: said "rows 10 to 19 of layer 'pooled' (and 2 more chunks of rows 0 to
    39)": the other chunks were counted, not named, in a form of its own."""
    path = tmp_path / "s.h5"
    make_chunked_store(path)
    for chunk in (1, 2, 3):
        _flip(path, "pooled", chunk)
    with pytest.raises(UnreadableStoreError) as raised:
        FeatureStore(path).arrays("pooled")
    assert "rows 10 to 19, 20 to 29, 30 to 39 of layer 'pooled' fail their" in str(raised.value)


def test_one_more_label_is_singular():
    """evaluate.leakage: one image under six labels said "and 1 more labels"."""
    assert "f4 (train, c4) and 1 more label (6 copies)" in conflict_line(6)


def test_the_list_reads_the_same_in_every_module():
    """No message writes its own "and N more" or "and more" any longer."""
    root = Path(featpipe.words.__file__).parent
    by_hand = re.compile(r"""and \{[^}]*\} more|and more["']""")
    own = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        # but a listing of one image a line, where "and N more" is a line of its own
        if path.relative_to(root).as_posix() != "cli/extract.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert own == []
