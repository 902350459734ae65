"""DigitCaps forward+backward: capsule-kit's DenseCaps against the seed's implementation.

The layer is Sabour's class-capsule layer: B x 1152 input capsules of 8D -> 10
capsules of 16D, routed with 3 iterations. Both variants get the same inputs,
the same weights (the seed's [1, N_i, N_o*D_o, D_i, 1] layout mapped from ours)
and the same upstream gradient; the script prints the largest differences of
outputs, input gradients and weight gradients, then times and peak memory, then
the ratios LAST.

    python benchmarks/routing.py                         # B=64, dynamic routing, fp32
    python benchmarks/routing.py --sweep                 # B in 32, 64, 128
    python benchmarks/routing.py --routing em --dtype bf16 --repeats 9

Seed style (the reference, written here device-agnostic): votes as
``W * u.repeat(1, 1, N_o*D_o, 1, 1)`` summed over D_i (two [B, N_i, N_o*D_o, D_i]
temporaries), then the routing loop with broadcasts (``c[..., None] * u_hat``
summed over inputs, ``outputs * u_hat`` summed over D_o), and the seed's squash
(``norm / (1 + norm^2) * s / (norm + 1e-8)``). For ``--routing em`` / ``attention``
the reference uses the same seed-style votes and a straightforward broadcast
version of the formulas in capsule_kit/routing/em.py / attention.py.

Time: median wall time of ``--repeats`` forward+backward passes, after two
warm-up passes, the variants interleaved so that load from other processes on
this shared machine hits both alike. OpenMP's wait policy defaults to PASSIVE
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
import math
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
from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from capsule_kit.layers import DenseCaps  # noqa: E402

N_I, D_I, N_O, D_O = 1152, 8, 10, 16


def seed_squash(inputs: Tensor, axis: int = -1) -> Tensor:
    norm = torch.norm(inputs, dim=axis, keepdim=True)
    scale = norm**2 / (1 + norm**2) / (norm + 1e-8)
    return scale * inputs


def seed_dynamic(u_hat: Tensor, iterations: int) -> Tensor:
    """The seed's routing loop, with ``.cuda()`` replaced by the votes' device."""
    u_hat_for_route = u_hat.detach()
    b = torch.zeros(u_hat.size(0), N_I, N_O, device=u_hat.device, dtype=u_hat.dtype)
    for i in range(iterations):
        c = F.softmax(b, dim=2)
        if i < iterations - 1:
            outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat_for_route, dim=1, keepdims=True))
            b = b + torch.sum(outputs * u_hat_for_route, dim=-1)
        else:
            outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat, dim=1, keepdims=True))
    return torch.squeeze(outputs, dim=1)


def naive_em(v: Tensor, beta_u: Tensor, beta_a: Tensor, iterations: int, eps: float = 1e-4) -> Tensor:
    """EM routing (em.py's docstring) with plain broadcasts; returns poses."""
    v = v.float()
    r = torch.full(v.shape[:3], 1.0 / N_O, dtype=v.dtype)
    for it in range(iterations):
        lam = 1.0 + (2.0 - 1.0) * it / max(iterations - 1, 1) if iterations > 1 else 2.0
        mass = r.sum(1)  # input activations are 1
        coeff = (r / (mass.unsqueeze(1) + eps)).unsqueeze(-1)
        mu = (coeff * v).sum(1)
        var = (coeff * (v - mu.unsqueeze(1)) ** 2).sum(1) + eps
        cost = ((beta_u.view(1, N_O, 1) + 0.5 * torch.log(var)) * (mass / (N_I / N_O)).unsqueeze(-1)).sum(-1)
        z = (cost - cost.mean(-1, keepdim=True)) / ((cost - cost.mean(-1, keepdim=True)) ** 2).mean(
            -1, keepdim=True
        ).add(eps).sqrt()
        logit = lam * (beta_a - z)
        if it < iterations - 1:
            log_p = -0.5 * (((v - mu.unsqueeze(1)) ** 2) / var.unsqueeze(1) + torch.log(2 * math.pi * var).unsqueeze(1))
            r = torch.softmax(F.logsigmoid(logit).unsqueeze(1) + log_p.sum(-1), dim=-1)
    return mu


def naive_attention(v: Tensor, prior: Tensor) -> Tensor:
    """Efficient-CapsNet routing (attention.py's docstring) with plain broadcasts."""
    scores = (v * v.sum(1, keepdim=True)).sum(-1) / math.sqrt(D_O)
    c = torch.softmax(scores.float(), dim=-1) + prior
    s = (c.unsqueeze(-1).to(v.dtype) * v).sum(1)
    r = s.norm(dim=-1, keepdim=True)
    return (1 - torch.exp(-r)) * s / (r + 1e-8)


class SeedDenseCaps(nn.Module):
    """The seed's DenseCaps (votes by repeat + broadcast), fed our layer's weights."""

    def __init__(self, ours: DenseCaps, routing: str, iterations: int) -> None:
        super().__init__()
        # ours: [N_i, D_i, N_o*D_o] -> seed: [1, N_i, N_o*D_o, D_i, 1]
        self.weight = nn.Parameter(ours.weight.detach().permute(0, 2, 1)[None, ..., None].clone())
        self.routing, self.iterations, self.ours = routing, iterations, ours

    def forward(self, u: Tensor) -> Tensor:
        u_hat = u[:, :, None, :, None]
        u_hat = self.weight * u_hat.repeat(1, 1, N_O * D_O, 1, 1)
        u_hat = torch.sum(u_hat, dim=3)
        u_hat = u_hat.view(-1, N_I, N_O, D_O, 1).squeeze(-1)
        if self.routing == "dynamic":
            return seed_dynamic(u_hat, self.iterations)
        if self.routing == "em":
            r = self.ours.routing
            return naive_em(u_hat, r.beta_u.detach(), r.beta_a.detach(), self.iterations).to(u.dtype)
        return naive_attention(u_hat, self.ours.routing.prior.detach()).to(u.dtype)


def build(routing: str, iterations: int, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    opts = {} if routing == "attention" else {"iterations": iterations}
    ours = DenseCaps(N_I, D_I, N_O, D_O, routing=routing, routing_options=opts)
    if routing == "em":  # non-trivial betas so that a mix-up would show
        with torch.no_grad():
            ours.routing.beta_u.copy_(torch.linspace(-0.5, 0.5, N_O).view(-1, 1))
            ours.routing.beta_a.copy_(torch.linspace(0.3, -0.3, N_O))
    seed = SeedDenseCaps(ours, routing, iterations)
    return ours.to(dtype), seed.to(dtype)


def step(model: nn.Module, u: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One forward+backward; returns (poses, input grad, weight grad in our layout)."""
    x = u.detach().clone().requires_grad_(True)
    model.weight.grad = None
    out = model(x)
    poses = out.poses if isinstance(model, DenseCaps) else out
    poses.backward(grad_out)
    g = model.weight.grad
    g = g if isinstance(model, DenseCaps) else g[0, ..., 0].permute(0, 2, 1)
    return poses.detach(), x.grad, g


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


def measure(batch: int, args: argparse.Namespace) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    ours, seed = build(args.routing, args.iters, dtype)
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(batch, N_I, D_I, generator=gen)
    u = (raw * (raw.norm(dim=-1, keepdim=True) / (1 + raw.pow(2).sum(-1, keepdim=True)))).to(dtype)  # squashed
    grad_out = torch.randn(batch, N_O, D_O, generator=gen).to(dtype)

    got, want = step(ours, u, grad_out), step(seed, u, grad_out)
    diffs = {
        name: (a.float() - b.float()).abs().max().item() for name, a, b in zip(("out", "grad_u", "grad_w"), got, want)
    }
    times = {"ours": [], "seed": []}
    for _ in range(2):  # warm-up
        step(ours, u, grad_out), step(seed, u, grad_out)
    for _ in range(args.repeats):
        for name, model in (("ours", ours), ("seed", seed)):
            t0 = time.perf_counter()
            step(model, u, grad_out)
            times[name].append(time.perf_counter() - t0)
    peaks = {name: peak_bytes(model, u, grad_out) for name, model in (("ours", ours), ("seed", seed))}
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


def report(r: dict, dtype: str) -> tuple[float, float]:
    med = {k: statistics.median(v) for k, v in r["times"].items()}
    tol = 1e-5 if dtype == "fp32" else 5e-2
    print(f"\n== B = {r['batch']}  (votes {r['vote_bytes'] / 2**20:.1f} MiB)")
    for name, d in r["diffs"].items():
        print(f"max |ours - seed| {name:7s} {d:.3g}  ({'ok' if d < tol else 'ABOVE'} {tol:g})")
    for name in ("seed", "ours"):
        runs = ", ".join(f"{t * 1e3:.1f}" for t in sorted(r["times"][name]))
        print(f"{name}: median {med[name] * 1e3:8.1f} ms   peak {r['peaks'][name] / 2**20:8.1f} MiB   runs [{runs}] ms")
    if r["floor"] is not None:
        print(
            f"memory-traffic floor: {r['passes']} passes over the votes = "
            f"{r['passes'] * r['vote_bytes'] / 2**20:.0f} MiB at measured copy bandwidth -> "
            f"{r['floor'] * 1e3:.1f} ms (ours {med['ours'] * 1e3:.1f} ms, {med['ours'] / r['floor']:.1f}x the floor)"
        )
    return med["seed"] / med["ours"], r["peaks"]["seed"] / max(r["peaks"]["ours"], 1)


def profile_ours(args: argparse.Namespace, steps: int = 5) -> None:
    """Per-op self time of our step (grouped by op and input shapes): what limits the gap to the floor."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    ours, _ = build(args.routing, args.iters, dtype)
    u = (torch.randn(args.batch, N_I, D_I) * 0.3).to(dtype)
    grad_out = torch.randn(args.batch, N_O, D_O).to(dtype)
    for _ in range(2):
        step(ours, u, grad_out)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step(ours, u, grad_out)
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"\nwhere our B={args.batch} step goes (self CPU time per step, top ops; batch chunks show apart)")
    for e in rows[:10]:
        shapes = str(e.input_shapes)[:70]
        print(f"  {e.key:22s} {e.self_cpu_time_total / steps / 1e3:6.2f} ms  {e.count // steps:3d} calls  {shapes}")
    print(f"  total {total / steps / 1e3:.1f} ms/step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=3, help="routing iterations (dynamic, em)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--routing", choices=("dynamic", "em", "attention"), default="dynamic")
    p.add_argument("--sweep", action="store_true", help="B in 32, 64, 128")
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
    ratios = [(b, *report(measure(b, args), args.dtype)) for b in ((32, 64, 128) if args.sweep else (args.batch,))]
    if args.profile:
        profile_ours(args)
    print()
    target = "; target >= 15x, >= 5x" if (args.routing, args.dtype) == ("dynamic", "fp32") else ""
    for b, speed, mem in ratios:
        print(f"B={b}: speedup {speed:.1f}x, peak memory ratio {mem:.1f}x (seed / capsule-kit{target})")


if __name__ == "__main__":
    main()
