"""Pictures and extra results of a points run.

* ``recon_<k>_<class>.ply``: reconstructions with each point coloured by the
  latent capsule that decoded it (the paper's part-aware figure), next to
  ``input_<k>_<class>.ply``;
* ``reconstructions.png``: input vs part-coloured reconstruction, rendered offscreen by open3d
  where that works, else matplotlib 3D scatter (``extra["render"]`` says which; see render.py);
* the SVM transfer accuracy and ``svm_confusion.png``;
* parameter counts of the latent transform, shared and full.

Shapes: P points, N_o latent capsules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib.colors
import numpy as np
import torch
from torch import nn

from capsule_kit.data import Splits
from capsule_kit.plots import plot_confusion
from capsule_kit_tasks.points.chamfer import chamfer_distance
from capsule_kit_tasks.points.data import CloudDataset
from capsule_kit_tasks.points.io import write_ply
from capsule_kit_tasks.points.model import PointCapsNet, transform_params
from capsule_kit_tasks.points.render import render_panels
from capsule_kit_tasks.points.transfer import extract_latent, svm_transfer


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
    cfg, ps = task.cfg, task.point_set
    extra: dict[str, Any] = {"data": ps.source, "synthetic": ps.synthetic, "classes": ps.classes}
    extra.update(parameter_counts(task))  # the runner reports this model's own count as "params"
    extra["files"], extra["render"] = write_reconstructions(task, model, data, run_dir, device)
    if cfg.transfer.svm:
        res = transfer(task, model, data, device)
        title = f"SVM transfer {res['svm_accuracy']:.3f}" + (" (SYNTHETIC shapes)" if ps.synthetic else "")
        plot_confusion(res["svm_confusion_matrix"], ps.classes, run_dir / "svm_confusion.png", title=title)
        extra.update(res)
        extra["files"].append("svm_confusion.png")
    extra["captions"] = CAPTIONS
    if cfg.transfer.svm and cfg.transfer.random_init_baseline:
        torch.manual_seed(cfg.trainer.seed)  # the seed the runner used before building the trained model
        base = transfer(task, task.build_model().to(device), data, device)
        extra["svm_accuracy_random_init"] = base["svm_accuracy"]
    return extra


def transfer(task, model: nn.Module, data: Splits, device: Any) -> dict[str, Any]:
    """SVM transfer results of ``model``'s frozen encoder (un-augmented training shapes, test shapes)."""
    cfg, t0 = task.cfg, time.perf_counter()
    bs = cfg.trainer.eval_batch_size or cfg.trainer.batch_size
    train = extract_latent(task, model, CloudDataset(data.train.points, data.train.labels), device, bs)
    test = extract_latent(task, model, data.test, device, bs)
    t = cfg.transfer
    res = svm_transfer(train, test, len(task.point_set.classes), c=t.C, standardize=t.standardize,
                       max_iter=t.max_iter, solver=t.solver, seed=cfg.trainer.seed)  # fmt: skip
    res["svm_total_s"] = round(time.perf_counter() - t0, 2)
    return res
