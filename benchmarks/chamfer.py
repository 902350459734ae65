"""Chamfer distance of the points task vs. a naive broadcasting reference (CPU), and its share of a training step.

Three implementations of the same exact distance (tasks/points/chamfer.py), on a
batch of B clouds of P points in the unit ball:

* naive: ``((x[:, :, None] - y[:, None]) ** 2).sum(-1)``, both minima, autograd through
  the [B, P, P] matrix (tests/test_points_chamfer.py's reference);
* torch: our chunked neighbour search in torch (squared differences, no square root),
  then distances recomputed from the gathered neighbours (``use_kernel=False``; the GPU path);
* kernel: the same with the C++ neighbour search (``nn_kernel.cpp``; the CPU default).

Then one training step of ``recipes/points_ae.yaml``'s model at its batch size, split
into model forward, Chamfer and backward. Medians of ``--repeats``; ratios LAST.

    python benchmarks/chamfer.py
    python benchmarks/chamfer.py --batch 16 --points 1024 --repeats 7 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capsule_kit import run  # noqa: E402
from capsule_kit_tasks.points.chamfer import chamfer_distance, kernel  # noqa: E402


def naive(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)  # [B, P, Q]
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and the kernel's first-use build)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def clouds(b: int, p: int, seed: int) -> torch.Tensor:
    x = torch.randn(b, p, 3, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True).amax(1, keepdim=True)


def chamfer_times(b: int, p: int, repeats: int) -> dict[str, dict[str, float]]:
    x, y = clouds(b, p, 0).requires_grad_(), clouds(b, p, 1)
    impls = {"naive": naive, "torch": lambda a, c: chamfer_distance(a, c, use_kernel=False),
             "kernel": chamfer_distance}  # fmt: skip
    ref = naive(x, y).detach()
    out = {}
    for name, f in impls.items():
        with torch.no_grad():
            fwd = median_ms(lambda f=f: f(x, y), repeats)
        both = median_ms(lambda f=f: torch.autograd.grad(f(x, y).sum(), x), repeats)
        err = float((f(x, y).detach() - ref).abs().max())
        out[name] = {"fwd": fwd, "fwd+bwd": both, "max |diff|": err}
        print(f"{name:>7}: forward {fwd:8.1f} ms   forward+backward {both:8.1f} ms   max |CD - naive| {err:.1e}")
    return out


def step_share(repeats: int) -> tuple[float, float]:
    """Median ms of a points_ae training step and of its Chamfer part (kernel path)."""
    cfg, task_cls = run.load_recipe(REPO / "recipes" / "points_ae.yaml", [])
    task = task_cls(cfg)
    model = task.build_model()
    target = clouds(cfg.trainer.batch_size, cfg.data.num_points, 2)
    parts: dict[str, list[float]] = {"model forward": [], "chamfer": [], "backward": []}
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = model(task.encoder_input(target, train=True))
        t1 = time.perf_counter()
        loss = chamfer_distance(out.points, target).mean()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if i:  # the first is a warm-up
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(v * 1e3)
    med = {k: statistics.median(v) for k, v in parts.items()}
    print(f"points_ae step (batch {cfg.trainer.batch_size}, {cfg.data.input_points} points in, "
          f"{cfg.model.out_points} out): " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items()))  # fmt: skip
    return sum(med.values()), med["chamfer"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Chamfer distance, {args.batch} x {args.points} points vs {args.points}, {args.threads} threads, "
          f"C++ kernel {'built' if kernel() is not None else 'UNAVAILABLE (torch path twice)'}")  # fmt: skip
    t = chamfer_times(args.batch, args.points, args.repeats)
    step, cd = step_share(max(3, args.repeats // 2))
    print()
    for what in ("fwd", "fwd+bwd"):
        print(f"{what}: kernel vs naive {t['naive'][what] / t['kernel'][what]:.1f}x, "
              f"kernel vs torch path {t['torch'][what] / t['kernel'][what]:.1f}x")  # fmt: skip
    print(f"exact: max |CD - naive| kernel {t['kernel']['max |diff|']:.1e}, torch {t['torch']['max |diff|']:.1e}")
    print(f"Chamfer share of a points_ae training step: {cd / step:.0%} ({cd:.0f} of {step:.0f} ms)")


if __name__ == "__main__":
    main()
