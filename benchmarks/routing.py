"""DigitCaps forward+backward: capsule-kit's DenseCaps against the seed's and an einsum implementation.

The layer is Sabour's class-capsule layer: B x 1152 input capsules of 8D -> 10
capsules of 16D, routed with 3 iterations. Every variant gets the same inputs,
the same weights (mapped from ours into its layout) and the same upstream
gradient; the script prints the largest differences of outputs, input gradients
and weight gradients from ours, then times and peak memory, then the ratios LAST.

Variants (benchmarks/references.py holds the references): ``ours`` (DenseCaps,
eager routing), ``fused`` (the same with ``routing=RoutingConfig(name="dynamic", fused=True)``,
capsule_kit/routing/fused.py; dynamic routing only), ``einsum`` (readable_capsnet
style: votes, weighted sums and agreements by ``einsum``; dynamic routing only)
and ``seed`` (up to ``--seed-max-batch``).

    python benchmarks/routing.py                         # B=64, dynamic routing, fp32
    python benchmarks/routing.py --sweep                 # B in 32, 64, 128, 256
    python benchmarks/routing.py --batches 64 256 --profile
    python benchmarks/routing.py --routing em --dtype bf16 --repeats 9

Seed style (the reference, written here device-agnostic): votes as
``W * u.repeat(1, 1, N_o*D_o, 1, 1)`` summed over D_i (two [B, N_i, N_o*D_o, D_i]
temporaries), then the routing loop with broadcasts (``c[..., None] * u_hat``
summed over inputs, ``outputs * u_hat`` summed over D_o), and the seed's squash
(``norm / (1 + norm^2) * s / (norm + 1e-8)``). For ``--routing em`` / ``attention``
the reference uses the same seed-style votes and a straightforward broadcast
version of the formulas in capsule_kit/routing/em.py / attention.py.

Time: median wall time of ``--repeats`` forward+backward passes, after two
warm-up passes, the variants interleaved round by round (A, B, C, A, B, C, ...,
the first one rotating) so that load from other processes on this shared machine
hits all alike. Ratios are medians of the per-round ratios, with their spread
[min-max]: a round in which another process held the core slows every variant of
that round, so the ratio stays steady while the times move. OpenMP's wait policy defaults to PASSIVE
here (see below): with spinning idle workers an oversubscribed machine makes
every multi-threaded op wait for a time slice.

Peak memory: PyTorch's CPU allocator reports every allocation and free to the
profiler (``profile_memory=True``); each "[memory]" event carries the running
total of live bytes ("Total Allocated"). The peak of that total during one
forward+backward is the extra memory the step needs beyond its inputs and
weights: every tensor, saved activation and gradient it allocates, counted
exactly, independent of what glibc keeps cached. (RSS is not used: glibc keeps
freed heap pages resident and mmaps big blocks, so RSS deltas mostly measure the
malloc policy.)

Memory-traffic floor: the bytes of votes the dynamic-routing step must move
(votes written once, read once per routing pass, their gradient written once
and read twice) divided by the measured copy bandwidth of a votes-sized buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the profiler's per-block warnings would drown the report
# Idle OpenMP workers sleep instead of spinning (read when torch loads). On a shared, oversubscribed machine
# spinning workers steal the time slices of the thread doing the work: measured 2 threads, load 13 on 2 cores,
# ours 1219 ms -> 166 ms, seed ~3.9 s either way. Run with OMP_WAIT_POLICY=ACTIVE to see the other behaviour.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from references import D_I, D_O, N_I, N_O, EinsumDenseCaps, SeedDenseCaps  # noqa: E402
from stats import fmt, pair_ratios  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from capsule_kit.layers import DenseCaps  # noqa: E402
from capsule_kit.routing import RoutingConfig  # noqa: E402


def build(args: argparse.Namespace, dtype: torch.dtype, batch: int) -> dict[str, nn.Module]:
    """The variants timed at this batch size, all with the same weights: name -> module."""
    torch.manual_seed(0)
    routing, iterations = args.routing, args.iters
    its = None if routing == "attention" else iterations
    ours = DenseCaps(N_I, D_I, N_O, D_O, routing=RoutingConfig(name=routing, iterations=its))
    if routing == "em":  # non-trivial betas so that a mix-up would show
        with torch.no_grad():
            ours.routing.beta_u.copy_(torch.linspace(-0.5, 0.5, N_O).view(-1, 1))
            ours.routing.beta_a.copy_(torch.linspace(0.3, -0.3, N_O))
    variants = {"ours": ours}
    if routing == "dynamic":
        fused = DenseCaps(N_I, D_I, N_O, D_O, routing=RoutingConfig(name=routing, iterations=its, fused=True))
        fused.load_state_dict(ours.state_dict())
        variants["fused"] = fused
        variants["einsum"] = EinsumDenseCaps(ours, iterations)
    if batch <= args.seed_max_batch:
        variants["seed"] = SeedDenseCaps(ours, routing, iterations)
    return {name: m.to(dtype) for name, m in variants.items()}


def step(model: nn.Module, u: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One forward+backward; returns (poses, input grad, weight grad in our layout)."""
    x = u.detach().clone().requires_grad_(True)
    model.weight.grad = None
    out = model(x)
    poses = out.poses if isinstance(model, DenseCaps) else out
    poses.backward(grad_out)
    g = model.weight.grad
    if isinstance(model, SeedDenseCaps):
        g = g[0, ..., 0].permute(0, 2, 1)  # [1, N_i, N_o*D_o, D_i, 1] -> [N_i, D_i, N_o*D_o]
    return poses.detach(), x.grad, g.reshape(g.shape[0], g.shape[1], -1)


def peak_bytes(model: nn.Module, u: Tensor, grad_out: Tensor) -> int:
    """Peak live bytes of PyTorch's CPU allocator during one step (see the module docstring)."""
    model.weight.grad = None  # freed before the window, so the peak counts only what the step allocates
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, u, grad_out)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    mem = sorted(
        (e["ts"], e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]"
    )
    if not mem:
        return 0
    start = mem[0][1] - mem[0][2]  # the running total is process-wide: subtract its value at the start
    return max(total for _, total, _ in mem) - start


def copy_bandwidth(nbytes: int, dtype: torch.dtype) -> float:
    """Bytes per second moved (read + write) by a copy between two touched votes-sized buffers."""
    n = nbytes // torch.empty((), dtype=dtype).element_size()
    src, dst = torch.randn(n).to(dtype), torch.zeros(n, dtype=dtype)
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def interleaved(variants: dict[str, nn.Module], u: Tensor, grad_out: Tensor, repeats: int) -> dict[str, list]:
    """Wall times of ``repeats`` steps per variant, the variants interleaved (A, B, C, A, B, C, ...).

    The starting variant rotates with each repeat, so no variant always runs right after the
    same other one; repeat k of every variant ran within one round, so per-round ratios see
    the same load from other processes.
    """
    names, times = list(variants), {name: [] for name in variants}
    for _ in range(2):  # warm-up (and the fused path's compilation)
        for model in variants.values():
            step(model, u, grad_out)
    for k in range(repeats):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            t0 = time.perf_counter()
            step(variants[name], u, grad_out)
            times[name].append(time.perf_counter() - t0)
    return times


def measure(batch: int, args: argparse.Namespace) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    variants = build(args, dtype, batch)
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(batch, N_I, D_I, generator=gen)
    u = (raw * (raw.norm(dim=-1, keepdim=True) / (1 + raw.pow(2).sum(-1, keepdim=True)))).to(dtype)  # squashed
    grad_out = torch.randn(batch, N_O, D_O, generator=gen).to(dtype)

    results = {name: step(model, u, grad_out) for name, model in variants.items()}
    diffs = {
        name: {
            k: (a.float() - b.float()).abs().max().item()
            for k, a, b in zip(("out", "grad_u", "grad_w"), got, results["ours"])
        }
        for name, got in results.items()
        if name != "ours"
    }
    times = interleaved(variants, u, grad_out, args.repeats)
    peaks = {name: peak_bytes(model, u, grad_out) for name, model in variants.items()}
    vote_bytes = batch * N_I * N_O * D_O * u.element_size()
    passes = 1 + (2 * args.iters - 1) + 3 if args.routing == "dynamic" else None
    floor = passes * vote_bytes / copy_bandwidth(vote_bytes, dtype) if passes else None
    return {
        "batch": batch,
        "diffs": diffs,
        "times": times,
        "peaks": peaks,
        "floor": floor,
        "passes": passes,
        "vote_bytes": vote_bytes,
    }


def report(r: dict, dtype: str, targets: bool) -> list[str]:
    """Print one batch size's details; return its ratio lines."""
    med = {k: statistics.median(v) for k, v in r["times"].items()}
    tol = 1e-5 if dtype == "fp32" else 5e-2
    print(f"\n== B = {r['batch']}  (votes {r['vote_bytes'] / 2**20:.1f} MiB)")
    for other, diffs in r["diffs"].items():
        for name, d in diffs.items():
            print(f"max |{other} - ours| {name:7s} {d:.3g}  ({'ok' if d < tol else 'ABOVE'} {tol:g})")
    for name in r["times"]:
        runs = ", ".join(f"{t * 1e3:.1f}" for t in r["times"][name])
        print(
            f"{name:6s}: median {med[name] * 1e3:8.1f} ms   peak {r['peaks'][name] / 2**20:8.1f} MiB   runs [{runs}] ms"
        )
    lines, b = [], r["batch"]
    for ref, target in (("seed", " (target >= 15x)"), ("einsum", " (target >= 3x)")):
        target = target if targets else ""  # the targets are for fp32 dynamic routing
        if ref in med:
            parts = [f"{name} {fmt(pair_ratios(r['times'], ref, name))}" for name in ("ours", "fused") if name in med]
            lines.append(f"B={b}: speedup vs {ref}: " + ", ".join(parts) + target)
    peaks = ", ".join(f"{name} {v / 2**20:.0f} MiB" for name, v in r["peaks"].items())
    lines.append(f"B={b}: peak memory fwd+bwd: {peaks}" + (" (target <= 2 GiB)" if b == 256 else ""))
    if r["floor"] is not None:
        print(
            f"memory-traffic floor: {r['passes']} passes over the votes = "
            f"{r['passes'] * r['vote_bytes'] / 2**20:.0f} MiB at measured copy bandwidth -> {r['floor'] * 1e3:.1f} ms"
        )
        parts = [f"{name} {med[name] / r['floor']:.1f}x" for name in ("ours", "fused") if name in med]
        lines.append(
            f"B={b}: time / memory-traffic floor ({r['floor'] * 1e3:.1f} ms): "
            + ", ".join(parts)
            + (" (target <= 2x)" if targets else "")
        )
    return lines


def profile_ours(args: argparse.Namespace, steps: int = 5) -> None:
    """Per-op self time of our steps (grouped by op and input shapes): what limits the gap to the floor."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    variants = build(args, dtype, args.batch)
    u = (torch.randn(args.batch, N_I, D_I) * 0.3).to(dtype)
    grad_out = torch.randn(args.batch, N_O, D_O).to(dtype)
    for name in ("ours", "fused"):
        if name not in variants:
            continue
        for _ in range(2):
            step(variants[name], u, grad_out)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step(variants[name], u, grad_out)
        rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows)
        print(f"\nwhere {name}'s B={args.batch} step goes (self CPU time per step, top ops; batch chunks show apart)")
        for e in rows[:8]:
            shapes = str(e.input_shapes)[:70]
            print(f"  {e.key:22s} {e.self_cpu_time_total / steps / 1e3:6.2f} ms  {e.count // steps:3d} calls  {shapes}")
        print(f"  total {total / steps / 1e3:.1f} ms/step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", help="several batch sizes (instead of --batch)")
    p.add_argument("--iters", type=int, default=3, help="routing iterations (dynamic, em)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--routing", choices=("dynamic", "em", "attention"), default="dynamic")
    p.add_argument("--sweep", action="store_true", help="B in 32, 64, 128, 256")
    p.add_argument(
        "--seed-max-batch", type=int, default=128, help="skip the (slow, GiB-hungry) seed style above this B"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="also print where our step spends its time, per op")
    args = p.parse_args()
    if args.routing == "attention":
        args.iters = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(
        f"DenseCaps {N_I}x{D_I}D -> {N_O}x{D_O}D, routing={args.routing}, iterations={args.iters}, "
        f"dtype={args.dtype}, threads={torch.get_num_threads()}, repeats={args.repeats}, torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average {load:.1f} on {cores} cores"
    )
    if load > cores and torch.get_num_threads() > 1:
        print("note: the machine is oversubscribed, so timings are noisy; compare with --threads 1")
    batches = (32, 64, 128, 256) if args.sweep else (args.batches or [args.batch])
    lines = [
        line
        for b in batches
        for line in report(measure(b, args), args.dtype, (args.routing, args.dtype) == ("dynamic", "fp32"))
    ]
    if args.profile:
        profile_ours(args)
    print("\nratios: median [min-max] over interleaved rounds of (reference time / our time) in the same round")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
