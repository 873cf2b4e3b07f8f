"""VLOSS's multi-scale encoder f_E and masked-attention transformer decoder f_D (vloss paper Sec. 3.1-3.3, on
Mask2Former [7]).

* :class:`MultiScaleEncoder` (Eq. 1): trunk features C2..C5 -> f'_0..f'_3 (strides 32, 16, 8, 4; f'_0 the
  smallest). The "FPN-style" encoder (Sec. 3.3) runs a vanilla transformer encoder [2] on the smallest level
  (C5, with 2-D sine positions) and FPN [24] convolutions (lateral 1x1 + top-down sum + 3x3) above it; the plain
  FPN of the Table-5 ablation is the same module without the transformer (``transformer_layers=0``), so the
  ablation changes only the long-range interaction. GroupNorm + ReLU after the 3x3 convs (Mask2Former's pixel
  decoder); f'_3 goes through a 1x1 conv to give the mask features.
* :class:`MaskedAttentionDecoder` (Eq. 2): N learned object queries plus the global image token e_img^0 =
  avgpool(f'_0) (Sec. 3.1). Each layer (Mask2Former): masked cross-attention to one of f'_0, f'_1, f'_2
  (``model.decoder_strides="16,8,4"``: f'_1, f'_2, f'_3, the first of them pooled for e_img^0; round robin, each with a sine position + a learned level embedding), then self-attention over all N + 1
  tokens, then an FFN; post-norm. The cross-attention of object query n is restricted to the pixels where the
  previous prediction's mask has sigmoid > 0.5; a query whose mask is empty attends everywhere, and the global
  token is never masked (:func:`attention_mask`). Masks = MLP(query) . f'_3 after the initial queries and after
  every layer (Mask2Former's deep supervision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.modeling.norm import NormKind, build_norm


def sine_positions(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """DETR's normalized 2-D sine position embedding of an h x w grid.

    Args:
        h, w: grid size; dim: channels (even; half for y, half for x).

    Returns:
        (h * w) x dim, row-major.
    """
    if dim % 2:
        raise ValueError(f"sine positions need an even dim, got {dim}")
    half = dim // 2
    scale = 2 * math.pi
    y = (torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + 1e-6)) * scale
    x = (torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + 1e-6)) * scale
    dim_t = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)
    py, px = y[:, None] / dim_t, x[:, None] / dim_t  # h x half, w x half
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    return torch.cat([py[:, None].expand(h, w, half), px[None].expand(h, w, half)], dim=2).flatten(0, 1)


def _conv(cin: int, cout: int, k: int, norm: NormKind, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm == "none")]
    nn.init.kaiming_uniform_(layers[0].weight, a=1)
    layers.append(build_norm(norm, cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EncoderLayer(nn.Module):
    """DETR encoder layer: x = LN(x + SA(x + pos, x + pos, x)); x = LN(x + FFN(x))."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x: B x L x D tokens; pos: L x D."""
        q = x + pos
        x = self.norm1(x + self.attn(q, q, x, need_weights=False)[0])
        return self.norm2(x + self.ffn(x))


class MultiScaleEncoder(nn.Module):
    """f_E (module docstring): FPN-style with ``transformer_layers`` > 0, plain FPN with 0.

    Args:
        in_channels: channels of C2, C3, C4, C5.
        dim: D, channels of every output.
        transformer_layers: encoder layers on C5 (0 = plain FPN).
        heads: attention heads; ffn_dim: FFN width of the transformer.
        norm: norm after the convs ("GN" as Mask2Former).
    """

    def __init__(self, in_channels: Sequence[int], dim: int, transformer_layers: int = 1, heads: int = 4,
                 ffn_dim: int = 0, norm: NormKind = "GN"):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the encoder takes C2..C5 (4 levels), got {len(in_channels)}")
        *fine, top = list(in_channels)
        self.top_proj = _conv(top, dim, 1, norm, relu=False)
        self.transformer = nn.ModuleList(
            EncoderLayer(dim, heads, ffn_dim or 4 * dim) for _ in range(transformer_layers))
        self.top_out = _conv(dim, dim, 3, norm, relu=True)
        self.laterals = nn.ModuleList(_conv(c, dim, 1, norm, relu=False) for c in reversed(fine))  # C4, C3, C2
        self.outputs = nn.ModuleList(_conv(dim, dim, 3, norm, relu=True) for _ in fine)
        self.mask_proj = nn.Conv2d(dim, dim, 1)
        self.dim = dim

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """C2..C5 (fine to coarse) -> ([f'_0, f'_1, f'_2, f'_3] at strides 32, 16, 8, 4; mask features =
        a 1x1 projection of f'_3), all B x D x h_l x w_l. The decoder attends to three consecutive levels."""
        c2, c3, c4, c5 = feats
        x = self.top_proj(c5)
        if len(self.transformer):
            b, d, h, w = x.shape
            pos = sine_positions(h, w, d, x.device).to(x.dtype)
            t = x.flatten(2).transpose(1, 2)
            for layer in self.transformer:
                t = layer(t, pos)
            x = t.transpose(1, 2).reshape(b, d, h, w)
        outs = [self.top_out(x)]
        prev = x
        for c, lateral, output in zip((c4, c3, c2), self.laterals, self.outputs):
            lat = lateral(c)
            prev = lat + F.interpolate(prev, size=lat.shape[-2:], mode="nearest")
            outs.append(output(prev))
        return outs, self.mask_proj(outs[3])


class DecoderLayer(nn.Module):
    """Mask2Former decoder layer (post-norm): masked cross-attention, self-attention, FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q: Tensor, qpos: Tensor, memory: Tensor, mpos: Tensor, attn_mask: Tensor | None) -> Tensor:
        """q: B x L x D tokens; qpos: L x D; memory: B x S x D; mpos: S x D; attn_mask: (B * heads) x L x S bool,
        True = not attended."""
        q = self.norm1(q + self.cross(q + qpos, memory + mpos, memory, attn_mask=attn_mask, need_weights=False)[0])
        k = q + qpos
        q = self.norm2(q + self.self_attn(k, k, q, need_weights=False)[0])
        return self.norm3(q + self.ffn(q))


def attention_mask(mask_logits: Tensor, size: Sequence[int], heads: int, extra_tokens: int = 1) -> Tensor:
    """Masked attention (Mask2Former): query n may attend to the pixels where its previous mask, bilinearly resized
    to the attended level, has sigmoid > 0.5; a query with no such pixel attends everywhere; the ``extra_tokens``
    (the global image token) attend everywhere.

    Args:
        mask_logits: B x N x h x w; size: (h', w') of the attended level; heads: attention heads.

    Returns:
        (B * heads) x (N + extra_tokens) x (h' * w') bool, True = not attended.
    """
    m = F.interpolate(mask_logits.detach().float(), size=tuple(size), mode="bilinear", align_corners=False)
    blocked = m.flatten(2) <= 0.0  # sigmoid <= 0.5
    blocked = blocked & ~blocked.all(-1, keepdim=True)  # fully masked row -> unmasked
    b, _, s = blocked.shape
    blocked = torch.cat([blocked, blocked.new_zeros(b, extra_tokens, s)], dim=1)
    return blocked.repeat_interleave(heads, dim=0)


class MaskedAttentionDecoder(nn.Module):
    """f_D (module docstring).

    Args:
        num_queries: N object queries.
        dim: D.
        num_layers: decoder layers (9 in the paper, Sec. 4.2).
        heads: attention heads; ffn_dim: FFN width (0: 4 D).
        num_levels: attended levels, used round robin (3: f'_0, f'_1, f'_2).
    """

    def __init__(self, num_queries: int, dim: int, num_layers: int, heads: int = 4, ffn_dim: int = 0,
                 num_levels: int = 3):
        super().__init__()
        self.num_queries, self.heads, self.num_levels = num_queries, heads, num_levels
        self.query_feat = nn.Parameter(torch.randn(num_queries, dim) * 0.02)  # e_obj^0
        self.query_pos = nn.Parameter(torch.randn(num_queries + 1, dim) * 0.02)  # last row: the global token's
        self.level_embed = nn.Parameter(torch.randn(num_levels, dim) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim or 4 * dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim),
                                        nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def predict(self, tokens: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """(normalized tokens B x (N + 1) x D, mask logits B x N x h x w = MLP(e_obj) . f'_3 (Sec. 3.1))."""
        t = self.norm(tokens)
        masks = torch.einsum("bnd,bdhw->bnhw", self.mask_embed(t[:, : self.num_queries]), mask_features)
        return t, masks

    def forward(self, features: Sequence[Tensor], mask_features: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Decode.

        Args:
            features: f'_0, f'_1, f'_2, each B x D x h_l x w_l (smallest first).
            mask_features: f'_3, B x D x h x w.

        Returns:
            ``num_layers + 1`` predictions (initial queries, then after each layer), each (tokens B x (N + 1) x D
            after the final LayerNorm, the global token last; mask logits B x N x h x w).
        """
        if len(features) != self.num_levels:
            raise ValueError(f"the decoder attends to {self.num_levels} levels, got {len(features)}")
        b = mask_features.shape[0]
        memories, mpos = [], []
        for lvl, f in enumerate(features):
            memories.append(f.flatten(2).transpose(1, 2) + self.level_embed[lvl])
            mpos.append(sine_positions(f.shape[-2], f.shape[-1], f.shape[1], f.device).to(f.dtype))
        e_img = features[0].mean((2, 3))[:, None]  # e_img^0 = avgpool(f'_0), Sec. 3.1
        tokens = torch.cat([self.query_feat[None].expand(b, -1, -1), e_img], dim=1)
        preds = [self.predict(tokens, mask_features)]
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            mask = attention_mask(preds[-1][1], features[lvl].shape[-2:], self.heads)
            tokens = layer(tokens, self.query_pos, memories[lvl], mpos[lvl], mask)
            preds.append(self.predict(tokens, mask_features))
        return preds
