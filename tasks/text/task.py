"""The text task: capsule text classification (Zhao et al., EMNLP 2018) on TSV/CSV/JSONL or hub data.

Shapes: B batch, L tokens, C classes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsule_kit.data import Splits, cache_dir, data_root, limit_indices, require_path
from capsule_kit.errors import ConfigError, DataError
from capsule_kit.metrics import classification_metrics, multilabel_metrics
from capsule_kit.splits import split_indices
from capsule_kit.task import Task, register_task
from capsule_kit_tasks.text.config import DataConfig, LossConfig, ModelConfig, TextConfig

__all__ = ["DataConfig", "LossConfig", "ModelConfig", "TextConfig", "TextTask"]


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
        from capsule_kit_tasks.text.data import encode_labels

        self.check_splits()
        if self.cfg.data.hub:
            return  # loading a hub dataset may need the network: left to build_data
        d, raw = self.cfg.data, self.raw_tables()
        keys = self.label_keys()
        for table in (raw["val"], raw["test"]):
            if table is not None:
                encode_labels(table, keys, self.multi, d.label_sep)  # labels the training file never has

    def label_keys(self) -> list[str]:
        """Sorted labels of the whole training file, checked against ``data.label_names``.

        Taken before any split or ``train_limit``, so a small or unlucky subset never drops a class
        (the model keeps one output capsule per label of the file).
        """
        from capsule_kit_tasks.text.data import label_vocab

        d = self.cfg.data
        keys = label_vocab(self.raw_tables()["train"], self.multi, d.label_sep)  # empty/several labels name their row
        if d.label_names is not None and len(d.label_names) != len(keys):
            raise ConfigError(f"data.label_names: {len(d.label_names)} names for {len(keys)} labels {keys}")
        return keys

    def check_splits(self) -> None:
        """Raise ConfigError for split settings that cannot work together."""
        d, folds = self.cfg.data, self.cfg.split.folds
        if folds > 1 and d.hub:
            raise ConfigError("split.folds: cross-validation works on files only; drop split.folds or data.hub")
        if folds > 1 and d.test:
            raise ConfigError("split.folds: cross-validation needs data.test: null (the folds are cut from train)")

    def folds(self) -> list[Any]:
        d, folds = self.cfg.data, self.cfg.split.folds
        return list(range(folds)) if folds > 1 and not d.test and not d.hub else [None]

    def raw_tables(self) -> dict[str, Any]:
        """The train/val/test tables as read (cached; test/val may be None)."""
        if self._raw is None:
            from capsule_kit_tasks.text.files import read_table

            self.check_splits()
            d = self.cfg.data
            if d.hub:
                self._raw = self._hub_tables()
            else:
                for split, path in self.files().items():
                    if path is not None:
                        require_path(path, f"data.{split} file")
                read = {"encoding": d.encoding, "empty_rows": d.empty_rows}
                self._raw = {
                    s: p and read_table(p, d.format, d.text_column, d.label_column, **read)
                    for s, p in self.files().items()
                }
            for split, n in (self.dropped_rows() or {}).items():
                print(f"data.{split} ({self._raw[split].path}): dropped {n} rows with an empty text", file=sys.stderr)
        return self._raw

    def dropped_rows(self) -> dict[str, int] | None:
        """Rows with an empty text left out of each read file (``data.empty_rows: drop``), else None."""
        if self.cfg.data.empty_rows != "drop" or self._raw is None:
            return None
        return {s: t.dropped for s, t in self._raw.items() if t is not None}

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
        read = {"text_column": d.text_column, "label_column": d.label_column, "empty_rows": d.empty_rows}
        return {s: n and table_from_rows(hub[n], f"{d.hub}[{n}]", "hub", **read) for s, n in found.items()}

    def split_tables(self, fold: Any) -> dict[str, Any]:
        """Train/val/test tables for one fold: folds and hold-outs are cut from train (stratified, seeded)."""
        d, s, raw = self.cfg.data, self.cfg.split, self.raw_tables()
        train, val, test = raw["train"], raw["val"], raw["test"]
        parts = split_indices(
            [str(v) for v in train.labels], folds=s.folds if test is None else 1, fold=fold or 0,
            test_fraction=None if test is not None else s.test_fraction, val_fraction=0 if val is not None else s.val,
            seed=s.seed, stratify=not self.multi,
        )  # fmt: skip
        if test is None:
            test = train.take(list(parts.test))
        if parts.val is not None:
            val = train.take(list(parts.val))
        train = train.take(list(parts.train))
        train = train.take(limit_indices(range(len(train.texts)), d.train_limit, s.seed))
        test = test.take(limit_indices(range(len(test.texts)), d.test_limit, s.seed))
        return {"train": train, "val": val, "test": test}

    def build_data(self, fold: Any = None) -> Splits:
        from capsule_kit_tasks.text.data import TextExamples, Tokenize, encode_labels
        from capsule_kit_tasks.text.frontends import PretrainedTokenizer, WordTokenizer
        from capsule_kit_tasks.text.vocab import build_tokenizer

        d = self.cfg.data
        tables = self.split_tables(fold)
        self.keys = self.label_keys()
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
        info = {f"{s}_size": len(t.texts) for s, t in tables.items() if t is not None}
        info.update(labels=self.names, fold=fold)
        if self.dropped_rows() is not None:
            info["empty_rows_dropped"] = self.dropped_rows()
        m = self.cfg.model
        encode = (
            WordTokenizer(self.tokenizer_json, d.max_len)
            if m.embedding == "learned"
            else PretrainedTokenizer(m.pretrained_path, d.max_len)
        )
        lengths = encode(tables["train"].texts)[1].sum(1).tolist() if d.bucket_by_length else None
        return Splits(
            train=sets["train"],
            val=sets["val"],
            test=sets["test"],
            collate=Tokenize(encode),
            info=info,
            lengths=lengths,
        )

    def before_training(self, model: nn.Module, data: Splits, device: Any) -> None:
        """Before the first step: cache a frozen encoder's states of the train/val texts in one sorted pass."""
        front = model.front
        if self.cfg.model.embedding == "pretrained" and getattr(front, "cache_enabled", False):
            texts = data.train.texts + (data.val.texts if data.val is not None else [])
            t0 = time.perf_counter()
            front.prefill(texts, device, self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size)
            print(
                f"cached frozen encoder states of {len(texts)} texts in {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
            )

    # -- model --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from capsule_kit_tasks.text.model import build_text_model
        from capsule_kit_tasks.text.vocab import load_vectors

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
        out = model(batch["ids"], batch["mask"])  # tokenized by the loader's collate (Tokenize)
        lengths = out.lengths.float()
        c = self.cfg.loss
        loss = c.margin(lengths, y)
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

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """The front end's trainable weights in their own group; None when it has none or the same rate.

        Learned embeddings learn at ``model.embed_lr_scale`` x ``trainer.lr`` (Kim 2014's CNN-rand);
        fine-tuned encoder layers at ``model.encoder_lr_scale`` x ``trainer.lr`` (frozen layers are in no group).
        """
        m = self.cfg.model
        if m.embedding == "learned":
            front = [model.front.embed.weight]
            scale = m.embed_lr_scale
        else:
            front = [p for p in model.front.parameters() if p.requires_grad]
            scale = m.encoder_lr_scale
        if not front or scale == 1.0:
            return None
        ids = {id(p) for p in front}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": front, "lr_scale": scale}, {"params": rest}]

    def label_names(self) -> list[str]:
        return list(self.names)

    def pictures(
        self, model: nn.Module, data: Splits, run_dir: Path, device: Any, outputs: list[dict[str, Tensor]]
    ) -> dict[str, Any]:
        from capsule_kit_tasks.text.pictures import text_pictures

        return text_pictures(self, data, run_dir, outputs)
