"""Compare runs: ``python -m capsule_kit.compare RUN_DIR... [--sort test.accuracy] [--plot out.png]``.

A folder without ``results.json`` (such as ``runs/``) stands for every run directory
below it, at any depth. The table shows the recipe keys whose values differ between
the runs (read from each run's ``recipe.yaml``), the overrides and the test metrics.
A run whose files cannot be read is named in one line on stderr and left out.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import yaml

from capsule_kit.metrics import labels, scalars
from capsule_kit.report import recorded_overrides
from capsule_kit.rundir import RunDir

FIXED = ("run", "recipe", "task", "overrides", "params", "wall_s", "ex_per_s")
SAME_EVERYWHERE = ("name", "output_dir")  # differ by design; the run column says it


class BadRun(Exception):
    """A run directory whose results cannot be tabulated (the message says why)."""


def expand(paths: list[str]) -> list[Path]:
    """Run directories named, or found at any depth below the folders named (each once, sorted)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(f.parent for f in p.rglob("results.json") if f.is_file())
    return list(dict.fromkeys(runs))


def _json_dict(path: Path, required: bool) -> dict:
    if not path.exists():
        if required:
            raise BadRun(f"{path.name} is missing")
        return {}
    try:
        value = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise BadRun(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise BadRun(f"{path.name} holds a {type(value).__name__}, expected an object")
    return value


def _typed(res: dict, key: str, kinds: tuple[type, ...], default):
    value = res.get(key, default)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        expected = " or ".join(k.__name__ for k in kinds)
        raise BadRun(f"results.json: '{key}' is {type(value).__name__} {str(value)[:40]!r}, expected {expected}")
    return value


def row(run_dir: Path) -> dict:
    """One table row from a run's results.json and run.json; raises BadRun when they are unusable."""
    run = RunDir(run_dir)
    res = _json_dict(run.results, required=True)
    env = _json_dict(run.run_json, required=False)
    test, extra = _typed(res, "test", (dict,), {}), _typed(res, "extra", (dict,), {})
    rate = _typed(res, "train_examples_per_s", (int, float), None)
    out = {
        "run": run_dir.name,
        "recipe": _typed(res, "name", (str,), None),
        "task": _typed(res, "task", (str,), None),
        "overrides": " ".join(map(str, recorded_overrides(env))),
        "params": _typed(res, "params", (int,), None),
        "wall_s": _typed(res, "wall_time_s", (int, float), None),
        "ex_per_s": None if rate is None else round(rate, 1),
    }
    out.update({f"test_{k}": v for k, v in labels(test or {}).items()})  # e.g. SYNTHETIC data
    out.update({f"test_{k}": round(v, 4) for k, v in scalars(test or {}).items()})
    out.update({k: round(v, 4) for k, v in scalars(extra or {}).items()})
    return out


def flat(tree, prefix: str = "") -> dict:
    """A nested recipe as dotted keys: ``{"trainer": {"lr": 1}}`` -> ``{"trainer.lr": 1}``."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def recipe_keys(run_dir: Path) -> dict:
    """A run's resolved recipe as dotted keys; ``{}`` (and a note on stderr) when unreadable."""
    path = RunDir(run_dir).recipe
    if not path.exists():
        return {}
    try:
        return flat(yaml.safe_load(path.read_text(errors="replace")) or {})
    except yaml.YAMLError as exc:
        print(f"note: {path}: recipe.yaml unreadable ({type(exc).__name__}); its recipe keys are left empty",
              file=sys.stderr)  # fmt: skip
        return {}


def recipe_differences(recipes: list[dict]) -> list[str]:
    """Dotted recipe keys whose value is not the same in every run (a missing key counts as different)."""
    keys = sorted({k for r in recipes for k in r} - set(SAME_EVERYWHERE))
    missing = object()
    return [k for k in keys if len({json.dumps(r.get(k, missing), default=str) for r in recipes}) > 1]


def sort_rows(rows: list[dict], key: str, ascending: bool) -> list[dict]:
    """Rows ordered by a column (``test.accuracy`` and ``test_accuracy`` name the same); missing values last."""
    col = key.replace(".", "_", 1) if key.startswith("test.") else key
    known = {k for r in rows for k in r}
    if col not in known:
        raise BadRun(f"--sort: no column '{key}' (known: {', '.join(sorted(known))})")

    def order(r):
        v = r.get(col)
        num = isinstance(v, (int, float)) and not math.isnan(v)
        return (not num, (v if ascending else -v) if num else str(v))

    return sorted(rows, key=order)


def render(rows: list[dict], fmt: str, diff: list[str] = ()) -> str:
    """Rows as text, markdown, csv or json."""
    metrics = sorted({k for r in rows for k in r} - set(FIXED) - set(diff))
    cols = list(FIXED[:3]) + list(diff) + list(FIXED[3:]) + metrics
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    cells = [["" if r.get(c) is None else str(r.get(c)) for c in cols] for r in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    fmt_line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_line(cols)] + [fmt_line(c) for c in cells])


def table(runs: list[Path]) -> tuple[list[dict], list[Path], list[str]]:
    """Rows of the readable runs (with their differing recipe keys); each unreadable run named on stderr."""
    rows, good = [], []
    for run_dir in runs:
        try:
            rows.append(row(run_dir))
            good.append(run_dir)
        except (BadRun, OSError, UnicodeDecodeError) as exc:
            print(f"skipped {run_dir}: {exc}", file=sys.stderr)
    recipes = [recipe_keys(d) for d in good]
    diff = [k for k in recipe_differences(recipes) if k not in FIXED] if len(good) > 1 else []
    for r, rec in zip(rows, recipes):
        r.update({k: rec.get(k) for k in diff})
    return rows, good, diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="capsule_kit.compare", description="One table of capsule-kit runs.")
    p.add_argument("runs", nargs="+", help="run directories, or folders holding them at any depth (e.g. runs/)")
    p.add_argument("--format", choices=("text", "md", "csv", "json"), default="text")
    p.add_argument("--sort", metavar="KEY", help="order by a column, e.g. test.accuracy (largest first)")
    p.add_argument("--ascending", action="store_true", help="with --sort: smallest first (e.g. a loss)")
    p.add_argument("--plot", metavar="PNG", help="write the runs' curves overlaid on shared axes to this PNG")
    args = p.parse_args(argv)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        print(f"error: --plot: folder of {args.plot} does not exist", file=sys.stderr)
        return 2
    rows, good, diff = table(expand(args.runs))
    if not rows:
        print(f"error: no run directories with a readable results.json in {' '.join(args.runs)}", file=sys.stderr)
        return 2
    try:
        if args.sort:
            order = sort_rows(rows, args.sort, args.ascending)
            good = [good[rows.index(r)] for r in order]
            rows = order
    except BadRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(rows, args.format, diff))
    if args.plot:
        from capsule_kit.plots import plot_overlay, read_metrics

        plot_overlay({d.name: read_metrics(RunDir(d).metrics) for d in good}, Path(args.plot))
        print(f"curves: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
