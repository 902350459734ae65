"""Digits figures: reconstructions, Sabour Fig. 4 perturbations, MultiMNIST overlays.

The confusion matrix is one of the runner's standard pictures (capsule_kit.plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsule_kit.layers import mask_capsules
from capsule_kit.plots import plt

CAPTIONS = {  # shown under each picture in report.html
    "reconstructions.png": "Test digits (top row) and their reconstructions by the decoder from the "
    "masked class capsule (bottom row).",
    "perturbations.png": "Sabour et al. Fig. 4: each row decodes a test digit's class capsule with one "
    "dimension swept over [-0.25, 0.25] in 11 steps; what a dimension encodes shows as a change of stroke.",
    "multimnist_reconstructions.png": "MultiMNIST: overlapping test digits (top) and the two most active "
    "capsules decoded separately, overlaid in red (1st) and green (2nd).",
}


def _grid(rows: list[Tensor], titles: list[str], out: Path, cmap: str | None = "gray") -> Path:
    """Rows of images [N, H, W] or [N, H, W, 3] as one figure."""
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n, 0.95 * len(rows)), squeeze=False)
    for r, (imgs, title) in enumerate(zip(rows, titles)):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c].numpy(), cmap=cmap if imgs[c].dim() == 2 else None, vmin=0, vmax=1)
        axes[r][0].set_title(title, fontsize=7, loc="left")
    # fixed margins: tight_layout cannot fit the long row titles that run across the images
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.2 / fig.get_figheight(), hspace=0.3, wspace=0.05)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@torch.no_grad()
def perturbation_figure(model: nn.Module, x: Tensor, y: Tensor, out: Path, steps: int = 11) -> Path:
    """Sabour Fig. 4: tweak each class-capsule dimension in [-0.25, 0.25] and decode."""
    poses = model(x, y).poses  # [B, N_o, D_o]
    deltas = torch.linspace(-0.25, 0.25, steps, device=x.device)
    rows, titles = [], []
    for i in range(len(x)):
        masked = mask_capsules(poses[i : i + 1], y[i : i + 1])  # [1, N_o, D_o]
        for d in range(poses.shape[-1]):
            batch = masked.repeat(steps, 1, 1)
            batch[:, y[i], d] += deltas
            rows.append(model.decoder(batch).squeeze(1).cpu())
            titles.append(f"digit {int(y[i])}, dim {d}")
    return _grid(rows, titles, out)


@torch.no_grad()
def digits_pictures(task: Any, model: nn.Module, data: Any, run_dir: Path, device: Any) -> dict[str, Any]:
    """Write the digits pictures into ``run_dir``; returns their names."""
    model.eval()
    batch = data.test[:8]  # TensorPairs slices every tensor
    x, y, digits = task.prepare(tuple(t.to(device) for t in batch), train=False)
    made = []
    decoder = getattr(model, "decoder", None)
    if task.multi and decoder is not None:
        made.append(multimnist_figure(model, x, y, run_dir / "multimnist_reconstructions.png"))
    elif decoder is not None:
        recon = model(x).reconstruction
        made.append(
            _grid(
                [x.squeeze(1).cpu(), recon.squeeze(1).cpu()],
                ["input", "reconstruction"],
                run_dir / "reconstructions.png",
            )
        )
        made.append(perturbation_figure(model, x[:2], y[:2], run_dir / "perturbations.png"))
    return {"pictures": [p.name for p in made], "captions": CAPTIONS}


@torch.no_grad()
def multimnist_figure(model: nn.Module, x: Tensor, y: Tensor, out: Path) -> Path:
    """Input and the two digits reconstructed separately, overlaid in red and green (Sabour Fig. 5)."""
    poses = model(x).poses
    top2 = poses.norm(dim=-1).topk(2, dim=-1).indices  # [B, 2]
    ra = model.decoder(mask_capsules(poses, top2[:, 0])).squeeze(1).cpu()
    rb = model.decoder(mask_capsules(poses, top2[:, 1])).squeeze(1).cpu()
    overlay = torch.stack([ra, rb, torch.zeros_like(ra)], dim=-1).clamp(0, 1)
    titles = [
        "input (labels " + ", ".join(f"{a}{b}" for a, b in y.tolist()) + ")",
        "reconstruction: red = 1st, green = 2nd (pred " + ", ".join(f"{a}{b}" for a, b in top2.tolist()) + ")",
    ]
    return _grid([x.squeeze(1).cpu(), overlay], titles, out)
