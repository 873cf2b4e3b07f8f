"""ALIGN-style image-level baseline (openseg paper Sec. 4.3 "ALIGN baseline", Fig. 3a; issue 14 "Numbers").

ALIGN / CLIP represent an image by ONE vector, z in R^{1 x D} (Fig. 3a): the image encoder's feature map, average
pooled, trained contrastively against the caption's text embedding, no masks. Here: the same ResNet + FPN fused to
P2 and fc + 3-conv tower as OpenSeg's F_z and LSeg+ (:mod:`omniseg.modeling.openseg_heads`) give the dense map;
its mean over the image's pixels is the image embedding; the loss is ALIGN's symmetric image-text contrastive loss
(normalised softmax over the batch in both directions, learnable temperature;
:func:`~omniseg.ops.losses.clip_contrastive_loss`) against the frozen text encoder's embedding of one caption per
image, drawn at random each step. Images without a caption sit out of the loss.

Inference as the paper's ALIGN baseline (Sec. 4.3, after CAM): "the activation map before the average pooling
layer ... for each spatial location we compute its cosine similarity with the text embeddings of all input
categories. We assign the class with the highest similarity to each location" -- exactly LSeg+'s per-pixel
inference (:meth:`~omniseg.modeling.lseg.LSeg.query_scores`), which this model inherits with the encoder; only
training differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from omniseg.data.batch import Batch
from omniseg.modeling.lseg import LSeg, LSegConfig
from omniseg.modeling.openseg import build_pyramid
from omniseg.modeling.openseg_heads import FeatureHead
from omniseg.ops.losses import clip_contrastive_loss


@dataclass
class ALIGNConfig(LSegConfig):
    """Model section of the ALIGN-style baseline (the keys of :class:`~omniseg.modeling.lseg.LSegConfig`)."""


def pooled_embedding(pixels: Tensor, valid: Tensor) -> Tensor:
    """The image embedding: the mean of the dense map over each image's valid pixels (ALIGN's global pooling).

    Args:
        pixels: B x E x h x w dense features.
        valid: B x h x w bool, cells inside the image (padding is left out).

    Returns:
        B x E.
    """
    keep = valid[:, None]
    total = torch.where(keep, pixels, torch.zeros_like(pixels)).sum((2, 3))  # padding never read (NaN-safe)
    return total / keep.sum((2, 3)).clamp(min=1).to(pixels.dtype)


class ALIGNBaseline(LSeg):
    """An LSeg+ encoder trained image-level against captions (module docstring); ``class_names`` is unused."""

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``loss_contrastive`` (ALIGN's image-text loss over the batch) and, logged, ``tau``."""
        enc = self.encode(batch.images, batch.image_sizes)
        image = pooled_embedding(enc["pixels"], enc["valid"])
        texts = [caps[int(torch.randint(len(caps), ()))] if caps else "" for caps in batch.captions]
        has = torch.tensor([bool(caps) for caps in batch.captions], device=image.device)
        present = [t for t in texts if t]
        emb = self.embed(present) if present else image.new_zeros(0, image.shape[1])
        text = image.new_zeros(image.shape)
        text[has] = emb.to(image.dtype)
        tau = self.temperature()
        return {"loss_contrastive": clip_contrastive_loss(image, text, valid=has, temperature=tau), "tau": tau.detach()}


def build_align(cfg: ALIGNConfig) -> ALIGNBaseline:
    """The model of ``cfg`` (no text embedder attached: the recipe does that)."""
    pyramid = build_pyramid(cfg)
    head = FeatureHead(pyramid.out_channels, cfg.embed_dim, cfg.head_channels, cfg.head_convs, cfg.gn_groups)
    return ALIGNBaseline(pyramid=pyramid, head=head, class_names=[], temperature=cfg.temperature)
