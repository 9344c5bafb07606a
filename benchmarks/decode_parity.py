"""How far ``--decode fast`` (JPEG DCT-scaled decoding) is from ``exact``, in pixels and features.

For each image set and input size, every JPEG is decoded both ways (``featpipe.data.images``),
resized and cropped by the backbone's own preprocessing, and compared:

- pixels after resize: mean and max absolute difference, in uint8 grey levels;
- features: cosine of EfficientNet-Lite0's pooled features (fp32, CPU);
- top-1 agreement of its ImageNet classifier (the bundled weights, offline).

Image sets: ``photos``, the two photos inside scikit-learn (china.jpg, flower.jpg, 427x640)
and ``--crops`` crops of them re-encoded at quality 90 (real photo content at other sizes and
aspect ratios); ``bench``, the upscaled CIFAR-10 JPEGs of make_jpegs.py (``--images DIR``).
Only images whose decode is actually scaled count (a JPEG too small to halve decodes exactly);
the table says how many there were and at which scales.

    python benchmarks/decode_parity.py --images /tmp/bench_jpegs_1000 --n-images 200 \\
        --sizes 96,128,160,224
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import sklearn
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from featpipe.backbones import get_backbone
from featpipe.data.images import draft_scale, load_resized, load_rgb

SAMPLE_PHOTOS = ("china.jpg", "flower.jpg")


def photo_files(out: Path, crops: int, seed: int = 0) -> list[Path]:
    """china.jpg, flower.jpg and ``crops`` random crops of them (short side 300-427 px)."""
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    photos = [folder / name for name in SAMPLE_PHOTOS]
    rng = np.random.default_rng(seed)
    files = list(photos)
    for i in range(crops):
        with Image.open(photos[i % len(photos)]) as img:
            img = img.convert("RGB")
            w, h = img.size
            cw, ch = int(rng.integers(300, w + 1)), int(rng.integers(300, h + 1))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            path = out / f"crop{i:03d}.jpg"
            img.crop((x, y, x + cw, y + ch)).save(path, "JPEG", quality=90)
        files.append(path)
    return files


def compare(files: list[Path], spec: str, size: int) -> dict:
    backbone = get_backbone(spec, image_size=size)
    pre = backbone.preprocessing
    transform, geometry = pre.transform(), pre.geometry()
    scaled = [f for f in files if draft_scale(Image.open(f).size, pre.resize) > 1]
    if not scaled:
        return {"size": size, "resize": pre.resize, "n": 0}
    scales = sorted({draft_scale(Image.open(f).size, pre.resize) for f in scaled})
    exact = [load_rgb(f) for f in scaled]
    files_source = _Files(scaled)
    fast = [
        load_resized(files_source, i, pre.resize, pre.interpolation) for i in range(len(scaled))
    ]
    to_uint8 = [geometry(F.pil_to_tensor(img)).double() for img in exact]
    to_uint8_fast = [geometry(pixels).double() for pixels in fast]
    diffs = torch.stack([(a - b).abs() for a, b in zip(to_uint8, to_uint8_fast, strict=True)])
    x_exact = torch.stack([transform(img) for img in exact])
    x_fast = torch.stack([transform(img) for img in fast])
    features = backbone.features(["pooled", "logits"]).eval()
    try:
        with torch.inference_mode():
            a = _batched(features, x_exact)
            b = _batched(features, x_fast)
    finally:
        features.remove()
    cos = torch.nn.functional.cosine_similarity(a["pooled"], b["pooled"])
    agree = (a["logits"].argmax(1) == b["logits"].argmax(1)).float()
    return {
        "size": size,
        "resize": pre.resize,
        "n": len(scaled),
        "scales": scales,
        "mean_levels": float(diffs.mean()),
        "max_levels": float(diffs.max()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "top1_agreement": float(agree.mean()),
        "top1_changed": int((agree == 0).sum()),
    }


class _Files:
    """The two methods of an ImageSource that ``load_resized`` uses."""

    def __init__(self, files: list[Path]):
        self.files = files

    def path(self, index: int) -> str:
        return str(self.files[index])

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.files[index])


def _batched(features, x: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    parts = [features(x[i : i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="an ImageFolder tree of benchmark JPEGs")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--crops", type=int, default=30, help="photo crops besides the photos")
    parser.add_argument("--sizes", default="96,128,160,224")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sets: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory(prefix="featpipe-photos-") as tmp:
        sets["photos"] = photo_files(Path(tmp), args.crops)
        if args.images is not None:
            sets["bench"] = sorted(args.images.glob("*/*.jpg"))[: args.n_images]
        rows = []
        print(
            "| images | size (resize) | n scaled | scales | mean / max levels | "
            "min / mean cosine | top-1 agreement |"
        )
        print("|---|---|---:|---|---:|---:|---:|")
        for name, files in sets.items():
            for size in (int(s) for s in args.sizes.split(",")):
                row = {"images": name, **compare(files, args.model, size)}
                rows.append(row)
                if not row["n"]:
                    print(f"| {name} | {size} ({row['resize']}) | 0 | - | exact | | |")
                    continue
                print(
                    f"| {name} | {size} ({row['resize']}) | {row['n']} | "
                    f"{'/'.join(f'1/{s}' for s in row['scales'])} | "
                    f"{row['mean_levels']:.2f} / {row['max_levels']:.0f} | "
                    f"{row['min_cosine']:.5f} / {row['mean_cosine']:.5f} | "
                    f"{row['top1_agreement']:.3f} ({row['top1_changed']} changed) |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
