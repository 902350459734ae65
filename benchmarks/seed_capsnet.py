"""The seed's CapsuleNet, written device-agnostic (no ``.cuda()``): benchmarks/train_throughput.py trains it.

PrimaryCaps as ``view(B, -1, 8)``, DenseCaps with a [1, 1152, 160, 8, 1] weight
times ``u.repeat(...)`` summed over D_i, the routing loop with broadcasts, the
seed's squash and decoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def seed_squash(inputs: Tensor, axis: int = -1) -> Tensor:
    norm = torch.norm(inputs, dim=axis, keepdim=True)
    scale = norm**2 / (1 + norm**2) / (norm + 1e-8)
    return scale * inputs


class SeedPrimaryCaps(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dim_caps: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.dim_caps = dim_caps
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return seed_squash(self.conv2d(x).view(x.size(0), -1, self.dim_caps))


class SeedDenseCaps(nn.Module):
    def __init__(self, in_num: int, in_dim: int, out_num: int, out_dim: int, iterations: int = 3) -> None:
        super().__init__()
        self.in_num, self.in_dim, self.out_num, self.out_dim, self.iterations = (
            in_num,
            in_dim,
            out_num,
            out_dim,
            iterations,
        )
        self.weight = nn.Parameter(0.01 * torch.randn(1, in_num, out_num * out_dim, in_dim, 1))

    def forward(self, u: Tensor) -> Tensor:
        u_hat = u[:, :, None, :, None]
        u_hat = self.weight * u_hat.repeat(1, 1, self.out_num * self.out_dim, 1, 1)
        u_hat = torch.sum(u_hat, dim=3)
        u_hat = torch.squeeze(u_hat.view(-1, self.in_num, self.out_num, self.out_dim, 1))
        u_hat_for_route = u_hat.detach()
        b = torch.zeros(u.size(0), self.in_num, self.out_num, device=u.device, dtype=u.dtype)  # seed: .cuda()
        for i in range(self.iterations):
            c = F.softmax(b, dim=2)
            if i < self.iterations - 1:
                outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat_for_route, dim=1, keepdims=True))
                b = b + torch.sum(outputs * u_hat_for_route, dim=-1)
            else:
                outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat, dim=1, keepdims=True))
        return torch.squeeze(outputs, dim=1)


class SeedCapsuleNet(nn.Module):
    def __init__(self, input_size: tuple[int, int, int] = (1, 28, 28), classes: int = 10, iterations: int = 3) -> None:
        super().__init__()
        self.input_size = input_size
        self.conv1 = nn.Conv2d(input_size[0], 256, kernel_size=9, stride=1, padding=0)
        self.primarycaps = SeedPrimaryCaps(256, 256, 8, kernel_size=9, stride=2)
        self.digitcaps = SeedDenseCaps(32 * 6 * 6, 8, classes, 16, iterations)
        self.reconstructor = nn.Sequential(
            nn.Linear(16 * classes, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, input_size[0] * input_size[1] * input_size[2]),
            nn.Sigmoid(),
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = self.primarycaps(self.relu(self.conv1(x)))
        x = self.digitcaps(x)
        length = x.norm(dim=-1)
        reconstruction = self.reconstructor((x * y[:, :, None]).view(x.size(0), -1))
        return length, reconstruction.view(-1, *self.input_size)
