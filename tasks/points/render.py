"""Offscreen open3d rendering of point clouds, probed once per process, with a matplotlib fallback.

open3d's offscreen renderer (filament) needs a working EGL/OSMesa or Vulkan stack. With the
open3d-cpu wheel on a headless machine without one it raises (``Failed to load vulkan library!``)
and on some driver stacks it can crash or hang the process, so whether it works is tried once per
process in a child process with a timeout before this process ever creates a renderer. Where it
does not work, :func:`render_panels` draws the same panels as matplotlib 3D scatter plots.

Shapes: P points.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np

from capsule_kit.plots import plt
from capsule_kit_tasks.points.io import open3d_or_reason

PROBE_TIMEOUT_S = 30
PROBE = (
    "import numpy as np, open3d as o3d\n"
    "o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)\n"
    "r = o3d.visualization.rendering.OffscreenRenderer(16, 16)\n"
    "assert np.asarray(r.render_to_image()).shape[:2] == (16, 16)\n"
)
PANEL_PX = 320
EYE = 3.2 * np.array([0.433, -0.75, 0.5])  # matplotlib's default 3D view: elevation 30, azimuth -60
UP = np.array([0.0, 0.0, 1.0])


@functools.cache
def open3d_renderer() -> tuple[bool, str]:
    """``(True, "")`` when open3d offscreen rendering works here, else ``(False, one-line reason)``.

    Tried once per process, in a child process (a broken GL stack may crash or hang it, not us);
    the reason is printed once to stderr.
    """
    if open3d_or_reason()[0] is None:
        ok, reason = False, open3d_or_reason()[1]
    else:
        try:
            proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
            ok = proc.returncode == 0
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
            reason = "" if ok else f"open3d offscreen rendering failed ({last[0].strip()[:200]})"
        except subprocess.TimeoutExpired:
            ok, reason = False, f"open3d offscreen rendering did not finish within {PROBE_TIMEOUT_S} s"
    if not ok:
        print(f"points: {reason}; drawing reconstructions.png with matplotlib", file=sys.stderr)
    return ok, reason


def render_clouds_open3d(clouds: list[tuple[np.ndarray, np.ndarray]], px: int = PANEL_PX) -> list[np.ndarray]:
    """One offscreen open3d image per ``(points, colors)`` cloud (white background, unlit points).

    Shapes:
        clouds: ([P, 3], [P, 3] RGB in [0, 1]) pairs
        returns: [px, px, 3] uint8 images
    """
    o3d = open3d_or_reason()[0]
    rendering = o3d.visualization.rendering
    renderer = rendering.OffscreenRenderer(px, px)  # one renderer for all panels: filament engines are costly
    material = rendering.MaterialRecord()
    material.shader, material.point_size = "defaultUnlit", 3.0
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    images = []
    for points, colors in clouds:
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
        cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))
        renderer.scene.clear_geometry()
        renderer.scene.add_geometry("cloud", cloud, material)
        renderer.setup_camera(40.0, np.zeros(3), EYE, UP)
        images.append(np.asarray(renderer.render_to_image())[..., :3].copy())
    del renderer
    return images


def _scatter(ax, pts: np.ndarray, colors: np.ndarray) -> None:
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colors, s=2, depthshade=False)
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
    ax.set_box_aspect((1, 1, 1))


def render_panels(panels: list[tuple[np.ndarray, np.ndarray, str]], cols: int, path: Path, title: str) -> str:
    """Save a grid of titled cloud panels as a PNG; returns the renderer used, ``open3d`` or ``matplotlib``.

    open3d renders each panel offscreen when :func:`open3d_renderer` says it can (matplotlib only
    lays the images out); otherwise, or if rendering fails after all, matplotlib 3D scatter plots.

    Shapes:
        panels: ([P, 3] points, [P, 3] RGB colours in [0, 1], title) triples, row by row
    """
    images, renderer = None, "matplotlib"
    if open3d_renderer()[0]:
        try:
            images, renderer = render_clouds_open3d([(p, c) for p, c, _ in panels]), "open3d"
        except RuntimeError as exc:  # the probe passed but this process cannot render after all
            print(f"points: open3d rendering failed ({exc}); drawing with matplotlib", file=sys.stderr)
    rows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(2.4 * cols, 2.5 * rows))
    for k, (points, colors, name) in enumerate(panels):
        if images is None:
            ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
            _scatter(ax, points, colors)
        else:
            ax = fig.add_subplot(rows, cols, k + 1)
            ax.imshow(images[k])
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{title} ({renderer})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return renderer
