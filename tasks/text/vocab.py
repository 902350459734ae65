"""Word vocabulary of learned embeddings: the word-level tokenizer and pretrained word vectors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from capsule_kit.data import require_path
from capsule_kit.errors import DataError
from capsule_kit_tasks.text.frontends import PAD, UNK, require


def build_tokenizer(texts: list[str], *, min_freq: int, max_vocab: int | None, lowercase: bool, split: str) -> str:
    """Train a word-level ``tokenizers`` tokenizer on ``texts``; returns its JSON ([PAD] = 0, [UNK] = 1)."""
    tk = require("tokenizers")
    tok = tk.Tokenizer(tk.models.WordLevel(unk_token=UNK))
    steps = [tk.normalizers.NFKC()] + ([tk.normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = tk.normalizers.Sequence(steps)
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace() if split == "words" else tk.pre_tokenizers.WhitespaceSplit()
    trainer = tk.trainers.WordLevelTrainer(
        vocab_size=max_vocab or 10**8, min_frequency=min_freq, special_tokens=[PAD, UNK], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


def load_vectors(path: Path, tokenizer_json: str, dim: int, seed: int) -> tuple[Tensor, int]:
    """Embedding table [V, E] from a GloVe/word2vec text file; words not in the file get U(-0.25, 0.25).

    Each line is a word and ``dim`` numbers separated by spaces; the last ``dim`` fields are the
    vector and the rest is the word, which may itself hold spaces (glove.840B has such tokens).

    Returns:
        The table and the number of vocabulary words found in the file.

    """
    tk = require("tokenizers")
    vocab = tk.Tokenizer.from_str(tokenizer_json).get_vocab()
    g = torch.Generator().manual_seed(seed)
    table = (torch.rand(len(vocab), dim, generator=g) - 0.5) * 0.5
    table[0] = 0.0
    found = 0
    require_path(path, "word vectors file")
    first = True
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if not line.strip():
                continue
            if n == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                if int(parts[1]) != dim:
                    raise DataError(f"{path}: line 1: word2vec header says {parts[1]}-d vectors, model.embed_dim={dim}")
                continue  # word2vec text header "count dim"
            # A wrong embed_dim shows on the first line (numbers left in the word); later words may hold spaces.
            if len(parts) <= dim or (first and len(parts) > dim + 1 and _numbers(parts[1:-dim])):
                raise DataError(
                    f"{path}: line {n}: expected a word and {dim} numbers (model.embed_dim), "
                    f"got {len(parts) - 1} values"
                )
            first = False
            idx = vocab.get(" ".join(parts[:-dim]))
            if idx is not None and idx > 1:
                try:
                    table[idx] = torch.tensor([float(x) for x in parts[-dim:]])
                except ValueError:
                    raise DataError(f"{path}: line {n}: the last {dim} fields are not all numbers") from None
                found += 1
    return table, found


def _numbers(fields: list[str]) -> bool:
    """Whether every field parses as a float."""
    try:
        [float(x) for x in fields]
    except ValueError:
        return False
    return True
