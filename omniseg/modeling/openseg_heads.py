"""The parts of OpenSeg (openseg paper, Sec. 3.1, 4.1, Appendix C), shared with the LSeg+ baseline.

* :class:`FusedPyramid`: ResNet + FPN P2..P5, every level upsampled to P2 and summed (Sec. 4.1: "upsample all
  feature levels to P2, and then merge them by a sum operation to obtain F").
* :class:`FeatureHead`: "a fc layer followed by 3 layers of 3x3 convolutions" (Sec. 4.1), giving F_s and F_z
  (and LSeg+'s pixel embeddings).
* :class:`LearnedPositions`: the learnable position embedding PE of F_s^PE = F_s + PE (Sec. 3.1).
* :class:`QueryDecoder`: T = 3 stacked region-image cross-attention blocks turning the randomly initialised
  queries q^(0) into mask queries q (Appendix C, Fig. 6; no query self-attention: "that does not improve").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.modeling.backbones.fpn import FPN
from omniseg.modeling.norm import build_norm

#: pyramid levels fused into F (Sec. 4.1: "pyramid levels from P2 to P5")
FUSED_LEVELS = ("p2", "p3", "p4", "p5")


class FusedPyramid(nn.Module):
    """FPN levels P2..P5 bilinearly upsampled to P2 and summed (Sec. 4.1).

    Args:
        fpn: an FPN returning at least "p2".."p5" (stride 4 at "p2").

    Attributes:
        out_channels: channels of F; stride: 4.
    """

    def __init__(self, *, fpn: FPN):
        super().__init__()
        missing = [f for f in FUSED_LEVELS if f not in fpn.out_features]
        if missing:
            raise ValueError(f"the FPN must return {FUSED_LEVELS}; it lacks {missing}")
        self.fpn = fpn
        self.out_channels = int(fpn.out_channels["p2"])
        self.stride = int(fpn.strides["p2"])

    def forward(self, x: Tensor) -> Tensor:
        """B x 3 x H x W normalized images -> F, B x C x H/4 x W/4."""
        feats = self.fpn(x)
        out = feats["p2"]
        for f in FUSED_LEVELS[1:]:
            out = out + F.interpolate(feats[f], size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out


class FeatureHead(nn.Module):
    """fc (1x1 conv) + ``num_convs`` 3x3 convs (Sec. 4.1), GroupNorm + ReLU between them, linear output.

    The paper's tower is ``channels`` = ``out_channels`` = 640; a narrower tower (``channels`` <
    ``out_channels``, CPU configs) keeps the layer count and changes only the width.

    Args:
        in_channels: channels of F.
        out_channels: channels of the output map (D).
        channels: width of the tower.
        num_convs: 3x3 convs (3 in the paper).
        gn_groups: GroupNorm groups (at most).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, num_convs: int = 3, gn_groups: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels if num_convs else out_channels, 1)]
        for k in range(num_convs):
            layers += [build_norm("GN", channels, num_groups=gn_groups), nn.ReLU(inplace=True),
                       nn.Conv2d(channels, out_channels if k == num_convs - 1 else channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """B x C_in x h x w -> B x out_channels x h x w."""
        return self.layers(x)


class LearnedPositions(nn.Module):
    """A learnable ``D x size x size`` position embedding (Sec. 3.1), bilinearly resized to the feature map.

    Args:
        dim: D.
        size: grid side (the feature-map side of the training images keeps it exact).
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(1, dim, size, size) * 0.02)

    def forward(self, shape: Sequence[int]) -> Tensor:
        """1 x D x h x w position embedding for an h x w map."""
        h, w = int(shape[0]), int(shape[1])
        pe = self.embedding
        if tuple(pe.shape[-2:]) != (h, w):
            pe = F.interpolate(pe, size=(h, w), mode="bilinear", align_corners=False)
        return pe


class CrossAttentionBlock(nn.Module):
    """q^(t+1) = q' + FFN(LN(q')), q' = q^(t) + MHA(LN(q^(t)), F_s^PE, F_s^PE) (Appendix C, Fig. 6).

    Args:
        dim: D; heads: attention heads; ffn_dim: hidden width of the FFN.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))

    def forward(self, q: Tensor, memory: Tensor, padding: Tensor | None = None) -> Tensor:
        """q: B x N x D queries; memory: B x P x D pixels; padding: B x P bool, True = padding (not attended)."""
        q = q + self.attn(self.norm1(q), memory, memory, key_padding_mask=padding, need_weights=False)[0]
        return q + self.ffn(self.norm2(q))


class QueryDecoder(nn.Module):
    """N learned queries q^(0) refined by ``num_layers`` cross-attention blocks (Appendix C: T = 3).

    Args:
        num_queries: N (128 in the paper).
        dim: D of the queries and of F_s.
        num_layers: T.
        heads: attention heads.
        ffn_dim: FFN hidden width.
    """

    def __init__(self, num_queries: int, dim: int, num_layers: int = 3, heads: int = 8, ffn_dim: int = 0):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim))  # q^(0): "randomly initialized"
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, ffn_dim or 4 * dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: Tensor, valid: Tensor) -> Tensor:
        """Mask queries q.

        Args:
            features: B x D x h x w position-augmented F_s^PE.
            valid: B x h x w bool, pixels inside the image.

        Returns:
            B x N x D.
        """
        memory = features.flatten(2).transpose(1, 2)
        q = self.queries[None].expand(features.shape[0], -1, -1)
        padding = ~valid.flatten(1)
        for block in self.blocks:
            q = block(q, memory, padding)
        return self.norm(q)


def mask_logits(queries: Tensor, features: Tensor) -> Tensor:
    """s before the sigmoid: dot(q, F_s^PE) (Sec. 3.1), divided by sqrt(D) (our choice: it keeps the initial
    logits O(1), off the flat tails of the sigmoid).

    Args:
        queries: B x N x D; features: B x D x h x w.

    Returns:
        B x N x h x w.
    """
    return torch.einsum("bnd,bdhw->bnhw", queries, features) / math.sqrt(queries.shape[-1])


def valid_mask(image_sizes: Sequence[tuple[int, int]], shape: Sequence[int], stride: int,
               device: torch.device | None = None) -> Tensor:
    """B x h x w bool: feature-map cells whose top-left pixel lies inside each image (ceil(H_i / stride) rows)."""
    h, w = int(shape[0]), int(shape[1])
    out = torch.zeros(len(image_sizes), h, w, dtype=torch.bool, device=device)
    for i, (ih, iw) in enumerate(image_sizes):
        out[i, : -(-int(ih) // stride), : -(-int(iw) // stride)] = True
    return out


def resize_valid(maps: Tensor, image_size: tuple[int, int], stride: int, output_size: tuple[int, int]) -> Tensor:
    """``K x h x w`` stride-``stride`` maps of a padded image -> ``K x H_out x W_out``: cropped to the cells that
    cover the valid ``image_size`` (so no padding bleeds in), upsampled by ``stride`` (bilinear), cropped to
    ``image_size`` and resized (bilinear) to ``output_size``."""
    h, w = -(-int(image_size[0]) // stride), -(-int(image_size[1]) // stride)
    up = F.interpolate(maps[None, :, :h, :w], size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    up = up[..., : image_size[0], : image_size[1]]
    if tuple(up.shape[-2:]) != tuple(output_size):
        up = F.interpolate(up, size=tuple(output_size), mode="bilinear", align_corners=False)
    return up[0]
