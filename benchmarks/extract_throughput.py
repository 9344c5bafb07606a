"""Extraction throughput: featpipe's loop against the forward-only limit and the usual loop.

For each model, on the same JPEG files and the same preprocessing, in one process:

  (a) forward   forward passes only, on one batch already on the device, with the model as
                featpipe runs it (the limit; channels-last, bf16 autocast on CUDA, fp32 on
                CPU: the best of one thread per core, one thread, and a lane per core);
  (b) plain     torchvision ImageFolder + PIL transforms + DataLoader with one worker per core,
                features copied back to the host (what people write today: the model as
                loaded on CPU, bf16 + channels-last on CUDA);
  (c) featpipe  ``featpipe.extract.extract(...)`` end to end into a fresh store, once per data
                path (``auto``: gpu on CUDA, cpu on CPU; ``cpu`` too on CUDA for comparison);
                on a CPU device in lanes (featpipe/extract/lanes.py). With ``--pillow-too``
                and the jpeg extra installed, each cpu-path (c) runs with Pillow alone too,
                and the extra's gain is printed ("jpeg extra / Pillow alone").

It prints images/s, the ratios c/a and c/b, peak host memory (this process and its children)
and peak device memory, and checks that the GPU data path's pixels and features agree with
the CPU path's on the device used ("parity"). Examples:

    # one H100 (about 10 minutes): 5,000 realistic JPEGs, the three default models
    python benchmarks/extract_throughput.py --make-jpegs 5000 --device cuda --json h100.json
    # this 2-core CPU (a few minutes)
    python benchmarks/extract_throughput.py --make-jpegs 128 --n-images 64 --batch-size 16 \\
        --models torchvision:resnet50@none,efficientnet_lite0 --image-size 128
    # what the jpeg extra gains on this CPU (about 5 minutes)
    python benchmarks/make_jpegs.py /tmp/jpegs960 --n 960
    python benchmarks/extract_throughput.py --images /tmp/jpegs960 --batch-size 16 \\
        --models efficientnet_lite0 --image-size 128 --decodes exact,fast --pillow-too --repeat 3
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import sklearn
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_jpegs import DEFAULT_ARCHIVE, make_jpegs

from featpipe.backbones import Backbone, get_backbone
from featpipe.backbones.preprocessing import INTERPOLATIONS, Preprocessing
from featpipe.data import ImageFolderSource
from featpipe.data.images import jpeg_decoder, pillow_only
from featpipe.extract import extract
from featpipe.extract.gpu_path import GPUDataPath, Sample
from featpipe.extract.inference import Inference
from featpipe.extract.tensor_ops import normalise, resize_crop

DEFAULT_MODELS = ("torchvision:resnet50@none", "torchvision:vit_b_16@none", "efficientnet_lite0")
SAMPLE_PHOTOS = ("china.jpg", "flower.jpg")  # real photos inside the scikit-learn wheel


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {cores()} cores"


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def prepare(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """The pooled-feature model on ``device`` as extraction runs it (channels-last)."""
    return Inference.of_layers(backbone, ["pooled"], device).model


def prepare_plain(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """The same model as people usually run it: as loaded on CPU; channels-last on CUDA,
    where the bf16 + channels-last recipe is common (and the loop is data-bound anyway)."""
    # The layout is set both ways: the modules are shared with (a) and (c), which convert them.
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return backbone.features(["pooled"]).eval().to(device, memory_format=layout)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_device_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def host_peak_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"process_mib": round(own, 1), "largest_child_mib": round(children, 1)}


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished children (DataLoader workers):
    unlike wall time, it barely moves when other jobs share the machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def batch_sizes(n: int, batch_size: int) -> list[int]:
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


def bench_forward(
    model: torch.nn.Module, batch: torch.Tensor, n: int, batch_size: int, device: torch.device
) -> dict:
    """(a) images/s of forward passes over ``n`` images, inputs already on the device.

    On CPU the best of one thread per core, a single thread, and one lane per core (a thread
    per core, each running whole batches on one intra-op thread, as featpipe's lanes do): on
    a busy machine, threads that wait for each other at every op can make one thread the
    faster choice, and lanes never wait for each other.
    """
    x = batch.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        return _forward(model, x, n, batch_size, device)
    before = torch.get_num_threads()
    best: dict = {}
    try:
        for threads in sorted({cores(), 1}, reverse=True):
            torch.set_num_threads(threads)
            row = {**_forward(model, x, n, batch_size, device), "threads": threads, "lanes": 1}
            if row["images_per_s"] > best.get("images_per_s", 0):
                best = row
        if cores() > 1:
            torch.set_num_threads(1)
            row = {**_forward_lanes(model, x, n, batch_size, cores()), "threads": 1}
            if row["images_per_s"] > best.get("images_per_s", 0):
                best = row
    finally:
        torch.set_num_threads(before)
    return best


def _forward_lanes(
    model: torch.nn.Module, x: torch.Tensor, n: int, batch_size: int, lanes: int
) -> dict:
    """Forward passes on the CPU in ``lanes`` threads, the batches dealt out in turn."""
    sizes = batch_sizes(n, batch_size)

    def lane(i: int) -> None:
        with torch.inference_mode():
            for size in sizes[i::lanes]:
                model(x[:size])

    with torch.inference_mode():
        model(x)  # warm-up
    with ThreadPoolExecutor(lanes) as pool:
        start = time.perf_counter()
        list(pool.map(lane, range(lanes)))
        seconds = time.perf_counter() - start
    return {"images_per_s": n / seconds, "seconds": seconds, "lanes": lanes}


def _forward(
    model: torch.nn.Module, x: torch.Tensor, n: int, batch_size: int, device: torch.device
) -> dict:
    with torch.inference_mode(), autocast(device):
        for _ in range(2):  # warm-up: cuDNN algorithm choice, allocator, lazy init
            model(x)
        sync(device)
        reset_device_peak(device)
        start = time.perf_counter()
        for size in batch_sizes(n, batch_size):
            model(x[:size])
        sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": n / seconds,
        "seconds": seconds,
        "device_peak_mib": device_peak_mib(device),
    }


def plain_transform(pre: Preprocessing) -> T.Compose:
    """The classic torchvision recipe on PIL images, with the backbone's own numbers."""
    return T.Compose(
        [
            T.Resize(pre.resize, INTERPOLATIONS[pre.interpolation], antialias=pre.antialias),
            T.CenterCrop(pre.crop),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def bench_plain(
    model: torch.nn.Module,
    pre: Preprocessing,
    root: Path,
    n: int,
    batch_size: int,
    device: torch.device,
) -> dict:
    """(b) ImageFolder + PIL transforms + one DataLoader worker per core, features to host."""
    reset_device_peak(device)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    dataset = Subset(datasets.ImageFolder(root, transform=plain_transform(pre)), range(n))
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=cores(), pin_memory=device.type == "cuda"
    )
    features = []
    with torch.inference_mode(), autocast(device):
        for x, _ in loader:
            if device.type == "cuda":
                x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
            features.append(model(x)["pooled"].float().cpu().numpy())
    np.concatenate(features)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": n / seconds,
        "seconds": seconds,
        "cpu_ms_per_image": (cpu_seconds() - cpu_start) * 1000 / n,
        "workers": cores(),
        "device_peak_mib": device_peak_mib(device),
    }


def bench_featpipe(
    backbone: Backbone,
    root: Path,
    n: int,
    batch_size: int,
    device: torch.device,
    data_path: str,
    workers: int | None,
    decode: str = "exact",
) -> dict:
    """(c) ``extract`` end to end into a store in a fresh cache folder."""
    source = ImageFolderSource(root)
    if n < len(source):
        source = source.subset(range(n))
    reset_device_peak(device)
    with tempfile.TemporaryDirectory(prefix="featpipe-bench-") as cache:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        store = extract(
            source,
            backbone,
            ["pooled"],
            cache_dir=cache,
            batch_size=batch_size,
            device=device.type,
            data_path=data_path,
            workers=workers,
            decode=decode,
            progress=False,
        )
        seconds = time.perf_counter() - start
        cpu_ms = (cpu_seconds() - cpu_start) * 1000 / n
        stats = dict(store.extraction)
    return {
        "images_per_s": n / seconds,
        "seconds": seconds,
        "cpu_ms_per_image": cpu_ms,
        "data_path": stats.get("data_path"),
        "decode": decode,
        "device": stats.get("device"),
        "workers": stats.get("workers"),
        "lanes": stats.get("lanes"),
        "loop_images_per_s": stats.get("images_per_s"),
        "device_peak_mib": device_peak_mib(device),
    }


def sample_photos() -> list[Path]:
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).exists()]


def parity(backbone: Backbone, files: list[Path], device: torch.device) -> dict:
    """How far the GPU data path (on ``device``) is from the CPU path, in pixels and features.

    Also reports the float32 resize that CUDA uses, run on CPU ("float_resize"), so that the
    resize's share of the difference is measured even without a GPU.
    """
    pre = backbone.preprocessing
    transform = pre.transform()
    raw = [f.read_bytes() for f in files]
    reference = torch.stack([transform(Image.open(io.BytesIO(r)).convert("RGB")) for r in raw])
    data_path = GPUDataPath(pre, device)
    batch = data_path.collate([Sample(r, str(f)) for r, f in zip(raw, files, strict=True)])
    on_device = data_path.to_batch(batch, device).cpu()
    decoded = [
        torch.from_numpy(np.asarray(Image.open(io.BytesIO(r)).convert("RGB")).copy()).permute(
            2, 0, 1
        )
        for r in raw
    ]
    float_resize = normalise(resize_crop(decoded, pre, via_float=True), pre)
    out = {}
    for name, batch in (("device", on_device), ("float_resize", float_resize)):
        diff = (batch - reference).abs()
        levels = diff * torch.tensor(pre.std).view(1, 3, 1, 1) * 255
        row = {
            "max_abs_normalised": float(diff.max()),
            "max_levels": float(levels.max()),
            "mean_levels": float(levels.mean()),
            "pixels_differing": float((levels > 0.5).float().mean()),
        }
        row.update(_feature_agreement(backbone, reference, batch))
        out[name] = row
    return out


def _feature_agreement(backbone: Backbone, reference: torch.Tensor, batch: torch.Tensor) -> dict:
    """Pooled-feature cosine and top-1 agreement of the logits (CPU fp32 both sides)."""
    features = backbone.features(["pooled", "logits"]).eval()
    try:
        with torch.inference_mode():
            a, b = features(reference), features(batch)
    finally:
        features.remove()
    cos = torch.nn.functional.cosine_similarity(a["pooled"], b["pooled"])
    rel = (a["pooled"] - b["pooled"]).abs().max() / a["pooled"].abs().max()
    top1 = (a["logits"].argmax(1) == b["logits"].argmax(1)).float().mean()
    return {
        "feature_min_cosine": float(cos.min()),
        "feature_max_rel_diff": float(rel),
        "top1_agreement": float(top1),
    }


def run_model(spec: str, args, root: Path, files: list[Path], device: torch.device) -> dict:
    backbone = get_backbone(spec, image_size=args.image_size)
    pre = backbone.preprocessing
    n = args.n_images
    print(
        f"\n== {spec}  ({pre.resize}->{pre.crop} px {pre.interpolation}, {n} images, "
        f"batch {args.batch_size})",
        flush=True,
    )
    result: dict = {"spec": spec, "preprocessing": pre.to_dict()}
    if args.parity:
        parity_files = sample_photos() + files[: args.parity]
        result["parity"] = parity(backbone, parity_files, device)
        for name, row in result["parity"].items():
            print(
                f"  parity {name:12s} max {row['max_levels']:.0f} levels "
                f"(|diff| {row['max_abs_normalised']:.4f}), mean {row['mean_levels']:.3f}, "
                f"feature cos >= {row['feature_min_cosine']:.5f}, "
                f"top-1 agree {row['top1_agreement']:.3f}",
                flush=True,
            )
    transform = pre.transform()
    one_batch = torch.stack(
        [transform(Image.open(f).convert("RGB")) for f in files[: args.batch_size]]
    )
    if len(one_batch) < args.batch_size:  # fewer files than one batch: repeat them
        reps = math.ceil(args.batch_size / len(one_batch))
        one_batch = one_batch.repeat(reps, 1, 1, 1)[: args.batch_size]
    # (a), (b) and (c) alternate, best of --repeat each, so that load from other processes on
    # a shared machine (or a noisy virtual machine) hits all of them alike.
    runs = [
        (path, decode, pillow)
        for path in args.data_paths
        for decode in args.decodes
        for pillow in _decoders(args, path, device)
    ]
    for _ in range(args.repeat):
        model = prepare(backbone, device)
        try:
            _keep_best(
                result, "forward", bench_forward(model, one_batch, n, args.batch_size, device)
            )
        finally:
            model.remove()  # its hooks must not run (and pool) inside the other loops
        model = prepare_plain(backbone, device)
        try:
            _keep_best(result, "plain", bench_plain(model, pre, root, n, args.batch_size, device))
        finally:
            model.remove()
        for data_path, decode, pillow in runs:
            with pillow_only() if pillow else nullcontext():
                row = bench_featpipe(
                    backbone, root, n, args.batch_size, device, data_path, args.workers, decode
                )
            check_device(row, device)
            _keep_best(result, _run_key(data_path, decode, pillow), row)
    _print("(a) forward", result["forward"])
    _print("(b) plain", result["plain"])
    for data_path, decode, pillow in runs:
        row = result[_run_key(data_path, decode, pillow)]
        row["c_over_a"] = row["images_per_s"] / result["forward"]["images_per_s"]
        row["c_over_b"] = row["images_per_s"] / result["plain"]["images_per_s"]
        _print(f"(c) featpipe[{row['data_path']},{decode}{',pillow' if pillow else ''}]", row)
        print(f"      c/a = {row['c_over_a']:.3f}   c/b = {row['c_over_b']:.3f}", flush=True)
        if args.repeat > 1:
            # Each repeat's (c) against the (a) and (b) of the same repeat, seconds apart: the
            # median of these pairs follows less of a machine whose speed drifts between runs.
            for name, ref in (("c_over_a", "forward"), ("c_over_b", "plain")):
                pairs = _paired(row, result[ref])
                row[f"{name}_paired"] = pairs
                row[f"{name}_paired_median"] = statistics.median(pairs)
            print(
                f"      paired median c/a = {row['c_over_a_paired_median']:.3f} "
                f"({' / '.join(f'{r:.2f}' for r in row['c_over_a_paired'])})   "
                f"c/b = {row['c_over_b_paired_median']:.3f}",
                flush=True,
            )
        if pillow:  # what the jpeg extra gains: the run with it over this one
            extra = result[_run_key(data_path, decode, False)]
            row["extra_over_pillow"] = extra["images_per_s"] / row["images_per_s"]
            pairs = _paired(extra, row)
            print(
                f"      jpeg extra / Pillow alone = {row['extra_over_pillow']:.3f}   paired "
                f"median {statistics.median(pairs):.3f} ({' / '.join(f'{r:.2f}' for r in pairs)})",
                flush=True,
            )
    return result


def _decoders(args, data_path: str, device: torch.device) -> tuple[bool, ...]:
    """Pillow alone (True) besides the installed decoders (False) for a (c) run: with
    --pillow-too, where the jpeg extra is installed and the data path decodes on the CPU."""
    on_cpu = data_path == "cpu" or (data_path == "auto" and device.type == "cpu")
    extra = jpeg_decoder() != "pillow"
    return (False, True) if args.pillow_too and extra and on_cpu else (False,)


def _run_key(data_path: str, decode: str, pillow: bool) -> str:
    return f"featpipe_{data_path}_{decode}" + ("_pillow" if pillow else "")


def _paired(row: dict, ref: dict) -> list[float]:
    """Per-repeat ratios of ``row``'s rates to ``ref``'s (runs in the same order)."""
    return [c / a for c, a in zip(row["runs_images_per_s"], ref["runs_images_per_s"], strict=True)]


def check_device(row: dict, device: torch.device) -> None:
    """Stop when featpipe ran elsewhere than asked: ``device="auto"`` inside featpipe falls
    back to the CPU silently (e.g. a driver older than the torch wheels need), and a CPU run
    reported as a GPU figure would be worse than none."""
    if row.get("device") is None or torch.device(row["device"]).type != device.type:
        raise SystemExit(
            f"error: featpipe ran on {row.get('device')!r}, not on {device.type!r}; "
            "check torch.cuda.is_available() and the NVIDIA driver"
        )


def _keep_best(result: dict, key: str, row: dict) -> None:
    runs = [*result.get(key, {}).get("runs_images_per_s", []), row["images_per_s"]]
    if key not in result or row["images_per_s"] > result[key]["images_per_s"]:
        result[key] = row
    result[key]["runs_images_per_s"] = runs


def _print(label: str, row: dict) -> None:
    extra = f", device peak {row['device_peak_mib']} MiB" if row.get("device_peak_mib") else ""
    workers = f", {row['workers']} workers" if row.get("workers") is not None else ""
    if row.get("lanes", 0) > 1:  # featpipe's lanes on a CPU: each worker decodes and computes
        workers = f", {row['lanes']} lanes"
    if row.get("threads") is not None:
        workers += f", {row['threads']} threads"
    if row.get("cpu_ms_per_image") is not None:
        workers += f", {row['cpu_ms_per_image']:.0f} CPU ms/img"
    if len(row.get("runs_images_per_s", [])) > 1:
        workers += ", runs " + " / ".join(f"{v:.1f}" for v in row["runs_images_per_s"])
    print(
        f"  {label:22s} {row['images_per_s']:9.1f} img/s  ({row['seconds']:.1f} s{workers}{extra})",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--images", type=Path, help="an ImageFolder tree of JPEGs (class/xxx.jpg)")
    where.add_argument(
        "--make-jpegs",
        type=int,
        metavar="N",
        help="make N upscaled CIFAR-10 JPEGs (make_jpegs.py) and use them",
    )
    parser.add_argument(
        "--jpeg-dir",
        type=Path,
        default=None,
        help="where --make-jpegs writes (default: a folder under the temp dir, "
        "reused by later runs)",
    )
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="with --make-jpegs: mixed sizes and some progressive files (make_jpegs.py --mixed)",
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated backbone specs"
    )
    parser.add_argument(
        "--n-images",
        type=int,
        default=None,
        help="images per measurement (default: all the images)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default 256 on CUDA, 16 on CPU"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--image-size", type=int, default=None, help="input size (crop) instead of each model's own"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers for (c) (default: featpipe's own choice)",
    )
    parser.add_argument(
        "--data-paths",
        default=None,
        help="data paths for (c), comma-separated (default: auto,cpu on CUDA, auto on CPU)",
    )
    parser.add_argument(
        "--decodes",
        default="exact",
        help="featpipe's decode option for (c), comma-separated: exact, fast (default: exact)",
    )
    parser.add_argument(
        "--pillow-too",
        action="store_true",
        help="with the jpeg extra (simplejpeg) installed, run each (c) on the cpu data path "
        "with Pillow alone as well, and print what the extra gains",
    )
    parser.add_argument(
        "--parity",
        type=int,
        default=16,
        metavar="N",
        help="benchmark images (besides china.jpg and flower.jpg) used to compare "
        "the GPU data path with the CPU path; 0 skips it",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run (a), (b) and (c) this many times, keep the best"
    )
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    args = parser.parse_args(argv)
    if args.images is None and args.make_jpegs is None:
        parser.error("give --images DIR or --make-jpegs N")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.batch_size is None:
        args.batch_size = 256 if device.type == "cuda" else 16
    args.data_paths = (args.data_paths or ("auto,cpu" if device.type == "cuda" else "auto")).split(
        ","
    )
    args.decodes = args.decodes.split(",")
    # A GPU figure must come from the GPU: fail here rather than measure the CPU.
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.images is not None:
        root = args.images
    else:
        name = f"featpipe-jpegs-{args.make_jpegs}" + ("-mixed" if args.mixed else "")
        root = args.jpeg_dir or Path(tempfile.gettempdir()) / name
        try:
            make_jpegs(root, args.make_jpegs, archive=args.archive, mixed=args.mixed)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        print(f"error: no JPEG files under {root}/<class>/", file=sys.stderr)
        return 2
    args.n_images = min(args.n_images or len(files), len(files))
    for f in files:  # warm the page cache so that neither loop pays for the first read
        f.read_bytes()
    torch.set_num_threads(cores())
    header = {
        "device": device_name(device),
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "images": str(root),
        "n_images": args.n_images,
        "batch_size": args.batch_size,
        "cores": cores(),
        "jpeg_decoder": jpeg_decoder(),
    }
    print(json.dumps(header))
    results = []
    for spec in args.models.split(","):
        results.append(run_model(spec.strip(), args, root, files, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next model starts from a clean allocator
    memory = host_peak_mib()
    print(
        f"\npeak host memory: process {memory['process_mib']} MiB, largest child "
        f"{memory['largest_child_mib']} MiB"
    )
    _print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps({**header, "host_peak": memory, "results": results}, indent=2, default=str)
        )
        print(f"results written to {args.json}")
    return 0


def _print_table(results: list[dict]) -> None:
    print("\n| model | (a) forward | (b) plain | (c) featpipe | c/a | c/b |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        for key in (k for k in r if k.startswith("featpipe_")):
            c = r[key]
            pillow = ", pillow" if key.endswith("_pillow") else ""
            print(
                f"| {r['spec']} [{c['data_path']}, {c['decode']}{pillow}] | "
                f"{r['forward']['images_per_s']:.1f} | "
                f"{r['plain']['images_per_s']:.1f} | {c['images_per_s']:.1f} | "
                f"{c['c_over_a']:.3f} | {c['c_over_b']:.3f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
