"""capsule-kit: capsule networks across domains on one device-agnostic torch core.

Importing the library changes no process-wide setting; the runner's command line
(:func:`capsule_kit.run.cli`) sets ``OMP_WAIT_POLICY=PASSIVE`` for training runs.
"""

from capsule_kit import routing
from capsule_kit.config import Recipe, Strict, TrainerConfig
from capsule_kit.data import DataSection, Splits, TensorPairs, cache_dir, data_root, limit_indices
from capsule_kit.errors import CheckpointError, ConfigError, DataError, UserError
from capsule_kit.functional import lengths, safe_norm, squash, squash_efficient
from capsule_kit.layers import (
    CapsuleDecoder,
    ConvCaps,
    DenseCaps,
    PrimaryCaps,
    PrimaryCaps1d,
    PrimaryMatrixCaps,
    mask_capsules,
)
from capsule_kit.losses import MarginConfig, margin_loss, reconstruction_loss, spread_loss, spread_margin
from capsule_kit.models import CapsNet, CapsOutput, EfficientCapsNet, MatrixCapsNet
from capsule_kit.registry import MODELS, ROUTING, TASKS, Registry
from capsule_kit.routing import RoutingConfig, VectorRouting
from capsule_kit.splits import SplitConfig, ValSplit, split_indices
from capsule_kit.task import Task, register_task

__version__ = "0.1.0"


def load_run(run_dir, *overrides: str, device: str = "cpu", weights: str | None = None):
    """Load a finished run for inference (model with its tested weights, recipe, task, data).

    See :func:`capsule_kit.inference.load_run`.
    """
    from capsule_kit.inference import load_run as _load_run

    return _load_run(run_dir, *overrides, device=device, weights=weights)


def train(recipe, *overrides: str) -> dict:
    """Train a recipe (YAML path, dict or config) with the runner; returns its results.

    Imported lazily so ``python -m capsule_kit.run`` does not load the runner twice.
    See :func:`capsule_kit.run.train_recipe`.
    """
    from capsule_kit.run import train_recipe

    return train_recipe(recipe, *overrides)


__all__ = [
    "CapsNet",
    "CapsOutput",
    "CapsuleDecoder",
    "CheckpointError",
    "ConfigError",
    "ConvCaps",
    "DataError",
    "DataSection",
    "DenseCaps",
    "EfficientCapsNet",
    "MODELS",
    "MarginConfig",
    "MatrixCapsNet",
    "PrimaryCaps",
    "PrimaryCaps1d",
    "PrimaryMatrixCaps",
    "ROUTING",
    "Recipe",
    "Registry",
    "RoutingConfig",
    "SplitConfig",
    "Splits",
    "Strict",
    "TASKS",
    "Task",
    "TensorPairs",
    "TrainerConfig",
    "UserError",
    "ValSplit",
    "VectorRouting",
    "cache_dir",
    "data_root",
    "lengths",
    "limit_indices",
    "load_run",
    "margin_loss",
    "mask_capsules",
    "reconstruction_loss",
    "register_task",
    "routing",
    "safe_norm",
    "split_indices",
    "spread_loss",
    "spread_margin",
    "squash",
    "squash_efficient",
    "train",
]
