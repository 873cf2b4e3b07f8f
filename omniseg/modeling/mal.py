"""MAL, the Mask Auto-Labeler (mal-mask-auto-labeler, phase 1): masks from boxes alone.

Training (Sec. 3): every exact, non-crowd box of a batch is randomly expanded (Sec. 3.3, θ), its
region cropped and resized to Hc x Wc (Sec. 3.1, :mod:`omniseg.data.box_crops`); the task (student)
network -- a plain ViT encoder (Sec. 3.2) and a mask decoder (:mod:`omniseg.modeling.mal_decoders`) --
segments the photometrically augmented crop, the teacher (an EMA of the student, momentum 0.996,
Sec. 3.2 / 4.2) the plain one. Loss (Eq. 1) = α_mil · MIL loss (Eq. 2: row / column bags, positives
cross the box, negatives the expanded rows / columns) + α_crf · CRF loss (Eq. 3-5: dice to the
mean-field refinement of m^a = (m + m^t) / 2). Ground-truth masks are never read.

The teacher belongs to the model (``teacher_*`` parameters, no gradient, saved with the checkpoint);
its EMA step follows every optimizer step (:meth:`MAL.after_optimizer_step`, called by the trainer).

Prediction: each box is expanded by the fixed test-time margin (θ_test = 0.6 split evenly: every
half-extent x 1.3, the authors' ``test_margin_rate``), cropped, segmented by the student and pasted
back into the image; the mask is ``prob >= mask_threshold`` and its score the mean probability
inside it (0 for an empty mask).

Crop vs whole image (``model.input``; issue 13's ablation of Sec. 3.1 "Benefits of using RoI inputs"). The
paper argues for RoI inputs against the untrimmed images that earlier box-supervised methods train on
(BBTP [4], BoxInst [5], DiscoBox [7], ...): enlarged RoIs give small objects resolution, and the network need
not detect. It reports no table for this comparison, so ``image`` is our construction of the closest baseline:
everything of MAL is kept (encoder, decoder, box expansion θ, the Hc x Wc grid of b' on which the MIL / CRF
losses and the CRF's colours live, EMA teacher, augmentations), only the encoder input changes. Each image is
resized so its longer side is ``image_size``, padded to a square and encoded once (student: augmented, teacher:
plain); each box's decoder input is RoIAlign (Mask R-CNN's, aligned, adaptive sampling; BBTP [4] is Mask R-CNN
based) of that map over b', at the grid the crop path's decoder sees (Appendix A.2 per size class, or
Hc / stride). Boxes are given, so the detection half of the paper's argument is not part of the ablation: it
isolates the resolution half.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.data.box_crops import (
    box_masks_in_crops,
    crop_and_resize,
    expand_boxes,
    fixed_expansion,
    sample_expansion,
    size_classes,
    student_augment,
    whole_images,
)
from omniseg.engine.config import ConfigError, bounded
from omniseg.modeling.mal_decoders import DecoderKind, build_decoder
from omniseg.modeling.norm import NormKind
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD
from omniseg.ops.crf_loss import crf_loss
from omniseg.ops.masks import paste_masks_in_image
from omniseg.ops.mil_loss import mil_loss
from omniseg.ops.roi_align import roi_align

EncoderKind = Literal["vit_small", "vit_base", "resnet18", "resnet50"]
InputKind = Literal["crop", "image"]


@dataclass
class MALConfig:
    """Model section of a MAL experiment (defaults: the paper's, Sec. 3 / 4.2 / Appendix A.2)."""

    encoder: EncoderKind = "vit_base"  # Sec. 4.4 / Table 4: ViT-MAE-Base is the best labeler
    patch_size: int = bounded(16, ge=1)  # ViT only
    depth: int = bounded(0, ge=0)  # ViT blocks (0: the encoder's own, 12; fewer for smoke tests)
    pretrained: str = ""  # MAE backbone.safetensors (``omniseg pretrain``), timm / MAE ViT or ResNet weights
    norm: NormKind = "GN"  # ResNet encoders only
    width: int = bounded(64, ge=1)  # ResNet encoders only: stem width (the committed trunk is 16)
    crop_size: int = bounded(512, ge=16)  # Hc = Wc (Sec. 4.2: 512)
    # Sec. 3.1 RoI inputs ("crop", the paper's) or the whole-image ablation ("image", module docstring)
    input: InputKind = "crop"
    image_size: int = bounded(512, ge=16)  # input "image": the longer side, padded to a square (ViT: x patch)
    decoder: DecoderKind = "attention"  # Table 3: attention > FCN ~ FC
    decoder_dim: int = bounded(256, ge=1)  # Sec. 3.2: K and V output 256 channels
    fc_hidden: int = bounded(2048, ge=1)  # Sec. 4.5: the FC decoder's hidden width
    # Appendix A.2: encoder map resized to crop/16, /8, /4 for small / medium / large boxes
    scale_by_size: bool = True
    size_limits: tuple[float, float] = bounded((32.0, 96.0), gt=0)  # box side limits (area limits squared)
    size_strides: tuple[int, int, int] = bounded((16, 8, 4), ge=1)
    theta: float = bounded(1.2, ge=0)  # Sec. 3.3 expansion bound (Table 5: best at 1.2; 0 = no expansion)
    test_theta: float = bounded(0.6, ge=0)  # prediction margin (authors' code: test_margin_rate 0.6)
    mil_weight: float = bounded(4.0, ge=0)  # α_mil (Sec. 4.2)
    crf_weight: float = bounded(0.5, ge=0)  # α_crf (Sec. 4.2)
    use_crf: bool = True  # ablation: CRF loss off
    crf_zeta: float = bounded(0.5, gt=0)  # ζ (Sec. 4.2)
    crf_omega: float = bounded(2.0, ge=0)  # ω (Sec. 4.2)
    ema_teacher: bool = True  # ablation: off = m^t is the student's own (detached) prediction
    ema_momentum: float = bounded(0.996, ge=0, lt=1)  # Sec. 4.2
    student_aug: bool = True  # Sec. 4.2: colour jitter, grayscale, blur for the task network only
    max_crops: int = bounded(32, ge=0)  # crops per training batch, a random subset (Sec. 4.2: batch 32; 0 = all)
    min_box_size: float = bounded(2.0, ge=0)  # boxes with a shorter side (pixels) are not trained on
    mask_threshold: float = bounded(0.5, gt=0, lt=1)


def build_encoder(cfg: MALConfig) -> tuple[nn.Module, int, int]:
    """(encoder, channels, stride): a plain ViT (Sec. 3.2) or a ResNet trunk up to c4 (stride 16)."""
    if cfg.encoder.startswith("vit"):
        from omniseg.modeling.backbones.vit import VisionTransformer

        for key in ("crop_size",) + (("image_size",) if cfg.input == "image" else ()):
            if getattr(cfg, key) % cfg.patch_size:
                raise ConfigError(f"model.{key} ({getattr(cfg, key)}) must be a multiple of model.patch_size "
                                  f"({cfg.patch_size})")
        dim, heads = (384, 6) if cfg.encoder == "vit_small" else (768, 12)  # timm ViT-S / ViT-B
        vit = VisionTransformer(img_size=cfg.image_size if cfg.input == "image" else cfg.crop_size,
                                patch_size=cfg.patch_size, embed_dim=dim,
                                depth=cfg.depth or 12, num_heads=heads)
        if cfg.pretrained:
            from omniseg.modeling.weights import load_pretrained, vit_filter_fn

            load_pretrained(vit, cfg.pretrained, vit_filter_fn)
        return vit, vit.out_channels, cfg.patch_size
    from omniseg.modeling.backbones.resnet import build_resnet18, build_resnet50

    net = (build_resnet18 if cfg.encoder == "resnet18" else build_resnet50)(norm=cfg.norm, width=cfg.width,
                                                                                out_features=("c4",))
    if cfg.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(net, cfg.pretrained)
    return _C4(net), net.out_channels["c4"], 16


class _C4(nn.Module):
    """A ResNet trunk returning its c4 map as a tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["c4"]


def normalize_crops(crops01: Tensor, valid: Tensor) -> Tensor:
    """The task network's input: ``(crop - mean) / std`` (ImageNet, RGB in [0, 1]), padding (outside
    the image) 0, i.e. the mean colour."""
    mean = crops01.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1) / 255
    std = crops01.new_tensor(PIXEL_STD).view(1, 3, 1, 1) / 255
    return (crops01 - mean) / std * valid[:, None]


def box_crops(images: Tensor, image_sizes: Sequence[tuple[int, int]], boxes: Sequence[Tensor], betas: Tensor,
              crop_size: int, size_limits: Sequence[float]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(crops in [0, 1], valid masks, box masks, size classes, crop boxes) of all ``boxes`` (one tensor per
    image of the uint8 batch ``images``) expanded by ``betas`` (N x 4, :func:`~omniseg.data.box_crops.expand_boxes`),
    cropped and resized to ``crop_size`` (Sec. 3.1); size classes: Appendix A.2."""
    dev = images.device
    flat = torch.cat([b.float() for b in boxes]).to(dev).reshape(-1, 4)
    index = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]).to(dev)
    crop_boxes = expand_boxes(flat, betas.to(dev))
    size = (crop_size, crop_size)
    crops, valid = crop_and_resize(images.float() / 255, index, crop_boxes, size, image_sizes)
    return crops, valid, box_masks_in_crops(flat, crop_boxes, size), size_classes(flat, size_limits), crop_boxes


def paste_and_score(probs: Tensor, crop_boxes: Tensor, image_size: tuple[int, int], threshold: float
                    ) -> tuple[Tensor, Tensor]:
    """(N x H x W bool masks, N scores): crop probabilities pasted back into the image, ``>= threshold``,
    scored by the mean probability inside the mask (0 for an empty mask)."""
    soft = paste_masks_in_image(probs, crop_boxes, image_size, threshold=None)
    m = soft >= threshold
    return m, (soft * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1)


class MaskNet(nn.Module):
    """Encoder E + decoder D (the task network; the teacher is a copy). ``forward(crops, sizes)`` ->
    N x Hc x Wc mask logits, ``sizes`` the Appendix A.2 size class of each crop's box;
    ``forward_rois(images, rois, sizes)``: the same from whole images (``model.input=image``)."""

    def __init__(self, cfg: MALConfig):
        super().__init__()
        self.encoder, channels, self.stride = build_encoder(cfg)
        self.crop_size, self.scale_by_size = cfg.crop_size, cfg.scale_by_size and cfg.decoder != "fc"
        self.size_strides, self.image_size = tuple(cfg.size_strides), cfg.image_size
        self.grid = cfg.crop_size // self.stride
        self.decoder = build_decoder(cfg.decoder, channels, cfg.decoder_dim, in_grid=self.grid,
                                     out_size=max(cfg.crop_size // 4, 1), fc_hidden=cfg.fc_hidden)

    def side(self, size_class: int | None) -> int:
        """The decoder's input grid: Hc / size stride of ``size_class`` (Appendix A.2), or (None) Hc / stride,
        the grid of an encoded crop."""
        return self.grid if size_class is None else max(self.crop_size // self.size_strides[size_class], 1)

    def _logits(self, x: Tensor) -> Tensor:
        """fp32 logits at the crop size (the losses and the CRF stay fp32 when the decoder runs under bf16 autocast)."""
        size = (self.crop_size, self.crop_size)
        return F.interpolate(self.decoder(x).float(), size=size, mode="bilinear", align_corners=False)[:, 0]

    def decode(self, feats: Tensor, size_class: int | None = None) -> Tensor:
        """N x Hc x Wc mask logits of encoder maps ``feats``, first resized to the grid of ``size_class``
        (Appendix A.2; None: as they are)."""
        if size_class is not None:
            side = self.side(size_class)
            feats = F.interpolate(feats, size=(side, side), mode="bilinear", align_corners=False)
        return self._logits(feats)

    def roi_features(self, feats: Tensor, rois: Tensor, side: int) -> Tensor:
        """K x D x side x side: RoIAlign (aligned, adaptive sampling) of ``rois`` (K x 5: image index, XYXY in
        canvas pixels) on the encoder maps ``feats`` of ``image_size`` canvases."""
        return roi_align(feats, rois, side, spatial_scale=feats.shape[-1] / self.image_size, sampling_ratio=0,
                         aligned=True)

    def decode_rois(self, feats: Tensor, rois: Tensor, sizes: Tensor | None = None) -> Tensor:
        """K x Hc x Wc mask logits of ``rois`` (as :meth:`roi_features`) from the whole images' encoder maps,
        pooled at the grid of each RoI's size class (Appendix A.2) or at Hc / stride."""
        if not self.scale_by_size or sizes is None:
            return self._logits(self.roi_features(feats, rois, self.side(None)))
        out = feats.new_zeros(rois.shape[0], self.crop_size, self.crop_size, dtype=torch.float32)
        for k in range(len(self.size_strides)):
            idx = (sizes == k).nonzero().flatten()
            if idx.numel():
                out[idx] = self._logits(self.roi_features(feats, rois[idx], self.side(k)))
        return out

    def forward_rois(self, images: Tensor, rois: Tensor, sizes: Tensor | None = None) -> Tensor:
        """The whole-image path: one encoder pass over ``images`` (B x 3 x S x S normalized canvases), then
        :meth:`decode_rois`."""
        return self.decode_rois(self.encoder(images), rois, sizes)

    def forward(self, crops: Tensor, sizes: Tensor | None = None) -> Tensor:
        feats = self.encoder(crops)
        if not self.scale_by_size or sizes is None:
            return self.decode(feats)
        out = feats.new_zeros(crops.shape[0], self.crop_size, self.crop_size, dtype=torch.float32)
        for k in range(len(self.size_strides)):
            idx = (sizes == k).nonzero().flatten()
            if idx.numel():
                out[idx] = self.decode(feats[idx], k)
        return out


class MAL(nn.Module):
    """The labeler: student :class:`MaskNet`, EMA teacher, losses, and box-prompted prediction."""

    def __init__(self, cfg: MALConfig):
        super().__init__()
        self.cfg = cfg
        self.student = MaskNet(cfg)
        self.teacher = copy.deepcopy(self.student) if cfg.ema_teacher else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.teacher.eval()

    def train(self, mode: bool = True) -> MAL:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # never in training mode (drop-path etc.)
        return self

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Called by the trainer after each optimizer step: the teacher's EMA step."""
        self.update_teacher()

    def update_teacher(self) -> None:
        """One EMA step: teacher = m * teacher + (1 - m) * student (Sec. 3.2, m = ema_momentum)."""
        if self.teacher is None:
            return
        m = self.cfg.ema_momentum
        for t, s in zip(self.teacher.state_dict().values(), self.student.state_dict().values()):
            if t.dtype.is_floating_point:
                t.mul_(m).add_(s.detach().to(t.dtype), alpha=1 - m)
            else:
                t.copy_(s)

    def crops(self, images: Tensor, image_sizes: Sequence[tuple[int, int]], boxes: Sequence[Tensor],
              betas: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """:func:`box_crops` with this model's crop size and size limits."""
        return box_crops(images, image_sizes, boxes, betas, self.cfg.crop_size, self.cfg.size_limits)

    def image_rois(self, images: Tensor, image_sizes: Sequence[tuple[int, int]], boxes: Sequence[Tensor],
                   crop_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The whole-image inputs (``model.input=image``): (canvases in [0, 1] of the images that hold a box,
        their valid masks, K x 5 RoIs of ``crop_boxes`` in canvas pixels, indexed into those canvases)."""
        index = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]).to(images.device)
        used, index = index.unique(return_inverse=True)
        canvas, valid, scales = whole_images(images[used].float() / 255, [image_sizes[int(i)] for i in used],
                                             self.cfg.image_size)
        rois = torch.cat([index[:, None].to(crop_boxes.dtype), crop_boxes * scales[index].repeat(1, 2)], dim=1)
        return canvas, valid, rois

    def _train_boxes(self, batch: Batch) -> list[Tensor]:
        """Exact, non-crowd boxes (sides >= min_box_size), at most ``max_crops`` in all (random)."""
        c = self.cfg
        boxes = []
        for t in batch.targets:
            wh = t.boxes[:, 2:] - t.boxes[:, :2]
            keep = t.has_box & t.box_exact & ~t.is_crowd & (wh.min(dim=1).values >= max(c.min_box_size, 1e-3))
            boxes.append(t.boxes[keep])
        total = sum(len(b) for b in boxes)
        if c.max_crops and total > c.max_crops:
            chosen = torch.zeros(total, dtype=torch.bool)
            chosen[torch.randperm(total)[: c.max_crops]] = True
            parts = chosen.split([len(b) for b in boxes])
            boxes = [b[p.to(b.device)] for b, p in zip(boxes, parts)]
        return boxes

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Losses on the crops of the batch's boxes (Eq. 1); masks in ``batch`` are never read.

        Returns:
            {"loss_mil", "loss_crf" (when on), "num_crops" (logged, not optimized)}.
        """
        c = self.cfg
        boxes = self._train_boxes(batch)
        n = sum(len(b) for b in boxes)
        if n == 0:  # no box to learn from: a zero loss that still has a graph
            zero = sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return {"loss_mil": zero, **({"loss_crf": zero} if c.use_crf else {}), "num_crops": torch.zeros(())}
        betas = sample_expansion(n, c.theta).to(batch.images.device)
        crops, valid, box_masks, sizes, crop_boxes = self.crops(batch.images, batch.image_sizes, boxes, betas)
        if c.input == "crop":
            student_in = student_augment(crops) if c.student_aug else crops
            probs = self.student(normalize_crops(student_in, valid), sizes).sigmoid()
        else:  # one encoder pass per image, RoIAlign over each b' (module docstring); crops feed the CRF only
            canvas, canvas_valid, rois = self.image_rois(batch.images, batch.image_sizes, boxes, crop_boxes)
            student_in = student_augment(canvas) if c.student_aug else canvas
            probs = self.student.forward_rois(normalize_crops(student_in, canvas_valid), rois, sizes).sigmoid()
        losses = {"loss_mil": c.mil_weight * mil_loss(probs, box_masks, valid=valid)}
        if c.use_crf:
            with torch.no_grad():
                if self.teacher is None:
                    t_probs = probs.detach()
                elif c.input == "crop":
                    t_probs = self.teacher(normalize_crops(crops, valid), sizes).sigmoid()
                else:
                    t_probs = self.teacher.forward_rois(normalize_crops(canvas, canvas_valid), rois, sizes).sigmoid()
            losses["loss_crf"] = c.crf_weight * crf_loss(probs, t_probs, crops, box_masks=box_masks, zeta=c.crf_zeta,
                                                         omega=c.crf_omega, valid=valid)
        losses["num_crops"] = torch.tensor(float(n))
        return losses

    @torch.no_grad()
    def predict_masks(self, images: Tensor, image_sizes: Sequence[tuple[int, int]], boxes: Sequence[Tensor],
                      chunk: int = 32) -> list[tuple[Tensor, Tensor]]:
        """Masks for given boxes (module docstring: test-time margin, paste back, score); ``model.input=image``
        encodes each image once and decodes its boxes' RoIs.

        Args:
            images: B x 3 x Hp x Wp uint8 (padded).
            image_sizes: B valid (H, W).
            boxes: B tensors Ni x 4 (XYXY pixels).
            chunk: crops (RoIs) per student forward (decoder pass).

        Returns:
            B pairs (Ni x H x W bool masks, Ni mask scores).
        """
        c = self.cfg
        out = []
        for i, (b, (h, w)) in enumerate(zip(boxes, image_sizes)):
            b = b.float().reshape(-1, 4).to(images.device)
            masks = torch.zeros(len(b), h, w, dtype=torch.bool, device=images.device)
            scores = torch.zeros(len(b), device=images.device)
            if c.input == "image" and len(b):
                canvas, canvas_valid, scales = whole_images(images[i: i + 1].float() / 255, [(h, w)], c.image_size)
                feats = self.student.encoder(normalize_crops(canvas, canvas_valid))
            for s in range(0, len(b), chunk):
                part = b[s: s + chunk]
                betas = fixed_expansion(len(part), c.test_theta)
                if c.input == "image":
                    crop_boxes = expand_boxes(part, betas.to(part.device))
                    rois = torch.cat([crop_boxes.new_zeros(len(part), 1), crop_boxes * scales.repeat(1, 2)], dim=1)
                    probs = self.student.decode_rois(feats, rois, size_classes(part, c.size_limits)).sigmoid()
                else:
                    crops, valid, _, sizes, crop_boxes = self.crops(images[i: i + 1], [(h, w)], [part], betas)
                    probs = self.student(normalize_crops(crops, valid), sizes).sigmoid()
                masks[s: s + chunk], scores[s: s + chunk] = paste_and_score(probs, crop_boxes, (h, w),
                                                                            c.mask_threshold)
            out.append((masks, scores))
        return out


def build_mal(cfg: MALConfig) -> MAL:
    """The model of a MAL experiment's ``model`` section (the teacher starts as a copy of the
    student after its pretrained weights are loaded)."""
    return MAL(cfg)
