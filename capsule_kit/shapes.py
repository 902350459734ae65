"""Shape checks for capsule layers: errors that name the layer and the expected shape legend.

A wrong input otherwise fails deep inside a matmul or a view ("mat1 and mat2 shapes
cannot be multiplied") without saying which layer or what it wanted.
"""

from __future__ import annotations

from torch import Tensor


def expect_shape(layer: str, name: str, x: Tensor, legend: str, **sizes: int | None) -> None:
    """Raise ValueError unless ``x`` matches ``legend`` (letters from docs/notation.md).

    Args:
        layer: The layer, e.g. ``"DenseCaps(num_in=1152, dim_in=8)"``.
        name: The argument, e.g. ``"u"``.
        x: The tensor.
        legend: Expected shape, e.g. ``"[B, N_i, D_i]"``.
        sizes: Sizes the layer was built for, by letter (``N_i=1152``); None: any size.

    Example:
        >>> import torch
        >>> expect_shape("DenseCaps", "u", torch.zeros(2, 3, 8), "[B, N_i, D_i]", N_i=3, D_i=8)

    """
    letters = [s.strip() for s in legend.strip("[]").split(",")]
    sizes = {**{k: int(k) for k in letters if k.isdigit()}, **sizes}  # a number in the legend is a fixed size
    wrong = x.dim() != len(letters) or any(
        sizes.get(k) is not None and x.shape[i] != sizes[k] for i, k in enumerate(letters)
    )
    if wrong:
        want = ", ".join(f"{k}={sizes[k]}" if sizes.get(k) is not None and not k.isdigit() else k for k in letters)
        raise ValueError(f"{layer}: expected {name} of shape [{want}], got {list(x.shape)}")
