"""Capsule layers against manual indexing and naive einsums."""

from __future__ import annotations

import pytest
import torch

from capsule_kit.functional import squash
from capsule_kit.layers import CapsuleDecoder, ConvCaps, DenseCaps, PrimaryCaps, mask_capsules
from capsule_kit.routing import Routed, RoutingConfig


def test_primary_caps_groups_the_channels_of_one_type_at_one_position():
    torch.manual_seed(0)
    types, dim = 4, 5
    layer = PrimaryCaps(3, num_types=types, dim=dim, kernel_size=3, stride=2)
    x = torch.randn(2, 3, 11, 11)
    caps = layer(x)
    conv = layer.conv(x)  # [B, T*D, 5, 5]
    h, w = conv.shape[-2:]
    assert caps.shape == (2, types * h * w, dim)
    for b in range(2):
        for t in range(types):
            for y in range(h):
                for x_ in range(w):
                    want = squash(conv[b, t * dim : (t + 1) * dim, y, x_])
                    torch.testing.assert_close(caps[b, t * h * w + y * w + x_], want)
    # the seed's view(B, -1, D) would group 5 neighbouring positions of one channel instead
    assert not torch.allclose(caps, squash(conv.reshape(2, -1, dim)))


def test_primary_caps_efficient_squash_and_groups():
    layer = PrimaryCaps(8, num_types=2, dim=4, kernel_size=5, stride=1, groups=8, squash="efficient")
    caps = layer(torch.randn(3, 8, 5, 5))
    assert caps.shape == (3, 2, 4)
    assert (caps.norm(dim=-1) < 1).all()


def naive_votes(layer: DenseCaps, u: torch.Tensor) -> torch.Tensor:
    """u_hat[b, i, j, :] = u[b, i] @ W_i[:, j] with the weight each input uses."""
    n_w = layer.weight.shape[0]
    per_input = layer.num_in // n_w  # inputs sharing one weight (positions of one type, or all)
    w = layer.weight.repeat_interleave(per_input, dim=0)  # [N_i, D_i, N_o*D_o]
    votes = torch.einsum("bik,ikn->bin", u, w)
    return votes.view(u.shape[0], layer.num_in, layer.num_out, layer.dim_out)


@pytest.mark.parametrize("shared, types, n_weights", [("none", None, 12), ("positions", 3, 3), ("inputs", None, 1)])
def test_dense_caps_votes_equal_naive_einsum(shared, types, n_weights):
    torch.manual_seed(0)
    layer = DenseCaps(12, 4, 5, 6, shared=shared, types=types, init_std=1.0)
    assert layer.weight.shape == (n_weights, 4, 5 * 6)
    u = torch.randn(7, 12, 4)
    torch.testing.assert_close(layer.votes(u), naive_votes(layer, u))
    if shared == "positions":  # inputs 0-3 are type 0, 4-7 type 1, 8-11 type 2 (PrimaryCaps order)
        one = torch.zeros(1, 12, 4)
        one[0, 5] = u[0, 5]
        want = u[0, 5] @ layer.weight[1]
        torch.testing.assert_close(layer.votes(one)[0, 5].reshape(-1), want)


def test_dense_caps_rejects_bad_sharing():
    with pytest.raises(ValueError, match="shared must be none"):
        DenseCaps(4, 2, 2, 2, shared="all")
    with pytest.raises(ValueError, match="types dividing num_in=10"):
        DenseCaps(10, 2, 2, 2, shared="positions", types=3)


@pytest.mark.parametrize("route", ["dynamic", "em", "attention"])
def test_chunked_dense_caps_equals_unchunked(route):
    torch.manual_seed(0)
    whole = DenseCaps(20, 4, 3, 16, routing=route, max_vote_bytes=1 << 40).double()
    chunked = DenseCaps(20, 4, 3, 16, routing=route, max_vote_bytes=2 * 20 * 3 * 16 * 8).double()  # 2 samples a chunk
    chunked.load_state_dict(whole.state_dict())
    u, acts = torch.randn(7, 20, 4, dtype=torch.float64), torch.rand(7, 20, dtype=torch.float64)
    assert chunked._chunk(u) == 2 and whole._chunk(u) == 7
    # routing is per sample: on the same votes, routing chunk by chunk is bit-identical
    votes = whole.votes(u)
    parts = [whole.routing(v, a) for v, a in zip(votes.split([2, 2, 2, 1]), acts.split([2, 2, 2, 1]))]
    for got, want in zip(zip(*parts), whole.routing(votes, acts)):
        assert torch.equal(torch.cat(got), want)
    # the votes themselves come from BLAS, which may use another kernel for a 1-3 row GEMM
    # (on this CPU: last-bit differences for B < 4), so the layers agree to rounding (fp64 here,
    # as EM's fp32 gradients amplify last-bit vote differences to ~1e-5 relative)
    grads = []
    for layer in (whole, chunked):
        x, a = u.clone().requires_grad_(True), acts.clone().requires_grad_(True)
        out = layer(x, a)
        (out.poses.pow(2).sum() + out.activations.sum()).backward()
        grads.append((*out, x.grad, a.grad, layer.weight.grad))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_chunks_are_balanced():
    layer = DenseCaps(4, 2, 2, 2, routing="attention", max_vote_bytes=3 * 4 * 2 * 2 * 4)  # 3 samples a chunk
    seen = []
    layer.routing.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    out = layer(torch.randn(10, 4, 2))
    assert seen == [3, 3, 2, 2] and out.poses.shape == (10, 2, 2)


def test_dense_caps_automatic_chunking_on_cpu():
    layer = DenseCaps(1152, 8, 10, 16)  # Sabour's DigitCaps: 737,280 vote bytes per sample
    assert layer.max_vote_bytes is None
    assert layer._chunk(torch.zeros(64, 1152, 8)) == 22  # 16 MiB chunks on CPU
    assert layer._chunk(torch.zeros(64, 1152, 8, device="meta")) == 64  # no chunking on other devices


def test_mask_capsules_by_label_multi_hot_and_top_k():
    poses = torch.arange(1.0, 1.0 + 2 * 4 * 3).view(2, 4, 3)
    by_label = mask_capsules(poses, torch.tensor([2, 0]))
    want = torch.zeros_like(poses)
    want[0, 2], want[1, 0] = poses[0, 2], poses[1, 0]
    assert torch.equal(by_label, want)
    multi = mask_capsules(poses, torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]]))
    want = poses * torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]]).unsqueeze(-1)
    assert torch.equal(multi, want)
    lengths_first = torch.tensor([[0.1, 3.0, 0.2, 2.0], [5.0, 0.1, 4.0, 0.3]])
    ranked = torch.nn.functional.normalize(torch.randn(2, 4, 3), dim=-1) * lengths_first.unsqueeze(-1)
    top2 = mask_capsules(ranked, k=2)
    keep = torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0]])
    assert torch.equal(top2, ranked * keep.unsqueeze(-1))
    top1 = mask_capsules(ranked)  # default: the longest capsule
    assert torch.equal(top1.norm(dim=-1) > 0, torch.tensor([[False, True, False, False], [True, False, False, False]]))


def test_conv_caps_shapes_and_activation_range():
    torch.manual_seed(0)
    layer = ConvCaps(2, 3, kernel_size=3, stride=2, routing=RoutingConfig(name="em", iterations=2))
    poses, acts = torch.randn(2, 7, 7, 2, 16), torch.rand(2, 7, 7, 2)
    out_p, out_a = layer(poses, acts)
    assert out_p.shape == (2, 3, 3, 3, 16) and out_a.shape == (2, 3, 3, 3)
    assert ((out_a > 0) & (out_a < 1)).all()
    assert layer.weight.shape == (3 * 3 * 2, 3, 4, 4)


class Capture(torch.nn.Module):
    """Stands in for the routing to record the votes a layer makes."""

    def forward(self, votes, activations=None):
        self.votes, self.activations = votes, activations
        b, _, n_out, d = votes.shape
        return Routed(votes.new_zeros(b, n_out, d), votes.new_zeros(b, n_out), votes.new_zeros(votes.shape[:3]))


def test_conv_caps_receptive_fields_against_manual_indexing():
    torch.manual_seed(0)
    layer = ConvCaps(2, 3, kernel_size=3, stride=2)
    layer.routing = Capture()
    poses, acts = torch.randn(1, 5, 5, 2, 16), torch.rand(1, 5, 5, 2)
    layer(poses, acts)
    votes = layer.routing.votes  # [B*H'*W', K*K*T_in, T_out, 16]
    assert votes.shape == (4, 18, 3, 16)
    # output position (1, 0) reads rows 2..4, columns 0..2; input index = (ky * K + kx) * T_in + t
    pos, ky, kx, t, o = 1 * 2 + 0, 2, 1, 1, 2
    n = (ky * 3 + kx) * 2 + t
    want = poses[0, 2 + ky, 0 + kx, t].view(4, 4) @ layer.weight[n, o]
    torch.testing.assert_close(votes[pos, n, o], want.reshape(16))
    assert layer.routing.activations[pos, n] == acts[0, 2 + ky, kx, t]


def test_class_caps_coordinate_addition_at_indices_3_and_7():
    torch.manual_seed(0)
    h, w, t_in, n_cls = 3, 4, 2, 5
    layer = ConvCaps(t_in, n_cls, class_caps=True)
    layer.routing = Capture()
    poses, acts = torch.randn(2, h, w, t_in, 16), torch.rand(2, h, w, t_in)
    layer(poses, acts)
    votes = layer.routing.votes  # [B, H*W*T_in, N_o, 16], inputs ordered (row, column, type)
    assert votes.shape == (2, h * w * t_in, n_cls, 16)
    for r in range(h):
        for c in range(w):
            for t in range(t_in):
                i = (r * w + c) * t_in + t
                plain = (poses[1, r, c, t].view(4, 4) @ layer.weight[t, 3]).reshape(16)
                offset = votes[1, i, 3] - plain
                want = torch.zeros(16)
                want[3], want[7] = (r + 0.5) / h, (c + 0.5) / w  # first two entries of the right-hand column
                torch.testing.assert_close(offset, want, atol=1e-6, rtol=0)


def test_class_caps_output_shapes():
    layer = ConvCaps(2, 5, class_caps=True, routing=RoutingConfig(name="em", iterations=2))
    out_p, out_a = layer(torch.randn(3, 2, 2, 2, 16), torch.rand(3, 2, 2, 2))
    assert out_p.shape == (3, 5, 16) and out_a.shape == (3, 5)


def test_capsule_decoder_shape_and_range():
    dec = CapsuleDecoder(10 * 16, (1, 28, 28), hidden=(32, 64))
    out = dec(torch.randn(4, 10, 16))
    assert out.shape == (4, 1, 28, 28) and ((out >= 0) & (out <= 1)).all()
    assert [m.out_features for m in dec.net if isinstance(m, torch.nn.Linear)] == [32, 64, 784]
