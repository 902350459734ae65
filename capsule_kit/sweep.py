"""Run one recipe over several seeds: ``python -m capsule_kit.sweep RECIPE --seeds 0,1,2 [key=value ...]``.

One seed's accuracy swings by a point or two between machines, so results are
reported as mean +- std over seeds. The sweep writes one folder,
``<output_dir>/<name>-seeds-<timestamp>/``, holding a run directory per seed
(``<name>-seed<S>-...``) and ``summary.json``::

    {"recipe": ..., "overrides": [...], "seeds": [0, 1, 2], "runs": [run_dir, ...],
     "test": {"accuracy": {"mean": .., "std": .., "values": [..]}, ...},
     "wall_time_s": ..}

For cross-validated recipes each seed's value is already the mean over folds
(its ``test_std`` is kept per run); the summary's std is then the spread over seeds.
``--keys trainer.seed,split.seed`` gives each seed its own folds too ("3 CV seeds").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from capsule_kit.checkpoint import atomic_write_text
from capsule_kit.errors import ConfigError, UserError
from capsule_kit.metrics import scalars


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; raises ConfigError naming ``--seeds``."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds '{text}': expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds '{text}': expected distinct integers, e.g. 0,1,2")
    return seeds


def summarize(per_seed: list[dict]) -> dict[str, dict]:
    """Mean, sample std and values of every scalar test metric that all seeds report."""
    tests = [scalars(r.get("test", {})) for r in per_seed]
    keys = sorted(set.intersection(*(set(t) for t in tests))) if tests else []
    out = {}
    for k in keys:
        values = [float(t[k]) for t in tests]
        out[k] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        out[k]["values"] = values
    return out


def parse_keys(text: str) -> list[str]:
    """``"trainer.seed,split.seed"`` -> the dotted keys each seed is written to; ConfigError names ``--keys``."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys or any(not k.replace(".", "").replace("_", "").isalnum() for k in keys):
        raise ConfigError(f"--keys '{text}': expected comma-separated dotted keys, e.g. trainer.seed,split.seed")
    return keys


def sweep(recipe: str, seeds: list[int], overrides: list[str], keys: tuple[str, ...] = ("trainer.seed",)) -> dict:
    """Train ``recipe`` once per seed (after ``overrides``), the seed written to each of ``keys``.

    Returns:
        The summary (also written to ``summary.json``).
    """
    from capsule_kit.run import load_recipe, train

    cfg, _ = load_recipe(recipe, overrides)  # validated once before any run starts
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(cfg.output_dir) / f"{cfg.name}-seeds-{stamp}"
    per_seed, runs, t0 = [], [], time.perf_counter()
    for seed in seeds:
        extra = [*(f"{k}={seed}" for k in keys), f"name={cfg.name}-seed{seed}", f"output_dir={folder}"]
        seed_cfg, task_cls = load_recipe(recipe, [*overrides, *extra])
        print(f"sweep: seed {seed} ({len(runs) + 1}/{len(seeds)})", file=sys.stderr)
        res = train(seed_cfg, task_cls, argv=[], overrides=[*overrides, *extra])
        per_seed.append(res)
        runs.append(res.get("run_dir"))
    summary = {
        "recipe": str(recipe),
        "overrides": list(overrides),
        "seeds": seeds,
        "seed_keys": list(keys),
        "runs": runs,
        "test": summarize(per_seed),
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for a user error, in one line)."""
    p = argparse.ArgumentParser(prog="capsule_kit.sweep", description="Run a recipe over seeds: mean +- std.")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=1")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument(
        "--keys", default="trainer.seed", help="keys each seed is written to (trainer.seed,split.seed: new folds too)"
    )
    args = p.parse_intermixed_args(argv)
    try:
        summary = sweep(args.recipe, parse_seeds(args.seeds), args.overrides, tuple(parse_keys(args.keys)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, v in summary["test"].items():
        print(f"{k}: {v['mean']:.4f} +- {v['std']:.4f} over seeds {summary['seeds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
