"""Open-vocabulary classifier: visual features vs. frozen text embeddings of class names.

Following FCOS-MO (alp-fcos-mo, Sec. 3.2, "Open-vocabulary classifier"): features are
projected (a 1x1 conv on dense maps, a linear layer on region vectors: the same weights) to
the text-embedding dimension D, compared to the class (phrase) embeddings by cosine
similarity and divided by a temperature tau (0.01 in the paper). A background ("no object")
embedding adds one more column: the paper uses a fixed zero vector, whose cosine similarity
is 0 for every feature, so the background logit is the constant 0; a learned vector is the
alternative. The vocabulary is an input of ``forward``, so it can be swapped at inference by
passing another N_cls x D matrix, without retraining.

Logit layout: ``... x (N_cls + 1)`` with the background LAST (index N_cls); without a
background embedding, ``... x N_cls``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TemperatureKind = Literal["fixed", "learned"]
BackgroundKind = Literal["zero", "learned", "none"]


def cosine_logits(
    features: torch.Tensor, embeddings: torch.Tensor, temperature: torch.Tensor | float, eps: float = 1e-8
) -> torch.Tensor:
    """Cosine similarity of every feature with every embedding, divided by a temperature.

    Args:
        features: ... x D.
        embeddings: K x D. A zero row gives similarity 0 with everything.
        temperature: scalar tau > 0.
        eps: lower bound on norms before dividing.

    Returns:
        ... x K logits ``cos(f, e_k) / tau``.
    """
    f = F.normalize(features, dim=-1, eps=eps)
    e = F.normalize(embeddings.to(f.dtype), dim=-1, eps=eps)
    return (f @ e.t()) / temperature


@dataclass
class OpenVocabConfig:
    """Settings of :class:`OpenVocabClassifier`.

    Attributes:
        in_channels: feature channels C.
        embed_dim: text-embedding dimension D.
        temperature: initial (or fixed) tau; 0.01 in alp-fcos-mo Sec. 3.2.
        temperature_kind: "fixed" (a buffer) or "learned" (log 1/tau as a parameter, as CLIP's
            logit scale).
        max_logit_scale: upper clamp of the learned 1/tau (CLIP clamps at 100); a fixed tau is
            used as given.
        background: "zero" (fixed zero vector, alp-fcos-mo Sec. 3.2), "learned" or "none".
        proj_bias: bias in the projection.
    """

    in_channels: int = 256
    embed_dim: int = 512
    temperature: float = 0.01
    temperature_kind: TemperatureKind = "fixed"
    max_logit_scale: float = 100.0
    background: BackgroundKind = "zero"
    proj_bias: bool = True


class OpenVocabClassifier(nn.Module):
    """Project features to the text space and score them against a vocabulary.

    Args:
        cfg: :class:`OpenVocabConfig`.
    """

    def __init__(self, cfg: OpenVocabConfig):
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {cfg.temperature}")
        if cfg.temperature_kind not in ("fixed", "learned"):
            raise ValueError(f"temperature_kind must be 'fixed' or 'learned', got {cfg.temperature_kind!r}")
        if cfg.background not in ("zero", "learned", "none"):
            raise ValueError(f"background must be 'zero', 'learned' or 'none', got {cfg.background!r}")
        self.cfg = cfg
        # One weight matrix serves as the linear layer (region vectors) and the 1x1 conv (maps).
        self.proj = nn.Linear(cfg.in_channels, cfg.embed_dim, bias=cfg.proj_bias)
        log_scale = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.temperature_kind == "learned":
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        if cfg.background == "learned":
            self.bg_embedding = nn.Parameter(torch.randn(cfg.embed_dim) / math.sqrt(cfg.embed_dim))
        else:
            self.bg_embedding = None

    @property
    def has_background(self) -> bool:
        return self.cfg.background != "none"

    def temperature(self) -> torch.Tensor:
        """Current tau (scalar tensor); a learned scale is clamped to at most ``max_logit_scale``."""
        scale = self.log_logit_scale
        if self.cfg.temperature_kind == "learned":
            scale = scale.clamp(max=math.log(self.cfg.max_logit_scale))
        return torch.exp(-scale)

    def project(self, features: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Project to the text space; ``channel_dim`` = 1 for B x C x H x W maps (a 1x1 conv)."""
        if channel_dim in (-1, features.dim() - 1):
            return self.proj(features)
        return self.proj(features.movedim(channel_dim, -1)).movedim(-1, channel_dim)

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """Score features against a vocabulary.

        Args:
            features: B x C x H x W dense map, or ... x C region / token features (any leading
                dims, e.g. R x C or B x N x C).
            class_embeddings: N_cls x D text embeddings of the vocabulary (need not be
                normalized; N_cls may be 0).

        Returns:
            B x (N_cls + 1) x H x W for a map, ... x (N_cls + 1) otherwise; background last.
            Without background the class count is N_cls.
        """
        if class_embeddings.dim() != 2 or class_embeddings.shape[1] != self.cfg.embed_dim:
            raise ValueError(
                f"class_embeddings must be N_cls x {self.cfg.embed_dim}, got {tuple(class_embeddings.shape)}"
            )
        is_map = features.dim() == 4
        x = features.movedim(1, -1) if is_map else features
        if x.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"features have {x.shape[-1]} channels, expected {self.cfg.in_channels}")
        emb = class_embeddings.to(device=x.device)
        if self.has_background:
            bg = self.bg_embedding if self.bg_embedding is not None else emb.new_zeros(self.cfg.embed_dim)
            emb = torch.cat([emb.to(bg.dtype), bg[None]], dim=0)
        logits = cosine_logits(self.proj(x), emb, self.temperature())
        return logits.movedim(-1, 1) if is_map else logits
