"""DINOv2 vision transformer with the official parameter names.

Parameter names follow the ``dinov2_vit*14*_pretrain.pth`` files exactly
(``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp,ls2}``,
``norm``), so those files load with ``strict=True`` and nothing is renamed.

Blocks carry optional in-block adapters (SelaVPR) and the model can return
the output of every block (side adapters of SelaVPR++, recalibration of EMVP),
so each method composes this one implementation rather than forking it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution: (B, 3, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention on fused ``qkv`` weights (scaled-dot-product kernel)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer GELU MLP (ViT-S/B/L)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Fused SwiGLU feed-forward (ViT-g); hidden width rounded as in DINOv2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with optional SelaVPR adapters.

    ``serial_adapter`` acts on the attention output before layer scale;
    ``parallel_adapter`` runs beside the MLP on the same normalised input,
    scaled by ``parallel_scale``. Both are ``None`` for a plain DINOv2 block.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, ffn: str = "mlp") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, mlp_hidden) if ffn == "swiglu" else Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim)
        self.serial_adapter: nn.Module | None = None
        self.parallel_adapter: nn.Module | None = None
        self.parallel_scale = 0.0

    def forward(self, x: Tensor) -> Tensor:
        h = self.attn(self.norm1(x))
        if self.serial_adapter is not None:
            h = self.serial_adapter(h)
        x = x + self.ls1(h)
        n = self.norm2(x)
        h = self.mlp(n)
        if self.parallel_adapter is not None:
            h = h + self.parallel_scale * self.parallel_adapter(n)
        return x + self.ls2(h)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT/14 trunk: tokens in, per-block token sequences out.

    Token layout: ``[cls, registers..., patches...]`` with patches in row-major
    order over an ``(H/14) x (W/14)`` grid. ``num_prefix_tokens`` is ``1 + registers``.
    """

    _pos_cache: Tensor  # a non-persistent buffer (registered in __init__)

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn: str = "mlp",
        patch_size: int = 14,
        num_register_tokens: int = 0,
        pretrain_grid: int = 37,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        self.pretrain_grid = pretrain_grid
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused at inference; kept for strict loading
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, hidden, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # Interpolated position embedding for the last grid, valid while pos_embed is frozen.
        self.register_buffer("_pos_cache", torch.empty(0), persistent=False)
        self._pos_cache_key: tuple | None = None
        self.init_weights()

    def init_weights(self) -> None:
        """Random initialisation as in DINOv2 (used only when no pretrained weights are given)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(f"input size {height}x{width} is not a positive multiple of the patch size {p}")
        return height // p, width // p

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embeddings for a ``grid_h x grid_w`` patch grid (bicubic, DINOv2 conventions).

        Follows the official implementation to the bit: no interpolation on
        the pretraining grid; otherwise bicubic with either the historical
        ``+offset`` scale factor or an explicit size (register models).
        """
        m = self.pretrain_grid
        if grid_h == m and grid_w == m:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, m, m, self.embed_dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((grid_h + self.interpolate_offset) / m, (grid_w + self.interpolate_offset) / m)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            patch_pos = F.interpolate(
                patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, self.embed_dim)
        return torch.cat([cls_pos, patch_pos], dim=1).to(self.pos_embed.dtype)

    def _pos_embed_for(self, grid_h: int, grid_w: int) -> Tensor:
        if self.pos_embed.requires_grad and torch.is_grad_enabled():
            return self.interpolate_pos_embed(grid_h, grid_w)
        if _tracing():
            # Export: use the cache warmed by a real forward (a constant in the graph).
            if self._pos_cache_key is not None and self._pos_cache_key[:2] == (grid_h, grid_w):
                return self._pos_cache
            return self.interpolate_pos_embed(grid_h, grid_w)
        key = (grid_h, grid_w, self.pos_embed._version, self.pos_embed.data_ptr(), self.pos_embed.dtype)
        if key != self._pos_cache_key or self._pos_cache.device != self.pos_embed.device:
            with torch.no_grad():
                self._pos_cache = self.interpolate_pos_embed(grid_h, grid_w).detach().clone()
            self._pos_cache_key = key
        return self._pos_cache

    def prepare_tokens(self, images: Tensor) -> Tensor:
        """Patch-embed ``images`` (B, 3, H, W) and add cls/register tokens and positions."""
        grid_h, grid_w = self.grid_size(images.shape[-2], images.shape[-1])
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embed_for(grid_h, grid_w).to(x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x

    def run_blocks(
        self,
        x: Tensor,
        start: int = 0,
        stop: int | None = None,
        after_block: Callable[[int, Tensor], Tensor] | None = None,
        keep_from: int | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Run blocks ``start..stop-1`` on tokens ``x``.

        ``after_block(i, x)`` may rewrite the tokens after block ``i`` (EMVP
        recalibration). Outputs of blocks ``>= keep_from`` are returned as taps
        (SelaVPR++ side adapters).
        """
        stop = self.depth if stop is None else stop
        taps: list[Tensor] = []
        for i in range(start, stop):
            x = self.blocks[i](x)
            if after_block is not None:
                x = after_block(i, x)
            if keep_from is not None and i >= keep_from:
                taps.append(x)
        return x, taps

    def split_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Split tokens into the class token (B, D) and the patch map (B, h, w, D)."""
        return x[:, 0], x[:, self.num_prefix_tokens :].reshape(x.shape[0], grid[0], grid[1], x.shape[-1])

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Plain DINOv2 forward: normalised class token and patch map."""
        grid = self.grid_size(images.shape[-2], images.shape[-1])
        x, _ = self.run_blocks(self.prepare_tokens(images))
        cls, patches = self.split_tokens(self.norm(x), grid)
        return {"cls": cls, "patches": patches}


def _tracing() -> bool:
    return torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
