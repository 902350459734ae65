"""Capsule layers: primary capsules, dense (class) capsules, matrix ConvCaps, masking, decoder.

Shapes (docs/notation.md): B batch, N_i / N_o input / output capsules,
D_i / D_o capsule dims, H, W image size, T capsule types.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import torch
from torch import Tensor, nn

from capsule_kit.errors import ConfigError
from capsule_kit.functional import get_squash, safe_norm
from capsule_kit.routing import Routed, build

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
        self.num_types, self.dim = num_types, dim
        self.conv = nn.Conv2d(in_channels, num_types * dim, kernel_size, stride=stride, groups=groups)
        self.squash = get_squash(squash)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x [B, C, H, W] -> capsules [B, T*H'*W', D]."""
        out = self.conv(x)  # [B, T*D, H', W']
        b, _, h, w = out.shape
        out = out.view(b, self.num_types, self.dim, h, w).permute(0, 1, 3, 4, 2)  # [B, T, H', W', D]
        return self.squash(out.reshape(b, self.num_types * h * w, self.dim))


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
        routing: Routing name (``dynamic``, ``em``, ``attention``).
        routing_options: Extra routing keyword arguments (e.g. ``iterations``).
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
        routing: str = "dynamic",
        routing_options: dict | None = None,
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
        self.routing = build(routing, num_in=num_in, num_out=num_out, **(routing_options or {}))

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


class PrimaryMatrixCaps(nn.Module):
    """Primary matrix capsules (Hinton 2018): 1x1 conv to 4x4 poses and sigmoid activations.

    Shapes:
        x: [B, C, H, W] -> poses [B, H, W, T, 16], activations [B, H, W, T]
    """

    def __init__(self, in_channels: int, num_types: int, pose: int = 4) -> None:
        super().__init__()
        self.num_types, self.pose_dim = num_types, pose * pose
        self.pose = nn.Conv2d(in_channels, num_types * self.pose_dim, 1)
        self.act = nn.Conv2d(in_channels, num_types, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: x [B, C, H, W] -> poses [B, H, W, T, P*P], activations [B, H, W, T] in (0, 1)."""
        b, _, h, w = x.shape
        poses = self.pose(x).view(b, self.num_types, self.pose_dim, h, w).permute(0, 3, 4, 1, 2)
        return poses.contiguous(), torch.sigmoid(self.act(x)).permute(0, 2, 3, 1).contiguous()


class ConvCaps(nn.Module):
    """Convolutional matrix-capsule layer with EM routing (Hinton 2018).

    Each output position routes the K*K*T_in capsules of its receptive field to
    T_out capsules (positions are routed independently, as in the public
    reimplementations). With ``class_caps=True`` the layer is the class capsule
    layer: transforms are shared over all positions, every position votes for
    every class, and the scaled (row, column) of each position is added to the
    first two entries of the right-hand column of the vote (coordinate addition).

    Args:
        in_types: Input capsule types T_in.
        out_types: Output capsule types T_out (classes for ``class_caps``).
        kernel_size: Receptive field K (ignored for ``class_caps``).
        stride: Stride.
        iterations: EM iterations.
        class_caps: Build the class capsule layer.

    """

    def __init__(
        self,
        in_types: int,
        out_types: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        iterations: int = 3,
        class_caps: bool = False,
    ) -> None:
        super().__init__()
        self.k, self.stride, self.class_caps = (1 if class_caps else kernel_size), stride, class_caps
        n_in = in_types * self.k * self.k
        self.weight = nn.Parameter(torch.randn(n_in, out_types, 4, 4) * 0.5)  # [K*K*T_in, T_out, 4, 4]
        self.routing = build("em", num_out=out_types, iterations=iterations)

    def _patches(self, x: Tensor) -> Tensor:
        """[B, H, W, T, ...] -> [B, H', W', K*K*T, ...] receptive fields."""
        k, s = self.k, self.stride
        x = x.unfold(1, k, s).unfold(2, k, s)  # [B, H', W', T, ..., K, K]
        x = x.movedim(-2, 3).movedim(-1, 4)  # [B, H', W', K, K, T, ...]
        return x.reshape(*x.shape[:3], -1, *x.shape[6:])

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: poses [B, H, W, T_in, 16], activations [B, H, W, T_in]
        -> poses [B, H', W', T_out, 16] (class caps: [B, T_out, 16]), activations likewise.
        """
        b, h, w = poses.shape[:3]
        if self.class_caps:
            p, a = poses.reshape(b, h * w, -1, 4, 4), activations.reshape(b, h * w, -1)
            votes = torch.einsum("bptxy,toyz->boptxz", p, self.weight)  # output-major for EM
            votes = self._add_coordinates(votes.reshape(*votes.shape[:4], 16), h, w)
            out = self.routing(votes.reshape(b, votes.shape[1], -1, 16).transpose(1, 2), a.reshape(b, -1))
            return out.poses, out.activations
        p, a = self._patches(poses), self._patches(activations)  # [B, H', W', N_i, 16], [B, H', W', N_i]
        ho, wo, n_in = p.shape[1], p.shape[2], p.shape[3]
        # votes output-major [B H' W', T_out, N_i, 16]: one copy out of the product; EM reads them as they are
        votes = torch.einsum("nixy,ioyz->noixz", p.reshape(-1, n_in, 4, 4), self.weight)
        votes = votes.reshape(b * ho * wo, -1, n_in, 16).transpose(1, 2)
        out = self.routing(votes, a.reshape(b * ho * wo, n_in))
        return out.poses.view(b, ho, wo, -1, 16), out.activations.view(b, ho, wo, -1)

    @staticmethod
    def _add_coordinates(votes: Tensor, h: int, w: int) -> Tensor:
        """Coordinate addition. Shapes: votes [B, N_o, H*W, T, 16]."""
        rows = (torch.arange(h, device=votes.device, dtype=votes.dtype) + 0.5) / h
        cols = (torch.arange(w, device=votes.device, dtype=votes.dtype) + 0.5) / w
        coords = torch.zeros(h, w, 16, device=votes.device, dtype=votes.dtype)
        coords[..., 3], coords[..., 7] = rows[:, None].expand(h, w), cols[None, :].expand(h, w)
        return votes + coords.view(1, 1, h * w, 1, 16)


def mask_capsules(poses: Tensor, y: Tensor | None = None, k: int = 1) -> Tensor:
    """Zero all capsules but the selected ones.

    Args:
        poses: [B, N, D] capsule poses.
        y: [B] class indices or [B, N] one/multi-hot mask; None selects the ``k``
            longest capsules (k = 2 for MultiMNIST).
        k: Number of longest capsules kept when ``y`` is None.

    Returns:
        [B, N, D] masked poses.

    """
    if y is None:
        top = safe_norm(poses.detach(), dim=-1).topk(k, dim=-1).indices
        mask = torch.zeros(poses.shape[:2], device=poses.device, dtype=poses.dtype).scatter_(1, top, 1.0)
    elif y.dim() == 1:
        mask = nn.functional.one_hot(y.long(), poses.shape[1]).to(poses.dtype)
    else:
        mask = y.to(poses.dtype)
    return poses * mask.unsqueeze(-1)


class CapsuleDecoder(nn.Module):
    """Fully connected reconstruction decoder (Sabour: 512-1024-out, sigmoid).

    Args:
        in_features: Flattened masked capsules (N_o * D_o).
        out_shape: Shape of one reconstruction, e.g. ``(1, 28, 28)``.
        hidden: Hidden layer widths.

    """

    def __init__(self, in_features: int, out_shape: tuple[int, ...], hidden: tuple[int, ...] = (512, 1024)) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        dims, layers = (in_features, *hidden), []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers += [nn.Linear(dims[-1], math.prod(self.out_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, masked: Tensor) -> Tensor:
        """Shapes: masked [B, N_o, D_o] -> reconstruction [B, *out_shape]."""
        return self.net(masked.flatten(1)).view(masked.shape[0], *self.out_shape)
