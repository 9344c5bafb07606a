#!/usr/bin/env bash
# Every GPU measurement of issues 14 and 13 in one run, for a session that has a GPU (about 8-9 minutes
# on one H100/H200; run it with a timeout that leaves time to run it again):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ${OUT:-/tmp/gpu_check}
#
# It stops at the first failure. Every figure lands in OUT_DIR (*.json, *.log); copy them into
# benchmarks/README.md with the GPU's name. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo; echo "=== $* ($(date +%T))"; }

step "device"
nvidia-smi | tee "$out/nvidia-smi.txt"
"$py" - <<'PY' | tee "$out/torch.txt"
import torch, torchvision
assert torch.cuda.is_available(), "torch sees no CUDA device: driver too old for these wheels?"
from featpipe.device import amp_dtype
print(torch.__version__, torchvision.__version__, torch.version.cuda,
      torch.cuda.get_device_name(0), "amp", amp_dtype("cuda"))
PY
df -h /dev/shm | tee "$out/shm.txt"

step "GPU-marked tests (decode parity on the device, streams, resume)"
"$py" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15 | tee "$out/tests_gpu.log"

step "host syncs in the GPU data path (set_sync_debug_mode warn)"
"$py" - <<'PY' 2>&1 | tee "$out/sync_debug.log"
import sys, warnings
from pathlib import Path
import torch
sys.path.insert(0, "benchmarks")
from make_jpegs import make_jpegs
from featpipe.backbones.preprocessing import Preprocessing
from featpipe.data import ImageFolderSource
from featpipe.extract.gpu_path import GPUDataPath
root = make_jpegs(Path("/tmp/featpipe-jpegs-64-mixed"), 64, mixed=True)
source, device = ImageFolderSource(root), torch.device("cuda")
path = GPUDataPath(Preprocessing(256, 224), device)
batch = path.collate([path.load(source, i) for i in range(len(source))])
batch = type(batch)(batch.jpegs.pin_memory(), *batch[1:3], batch.pixels.pin_memory(), *batch[4:])
path.to_batch(batch, device)  # warm-up: nvJPEG handle, kernels
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    path.to_batch(batch, device)
torch.cuda.set_sync_debug_mode(0)
syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
print(f"{len(syncs)} synchronizing calls in to_batch (nvJPEG's own stream sync is not one):")
print("\n".join(syncs[:20]))
PY

step "extraction throughput: 5,000 uniform JPEGs"
"$py" benchmarks/extract_throughput.py --make-jpegs 5000 --device cuda --repeat 1 \
    --json "$out/extract_uniform.json" 2>&1 | tee "$out/extract_uniform.log"

step "extraction throughput: 2,000 mixed-size JPEGs, 1 in 8 progressive"
"$py" benchmarks/extract_throughput.py --make-jpegs 2000 --mixed --device cuda \
    --models torchvision:resnet50@none --parity 8 \
    --json "$out/extract_mixed.json" 2>&1 | tee "$out/extract_mixed.log"

store="$out/cifar_store.h5"
step "a CIFAR-10 store for the heads (Lite0 at 96 px, as data/README.md)"
tmp=$(mktemp -d)
tar -xzf ../shared/data/cifar10-jpg.tar.gz -C "$tmp"
"$py" -m featpipe extract "$tmp" --backbone efficientnet_lite0 --image-size 96 --device cuda \
    --val-fraction 0.1 --out "$store" --no-progress 2>&1 | tee "$out/extract_cifar.log"

step "logistic-regression C path on CUDA"
"$py" benchmarks/logreg_path.py "$store" --layer pooled --device cuda \
    2>&1 | tee "$out/logreg_path.log"
if [ -f benchmarks/heads_path.py ]; then
    step "SVM / MLP heads on CUDA"
    "$py" benchmarks/heads_path.py "$store" --layer pooled --device cuda \
        2>&1 | tee "$out/heads_path.log"
fi

step "fine-tuning throughput on CUDA (bf16 autocast, or fp16 + GradScaler)"
"$py" benchmarks/finetune_throughput.py --make-jpegs 5000 --n-images 2560 --device cuda \
    --batch-size 128 --json "$out/finetune.json" 2>&1 | tee "$out/finetune.log"

step "scale-out: a 2-rank extraction sharing cuda:0 (gloo control), equal to one process"
"$py" -m featpipe extract digits --backbone efficientnet_lite0 --image-size 64 --device cuda \
    --out "$out/single.h5" --overwrite --no-progress 2>&1 | tee "$out/ranks_single.log"
"$py" -m torch.distributed.run --standalone --nproc-per-node 2 -m featpipe extract digits \
    --backbone efficientnet_lite0 --image-size 64 --device auto --out "$out/ranks.h5" \
    --overwrite 2>&1 | tail -5 | tee "$out/ranks_extract.log"
"$py" - "$out/single.h5" "$out/ranks.h5" <<'PY' 2>&1 | tee -a "$out/ranks_extract.log"
import sys, numpy as np
from featpipe import FeatureStore
a, b = (FeatureStore(p).arrays("pooled")[0].astype(np.float32) for p in sys.argv[1:3])
print("2 ranks vs 1 process on cuda: max |diff|", float(np.abs(a - b).max()), "shape", a.shape)
PY

step "scale-out: DDP fine-tune with NCCL at --nproc-per-node 1"
"$py" -m torch.distributed.run --standalone --nproc-per-node 1 -m featpipe finetune --data digits \
    --backbone efficientnet_lite0 --image-size 64 --mode full --epochs 2 --batch-size 64 \
    --device cuda --sync-bn --run-dir "$out/ddp-gpu" --no-resume 2>&1 | tail -8 \
    | tee "$out/ddp_finetune.log"

step "done: figures in $out"
