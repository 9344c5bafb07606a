"""`featpipe backbones` and `featpipe layers`, through the real CLI entry point."""

from __future__ import annotations

import pytest

from featpipe.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_backbones_builtin_first_and_marked_offline(capsys):
    code, out, _ = run(capsys, "backbones")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Built-in:"
    assert "efficientnet_lite0" in lines[1] and "offline-ready" in lines[1]
    assert lines.index("  torchvision:resnet18") > lines.index("Built-in:")
    assert "Spec grammar" in out


def test_backbones_family_and_filter(capsys):
    code, out, _ = run(capsys, "backbones", "--family", "torchvision", "--filter", "RESNET1")
    listing = out.split("\nFamilies:")[0]
    names = [ln.strip() for ln in listing.splitlines() if ln.startswith("  ")]
    assert code == 0
    assert names == [
        "torchvision:resnet101", "torchvision:resnet152", "torchvision:resnet18",
        "torchvision:wide_resnet101_2",
    ]  # fmt: skip
    assert "timm:" not in listing and "Built-in" not in listing


def test_backbones_no_match(capsys):
    code, out, _ = run(capsys, "backbones", "--filter", "no_such_model_xyz")
    assert code == 1 and "no_such_model_xyz" in out


def test_layers_toy_shapes_poolings_and_stages(capsys):
    code, out, _ = run(capsys, "layers", "toy")
    assert code == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln and ln[0] != " "}
    assert rows["pooled"] == ["32", "none", "32"]
    assert rows["logits"] == ["10", "none", "10"]
    assert rows["stage1"] == ["16×8×8", "avg", "16"]
    stages = out.split("stages (fine-tuning with partial:N freezes stages 0 to N-1")[1]
    tail = "  then, before the classifier 'fc': pool; frozen by partial:3 only"
    assert stages.splitlines()[1:] == ["   0  stem", "   1  stage1", "   2  stage2", tail]


def test_layers_image_size_and_filter(capsys):
    code, out, _ = run(capsys, "layers", "toy", "--image-size", "64", "--filter", "stage2")
    assert code == 0
    table = out.split("stages (")[0]
    rows = [ln.split() for ln in table.splitlines()[3:] if ln]
    assert rows[0] == ["layer", "output", "shape", "default", "pooling", "dim"]
    assert [r[0] for r in rows[1:]] == ["stage2", "stage2.0", "stage2.1", "stage2.2"]
    assert rows[1] == ["stage2", "32×8×8", "avg", "32"]
    assert "centre crop 64" in out


@pytest.mark.slow  # builds a ViT: about 5 s on a loaded 2-core CPU
def test_layers_vit_tokens_default_to_cls(capsys):
    code, out, _ = run(
        capsys, "layers", "timm:vit_tiny_patch16_224@none", "--image-size", "32", "--filter",
        "blocks.0",
    )  # fmt: skip
    assert code == 0
    row = next(ln.split() for ln in out.splitlines() if ln.startswith("blocks.0 "))
    assert row == ["blocks.0", "5×192", "cls", "192"]  # 2×2 patches + the class token


def test_layers_unknown_backbone_is_a_clean_error(capsys):
    code, _, err = run(capsys, "layers", "resnet81")
    assert code == 2
    assert "Unknown backbone 'resnet81'" in err and "torchvision:resnet18" in err


def test_layers_fixed_size_model_at_other_size(capsys):
    code, _, err = run(capsys, "layers", "torchvision:vit_b_16@none", "--image-size", "64")
    assert code == 2 and "Omit the image size" in err


@pytest.mark.parametrize("command", ["backbones", "layers"])
def test_help_teaches_with_examples(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "examples:" in out and f"featpipe {command}" in out
