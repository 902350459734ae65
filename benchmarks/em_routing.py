"""EM routing: capsule_kit's EMRouting against a straightforward per-output-capsule reference.

The reference (written here) follows the formulas of capsule_kit/routing/em.py's
docstring with a Python loop over the output capsules j in every M-step and
E-step, as a direct reading of the paper would:

    M-step (each j):  R'_ij = R_ij a_i,  mu_j = sum_i R'_ij V_ij / sum_i R'_ij,
                      sigma_j^2 = sum_i R'_ij (V_ij - mu_j)^2 / sum_i R'_ij + eps,
                      cost_j = sum_h (beta_u + log sigma_jh) r_j,  r_j = sum_i R'_ij / (N_i / N_o)
                      a_j = sigmoid(lambda (beta_a - norm(cost_j)))   (norm over j)
    E-step (each j):  log p_ij = log N(V_ij; mu_j, sigma_j),  R_ij = softmax_j(log a_j + log p_ij)

Outputs, activations, assignments and the gradients of votes and betas are
compared in fp64 (max abs diff); forward+backward is timed in fp32 (median of
``--repeats`` after warm-up, the two variants interleaved so that load from other
processes hits both alike). The shapes are those of the small matrix-capsule model
on MNIST (recipes/mnist_em.yaml; default batch 16, the recipe uses 64): ConvCaps1, ConvCaps2 and the class
capsules. Ratios LAST.

    python benchmarks/em_routing.py                 # batch 16, 3 iterations
    python benchmarks/em_routing.py --batch 64 --repeats 11 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capsule_kit.routing import EMRouting  # noqa: E402


def default_threads() -> int:
    """All cores, or 1 when other processes already oversubscribe them.

    On an oversubscribed machine every multi-threaded op waits for its slowest
    thread's next time slice, which slows many-op steps far more than a single
    thread does (see benchmarks/train_throughput.py).
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else cores


# name: (positions per image, N_i, N_o) of the small matrix-capsule model (A=64, B=8, C=D=16) on 28x28
CASES = {"ConvCaps1": (25, 72, 16), "ConvCaps2": (9, 144, 16), "ClassCaps": (1, 144, 10)}


def reference_em(votes: Tensor, a_in: Tensor, em: EMRouting) -> tuple[Tensor, Tensor, Tensor]:
    """EM routing with one Python iteration per output capsule. votes [B, N_i, N_o, D], a_in [B, N_i]."""
    _, n_in, n_out, _ = votes.shape
    eps, share = em.eps, n_in / n_out
    assign = [votes.new_full(votes.shape[:2], 1.0 / n_out) for _ in range(n_out)]  # R_.j: [B, N_i] each
    for it in range(em.iterations):
        lam = em.inverse_temperature(it)
        mus, variances, costs = [], [], []
        for j in range(n_out):  # M-step
            v = votes[:, :, j]  # [B, N_i, D]
            weight = assign[j] * a_in
            mass = weight.sum(dim=1)  # [B]
            coeff = (weight / (mass[:, None] + eps))[..., None]
            mu = (coeff * v).sum(dim=1)  # [B, D]
            var = (coeff * (v - mu[:, None]) ** 2).sum(dim=1) + eps
            costs.append(((em.beta_u[j] + 0.5 * torch.log(var)) * (mass / share)[:, None]).sum(dim=-1))
            mus.append(mu)
            variances.append(var)
        cost = torch.stack(costs, dim=-1)  # [B, N_o]: the normalisation couples the outputs
        mean = cost.mean(dim=-1, keepdim=True)
        std = ((cost - mean) ** 2).mean(dim=-1, keepdim=True).add(eps).sqrt()
        logit = lam * (em.beta_a - (cost - mean) / std)
        if it == em.iterations - 1:
            break
        log_post = []
        for j in range(n_out):  # E-step
            diff = votes[:, :, j] - mus[j][:, None]
            var = variances[j][:, None]
            log_p = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(dim=-1)  # [B, N_i]
            log_post.append(F.logsigmoid(logit[:, j])[:, None] + log_p)
        norm = torch.logsumexp(torch.stack(log_post, dim=-1), dim=-1)  # [B, N_i]
        assign = [torch.exp(lp - norm) for lp in log_post]
    return torch.stack(mus, dim=1), torch.sigmoid(logit), torch.stack(assign, dim=-1)


def ours(votes: Tensor, a_in: Tensor, em: EMRouting) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(em(votes, a_in))


def run_once(fn, votes: Tensor, a_in: Tensor, em: EMRouting) -> tuple[list[Tensor], list[Tensor]]:
    """Forward and backward of ``sum(poses^2) + sum(activations)``; returns outputs and gradients."""
    em.zero_grad(set_to_none=True)
    v = votes.detach().requires_grad_(True)
    poses, acts, assign = fn(v, a_in, em)
    (poses.pow(2).sum() + acts.sum()).backward()
    return [poses, acts, assign], [v.grad, em.beta_u.grad, em.beta_a.grad]


def inputs(case: str, batch: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    positions, n_in, n_out = CASES[case]
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(batch * positions, n_in, n_out, 16, generator=g, dtype=dtype)
    return votes, torch.rand(batch * positions, n_in, generator=g, dtype=dtype)


def make_em(case: str, iterations: int, dtype: torch.dtype) -> EMRouting:
    em = EMRouting(num_out=CASES[case][2], iterations=iterations).to(dtype)
    with torch.no_grad():  # non-zero betas, so their gradients and the cost terms are exercised
        em.beta_u.copy_(torch.linspace(-0.5, 0.5, em.beta_u.numel()).view_as(em.beta_u))
        em.beta_a.copy_(torch.linspace(0.5, -0.5, em.beta_a.numel()))
    return em


def check(case: str, args: argparse.Namespace) -> float:
    """Largest difference between the two implementations in fp64."""
    em = make_em(case, args.iters, torch.float64)
    votes, a_in = inputs(case, min(args.batch, 8), torch.float64)
    got, want = run_once(ours, votes, a_in, em), run_once(reference_em, votes, a_in, em)
    names = ["poses", "activations", "assignments", "grad votes", "grad beta_u", "grad beta_a"]
    diffs = {n: float((a - b).detach().abs().max()) for n, a, b in zip(names, [*got[0], *got[1]], [*want[0], *want[1]])}
    print("  max |ours - reference| (fp64): " + ", ".join(f"{n} {d:.2g}" for n, d in diffs.items()))
    return max(diffs.values())


def time_case(case: str, args: argparse.Namespace) -> dict[str, float]:
    em = make_em(case, args.iters, torch.float32)
    votes, a_in = inputs(case, args.batch, torch.float32)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for k in range(args.warmup + args.repeats):
        for name, fn in (("ours", ours), ("reference", reference_em)):
            t0 = time.perf_counter()
            run_once(fn, votes, a_in, em)
            if k >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    shape = "x".join(map(str, votes.shape))
    print(f"  votes {shape} ({votes.numel() * 4 / 2**20:.1f} MiB)")
    for n, t in times.items():
        print(f"  {n:9s}: median {med[n] * 1e3:8.1f} ms  runs [{', '.join(f'{x * 1e3:.0f}' for x in t)}] ms")
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="images per batch (votes: batch x positions)")
    p.add_argument("--iters", type=int, default=3, help="EM iterations")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, 1 if busy)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = p.parse_args()
    args.threads = args.threads or default_threads()
    torch.set_num_threads(args.threads)
    print(f"EM routing forward+backward, batch {args.batch}, {args.iters} iterations, {args.threads} thread(s)")
    print("note: medians; on a shared machine other processes' load adds noise to both variants")
    results = []
    for case in args.cases:
        print(f"\n== {case}")
        worst = check(case, args)
        results.append((case, worst, time_case(case, args)))
    print()
    for case, worst, med in results:
        status = "ok" if worst < 1e-9 else "MISMATCH"
        speedup = med["reference"] / med["ours"]
        print(f"{case}: speedup {speedup:.2f}x (reference / capsule-kit), max diff {worst:.1g} {status}")


if __name__ == "__main__":
    main()
