"""Digits models: the registered capsule_kit builders, configured from the recipe."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from torch import nn

from capsule_kit.config import Strict
from capsule_kit.errors import ConfigError
from capsule_kit.registry import MODELS, ROUTING
from capsule_kit_tasks.digits import cnn  # noqa: F401  (registers cnn_baseline)


class RoutingConfig(Strict):
    """Routing of the class capsule layer."""

    name: Annotated[str, AfterValidator(ROUTING.check)] = Field(
        "dynamic", description="Routing algorithm (dynamic, em, attention)."
    )
    iterations: int = Field(3, ge=1, description="Routing iterations.")


class ModelConfig(Strict):
    """Which capsule network to build."""

    name: Annotated[str, AfterValidator(MODELS.check)] = Field(
        "capsnet",
        description="Registered model: capsnet, capsnet_tiny, efficient_capsnet, "
        "efficient_capsnet_tiny, matrix_capsnet, matrix_capsnet_small, matrix_capsnet_tiny, "
        "cnn_baseline (a plain CNN for comparison), cnn_baseline_tiny.",
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="Class-capsule routing.")
    decoder: bool = Field(True, description="Reconstruction decoder (CapsNet and Efficient-CapsNet).")
    shared: Literal["none", "positions", "inputs"] = Field("none", description="Class-capsule transform sharing.")


def model_family(name: str) -> str:
    """``capsnet``, ``efficient``, ``matrix`` or ``cnn`` for a registered model name."""
    for family in ("efficient", "matrix", "cnn"):
        if name.startswith(family):
            return family
    return "capsnet"


def build_digits_model(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int, mask_k: int) -> nn.Module:
    """Build the recipe's model for images of ``input_shape``."""
    family = model_family(cfg.name)
    kwargs: dict = {"input_shape": input_shape, "num_classes": num_classes}
    if family == "matrix":
        kwargs["iterations"] = cfg.routing.iterations
    elif family != "cnn":  # the CNN has no routing and no decoder
        kwargs.update(decoder=cfg.decoder, mask_k=mask_k)
    if family == "capsnet":
        kwargs.update(routing=cfg.routing.name, routing_iterations=cfg.routing.iterations, shared=cfg.shared)
    try:
        return MODELS.build(cfg.name, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
