"""Training throughput of the matrix-capsule (EM) model, as the digits task trains it, with a profile.

Runs the digits task's own ``step`` (recipe + overrides, real MNIST batches, Adam) for
``--steps`` steps after ``--warmup`` and prints images per second from the median wall
time and from the median CPU time (``time.process_time``, all threads of this process:
on a machine shared with other busy processes the wall time also counts waits for a
time slice). ``--profile`` adds a torch.profiler table of the top operators by self CPU
time over the timed steps.

    python benchmarks/em_train.py recipes/mnist_em.yaml --threads 1
    python benchmarks/em_train.py recipes/mnist_em_small.yaml --threads 1 --profile
    python benchmarks/em_train.py recipes/mnist_em.yaml model.routing.iterations=2
    python benchmarks/em_train.py recipes/mnist_em_small.yaml --glibc-defaults   # without allocator tuning
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

from capsule_kit.allocator import tune_cpu_allocator  # noqa: E402
from capsule_kit.run import load_recipe  # noqa: E402
from capsule_kit_tasks.digits.data import load_mnist  # noqa: E402


def make_step(recipe: str, overrides: list[str]):
    """The task's model and a ``step(images uint8, labels)`` doing forward, backward and Adam."""
    cfg, task_cls = load_recipe(Path(recipe), overrides)
    task = task_cls(cfg)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr)

    def step(x, y) -> float:
        loss = task.step(model, (x, y), train=True)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return cfg, model, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="print the top operators by self CPU time")
    p.add_argument("--glibc-defaults", action="store_true", help="skip the runner's allocator tuning")
    args = p.parse_args()
    tuned = False if args.glibc_defaults else tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, model, step = make_step(args.recipe, args.overrides)
    batch = cfg.trainer.batch_size
    images, labels = load_mnist(None, "train")
    wall, cpu = [], []
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else None
    for k in range(args.warmup + args.steps):
        if prof is not None and k == args.warmup:
            prof.__enter__()
        x, y = images[k * batch : (k + 1) * batch], labels[k * batch : (k + 1) * batch]
        t0, c0 = time.perf_counter(), time.process_time()
        step(x, y)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40))
    wall, cpu = wall[args.warmup :], cpu[args.warmup :]
    params = sum(q.numel() for q in model.parameters())
    print(f"{args.recipe} {' '.join(args.overrides)}: {params:,} parameters, batch {batch}, {args.threads} thread(s)")
    print(f"  allocator tuned as the runner does: {tuned}")
    print(f"  wall per step: median {statistics.median(wall):.3f} s  [{', '.join(f'{t:.2f}' for t in wall)}]")
    print(f"  CPU per step:  median {statistics.median(cpu):.3f} s")
    print(f"  img/s: {batch / statistics.median(wall):.1f} (wall), {batch / statistics.median(cpu):.1f} (CPU time)")


if __name__ == "__main__":
    main()
