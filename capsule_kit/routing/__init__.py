"""Routing algorithms, looked up by name: ``routing.build("dynamic", iterations=3)``."""

from capsule_kit.registry import ROUTING
from capsule_kit.routing.attention import AttentionRouting
from capsule_kit.routing.base import Routed, Routing
from capsule_kit.routing.config import RoutingConfig, VectorRouting, as_routing, routing_kind, routings_of
from capsule_kit.routing.dynamic import DynamicRouting, leaky_softmax
from capsule_kit.routing.em import EMRouting


def build(name: str, /, **kwargs) -> Routing:
    """Build a registered routing module by name (see ``names()``).

    Every routing module has one signature, ``forward(votes, activations=None) -> Routed``.

    Shapes:
        votes: [B, N_i, N_o, D_o], activations: [B, N_i] or None
        returns: Routed(poses [B, N_o, D_o], activations [B, N_o], coupling [B, N_i, N_o])

    Example:
        >>> import torch
        >>> build("dynamic", iterations=3)(torch.randn(2, 6, 3, 4)).poses.shape
        torch.Size([2, 3, 4])
    """
    return ROUTING.build(name, **kwargs)


def names() -> list[str]:
    """Registered routing names."""
    return ROUTING.names()


__all__ = [
    "AttentionRouting",
    "DynamicRouting",
    "EMRouting",
    "ROUTING",
    "Routed",
    "Routing",
    "RoutingConfig",
    "VectorRouting",
    "as_routing",
    "routing_kind",
    "routings_of",
    "build",
    "leaky_softmax",
    "names",
]
