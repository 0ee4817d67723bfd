"""Heads that turn a patch map (B, h, w, D) into descriptors and codes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selavpr_ros.models.adapters import DynamicPowerNorm


def gem(x: Tensor, p: Tensor | float, eps: float, dims: tuple[int, ...]) -> Tensor:
    """Generalised mean pooling over ``dims``: ``mean(clamp(x, eps)^p)^(1/p)``."""
    return x.clamp(min=eps).pow(p).mean(dim=dims).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling over the grid of a channel-last map with a learnable exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps, dims=(1, 2))


class GeMHead(nn.Module):
    """``[Linear D->D] -> per-location L2 -> GeM -> [Linear D->out] -> L2``.

    Without projections this is the SelaVPR / DINOv2-GeM global head; with
    them it is the SelaVPR++ float head (out 2048/4096) or hash head (out 512).
    """

    def __init__(
        self, dim: int, out_dim: int | None = None, project_in: bool = False, p: float = 3.0, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim) if project_in else None
        self.gem = GeM(p, eps)
        self.proj_out = nn.Linear(dim, out_dim) if out_dim else None

    def forward(self, patches: Tensor) -> Tensor:
        if self.proj_in is not None:
            patches = self.proj_in(patches)
        x = self.gem(F.normalize(patches, dim=-1))
        if self.proj_out is not None:
            x = self.proj_out(x)
        return F.normalize(x, dim=-1)


class LocalUpconvHead(nn.Module):
    """SelaVPR local adaptation: two stride-2 transposed convs, per-location L2.

    A g x g patch grid becomes (4g - 3) x (4g - 3): 16 -> 61 at 224 px.
    """

    def __init__(self, dim: int, hidden: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.upconv1 = nn.ConvTranspose2d(dim, hidden, kernel_size=3, stride=2, padding=1)
        self.upconv2 = nn.ConvTranspose2d(hidden, out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, patches: Tensor) -> Tensor:
        x = self.upconv2(F.relu(self.upconv1(patches.permute(0, 3, 1, 2))))
        return F.normalize(x.permute(0, 2, 3, 1), dim=-1)


class CentroidFreeProbing(nn.Module):
    """EMVP centroid-free probing (CFP) with DPN_C, plus the class-token branch.

    ``F = MLP_f(X)`` (cluster_dim), ``S = MLP_s(X)`` (clusters), both with the
    per-image mean removed; ``A = softmax(S)`` over locations; ``V = F A^T / N``
    — NetVLAD without centroids, as each cluster's weights sum to one. DPN_C
    then rescales V, each cluster column is L2-normalised and flattened
    (cluster_dim-major), and the L2-normalised token MLP output is put in front.
    """

    def __init__(
        self,
        dim: int,
        clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        hidden: int = 512,
        dropout: float = 0.3,
        remove_mean: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.remove_mean = remove_mean
        self.features = nn.Sequential(
            nn.Linear(dim, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, cluster_dim)
        )
        self.scores = nn.Sequential(nn.Linear(dim, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, clusters))
        self.token = (
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, token_dim)) if token_dim else None
        )
        self.dpn = DynamicPowerNorm(clusters, clusters // 2, dropout=0.1, eps=eps)

    def forward(self, patches: Tensor, cls: Tensor) -> Tensor:
        x = patches.flatten(1, 2)  # (B, N, D)
        f = self.features(x).transpose(1, 2)  # (B, Df, N)
        s = self.scores(x).transpose(1, 2)  # (B, K, N)
        if self.remove_mean:
            f = f - f.mean(dim=(1, 2), keepdim=True)
            s = s - s.mean(dim=(1, 2), keepdim=True)
        assignment = torch.softmax(s, dim=2)
        v = torch.bmm(f, assignment.transpose(1, 2)) / x.shape[1]  # (B, Df, K)
        v = F.normalize(self.dpn(v), dim=1).flatten(1)
        if self.token is not None:
            v = torch.cat([F.normalize(self.token(cls), dim=-1), v], dim=-1)
        return F.normalize(v, dim=-1)


class SignRandomProjection(nn.Module):
    """Fixed Gaussian projection whose signs binarise a float descriptor.

    The fraction of differing bits estimates the angle between descriptors
    (sign random projection), so Hamming search approximates cosine search
    for methods that have no learned hash branch. The matrix is drawn from a
    seed and stored with the model, so maps and queries always agree.
    """

    projection: Tensor  # a buffer (registered in __init__)

    def __init__(self, dim: int, bits: int, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.register_buffer("projection", torch.empty(dim, bits))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the matrix from the seed (on the CPU, so every machine gets the same bits)."""
        if self.projection.is_meta:
            return
        dim, bits = self.projection.shape
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            self.projection.copy_(torch.randn(dim, bits, generator=generator, device="cpu") / math.sqrt(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x @ self.projection.to(x.dtype), dim=-1)


class StraightThroughSign(torch.autograd.Function):
    """``sign`` (with sign(0) = +1) forward, identity gradient backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


def binarize(z: Tensor) -> Tensor:
    """±1 codes of continuous hash outputs with a straight-through gradient."""
    return StraightThroughSign.apply(z)


_BIT_WEIGHTS = (128.0, 64.0, 32.0, 16.0, 8.0, 4.0, 2.0, 1.0)


def pack_codes(z: Tensor) -> Tensor:
    """Pack ``z >= 0`` into bytes, most significant bit first (``numpy.packbits`` order).

    Uses a float dot product with the bit weights so the same graph exports
    to ONNX and runs on every execution provider.
    """
    n, bits = z.shape
    bit_values = (z >= 0).to(torch.float32).reshape(n, bits // 8, 8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.float32, device=z.device)
    return (bit_values @ weights).to(torch.uint8)
