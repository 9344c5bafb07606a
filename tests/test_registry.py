"""One registry type behind backbones, families, heads and built-in datasets."""

from __future__ import annotations

import pytest

from featpipe.backbones import list_families, register_backbone, register_family
from featpipe.backbones.registry import _FAMILIES
from featpipe.cli import build_parser
from featpipe.data import register_builtin_source
from featpipe.errors import ConfigError, UnknownNameError
from featpipe.heads.registry import HEADS, register_head
from featpipe.registry import Registry


def test_registry_refuses_a_taken_name_unless_asked_to_replace():
    reg: Registry[int] = Registry("widget", hint="See `featpipe widgets`.")
    reg.add("a", 1)
    with pytest.raises(ConfigError, match="widget named 'a' is already registered; pass replace"):
        reg.add("a", 2)
    assert reg["a"] == 1
    reg.add("a", 3, replace=True)
    assert dict(reg) == {"a": 3} and "a" in reg and len(reg) == 1
    with pytest.raises(UnknownNameError, match=r"Unknown widget 'b'.*featpipe widgets"):
        reg.get_or_raise("b")
    reg.remove("a")
    assert list(reg) == []


@pytest.mark.parametrize(
    "register",
    [
        lambda: register_family("timm", lambda spec: None, lambda: []),
        lambda: register_backbone("efficientnet_lite0")(lambda spec: None),
        lambda: register_head("logreg", object, {}),
        lambda: register_builtin_source("digits")(lambda: None),
    ],
    ids=["family", "backbone", "head", "dataset"],
)
def test_every_register_helper_refuses_duplicates(register):
    before = (dict(_FAMILIES), dict(HEADS))
    with pytest.raises(ConfigError, match="already registered"):
        register()
    assert (dict(_FAMILIES), dict(HEADS)) == before  # nothing overwritten


def test_a_family_can_be_replaced_on_purpose_and_the_cli_lists_it():
    timm = _FAMILIES["timm"]
    factory, names = timm.build, timm.names
    register_family("timm", factory, lambda: ["only_this"], replace=True)
    try:
        assert "timm" in list_families()
        register_family("mylib", factory, lambda: ["net"])
        args = build_parser().parse_args(["backbones", "--family", "mylib"])
        assert args.family == "mylib"
    finally:
        register_family("timm", factory, names, replace=True)
        _FAMILIES.remove("mylib")
