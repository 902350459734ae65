"""Fused dynamic routing on CPU: ``model.routing.fused: true`` (``DynamicRouting(fused=True)``).

The eager loop in :mod:`capsule_kit.routing.dynamic` reads the votes from memory
once per routing pass (2K - 1 passes for K iterations) through batched
matrix-vector products. ``fused_kernel.cpp`` routes one sample at a time instead:
all K iterations run over that sample's votes while they sit in the core's cache
(737 KB for DigitCaps), and one pass per iteration does the agreement of iteration
t with the coupling and weighted sum of iteration t + 1. The backward needs only
the final coupling ``c`` and ``dL/ds`` (earlier iterations see detached votes), so
it writes ``dL/du = c g`` once, straight into the votes' own memory layout.

The kernel is compiled with the system C++ compiler on first use
(``torch.utils.cpp_extension.load_inline``; cached under ``$TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``). The eager path stays the reference:
tests/test_routing_fused.py checks outputs and gradients against it. Where the
fused path does not apply (GPU tensors, half precision, per-input activations)
the eager loop runs instead. The fused backward is not itself differentiable
(no ``create_graph``: use the eager path for higher-order gradients).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from capsule_kit.kernels import build_cpp

SOURCE = Path(__file__).with_name("fused_kernel.cpp")


@cache
def kernel():
    """The compiled extension module, or None (with one warning) when it cannot be built here."""
    flags = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp-simd"]
    return build_cpp("capsule_kit_fused_routing", SOURCE, ["route_forward", "route_backward"], flags,
                     "fused routing", "the eager loop")  # fmt: skip


def applies(votes: Tensor, activations: Tensor | None) -> bool:
    """True when the fused kernel handles these inputs (else the caller routes eagerly)."""
    return (
        votes.device.type == "cpu"
        and votes.dtype in (torch.float32, torch.float64)
        and activations is None
        and kernel() is not None
    )


class FusedRoute(torch.autograd.Function):
    """``(s, c) = route(votes)``: the last iteration's weighted sum (before squash) and coupling.

    Shapes:
        votes: [B, N_i, N_o, D_o] -> s: [B, N_o, D_o], coupling: [B, N_i, N_o]
    """

    @staticmethod
    def forward(ctx, votes: Tensor, iterations: int, leaky: bool, efficient: bool) -> tuple[Tensor, Tensor]:
        rows_ok = votes.stride(3) == 1 and votes.stride(2) == votes.shape[3]
        s, coupling = kernel().route_forward(votes if rows_ok else votes.contiguous(), iterations, leaky, efficient)
        ctx.save_for_backward(coupling)
        ctx.layout = (votes.shape, votes.stride()) if rows_ok else None
        ctx.mark_non_differentiable(coupling)
        return s, coupling

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_s: Tensor, _grad_c: Tensor) -> tuple[Tensor | None, None, None, None]:
        (coupling,) = ctx.saved_tensors
        if ctx.layout is None:
            return coupling.unsqueeze(-1) * grad_s.unsqueeze(1), None, None, None  # [B, N_i, N_o, D_o]
        out = grad_s.new_empty_strided(*ctx.layout)  # the votes' own layout: no transposing copy upstream
        kernel().route_backward(coupling, grad_s.contiguous(), out)
        return out, None, None, None


def fused_route(votes: Tensor, iterations: int, *, leaky: bool, efficient: bool) -> tuple[Tensor, Tensor]:
    """Route with the fused kernel; see :class:`FusedRoute` (call only when :func:`applies`).

    Shapes:
        votes: [B, N_i, N_o, D_o] -> s: [B, N_o, D_o], coupling: [B, N_i, N_o]
    """
    return FusedRoute.apply(votes, iterations, leaky, efficient)
