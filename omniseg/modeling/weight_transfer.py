"""Mask^X R-CNN weight transfer function: w_seg^c = T(w_det^c; theta) (maskx-rcnn Sec. 3.1, Eq. 1).

T maps a per-class *embedding* to the class-specific weights of the mask predictor (the 1x1 conv
of the mask FCN's last layer, one ``D_mask``-vector per class). The embedding is one of
(maskx-rcnn Sec. 3.1 and Sec. 4.2 "Input to T", Table 1a):

* ``"cls"``: the class's RoI classification weights w_cls^c (C x fc_dim);
* ``"box"``: its box regression weights w_box^c (C x 4 x fc_dim, flattened to C x 4 fc_dim);
* ``"cls+box"``: both concatenated (the paper's default);
* ``"text"``: frozen text embeddings of the class names (the paper's GloVe control; here any frozen
  text encoder, e.g. MiniLM), fixed buffers;
* ``"randn"``: a fixed random Gaussian vector per class (the paper's 'randn' control), fixed buffers.

T is an affine map (``num_layers=1``) or an MLP with 2 or 3 fc layers and ReLU / LeakyReLU in the
hidden layers (Sec. 4.2 "Structure of T", Table 1b: "2-layer, LeakyReLU" is best).

Stop-gradient (Sec. 3.2 "End-to-end joint training"): with ``stop_grad=True`` the detection
weights are detached before T, so the mask loss trains theta but not w_det: only classes in A
would otherwise receive that gradient, which makes the A and B embeddings inhomogeneous.

Choices the paper leaves open (ours, documented here):

* input normalization: the raw w_cls / w_box have very different scales (init std 0.01 vs 0.001,
  and they drift differently in training). ``input_norm="standardize"`` standardizes each part
  (cls, box, text, randn) per class to zero mean / unit variance over its dimensions before the
  concatenation (no learned affine); ``"none"`` feeds the raw weights as the paper writes Eq. 1.
* bias: T predicts only the D_mask weights (the paper's "256-d segmentation parameter vector",
  Sec. 4.1); the mask predictor adds one learned class-agnostic bias (see roi_mask_head.py).
* the last fc layer of T is initialized N(0, 0.001^2) with zero bias, like Mask R-CNN's mask
  predictor, so the predicted weights start near zero for every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TRANSFER_INPUTS = ("cls", "box", "cls+box", "text", "randn")
ACTIVATIONS = ("relu", "leaky_relu")
INPUT_NORMS = ("standardize", "none")


@dataclass
class WeightTransferConfig:
    """Settings of :class:`WeightTransfer`.

    Attributes:
        input: one of :data:`TRANSFER_INPUTS`.
        num_layers: 1 (affine), 2 or 3 fc layers.
        hidden_dim: width of the hidden fc layers (paper: not given; we use 1024 at full size).
        activation: "relu" or "leaky_relu" in the hidden layers.
        leaky_slope: LeakyReLU negative slope.
        stop_grad: detach w_det before T (Sec. 3.2).
        input_norm: "standardize" (per part, per class) or "none" (see the module docstring).
        randn_dim: dimension of the 'randn' control vectors.
        randn_seed: their seed (fixed, saved with the model as a buffer).
    """

    input: str = "cls+box"
    num_layers: int = 2
    hidden_dim: int = 1024
    activation: str = "leaky_relu"
    leaky_slope: float = 0.01
    stop_grad: bool = True
    input_norm: str = "standardize"
    randn_dim: int = 1024
    randn_seed: int = 0


def standardize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-row zero mean / unit variance (layer norm without affine). ``eps`` is tiny because raw box
    regression weights have variances around 1e-6 (init std 0.001).

    Args:
        x: C x D.

    Returns:
        C x D; a constant row becomes 0.
    """
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class WeightTransfer(nn.Module):
    """T: per-class embeddings -> C x D_mask mask-predictor weights.

    Args:
        cfg: :class:`WeightTransferConfig`.
        out_dim: D_mask, the channels of the mask features the predicted weights multiply.
        det_dim: fc_dim of the box head (length of a w_cls row; w_box rows are 4 x det_dim).
        num_classes: C (needed for the fixed 'randn' / 'text' inputs).
        text_embeddings: C x D_text frozen class-name embeddings (required for ``input="text"``).
    """

    def __init__(
        self,
        cfg: WeightTransferConfig,
        *,
        out_dim: int,
        det_dim: int,
        num_classes: int,
        text_embeddings: Tensor | None = None,
    ):
        super().__init__()
        if cfg.input not in TRANSFER_INPUTS:
            raise ValueError(f"transfer input must be one of {TRANSFER_INPUTS}, got {cfg.input!r}")
        if cfg.num_layers not in (1, 2, 3):
            raise ValueError(f"num_layers must be 1 (affine), 2 or 3, got {cfg.num_layers}")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
        if cfg.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {cfg.input_norm!r}")
        self.cfg, self.out_dim, self.det_dim, self.num_classes = cfg, out_dim, det_dim, num_classes
        self.register_buffer("fixed_embeddings", None)
        if cfg.input == "text":
            if text_embeddings is None or text_embeddings.shape[0] != num_classes or text_embeddings.dim() != 2:
                got = None if text_embeddings is None else tuple(text_embeddings.shape)
                raise ValueError(f"input='text' needs {num_classes} x D text embeddings, got {got}")
            self.fixed_embeddings = text_embeddings.detach().float().clone()
        elif cfg.input == "randn":
            g = torch.Generator().manual_seed(cfg.randn_seed)
            self.fixed_embeddings = torch.randn(num_classes, cfg.randn_dim, generator=g)
        in_dim = {"cls": det_dim, "box": 4 * det_dim, "cls+box": 5 * det_dim}.get(cfg.input)
        if in_dim is None:
            in_dim = int(self.fixed_embeddings.shape[1])
        self.in_dim = in_dim
        dims = [in_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [out_dim]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for fc in self.fcs[:-1]:
            nn.init.kaiming_uniform_(fc.weight, a=cfg.leaky_slope if cfg.activation == "leaky_relu" else 0.0)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fcs[-1].weight, std=0.001)
        nn.init.zeros_(self.fcs[-1].bias)

    @property
    def uses_detector_weights(self) -> bool:
        return self.cfg.input in ("cls", "box", "cls+box")

    def embeddings(self, cls_weights: Tensor | None = None, box_weights: Tensor | None = None) -> Tensor:
        """The input of T for every class (after stop-grad and normalization).

        Args:
            cls_weights: C x det_dim classification weights (background row excluded).
            box_weights: C x 4 x det_dim class-specific regression weights.

        Returns:
            C x in_dim.
        """
        kind = self.cfg.input
        parts: list[Tensor] = []
        if kind in ("text", "randn"):
            assert self.fixed_embeddings is not None
            parts.append(self.fixed_embeddings)
        if kind in ("cls", "cls+box"):
            if cls_weights is None:
                raise ValueError(f"transfer input {kind!r} needs the box head's classification weights")
            parts.append(cls_weights)
        if kind in ("box", "cls+box"):
            if box_weights is None:
                raise ValueError(f"transfer input {kind!r} needs class-specific box regression weights "
                                 "(use a class-specific box predictor)")
            parts.append(box_weights.reshape(box_weights.shape[0], -1))
        if self.cfg.stop_grad:  # maskx-rcnn Sec. 3.2: T(stop_grad(w_det); theta)
            parts = [p.detach() for p in parts]
        if self.cfg.input_norm == "standardize":
            parts = [standardize_rows(p.float()) for p in parts]
        x = torch.cat([p.float() for p in parts], dim=1)
        if x.shape != (self.num_classes, self.in_dim):
            raise ValueError(f"transfer inputs have shape {tuple(x.shape)}, expected ({self.num_classes}, {self.in_dim})")
        return x

    def forward(self, cls_weights: Tensor | None = None, box_weights: Tensor | None = None) -> Tensor:
        """Predict the mask weights of every class.

        Args:
            cls_weights: C x det_dim (for 'cls' / 'cls+box').
            box_weights: C x 4 x det_dim (for 'box' / 'cls+box').

        Returns:
            C x out_dim w_seg.
        """
        x = self.embeddings(cls_weights, box_weights)
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < len(self.fcs) - 1:
                x = F.leaky_relu(x, self.cfg.leaky_slope) if self.cfg.activation == "leaky_relu" else F.relu(x)
        return x
