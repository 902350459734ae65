"""Pictures and extra results of a points run.

* ``recon_<k>_<class>.ply``: reconstructions with each point coloured by the
  latent capsule that decoded it (the paper's part-aware figure), next to
  ``input_<k>_<class>.ply``;
* ``reconstructions.png``: input vs part-coloured reconstruction (matplotlib 3D);
* the SVM transfer accuracy and ``svm_confusion.png``;
* parameter counts of the latent transform, shared and full.

Shapes: P points, N_o latent capsules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from capsule_kit.data import Splits  # noqa: E402
from capsule_kit.report import plot_confusion  # noqa: E402
from tasks.points.chamfer import chamfer_distance  # noqa: E402
from tasks.points.data import CloudDataset  # noqa: E402
from tasks.points.io import write_ply  # noqa: E402
from tasks.points.model import PointCapsNet, transform_params  # noqa: E402
from tasks.points.transfer import extract_latent, svm_transfer  # noqa: E402


def capsule_colors(num_caps: int) -> np.ndarray:
    """Distinct RGB colours in [0, 1], one per capsule (hues spread, neighbours far apart). Shapes: [N_o, 3]."""
    hues = (np.arange(num_caps) * 0.618033988749895) % 1.0  # golden-ratio steps
    hsv = np.stack([hues, np.full(num_caps, 0.85), np.where(np.arange(num_caps) % 2, 0.95, 0.7)], 1)
    return matplotlib.colors.hsv_to_rgb(hsv)


def pick_shapes(labels: torch.Tensor, k: int) -> list[int]:
    """Up to ``k`` test indices, the first shape of each class before any repeats."""
    firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()]
    rest = [i for i in range(len(labels)) if i not in firsts]
    return (firsts + rest)[:k]


def _scatter(ax, pts: np.ndarray, colors, title: str) -> None:
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colors, s=2, depthshade=False)
    ax.set_title(title, fontsize=8)
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()


@torch.no_grad()
def write_reconstructions(task, model: nn.Module, data: Splits, run_dir: Path, device: Any) -> list[str]:
    """Part-coloured PLY files and ``reconstructions.png`` for a few test shapes; returns the file names."""
    k = task.cfg.pictures.shapes
    ds, ps = data.test, task.point_set
    idx = pick_shapes(ds.labels, k)
    if not idx:
        return []
    model.eval()
    points = ds.points[idx].to(device)
    out = model(task.encoder_input(points, train=False))
    cd = chamfer_distance(out.points.float(), points.float()).cpu()
    colors = capsule_colors(model.decoder.num_caps)[model.capsule_of_point().numpy()]
    note = "SYNTHETIC shapes" if ps.synthetic else Path(ps.source).name
    fig = plt.figure(figsize=(2.4 * len(idx), 5.0))
    files = []
    for row, i in enumerate(idx):
        name = f"{row}_{ps.classes[int(ds.labels[i])]}"
        src, rec = points[row].cpu().numpy(), out.points[row].float().cpu().numpy()
        comment = f"capsule-kit points {note}; colour = latent capsule"
        files += [write_ply(run_dir / f"input_{name}.ply", src, comment=f"capsule-kit points {note}").name,
                  write_ply(run_dir / f"recon_{name}.ply", rec, colors, comment=comment).name]  # fmt: skip
        _scatter(fig.add_subplot(2, len(idx), row + 1, projection="3d"), src, "0.35", f"input: {name}")
        ax = fig.add_subplot(2, len(idx), len(idx) + row + 1, projection="3d")
        _scatter(ax, rec, colors, f"reconstruction, CD {cd[row]:.4f}")
    fig.suptitle(f"{note}: colour = latent capsule", fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "reconstructions.png", dpi=110)
    plt.close(fig)
    return [*files, "reconstructions.png"]


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
    extra["files"] = write_reconstructions(task, model, data, run_dir, device)
    if cfg.transfer.svm:
        res = transfer(task, model, data, device)
        title = f"SVM transfer {res['svm_accuracy']:.3f}" + (" (SYNTHETIC shapes)" if ps.synthetic else "")
        plot_confusion(res["svm_confusion_matrix"], ps.classes, run_dir / "svm_confusion.png", title=title)
        extra.update(res)
        extra["files"].append("svm_confusion.png")
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
