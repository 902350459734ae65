"""One routing config for every recipe: ``model.routing: {name, iterations, <options>}``.

The name is checked against the routing registry; the options are the keyword
arguments of that routing's constructor (``leaky`` and ``squash`` for dynamic,
``squash`` for attention, ``lambda_start``... for EM), checked against its
signature, so a routing registered later (a user's own) gets its options
validated the same way. ``num_in``/``num_out`` are not options: the layer that
builds the routing passes them.

Each routing class declares its ``kind`` (``"vector"`` or ``"matrix"``) and each
model the kind it routes, so a model supports every registered routing of its
kind (:func:`routings_of`) and a recipe naming another one is refused.

Example:
    >>> cfg = RoutingConfig(name="dynamic", iterations=2, leaky=True)
    >>> cfg.build(num_in=6, num_out=3)
    DynamicRouting(iterations=2, leaky=True)
"""

from __future__ import annotations

import inspect
import typing
from functools import cache
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from capsule_kit.config import Strict
from capsule_kit.registry import ROUTING

STRUCTURAL = ("num_in", "num_out", "iterations")  # passed by the layer / declared as fields, never options
ROUTING_MOVED = {  # old spellings in model sections -> the key (for Strict.moved: refused with "did you mean")
    "iterations": "model.routing.iterations",
    "routing_iterations": "model.routing.iterations",
    "leaky": "model.routing.leaky",
    "routing_options": "model.routing",
}


@cache
def _option_types(cls: type) -> dict[str, Any]:
    """Keyword-only constructor options of a routing class -> their annotations."""
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: hints.get(p.name, Any) for p in params if p.kind is p.KEYWORD_ONLY and p.name not in STRUCTURAL}


def routing_kind(name: str) -> str:
    """``"vector"`` or ``"matrix"``: the kind a registered routing declares."""
    return getattr(ROUTING.get(name), "kind", "vector")


def routings_of(kind: str) -> list[str]:
    """Registered routing names of ``kind``, e.g. ``routings_of("vector") == ["attention", "dynamic"]``."""
    return [n for n in ROUTING.names() if routing_kind(n) == kind]


class RoutingConfig(Strict):
    """Routing by name (see the routing table): ``{name, iterations, <options>}``; iterations default to the routing's.

    Any other key is an option of the named routing's constructor (e.g. ``leaky``
    for dynamic routing); unknown options are refused with the known ones.
    """

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, AfterValidator(ROUTING.check)] = Field(
        "dynamic", description="Registered routing: attention, dynamic (vector capsules), em (matrix)."
    )
    iterations: int | None = Field(
        None, ge=1, description="Routing iterations (default: the routing's own; attention takes 1). Other keys: "
        "options of the routing (dynamic: leaky, squash; attention: squash; em: lambda_start, lambda_end, eps).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> RoutingConfig:
        cls = ROUTING.get(self.name)
        known = _option_types(cls)
        for key, value in (self.model_extra or {}).items():
            if key not in known:
                takes = ", ".join(known) or "no options"
                raise ValueError(f"routing '{self.name}' has no option '{key}' (takes: {takes})")
            try:
                self.model_extra[key] = TypeAdapter(known[key]).validate_python(value)
            except ValidationError as exc:
                raise ValueError(f"routing option '{key}': {exc.errors()[0]['msg'].lower()} (got {value!r})") from None
        self.build(num_in=1, num_out=1)  # the routing's own checks (e.g. attention: iterations must be 1)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """Constructor keyword arguments besides ``num_in``/``num_out``."""
        extra = dict(self.model_extra or {})
        return extra if self.iterations is None else {"iterations": self.iterations, **extra}

    @property
    def kind(self) -> str:
        """``"vector"`` or ``"matrix"``."""
        return routing_kind(self.name)

    def build(self, *, num_in: int | None = None, num_out: int | None = None) -> Any:
        """The routing module for a layer with ``num_in`` inputs and ``num_out`` outputs."""
        return ROUTING.build(self.name, num_in=num_in, num_out=num_out, **self.options)

    def require(self, kind: str, model: str = "this model") -> RoutingConfig:
        """Return self, or raise ValueError naming the routings of ``kind`` when this one is of another kind."""
        if self.kind != kind:
            raise ValueError(
                f"routing '{self.name}' is not supported by {model}; supported: {', '.join(routings_of(kind))}"
            )
        return self


def as_routing(routing: RoutingConfig | str) -> RoutingConfig:
    """Accept a routing name where a :class:`RoutingConfig` is expected (library use)."""
    return RoutingConfig(name=routing) if isinstance(routing, str) else routing


def vector_routing(cfg: RoutingConfig) -> RoutingConfig:
    """Pydantic after-validator for models of vector capsules (see :data:`VectorRouting`)."""
    return cfg.require("vector")


VectorRouting = Annotated[RoutingConfig, AfterValidator(vector_routing)]
"""A recipe field taking any vector routing (dynamic, attention, a user's own): ``routing: VectorRouting``."""
