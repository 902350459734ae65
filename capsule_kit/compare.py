"""Compare runs: ``python -m capsule_kit.compare RUN_DIR... [--format text|md|csv|json]``.

A folder without ``results.json`` (such as ``runs/``) stands for the run
directories inside it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from capsule_kit.metrics import labels, scalars
from capsule_kit.report import read_json, recorded_overrides

FIXED = ("run", "recipe", "task", "overrides", "params", "wall_s", "ex_per_s")


def expand(paths: list[str]) -> list[Path]:
    """Run directories named, or found one level below the folders named."""
    runs = []
    for p in map(Path, paths):
        if (p / "results.json").exists():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(d for d in p.iterdir() if (d / "results.json").exists())
    return runs


def row(run_dir: Path) -> dict:
    """One table row from a run's results.json and run.json."""
    res = json.loads((run_dir / "results.json").read_text())
    env = read_json(run_dir / "run.json")
    out = {
        "run": run_dir.name,
        "recipe": res.get("name"),
        "task": res.get("task"),
        "overrides": " ".join(recorded_overrides(env)),
        "params": res.get("params"),
        "wall_s": res.get("wall_time_s"),
        "ex_per_s": round(res.get("train_examples_per_s", 0.0), 1),
    }
    out.update({f"test_{k}": v for k, v in labels(res.get("test", {})).items()})  # e.g. SYNTHETIC data
    out.update({f"test_{k}": round(v, 4) for k, v in scalars(res.get("test", {})).items()})
    out.update({k: round(v, 4) for k, v in scalars(res.get("extra", {})).items()})
    return out


def render(rows: list[dict], fmt: str) -> str:
    """Rows as text, markdown, csv or json."""
    cols = list(FIXED) + sorted({k for r in rows for k in r} - set(FIXED))
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    fmt_line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_line(cols)] + [fmt_line(c) for c in cells])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="capsule_kit.compare", description="One table of capsule-kit runs.")
    p.add_argument("runs", nargs="+", help="run directories, or folders holding them (e.g. runs/)")
    p.add_argument("--format", choices=("text", "md", "csv", "json"), default="text")
    args = p.parse_args(argv)
    runs = expand(args.runs)
    if not runs:
        print(f"error: no run directories with results.json in {' '.join(args.runs)}", file=sys.stderr)
        return 2
    print(render([row(r) for r in runs], args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
