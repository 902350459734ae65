"""Parameters of the Sabour CapsNet as the number of classes grows, per transform-sharing mode.

The class-capsule layer (capsule_kit.layers.DenseCaps) holds one 8x16 transform
per (input capsule, class) in Sabour's design (``shared="none"``): 1152 x C x 128
parameters, 1.5M per 10 classes. ``shared="positions"`` keeps one transform per
(primary capsule type, class), shared over the 6x6 positions (32 x C x 128);
``shared="inputs"`` one per class (C x 128). Every mode grows linearly in C, with
slopes 147,456 / 4,096 / 128 parameters per class. The decoder (16 C -> 512 ->
1024 -> 784) adds 8,192 per class in every mode.

Models are built on the meta device, so nothing is allocated (a 1000-class
unshared layer would hold 147M parameters, 590 MB). Ratios LAST.

    python benchmarks/param_counts.py
    python benchmarks/param_counts.py --classes 10 100 1000 10000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capsule_kit.models.capsnet import CapsNet  # noqa: E402

MODES = ("none", "positions", "inputs")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def counts(classes: int, shared: str) -> dict[str, int]:
    """Parameter counts of the class-capsule layer, the decoder and the whole model (meta device)."""
    with torch.device("meta"):
        model = CapsNet(num_classes=classes, shared=shared)
    return {"class caps": count(model.classes), "decoder": count(model.decoder), "model": count(model)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    args = p.parse_args()
    table = {(c, m): counts(c, m) for c in args.classes for m in MODES}
    print("Sabour CapsNet (28x28x1, conv 256, 32x8D primary capsules, 16D class capsules, decoder 512-1024)")
    print(f"{'classes':>8} {'shared':>10} {'class caps':>14} {'decoder':>12} {'model':>14} {'model w/o decoder':>18}")
    for (c, m), n in table.items():
        print(
            f"{c:>8} {m:>10} {n['class caps']:>14,} {n['decoder']:>12,} {n['model']:>14,} "
            f"{n['model'] - n['decoder']:>18,}"
        )
    lo, hi = min(args.classes), max(args.classes)
    print()
    for m in MODES:
        slope = (table[hi, m]["class caps"] - table[lo, m]["class caps"]) / (hi - lo)
        print(f"shared={m}: class-capsule parameters grow by {slope:,.0f} per class (linear)")
    for m in MODES[1:]:
        ratio = table[hi, "none"]["class caps"] / table[hi, m]["class caps"]
        whole = table[hi, "none"]["model"] / table[hi, m]["model"]
        print(f"{hi} classes: shared={m} has {ratio:.0f}x fewer class-capsule parameters ({whole:.1f}x fewer in all)")


if __name__ == "__main__":
    main()
