"""LP-FT with and without its gradient cap, on the demo's recipe (pipelines/demo.toml).

    python benchmarks/lpft_grad_cap.py --sizes 1079 300 --seeds 0 1 2 --caps none auto 1 3
    python benchmarks/lpft_grad_cap.py --sizes 1079 300 --caps auto --label-smoothing 0.1 0

For each train size (a stratified subset of digits' train split), seed, cap
(``max_grad_norm``) and label smoothing, one LP-FT fine-tune of efficientnet_lite0 at 64 px:
validation accuracy per epoch (epoch 0 is the probe), the epoch kept and its test accuracy.
Then each setting's mean test accuracy over the seeds, per size. Accuracy, not speed: the
machine's load does not change the figures, though fine-tunes differ in their last bits
between CPUs.
"""

from __future__ import annotations

import argparse
import itertools
import json

from featpipe.data import open_source
from featpipe.data.splits import train_subset
from featpipe.finetune import FineTuner
from featpipe.finetune.callbacks import Callback

DEMO = dict(epochs=3, batch_size=32, lr=0.05, backbone_lr_scale=0.02, warmup_epochs=0.5)
DEMO |= dict(patience=2, augment="none", image_size=64, device="cpu", verbose=0)


class ValPerEpoch(Callback):
    def __init__(self):
        self.val: list[float] = []

    def on_epoch_end(self, tuner, logs):
        self.val.append(round(100 * logs["val_accuracy"], 1))


def cap(text: str) -> float | str | None:
    return None if text == "none" else text if text == "auto" else float(text)


def smoothing(text: str) -> float | str:
    return text if text == "auto" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1079])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--caps", nargs="+", default=["none", "auto"])
    parser.add_argument("--label-smoothing", type=smoothing, nargs="+", default=[0.1])
    args = parser.parse_args()
    digits = open_source("digits")
    tests: dict[tuple[int, str, float | str], list[float]] = {}
    for size in args.sizes:
        source = digits if size >= len(digits.indices("train")) else train_subset(digits, size, 0)
        for seed in args.seeds:
            for name, ls in itertools.product(args.caps, args.label_smoothing):
                said = ValPerEpoch()
                tuner = FineTuner(
                    "efficientnet_lite0", mode="lpft", seed=seed, max_grad_norm=cap(name),
                    label_smoothing=ls, callbacks=[said], **DEMO,
                ).fit(source)  # fmt: skip
                test = round(100 * tuner.score("test"), 1)
                tests.setdefault((size, name, ls), []).append(test)
                row = {"size": size, "seed": seed, "cap": name, "label_smoothing": ls}
                row |= {"val": said.val, "kept": tuner.best_epoch_, "test": test}
                print(json.dumps(row), flush=True)
    for (size, name, ls), values in tests.items():
        mean = sum(values) / len(values)
        print(f"size {size}, cap {name}, label smoothing {ls}: test {values}, mean {mean:.1f} %")


if __name__ == "__main__":
    main()
