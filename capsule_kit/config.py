"""Typed recipes: safe YAML -> pydantic models, dotted overrides, one-line errors.

A recipe has a ``task`` (registered name or ``package.module:Class``), a
``trainer`` section shared by every task, and the task's own sections (``data``,
``model``, ``loss``, ...) declared by the task's ``Config`` class, a subclass of
:class:`Recipe`. All problems are collected and reported at once, each with its
dotted key, and unknown keys name the nearest valid key.

YAML input is bounded: a recipe is at most :data:`MAX_RECIPE_BYTES`, nested at most
:data:`MAX_DEPTH` levels, and anchors/aliases are refused (an alias "bomb" of a few
hundred bytes expands to gigabytes). Floats must be finite. Messages echo values only
as short excerpts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from capsule_kit.errors import ConfigError, excerpt, shorten
from capsule_kit.registry import nearest

MAX_RECIPE_BYTES = 256 * 1024
MAX_DEPTH = 32


class Strict(BaseModel):
    """Base for recipe sections: unknown keys are errors.

    Numbers given for text fields become text (``name=2024`` is the name "2024"):
    YAML reads an override's value as a number before the schema is known.
    Floats must be finite (``lr=.inf`` or ``.nan`` would train to NaN).
    ``moved`` maps old spellings of a section's keys to their new full dotted key
    (e.g. ``{"iterations": "model.routing.iterations"}``); an old spelling is refused
    with "did you mean" the new key, never silently accepted.
    """

    moved: ClassVar[dict[str, str]] = {}

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        validate_assignment=True,
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )


class TrainerConfig(Strict):
    """Options of the training loop, shared by every task."""

    epochs: int = Field(1, ge=0, description="Passes over the training set.")
    max_steps: int | None = Field(None, ge=1, description="Stop training after this many optimizer steps (smoke runs).")
    eval_max_steps: int | None = Field(None, ge=1, description="Cap evaluation batches (smoke runs).")
    batch_size: int = Field(100, ge=1, description="Training batch size (per process under torchrun).")
    eval_batch_size: int | None = Field(None, ge=1, description="Evaluation batch size (default: batch_size).")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    lr_decay: float = Field(1.0, gt=0, le=1, description="Exponential learning-rate decay per epoch.")
    schedule: Literal["exponential", "cosine"] = Field(
        "exponential", description="LR schedule: lr_decay per epoch, or cosine to 0 over the planned steps."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear LR warm-up over the first N steps (either schedule).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    seed: int = Field(0, description="Seed for weights, shuffling and augmentation.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto picks CUDA when present.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision (fp16 uses GradScaler on CUDA)."
    )
    compile: bool = Field(False, description="torch.compile the model (measured effect: docs/performance.md).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's choice, all cores; 1 vs 2: docs/performance.md)."
    )
    log_every: int = Field(50, ge=1, description="Write a metrics.jsonl line every N steps.")
    eval_every: int = Field(1, ge=1, description="Evaluate every N epochs.")
    test_weights: Literal["last", "best"] = Field(
        "last", description="Weights the test split sees: the final ones, or the best on the validation split."
    )
    checkpoint_every: str | None = Field(
        "10m",
        pattern=r"^\s*(\d+(\.\d+)?\s*[smh]|\d+|off)\s*$",
        description="Also write checkpoints/last.pt mid-epoch every N steps (500) or minutes of training "
        "(10m, 30s, 1h); 0 or off: only at epoch ends and on Ctrl-C.",
    )
    deterministic: bool = Field(
        True, description="Deterministic kernels (cuDNN, CUBLAS_WORKSPACE_CONFIG) for exact resume; false: faster."
    )
    progress: bool = Field(True, description="Show progress bars.")
    tensorboard: bool = Field(False, description="Also write TensorBoard scalars (extra 'tb').")


class Recipe(Strict):
    """The part of a recipe every task shares; tasks subclass it with their sections."""

    task: str = Field(description="Registered task name or 'package.module:Class'.")
    imports: list[str] = Field(
        default_factory=list,
        description="Modules to import before the task is looked up (user tasks registered by name).",
    )
    name: str | None = Field(None, description="Run name (default: the recipe file's stem).")
    output_dir: Path = Field(Path("runs"), description="Where run directories are created.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)


class RefusedYAML(yaml.MarkedYAMLError):
    """Well-formed YAML that recipes do not allow (aliases, anchors, deep nesting)."""


class RecipeLoader(yaml.SafeLoader):
    """The safe loader without anchors/aliases and with at most :data:`MAX_DEPTH` nesting levels."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise RefusedYAML(
                problem="YAML anchors and aliases (&name, *name) are not allowed in recipes",
                problem_mark=event.start_mark,
            )
        if self.depth >= MAX_DEPTH:
            raise RefusedYAML(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with :class:`RecipeLoader`; errors name ``source`` and the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "" if isinstance(exc, RefusedYAML) else "YAML syntax error: "
        raise ConfigError(f"{source}:{where} {kind}{problem}") from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe with the bounded safe loader; errors name the file (and line)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"recipe: {p} is a folder; give a recipe file (.yaml) or a shipped recipe name")
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    if p.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes, more than a recipe may hold ({MAX_RECIPE_BYTES})")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    data = load_yaml_text(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.epochs=1"`` -> (["trainer", "epochs"], 1); values are YAML scalars/lists.

    A value that is not valid YAML is taken as text; anchors/aliases are refused as in recipes.
    """
    if "=" not in text:
        raise ConfigError(f"override {excerpt(text)} must look like key.path=value")
    key, raw = text.split("=", 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"override '{shorten(key, 120)}': value longer than {MAX_RECIPE_BYTES} characters")
    try:
        value = yaml.load(raw, Loader=RecipeLoader) if raw.strip() else ""  # noqa: S506
    except RefusedYAML as exc:
        raise ConfigError(f"override '{shorten(key, 120)}': {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw recipe dict (in place, returned)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {excerpt(text)}: '{shorten(k, 120)}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The sub-model at ``loc`` (for 'did you mean'), or None."""
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _did_you_mean(schema: type[BaseModel], loc: tuple) -> str | None:
    """The dotted key an unknown key at ``loc`` probably meant: a moved key, else the nearest field."""
    section = _section_at(schema, loc[:-1])
    if section is None:
        return None
    moved = getattr(section, "moved", {}).get(str(loc[-1]))
    if moved:
        return moved
    hint = nearest(str(loc[-1])[:100], list(section.model_fields))
    return ".".join([*map(str, loc[:-1]), hint]) if hint else None


def format_errors(exc: ValidationError, schema: type[BaseModel], source: str) -> str:
    """All validation errors as one line: ``source: key: problem; key: problem``."""
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = shorten(".".join(str(p) for p in loc), 120)
        if err["type"] == "extra_forbidden":
            hint = _did_you_mean(schema, loc)
            parts.append(f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {excerpt(got)})"
            msg = shorten(err["msg"].removeprefix("Value error, "), 300)
            msg = f"{msg[:1].lower() + msg[1:]}{shown}"
            parts.append(f"{key}: {msg}" if key else msg)  # a recipe-level check names its keys itself
    return f"{source}: " + "; ".join(parts)


def validate(schema: type[Recipe], data: dict[str, Any], source: str) -> Recipe:
    """Validate a raw recipe dict against ``schema`` or raise one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, schema, source)) from None


def to_plain(cfg: BaseModel) -> dict[str, Any]:
    """JSON/YAML-safe dict of a config (paths as strings)."""
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: BaseModel) -> str:
    """The resolved recipe as YAML text (without anchors, which :func:`read_yaml` refuses)."""
    return yaml.dump(to_plain(cfg), Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True
