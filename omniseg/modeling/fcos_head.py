"""The dense FCOS-MO prediction head, shared across the FPN levels P3..P7.

Layout (alp-fcos-mo Sec. 3.4, "4-conv prediction heads applied on spatial features from five
FPN levels"; Fig. 3; FCOS, Tian et al. 2019):

* classification tower: ``num_convs`` x (conv3x3 + GN + ReLU), then a 1x1 convolution that
  projects each spatial feature to the text-embedding size D (Sec. 3.2 "we first project the
  spatial features from the stem of classification head using 1x1 convolution such that their
  feature dimension matches that of phrase embeddings"); the contrastive classifier
  (:mod:`omniseg.modeling.contrastive_classifier`) scores them against phrases;
* regression tower: the same stack, then a 3x3 conv to 4 distances (l, t, r, b) per
  location: ``exp(scale_l * x) * stride_l`` with a learnable scalar ``scale_l`` per level
  (FCOS's per-level scales; the stride factor normalizes targets across levels as in the
  FCOS follow-up "norm_reg_targets", the exp keeps distances positive);
* centerness: a 3x3 conv to one logit, on the REGRESSION tower by default (the FCOS authors'
  later improvement, the default of their AdelaiDet implementation; the FCOS paper's original
  placement on the classification tower is ``centerness_on_reg=False``). The ALP paper does
  not say which it uses.

Towers use GroupNorm, which needs no per-level statistics (the paper uses SyncBN with
separate statistics per level, Sec. 3.4; GN is the FCOS default and batch-size independent).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from omniseg.modeling.norm import build_norm

#: upper clamp of scale_l * x before exp (exp(8) ~ 3000 strides), keeps early training finite
MAX_LOG_DISTANCE = 8.0


def _tower(in_channels: int, channels: int, num_convs: int, gn_groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, 1, 1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        layers += [conv, build_norm("GN", channels, num_groups=gn_groups), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSMOHead(nn.Module):
    """Shared towers + per-level regression scales.

    Args:
        in_channels: FPN channels C.
        embed_dim: text-embedding size D of the classification projection.
        num_levels: number of FPN levels (5 for P3..P7).
        num_convs: convs per tower (4).
        channels: tower width (defaults to ``in_channels``).
        gn_groups: upper bound on GroupNorm groups (32 in FCOS; the largest divisor of the width
            not above it is used).
        centerness_on_reg: centerness from the regression tower (True) or the classification tower.
    """

    def __init__(
        self,
        in_channels: int = 256,
        *,
        embed_dim: int = 512,
        num_levels: int = 5,
        num_convs: int = 4,
        channels: int | None = None,
        gn_groups: int = 32,
        centerness_on_reg: bool = True,
    ):
        super().__init__()
        channels = in_channels if channels is None else channels
        self.embed_dim, self.num_levels, self.centerness_on_reg = embed_dim, num_levels, centerness_on_reg
        self.cls_tower = _tower(in_channels, channels, num_convs, gn_groups)
        self.reg_tower = _tower(in_channels, channels, num_convs, gn_groups)
        self.cls_proj = nn.Conv2d(channels, embed_dim, 1)
        self.box_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.ctr_pred = nn.Conv2d(channels, 1, 3, 1, 1)
        for conv in (self.cls_proj, self.box_pred, self.ctr_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.Parameter(torch.ones(num_levels))

    def forward(
        self, features: Sequence[Tensor], strides: Sequence[int]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Dense predictions of every level.

        Args:
            features: L maps B x C x H_l x W_l, fine to coarse.
            strides: L strides.

        Returns:
            embeddings: L maps B x D x H_l x W_l (projected classification features);
            ltrb: L maps B x 4 x H_l x W_l positive distances in image pixels;
            centerness: L maps B x 1 x H_l x W_l logits.
        """
        if len(features) != self.num_levels or len(strides) != self.num_levels:
            raise ValueError(f"head built for {self.num_levels} levels, got {len(features)} maps, "
                             f"{len(strides)} strides")
        emb, ltrb, ctr = [], [], []
        for lvl, (x, s) in enumerate(zip(features, strides)):
            c = self.cls_tower(x)
            r = self.reg_tower(x)
            emb.append(self.cls_proj(c))
            d = (self.scales[lvl] * self.box_pred(r)).float().clamp(max=MAX_LOG_DISTANCE)
            ltrb.append(torch.exp(d) * float(s))
            ctr.append(self.ctr_pred(r if self.centerness_on_reg else c))
        return emb, ltrb, ctr
