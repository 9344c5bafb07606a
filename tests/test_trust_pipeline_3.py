"""`featpipe run` re-runs: config lists that repeat an entry, two runs into one run folder at
once, and results files damaged beyond an interrupted write."""

from __future__ import annotations

import json

import pytest

from featpipe.errors import ConfigError
from featpipe.pipeline import config_from_dict

BASE = {"source": {"data": "digits"}, "features": {"backbones": ["toy"]}}


def config(**tables) -> dict:
    raw = json.loads(json.dumps(BASE))
    for name, value in tables.items():
        raw.setdefault(name, {}).update(value)
    return raw


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # Each ran the same jobs twice and wrote two rows with one (method, seed, hash).
        (config(probes={"heads": ["knn", "knn"]}), r"probes.heads lists 'knn' twice"),
        (config(features={"backbones": ["toy", "toy"]}), r"features.backbones lists 'toy' tw"),
        (config(probes={"layers": ["pooled", "pooled"]}), r"probes.layers lists 'pooled' tw"),
        (config(finetune={"modes": ["head", "head"]}), r"finetune.modes lists 'head' twice"),
        (
            config(finetune={"modes": ["head"], "backbones": ["toy", "toy"]}),
            r"finetune.backbones lists 'toy' twice",
        ),
        # Ran no fine-tune at all, silently.
        (
            config(finetune={"modes": ["head"], "backbones": []}),
            r"finetune.backbones is empty, so finetune.modes would run nothing",
        ),
        # Accepted, then failed at extraction, after config.json and plan.json were written.
        (config(features={"workers": -1}), r"features.workers must be >= 0; got -1"),
    ],
)
def test_lists_that_repeat_an_entry_and_bad_workers_are_refused(raw, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)
