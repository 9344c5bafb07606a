#!/usr/bin/env bash
# Every GPU measurement of issues 14 and 13 in one run, for a session that has a GPU (not yet timed
# on one; on a lent machine run it through gpu_device.sh, which gives it a time limit):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ${OUT:-/tmp/gpu_check}
#
# It stops at the first failure. Every figure lands in OUT_DIR (*.json, *.log: each log holds the
# step's whole output, the console shows its tail); copy them into benchmarks/README.md with the
# GPU's name. PYTHON overrides the interpreter.
#
# Check the script on a CPU before spending GPU time (about 5 minutes on a loaded 2-core CPU):
#
#     DRY_RUN=1 bash benchmarks/gpu_check.sh /tmp/gpu_check_dry
#
# DRY_RUN=1 runs every step on --device cpu at tiny sizes (a few JPEGs, a few hundred CIFAR-10
# images, 1 epoch), skips nvidia-smi, the CUDA-only calls (pin_memory, set_sync_debug_mode) and
# --sync-bn (GPU only). Its figures mean nothing; it only shows that every command and flag runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo; echo "=== $* ($(date +%T))"; }
dry="${DRY_RUN:-0}"
if [ "$dry" = 1 ]; then
    dev=cpu
    n_uniform=(--make-jpegs 16 --n-images 8 --batch-size 8)
    n_mixed=(--make-jpegs 16 --n-images 8 --batch-size 8 --image-size 64 --parity 2)
    n_cifar=(--image-size 96 --limit-train 200 --limit-val 100 --limit-test 100)
    n_logreg=(--n-cs 3)
    n_heads=()
    n_finetune=(--make-jpegs 32 --n-images 32 --batch-size 8 --image-size 64)
    n_ddp=(--image-size 32 --epochs 1 --limit-train 128 --limit-val 64 --limit-test 64)
    sync_bn=()
    sync_jpegs=8
else
    dev=cuda
    n_uniform=(--make-jpegs 5000)
    n_mixed=(--make-jpegs 2000 --parity 8)
    n_cifar=(--image-size 96)
    n_logreg=()
    n_heads=(--limit-train 10000)  # liblinear and MLPClassifier: minutes on the full store
    n_finetune=(--make-jpegs 5000 --n-images 2560 --batch-size 128)
    n_ddp=(--image-size 64 --epochs 2)
    sync_bn=(--sync-bn)
    sync_jpegs=64
fi
# The CIFAR-10 JPEGs: data/device/ travels to a lent GPU machine (gpu_prepare.sh), ../shared does not.
cifar_tar="${CIFAR_TAR:-}"
for c in data/device/cifar10-jpg.tar.gz ../shared/data/cifar10-jpg.tar.gz; do
    [ -n "$cifar_tar" ] || { [ -f "$c" ] && cifar_tar="$c"; }
done
[ -n "$cifar_tar" ] || { echo "no cifar10-jpg.tar.gz: set CIFAR_TAR or run benchmarks/gpu_prepare.sh" >&2; exit 2; }
export CIFAR_TAR="$cifar_tar"
export GPU_CHECK_DEVICE="$dev" GPU_CHECK_JPEGS="$sync_jpegs"

step "device"
if [ "$dry" = 1 ]; then
    echo "DRY_RUN=1: no nvidia-smi, device cpu" | tee "$out/nvidia-smi.txt"
else
    nvidia-smi | tee "$out/nvidia-smi.txt"
fi
"$py" - <<'PY' | tee "$out/torch.txt"
import os, torch, torchvision
dev = os.environ["GPU_CHECK_DEVICE"]
assert dev != "cuda" or torch.cuda.is_available(), "torch sees no CUDA device: driver too old for these wheels?"
from featpipe.device import amp_dtype
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
print(torch.__version__, torchvision.__version__, torch.version.cuda, name, "amp", amp_dtype(dev))
PY
df -h /dev/shm | tee "$out/shm.txt"

step "GPU-marked tests (decode parity on the device, streams, resume)"
"$py" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/tests_gpu.log" | tail -15

step "host syncs in the GPU data path (set_sync_debug_mode warn)"
"$py" - <<'PY' 2>&1 | tee "$out/sync_debug.log"
import os, sys, warnings
from pathlib import Path
import torch
sys.path.insert(0, "benchmarks")
from make_jpegs import make_jpegs
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data import ImageFolderSource
from featpipe.extract.gpu_path import GPUDataPath
n = int(os.environ["GPU_CHECK_JPEGS"])
cuda = os.environ["GPU_CHECK_DEVICE"] == "cuda"
root = make_jpegs(Path(f"/tmp/featpipe-jpegs-{n}-mixed"), n, mixed=True)
source, device = ImageFolderSource(root), torch.device(os.environ["GPU_CHECK_DEVICE"])
path = GPUDataPath(Preprocessing(256, 224), device)
batch = path.collate([path.load(source, i) for i in range(len(source))])
if cuda:  # batch: jpegs, jpeg_sizes, jpeg_rows, pixels, pixel_rows, names
    batch = type(batch)(batch.jpegs.pin_memory(), *batch[1:3], batch.pixels.pin_memory(), *batch[4:])
path.to_batch(batch, device)  # warm-up: nvJPEG handle, kernels
if cuda:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    path.to_batch(batch, device)
if cuda:
    torch.cuda.set_sync_debug_mode(0)
syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
print(f"{len(syncs)} synchronizing calls in to_batch (nvJPEG's own stream sync is not one):")
print("\n".join(syncs[:20]))
PY

step "extraction throughput: ${n_uniform[1]} uniform JPEGs"
"$py" benchmarks/extract_throughput.py "${n_uniform[@]}" --device "$dev" --repeat 1 \
    --json "$out/extract_uniform.json" 2>&1 | tee "$out/extract_uniform.log"

step "extraction throughput: ${n_mixed[1]} mixed-size JPEGs, 1 in 8 progressive"
"$py" benchmarks/extract_throughput.py "${n_mixed[@]}" --mixed --device "$dev" \
    --models torchvision:resnet50@none \
    --json "$out/extract_mixed.json" 2>&1 | tee "$out/extract_mixed.log"

step "fine-tuning throughput on $dev (bf16 autocast, or fp16 + GradScaler)"
"$py" benchmarks/finetune_throughput.py "${n_finetune[@]}" --device "$dev" \
    --json "$out/finetune.json" 2>&1 | tee "$out/finetune.log"

step "scale-out: a 2-rank extraction sharing cuda:0 (gloo control), equal to one process"
"$py" -m featpipe extract digits --backbone efficientnet_lite0 --image-size 64 --device "$dev" \
    --out "$out/single.h5" --overwrite --no-progress 2>&1 | tee "$out/ranks_single.log"
"$py" -m torch.distributed.run --standalone --nproc-per-node 2 -m featpipe extract digits \
    --backbone efficientnet_lite0 --image-size 64 --device auto --out "$out/ranks.h5" \
    --overwrite 2>&1 | tee "$out/ranks_extract.log" | tail -5
"$py" - "$out/single.h5" "$out/ranks.h5" <<'PY' 2>&1 | tee -a "$out/ranks_extract.log"
import os, sys, numpy as np
from featpipe import FeatureStore
a, b = (FeatureStore(p).arrays("pooled")[0].astype(np.float32) for p in sys.argv[1:3])
print(f"2 ranks vs 1 process on {os.environ['GPU_CHECK_DEVICE']}: max |diff|",
      float(np.abs(a - b).max()), "shape", a.shape)
PY

step "scale-out: DDP fine-tune at --nproc-per-node 1 (NCCL and --sync-bn on CUDA)"
"$py" -m torch.distributed.run --standalone --nproc-per-node 1 -m featpipe finetune --data digits \
    --backbone efficientnet_lite0 "${n_ddp[@]}" --mode full --batch-size 64 \
    --device "$dev" ${sync_bn[@]+"${sync_bn[@]}"} --run-dir "$out/ddp-$dev" --no-resume 2>&1 \
    | tee "$out/ddp_finetune.log" | tail -8

store="$out/cifar_store.h5"
step "a CIFAR-10 store for the heads (Lite0 at 96 px, as data/README.md)"
tmp=$(mktemp -d)
tar -xzf "$cifar_tar" -C "$tmp"
"$py" -m featpipe extract "$tmp" --backbone efficientnet_lite0 "${n_cifar[@]}" --device "$dev" \
    --val-fraction 0.1 --out "$store" --no-progress 2>&1 | tee "$out/extract_cifar.log"
rm -rf "$tmp"

step "logistic-regression C path on $dev"
"$py" benchmarks/logreg_path.py "$store" --layer pooled --device "$dev" ${n_logreg[@]+"${n_logreg[@]}"} \
    2>&1 | tee "$out/logreg_path.log"
if [ -f benchmarks/heads_path.py ]; then
    step "SVM / MLP heads on $dev"
    "$py" benchmarks/heads_path.py "$store" --layer pooled --device "$dev" \
        ${n_heads[@]+"${n_heads[@]}"} 2>&1 | tee "$out/heads_path.log"
fi

step "done: figures in $out"
