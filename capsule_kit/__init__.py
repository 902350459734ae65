"""capsule-kit: capsule networks across domains on one device-agnostic torch core."""

from capsule_kit import routing
from capsule_kit.functional import lengths, safe_norm, squash, squash_efficient
from capsule_kit.layers import CapsuleDecoder, ConvCaps, DenseCaps, PrimaryCaps, PrimaryMatrixCaps, mask_capsules
from capsule_kit.losses import margin_loss, reconstruction_loss, spread_loss, spread_margin
from capsule_kit.models import CapsNet, CapsOutput, EfficientCapsNet, MatrixCapsNet
from capsule_kit.registry import MODELS, ROUTING, TASKS, Registry

__version__ = "0.1.0"

__all__ = [
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
