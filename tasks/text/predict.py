"""Classify sentences with a trained text capsule network.

    python -m capsule_kit_tasks.text.predict RUN_DIR_or_CKPT [FILE|-] [--device cpu] [--batch-size 64]

Reads one sentence per line from FILE (or stdin for ``-``/no argument), skips
blank lines, and prints ``label<TAB>capsule lengths<TAB>sentence`` per sentence.
A run directory means the weights its results.json reports: ``checkpoints/best.pt`` when
results.json says ``"test_weights": "best"``, else ``checkpoints/last.pt`` (for a
cross-validated run, the last fold's model).

Shapes: N sentences, C classes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from capsule_kit.checkpoint import load_checkpoint
from capsule_kit.config import validate
from capsule_kit.distributed import DistInfo, pick_device
from capsule_kit.errors import CheckpointError, ConfigError, DataError, UserError
from capsule_kit.rundir import RunDir
from capsule_kit.task import resolve_task


@torch.no_grad()
def predict_lengths(model: nn.Module, texts: list[str], device: torch.device, batch_size: int = 64) -> Tensor:
    """Class capsule lengths [N, C] (CPU, float32) of ``texts``; the model tokenizes them itself."""
    model.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        ids, mask = model.encode(texts[s : s + batch_size])
        out.append(model(ids.to(device), mask.to(device)).lengths.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(model.labels))


def label_of(row: Tensor, names: list[str], multi: bool, threshold: float) -> str:
    """Label of one example from its lengths [C] (multi-label: all above ``threshold``, comma-joined)."""
    if multi:
        return ",".join(n for n, v in zip(names, row.tolist()) if v > threshold) or "-"
    return names[int(row.argmax())]


def target_of(y: Tensor, names: list[str]) -> str:
    """Name(s) of a true label: an index, or a multi-hot row [C]."""
    if y.dim() == 0:
        return names[int(y)]
    return ",".join(n for n, v in zip(names, y.tolist()) if v > 0) or "-"


def lengths_text(row: Tensor) -> str:
    return " ".join(f"{v:.4f}" for v in row.tolist())


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of a run directory: the weights its results.json tested (best or last)."""
    run = RunDir(Path(path))
    if not run.checkpoints.is_dir():
        return run.path  # a checkpoint file (load_checkpoint names it when missing)
    try:
        return run.tested_weights()
    except UserError:
        raise CheckpointError(f"{run.results}: not a results file (cannot tell best from last)") from None


def load_predictor(path: str | Path, device: torch.device) -> tuple[nn.Module, object]:
    """Model (weights, tokenizer and labels from the checkpoint) and its validated recipe."""
    from capsule_kit_tasks.text.model import build_text_model, decode_meta
    from capsule_kit_tasks.text.task import TextTask

    path = checkpoint_path(path)
    ckpt = load_checkpoint(path)
    raw, state = ckpt.get("config"), ckpt.get("model")
    if not isinstance(raw, dict) or not isinstance(state, dict) or "meta" not in state:
        raise CheckpointError(f"{path}: not a text-task checkpoint (no recipe or no model meta)")
    try:  # the task registry resolves names and aliases, as for any recipe
        task_cls = resolve_task(str(raw.get("task")))
    except ConfigError:
        task_cls = None
    if not (isinstance(task_cls, type) and issubclass(task_cls, TextTask)):
        raise CheckpointError(f"{path}: checkpoint of task '{raw.get('task')}', not 'text'")
    cfg = validate(task_cls.Config, raw, f"{path} (stored recipe)")
    meta = decode_meta(state["meta"])
    model = build_text_model(
        cfg.model, labels=meta["labels"], max_len=cfg.data.max_len, tokenizer_json=meta.get("tokenizer")
    )
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def read_lines(source: str) -> list[str]:
    """Non-blank lines of a file or stdin (``-``), which must be UTF-8."""
    if source == "-":
        where, raw = "stdin", sys.stdin.buffer.read()
    else:
        p = Path(source)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        where, raw = str(p), p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{where}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m capsule_kit_tasks.text.predict", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="run directory or checkpoint file")
    p.add_argument("input", nargs="?", default="-", help="file with one sentence per line, or - for stdin")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device, DistInfo(), key="--device")
        model, cfg = load_predictor(args.checkpoint, device)
        texts = read_lines(args.input)
        lengths = predict_lengths(model, texts, device, args.batch_size)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    multi, threshold = cfg.data.multi_label, cfg.loss.threshold
    for text, row in zip(texts, lengths):
        print(f"{label_of(row, model.labels, multi, threshold)}\t{lengths_text(row)}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
