"""Training throughput of the full Sabour CapsNet: capsule-kit against the seed's layers.

Both variants train on the same real MNIST batches (capsule_kit_tasks.digits.data.load_mnist,
scaled to [0, 1], random shifts of up to 2 px as in recipes/mnist.yaml), with
Adam (lr 1e-3) and the same loss (margin + 0.0005 x summed squared reconstruction
error), batch 100 by default:

* ``ours``: the model and ``step`` of the digits task exactly as
  ``python -m capsule_kit.run recipes/mnist.yaml`` builds them
  (capsule_kit.models.CapsNet: conv 256@9x9 -> PrimaryCaps 32x8D -> DigitCaps
  10x16D, 3 dynamic-routing iterations -> decoder 512-1024-784).
* ``seed``: the seed's CapsuleNet (benchmarks/seed_capsnet.py), device-agnostic.

Each variant runs in a fresh subprocess (``--variant``), so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, Linux KiB) is its own; the RSS
just before the first step (imports, data and model) is shown too. Time: median
of the per-step wall times after ``--warmup`` steps, and of the per-step CPU
times (``time.process_time``, all threads of the process): on a machine shared
with other busy processes the wall time also counts the waits for a time slice,
which the CPU time does not. With ``--rounds`` > 1 the
variants alternate (ours, seed, ours, seed, ...) and the medians pool all rounds,
so load from other processes on a shared machine hits both alike; ratios are the
median [min-max] of the per-round ratios. Ratios LAST.

Roofline (``--roofline``): the ``ours`` process also times the same model's two
convolutions alone (copies of conv1 and the PrimaryCaps conv, forward, backward
and Adam on the same batch), interleaved step by step with the full step, and
prints the full step's time over theirs: what the capsule parts (squash, votes,
routing, decoder, loss) add. With ``--profile`` the per-op profile of our step is
printed when that exceeds the 15 % aim. ``--threads-sweep 1 2`` times our step
at each thread count instead (round by round), ``--variants ours compiled``
compares our model eager and through ``torch.compile`` (as ``trainer.compile: true``).

    python benchmarks/train_throughput.py                          # 10 steps, batch 100
    python benchmarks/train_throughput.py --steps 20 --rounds 2 --threads 1 --roofline --profile
    python benchmarks/train_throughput.py --variants ours --threads-sweep 1 2 --steps 3 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seed_capsnet import SeedCapsuleNet  # noqa: E402
from stats import profile_step, spread  # noqa: E402

from capsule_kit.losses import margin_loss, reconstruction_loss  # noqa: E402
from capsule_kit.run import load_recipe  # noqa: E402
from capsule_kit_tasks.digits.data import load_mnist, random_shift  # noqa: E402


def default_threads() -> int:
    """All cores, or 1 when other processes already oversubscribe them (measured: ``--threads-sweep``)."""
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else cores


# -- one variant in this process -------------------------------------------------------------------
def make_step(variant: str, batch: int):
    """Model and a ``step(images uint8, labels) -> loss`` closure doing forward, backward and Adam."""
    if variant in ("ours", "compiled"):
        cfg, task_cls = load_recipe(REPO / "recipes" / "mnist.yaml", [f"trainer.batch_size={batch}"])
        task = task_cls(cfg)
        model = task.build_model()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr)
        run_model = torch.compile(model) if variant == "compiled" else model  # as trainer.compile does

        def forward(x: Tensor, y: Tensor) -> Tensor:
            return task.step(run_model, (x, y), train=True)["loss"]  # the runner's own step

    else:
        model = SeedCapsuleNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def forward(x: Tensor, y: Tensor) -> Tensor:
            x = random_shift(x.float() / 255, 2)
            lengths, recon = model(x, F.one_hot(y, 10).float())
            return margin_loss(lengths, y) + reconstruction_loss(recon, x, 0.0005)

    return model, closure(forward, opt)


def closure(forward, opt: torch.optim.Optimizer):
    def step(x: Tensor, y: Tensor) -> float:
        loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def convs_step(model: nn.Module):
    """The same model's two convolutions alone (copies): conv1 -> ReLU -> PrimaryCaps conv, backward, Adam.

    The roofline of the CapsNet step: what remains when the capsule parts (squash,
    votes, routing, decoder, margin loss) cost nothing.
    """
    conv1, conv2 = copy.deepcopy(model.conv1), copy.deepcopy(model.primary.conv)
    opt = torch.optim.Adam([*conv1.parameters(), *conv2.parameters()], lr=1e-3)

    def forward(x: Tensor, y: Tensor) -> Tensor:
        return conv2(conv1(x.float() / 255).relu()).square().mean()  # no shift: leaves ours' RNG stream alone

    return closure(forward, opt)


def timed(step, x: Tensor, y: Tensor) -> tuple[float, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step(x, y)
    return time.perf_counter() - t0, time.process_time() - c0, loss


def run_variant(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = (args.warmup + args.steps) * args.batch
    images, labels = load_mnist(None, "train")
    images, labels = images[:n].clone(), labels[:n].clone()
    model, step = make_step(args.variant, args.batch)
    convs = convs_step(model) if args.variant == "ours" and args.roofline else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu, losses, conv_times = [], [], [], []
    for k in range(args.warmup + args.steps):
        x, y = images[k * args.batch : (k + 1) * args.batch], labels[k * args.batch : (k + 1) * args.batch]
        wall, proc, loss = timed(step, x, y)
        times.append(wall), cpu.append(proc), losses.append(loss)
        if convs is not None:  # interleaved step by step: the same load hits both
            conv_times.append(timed(convs, x, y)[:2])
    out = {
        "variant": args.variant,
        "params": sum(p.numel() for p in model.parameters()),
        "times": times[args.warmup :],
        "cpu": cpu[args.warmup :],
        "conv_times": conv_times[args.warmup :],
        "first_step": times[0],
        "losses": [losses[0], losses[-1]],
        "rss_before_kib": rss_before,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    if args.profile and args.variant == "ours":
        out["profile"] = profile_step(step, images[: args.batch], labels[: args.batch])
    return out


# -- driver ----------------------------------------------------------------------------------------
def spawn(variant: str, args: argparse.Namespace, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--batch", str(args.batch), "--threads", str(threads)]
    cmd += [flag for flag, on in (("--roofline", args.roofline), ("--profile", args.profile)) if on]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, 1 if busy)")
    p.add_argument("--rounds", type=int, default=1, help="alternate the variants this many times")
    p.add_argument("--variants", nargs="+", choices=["ours", "seed", "compiled"], default=["ours", "seed"])
    p.add_argument("--roofline", action="store_true", help="also time the model's two convolutions alone")
    p.add_argument("--profile", action="store_true", help="print where our step goes, per op")
    p.add_argument("--threads-sweep", type=int, nargs="+", help="time ours at each of these thread counts instead")
    p.add_argument("--variant", choices=["ours", "seed", "compiled"], help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    args.threads = args.threads or default_threads()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    print(
        f"CapsNet training, MNIST batch {args.batch}, Adam, margin + 0.0005 SSE; {args.steps} timed steps "
        f"after {args.warmup} warm-up, {args.rounds} round(s), {args.threads} thread(s), torch {torch.__version__}"
        f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("note: medians of per-step times; ratios: median [min-max] over rounds (every variant runs in each round).")
    print("      CPU time counts only the cycles this process got: on a shared machine its ratio is the steadier one")
    if args.threads_sweep:
        return sweep_threads(args)
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(spawn(variant, args, args.threads))
    summary = {variant: report(variant, rs, args.batch) for variant, rs in runs.items()}
    lines = []
    if "seed" in runs and "ours" in runs:
        rounds = list(zip(runs["seed"], runs["ours"]))
        wall = spread([(statistics.median(s["times"]), statistics.median(o["times"])) for s, o in rounds])
        cpu = spread([(statistics.median(s["cpu"]), statistics.median(o["cpu"])) for s, o in rounds])
        rss = summary["seed"][2] / summary["ours"][2]
        lines.append(
            f"train throughput: speedup {wall} (img/s capsule-kit / seed style; target >= 2x), "
            f"CPU-time speedup {cpu}, peak RSS ratio {rss:.2f}x (seed / capsule-kit)"
        )
    if "compiled" in runs and "ours" in runs:
        rounds = [
            (statistics.median(o["times"]), statistics.median(c["times"]))
            for o, c in zip(runs["ours"], runs["compiled"])
        ]
        first = statistics.median(r["first_step"] for r in runs["compiled"])
        lines.append(
            f"compile: step time eager / torch.compile {spread(rounds)} (above 1: compiling helps; "
            f"first step incl. compilation {first:.0f} s)"
        )
    if args.roofline and "ours" in runs:
        lines += roofline(runs["ours"])
    print()
    print("\n".join(lines))


def roofline(rs: list[dict]) -> list[str]:
    """The CapsNet step against its two convolutions alone, timed step by step in the same process."""
    pairs = [(t, c) for r in rs for t, (c, _) in zip(r["times"], r["conv_times"])]
    cpu = sorted(t / c for r in rs for t, (_, c) in zip(r["cpu"], r["conv_times"]))
    conv = statistics.median(c for _, c in pairs)
    ratios = sorted(t / c for t, c in pairs)
    med = statistics.median(ratios)
    print(
        f"convs: {conv * 1e3:7.0f} ms/step (median; conv1 + PrimaryCaps conv, fwd+bwd+Adam, same batch, "
        "interleaved step by step with ours)"
    )
    if med > 1.15 and "profile" in rs[0]:
        print("\nwhere our step goes (self CPU time per op, two steps under the profiler):")
        print("\n".join(rs[0]["profile"]))
    return [
        f"roofline: CapsNet step / its two convolutions alone {med:.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}] "
        f"(capsule parts add {100 * (med - 1):.0f} %; target <= 15 %), in CPU time "
        f"{statistics.median(cpu):.2f}x [{cpu[0]:.2f}-{cpu[-1]:.2f}]"
    ]


def sweep_threads(args: argparse.Namespace) -> None:
    """Our step at each thread count in ``--threads-sweep``, the counts alternating round by round."""
    runs: dict[int, list[dict]] = {t: [] for t in args.threads_sweep}
    for _ in range(args.rounds):
        for t in runs:
            runs[t].append(spawn("ours", args, t))
    for t, rs in runs.items():
        report(f"{t}thr", rs, args.batch)
    base = args.threads_sweep[0]
    print()
    for t in args.threads_sweep[1:]:
        pairs = [(statistics.median(a["times"]), statistics.median(b["times"])) for a, b in zip(runs[t], runs[base])]
        print(
            f"threads: step time at {t} threads / at {base} thread(s) {spread(pairs)} (below 1: more threads help; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )


def report(variant: str, rs: list[dict], batch: int) -> tuple[float, float, float]:
    """Print one variant's line; return (median s/step, median CPU s/step, peak RSS MiB)."""
    times, cpu = [t for r in rs for t in r["times"]], [t for r in rs for t in r["cpu"]]
    med, med_cpu = statistics.median(times), statistics.median(cpu)
    peak, before = max(r["peak_rss_kib"] for r in rs) / 1024, max(r["rss_before_kib"] for r in rs) / 1024
    print(
        f"{variant:4s}: {batch / med:6.1f} img/s  {med * 1e3:7.0f} ms/step (median; min {min(times) * 1e3:.0f}, "
        f"max {max(times) * 1e3:.0f})  CPU {med_cpu * 1e3:6.0f} ms/step  peak RSS {peak:5.0f} MiB "
        f"(before step 1: {before:.0f})  params {rs[0]['params']:,}  loss {rs[0]['losses'][0]:.3f} -> "
        f"{rs[0]['losses'][1]:.3f}"
    )
    return med, med_cpu, peak


if __name__ == "__main__":
    main()
