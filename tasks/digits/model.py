"""Digits models: the registered capsule_kit builders, configured from the recipe."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from torch import nn

from capsule_kit.config import Strict
from capsule_kit.errors import ConfigError
from capsule_kit.models import check_routing, routing_kind
from capsule_kit.registry import MODELS
from capsule_kit.routing import RoutingConfig
from capsule_kit.routing.config import ROUTING_MOVED
from capsule_kit_tasks.digits import cnn  # noqa: F401  (registers cnn_baseline)


class ModelConfig(Strict):
    """Which capsule network to build, and the routing of its capsule layers."""

    moved: ClassVar[dict[str, str]] = ROUTING_MOVED

    name: Annotated[str, AfterValidator(MODELS.check)] = Field(
        "capsnet",
        description="Registered model: capsnet, capsnet_tiny, efficient_capsnet, "
        "efficient_capsnet_tiny, matrix_capsnet, matrix_capsnet_small, matrix_capsnet_cpu, matrix_capsnet_tiny, "
        "cnn_baseline (a plain CNN for comparison), cnn_baseline_tiny.",
    )
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig,
        description="Routing by name; capsnet and efficient_capsnet take any vector routing (dynamic, attention), "
        "matrix_capsnet em.",
    )
    decoder: bool = Field(True, description="Reconstruction decoder (CapsNet and Efficient-CapsNet).")
    shared: Literal["none", "positions", "inputs"] = Field("none", description="Class-capsule transform sharing.")

    @field_validator("routing")
    @classmethod
    def _supported(cls, routing: RoutingConfig, info: ValidationInfo) -> RoutingConfig:
        name = info.data.get("name")
        if not name or routing_kind(name) == "none":  # a plain CNN (the baseline) routes nothing
            return routing
        return check_routing(name, routing)


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
    if family != "cnn":  # the CNN has no capsules: no routing, no decoder
        kwargs["routing"] = cfg.routing
    if family in ("capsnet", "efficient"):
        kwargs.update(decoder=cfg.decoder, mask_k=mask_k)
    if family == "capsnet":
        kwargs.update(shared=cfg.shared)
    try:
        return MODELS.build(cfg.name, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
