"""Models: exact parameter counts, and forward/backward for every registered model."""

from __future__ import annotations

import pytest
import torch

from capsule_kit import MODELS, CapsNet, EfficientCapsNet, margin_loss, reconstruction_loss
from capsule_kit.models import build
from conftest import cuda


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_capsnet_parameter_counts_match_sabour():
    assert n_params(CapsNet()) == 8_215_568
    assert n_params(CapsNet(decoder=False)) == 6_804_224


def test_efficient_capsnet_parameter_count_matches_the_paper():
    assert n_params(EfficientCapsNet(decoder=False)) == 161_824


def test_builders_and_aliases():
    assert isinstance(build("capsnet_sabour", decoder=False), CapsNet)
    assert MODELS.resolve("em_capsnet") == "matrix_capsnet"
    assert MODELS.resolve("efficient") == "efficient_capsnet"
    with pytest.raises(TypeError):
        CapsNet(10)  # keyword-only: a positional typo cannot land in the wrong argument
    with pytest.raises(TypeError):
        build("capsnet", num_clases=10)  # no silent **kwargs


def loss_of(out, x, y):
    loss = margin_loss(out.lengths.float(), y)
    if out.reconstruction is not None:
        loss = loss + reconstruction_loss(out.reconstruction, x)
    return loss


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    model = MODELS.build(name)
    x = torch.rand(2, 1, 28, 28)
    y = torch.tensor([3, 7])
    out = model(x, y)
    assert out.lengths.shape == (2, 10) and out.poses.shape[:2] == (2, 10)
    assert torch.isfinite(out.lengths).all() and torch.isfinite(out.poses).all()
    assert ((out.lengths >= 0) & (out.lengths < 1)).all()
    if out.reconstruction is not None:
        assert out.reconstruction.shape == x.shape and torch.isfinite(out.reconstruction).all()
    loss_of(out, x, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ["capsnet_tiny", "efficient_capsnet_tiny"])
def test_masking_without_labels_keeps_the_longest_capsules(name):
    torch.manual_seed(0)
    model = MODELS.build(name, mask_k=2).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        top2 = out.lengths.topk(2, dim=-1).indices
        mask = torch.zeros_like(out.lengths).scatter_(1, top2, 1.0)
        torch.testing.assert_close(out.reconstruction, model(x, mask).reconstruction)


def test_tiny_capsnet_other_input_shape_and_classes():
    model = MODELS.build("capsnet_tiny", input_shape=(3, 32, 32), num_classes=4)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.lengths.shape == (2, 4) and out.reconstruction.shape == (2, 3, 32, 32)


def test_capsnet_eval_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = MODELS.build("capsnet_tiny").eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        whole = model(x).lengths
        single = torch.cat([model(x[i : i + 1]).lengths for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-6)


def forward_backward_on(device: str) -> None:
    """CapsNet forward/backward on ``device``, checked against the same weights on CPU."""
    torch.manual_seed(0)
    model = CapsNet().to(device)
    x = torch.rand(4, 1, 28, 28, device=device)
    y = torch.tensor([0, 1, 2, 3], device=device)
    out = model(x, y)
    loss_of(out, x, y).backward()
    assert out.lengths.device.type == torch.device(device).type and torch.isfinite(out.lengths).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    cpu = CapsNet()
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    with torch.no_grad():
        want = cpu(x.cpu(), y.cpu()).lengths
    # cuDNN convolutions may use TF32 (10-bit mantissa) by default: compare loosely
    torch.testing.assert_close(out.lengths.detach().cpu(), want, rtol=1e-2, atol=1e-3)


@cuda
def test_capsnet_forward_backward_on_cuda():
    forward_backward_on("cuda")


def test_matrix_stem_adds_features_not_votes():
    from capsule_kit.models.matrix_em import MatrixCapsNet

    torch.manual_seed(0)
    kwargs = dict(a=8, b=2, c=4, d=4, batch_norm=True, padding=0, routing="em")
    plain, stemmed = MatrixCapsNet(**kwargs), MatrixCapsNet(**kwargs, stem=2)
    per_block = 8 * 8 * 9 + 8 + 2 * 8  # 3x3 conv 8 -> 8 with bias, batch-norm weight and bias
    assert n_params(stemmed) - n_params(plain) == 2 * per_block
    x = torch.rand(2, 1, 28, 28)
    grid = plain.norm(plain.conv1(x)).shape
    assert stemmed.stem(stemmed.norm(stemmed.conv1(x)).relu()).shape == grid  # the primary grid is kept
    out = stemmed(x)
    assert out.lengths.shape == (2, 10) and torch.isfinite(out.lengths).all()
