"""Trainable adapters that specialise a frozen DINOv2 trunk for place recognition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BottleneckAdapter(nn.Module):
    """SelaVPR adapter ``h -> [h +] up(relu(down(h)))`` (D -> ratio*D -> D).

    Used twice per block: serially after attention (with the skip) and in
    parallel to the MLP (without it). :meth:`zero_init` zeroes the up-projection
    so that training starts from the plain foundation model.
    """

    def __init__(self, dim: int, ratio: float = 0.5, residual: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.residual = residual
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(F.relu(self.down(x)))
        return x + y if self.residual else y

    def zero_init(self) -> None:
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, bn_eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class MultiConvAdapter(nn.Module):
    """SelaVPR++ MultiConv adapter (MCA) on a token sequence.

    ``Linear(D, C) + ReLU``, then on the patch grid three Inception-style
    branches (1x1 | 1x1->3x3 | 1x1->5x5, each conv+BN+ReLU) concatenated back
    to C channels, plus the residual of the ReLU output; prefix tokens (class,
    registers) bypass the convolutions and so receive the residual twice, as
    in the published model. Finally ``Linear(C, D)``, zero-initialised.
    """

    def __init__(
        self,
        dim: int,
        channels: tuple[int, int, int, int, int, int],
        num_prefix_tokens: int = 1,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        hidden, c1, c3r, c3, c5r, c5 = channels
        self.num_prefix_tokens = num_prefix_tokens
        self.down = nn.Linear(dim, hidden)
        self.branch1x1 = ConvBNReLU(hidden, c1, 1, bn_eps)
        self.branch3x3 = nn.Sequential(ConvBNReLU(hidden, c3r, 1, bn_eps), ConvBNReLU(c3r, c3, 3, bn_eps))
        self.branch5x5 = nn.Sequential(ConvBNReLU(hidden, c5r, 1, bn_eps), ConvBNReLU(c5r, c5, 5, bn_eps))
        self.up = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        h = F.relu(self.down(x))
        b, _, c = h.shape
        p = self.num_prefix_tokens
        grid_map = h[:, p:].reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
        conv = torch.cat([self.branch1x1(grid_map), self.branch3x3(grid_map), self.branch5x5(grid_map)], dim=1)
        conv = conv.flatten(2).transpose(1, 2)
        out = torch.cat([h[:, :p], conv], dim=1) + h
        return self.up(out)

    def zero_init(self) -> None:
        """Zero up-projection (identity at start) and the published tiny constant conv init."""
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.constant_(module.weight, 1e-5)
                assert module.bias is not None  # every ConvBNReLU conv has a bias
                nn.init.constant_(module.bias, 1e-5)


class DynamicPowerNorm(nn.Module):
    """EMVP dynamic power normalisation ``x -> sign(x) (|x| + eps)^p + x``.

    ``p = sigmoid(MLP(mean of x over its rows))`` is one scalar per sample, so
    the network decides per image how much of the task-specific signal to
    keep. Input (B, L, C); the MLP sees the C-vector of row means.
    """

    def __init__(self, channels: int, hidden: int, dropout: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, 1))

    def exponent(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp(x.mean(dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        p = self.exponent(x).unsqueeze(-1)
        return torch.sign(x) * (x.abs() + self.eps).pow(p) + x
