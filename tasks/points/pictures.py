"""Pictures and extra results of a points run.

* ``recon_<k>_<class>.ply``: reconstructions with each point coloured by the
  latent capsule that decoded it (the paper's part-aware figure), next to
  ``input_<k>_<class>.ply``;
* ``reconstructions.png``: input vs part-coloured reconstruction, rendered offscreen by open3d
  where that works, else matplotlib 3D scatter (``extra["render"]`` says which; see render.py);
* parameter counts of the latent transform, shared and full.

The SVM transfer accuracy is a test metric (``Task.evaluate_extra``, transfer.py); the runner's
standard pictures draw ``svm_confusion.png`` from its ``svm_confusion_matrix``.

Shapes: P points, N_o latent capsules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.colors
import numpy as np
import torch
from torch import nn

from capsule_kit.data import Splits
from capsule_kit_tasks.points.chamfer import chamfer_distance
from capsule_kit_tasks.points.io import write_ply
from capsule_kit_tasks.points.model import PointCapsNet, transform_params
from capsule_kit_tasks.points.render import render_panels


def capsule_colors(num_caps: int) -> np.ndarray:
    """Distinct RGB colours in [0, 1], one per capsule (hues spread, neighbours far apart). Shapes: [N_o, 3]."""
    hues = (np.arange(num_caps) * 0.618033988749895) % 1.0  # golden-ratio steps
    hsv = np.stack([hues, np.full(num_caps, 0.85), np.where(np.arange(num_caps) % 2, 0.95, 0.7)], 1)
    return matplotlib.colors.hsv_to_rgb(hsv)


CAPTIONS = {  # shown under each picture in report.html
    "reconstructions.png": "Test point clouds (top) and their reconstructions (bottom), each point "
    "coloured by the latent capsule that produced it; CD: Chamfer distance.",
    "svm_confusion.png": "Transfer: a linear SVM on the frozen latent capsules, confusion matrix on the "
    "test shapes (rows: true class, columns: predicted).",
}


def pick_shapes(labels: torch.Tensor, k: int) -> list[int]:
    """Up to ``k`` test indices, the first shape of each class before any repeats."""
    firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()]
    rest = [i for i in range(len(labels)) if i not in firsts]
    return (firsts + rest)[:k]


@torch.no_grad()
def write_reconstructions(task, model: nn.Module, data: Splits, run_dir: Path, device: Any) -> tuple[list[str], str]:
    """Part-coloured PLY files and ``reconstructions.png`` for a few test shapes.

    Returns:
        The file names, and the renderer of the PNG (``open3d`` or ``matplotlib``; ``""`` without shapes).

    """
    k = task.cfg.pictures.shapes
    ds, ps = data.test, task.point_set
    idx = pick_shapes(ds.labels, k)
    if not idx:
        return [], ""
    model.eval()
    points = ds.points[idx].to(device)
    out = model(task.encoder_input(points, train=False))
    cd = chamfer_distance(out.points.float(), points.float()).cpu()
    colors = capsule_colors(model.decoder.num_caps)[model.capsule_of_point().numpy()]
    note = "SYNTHETIC shapes" if ps.synthetic else Path(ps.source).name
    files, inputs, recons = [], [], []
    for row, i in enumerate(idx):
        name = f"{row}_{ps.classes[int(ds.labels[i])]}"
        src, rec = points[row].cpu().numpy(), out.points[row].float().cpu().numpy()
        comment = f"capsule-kit points {note}; colour = latent capsule"
        files += [write_ply(run_dir / f"input_{name}.ply", src, comment=f"capsule-kit points {note}").name,
                  write_ply(run_dir / f"recon_{name}.ply", rec, colors, comment=comment).name]  # fmt: skip
        inputs.append((src, np.full_like(src, 0.35), f"input: {name}"))
        recons.append((rec, colors, f"reconstruction, CD {cd[row]:.4f}"))
    title = f"{note}: colour = latent capsule"
    renderer = render_panels(inputs + recons, len(idx), run_dir / "reconstructions.png", title)
    return [*files, "reconstructions.png"], renderer


def parameter_counts(task) -> dict[str, int]:
    """Latent-transform parameters of this recipe, and transform/model parameters with the full (unshared) one."""
    m = task.cfg.model
    dims = (m.primary_caps, m.primary_dim, m.latent_caps, m.latent_dim)
    with torch.device("meta"):  # count the full model's parameters without allocating 67M floats
        full = sum(p.numel() for p in PointCapsNet(**task.model_kwargs(shared="none")).parameters())
    return {
        "latent_transform_params": transform_params(*dims, m.shared, m.share_groups),
        "latent_transform_params_full": transform_params(*dims, "none", m.share_groups),
        "model_params_full_transform": full,
    }


def points_pictures(task, model: nn.Module, data: Splits, run_dir: Path, device: Any) -> dict[str, Any]:
    """Everything :meth:`PointsTask.pictures` returns (see the module docstring)."""
    ps = task.point_set
    extra: dict[str, Any] = {"data": ps.source, "synthetic": ps.synthetic, "classes": ps.classes}
    extra.update(parameter_counts(task))  # the runner reports this model's own count as "params"
    extra["files"], extra["render"] = write_reconstructions(task, model, data, run_dir, device)
    extra["captions"] = CAPTIONS
    return extra
