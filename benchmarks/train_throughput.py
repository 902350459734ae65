"""Training throughput of the full Sabour CapsNet: capsule-kit against the seed's layers.

Both variants train on the same real MNIST batches (capsule_kit_tasks.digits.data.load_mnist,
scaled to [0, 1], random shifts of up to 2 px as in recipes/mnist.yaml), with
Adam (lr 1e-3) and the same loss (margin + 0.0005 x summed squared reconstruction
error), batch 100 by default:

* ``ours``: the model and ``step`` of the digits task exactly as
  ``python -m capsule_kit.run recipes/mnist.yaml`` builds them
  (capsule_kit.models.CapsNet: conv 256@9x9 -> PrimaryCaps 32x8D -> DigitCaps
  10x16D, 3 dynamic-routing iterations -> decoder 512-1024-784).
* ``seed``: the seed's CapsuleNet, written here device-agnostic (no ``.cuda()``):
  PrimaryCaps as ``view(B, -1, 8)``, DenseCaps with a [1, 1152, 160, 8, 1] weight
  times ``u.repeat(...)`` summed over D_i, the routing loop with broadcasts, the
  seed's squash and decoder.

Each variant runs in a fresh subprocess (``--variant``), so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, Linux KiB) is its own; the RSS
just before the first step (imports, data and model) is shown too. Time: median
of the per-step wall times after ``--warmup`` steps, and of the per-step CPU
times (``time.process_time``, all threads of the process): on a machine shared
with other busy processes the wall time also counts the waits for a time slice,
which the CPU time does not. With ``--rounds`` > 1 the
variants alternate (ours, seed, ours, seed, ...) and the medians pool all rounds,
so load from other processes on a shared machine hits both alike. Ratios LAST.

    python benchmarks/train_throughput.py                          # 10 steps, batch 100
    python benchmarks/train_throughput.py --steps 20 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
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

from capsule_kit.losses import margin_loss, reconstruction_loss  # noqa: E402
from capsule_kit.run import load_recipe  # noqa: E402
from capsule_kit_tasks.digits.data import load_mnist, random_shift  # noqa: E402


def default_threads() -> int:
    """All cores, or 1 when other processes already oversubscribe them.

    On an oversubscribed machine every multi-threaded op waits for its slowest
    thread's next time slice, which slows many-op steps far more than a single
    thread does (on the shared 2-core machine behind docs/performance.md the
    CapsNet step took 2.5x longer with 2 threads than with 1).
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else cores


# -- the seed's layers (device-agnostic) -----------------------------------------------------------
def seed_squash(inputs: Tensor, axis: int = -1) -> Tensor:
    norm = torch.norm(inputs, dim=axis, keepdim=True)
    scale = norm**2 / (1 + norm**2) / (norm + 1e-8)
    return scale * inputs


class SeedPrimaryCaps(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dim_caps: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.dim_caps = dim_caps
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return seed_squash(self.conv2d(x).view(x.size(0), -1, self.dim_caps))


class SeedDenseCaps(nn.Module):
    def __init__(self, in_num: int, in_dim: int, out_num: int, out_dim: int, iterations: int = 3) -> None:
        super().__init__()
        self.in_num, self.in_dim, self.out_num, self.out_dim, self.iterations = (
            in_num,
            in_dim,
            out_num,
            out_dim,
            iterations,
        )
        self.weight = nn.Parameter(0.01 * torch.randn(1, in_num, out_num * out_dim, in_dim, 1))

    def forward(self, u: Tensor) -> Tensor:
        u_hat = u[:, :, None, :, None]
        u_hat = self.weight * u_hat.repeat(1, 1, self.out_num * self.out_dim, 1, 1)
        u_hat = torch.sum(u_hat, dim=3)
        u_hat = torch.squeeze(u_hat.view(-1, self.in_num, self.out_num, self.out_dim, 1))
        u_hat_for_route = u_hat.detach()
        b = torch.zeros(u.size(0), self.in_num, self.out_num, device=u.device, dtype=u.dtype)  # seed: .cuda()
        for i in range(self.iterations):
            c = F.softmax(b, dim=2)
            if i < self.iterations - 1:
                outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat_for_route, dim=1, keepdims=True))
                b = b + torch.sum(outputs * u_hat_for_route, dim=-1)
            else:
                outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat, dim=1, keepdims=True))
        return torch.squeeze(outputs, dim=1)


class SeedCapsuleNet(nn.Module):
    def __init__(self, input_size: tuple[int, int, int] = (1, 28, 28), classes: int = 10, iterations: int = 3) -> None:
        super().__init__()
        self.input_size = input_size
        self.conv1 = nn.Conv2d(input_size[0], 256, kernel_size=9, stride=1, padding=0)
        self.primarycaps = SeedPrimaryCaps(256, 256, 8, kernel_size=9, stride=2)
        self.digitcaps = SeedDenseCaps(32 * 6 * 6, 8, classes, 16, iterations)
        self.reconstructor = nn.Sequential(
            nn.Linear(16 * classes, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, input_size[0] * input_size[1] * input_size[2]),
            nn.Sigmoid(),
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = self.primarycaps(self.relu(self.conv1(x)))
        x = self.digitcaps(x)
        length = x.norm(dim=-1)
        reconstruction = self.reconstructor((x * y[:, :, None]).view(x.size(0), -1))
        return length, reconstruction.view(-1, *self.input_size)


# -- one variant in this process -------------------------------------------------------------------
def make_step(variant: str, batch: int):
    """Model and a ``step(images uint8, labels) -> loss`` closure doing forward, backward and Adam."""
    if variant == "ours":
        cfg, task_cls = load_recipe(REPO / "recipes" / "mnist.yaml", [f"trainer.batch_size={batch}"])
        task = task_cls(cfg)
        model = task.build_model()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr)

        def forward(x: Tensor, y: Tensor) -> Tensor:
            return task.step(model, (x, y), train=True)["loss"]  # the runner's own step

    else:
        model = SeedCapsuleNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def forward(x: Tensor, y: Tensor) -> Tensor:
            x = random_shift(x.float() / 255, 2)
            lengths, recon = model(x, F.one_hot(y, 10).float())
            return margin_loss(lengths, y) + reconstruction_loss(recon, x, 0.0005)

    def step(x: Tensor, y: Tensor) -> float:
        loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return model, step


def run_variant(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = (args.warmup + args.steps) * args.batch
    images, labels = load_mnist(None, "train")
    images, labels = images[:n].clone(), labels[:n].clone()
    model, step = make_step(args.variant, args.batch)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu, losses = [], [], []
    for k in range(args.warmup + args.steps):
        x, y = images[k * args.batch : (k + 1) * args.batch], labels[k * args.batch : (k + 1) * args.batch]
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step(x, y))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "variant": args.variant,
        "params": sum(p.numel() for p in model.parameters()),
        "times": times[args.warmup :],
        "cpu": cpu[args.warmup :],
        "losses": [losses[0], losses[-1]],
        "rss_before_kib": rss_before,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# -- driver ----------------------------------------------------------------------------------------
def spawn(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
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
    p.add_argument("--variant", choices=["ours", "seed"], help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    args.threads = args.threads or default_threads()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    print(
        f"CapsNet training, MNIST batch {args.batch}, Adam, margin + 0.0005 SSE; {args.steps} timed steps "
        f"after {args.warmup} warm-up, {args.rounds} round(s), {args.threads} thread(s), torch {torch.__version__}"
    )
    print("note: medians of per-step times. On a shared machine other processes' load stretches wall times (more")
    print("      for many small ops than for a few big ones); CPU time (time.process_time, all threads) counts only")
    print("      the cycles this process got, so its ratio is the steadier figure there")
    runs: dict[str, list[dict]] = {"ours": [], "seed": []}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(spawn(variant, args))
    summary = {variant: report(variant, rs, args.batch) for variant, rs in runs.items()}
    (t_ours, c_ours, m_ours), (t_seed, c_seed, m_seed) = summary["ours"], summary["seed"]
    print()
    print(
        f"train throughput: speedup {t_seed / t_ours:.2f}x (img/s capsule-kit / seed style; target >= 2x), "
        f"CPU-time speedup {c_seed / c_ours:.2f}x, peak RSS ratio {m_seed / m_ours:.2f}x (seed / capsule-kit)"
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
