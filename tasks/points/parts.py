"""Part-awareness of a point-capsule decoder: how local, and how consistent across shapes, each capsule's part is.

The decoder gives every latent capsule its own points (point k from capsule ``k % N_o``), so a
capsule "decodes a part" when its points are compact (:func:`part_spread`) and it decodes the
same part on every shape of a class (:func:`part_consistency`). Clouds are centred and scaled
into the unit sphere (``data.py``), and ModelNet's shapes are aligned, so "the same region of the
normalised shape" can be compared across shapes by plain coordinates.

Shapes: B batch, S shapes, N_o latent capsules, M points per capsule.
"""

from __future__ import annotations

from torch import Tensor


def capsule_points(points: Tensor, num_caps: int) -> Tensor:
    """Group decoded points by the capsule that decoded them.

    Shapes:
        points: [B, N_o * M, 3] with point k from capsule ``k % N_o``
        returns: [B, M, N_o, 3]
    """
    return points.view(points.shape[0], -1, num_caps, 3)


def part_spread(points: Tensor, num_caps: int) -> Tensor:
    """How local each capsule's points are: RMS radius of a capsule's points over that of the whole cloud.

    About 1 when every capsule's points are spread over the whole shape, towards 0
    when each capsule decodes a compact part (the paper's part-aware behaviour).

    Shapes:
        points: [B, N_o * M, 3] with point k from capsule ``k % N_o``
        returns: [B]
    """
    per_caps = capsule_points(points, num_caps)  # [B, M, N_o, 3]
    caps_rms = (per_caps - per_caps.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt().mean(1)  # [B]
    cloud_rms = (points - points.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt()
    return caps_rms / cloud_rms.clamp_min(1e-12)


def capsule_centroids(points: Tensor, num_caps: int) -> Tensor:
    """Centroid of each capsule's decoded points. Shapes: points [B, N_o * M, 3] -> [B, N_o, 3]."""
    return capsule_points(points, num_caps).mean(1)


def mean_square_radius(points: Tensor) -> Tensor:
    """Mean squared distance of a cloud's points from its centroid. Shapes: [B, P, 3] -> [B]."""
    return (points - points.mean(1, keepdim=True)).pow(2).sum(-1).mean(1)


def part_consistency(centroids: Tensor, sizes: Tensor, labels: Tensor) -> dict[str, float]:
    """How consistently each capsule decodes the same region across the shapes of a class.

    For class c with shapes s = 1..S_c, capsule centroids ``m[s, k]`` (normalised coordinates),
    their mean over the class's shapes ``m_k = mean_s m[s, k]`` and ``m_c = mean_k m_k``:

    * ``between_c = mean_k |m_k - m_c|^2``: how far apart the capsules' average places lie;
    * ``within_c = mean_{s,k} |m[s, k] - m_k|^2``: how far a capsule's place moves between shapes;
    * ``size_c = mean_s r2[s]``, ``r2[s]`` the mean squared radius of shape s's decoded cloud.

    ``part_consistency = mean_c between_c / size_c``: the share of the shapes' point variance that
    is a fixed, capsule-specific place. Per shape, point variance = spread of the capsule centroids
    + spread of the points around them, so it is about ``1 - part_spread^2`` when every capsule
    decodes the same compact part of every shape, and near 0 when capsules move between shapes
    (``m_k`` average out) or all decode the same region (no parts). ``part_drift = mean_c
    sqrt(within_c / size_c)``: how far a capsule's centroid moves between shapes of one class, in
    RMS shape radii. Classes with fewer than two shapes are left out.

    A decoder that ignores its input also scores high when its capsules sit apart: every shape then
    gets the same parts, wherever the shape is. Read it with the Chamfer distance and the untrained
    control (``transfer.random_init_baseline``).

    Shapes:
        centroids: [S, N_o, 3], sizes: [S], labels: [S]
        returns: ``{"part_consistency": float, "part_drift": float}``; empty when no class has 2 shapes.
    """
    scores, drifts = [], []
    for c in labels.unique():
        keep = labels == c
        m, size = centroids[keep].double(), sizes[keep].double().mean().clamp_min(1e-24)  # [S_c, N_o, 3]
        if len(m) < 2:
            continue
        m_k = m.mean(0)  # [N_o, 3]
        between = (m_k - m_k.mean(0)).pow(2).sum(-1).mean()
        within = (m - m_k).pow(2).sum(-1).mean()
        scores.append(float(between / size))
        drifts.append(float((within / size).sqrt()))
    if not scores:
        return {}
    return {"part_consistency": sum(scores) / len(scores), "part_drift": sum(drifts) / len(drifts)}
