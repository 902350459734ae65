"""Capsule text classifiers of Zhao et al. (EMNLP 2018, arXiv:1804.00538): Capsule-A and Capsule-B.

Capsule-A: tokens -> embeddings -> n-gram convolution -> primary capsules ->
convolutional capsule layer (K-gram windows) -> class capsules, routed by any vector routing
(``model.routing``: dynamic as in the paper, or attention).
Capsule-B runs three such branches (n = 3, 4, 5) and averages their class capsules.

Routing stabilisers of the paper, each an option: the orphan category (leaky
softmax), coefficient amendment (couplings scaled by the child capsule's
length) and the 3-iteration schedule.

Shapes: B batch, L tokens, E embedding dim, T capsule types, D capsule dims,
N_i / N_o input / output capsules, C classes.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from capsule_kit.functional import safe_norm, squash
from capsule_kit.layers import DenseCaps
from capsule_kit.routing import RoutingConfig
from capsule_kit_tasks.text.frontends import PretrainedEmbedder, WordEmbedder


class TextCapsOutput(NamedTuple):
    """Class capsules: ``poses`` [B, C, D_o] and ``lengths`` [B, C]."""

    poses: Tensor
    lengths: Tensor


class SequenceConvCaps(nn.Module):
    """Convolutional capsule layer over a sequence (Zhao et al. 2018, Sec. 2.3).

    Each window of ``kernel_size`` positions routes its ``kernel_size * T_in``
    child capsules to ``T_out`` parent capsules at the window's centre. The
    transforms (one per child slot and parent type) are shared over positions,
    so every window is one example of a :class:`DenseCaps` layer: votes are
    ``[B*L, K*T_in, T_out, D_o]``. Only windows centred on real tokens are
    routed; padded positions get zero capsules, which vote zero later on.

    Args:
        in_types: Child capsule types T_in per position.
        in_dim: Child capsule dim D_i.
        out_types: Parent capsule types T_out per position.
        out_dim: Parent capsule dim D_o.
        kernel_size: Window K (3 in the paper); 'same' padding with zero capsules.
        routing: The routing of every window (any vector routing: name or RoutingConfig).
        init_std: Std of the transforms.

    """

    def __init__(
        self,
        in_types: int,
        in_dim: int,
        out_types: int,
        out_dim: int,
        *,
        kernel_size: int = 3,
        routing: RoutingConfig | str = "dynamic",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.k, self.out_types, self.out_dim = kernel_size, out_types, out_dim
        self.caps = DenseCaps(kernel_size * in_types, in_dim, out_types, out_dim, routing=routing, init_std=init_std)

    def forward(self, caps: Tensor, mask: Tensor, amend: bool = False) -> Tensor:
        """Route every real window.

        Shapes:
            caps: [B, L, T_in, D_i] (zero at padded positions)
            mask: [B, L] bool, True at real tokens
            returns: [B, L, T_out, D_o]
        """
        b, length, t, d = caps.shape
        left = (self.k - 1) // 2
        padded = nn.functional.pad(caps, (0, 0, 0, 0, left, self.k - 1 - left))  # [B, L+K-1, T_in, D_i]
        keep = mask.reshape(-1).nonzero().squeeze(1)  # [N_w] windows centred on real tokens
        # Gather only the kept windows ([N_w, K, T_in, D_i]) instead of unfolding every position.
        rows, starts = keep // length, keep % length
        offsets = torch.arange(self.k, device=caps.device)
        u = padded[rows[:, None], starts[:, None] + offsets]  # [N_w, K, T_in, D_i]
        u = u.reshape(len(keep), self.k * t, d)  # [N_w, K*T_in, D_i]
        routed = self.caps(u, safe_norm(u, dim=-1) if amend else None)
        out = routed.poses.new_zeros(b * length, self.out_types, self.out_dim)
        out = out.index_copy(0, keep, routed.poses)  # [B*L, T_out, D_o]
        return out.view(b, length, self.out_types, self.out_dim)


class CapsuleBranch(nn.Module):
    """One Capsule-A stack on top of token features: n-gram conv -> primary -> conv caps -> class caps.

    Args:
        in_dim: Token feature dim E.
        num_classes: Classes C.
        max_len: Longest sequence L (the class layer has ``T * max_len`` inputs).
        ngram: Width n of the n-gram convolution.
        filters: Convolution channels (32).
        primary_types: Primary capsule types per position (32).
        primary_dim: Primary capsule dim (16).
        conv_types: Convolutional capsule types per position.
        conv_dim: Convolutional capsule dim.
        conv_kernel: Window of the convolutional capsule layer (3).
        class_dim: Class capsule dim.
        class_shared: Class-layer transforms: ``positions`` (one per type, shared
            over positions), ``none`` (one per child) or ``inputs`` (one per class).
        routing: The routing of both capsule layers (any vector routing).
        amend: Coefficient amendment (scale couplings by child lengths).
        init_std: Transform init std of the (conv capsule, class capsule) layers. Sabour's 0.01
            leaves these routed sums ~1e-4 long (squash ~ |s|^2: no signal, no gradient);
            the defaults start both layers with capsule lengths near 0.3-0.5.

    """

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int,
        max_len: int,
        ngram: int,
        filters: int,
        primary_types: int,
        primary_dim: int,
        conv_types: int,
        conv_dim: int,
        conv_kernel: int,
        class_dim: int,
        class_shared: str,
        routing: RoutingConfig,
        amend: bool,
        init_std: tuple[float, float] = (1.0, 0.05),
    ) -> None:
        super().__init__()
        self.max_len, self.amend, self.primary_types, self.primary_dim = max_len, amend, primary_types, primary_dim
        self.pad = ((ngram - 1) // 2, ngram - 1 - (ngram - 1) // 2)  # 'same' length, also for even n
        self.conv = nn.Conv1d(in_dim, filters, ngram)
        self.primary = nn.Linear(filters, primary_types * primary_dim)  # the paper's 1x1 capsule convolution
        self.conv_caps = SequenceConvCaps(
            primary_types,
            primary_dim,
            conv_types,
            conv_dim,
            kernel_size=conv_kernel,
            routing=routing,
            init_std=init_std[0],
        )
        self.class_caps = DenseCaps(
            conv_types * max_len,
            conv_dim,
            num_classes,
            class_dim,
            shared=class_shared,
            types=conv_types,
            routing=routing,
            init_std=init_std[1],
        )

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: x [B, L, E], mask [B, L] -> class poses [B, C, D_o], lengths [B, C]."""
        b, length, _ = x.shape
        keep = mask.unsqueeze(-1).to(x.dtype)
        feats = nn.functional.pad((x * keep).transpose(1, 2), self.pad)  # [B, E, L+n-1]
        feats = torch.relu(self.conv(feats)).transpose(1, 2)  # [B, L, F]
        prim = squash(self.primary(feats).view(b, length, self.primary_types, self.primary_dim))
        prim = prim * keep.unsqueeze(-1)  # [B, L, T1, D1], zero capsules at padding
        caps = self.conv_caps(prim, mask, self.amend)  # [B, L, T2, D2]
        caps = nn.functional.pad(caps, (0, 0, 0, 0, 0, self.max_len - length))  # [B, max_len, T2, D2]
        u = caps.transpose(1, 2).reshape(b, -1, caps.shape[-1])  # [B, T2*max_len, D2], type-major
        routed = self.class_caps(u, safe_norm(u, dim=-1) if self.amend else None)
        return routed.poses, routed.activations


class TextCapsNet(nn.Module):
    """Front end (learned or pretrained token features) + one or more capsule branches.

    The label names and the word-level tokenizer travel in the ``meta`` buffer
    (UTF-8 JSON as uint8), so a checkpoint alone can rebuild and run the model.

    Args:
        front: A :class:`WordEmbedder` or :class:`PretrainedEmbedder`.
        branches: Capsule branches; their class capsules are averaged (Capsule-B).
        labels: Class names, index order.
        dropout: Dropout on token features.
        word_dropout: Training-time probability of replacing a token by the unknown token
            (regularises learned embeddings, which otherwise memorise rare words).

    """

    def __init__(
        self,
        front: nn.Module,
        branches: list[CapsuleBranch],
        labels: list[str],
        dropout: float,
        word_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.front, self.branches, self.dropout = front, nn.ModuleList(branches), nn.Dropout(dropout)
        self.word_dropout = word_dropout
        self.labels = list(labels)
        meta = {"labels": self.labels, "tokenizer": getattr(front, "tokenizer_json", None)}
        self.register_buffer("meta", encode_meta(meta))

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Tokenize on the CPU: ids [B, L] int64 and mask [B, L] bool (L <= max_len)."""
        return self.front.encode(texts)

    def forward(self, ids: Tensor, mask: Tensor) -> TextCapsOutput:
        """Shapes: ids [B, L], mask [B, L] -> poses [B, C, D_o], lengths [B, C]."""
        if self.training and self.word_dropout > 0:
            drop = (torch.rand(ids.shape, device=ids.device) < self.word_dropout) & mask
            ids = ids.masked_fill(drop, self.front.unk_id)
        x = self.dropout(self.front(ids, mask))  # [B, L, E]
        outs = [branch(x, mask) for branch in self.branches]
        if len(outs) == 1:
            return TextCapsOutput(*outs[0])
        return TextCapsOutput(torch.stack([p for p, _ in outs]).mean(0), torch.stack([a for _, a in outs]).mean(0))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # The meta buffer's size depends on the vocabulary: adopt the stored one, then its tokenizer.
        stored = state_dict.get(prefix + "meta")
        if stored is not None:
            self.meta = stored.detach().clone().to(self.meta.device)
            meta = decode_meta(self.meta)
            self.labels = meta["labels"]
            if meta.get("tokenizer") and isinstance(self.front, WordEmbedder):
                self.front.set_tokenizer(meta["tokenizer"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def encode_meta(meta: dict) -> Tensor:
    """Plain data -> uint8 tensor of its JSON (checkpoint-safe)."""
    return torch.frombuffer(bytearray(json.dumps(meta).encode("utf-8")), dtype=torch.uint8).clone()


def decode_meta(meta: Tensor) -> dict:
    """Inverse of :func:`encode_meta`."""
    return json.loads(bytes(meta.cpu().numpy()).decode("utf-8"))


def build_text_model(
    cfg: Any, *, labels: list[str], max_len: int, tokenizer_json: str | None = None, vectors: Tensor | None = None
) -> TextCapsNet:
    """Build Capsule-A or Capsule-B from the recipe's ``model`` section.

    Args:
        cfg: The ``model`` section (:class:`capsule_kit_tasks.text.task.ModelConfig`).
        labels: Class names.
        max_len: Longest token sequence.
        tokenizer_json: Word-level tokenizer (``embedding: learned``).
        vectors: Optional initial embeddings [V, E] (GloVe/word2vec).

    """
    if cfg.embedding == "learned":
        front = WordEmbedder(tokenizer_json, dim=cfg.embed_dim, max_len=max_len, vectors=vectors)
    else:
        front = PretrainedEmbedder(
            cfg.pretrained_path, max_len=max_len, finetune_layers=cfg.finetune_layers, layer=cfg.pretrained_layer
        )
    ngrams = [cfg.ngram] if cfg.arch == "capsule_a" else list(cfg.ngrams)
    branches = [
        CapsuleBranch(
            in_dim=front.out_dim,
            num_classes=len(labels),
            max_len=max_len,
            ngram=n,
            filters=cfg.filters,
            primary_types=cfg.primary_types,
            primary_dim=cfg.primary_dim,
            conv_types=cfg.conv_types,
            conv_dim=cfg.conv_dim,
            conv_kernel=cfg.conv_kernel,
            class_dim=cfg.class_dim,
            class_shared=cfg.class_shared,
            routing=cfg.routing,
            amend=cfg.amendment,
            init_std=(cfg.conv_init_std, cfg.class_init_std),
        )
        for n in ngrams
    ]
    return TextCapsNet(front, branches, labels, cfg.dropout, cfg.word_dropout)
