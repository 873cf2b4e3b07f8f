"""OpenSeg: class-agnostic mask proposals grounded to caption words (Ghiasi et al., openseg paper, Sec. 3).

Assembly (parts in :mod:`omniseg.modeling.openseg_heads`): ResNet + FPN fused to P2 -> F; F_s and F_z by fc + 3
convs (Sec. 4.1); F_s^PE = F_s + PE; N learned queries refined by T = 3 cross-attention blocks (Appendix C) ->
mask logits s = q . F_s^PE (Sec. 3.1); region features z_n = sum_ij sigmoid(s_n)[ij] F_z[ij] (Sec. 3.2; divided
by sum_ij sigmoid(s_n)[ij], a mask-weighted mean: the same direction, so the same cosine similarities).

Training (:meth:`OpenSeg.forward`): L = L_G + alpha L_S (Eq. 5).
* L_S (Eq. 1) on the image's class-agnostic masks (things and stuff, crowd left out) at the P2 resolution
  (ground truth area-downsampled to soft targets);
* L_G (Eq. 4) over the batch: one caption per image drawn at random each step (the paper trains on image-caption
  pairs), its nouns and adjectives (:mod:`omniseg.data.caption_words`) each kept with probability ``keep_prob``,
  embedded by the frozen text encoder. Eq. 4 sums the image->caption and caption->image terms;
  :func:`~omniseg.ops.openseg_losses.grounding_loss` returns their mean, so the printed sum is 2x it.
  The paper gives no alpha; 1.0 by default. Images without caption words sit out of L_G (pairs removed).
  ``grounding_weight=0`` trains L_S alone (no captions read): the teacher of Sec. 3.3 ("first train a teacher
  model on a segmentation dataset with only the segmentation loss L_S").

Pseudo masks (Sec. 3.3 / 4.3, :func:`select_pseudo_masks`): a teacher's proposals on caption-only images become
their class-agnostic masks, which then enter L_S exactly as ground-truth masks do.

Inference (Sec. 3.4): region logits <w, z> (cosine, K x N) times the masks: y = <w, z> . s (a sum over the
proposals, ``inference="proposals"``) or the max over proposals (``inference="proposals_max"``), per-pixel argmax
over the words; ``inference="pixels"`` is the "no proposals" ablation (Sec. 4.4: F_z . w per pixel). Several
queries for one class ("red circle|crimson disk", :func:`split_queries`) are ensembled by the max over the
queries (Sec. 4.3 "Ensembling", Appendix I).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.engine.config import bounded
from omniseg.modeling.backbones.fpn import BACKBONE_BUILDERS
from omniseg.modeling.norm import NormKind
from omniseg.modeling.openseg_heads import (
    FeatureHead,
    FusedPyramid,
    LearnedPositions,
    QueryDecoder,
    mask_logits,
    resize_valid,
    valid_mask,
)
from omniseg.modeling.predictions import InstancePredictions
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images
from omniseg.ops.openseg_losses import batched_max_dice_segmentation_loss, grounding_loss, grounding_scores

#: separator of the ensembled queries of one vocabulary entry ("person|child|girl")
QUERY_SEPARATOR = "|"
Inference = Literal["proposals", "proposals_max", "pixels"]
#: pseudo-mask rule (:func:`select_pseudo_masks`; ours, the paper gives none): mask NMS IoU, smallest area
PSEUDO_NMS_IOU, PSEUDO_MIN_AREA = 0.5, 1e-3


@dataclass
class OpenSegConfig:
    """Model section of an OpenSeg experiment. Paper values where it gives them (Sec. 4.1, Appendix C)."""

    backbone: Literal["resnet18_fpn", "resnet50_fpn"] = "resnet50_fpn"  # P2..P5 used (P6 dropped)
    width: int = bounded(64, ge=1)
    fpn_channels: int = bounded(256, ge=1)
    norm: NormKind = "FrozenBN"  # trunk norm
    freeze_at: int = bounded(2, ge=0, le=5)
    pretrained: str = ""  # ResNet trunk weights (e.g. bench/results/pretrained/r18w16_gn_dense/backbone.safetensors)
    embed_dim: int = bounded(384, ge=1)  # D of F_z, z and the words (text encoder's size; MiniLM 384)
    mask_dim: int = bounded(256, ge=1)  # D of F_s and the queries (640 in the paper)
    head_channels: int = bounded(256, ge=1)  # width of the fc + 3-conv towers (640 in the paper)
    head_convs: int = bounded(3, ge=0)
    gn_groups: int = bounded(32, ge=1)
    num_queries: int = bounded(128, ge=1)  # N proposals (Table 1: 128)
    decoder_layers: int = bounded(3, ge=1)  # T (Appendix C)
    decoder_heads: int = bounded(8, ge=1)
    pos_size: int = bounded(64, ge=1)  # side of the learned PE grid (P2 side of the training images)
    temperature: float = bounded(0.07, gt=0)  # initial learnable tau (the paper gives none; CLIP's)
    seg_weight: float = bounded(1.0, ge=0)  # alpha of Eq. 5 (not given in the paper)
    grounding_weight: float = bounded(1.0, ge=0)  # weight of L_G; 0: L_S only, the Sec. 3.3 teacher
    keep_prob: float = bounded(0.5, ge=0, le=1)  # kp, Sec. 4.1
    words: Literal["noun_adj", "noun_adj_verb", "all"] = "noun_adj"  # caption word kinds (ablation)
    # an ALIGN-style run (its folder, checkpoint or model.safetensors) whose trunk + FPN fusion, dense tower and tau
    # start the pyramid, F_z tower and tau (Sec. 4.1: "we initialize the backbone of the model from the ALIGN
    # checkpoint"); applied after ``pretrained``
    init_from: str = ""
    inference: Inference = "proposals"
    # the regions L_G grounds words to: the N proposals (the paper) or, a diagnostic of ours (not in the paper), the
    # image's true masks (the L_S targets), z = their mask-weighted mean of F_z: does grounding fail in the proposals?
    grounding_regions: Literal["proposals", "gt"] = "proposals"


def split_queries(vocabulary: Sequence[str]) -> tuple[list[str], list[int]]:
    """Vocabulary entries -> (flat queries, class index of each query); an entry "a|b" is one class queried by
    "a" and "b" (ensembled by max). Empty parts are ignored; an entry with none raises ValueError."""
    queries, groups = [], []
    for k, entry in enumerate(vocabulary):
        parts = [p.strip() for p in entry.split(QUERY_SEPARATOR) if p.strip()]
        if not parts:
            raise ValueError(f"vocabulary entry {k} ({entry!r}) names nothing")
        queries += parts
        groups += [k] * len(parts)
    return queries, groups


def ensemble_max(scores: Tensor, groups: Sequence[int], num_classes: int) -> Tensor:
    """Q x ... query scores -> K x ... class scores, the max over each class's queries."""
    index = torch.as_tensor(list(groups), device=scores.device).view(-1, *[1] * (scores.dim() - 1))
    out = scores.new_full((num_classes, *scores.shape[1:]), float("-inf"))
    return out.scatter_reduce(0, index.expand_as(scores), scores, reduce="amax")


class OpenSeg(nn.Module):
    """The trainable model (module docstring).

    Args:
        pyramid: images -> F (stride 4).
        seg_head, emb_head: F -> F_s (mask_dim channels), F -> F_z (embed_dim channels).
        positions: the learnable PE.
        decoder: F_s^PE -> mask queries.
        cfg: the config (loss and inference settings are read from it).
    """

    def __init__(self, *, pyramid: FusedPyramid, seg_head: FeatureHead, emb_head: FeatureHead,
                 positions: LearnedPositions, decoder: QueryDecoder, cfg: OpenSegConfig):
        super().__init__()
        self.pyramid, self.seg_head, self.emb_head = pyramid, seg_head, emb_head
        self.positions, self.decoder, self.cfg = positions, decoder, cfg
        self.log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature)).log())
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.text_embedder: Callable[[list[str]], Tensor] | None = None
        self.caption_words: Callable[[str], list[str]] | None = None

    @property
    def num_proposals(self) -> int:
        """N, the proposals per image."""
        return int(self.cfg.num_queries)

    def set_text_embedder(self, embed: Callable[[list[str]], Tensor] | None) -> None:
        """``embed(texts) -> len(texts) x embed_dim`` frozen word embeddings (e.g. a PhraseEmbedder)."""
        self.text_embedder = embed

    def set_caption_words(self, words: Callable[[str], list[str]] | None) -> None:
        """``words(caption) -> its words`` (e.g. :class:`omniseg.data.caption_words.CaptionWords`)."""
        self.caption_words = words

    def embed(self, texts: Sequence[str]) -> Tensor:
        if self.text_embedder is None:
            raise ValueError("OpenSeg needs word embeddings: call set_text_embedder first")
        return self.text_embedder(list(texts)).to(self.pixel_mean.device)

    def temperature(self) -> Tensor:
        """tau, clamped to [0.01, 1] (0.01: CLIP's bound on the logit scale)."""
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def encode(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """uint8 B x 3 x H x W -> ``masks`` B x N x h x w logits (padding: -inf-like), ``regions`` B x N x E,
        ``pixels`` F_z B x E x h x w, ``valid`` B x h x w (h = H / 4)."""
        x = normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes)
        f = self.pyramid(x)
        valid = valid_mask(image_sizes, f.shape[-2:], self.pyramid.stride, f.device)
        fs = self.seg_head(f) + self.positions(f.shape[-2:])
        fz = self.emb_head(f)
        s = mask_logits(self.decoder(fs, valid), fs)
        s = s.masked_fill(~valid[:, None], -30.0)  # sigmoid(-30) ~ 1e-13: padding is in no mask
        p = torch.sigmoid(s)
        return {"masks": s, "regions": region_means(p, fz), "pixels": fz, "valid": valid}

    def _caption_words(self, captions: Sequence[Sequence[str]]) -> list[list[str]]:
        """One caption per image drawn at random, its words each kept with probability kp (Sec. 3.2)."""
        from omniseg.data.caption_words import drop_words

        if self.caption_words is None:
            raise ValueError("OpenSeg needs caption words: call set_caption_words first")
        prefetch = getattr(self.caption_words, "prefetch", None)
        if prefetch is not None:
            prefetch([c for caps in captions for c in caps])
        out = []
        for caps in captions:
            if not caps:
                out.append([])
                continue
            caption = caps[int(torch.randint(len(caps), ()))]
            out.append(drop_words(self.caption_words(caption), self.cfg.keep_prob))
        return out

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Training losses ``loss_grounding`` (L_G, Eq. 4 as printed, times ``grounding_weight``; absent when that
        is 0: no caption is read), ``loss_seg`` (alpha L_S, Eq. 1) and, logged only, ``tau`` and ``num_words``
        (mean kept words per image)."""
        dev = self.pixel_mean.device
        enc = self.encode(batch.images, batch.image_sizes)
        s, valid = enc["masks"], enc["valid"]
        gt = []
        for t in batch.targets:
            keep = (t.has_mask & ~t.is_crowd).to(t.masks.device)
            m = t.masks[keep].to(dev, torch.float32)
            gt.append(F.interpolate(m[None], size=s.shape[-2:], mode="area")[0] if len(m) else m.new_zeros(
                0, *s.shape[-2:]))
        loss_seg = batched_max_dice_segmentation_loss(list(s), gt, list(valid))
        if self.cfg.grounding_weight == 0:  # the L_S-only teacher (Sec. 3.3)
            return {"loss_seg": self.cfg.seg_weight * loss_seg, "tau": self.temperature().detach(),
                    "num_words": loss_seg.new_zeros(())}

        words = self._caption_words(batch.captions)
        vocab = list(dict.fromkeys(w for ws in words for w in ws))
        width = max([len(ws) for ws in words] + [1])
        index = torch.zeros(len(words), width, dtype=torch.long)
        word_valid = torch.zeros(len(words), width, dtype=torch.bool)
        pos = {w: k for k, w in enumerate(vocab)}
        for i, ws in enumerate(words):
            index[i, : len(ws)] = torch.tensor([pos[w] for w in ws], dtype=torch.long)
            word_valid[i, : len(ws)] = True
        emb = self.embed(vocab) if vocab else enc["regions"].new_zeros(1, self.cfg.embed_dim)
        word_emb, word_valid = emb[index.to(dev)], word_valid.to(dev)
        tau = self.temperature()
        if self.cfg.grounding_regions == "gt":
            regions, region_valid = mask_regions(gt, enc["pixels"])
        else:
            regions, region_valid = enc["regions"], torch.ones(s.shape[:2], dtype=torch.bool, device=dev)
        scores = grounding_scores(regions, region_valid, word_emb, word_valid, tau)
        loss_g = 2 * grounding_loss(scores, valid=word_valid.any(1) & region_valid.any(1))
        return {"loss_grounding": self.cfg.grounding_weight * loss_g, "loss_seg": self.cfg.seg_weight * loss_seg,
                "tau": tau.detach(),
                "num_words": torch.tensor(sum(map(len, words)) / len(words), device=dev)}

    def query_scores(self, enc: dict[str, Tensor], i: int, queries: Tensor, inference: Inference | None = None
                     ) -> Tensor:
        """Q x h x w segmentation logits of image ``i`` for Q query embeddings (Sec. 3.4, module docstring)."""
        mode = inference or self.cfg.inference
        w = F.normalize(queries.to(enc["regions"]), dim=-1)
        if mode == "pixels":
            return torch.einsum("qe,ehw->qhw", w, F.normalize(enc["pixels"][i], dim=0))
        cos = w @ F.normalize(enc["regions"][i], dim=-1).t()  # Q x N
        p = torch.sigmoid(enc["masks"][i])  # N x h x w
        if mode == "proposals":
            return torch.einsum("qn,nhw->qhw", cos, p)
        return torch.stack([(c[:, None, None] * p).amax(0) for c in cos])  # per query: bounded memory

    @torch.no_grad()
    def predict(self, images: Tensor, vocabulary: Sequence[str], image_sizes: Sequence[tuple[int, int]],
                output_sizes: Sequence[tuple[int, int]], inference: Inference | None = None
                ) -> list[tuple[Tensor, InstancePredictions]]:
        """Per image: K x H_out x W_out semantic scores (K = vocabulary entries, ensembled queries) and the
        proposals as instances (mask sigmoid > 0.5, label = best entry by region-word cosine, score = its
        softmax probability over the entries at the learned tau), best first."""
        from omniseg.ops.masks import masks_to_boxes

        queries, groups = split_queries(vocabulary)
        q = self.embed(queries)
        enc = self.encode(images, image_sizes)
        out = []
        for i in range(images.shape[0]):
            sem = ensemble_max(self.query_scores(enc, i, q, inference), groups, len(vocabulary))
            sem = resize_valid(sem, image_sizes[i], self.pyramid.stride, output_sizes[i])
            cos = F.normalize(q.to(enc["regions"]), dim=-1) @ F.normalize(enc["regions"][i], dim=-1).t()
            probs = (ensemble_max(cos, groups, len(vocabulary)) / self.temperature()).softmax(0)  # K x N
            score, label = probs.max(0)
            masks = resize_valid(enc["masks"][i], image_sizes[i], self.pyramid.stride, output_sizes[i]) > 0
            keep = masks.flatten(1).any(1)
            order = torch.argsort(score[keep], descending=True)
            masks, score, label = masks[keep][order], score[keep][order], label[keep][order]
            out.append((sem, InstancePredictions(masks_to_boxes(masks), score, label, masks)))
        return out


def region_means(masks: Tensor, pixels: Tensor) -> Tensor:
    """Region features z_n = sum_ij m_n[ij] F_z[ij] / sum_ij m_n[ij] (Sec. 3.2; the mask-weighted mean: the same
    direction as the paper's sum, so the same cosines): ``... x N x h x w`` masks, ``... x E x h x w`` F_z ->
    ``... x N x E``."""
    return torch.einsum("...nhw,...ehw->...ne", masks, pixels) / (masks.sum((-2, -1))[..., None] + 1e-6)


def mask_regions(masks: Sequence[Tensor], pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Region features of given masks (``grounding_regions="gt"``): z = the mask-weighted mean of F_z, as for the
    proposals (Sec. 3.2).

    Args:
        masks: B tensors M_b x h x w of mask weights in [0, 1] (M_b may be 0).
        pixels: F_z, B x E x h x w.

    Returns:
        B x M x E region features (M = max M_b, >= 1; padding rows zero) and B x M bool, True on real masks.
    """
    b, e = pixels.shape[:2]
    m = max([len(x) for x in masks] + [1])
    regions = pixels.new_zeros(b, m, e)
    valid = torch.zeros(b, m, dtype=torch.bool, device=pixels.device)
    for i, x in enumerate(masks):
        if len(x):
            regions[i, : len(x)] = region_means(x.to(pixels), pixels[i])
            valid[i, : len(x)] = True
    return regions, valid


def select_pseudo_masks(probs: Tensor, top_k: int, iou_threshold: float = PSEUDO_NMS_IOU,
                        min_area: float = PSEUDO_MIN_AREA) -> tuple[Tensor, Tensor]:
    """A teacher's pseudo masks from its N proposals (Sec. 3.3 / 4.3).

    The paper says only that the teacher "annotate[s] a large image-text dataset with pseudo segmentation labels"
    (Sec. 3.3, after MuST) and gives no selection rule; ours: each proposal binarised at sigmoid > 0.5 (as
    :meth:`OpenSeg.predict` and the recall protocol), masks under ``min_area`` of the image dropped, scored by
    their mean probability inside the mask (their confidence: the teacher has no objectness), greedy mask NMS at
    IoU > ``iou_threshold`` (several queries often find one region), the ``top_k`` best kept.

    Args:
        probs: N x H x W proposal probabilities sigmoid(s) at the image's size.
        top_k: at most this many masks (0: every survivor).
        iou_threshold: a mask overlapping a better kept one by more than this is dropped.
        min_area: smallest mask, as a fraction of H x W (at least one pixel).

    Returns:
        K x H x W bool masks and their K scores, best first.
    """
    masks = probs > 0.5
    flat = masks.flatten(1).float()
    area = flat.sum(1)
    score = (probs.flatten(1).float() * flat).sum(1) / area.clamp(min=1)
    inter = flat @ flat.t()
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
    big = area >= max(1.0, min_area * probs.shape[-2] * probs.shape[-1])
    kept: list[int] = []
    for n in torch.argsort(torch.where(big, score, score.new_full((), -1.0)), descending=True).tolist():
        if not big[n] or (top_k and len(kept) == top_k):
            break
        if all(float(iou[n, k]) <= iou_threshold for k in kept):
            kept.append(n)
    index = torch.as_tensor(kept, dtype=torch.long, device=probs.device)
    return masks[index], score[index]


def build_pyramid(cfg) -> FusedPyramid:
    """ResNet + FPN P2..P5 (no top level) from a config with backbone, width, fpn_channels, norm, freeze_at,
    pretrained (shared with LSeg+)."""
    if cfg.backbone not in ("resnet18_fpn", "resnet50_fpn"):
        raise ValueError(f"OpenSeg / LSeg+ need a P2..P5 backbone (resnet18_fpn, resnet50_fpn), got {cfg.backbone!r}")
    fpn = BACKBONE_BUILDERS[cfg.backbone](out_channels=cfg.fpn_channels, norm=cfg.norm, freeze_at=cfg.freeze_at,
                                          width=cfg.width, top_block="none")
    if cfg.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(fpn, cfg.pretrained)
    return FusedPyramid(fpn=fpn)


def init_from_align(model: OpenSeg, path: str | os.PathLike) -> int:
    """Start ``model`` from an ALIGN-style run's weights (:class:`~omniseg.modeling.align_baseline.ALIGNBaseline`,
    Sec. 4.1): its ``pyramid.*`` -> the pyramid, ``head.*`` (the dense embedding tower) -> ``emb_head.*`` (F_z), its
    ``log_temperature`` -> tau. The mask branch (F_s tower, PE, queries) keeps its initialisation. Returns the number
    of tensors loaded.

    Raises:
        CheckpointError: ``path`` holds no such tensors, or one whose name or shape this model lacks (another
            width / embed_dim / head).
    """
    from omniseg.engine.checkpoint import load_weights
    from omniseg.utils.weights_io import CheckpointError

    mapped = {}
    for k, v in load_weights(path).items():
        if k.startswith("pyramid.") or k == "log_temperature":
            mapped[k] = v
        elif k.startswith("head."):
            mapped["emb_head." + k[len("head."):]] = v
    own = model.state_dict()
    bad = sorted(k for k, v in mapped.items() if k not in own or own[k].shape != v.shape)
    if not any(k.startswith("pyramid.") for k in mapped) or bad:
        raise CheckpointError(f"{path}: not an ALIGN-style model for this OpenSeg config ("
                              + (f"{len(bad)} tensors differ, e.g. {bad[0]}" if bad else "no pyramid.* tensors")
                              + "); model.init_from wants a run of configs/align_synth.yaml's trunk and head sizes")
    model.load_state_dict(mapped, strict=False)
    return len(mapped)


def build_openseg(cfg: OpenSegConfig) -> OpenSeg:
    """The model of ``cfg`` (no text embedder or caption tagger attached: the recipe does that)."""
    pyramid = build_pyramid(cfg)
    c = pyramid.out_channels
    model = OpenSeg(
        pyramid=pyramid,
        seg_head=FeatureHead(c, cfg.mask_dim, cfg.head_channels, cfg.head_convs, cfg.gn_groups),
        emb_head=FeatureHead(c, cfg.embed_dim, cfg.head_channels, cfg.head_convs, cfg.gn_groups),
        positions=LearnedPositions(cfg.mask_dim, cfg.pos_size),
        decoder=QueryDecoder(cfg.num_queries, cfg.mask_dim, cfg.decoder_layers, cfg.decoder_heads),
        cfg=cfg,
    )
    if cfg.init_from:
        init_from_align(model, cfg.init_from)
    return model
