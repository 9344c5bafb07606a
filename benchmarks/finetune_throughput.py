"""Fine-tuning throughput: ``FineTuner``'s training loop against a plain PyTorch loop.

Both train the same model (the backbone with a fresh dropout + linear head), on the same
training images, with the same augmentation (``featpipe.finetune.data.train_transform``),
batch size, optimiser (SGD, Nesterov momentum 0.9, weight decay 1e-4), loss (cross-entropy,
label smoothing 0.1), DataLoader workers and precision (fp32 on CPU; on CUDA the autocast
dtype of ``featpipe.device.amp_dtype``, with a GradScaler for fp16):

  (b) plain     the loop people write: ``zero_grad(); loss = ...; backward(); step()`` and
                ``loss.item()`` every step, a DataLoader with shuffle and drop_last, the
                model as loaded (channels-last and cudnn.benchmark on CUDA);
  (c) featpipe  ``FineTuner(epochs=1, mode="full").fit(source)``; its own timing of the
                training epoch (history ``images_per_s``; validation is not counted).

Each side is timed over one epoch from the loader's start (worker start-up included), best of
``--repeat`` runs taken alternately. Prints train steps/s and ``c/b``.

    python benchmarks/finetune_throughput.py --images /tmp/bench_jpegs_1000 --n-images 256
    python benchmarks/finetune_throughput.py --make-jpegs 5000 --device cuda --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_jpegs import DEFAULT_ARCHIVE, make_jpegs

from featpipe.backbones import get_backbone
from featpipe.data import ImageFolderSource
from featpipe.device import amp_dtype, available_cores
from featpipe.finetune import FineTuner
from featpipe.finetune.data import split_rows, train_transform

VAL_FRACTION = 0.1
SEED = 0


class Files(Dataset):
    """Paths and labels, opened with PIL: the plain loop's dataset."""

    def __init__(self, paths: list[str], labels: np.ndarray, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


def plain_epoch(args, source, rows: np.ndarray, device: torch.device) -> dict:
    """(b) one epoch of the usual training loop."""
    torch.manual_seed(SEED)
    backbone = get_backbone(args.model, image_size=args.image_size)
    model = backbone.model
    old = model.get_submodule(backbone.classifier)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(old.in_features, len(source.classes)))
    model.set_submodule(backbone.classifier, head)
    model = model.to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True
    )
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    labels = np.asarray(source.labels)[rows]
    dataset = Files(
        [source.path(int(i)) for i in rows],
        labels,
        train_transform(backbone.preprocessing, "standard"),
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=cuda,
        generator=torch.Generator().manual_seed(SEED),
    )
    steps, total = 0, 0.0
    start = time.perf_counter()
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item()
        steps += 1
    seconds = time.perf_counter() - start
    return {"steps_per_s": steps / seconds, "seconds": seconds, "steps": steps}


def featpipe_epoch(args, source, device: torch.device) -> dict:
    """(c) FineTuner, one epoch; its own timing of the training epoch."""
    tuner = FineTuner(
        args.model,
        mode="full",
        epochs=1,
        batch_size=args.batch_size,
        lr=0.01,
        backbone_lr_scale=1.0,
        warmup_epochs=0.0,
        image_size=args.image_size,
        val_fraction=VAL_FRACTION,
        patience=None,
        device=device.type,
        seed=SEED,
        workers=args.workers,
        decode=args.decode,
        verbose=0,
    ).fit(source)
    epoch = tuner.history_[1]
    steps = len(tuner.history_) and round(epoch["images_per_s"] * epoch["seconds"])
    steps //= args.batch_size
    return {
        "steps_per_s": epoch["images_per_s"] / args.batch_size,
        "seconds": epoch["seconds"],
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--images", type=Path, help="an ImageFolder tree of JPEGs")
    where.add_argument("--make-jpegs", type=int, metavar="N", help="make N JPEGs (make_jpegs.py)")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None, help="default 128 on CPU")
    parser.add_argument("--n-images", type=int, default=None, help="images (train + val)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--decode", default="exact", choices=["exact", "fast"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.image_size is None and device.type == "cpu":
        args.image_size = 128
    if args.workers is None:
        args.workers = available_cores()
    root = args.images
    if root is None:
        root = Path(tempfile.gettempdir()) / f"featpipe-jpegs-{args.make_jpegs}"
        make_jpegs(root, args.make_jpegs, archive=args.archive)
    source = ImageFolderSource(root)
    if args.n_images and args.n_images < len(source):
        step = len(source) / args.n_images  # spread over the classes (files sorted by class)
        source = source.subset([int(i * step) for i in range(args.n_images)])
    train_rows, _, _ = split_rows(source, VAL_FRACTION, SEED)  # FineTuner's own train rows
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "train_images": len(train_rows),
        "precision": str(amp_dtype(device) or "fp32"),
        "cores": available_cores(),
    }
    print(json.dumps(header), flush=True)
    runs: dict[str, list[dict]] = {"plain": [], "featpipe": []}
    for _ in range(args.repeat):
        runs["plain"].append(plain_epoch(args, source, train_rows, device))
        print(f"  (b) plain     {runs['plain'][-1]['steps_per_s']:.3f} steps/s", flush=True)
        runs["featpipe"].append(featpipe_epoch(args, source, device))
        print(f"  (c) featpipe  {runs['featpipe'][-1]['steps_per_s']:.3f} steps/s", flush=True)
    b = max(r["steps_per_s"] for r in runs["plain"])
    c = max(r["steps_per_s"] for r in runs["featpipe"])
    print(
        f"{args.model} at {args.image_size or 'native'} px, batch {args.batch_size}, "
        f"{header['precision']} on {header['device']}: plain {b:.3f} steps/s, "
        f"FineTuner {c:.3f} steps/s, c/b = {c / b:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({**header, "runs": runs, "c_over_b": c / b}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
