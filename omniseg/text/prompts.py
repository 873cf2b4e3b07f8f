"""Prompt templates and prompt-ensembled class embeddings.

FCOS-MO embeds every phrase with "the averaged embeddings of 63 text prompts per phrase, as
used by ViLD" (alp-fcos-mo Sec. 3.2, open-vocabulary classifier); OpenSeg likewise gains
from prompt engineering and ensembling (openseg Sec. 4.3, Appendix I). :data:`TEMPLATES` is a
shorter list in the same style. A template holds ``{}`` for the name and may hold ``{a}``
for the matching indefinite article ("a" / "an").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from omniseg.text.encoders import TextEncoder

#: scene / photo templates in the style of ViLD's prompt list (see module docstring).
TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {a} {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {a} {}.",
    "a bad photo of the {}.",
    "a close-up photo of the {}.",
    "a cropped photo of {a} {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "there is {a} {} in the scene.",
    "there is the {} in the scene.",
    "{a} {} in the scene.",
    "a photo of {a} {} in the scene.",
    "a rendering of {a} {}.",
    "a drawing of the {}.",
    "itap of {a} {}.",
)

#: only the name itself (no ensembling), for comparisons.
NAME_ONLY: tuple[str, ...] = ("{}",)


def indefinite_article(name: str) -> str:
    """'an' before a written vowel, else 'a' (a spelling rule; 'an hour' / 'a unicorn' are missed)."""
    return "an" if name and name[0].lower() in "aeiou" else "a"


def fill_template(template: str, name: str) -> str:
    """``fill_template("a photo of {a} {}.", "apple") == "a photo of an apple."``."""
    return template.format(name, a=indefinite_article(name))


@torch.no_grad()
def encode_with_prompts(
    encoder: TextEncoder, names: Sequence[str], templates: Sequence[str] = TEMPLATES
) -> torch.Tensor:
    """Prompt-ensembled embeddings: mean of the normalized template embeddings, renormalized.

    Args:
        encoder: any :class:`~omniseg.text.encoders.TextEncoder`.
        names: N class names / phrases.
        templates: T templates (see :func:`fill_template`).

    Returns:
        N x D float32, unit rows.
    """
    if not templates:
        raise ValueError("encode_with_prompts needs at least one template")
    names, templates = list(names), list(templates)
    texts = [fill_template(t, n) for n in names for t in templates]
    emb = encoder.encode(texts)  # (N * T) x D
    if not names:
        return emb.reshape(0, encoder.dim)
    emb = F.normalize(emb.float(), dim=-1).reshape(len(names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)
