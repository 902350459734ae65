"""Files a person looks at after a text run: predictions.tsv, labels.json, tokenizer.json.

The confusion matrix is one of the runner's standard pictures (capsule_kit.plots).

Shapes: N examples, C classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from capsule_kit.checkpoint import atomic_write_text
from capsule_kit.data import Splits
from capsule_kit.rundir import RunDir
from capsule_kit_tasks.text.predict import label_of, lengths_text, target_of


def text_pictures(task: Any, data: Splits, run_dir: Path, outputs: list[dict[str, Tensor]]) -> dict[str, Any]:
    """Write the run's text files and confusion matrix from the final test evaluation's outputs (no re-prediction).

    ``predictions.tsv`` lists the evaluated test texts in order (all of them, unless
    ``trainer.eval_max_steps`` capped the evaluation).

    Returns:
        Plain data for results.json: label names/keys and the written file names.

    """
    run_dir = Path(run_dir)
    names, keys = list(task.names), list(task.keys)
    lengths = torch.cat([o["lengths"] for o in outputs]) if outputs else torch.zeros(0, len(names))  # [N, C]
    y = torch.cat([o["y"] for o in outputs]) if outputs else data.test.labels[:0]
    texts = data.test.texts[: len(lengths)]
    multi, threshold = task.multi, task.cfg.loss.threshold
    rows = ["index\ttext\tlabel\tpredicted\tcapsule_lengths"]
    for i, text in enumerate(texts):
        row = lengths[i]
        cells = [
            str(i),
            " ".join(text.split()),
            target_of(y[i], names),
            label_of(row, names, multi, threshold),
            lengths_text(row),
        ]
        rows.append("\t".join(cells))
    predictions = RunDir(run_dir).predictions  # the report shows its first rows
    atomic_write_text(predictions, "\n".join(rows) + "\n")
    labels = [{"index": i, "value": k, "name": n} for i, (k, n) in enumerate(zip(keys, names))]
    atomic_write_text(run_dir / "labels.json", json.dumps(labels, indent=2))
    out = {"labels": names, "label_values": keys, "predictions": predictions.name, "labels_file": "labels.json"}
    if task.tokenizer_json:
        atomic_write_text(run_dir / "tokenizer.json", task.tokenizer_json)
        out["tokenizer"] = "tokenizer.json"
    return out
