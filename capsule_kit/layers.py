"""Capsule layers: primary capsules (images and sequences) and dense (class) capsules.

The matrix-capsule layers live in :mod:`capsule_kit.matrix_caps`, masking and the decoder
in :mod:`capsule_kit.decoder`; all are importable from here (``from capsule_kit.layers
import ConvCaps``). Each layer checks its input shape and names itself and the expected
shape when it is wrong.

Shapes (docs/notation.md): B batch, F feature channels, N_i / N_o input / output capsules,
D_i / D_o capsule dims, H, W image size, L sequence length, T capsule types.
"""

from __future__ import annotations

import os
import re
import warnings

import torch
from torch import Tensor, nn

from capsule_kit.decoder import CapsuleDecoder, mask_capsules
from capsule_kit.errors import ConfigError
from capsule_kit.functional import get_squash
from capsule_kit.matrix_caps import ConvCaps, PrimaryMatrixCaps
from capsule_kit.routing import Routed, RoutingConfig, as_routing
from capsule_kit.shapes import expect_shape

__all__ = [
    "CapsuleDecoder",
    "ConvCaps",
    "DenseCaps",
    "PrimaryCaps",
    "PrimaryCaps1d",
    "PrimaryMatrixCaps",
    "mask_capsules",
    "parse_bytes",
    "vote_budget",
]

# Default vote-chunk size on CPU. Blocks above glibc's 32 MiB mmap ceiling are mmapped and
# page-faulted afresh on every call, which costs more than the routing maths; smaller
# chunks are reused from the heap and stay closer to cache. Below ~8 MiB the per-op
# overhead of more chunks wins (measured on DigitCaps, benchmarks/routing.py).
CPU_VOTE_BYTES = 16 << 20
# Memory budget for the votes of one DenseCaps call on any device (bytes, or "2GiB", "512MB").
VOTE_BUDGET_ENV, DEFAULT_VOTE_BUDGET = "CAPSULE_KIT_VOTE_BUDGET", 2 << 30
CUDA_FREE_SHARE = 8  # votes of one chunk may take 1/8 of the GPU's free memory
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """``"2GiB"``, ``"512MiB"``, ``"1.5G"``, ``"3e9"`` or ``4096`` -> bytes.

    K/M/G/T (with an optional ``iB`` or ``B``) are binary multiples; ``KB``/``MB``/``GB``/``TB``
    are decimal. Raises ValueError unless the result is a positive number of bytes.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b?)\s*", str(text), re.I)
    if not m or (m.group(2) == "" and m.group(3) not in ("", "b", "B")):
        raise ValueError(f"not a byte size: '{text}' (examples: 2GiB, 512MiB, 1000000)")
    prefix = m.group(2).lower()
    unit = 1000 ** ("kmgt".index(prefix) + 1) if prefix and m.group(3).lower() == "b" else _UNITS[prefix]
    value = int(float(m.group(1)) * unit)
    if value < 1:
        raise ValueError(f"byte size must be positive, got '{text}'")
    return value


def vote_budget() -> int:
    """Bytes of votes one DenseCaps call may hold: ``$CAPSULE_KIT_VOTE_BUDGET``, default 2 GiB."""
    raw = os.environ.get(VOTE_BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_VOTE_BUDGET
    try:
        return parse_bytes(raw)
    except ValueError as exc:
        raise ConfigError(f"${VOTE_BUDGET_ENV}: {exc}") from None


def vote_limit(device: torch.device, budget: int) -> int:
    """Vote bytes per chunk on ``device``: on CPU at most 16 MiB (cache), on CUDA at most
    1/``CUDA_FREE_SHARE`` of the free memory (the routing temporaries and gradients are a few
    times the votes), never more than ``budget``.
    """
    if device.type == "cpu":
        return min(budget, CPU_VOTE_BYTES)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(budget, free // CUDA_FREE_SHARE))
    return budget


class PrimaryCaps(nn.Module):
    """Convolution -> capsules (Sabour's PrimaryCaps), then squash.

    Channels are grouped per capsule type, ``[B, T*D, H, W] -> [B, T*H*W, D]``, so
    a capsule is the D channels of one type at one position (the seed's plain
    ``view(B, -1, D)`` mixes neighbouring positions into one capsule instead).

    Args:
        in_channels: Input feature channels.
        num_types: Capsule types T (32 in Sabour).
        dim: Capsule dimension D (8 in Sabour).
        kernel_size: Convolution kernel (9).
        stride: Convolution stride (2).
        groups: Convolution groups (``in_channels`` for Efficient-CapsNet's depthwise conv).
        squash: ``"sabour"`` or ``"efficient"``.

    """

    legend = "[B, F, H, W]"  # the input's shape; PrimaryCaps1d: [B, F, L]

    def __init__(
        self,
        in_channels: int,
        *,
        num_types: int = 32,
        dim: int = 8,
        kernel_size: int = 9,
        stride: int = 2,
        groups: int = 1,
        squash: str = "sabour",
    ) -> None:
        super().__init__()
        self.num_types, self.dim, self.in_channels = num_types, dim, in_channels
        conv = nn.Conv1d if self.legend == "[B, F, L]" else nn.Conv2d
        self.conv = conv(in_channels, num_types * dim, kernel_size, stride=stride, groups=groups)
        self.squash = get_squash(squash)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x [B, F, H, W] -> capsules [B, T*H'*W', D] (PrimaryCaps1d: x [B, F, L] -> [B, T*L', D])."""
        name = f"{type(self).__name__}(in_channels={self.in_channels})"
        expect_shape(name, "x", x, self.legend, F=self.in_channels)
        out = self.conv(x)  # [B, T*D, H', W'] or [B, T*D, L']
        b, positions = out.shape[0], out.shape[2:]
        out = out.view(b, self.num_types, self.dim, -1).transpose(2, 3)  # [B, T, H'*W' or L', D]
        return self.squash(out.reshape(b, self.num_types * positions.numel(), self.dim))


class PrimaryCaps1d(PrimaryCaps):
    """Primary capsules over sequences (tokens, time steps): a 1-D convolution -> capsules, then squash.

    The sequence counterpart of :class:`PrimaryCaps`, with the same arguments (``kernel_size``
    and ``stride`` along the sequence) and the same type-major order ``[B, T*D, L'] ->
    [B, T*L', D]``, so ``DenseCaps(shared="positions", types=T)`` shares a transform per type.

    Shapes:
        x: [B, F, L] (F: channels, e.g. an embedding dimension; L: sequence length)
        returns: [B, T*L', D], L' = (L - kernel_size) // stride + 1

    Example:
        >>> import torch
        >>> caps = PrimaryCaps1d(16, num_types=4, dim=8, kernel_size=3, stride=1)
        >>> caps(torch.randn(2, 16, 10)).shape
        torch.Size([2, 32, 8])

    """

    legend = "[B, F, L]"


class DenseCaps(nn.Module):
    """Fully connected capsule layer: votes by batched matmul, then routing.

    ``u_hat_j|i = W_ij u_i`` computed as one bmm per input capsule (or type), so
    no ``repeat``ed copy of the inputs or weights is ever made. The votes are
    written input-major ([N_i, B, N_o, D_o] in memory), the layout in which the
    routing contractions are copy-free batched matrix-vector products.

    Args:
        num_in: Input capsules N_i.
        dim_in: Input capsule dim D_i.
        num_out: Output capsules N_o.
        dim_out: Output capsule dim D_o.
        routing: The routing, by name (``"dynamic"``) or as a :class:`RoutingConfig`
            (name, iterations, options); the layer passes ``num_in``/``num_out``.
        shared: ``"none"`` (one W per (i, j), Sabour), ``"positions"`` (one W per
            (type, j), shared over ``num_in / types`` positions) or ``"inputs"``
            (one W per j, shared by all inputs: parameters grow with N_o only).
        types: Number of input types for ``shared="positions"``; inputs are ordered
            type-major ``[T, positions]`` as :class:`PrimaryCaps` emits them.
        init_std: Weight init std (0.01 as in the seed / Sabour's code).
        max_vote_bytes: When the votes of one call would exceed this many bytes,
            they are computed and routed in chunks of the batch (same results:
            routing is per sample; the output capsules are never split, since
            the routing softmax couples them). None: automatic, the memory budget
            ``$CAPSULE_KIT_VOTE_BUDGET`` (default 2 GiB) on every device, and at
            most ``CPU_VOTE_BYTES`` (16 MiB) on CPU (no page faults per call:
            ~2.5x faster on DigitCaps, and a fraction of the memory). Pass a huge
            number to never chunk. When one sample alone exceeds the budget it
            is routed alone, with a warning.

    """

    def __init__(
        self,
        num_in: int,
        dim_in: int,
        num_out: int,
        dim_out: int,
        *,
        routing: RoutingConfig | str = "dynamic",
        shared: str = "none",
        types: int | None = None,
        init_std: float = 0.01,
        max_vote_bytes: int | None = None,
    ) -> None:
        super().__init__()
        if shared not in ("none", "positions", "inputs"):
            raise ValueError(f"shared must be none|positions|inputs, got '{shared}'")
        n_w = {"none": num_in, "positions": types or 0, "inputs": 1}[shared]
        if shared == "positions" and (not types or num_in % types):
            raise ValueError(f"shared='positions' needs types dividing num_in={num_in}, got {types}")
        self.num_in, self.dim_in, self.num_out, self.dim_out, self.shared = num_in, dim_in, num_out, dim_out, shared
        self.weight = nn.Parameter(init_std * torch.randn(n_w, dim_in, num_out * dim_out))  # [N_w, D_i, N_o*D_o]
        self.max_vote_bytes = max_vote_bytes
        self.routing = as_routing(routing).build(num_in=num_in, num_out=num_out)

    def votes(self, u: Tensor) -> Tensor:
        """Compute votes.

        Shapes:
            u: [B, N_i, D_i]
            returns: [B, N_i, N_o, D_o] (a view of input-major memory)
        """
        b = u.shape[0]
        if self.shared == "none":
            out = torch.bmm(u.transpose(0, 1), self.weight)  # [N_i, B, N_o*D_o]
        elif self.shared == "inputs":
            out = (u.transpose(0, 1).reshape(-1, self.dim_in) @ self.weight[0]).view(self.num_in, b, -1)
        else:
            t = self.weight.shape[0]
            x = u.view(b, t, -1, self.dim_in).permute(1, 2, 0, 3).reshape(t, -1, self.dim_in)  # [T, P*B, D_i]
            out = torch.bmm(x, self.weight).view(self.num_in, b, -1)
        return out.view(self.num_in, b, self.num_out, self.dim_out).permute(1, 0, 2, 3)

    def forward(self, u: Tensor, activations: Tensor | None = None) -> Routed:
        """Shapes: u [B, N_i, D_i], activations [B, N_i] -> Routed(poses [B, N_o, D_o], ...)."""
        name = f"DenseCaps(num_in={self.num_in}, dim_in={self.dim_in})"
        expect_shape(name, "u", u, "[B, N_i, D_i]", N_i=self.num_in, D_i=self.dim_in)
        if activations is not None:
            expect_shape(name, "activations", activations, "[B, N_i]", B=u.shape[0], N_i=self.num_in)
        batch, chunk = u.shape[0], self._chunk(u)
        if chunk >= batch:
            return self.routing(self.votes(u), activations)
        n = -(-batch // chunk)
        sizes = [batch // n + (k < batch % n) for k in range(n)]  # balanced: no tiny last chunk
        # split (not slicing): its backward writes each chunk's gradient once, no zero-filled full-size copies
        acts = [None] * n if activations is None else activations.split(sizes)
        parts = [self.routing(self.votes(x), a) for x, a in zip(u.split(sizes), acts)]
        return Routed(*(torch.cat(p, dim=0) for p in zip(*parts)))

    def _chunk(self, u: Tensor) -> int:
        """Samples per chunk: as many as fit the vote budget (at least one)."""
        budget = vote_budget() if self.max_vote_bytes is None else self.max_vote_bytes
        per_sample = self.num_in * self.num_out * self.dim_out * u.element_size()
        if per_sample > budget:
            warnings.warn(
                f"DenseCaps: one sample's votes ({per_sample / 2**20:.1f} MiB) exceed the vote budget "
                f"({budget / 2**20:.1f} MiB, max_vote_bytes or ${VOTE_BUDGET_ENV}); routing one sample at a time",
                stacklevel=3,
            )
        limit = budget if self.max_vote_bytes is not None else vote_limit(u.device, budget)
        return min(u.shape[0], max(1, limit // per_sample))
