"""``report.html``: one self-contained page per run (pictures embedded, no network).

Shows the headline numbers (formatted), dataset sizes, per-class results, the
epochs, every picture with a caption, the overrides, the environment and the
resolved recipe. The pictures themselves are drawn by :mod:`capsule_kit.plots`
and the tasks.
"""

from __future__ import annotations

import base64
import html
from importlib import metadata
from pathlib import Path

import yaml

from capsule_kit.checkpoint import atomic_write_text
from capsule_kit.metrics import labels, scalars
from capsule_kit.plots import read_metrics
from capsule_kit.rundir import RunDir

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f5f5f5;padding:1em;overflow:auto;max-height:30em;white-space:pre-wrap}
figure{margin:1.2em 0}figcaption{font-size:.9em;color:#444;max-width:60em}
img{max-width:100%;max-height:480px;border:1px solid #ddd;margin:.3em 0;cursor:zoom-in}
img.big{max-height:none;cursor:zoom-out}footer{margin-top:2em;color:#777;font-size:.85em}"""
SCRIPT = "for(const i of document.images)i.onclick=()=>i.classList.toggle('big');"

# What the standard pictures show; a task names its own in results.json ``extra.captions``.
CAPTIONS = {
    "curves.png": "Learning curves over training steps: loss (train per logged step, evaluation per epoch), "
    "accuracy (train accuracy when the task logs it, evaluation per epoch) and the learning rate.",
    "confusion.png": "Confusion matrix on the test split (rows: true class, columns: predicted; "
    "summed over the test folds of a cross-validated run).",
    "cv_accuracy.png": "Cross-validation: test accuracy of each fold (bars; line and band: mean +- std) "
    "and their box plot.",
}


def version() -> str:
    """The installed capsule-kit version ("unknown" outside an installed checkout)."""
    try:
        return metadata.version("capsule-kit")
    except metadata.PackageNotFoundError:
        return "unknown"


def fmt(key: str, v) -> str:
    """A value as people read it: ``8,215,568`` params, ``98.6 s``, ``0.9861``, ``1.00e-03``."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if not isinstance(v, float):
        return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if key.endswith(("ex/s", "ex_per_s")) or abs(v) >= 1000 and not key.endswith(("_s", " time")):
        return f"{v:,.0f}"
    if key.endswith(("_s", " time")):
        return f"{v:,.1f} s"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4f}"


def _table(rows: dict) -> str:
    def cell(k, v):
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f"<td{' class=n' if num else ''}>{html.escape(fmt(str(k), v))}</td>"

    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{cell(k, v)}</tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _grid(head: list[str], rows: list[list]) -> str:
    def cell(k, v):
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f"<td{' class=n' if num else ''}>{html.escape(fmt(k, v))}</td>"

    top = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(h, v) for h, v in zip(head, r)) + "</tr>" for r in rows)
    return f"<table><tr>{top}</tr>{body}</table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    img = f'<img alt="{name}" data-file="{name}" src="data:image/png;base64,{data}" title="click to enlarge">'
    return f"<figure>{img}<figcaption><b>{name}</b>: {html.escape(caption)}</figcaption></figure>"


def captions(results: dict) -> dict[str, str]:
    """Picture captions: the standard ones, then those the task gave in ``extra.captions``."""
    extra = results.get("extra") if isinstance(results.get("extra"), dict) else {}
    given = extra.get("captions") if isinstance(extra.get("captions"), dict) else {}
    return {**CAPTIONS, **{str(k): str(v) for k, v in given.items()}}


def _epoch_table(run_dir: Path) -> str:
    rows = [r for r in read_metrics(RunDir(run_dir).metrics) if r.get("kind") == "epoch"]
    if not rows:
        return "<p>no epoch finished yet</p>"
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "kind"))
    return _grid(keys, [[r.get(k) for k in keys] for r in rows])


def per_class(results: dict) -> str:
    """Per-class table (support, precision, recall) from the test confusion matrix, with label names."""
    test = results.get("test") if isinstance(results.get("test"), dict) else {}
    cm = test.get("confusion_matrix")
    if not cm or not all(isinstance(r, list) and len(r) == len(cm) for r in cm):
        return ""
    extra = results.get("extra") if isinstance(results.get("extra"), dict) else {}
    names = results.get("label_names") or extra.get("labels") or [str(i) for i in range(len(cm))]
    names = names if len(names) == len(cm) else [str(i) for i in range(len(cm))]
    rows = []
    for i, name in enumerate(names):
        support, predicted = sum(cm[i]), sum(r[i] for r in cm)
        rows.append([i, str(name), support, cm[i][i] / predicted if predicted else 0.0,
                     cm[i][i] / support if support else 0.0])  # fmt: skip
    head = ["class", "name", "test examples", "precision", "recall (accuracy)"]
    return "<h2>Per class (test)</h2>" + _grid(head, rows)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k} ") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _data_sizes(results: dict) -> str:
    """Dataset sizes and facts (``Splits.info``, saved as results.json ``data``), nested keys joined."""
    data = results.get("data")
    if not isinstance(data, dict) or not data:
        return ""
    shown = {k: v for k, v in _flat(data).items() if isinstance(v, (int, float, str, bool, list))}
    return "<h2>Data</h2>" + _table(shown)


def _predictions(run_dir: Path, rows: int = 10) -> list[str]:
    """The first rows of the run's ``predictions.tsv`` (e.g. text with capsule lengths), as a table."""
    path = RunDir(run_dir).predictions
    if not path.exists():
        return []
    with path.open(encoding="utf-8", errors="replace") as fh:
        lines = [line.rstrip("\n").split("\t") for _, line in zip(range(rows + 1), fh)]
    body = "".join(f"<tr>{_cells(r, 'td')}</tr>" for r in lines[1:])
    return [f"<h2>Predictions</h2><p>first {len(lines) - 1} rows of predictions.tsv</p>",
            f"<table><tr>{_cells(lines[0], 'th')}</tr>{body}</table>"]  # fmt: skip


def _cells(row: list[str], tag: str) -> str:
    return "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)


def summary(run_dir: Path, results: dict, env: dict) -> dict:
    """The headline rows: status, parameters, times, test metrics."""
    out = {"run": run_dir.name, "status": "finished" if results else "in progress (refreshed at each checkpoint)"}
    if not results:
        return out
    out.update({"parameters": results.get("params"), "wall time": results.get("wall_time_s"),
                "train time": results.get("train_time_s"), "steps": results.get("steps"),
                "epochs": results.get("epochs"), "train ex/s": results.get("train_examples_per_s")})  # fmt: skip
    if results.get("test_weights") == "best":
        out["test weights"] = f"best on validation (epoch {results.get('best_epoch')})"
    test = results.get("test") if isinstance(results.get("test"), dict) else {}
    out.update({f"test {k}": v for k, v in labels(test).items()})
    out.update({f"test {k}": v for k, v in scalars(test).items()})
    std = results.get("test_std") if isinstance(results.get("test_std"), dict) else {}
    out.update({f"test {k} (std)": v for k, v in scalars(std).items()})
    extra = results.get("extra") if isinstance(results.get("extra"), dict) else {}
    out.update(scalars(extra))
    return {k: v for k, v in out.items() if v is not None}


def write_report(run_dir: Path) -> Path:
    """(Re)write ``run_dir/report.html`` from the files in the run directory."""
    run = RunDir(run_dir)
    run_dir = run.path
    results, env = run.read_json(run.results), run.read_json(run.run_json)
    recipe = run.recipe.read_text() if run.recipe.exists() else ""
    keys = ("torch", "python", "device", "threads", "omp_wait_policy", "platform", "started")
    env_rows = {"capsule-kit (this page)": version()}
    env_rows.update({k: v for k, v in env.items() if k.startswith(("capsule", "git", "version"))})
    env_rows.update({k: env[k] for k in keys if k in env})
    names = captions(results)
    figures = [_figure(p, names.get(p.name, "picture written by the task")) for p in run.pictures()]
    parts = [
        f"<h1>{html.escape(run_dir.name)}</h1>",
        _table(summary(run_dir, results, env)),
        _data_sizes(results),
        per_class(results),
        "<h2>Epochs</h2>",
        _epoch_table(run_dir),
        "<h2>Pictures</h2><p>click a picture to enlarge it</p>",
        *figures,
        *_predictions(run_dir),
        "<h2>Overrides</h2>",
        f"<pre>{html.escape(' '.join(recorded_overrides(env)) or '(none)')}</pre>",
        "<h2>Environment</h2>",
        _table(env_rows),
        "<h2>Resolved recipe</h2>",
        f"<pre>{html.escape(recipe)}</pre>",
        f"<footer>written by capsule-kit {html.escape(version())}</footer>",
    ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}<script>{SCRIPT}</script></body></html>"
    )
    out = run.report
    atomic_write_text(out, page)
    return out


def recorded_overrides(env: dict) -> list[str]:
    """A run's recipe overrides from its run.json (older runs: the key=value words of argv)."""
    if "overrides" in env:
        return list(env["overrides"])
    return [a for a in env.get("argv", []) if "=" in a and not a.startswith("-")]


def recipe_of(run_dir: Path) -> dict:
    """The resolved recipe of a run as a dict."""
    path = RunDir(run_dir).recipe
    return yaml.safe_load(path.read_text()) if path.exists() else {}
