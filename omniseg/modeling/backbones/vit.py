"""Plain Vision Transformer (ViT-S / ViT-B) returning a B x C x H/p x W/p feature map.

Parameter names follow timm's ``VisionTransformer`` and MAE's encoder (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.norm2``, ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm``) so their checkpoints
load after :func:`omniseg.modeling.weights.vit_filter_fn`. The position embedding is stored
for ``img_size`` and resized bicubically (cls entry kept as is) when the input has another
size. :class:`SimpleFeaturePyramid` turns the single stride-p map into a multi-scale pyramid
(ViTDet's deconv / identity / max-pool recipe) for FPN-style heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resize a ViT position embedding to a new patch grid.

    Args:
        pos_embed: 1 x (P + G*G) x D, P prefix (cls) tokens then a square G x G grid in
            row-major order.
        new_grid: (gh, gw) target grid.
        num_prefix_tokens: P; their entries are kept unchanged.

    Returns:
        1 x (P + gh*gw) x D, grid part resized with bicubic interpolation
        (align_corners=False), same dtype as the input.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    old = math.isqrt(n)
    if old * old != n:
        raise ValueError(f"position embedding grid of {n} tokens is not square")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D channels (a conv with kernel = stride = p)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x D x H/p x W/p (H, W must be multiples of p)."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x D -> B x N x D."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p (train only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Plain ViT encoder with a cls token, returning the patch tokens as a feature map.

    Args:
        img_size: training image size (square); sets the stored position-embedding grid.
        patch_size: p.
        embed_dim: D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to D.
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        in_channels: image channels.

    Attributes:
        out_channels: D. stride: p.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.out_channels, self.stride = embed_dim, patch_size
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            x: B x 3 x H x W, H and W multiples of the patch size (any size: the position
                embedding is resized bicubically when the grid differs from ``img_size``).

        Returns:
            B x D x H/p x W/p feature map of the final-norm patch tokens (cls token dropped).
        """
        x = self.patch_embed(x)
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = resize_pos_embed(self.pos_embed, (gh, gw), self.num_prefix_tokens)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + pos
        x = self.norm(self.blocks(x))
        return x[:, self.num_prefix_tokens :].transpose(1, 2).reshape(b, d, gh, gw)


class SimpleFeaturePyramid(nn.Module):
    """Multi-scale maps from one stride-p ViT map: deconvs up, identity, max-pool down.

    Each scale s in ``scales`` (e.g. 4, 2, 1, 0.5 for strides p/4 .. 2p) is resampled and then
    projected by a 1x1 and a 3x3 conv (each followed by LayerNorm over channels) to
    ``out_channels``.

    Args:
        in_channels: D of the ViT map.
        out_channels: channels of every level.
        scales: resampling factors, each in {4, 2, 1, 0.5}.
        stride: stride of the input map (the patch size).

    Attributes:
        out_features: level names "p{log2(stride)}".
        strides: dict level -> stride.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        stride: int = 16,
    ):
        super().__init__()
        self.stages = nn.ModuleList()
        self.out_features: list[str] = []
        self.strides: dict[str, int] = {}
        for s in scales:
            if s == 4.0:
                half = max(in_channels // 2, 1)
                quarter = max(in_channels // 4, 1)
                layers: list[nn.Module] = [
                    nn.ConvTranspose2d(in_channels, half, 2, 2),
                    ChannelLayerNorm(half),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, 2, 2),
                ]
                dim = quarter
            elif s == 2.0:
                layers, dim = [nn.ConvTranspose2d(in_channels, in_channels // 2, 2, 2)], in_channels // 2
            elif s == 1.0:
                layers, dim = [], in_channels
            elif s == 0.5:
                layers, dim = [nn.MaxPool2d(2, 2)], in_channels
            else:
                raise ValueError(f"scale {s} not supported; use 4, 2, 1 or 0.5")
            layers += [
                nn.Conv2d(dim, out_channels, 1, bias=False),
                ChannelLayerNorm(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                ChannelLayerNorm(out_channels),
            ]
            self.stages.append(nn.Sequential(*layers))
            level_stride = int(stride / s)
            name = f"p{int(math.log2(level_stride))}"
            self.out_features.append(name)
            self.strides[name] = level_stride
        self.out_channels = {f: out_channels for f in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """B x D x h x w -> dict level -> B x out_channels x (h*s) x (w*s)."""
        return {name: stage(x) for name, stage in zip(self.out_features, self.stages)}


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of a B x C x H x W map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


def vit_small(*, img_size: int = 224, patch_size: int = 16, drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-S: D=384, 12 blocks, 6 heads (timm ``vit_small_patch16_224`` layout)."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=384,
        depth=12,
        num_heads=6,
        drop_path_rate=drop_path_rate,
    )


def vit_base(*, img_size: int = 224, patch_size: int = 16, drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-B: D=768, 12 blocks, 12 heads (timm ``vit_base_patch16_224`` / MAE ViT-B layout)."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=768,
        depth=12,
        num_heads=12,
        drop_path_rate=drop_path_rate,
    )
