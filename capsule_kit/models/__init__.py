"""Model builders, looked up by name in ``capsule_kit.registry.MODELS``.

A model class declares the kind of routing it uses (``routing_kind = "vector"`` or
``"matrix"``); a builder's return annotation names its class, so the routings a
registered model supports are found without building it.
"""

import typing

from capsule_kit.models.capsnet import CapsNet, CapsOutput, capsnet_sabour, capsnet_tiny
from capsule_kit.models.efficient import EfficientCapsNet, efficient_capsnet, efficient_capsnet_tiny
from capsule_kit.models.matrix_em import MatrixCapsNet, matrix_capsnet, matrix_capsnet_tiny
from capsule_kit.registry import MODELS
from capsule_kit.routing import RoutingConfig, routings_of


def build(name: str, /, **kwargs):
    """Build a registered model by name."""
    return MODELS.build(name, **kwargs)


def routing_kind(name: str) -> str:
    """The routing kind (``"vector"`` or ``"matrix"``) the registered model ``name`` declares."""
    builder = MODELS.get(name)
    cls = builder if isinstance(builder, type) else typing.get_type_hints(builder).get("return")
    kind = getattr(cls, "routing_kind", None)
    if kind is None:
        raise TypeError(f"model '{name}' does not declare routing_kind (its builder must return a class that does)")
    return kind


def supported_routings(name: str) -> list[str]:
    """Registered routings the model ``name`` supports, e.g. ``["attention", "dynamic"]`` for ``capsnet``."""
    return routings_of(routing_kind(name))


def check_routing(name: str, routing: RoutingConfig) -> RoutingConfig:
    """Return ``routing`` or raise ValueError naming the routings model ``name`` supports."""
    return routing.require(routing_kind(name), f"model '{name}'")


__all__ = [
    "CapsNet",
    "CapsOutput",
    "EfficientCapsNet",
    "MODELS",
    "MatrixCapsNet",
    "build",
    "check_routing",
    "capsnet_sabour",
    "capsnet_tiny",
    "efficient_capsnet",
    "efficient_capsnet_tiny",
    "matrix_capsnet",
    "matrix_capsnet_tiny",
    "routing_kind",
    "supported_routings",
]
