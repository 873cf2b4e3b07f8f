"""VLOSS: one query-based segmenter trained on panoptic masks, detection boxes and image-text pairs (Dong et al.,
vloss paper, Sec. 3).

Model (Sec. 3.1-3.3): ResNet trunk -> multi-scale encoder f_E (FPN-style, or plain FPN for Table 5) ->
masked-attention decoder f_D with N object queries + the global image token (:mod:`.vloss_decoder`). Heads, shared
by every decoder layer: classification = cosine of the projected query against the class-name text embeddings
over a learned temperature, plus a learned no-object embedding (the shared open-vocabulary classifier,
:class:`~omniseg.modeling.heads.open_vocab.OpenVocabClassifier`; Sec. 3.5 "c = e_obj e_cls^T"); masks = query
embedding . f'_3; the global token is projected to the text space for L_con.

Losses (Sec. 3.5, :meth:`VLOSS.loss`), per decoder prediction (deep supervision as Mask2Former [7]), on a batch
whose images may be of different kinds (:class:`VLOSSTarget`):
* panoptic: Hungarian matching (:func:`~omniseg.ops.matching.match_queries`, class + point BCE + dice costs, the
  loss weights), L_cls on every query (unmatched -> no-object, weight ``no_object_weight``), L_bce + L_dice on
  matched pairs at sampled points;
* detection: the same, but with ``positive_only_cls`` only the matched queries enter L_cls (Sec. 3.5: stuff queries
  must not be pushed to no-object). Targets with a mask (ground truth or MAL pseudo masks, Sec. 3.2) get
  L_bce + L_dice; box-only targets (``mask_valid`` False, no labeler) get the box-projection loss ``loss_proj``
  instead (BoxInst [42]; the paper uses pseudo masks because such weak losses "may lead to severe performance
  degeneration"), and are matched against their filled box (matching cost only);
* image_text: no segmentation terms; every image with a caption enters L_con (CLIP Eq. 4-5, or FILIP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from omniseg.engine.config import bounded
from omniseg.modeling.backbones.resnet import build_resnet18, build_resnet50
from omniseg.modeling.heads.open_vocab import OpenVocabClassifier, OpenVocabConfig
from omniseg.modeling.norm import NormKind
from omniseg.modeling.openseg_heads import resize_valid
from omniseg.modeling.predictions import InstancePredictions
from omniseg.modeling.vloss_decoder import MaskedAttentionDecoder, MultiScaleEncoder
from omniseg.ops.losses import clip_contrastive_loss
from omniseg.ops.masks import masks_to_boxes
from omniseg.ops.matching import MatcherConfig, match_queries
from omniseg.ops.vloss_losses import (
    box_masks,
    box_projection_loss,
    filip_contrastive_loss,
    point_mask_losses,
    query_classification_loss,
    uncertain_point_coords,
)

EncoderKind = Literal["fpn_style", "fpn"]  # Table 5
ContrastiveKind = Literal["clip", "filip", "none"]  # Table 6
TargetKind = Literal["panoptic", "detection", "image_text"]
MASK_STRIDE = 4  # masks at f'_3, stride 4


@dataclass
class VLOSSConfig:
    """Model section of a VLOSS recipe; CPU-sized defaults, paper values in the comments."""

    backbone: Literal["resnet18_fpn", "resnet50_fpn"] = "resnet18_fpn"  # the trunk; f_E is ``encoder``
    width: int = bounded(16, ge=1)  # ResNet base width (64 = the standard network)
    norm: NormKind = "GN"  # trunk norm ("FrozenBN" with pretrained weights)
    freeze_at: int = bounded(0, ge=0, le=5)
    pretrained: str = ""  # optional ResNet trunk weights (torchvision naming or an ``omniseg pretrain`` export)
    encoder: EncoderKind = "fpn_style"  # Sec. 3.3 / Table 5
    encoder_layers: int = bounded(1, ge=1)  # transformer layers on the smallest level (paper: not given)
    hidden_dim: int = bounded(64, ge=2)  # D (Mask2Former: 256)
    num_queries: int = bounded(50, ge=1)  # N (paper: 100, Sec. 4.2)
    dec_layers: int = bounded(3, ge=1)  # paper: 9 (Sec. 4.2)
    num_heads: int = bounded(4, ge=1)
    embed_dim: int = bounded(384, ge=1)  # text embedding size (MiniLM 384); the recipe sets it from the encoder
    num_points: int = bounded(1024, ge=1)  # sampled points for matching and mask losses (paper: 112 * 112)
    cls_weight: float = bounded(2.0, ge=0)  # lambda_cls (Sec. 4.2); also the matching cost weights
    bce_weight: float = bounded(5.0, ge=0)  # lambda_bce
    dice_weight: float = bounded(5.0, ge=0)  # lambda_dice
    proj_weight: float = bounded(5.0, ge=0)  # box-projection loss of box-only targets (not in the paper)
    no_object_weight: float = bounded(0.1, ge=0)  # Mask2Former's no-object weight
    positive_only_cls: bool = True  # L_cls on matched queries only for detection images (Sec. 3.5)
    contrastive: ContrastiveKind = "clip"  # Table 6
    con_weight: float = bounded(1.0, ge=0)  # lambda_con (Sec. 4.2)
    temperature: float = bounded(0.07, gt=0)  # initial learned tau of the classifier and of L_con (CLIP [36])
    # the levels the masked-attention decoder attends to, round robin: "32,16,8" = f'_0..f'_2 as Mask2Former and
    # the paper (Sec. 3.1, for ~1024 px inputs); "16,8,4" = one level finer, for small inputs whose objects span
    # only a cell or two at stride 8 (the synthetic world at 256 px); the masks use stride 4 either way
    decoder_strides: Literal["32,16,8", "16,8,4"] = "32,16,8"


@dataclass
class VLOSSTarget:
    """One image's supervision.

    Attributes:
        kind: "panoptic" (things + stuff masks), "detection" (things only; masks from MAL or box-only) or
            "image_text" (a caption only).
        labels: M long, rows of ``class_emb``.
        masks: M x H x W float {0, 1} at the padded input size, or None (all box-only).
        mask_valid: M bool; False = box-only (box-projection loss). MAL pseudo masks come in with True.
        boxes: M x 4 XYXY pixels of the padded input.
        caption_emb: E sentence embedding of one caption (CLIP-style L_con), or None.
        caption_tokens: T x E word-token embeddings (FILIP-style L_con), or None.
    """

    kind: TargetKind
    labels: Tensor
    masks: Tensor | None
    mask_valid: Tensor
    boxes: Tensor
    caption_emb: Tensor | None = None
    caption_tokens: Tensor | None = None


class VLOSS(nn.Module):
    """The trainable model (module docstring).

    Args:
        trunk: ResNet returning "c2".."c5".
        encoder: f_E; decoder: f_D.
        classifier: cosine classifier (learned tau, learned no-object embedding), D -> E.
        global_proj: D -> E projection of the global image token.
        cfg: loss settings are read from it.
    """

    def __init__(self, *, trunk: nn.Module, encoder: MultiScaleEncoder, decoder: MaskedAttentionDecoder,
                 classifier: OpenVocabClassifier, global_proj: nn.Linear, cfg: VLOSSConfig):
        super().__init__()
        self.trunk, self.encoder, self.decoder = trunk, encoder, decoder
        self.classifier, self.global_proj, self.cfg = classifier, global_proj, cfg
        self.log_con_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))  # L_con's 1 / tau

    def con_temperature(self) -> Tensor:
        """tau of L_con (learned, 1 / tau clamped at 100 as CLIP)."""
        return torch.exp(-self.log_con_scale.clamp(max=math.log(100.0)))

    def forward(self, images: Tensor, class_emb: Tensor) -> dict[str, Any]:
        """Predict.

        Args:
            images: B x 3 x H x W normalized, padded (H, W multiples of 32).
            class_emb: K x E class-name text embeddings.

        Returns:
            "logits" B x N x (K + 1) (no-object last), "masks" B x N x H/4 x W/4 logits, "global" B x E (the
            global token in the text space), "tokens" B x N x E (the queries in the text space, FILIP), "aux": the
            earlier decoder predictions, each {"logits", "masks"}.
        """
        c = self.trunk(images)
        feats, mask_features = self.encoder([c["c2"], c["c3"], c["c4"], c["c5"]])
        preds = self.decoder(feats[:3] if self.cfg.decoder_strides == "32,16,8" else feats[1:], mask_features)
        n = self.decoder.num_queries
        stages = [{"logits": self.classifier(t[:, :n], class_emb), "masks": m} for t, m in preds]
        tokens, _ = preds[-1]
        return {**stages[-1], "global": self.global_proj(tokens[:, n]),
                "tokens": self.classifier.project(tokens[:, :n]), "aux": stages[:-1]}

    def segmentation_losses(self, logits: Tensor, masks: Tensor, targets: Sequence[VLOSSTarget]) -> dict[str, Tensor]:
        """Weighted loss_cls, loss_bce, loss_dice, loss_proj of one decoder prediction (module docstring).

        Args:
            logits: B x N x (K + 1); masks: B x N x h x w logits (stride 4); targets: B targets.
        """
        cfg = self.cfg
        zero = logits.sum() * 0.0 + masks.sum() * 0.0
        seg = [b for b, t in enumerate(targets) if t.kind != "image_text"]
        out = {k: zero for k in ("loss_cls", "loss_bce", "loss_dice", "loss_proj")}
        if not seg:
            return out
        size = (masks.shape[-2] * MASK_STRIDE, masks.shape[-1] * MASK_STRIDE)
        match_targets = []
        for b in seg:  # box-only targets are matched against their filled box (the matching cost only)
            t = targets[b]
            boxes = box_masks(t.boxes.to(masks.device), size if t.masks is None else tuple(t.masks.shape[-2:]))
            tm = boxes if t.masks is None else torch.where(t.mask_valid.to(masks.device)[:, None, None],
                                                           t.masks.to(masks.device).float(), boxes)
            match_targets.append({"labels": t.labels, "masks": tm})
        mcfg = MatcherConfig(cfg.cls_weight, cfg.bce_weight, cfg.dice_weight, cfg.num_points)
        sel = slice(None) if len(seg) == len(targets) else torch.tensor(seg, device=masks.device)  # no copy if all
        indices = match_queries(logits[sel], masks[sel], match_targets, mcfg)
        k, n = logits.shape[-1] - 1, logits.shape[1]
        cls_t, cls_w, pm, tm, pp, pb = [], [], [], [], [], []
        for (qi, ti), b, mt in zip(indices, seg, match_targets):
            t = targets[b]
            qi, ti = qi.to(masks.device), ti.to(masks.device)
            y = torch.full((n,), k, dtype=torch.long, device=logits.device)
            y[qi] = t.labels.to(logits.device)[ti].long()
            unmatched = 0.0 if t.kind == "detection" and cfg.positive_only_cls else cfg.no_object_weight
            w = torch.full((n,), unmatched, device=logits.device)
            w[qi] = 1.0
            cls_t.append(y)
            cls_w.append(w)
            has_mask = t.mask_valid.to(masks.device).bool() if t.masks is not None else None
            valid = has_mask[ti] if has_mask is not None else torch.zeros_like(ti, dtype=torch.bool)
            pm.append(b * n + qi[valid])  # flat query indices: one gather per term (index backward is costly)
            tm.append(mt["masks"][ti[valid]])
            pp.append(b * n + qi[~valid])
            pb.append(t.boxes.to(masks.device)[ti[~valid]])
        out["loss_cls"] = cfg.cls_weight * query_classification_loss(
            logits[sel].flatten(0, 1), torch.cat(cls_t), torch.cat(cls_w))
        flat = masks.flatten(0, 1)
        pred, tgt = flat[torch.cat(pm)], torch.cat(tm)
        coords = uncertain_point_coords(pred, cfg.num_points)
        bce, dice = point_mask_losses(pred, tgt, coords)
        out["loss_bce"], out["loss_dice"] = cfg.bce_weight * bce, cfg.dice_weight * dice
        out["loss_proj"] = cfg.proj_weight * box_projection_loss(flat[torch.cat(pp)], torch.cat(pb), MASK_STRIDE)
        return out

    def contrastive_loss(self, out: dict[str, Any], targets: Sequence[VLOSSTarget]) -> Tensor:
        """Unweighted L_con over the images that carry a caption (CLIP: ``caption_emb``; FILIP:
        ``caption_tokens``); 0 with a grad path when none (or ``contrastive`` is "none")."""
        zero = out["global"].sum() * 0.0 + out["tokens"].sum() * 0.0
        g = out["global"]
        if self.cfg.contrastive == "clip":
            valid = torch.tensor([t.caption_emb is not None for t in targets], device=g.device)
            if not bool(valid.any()):
                return zero
            txt = torch.stack([t.caption_emb.to(g) if t.caption_emb is not None else g.new_zeros(g.shape[1])
                               for t in targets])
            return clip_contrastive_loss(g, txt, valid, self.con_temperature()) + zero
        if self.cfg.contrastive == "filip":
            toks = [t.caption_tokens for t in targets]
            width = max([len(x) for x in toks if x is not None] + [0])
            if width == 0:
                return zero
            text = g.new_zeros(len(toks), width, g.shape[1])
            tv = torch.zeros(len(toks), width, dtype=torch.bool, device=g.device)
            for i, x in enumerate(toks):
                if x is not None and len(x):
                    text[i, : len(x)] = x.to(g)
                    tv[i, : len(x)] = True
            return filip_contrastive_loss(out["tokens"], text, tv, self.con_temperature()) + zero
        return zero

    def loss(self, out: dict[str, Any], targets: Sequence[VLOSSTarget], class_emb: Tensor | None = None
             ) -> dict[str, Tensor]:
        """Named, weighted terms (their sum is the loss): loss_cls, loss_bce, loss_dice, loss_proj for the final
        prediction, the same with suffix ``_aux{i}`` for decoder prediction i, and loss_con. Every key is present
        on every batch (0 where it does not apply). ``class_emb`` is unused (the logits hold it)."""
        if len(targets) != out["logits"].shape[0]:
            raise ValueError(f"{out['logits'].shape[0]} images but {len(targets)} targets")
        terms = self.segmentation_losses(out["logits"], out["masks"], targets)
        for i, aux in enumerate(out["aux"]):
            aux_terms = self.segmentation_losses(aux["logits"], aux["masks"], targets)
            terms.update({f"{k}_aux{i}": v for k, v in aux_terms.items()})
        terms["loss_con"] = self.cfg.con_weight * self.contrastive_loss(out, targets)
        return terms


def build_vloss(cfg: VLOSSConfig) -> VLOSS:
    """The model of ``cfg`` (text embeddings come from the recipe)."""
    builders = {"resnet18_fpn": build_resnet18, "resnet50_fpn": build_resnet50}
    if cfg.backbone not in builders:
        raise ValueError(f"VLOSS backbone must be one of {sorted(builders)}, got {cfg.backbone!r}")
    if cfg.encoder not in ("fpn_style", "fpn"):
        raise ValueError(f"encoder must be 'fpn_style' or 'fpn', got {cfg.encoder!r}")
    if cfg.hidden_dim % cfg.num_heads or cfg.hidden_dim % 2:
        raise ValueError(f"hidden_dim {cfg.hidden_dim} must be even and divisible by num_heads {cfg.num_heads}")
    trunk = builders[cfg.backbone](norm=cfg.norm, freeze_at=cfg.freeze_at, width=cfg.width)
    if cfg.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(trunk, cfg.pretrained)
    chans = [trunk.out_channels[f"c{i}"] for i in range(2, 6)]
    d = cfg.hidden_dim
    layers = cfg.encoder_layers if cfg.encoder == "fpn_style" else 0
    return VLOSS(
        trunk=trunk,
        encoder=MultiScaleEncoder(chans, d, layers, cfg.num_heads),
        decoder=MaskedAttentionDecoder(cfg.num_queries, d, cfg.dec_layers, cfg.num_heads),
        classifier=OpenVocabClassifier(OpenVocabConfig(in_channels=d, embed_dim=cfg.embed_dim,
                                                       temperature=cfg.temperature, temperature_kind="learned",
                                                       background="learned")),
        global_proj=nn.Linear(d, cfg.embed_dim),
        cfg=cfg,
    )


@dataclass
class PanopticSegment:
    """One segment of a panoptic prediction: ``id`` in the segment map, class index, score, thing or stuff."""

    id: int
    label: int
    score: float
    isthing: bool


@dataclass
class VLOSSPrediction:
    """One image's prediction at its output size.

    Attributes:
        segment_map: H x W long, 0 = no segment, else a :class:`PanopticSegment` id.
        segments: the segments, ids 1, 2, ... in order.
        instances: thing instances (Mask2Former's instance inference), best first.
    """

    segment_map: Tensor
    segments: list[PanopticSegment]
    instances: InstancePredictions


@torch.no_grad()
def vloss_inference(
    out: dict[str, Any],
    image_sizes: Sequence[tuple[int, int]],
    output_sizes: Sequence[tuple[int, int]],
    is_thing: Sequence[bool] | None = None,
    overlap_threshold: float = 0.8,
    object_threshold: float = 0.8,
    max_instances: int = 100,
) -> list[VLOSSPrediction]:
    """Mask2Former's panoptic and instance inference on VLOSS outputs.

    Panoptic: a query is kept when its best class (softmax over K + 1) is not no-object and its probability
    exceeds ``object_threshold``; each pixel goes to the kept query with the largest score * mask probability; a
    query keeps its segment when it holds at least ``overlap_threshold`` of its own mask (sigmoid >= 0.5) and the
    pixel is in that mask; stuff segments of one class are merged. Instances: the top ``max_instances``
    (query, class) pairs by class probability (over the K classes), things only when ``is_thing`` is given, mask =
    logit > 0, score = class probability * mean mask probability inside the mask.

    Args:
        out: :meth:`VLOSS.forward` output ("logits", "masks").
        image_sizes: (h, w) of each image inside the padded input.
        output_sizes: (H, W) to predict at (e.g. the original image size).
        is_thing: K flags of the vocabulary (None: every class is a thing, nothing merged).
        overlap_threshold, object_threshold, max_instances: see above (Mask2Former's defaults).

    Returns:
        One :class:`VLOSSPrediction` per image.
    """
    logits, masks = out["logits"], out["masks"]
    k = logits.shape[-1] - 1
    things = torch.ones(k, dtype=torch.bool) if is_thing is None else torch.as_tensor(list(is_thing), dtype=torch.bool)
    if things.shape[0] != k:
        raise ValueError(f"is_thing has {things.shape[0]} flags for {k} classes")
    results = []
    for i in range(logits.shape[0]):
        probs = logits[i].float().softmax(-1)  # N x (K + 1)
        mask_logits = resize_valid(masks[i].float(), image_sizes[i], MASK_STRIDE, output_sizes[i])  # N x H x W
        mask_probs = mask_logits.sigmoid()
        h, w = mask_probs.shape[-2:]
        score, label = probs.max(-1)
        keep = (label != k) & (score > object_threshold)
        seg_map = torch.zeros(h, w, dtype=torch.long, device=mask_probs.device)
        segments: list[PanopticSegment] = []
        if bool(keep.any()):
            s, lab, mp = score[keep], label[keep], mask_probs[keep]
            owner = (s[:, None, None] * mp).argmax(0)
            stuff_ids: dict[int, int] = {}
            for q in range(s.shape[0]):
                c = int(lab[q])
                own = mp[q] >= 0.5
                won = owner == q
                mask = won & own
                area, orig = int(won.sum()), int(own.sum())
                if area == 0 or orig == 0 or int(mask.sum()) == 0 or area / orig < overlap_threshold:
                    continue
                thing = bool(things[c])
                if not thing and c in stuff_ids:
                    seg_map[mask] = stuff_ids[c]
                    continue
                segments.append(PanopticSegment(len(segments) + 1, c, float(s[q]), thing))
                seg_map[mask] = len(segments)
                if not thing:
                    stuff_ids[c] = len(segments)
        cls = probs[:, :k]
        top = cls.flatten().topk(min(max_instances, cls.numel()))
        q_idx, labels = top.indices // k, top.indices % k
        sel = things[labels.cpu()].to(labels.device)
        q_idx, labels, scores = q_idx[sel], labels[sel], top.values[sel]
        bin_masks = mask_logits[q_idx] > 0
        mask_score = (mask_probs[q_idx] * bin_masks).flatten(1).sum(1) / (bin_masks.flatten(1).sum(1) + 1e-6)
        scores = scores * mask_score
        order = scores.argsort(descending=True)
        inst = InstancePredictions(masks_to_boxes(bin_masks[order]), scores[order], labels[order], bin_masks[order])
        results.append(VLOSSPrediction(seg_map, segments, inst))
    return results

