"""Model builders, looked up by name in ``capsule_kit.registry.MODELS``."""

from capsule_kit.models.capsnet import CapsNet, CapsOutput, capsnet_sabour, capsnet_tiny
from capsule_kit.models.efficient import EfficientCapsNet, efficient_capsnet, efficient_capsnet_tiny
from capsule_kit.models.matrix_em import MatrixCapsNet, matrix_capsnet, matrix_capsnet_tiny
from capsule_kit.registry import MODELS


def build(name: str, /, **kwargs):
    """Build a registered model by name."""
    return MODELS.build(name, **kwargs)


__all__ = [
    "CapsNet",
    "CapsOutput",
    "EfficientCapsNet",
    "MODELS",
    "MatrixCapsNet",
    "build",
    "capsnet_sabour",
    "capsnet_tiny",
    "efficient_capsnet",
    "efficient_capsnet_tiny",
    "matrix_capsnet",
    "matrix_capsnet_tiny",
]
