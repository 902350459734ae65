"""capsule-kit: capsule networks across domains on one device-agnostic torch core."""

import os

# Idle OpenMP worker threads that spin steal time slices from the working threads whenever the
# CPU is shared (measured 3-10x slower training on a busy 2-core machine). Only effective when
# capsule_kit is imported before torch (as by `python -m capsule_kit.run`); an explicit
# OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from capsule_kit import routing  # noqa: E402
from capsule_kit.config import Recipe, Strict, TrainerConfig
from capsule_kit.data import Splits, TensorPairs, cache_dir, data_root
from capsule_kit.errors import CheckpointError, ConfigError, DataError, UserError
from capsule_kit.functional import lengths, safe_norm, squash, squash_efficient
from capsule_kit.layers import CapsuleDecoder, ConvCaps, DenseCaps, PrimaryCaps, PrimaryMatrixCaps, mask_capsules
from capsule_kit.losses import margin_loss, reconstruction_loss, spread_loss, spread_margin
from capsule_kit.models import CapsNet, CapsOutput, EfficientCapsNet, MatrixCapsNet
from capsule_kit.registry import MODELS, ROUTING, TASKS, Registry
from capsule_kit.task import Task, register_task

__version__ = "0.1.0"


def train(recipe, *overrides: str) -> dict:
    """Train a recipe (YAML path, dict or config) with the runner; returns its results.

    Imported lazily so ``python -m capsule_kit.run`` does not load the runner twice.
    See :func:`capsule_kit.run.train_recipe`.
    """
    from capsule_kit.run import train_recipe

    return train_recipe(recipe, *overrides)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Recipe",
    "Splits",
    "Strict",
    "Task",
    "TensorPairs",
    "TrainerConfig",
    "UserError",
    "cache_dir",
    "data_root",
    "register_task",
    "train",
    "CapsNet",
    "CapsOutput",
    "CapsuleDecoder",
    "ConvCaps",
    "DenseCaps",
    "EfficientCapsNet",
    "MODELS",
    "MatrixCapsNet",
    "PrimaryCaps",
    "PrimaryMatrixCaps",
    "ROUTING",
    "Registry",
    "TASKS",
    "lengths",
    "margin_loss",
    "mask_capsules",
    "reconstruction_loss",
    "routing",
    "safe_norm",
    "spread_loss",
    "spread_margin",
    "squash",
    "squash_efficient",
]
