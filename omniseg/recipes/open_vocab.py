"""The open-vocabulary part shared by every method that names things with phrases (FCOS-MO and
Mask R-CNN* now; OpenSeg and VLOSS next): the text config section, the frozen phrase embedder
(encoder + on-disk cache + in-memory cache) and the predictor that embeds any vocabulary.

The batch vocabulary (training phrases of a batch as each other's negatives) and the score
calibration live with the models (:mod:`omniseg.modeling.contrastive_classifier`, centerness for
FCOS-MO, RPN objectness for Mask R-CNN*); what the recipes share is here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from omniseg.engine.config import ConfigError
from omniseg.errors import ArgumentValueError
from omniseg.modeling.contrastive_classifier import PhraseEmbedder
from omniseg.modeling.predictions import ImagePrediction, InstancePredictions


@dataclass
class TextConfig:
    """Frozen phrase encoder. ``encoder``: "minilm" (default, 384-d), "mpnet" (all-mpnet-base-v2,
    768-d: set ``model.embed_dim=768``; optional weights, ``make mpnet``), "clip" (with ``path``)
    or "hash" (random vectors, no semantics: tests). ``cache_dir``: on-disk embedding cache ("" =
    memory only)."""

    encoder: Literal["minilm", "mpnet", "clip", "hash"] = "minilm"
    path: str = ""
    cache_dir: str = ""


def text_encoder_id(cfg: TextConfig) -> str:
    """What a run records about its phrase encoder (the checkpoint rebuilds it from the config)."""
    return f"{cfg.encoder}:{cfg.path}" if cfg.path else cfg.encoder


def build_phrase_embedder(cfg: TextConfig, dim: int) -> PhraseEmbedder:
    """In-memory cached phrase embeddings (over an on-disk cache when ``cache_dir`` is set)."""
    from omniseg.text.encoders import build_text_encoder

    kw: dict = {"dim": dim} if cfg.encoder == "hash" else ({"path": cfg.path} if cfg.path else {})
    enc = build_text_encoder(cfg.encoder, **kw)
    if enc.dim != dim:
        raise ConfigError(f"text encoder {enc.name!r} gives {enc.dim}-d embeddings but model.embed_dim={dim}")
    if cfg.cache_dir:
        from omniseg.text.cache import CachedEncoder

        enc = CachedEncoder(enc, cfg.cache_dir)
    return PhraseEmbedder(enc.encode, dim)


#: ``(images, vocabulary C x D, image_sizes, output_sizes) -> B InstancePredictions`` (labels index C)
DetectFn = Callable[[Tensor, Tensor, Sequence[tuple[int, int]], Sequence[tuple[int, int]]], list[InstancePredictions]]


def open_vocabulary_predictor(model: nn.Module, detect: DetectFn, embed: Callable[[list[str]], Tensor],
                              default_vocabulary: Sequence[str], method: str):
    """A :class:`~omniseg.recipes.contract.Predictor` for ANY vocabulary of phrases: they are
    embedded with the run's frozen encoder and scored by ``detect``; ``default_vocabulary`` (the
    training classes' names) when none is given."""

    def predict(images, image_sizes, output_sizes, vocabulary=None, boxes=None) -> list[ImagePrediction]:
        if boxes is not None:
            raise ArgumentValueError(f"{method} finds its own boxes; boxes= (--boxes) is for box-to-mask models")
        texts = list(vocabulary or default_vocabulary)
        if not texts:
            raise ArgumentValueError(f"{method}: empty vocabulary (pass vocabulary=[...])")
        device = next(model.parameters()).device
        vocab = embed(texts).to(device)
        out = detect(images.to(device), vocab, image_sizes, output_sizes)
        return [ImagePrediction(p, texts) for p in out]

    return predict
