"""FCOS-MO: one-stage FCOS with a Mask head and an Open-vocabulary contrastive classifier
(alp-fcos-mo, Sec. 3.2-3.4), trained from mixed supervision: masked instances (class name as
phrase) and approximately localized phrases (ALPs: free phrase + approximate box).

Assembly: ResNet + FPN P3..P7 -> :class:`~omniseg.modeling.fcos_head.FCOSMOHead` (shared GN
towers) -> per location: a projected embedding scored against phrases, ltrb distances,
centerness; plus a class-agnostic RoI mask head (Hourglass-20 by default, 4-conv option) on
RoIAligned FPN features.

Which instance feeds which loss (Sec. 3.3 "Training", "Box quantization"; Fig. 3):

* every instance with a box (exact or approximate, crowd excluded) is matched to locations by
  the FCOS rules (:mod:`omniseg.modeling.fcos_targets`) -- an ALP through its (quantized,
  data side: :class:`omniseg.data.transforms.QuantizeApproxBoxes`) approximate box -- and
  trains the contrastive classifier with its phrase as target; the phrases of all instances
  in the batch are the candidates (:mod:`omniseg.modeling.contrastive_classifier`);
* box regression (GIoU, weighted by the centerness target as in FCOS) and centerness (BCE)
  only at locations matched to EXACT boxes: "disable box regression loss for those
  instances" (ALPs). The paper is silent on centerness for ALPs; their centerness targets come
  from the same imprecise edges, so they are off by default (``alp_centerness``);
* the mask head only on GT boxes that HAVE a mask ("Mask head trains on RoI-aligned features
  from GT boxes, and is disabled for ALPs", Fig. 3; Deep-MARC's GT-box training, Sec. 3.2);
* locations matched to crowd regions are ignored by the classifier.

Inference (Sec. 3.3 "Inference"): (|C| + 1)-way softmax over the vocabulary's phrase
embeddings + background, score = sqrt(p_class * centerness) (geometric mean), class-wise NMS
(0.2, the paper's search in Sec. 4 "Test-time hyperparameters", score threshold 0.05), top
100, masks from the head on the predicted boxes. Any vocabulary works: phrases are inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.engine.config import bounded
from omniseg.modeling.backbones.fpn import BACKBONE_BUILDERS
from omniseg.modeling.contrastive_classifier import batch_phrases, contrastive_phrase_loss, phrase_logits
from omniseg.modeling.fcos_head import FCOSMOHead
from omniseg.modeling.fcos_targets import all_level_locations, assign_fcos_targets
from omniseg.modeling.heads.mask_heads import FCNMaskHead, HourglassMaskHead
from omniseg.modeling.norm import NormKind
from omniseg.modeling.predictions import InstancePredictions
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images
from omniseg.ops.boxes import centerness, clip_boxes, distances_to_boxes, generalized_box_iou_loss
from omniseg.ops.losses import sigmoid_bce_loss
from omniseg.ops.masks import paste_masks_in_image, roi_mask_targets
from omniseg.ops.nms import batched_nms
from omniseg.ops.roi_align import multilevel_roi_align

LEVELS = ("p3", "p4", "p5", "p6", "p7")


@dataclass
class FCOSMOConfig:
    """Model section of an FCOS-MO experiment (flat, typed). Paper values are the defaults.

    ``scale_bounds`` are the inner boundaries of the per-level scale ranges: (64, 128, 256, 512)
    gives [0, 64], [64, 128], ..., [512, inf] for P3..P7.
    """

    backbone: Literal["resnet18_fpn_p3p7", "resnet50_fpn_p3p7"] = "resnet50_fpn_p3p7"  # P3..P7 outputs
    width: int = bounded(64, ge=1)
    fpn_channels: int = bounded(256, ge=1)
    norm: NormKind = "FrozenBN"  # trunk norm ("GN" / "BN" from scratch)
    freeze_at: int = bounded(2, ge=0, le=5)
    pretrained: str = ""  # optional local torchvision-style ResNet weights
    embed_dim: int = bounded(384, ge=1)  # text-embedding size (MiniLM 384, CLIP ViT-B/32 512)
    head_convs: int = bounded(4, ge=0)
    head_channels: int = bounded(0, ge=0)  # 0: fpn_channels
    gn_groups: int = bounded(32, ge=1)
    centerness_on_reg: bool = True
    use_centerness: bool = True  # ablation: no centerness loss, no calibration
    alp_centerness: bool = False
    center_sampling_radius: float = bounded(1.5, gt=0)
    scale_bounds: tuple[float, ...] = bounded((64.0, 128.0, 256.0, 512.0), gt=0)
    tau: float = bounded(0.01, gt=0)
    alpha: float = bounded(0.1, ge=0, le=1)
    mask_head: Literal["hourglass", "fcn4"] = "hourglass"  # Hourglass-20 | 4-conv FCN
    mask_roi_size: int = bounded(16, ge=1)  # 16 x 16 RoI features (Sec. 3.2)
    mask_channels: int = bounded(128, ge=1)
    mask_in_features: tuple[str, ...] = ("p3", "p4", "p5")
    score_threshold: float = bounded(0.05, ge=0, le=1)
    pre_nms_topk: int = bounded(1000, ge=1)  # per level
    nms_threshold: float = bounded(0.2, ge=0, le=1)
    max_detections: int = bounded(100, ge=1)


def scale_ranges(bounds: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """(64, 128, 256, 512) -> ((0, 64), (64, 128), (128, 256), (256, 512), (512, inf))."""
    edges = [0.0, *[float(b) for b in bounds], math.inf]
    return tuple(zip(edges[:-1], edges[1:]))


class FCOSMO(nn.Module):
    """The trainable model (see module docstring).

    Args:
        backbone: ``B x 3 x H x W -> dict`` with "p3".."p7" and a ``strides`` dict.
        head: the dense head.
        mask_head: R x C x S x S -> R x 1 x M x M logits.
        cfg: the config (assignment, loss and inference settings are read from it).
    """

    def __init__(self, *, backbone: nn.Module, head: FCOSMOHead, mask_head: nn.Module, cfg: FCOSMOConfig):
        super().__init__()
        self.backbone, self.head, self.mask_head, self.cfg = backbone, head, mask_head, cfg
        self.strides = tuple(int(backbone.strides[f]) for f in LEVELS)
        self.mask_strides = tuple(int(backbone.strides[f]) for f in cfg.mask_in_features)
        self.ranges = scale_ranges(cfg.scale_bounds)
        if len(self.ranges) != len(LEVELS):
            raise ValueError(f"scale_bounds must give {len(LEVELS) - 1} boundaries, got {cfg.scale_bounds}")
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.text_embedder: Callable[[list[str]], Tensor] | None = None

    def set_text_embedder(self, embed: Callable[[list[str]], Tensor] | None) -> None:
        """``embed(texts) -> len(texts) x D`` frozen phrase embeddings (e.g. a PhraseEmbedder)."""
        self.text_embedder = embed

    def _embed(self, texts: Sequence[str]) -> Tensor:
        if self.text_embedder is None:
            raise ValueError("FCOS-MO needs phrase embeddings: pass them or call set_text_embedder first")
        return self.text_embedder(list(texts)).to(self.pixel_mean.device)

    def features(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """uint8 B x 3 x H x W -> FPN maps; the padding is exactly 0 after normalization."""
        x = normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes)
        return self.backbone(x)

    def dense(self, feats: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, list[int]]:
        """Head outputs flattened over levels: emb B x P x D, ltrb B x P x 4, ctr B x P, and
        points P x 2, strides P, ranges P x 2, per-level counts."""
        maps = [feats[f] for f in LEVELS]
        emb, ltrb, ctr = self.head(maps, self.strides)
        pts, st, rg, counts = all_level_locations([m.shape[-2:] for m in maps], self.strides, self.ranges,
                                                  maps[0].device)
        return (torch.cat([e.flatten(2) for e in emb], 2).transpose(1, 2),
                torch.cat([d.flatten(2) for d in ltrb], 2).transpose(1, 2),
                torch.cat([c.flatten(1) for c in ctr], 1), pts, st, rg, counts)

    def mask_logits(self, feats: dict[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """(sum N_i) x M x M class-agnostic mask logits for B lists of N_i x 4 boxes."""
        maps = [feats[f] for f in self.cfg.mask_in_features]
        rois = multilevel_roi_align(maps, [b.float() for b in boxes], self.cfg.mask_roi_size, self.mask_strides)
        return self.mask_head(rois)[:, 0]

    def forward(self, batch: Batch, phrase_embeddings: Tensor | None = None) -> dict[str, Tensor]:
        """Training losses.

        Args:
            batch: collated batch; instance texts are the phrases.
            phrase_embeddings: K x D embeddings of :func:`batch_phrases` of the batch's texts
                (default: computed with the text embedder).

        Returns:
            "loss_cls", "loss_box", "loss_ctr", "loss_mask" scalars, and (logged only)
            "num_pos", "num_pos_exact", "num_masks".
        """
        cfg = self.cfg
        dev = self.pixel_mean.device
        feats = self.features(batch.images, batch.image_sizes)
        emb, ltrb, ctr, pts, st, rg, _ = self.dense(feats)
        phrases, cols = batch_phrases([t.texts for t in batch.targets])
        if phrase_embeddings is None:
            phrase_embeddings = self._embed(phrases) if phrases else emb.new_zeros(0, cfg.embed_dim)
        if phrase_embeddings.shape != (len(phrases), emb.shape[-1]):
            raise ValueError(f"phrase_embeddings must be {len(phrases)} x {emb.shape[-1]}, "
                             f"got {tuple(phrase_embeddings.shape)}")
        k = len(phrases)
        cls_t, cls_valid, reg_t, exact_pos, ctr_pos = [], [], [], [], []
        mask_boxes, mask_gt = [], []
        for t, col in zip(batch.targets, cols):
            t = t.to(dev)
            assignable = t.has_box & ((t.boxes[:, 2] > t.boxes[:, 0]) & (t.boxes[:, 3] > t.boxes[:, 1]))
            idx = torch.nonzero(assignable).flatten()
            matched, d = assign_fcos_targets(pts, st, rg, t.boxes[idx], cfg.center_sampling_radius)
            pos = matched >= 0
            if idx.numel():
                inst = idx[matched.clamp(min=0)]
                crowd = pos & t.is_crowd[inst]
                target = torch.where(pos, col.to(dev)[inst], torch.full_like(matched, k))
                exact = pos & ~crowd & t.box_exact[inst]
            else:  # nothing to match: every location is background
                crowd = exact = torch.zeros_like(pos)
                target = torch.full_like(matched, k)
            cls_t.append(torch.where(crowd, torch.full_like(target, k), target))
            cls_valid.append(~crowd)
            reg_t.append(d)
            exact_pos.append(exact)
            ctr_pos.append(exact | (pos & ~crowd & cfg.alp_centerness))
            keep = t.has_mask & t.has_box & ~t.is_crowd
            mask_boxes.append(t.boxes[keep])
            mask_gt.append(t.masks[keep])
        cls_t_all, valid_all = torch.cat(cls_t), torch.cat(cls_valid)
        num_pos = ((cls_t_all < k) & valid_all).sum()
        logits = phrase_logits(emb.reshape(-1, emb.shape[-1]), phrase_embeddings, cfg.tau)
        losses = {"loss_cls": contrastive_phrase_loss(logits, cls_t_all, cfg.alpha, valid_all)}

        exact_all = torch.cat(exact_pos)
        flat_pts = pts.repeat(len(batch.targets), 1)
        reg_all = torch.cat(reg_t)
        pred_boxes = distances_to_boxes(flat_pts, ltrb.reshape(-1, 4))
        tgt_boxes = distances_to_boxes(flat_pts, reg_all)
        ctr_target = centerness(reg_all)
        # FCOS weights the GIoU loss by the centerness target; locations off exact boxes weigh 0
        w = torch.where(exact_all, ctr_target, torch.zeros_like(ctr_target))
        if bool(exact_all.any()):
            losses["loss_box"] = generalized_box_iou_loss(pred_boxes, tgt_boxes, valid=w)
        else:
            losses["loss_box"] = ltrb.sum() * 0.0
        ctr_all = torch.cat(ctr_pos)
        if cfg.use_centerness and bool(ctr_all.any()):
            losses["loss_ctr"] = sigmoid_bce_loss(ctr.reshape(-1), ctr_target, valid=ctr_all)
        else:
            losses["loss_ctr"] = ctr.sum() * 0.0

        num_masks = sum(int(b.shape[0]) for b in mask_boxes)
        if num_masks:
            mlog = self.mask_logits(feats, mask_boxes)
            gt = torch.cat([roi_mask_targets(m, b, mlog.shape[-1]) for m, b in zip(mask_gt, mask_boxes)
                            if m.shape[0]])
            losses["loss_mask"] = sigmoid_bce_loss(mlog, (gt >= 0.5).to(mlog.dtype))
        else:  # a zero with a graph through every mask-head weight (DDP sees them all used)
            losses["loss_mask"] = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        losses.update(num_pos=num_pos.float(), num_pos_exact=exact_all.sum().float(),
                      num_masks=torch.tensor(float(num_masks), device=dev))
        return losses

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        vocabulary: Sequence[str] | Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        with_masks: bool = True,
    ) -> list[InstancePredictions]:
        """Detect and segment the phrases of ``vocabulary``.

        Args:
            images: B x 3 x H x W uint8 (padded batch).
            vocabulary: C phrases (embedded with the text embedder) or a C x D embedding matrix.
            image_sizes: B valid (height, width); default the full H x W.
            output_sizes: B (height, width) to rescale boxes and paste masks at (e.g. original sizes).
            with_masks: also predict masks.

        Returns:
            B :class:`InstancePredictions`; labels index ``vocabulary``.
        """
        cfg = self.cfg
        b = images.shape[0]
        image_sizes = list(image_sizes or [tuple(images.shape[-2:])] * b)
        vocab = vocabulary if isinstance(vocabulary, Tensor) else self._embed(list(vocabulary))
        c = vocab.shape[0]
        feats = self.features(images, image_sizes)
        emb, ltrb, ctr, pts, _, _, counts = self.dense(feats)
        results, all_boxes = [], []
        for i in range(b):
            probs = phrase_logits(emb[i], vocab.to(emb), cfg.tau).softmax(dim=1)[:, :c] if c else emb.new_zeros(
                emb.shape[1], 0)
            results.append(decode_detections(probs, ctr[i], ltrb[i], pts, counts, image_sizes[i], cfg))
            all_boxes.append(results[-1].boxes)
        if with_masks:
            probs = self.mask_logits(feats, all_boxes).sigmoid() if sum(len(x) for x in all_boxes) else None
            start = 0
            for i, r in enumerate(results):
                n = len(r)
                h, w = image_sizes[i]
                oh, ow = output_sizes[i] if output_sizes is not None else (h, w)
                r.boxes = r.boxes * r.boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
                m = probs[start:start + n] if probs is not None else r.boxes.new_zeros(0, 1, 1)
                r.masks = paste_masks_in_image(m, r.boxes, (oh, ow), threshold=0.5)
                start += n
        elif output_sizes is not None:
            for r, (h, w), (oh, ow) in zip(results, image_sizes, output_sizes):
                r.boxes = r.boxes * r.boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
        return results


def decode_detections(probs: Tensor, ctr: Tensor, ltrb: Tensor, points: Tensor, counts: Sequence[int],
                      image_size: tuple[int, int], cfg: FCOSMOConfig) -> InstancePredictions:
    """One image's detections from its dense outputs (module docstring, "Inference"; shared by
    :meth:`FCOSMO.predict` and the ONNX runtime, :mod:`omniseg.export.runtime`).

    Args:
        probs: P x C class probabilities (softmax over C phrases + background, background dropped).
        ctr: P centerness logits.
        ltrb: P x 4 distances in image pixels.
        points: P x 2 locations; counts: locations per level, fine to coarse (sum P).
        image_size: valid (H, W) the boxes are clipped to.

    Returns:
        boxes, scores, labels (no masks) after class-wise NMS, at most ``cfg.max_detections``.
    """
    starts = [0, *torch.tensor(list(counts), dtype=torch.long).cumsum(0).tolist()]
    cand_loc, cand_cls, cand_p = [], [], []
    for lo, hi in zip(starts[:-1], starts[1:]):  # FCOS: threshold, then top-k per level
        p = probs[lo:hi]
        loc, cls = torch.nonzero(p > cfg.score_threshold, as_tuple=True)
        sc = p[loc, cls]
        if sc.numel() > cfg.pre_nms_topk:
            top = sc.topk(cfg.pre_nms_topk).indices
            loc, cls, sc = loc[top], cls[top], sc[top]
        cand_loc.append(loc + lo)
        cand_cls.append(cls)
        cand_p.append(sc)
    loc, cls, p = torch.cat(cand_loc), torch.cat(cand_cls), torch.cat(cand_p)
    score = torch.sqrt(p * ctr[loc].sigmoid()) if cfg.use_centerness else p
    boxes = clip_boxes(distances_to_boxes(points[loc], ltrb[loc]), image_size)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, score, cls = boxes[ok], score[ok], cls[ok]
    keep = batched_nms(boxes, score, cls, cfg.nms_threshold)[: cfg.max_detections]
    return InstancePredictions(boxes=boxes[keep], scores=score[keep], labels=cls[keep])


def build_fcos_mo(cfg: FCOSMOConfig) -> FCOSMO:
    """Build the model from its config section (optionally loading local ResNet weights)."""
    if cfg.backbone not in BACKBONE_BUILDERS or not cfg.backbone.endswith("p3p7"):
        raise ValueError(f"FCOS-MO needs a P3..P7 backbone; choose from "
                         f"{sorted(k for k in BACKBONE_BUILDERS if k.endswith('p3p7'))}, got {cfg.backbone!r}")
    backbone = BACKBONE_BUILDERS[cfg.backbone](
        out_channels=cfg.fpn_channels, norm=cfg.norm, freeze_at=cfg.freeze_at, width=cfg.width)
    if cfg.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(backbone, cfg.pretrained)
    head = FCOSMOHead(cfg.fpn_channels, embed_dim=cfg.embed_dim, num_levels=len(LEVELS), num_convs=cfg.head_convs,
                      channels=cfg.head_channels or None, gn_groups=cfg.gn_groups,
                      centerness_on_reg=cfg.centerness_on_reg)
    mask_head: nn.Module
    if cfg.mask_head == "hourglass":
        mask_head = HourglassMaskHead(cfg.fpn_channels, channels=cfg.mask_channels, num_layers=20, levels=2,
                                      norm="GN")
    elif cfg.mask_head == "fcn4":
        mask_head = FCNMaskHead(cfg.fpn_channels, conv_dim=cfg.mask_channels, num_convs=4)
    else:
        raise ValueError(f"mask_head must be 'hourglass' or 'fcn4', got {cfg.mask_head!r}")
    return FCOSMO(backbone=backbone, head=head, mask_head=mask_head, cfg=cfg)
