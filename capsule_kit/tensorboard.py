"""TensorBoard output of a run (``trainer.tensorboard: true``): scalars, recipe, hparams, pictures.

The run's ``tb/`` folder (``tb/fold_K`` for later folds of a cross-validated run) gets
the numeric metrics.jsonl rows as scalars (booleans such as ``partial`` are not
metrics and are left out), the resolved recipe as text, and at the end the recipe's
scalar keys as hparams next to the final test metrics, plus the run's PNG pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

from capsule_kit.errors import ConfigError
from capsule_kit.rundir import RunDir

SKIP = ("step", "epoch")


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("trainer.tensorboard: needs tensorboard (pip install 'capsule-kit[tb]')") from None
    return SummaryWriter


def hparam_dict(recipe: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """A nested recipe as dotted keys with values TensorBoard's hparams accept (others as text)."""
    out: dict[str, float | int | str | bool] = {}
    for k, v in recipe.items():
        if isinstance(v, dict):
            out.update(hparam_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


class TensorBoardLog:
    """One TensorBoard writer for one training run (one fold).

    Args:
        run_dir: Run directory (holds ``recipe.yaml`` and, at the end, ``results.json``).
        fold: Fold index (0 for a plain run).
        recipe: The resolved recipe as plain data.
    """

    def __init__(self, run_dir: Path, *, fold: int = 0, recipe: dict | None = None) -> None:
        self.run, self.recipe = RunDir(run_dir), recipe or {}
        self.writer = _writer_class()(str(self.run.tensorboard / (f"fold_{fold}" if fold else "")))
        text = self.run.recipe.read_text() if self.run.recipe.exists() else ""
        if text or self.recipe:
            body = text or json.dumps(self.recipe, indent=2)
            self.writer.add_text("recipe", "```\n" + body + "\n```", 0)  # markdown: keep the indentation

    def log(self, row: dict) -> None:
        """One metrics.jsonl row as scalars ``<kind>/<key>`` at its step (numbers only, no booleans)."""
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP:
                self.writer.add_scalar(f"{row['kind']}/{k}", v, row["step"])

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, step: int) -> None:
        """Add hparams with the final test metrics (from results.json) and the PNG pictures; close."""
        from torch.utils.tensorboard.summary import hparams

        results_path = self.run.results
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        test = results.get("test") if isinstance(results.get("test"), dict) else {}
        metrics = {
            f"hparam/test_{k}": float(v)
            for k, v in test.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.recipe and metrics:
            for summary in hparams(hparam_dict(self.recipe), metrics):
                self.writer.file_writer.add_summary(summary)
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        self._pictures(step)
        self.writer.close()

    def _pictures(self, step: int) -> None:
        from matplotlib.image import imread

        for png in self.run.pictures():
            image = imread(png)[..., :3]  # [H, W, 3] floats in [0, 1] (alpha dropped)
            self.writer.add_image(f"pictures/{png.stem}", image, step, dataformats="HWC")
