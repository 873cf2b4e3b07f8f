"""FCOS-MO's region-phrase contrastive classifier (alp-fcos-mo, Sec. 3.2 "Open-vocabulary classifier").

Every spatial feature, projected to the text-embedding size, is compared by cosine similarity
with a set of CANDIDATE phrase embeddings: the phrases of all instances in the batch (for a
positive location its own GT phrase is the target and the other phrases are negatives) plus a
fixed ZERO background embedding, whose cosine similarity is 0 with everything. Logits are
divided by tau = 0.01 and normalized by a softmax. Locations assigned to background take the
background column as target; because they dominate in number, their log-probabilities are
down-weighted by alpha = 0.1 (the paper's alpha-balanced cross-entropy):

    loss = -(1 / normalizer) * [ sum_{pos} log p_i(target_i) + alpha * sum_{bg} log p_i(bg) ]

with ``normalizer`` the number of positive locations (FCOS's normalization of its
classification loss; at least 1). At inference the candidates are the vocabulary's phrases and
the same (|C| + 1)-way softmax gives class probabilities (Sec. 3.3 "Inference").

Column layout: K phrase columns first, the background LAST (index K), as in
:mod:`omniseg.modeling.heads.open_vocab`, whose :func:`cosine_logits` computes the similarities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.modeling.heads.open_vocab import cosine_logits

#: paper values (alp-fcos-mo Sec. 3.2)
DEFAULT_TAU = 0.01
DEFAULT_ALPHA = 0.1


def phrase_logits(features: Tensor, phrase_embeddings: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Cosine similarities with K phrases and the zero background embedding, over tau.

    Args:
        features: P x D projected spatial features.
        phrase_embeddings: K x D candidate phrase embeddings (K may be 0).
        tau: softmax temperature.

    Returns:
        P x (K + 1) logits; column K (background) is exactly 0.
    """
    if phrase_embeddings.dim() != 2 or phrase_embeddings.shape[1] != features.shape[-1]:
        raise ValueError(f"phrase_embeddings must be K x {features.shape[-1]}, got {tuple(phrase_embeddings.shape)}")
    emb = torch.cat([phrase_embeddings.to(features), features.new_zeros(1, features.shape[-1])])
    return cosine_logits(features, emb, tau)


def contrastive_phrase_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = DEFAULT_ALPHA,
    valid: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy over candidate phrases + background, background terms scaled by alpha.

    Args:
        logits: P x (K + 1) logits (already divided by tau), background last.
        targets: P long in [0, K]; K (the last column) means background.
        alpha: weight of the background locations' log-probabilities.
        valid: optional P bool; False locations (e.g. ignored regions) contribute nothing.
        normalizer: denominator; default the number of valid positive locations (at least 1).

    Returns:
        Scalar loss (0 with a grad path when there are no valid locations).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be P x (K + 1) and targets P, got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}")
    bg = logits.shape[1] - 1
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) > bg):
        raise ValueError(f"targets must lie in [0, {bg}] (background = {bg})")
    keep = torch.ones_like(targets, dtype=torch.bool) if valid is None else valid.bool()
    # invalid rows are replaced by zeros before the softmax: no NaN/inf can leak, zero gradient
    safe = torch.where(keep[:, None], logits, torch.zeros_like(logits))
    nll = -F.log_softmax(safe.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    is_bg = targets == bg
    weight = torch.where(is_bg, torch.full_like(nll, alpha), torch.ones_like(nll)) * keep
    total = (nll * weight).sum()
    if normalizer is None:
        normalizer = (keep & ~is_bg).sum().to(total.dtype)
    denom = torch.as_tensor(normalizer, dtype=total.dtype, device=total.device).clamp(min=1.0)
    return total / denom


def batch_phrases(texts_per_image: Sequence[Sequence[str]]) -> tuple[list[str], list[Tensor]]:
    """Candidate phrases of a batch: its distinct texts in first-seen order.

    Args:
        texts_per_image: B lists of instance texts (class names or free phrases).

    Returns:
        (phrases, indices): K distinct phrases, and B long tensors N_i mapping each instance to
        its phrase's column.
    """
    phrases: list[str] = []
    col: dict[str, int] = {}
    out = []
    for texts in texts_per_image:
        idx = []
        for t in texts:
            if t not in col:
                col[t] = len(phrases)
                phrases.append(t)
            idx.append(col[t])
        out.append(torch.tensor(idx, dtype=torch.long))
    return phrases, out


class PhraseEmbedder:
    """Frozen phrase embeddings with an in-memory cache (one encoder call per new phrase).

    Args:
        encode: ``texts -> len(texts) x D`` frozen embeddings, e.g. ``TextEncoder.encode`` or a
            :class:`omniseg.text.cache.CachedEncoder` (on-disk cache shared between runs).
        dim: D.
    """

    def __init__(self, encode: Callable[[list[str]], Tensor], dim: int):
        self.encode, self.dim = encode, int(dim)
        self.cache: dict[str, Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """K x D float32 CPU embeddings of ``texts`` (K may be 0)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            emb = self.encode(missing).detach().float().cpu()
            if emb.shape != (len(missing), self.dim):
                raise ValueError(f"text encoder returned {tuple(emb.shape)} for {len(missing)} texts, "
                                 f"expected {len(missing)} x {self.dim}")
            self.cache.update(zip(missing, emb))
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[t] for t in texts])
