"""``report.html``: one self-contained page per run (pictures embedded, no network).

Shows the resolved recipe with the overrides used, the environment, the
metrics, the learning curves and every picture the task wrote.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from capsule_kit.checkpoint import atomic_write_text
from capsule_kit.metrics import labels, scalars
from capsule_kit.report import read_metrics

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
pre{background:#f5f5f5;padding:1em;overflow:auto}img{max-width:100%;border:1px solid #ddd;margin:.3em 0}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}"""


def _table(rows: dict) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def read_json(path: Path) -> dict:
    """A run directory's JSON file (run.json, results.json) as a dict; ``{}`` when it is not there yet."""
    return json.loads(path.read_text()) if path.exists() else {}


def pictures_in(run_dir: Path) -> list[Path]:
    """PNG files of a run, curves first."""
    pngs = sorted(run_dir.glob("*.png"))
    return sorted(pngs, key=lambda p: (p.name != "curves.png", p.name))


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    img = f'<img alt="{name}" data-file="{name}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{name}</figcaption></figure>"


def _epoch_table(run_dir: Path) -> str:
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    if not rows:
        return "<p>no epoch finished yet</p>"
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "kind"))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _predictions(run_dir: Path, rows: int = 10) -> list[str]:
    """The first rows of the run's ``predictions.tsv`` (e.g. text with capsule lengths), as a table."""
    path = run_dir / "predictions.tsv"
    if not path.exists():
        return []
    with path.open(encoding="utf-8", errors="replace") as fh:
        lines = [line.rstrip("\n").split("\t") for _, line in zip(range(rows + 1), fh)]
    body = "".join(f"<tr>{_cells(r, 'td')}</tr>" for r in lines[1:])
    return [f"<h2>Predictions</h2><p>first {len(lines) - 1} rows of predictions.tsv</p>",
            f"<table><tr>{_cells(lines[0], 'th')}</tr>{body}</table>"]  # fmt: skip


def _cells(row: list[str], tag: str) -> str:
    return "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)


def write_report(run_dir: Path) -> Path:
    """(Re)write ``run_dir/report.html`` from the files in the run directory."""
    run_dir = Path(run_dir)
    results, env = read_json(run_dir / "results.json"), read_json(run_dir / "run.json")
    recipe = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").exists() else ""
    overrides = recorded_overrides(env)
    status = "finished" if results else "in progress (refreshed at each checkpoint)"
    summary = {"run": run_dir.name, "status": status}
    if results:
        summary.update(
            {
                "params": results.get("params"),
                "wall time (s)": results.get("wall_time_s"),
                "train examples/s": round(results.get("train_examples_per_s", 0.0), 1),
            }
        )
        if results.get("test_weights") == "best":
            summary["test weights"] = f"best on validation (epoch {results.get('best_epoch')})"
        summary.update({f"test {k}": v for k, v in labels(results.get("test", {})).items()})
        summary.update({f"test {k}": v for k, v in scalars(results.get("test", {})).items()})
        summary.update({f"test {k} (std)": v for k, v in scalars(results.get("test_std", {})).items()})
        summary.update({f"{k}": v for k, v in scalars(results.get("extra", {})).items()})
    env_rows = {k: env[k] for k in ("torch", "python", "device", "threads", "platform", "started") if k in env}
    parts = [
        f"<h1>{html.escape(run_dir.name)}</h1>",
        _table(summary),
        "<h2>Overrides</h2>",
        f"<pre>{html.escape(' '.join(overrides) or '(none)')}</pre>",
        "<h2>Environment</h2>",
        _table(env_rows),
        "<h2>Epochs</h2>",
        _epoch_table(run_dir),
        "<h2>Pictures</h2>",
        *(_figure(p) for p in pictures_in(run_dir)),
        *_predictions(run_dir),
        "<h2>Resolved recipe</h2>",
        f"<pre>{html.escape(recipe)}</pre>",
    ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out


def recorded_overrides(env: dict) -> list[str]:
    """A run's recipe overrides from its run.json (older runs: the key=value words of argv)."""
    if "overrides" in env:
        return list(env["overrides"])
    return [a for a in env.get("argv", []) if "=" in a and not a.startswith("-")]


def recipe_of(run_dir: Path) -> dict:
    """The resolved recipe of a run as a dict."""
    path = Path(run_dir) / "recipe.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}
