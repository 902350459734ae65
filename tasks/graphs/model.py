"""Capsule Graph Neural Network (Xinyi & Chen, ICLR 2019, https://openreview.net/forum?id=Byl8BnRcYm).

GCN layers -> node capsules (one per node and channel, the L layer outputs as
its L entries) -> attention (per node and channel, normalised over the graph's
nodes) -> graph capsules (routing over the variable number of node capsules: the
core's ragged routing, ``index=batch``) -> class capsules
(:class:`capsule_kit.layers.DenseCaps`, fixed P inputs) -> margin loss on
lengths + reconstruction of the graph's node-label histogram from the masked
class capsules (:class:`capsule_kit.layers.CapsuleDecoder`).

Shapes (docs/notation.md): B graphs in a batch, V / E nodes / edges of the
whole batch, F node features, C channels, L GCN layers (= node capsule dim),
N_o = P graph capsules of dim D_o, H histogram bins.

Imports ``torch_geometric`` at module level: ``tasks/graphs/task.py`` imports
this module lazily and names the missing extra.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.utils import add_self_loops
from torch_geometric.utils import softmax as node_softmax

from capsule_kit.layers import CapsuleDecoder, DenseCaps, mask_capsules
from capsule_kit.models import CapsOutput
from capsule_kit.routing import RoutingConfig, as_routing


class NodeCapsules(nn.Module):
    """L GCN layers of C channels; every layer's output is kept (multi-scale node features).

    Args:
        in_features: Node feature width F.
        channels: Channels C of every GCN layer (= node capsules per node).
        layers: GCN layers L (= node capsule dim).
        dropout: Dropout on each layer's input during training.
        normalize: Kipf & Welling's symmetric normalisation ``D^-1/2 (A + I) D^-1/2``;
            False sums over the neighbours and the node itself, ``(A + I) X W``, which
            keeps the degree information the normalisation divides away.

    """

    def __init__(
        self, in_features: int, *, channels: int, layers: int, dropout: float = 0.0, normalize: bool = True
    ) -> None:
        super().__init__()
        widths = [in_features] + [channels] * layers
        self.convs = nn.ModuleList(
            GCNConv(a, b, normalize=normalize, add_self_loops=normalize) for a, b in zip(widths[:-1], widths[1:])
        )
        self.dropout, self.normalize = dropout, normalize

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Shapes: x [V, F], edge_index [2, E] -> node capsules [V, C, L]."""
        if not self.normalize:  # GCNConv only adds self loops inside its normalisation
            edge_index, _ = add_self_loops(edge_index, num_nodes=x.shape[0])
        outs = []
        for conv in self.convs:
            x = nn.functional.dropout(x, self.dropout, self.training)
            x = torch.tanh(conv(x, edge_index))  # tanh as in the paper: bounded capsule entries
            outs.append(x)
        return torch.stack(outs, dim=-1)  # [V, C, L]


class NodeAttention(nn.Module):
    """Per-node, per-channel attention, normalised over each graph's nodes.

    A two-layer MLP scores the flattened node capsules of every node, one score
    per channel; a softmax over the nodes of the same graph (per channel) turns
    the scores into weights summing to 1, so a graph's weighted capsules are a
    size-independent average and large graphs do not dominate the routing sums.

    Args:
        channels: Channels C.
        dim: Node capsule dim L.
        hidden: Hidden width of the MLP.

    """

    def __init__(self, channels: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels * dim, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, caps: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        """Shapes: caps [V, C, L], batch [V] -> scaled caps [V, C, L], attention [V, C]."""
        scores = self.mlp(caps.flatten(1))  # [V, C]
        attn = node_softmax(scores, batch, num_nodes=caps.shape[0], dim=0)  # sums to 1 over a graph's nodes
        return caps * attn.unsqueeze(-1), attn


class GraphCapsules(nn.Module):
    """Node capsules -> P graph capsules by routing over each graph's nodes (ragged routing).

    One transform per (channel, graph capsule), shared by all nodes, so the
    layer works for any number of nodes.

    Args:
        channels: Input capsules per node C.
        dim_in: Node capsule dim L.
        num_out: Graph capsules P.
        dim_out: Graph capsule dim D_o.
        routing: Any vector routing (name or RoutingConfig); its N_i is the C capsules of one node.
        init_std: Init std of the transforms.

    """

    def __init__(
        self,
        channels: int,
        dim_in: int,
        num_out: int,
        dim_out: int,
        *,
        routing: RoutingConfig | str = "dynamic",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(init_std * torch.randn(channels, num_out, dim_in, dim_out))
        self.routing = as_routing(routing).build(num_in=channels, num_out=num_out)

    def forward(self, caps: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        """Shapes: caps [V, C, L], batch [V] -> poses [B, N_o, D_o], coupling [V, C, N_o]."""
        # [V, N_o, C, D_o] in memory, viewed as [V, C, N_o, D_o]: the layout routing contracts without copies
        votes = torch.einsum("vcl,cpld->vpcd", caps, self.weight).permute(0, 2, 1, 3)
        routed = self.routing(votes, index=batch, size=num_graphs)
        return routed.poses, routed.coupling


class CapsGNN(nn.Module):
    """CapsGNN graph classifier.

    Args:
        in_features: Node feature width F.
        num_classes: Class capsules.
        hist_dim: Histogram bins H reconstructed by the decoder (0: no decoder).
        channels: GCN channels C.
        layers: GCN layers L.
        graph_caps: Graph capsules P.
        graph_dim: Graph capsule dim.
        class_dim: Class capsule dim.
        attention_hidden: Hidden width of the attention MLP.
        routing: Routing of both capsule layers (any vector routing; default dynamic, 3 iterations).
        decoder_hidden: Hidden widths of the histogram decoder.
        dropout: Dropout on the GCN layers' inputs.
        graph_init_std: Init std of the node -> graph capsule transforms.
        class_init_std: Init std of the class capsule transforms.
        normalize: Symmetric GCN normalisation (see :class:`NodeCapsules`).

    """

    routing_kind = "vector"  # any vector routing (model.routing)

    def __init__(
        self,
        *,
        in_features: int,
        num_classes: int,
        hist_dim: int,
        channels: int = 16,
        layers: int = 4,
        graph_caps: int = 8,
        graph_dim: int = 16,
        class_dim: int = 8,
        attention_hidden: int = 32,
        routing: RoutingConfig | str = "dynamic",
        decoder_hidden: tuple[int, ...] = (32,),
        dropout: float = 0.0,
        graph_init_std: float = 5.0,
        class_init_std: float = 0.5,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.nodes = NodeCapsules(in_features, channels=channels, layers=layers, dropout=dropout, normalize=normalize)
        self.attention = NodeAttention(channels, layers, attention_hidden)
        self.graph_caps = GraphCapsules(
            channels, layers, graph_caps, graph_dim, routing=routing, init_std=graph_init_std
        )
        self.classes = DenseCaps(
            graph_caps, graph_dim, num_classes, class_dim, routing=routing, init_std=class_init_std
        )
        self.decoder = CapsuleDecoder(num_classes * class_dim, (hist_dim,), tuple(decoder_hidden)) if hist_dim else None

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int, y: Tensor | None = None):
        """Classify a batch of graphs; ``y`` (training) picks the capsule to reconstruct from.

        Shapes:
            x: [V, F], edge_index: [2, E], batch: [V], y: [B] or None
            returns: CapsOutput(lengths [B, N_cls], poses [B, N_cls, D_cls], reconstruction [B, H] or None)
        """
        caps = self.nodes(x, edge_index)  # [V, C, L]
        caps, _ = self.attention(caps, batch, num_graphs)
        graph_poses, _ = self.graph_caps(caps, batch, num_graphs)  # [B, P, D_o]
        routed = self.classes(graph_poses)
        recon = self.decoder(mask_capsules(routed.poses, y)) if self.decoder is not None else None
        return CapsOutput(routed.activations, routed.poses, recon)
