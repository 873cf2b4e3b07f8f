"""LSeg+: per-pixel embeddings scored against text embeddings (openseg paper, Sec. 4.3 "LSeg baseline").

"We add FPN and introduce a high resolution map in the same approach in Section 4.1. We embed class names into
text embeddings ... and use them as per-pixel classifiers ... using a per-pixel cross-entropy loss": the same
ResNet + FPN fused to P2 and the same fc + 3-conv tower as OpenSeg's F_z (:mod:`omniseg.modeling.openseg_heads`),
trained with :func:`~omniseg.ops.openseg_losses.pixel_text_loss` on the masks' class names (things and stuff: the
panoptic classes, as the paper's 134 COCO classes). It learns from labels + masks, not captions (paper Fig. 5's
"COCO Train" columns: LSeg+ uses "label, mask", OpenSeg "mask, cap.").

The classifier of a step is every training class name (``class_names``, from the run's categories) plus any other
mask text in the batch. Label maps are painted stuff first, then things (later masks win); crowd regions and
pixels no mask covers are ignored. The loss is computed at the P2 resolution (labels: nearest downsampling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.data.batch import Batch, Targets
from omniseg.engine.config import bounded
from omniseg.modeling.norm import NormKind
from omniseg.modeling.openseg import build_pyramid, ensemble_max, split_queries
from omniseg.modeling.openseg_heads import FeatureHead, FusedPyramid, resize_valid, valid_mask
from omniseg.modeling.predictions import InstancePredictions
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images
from omniseg.ops.openseg_losses import pixel_text_loss

IGNORE = -1


@dataclass
class LSegConfig:
    """Model section of an LSeg+ experiment (backbone keys as :class:`~omniseg.modeling.openseg.OpenSegConfig`)."""

    backbone: Literal["resnet18_fpn", "resnet50_fpn"] = "resnet50_fpn"
    width: int = bounded(64, ge=1)
    fpn_channels: int = bounded(256, ge=1)
    norm: NormKind = "FrozenBN"
    freeze_at: int = bounded(2, ge=0, le=5)
    pretrained: str = ""
    embed_dim: int = bounded(384, ge=1)
    head_channels: int = bounded(256, ge=1)
    head_convs: int = bounded(3, ge=0)
    gn_groups: int = bounded(32, ge=1)
    temperature: float = bounded(0.07, gt=0)  # initial learnable tau


def label_map(t: Targets, vocab: dict[str, int], size: Sequence[int]) -> Tensor:
    """H x W long class indices of one image's masks (stuff, then things; crowd and uncovered: IGNORE)."""
    out = torch.full(tuple(size), IGNORE, dtype=torch.long, device=t.masks.device)
    order = sorted(range(len(t)), key=lambda k: (bool(t.is_thing[k]), bool(t.is_crowd[k])))
    for k in order:
        if bool(t.has_mask[k]):
            out[t.masks[k].bool()] = IGNORE if bool(t.is_crowd[k]) else vocab[t.texts[k]]
    return out


class LSeg(nn.Module):
    """Per-pixel embeddings against text (module docstring).

    Args:
        pyramid: images -> F (stride 4).
        head: F -> B x embed_dim x h x w pixel embeddings.
        class_names: the training classes (always in the step's classifier).
        temperature: initial tau.
    """

    def __init__(self, *, pyramid: FusedPyramid, head: FeatureHead, class_names: Sequence[str], temperature: float):
        super().__init__()
        self.pyramid, self.head, self.class_names = pyramid, head, list(class_names)
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.text_embedder: Callable[[list[str]], Tensor] | None = None

    def set_text_embedder(self, embed: Callable[[list[str]], Tensor] | None) -> None:
        self.text_embedder = embed

    def embed(self, texts: Sequence[str]) -> Tensor:
        if self.text_embedder is None:
            raise ValueError("LSeg+ needs text embeddings: call set_text_embedder first")
        return self.text_embedder(list(texts)).to(self.pixel_mean.device)

    def temperature(self) -> Tensor:
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def encode(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """``pixels`` B x E x h x w embeddings, ``valid`` B x h x w."""
        f = self.pyramid(normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes))
        return {"pixels": self.head(f), "valid": valid_mask(image_sizes, f.shape[-2:], self.pyramid.stride, f.device)}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``loss_pixel`` (per-pixel cross-entropy over the step's class names) and, logged, ``tau``."""
        dev = self.pixel_mean.device
        enc = self.encode(batch.images, batch.image_sizes)
        emb = enc["pixels"]
        names = list(dict.fromkeys([*self.class_names, *(s for t in batch.targets for s in t.texts)]))
        vocab = {n: k for k, n in enumerate(names)}
        labels = torch.stack([label_map(t, vocab, batch.images.shape[-2:]) for t in batch.targets]).to(dev)
        labels = F.interpolate(labels[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long()
        labels = labels.masked_fill(~enc["valid"], IGNORE)
        tau = self.temperature()
        return {"loss_pixel": pixel_text_loss(emb, self.embed(names), labels, tau, IGNORE), "tau": tau.detach()}

    def query_scores(self, enc: dict[str, Tensor], i: int, queries: Tensor, inference: str | None = None) -> Tensor:
        """Q x h x w cosine similarities of image ``i``'s pixels with Q query embeddings."""
        w = F.normalize(queries.to(enc["pixels"]), dim=-1)
        return torch.einsum("qe,ehw->qhw", w, F.normalize(enc["pixels"][i], dim=0))

    @torch.no_grad()
    def predict(self, images: Tensor, vocabulary: Sequence[str], image_sizes: Sequence[tuple[int, int]],
                output_sizes: Sequence[tuple[int, int]], inference: str | None = None
                ) -> list[tuple[Tensor, InstancePredictions]]:
        """Per image: K x H_out x W_out scores (ensembled queries, :func:`split_queries`) and no instances."""
        queries, groups = split_queries(vocabulary)
        q = self.embed(queries)
        enc = self.encode(images, image_sizes)
        out = []
        for i in range(images.shape[0]):
            sem = ensemble_max(self.query_scores(enc, i, q), groups, len(vocabulary))
            sem = resize_valid(sem, image_sizes[i], self.pyramid.stride, output_sizes[i])
            oh, ow = output_sizes[i]
            empty = InstancePredictions(sem.new_zeros(0, 4), sem.new_zeros(0), torch.zeros(0, dtype=torch.long),
                                        torch.zeros(0, oh, ow, dtype=torch.bool))
            out.append((sem, empty))
        return out


def build_lseg(cfg: LSegConfig, class_names: Sequence[str]) -> LSeg:
    """The model of ``cfg`` with ``class_names`` as its training classes (no text embedder attached)."""
    pyramid = build_pyramid(cfg)
    head = FeatureHead(pyramid.out_channels, cfg.embed_dim, cfg.head_channels, cfg.head_convs, cfg.gn_groups)
    return LSeg(pyramid=pyramid, head=head, class_names=class_names, temperature=cfg.temperature)
