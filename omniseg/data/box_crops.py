"""RoI inputs of the Mask Auto-Labeler (mal-mask-auto-labeler Sec. 3.1 / 3.3): random box expansion,
crop + resize to Hc x Wc, the box mask and the valid mask in crop coordinates, the student-only
photometric augmentations (Sec. 4.2), the object-size classes of Appendix A.2, and the untrimmed-image
input of the crop-vs-image ablation (:func:`whole_images`).

Coordinates are continuous pixels: pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``, its center is
``(x + 0.5, y + 0.5)``. Crop pixel ``j`` of a crop box ``(cx0, .., cx1, ..)`` resized to ``Wc`` columns
reads the image at ``x = cx0 + (j + 0.5) (cx1 - cx0) / Wc`` -- the convention of
:func:`omniseg.ops.masks.paste_masks_in_image`, which pastes a crop's mask back exactly.

Box expansion (Sec. 3.3). The paper draws ``θ_x, θ_y ~ U[0, θ]``, ``β_x ~ U[0, θ_x]``,
``β_y ~ U[0, θ_y]``, ``β'_x = θ_x - β_x``, ``β'_y = θ_y - β_y``, and prints

    b' = (x_c + β_x (x0 - x_c), y_c + β'_x (y0 - y_c), x_c + β_y (x1 - x_c), y_c + β'_y (y1 - y_c)).

Taken literally this (a) *shrinks* the box for β < 1 (β = 0 collapses it to its center, so θ = 0
could not mean "no expansion") and (b) pairs β'_x with y0 and β_y with x1, splitting the x budget
θ_x between an x side and a y side, against the text ("θ_x ... for the x-direction"). We implement
the reading the text and the authors' code (NVlabs/mask-auto-labeler, datasets/data_aug.py
``RandomCropV2._expand_box``: each half-extent times ``1 + margin``, the margins of opposite sides
gated by ``g`` and ``1 - g``) agree on:

    x0' = x_c + (1 + β_x)(x0 - x_c),   x1' = x_c + (1 + β'_x)(x1 - x_c),
    y0' = y_c + (1 + β_y)(y0 - y_c),   y1' = y_c + (1 + β'_y)(y1 - y_c),

so θ_x is split between the left and the right side, b' always contains b, and θ = 0 gives b' = b.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Appendix A.2: small / medium / large objects by box area (COCO's 32^2 and 96^2 pixel limits)
SIZE_LIMITS = (32.0, 96.0)


def sample_expansion(n: int, theta: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
    """Random expansion rates (Sec. 3.3): N x 4 ``(β_x, β'_x, β_y, β'_y)``.

    ``θ_x, θ_y ~ U[0, θ]``; ``β_x ~ U[0, θ_x]``, ``β'_x = θ_x - β_x``; the same for y.
    """
    u = torch.rand(n, 4, generator=generator, device=device, dtype=torch.float32)
    theta_x, theta_y = u[:, 0] * theta, u[:, 1] * theta
    beta_x, beta_y = u[:, 2] * theta_x, u[:, 3] * theta_y
    return torch.stack([beta_x, theta_x - beta_x, beta_y, theta_y - beta_y], dim=1)


def fixed_expansion(n: int, theta: float, device: torch.device | str = "cpu") -> Tensor:
    """The deterministic (test-time) expansion: θ split evenly, every side ``θ / 2``."""
    return torch.full((n, 4), theta / 2, device=device)


def expand_boxes(boxes: Tensor, betas: Tensor) -> Tensor:
    """Expanded boxes ``b'`` (module docstring formula) of N x 4 XYXY ``boxes`` with N x 4
    ``(β_x, β'_x, β_y, β'_y)``."""
    xc, yc = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    # x_c + (1 + β)(x0 - x_c) written as x0 + β (x0 - x_c): exactly b where β = 0
    return torch.stack([
        boxes[:, 0] + betas[:, 0] * (boxes[:, 0] - xc),
        boxes[:, 1] + betas[:, 2] * (boxes[:, 1] - yc),
        boxes[:, 2] + betas[:, 1] * (boxes[:, 2] - xc),
        boxes[:, 3] + betas[:, 3] * (boxes[:, 3] - yc),
    ], dim=1)


def _sample_coords(crop_boxes: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Image x (N x Wc) and y (N x Hc) coordinates read by each crop pixel center."""
    hc, wc = size
    t_x = (torch.arange(wc, device=crop_boxes.device, dtype=torch.float32) + 0.5) / wc
    t_y = (torch.arange(hc, device=crop_boxes.device, dtype=torch.float32) + 0.5) / hc
    xs = crop_boxes[:, 0:1] + t_x[None] * (crop_boxes[:, 2:3] - crop_boxes[:, 0:1])
    ys = crop_boxes[:, 1:2] + t_y[None] * (crop_boxes[:, 3:4] - crop_boxes[:, 1:2])
    return xs, ys


def crop_and_resize(images: Tensor, image_index: Tensor, crop_boxes: Tensor, size: tuple[int, int],
                    image_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Crop ``crop_boxes`` out of a padded batch and resize each crop to ``size`` (bilinear).

    Args:
        images: B x C x Hp x Wp float images (padded batch, each image at the top-left).
        image_index: N long, the image of each crop.
        crop_boxes: N x 4 XYXY pixels (may reach outside the image).
        size: (Hc, Wc).
        image_sizes: B valid (H, W) inside the padding.

    Returns:
        (N x C x Hc x Wc crops, N x Hc x Wc bool valid mask). Crop pixels whose center falls outside
        the valid image are padding: zero in the crop and False in the valid mask, so the model can
        blank them and the losses ignore them.
    """
    hp, wp = images.shape[-2:]
    xs, ys = _sample_coords(crop_boxes.float(), size)
    hc, wc = size
    grid = torch.stack([(2 * xs / wp - 1)[:, None, :].expand(-1, hc, -1),
                        (2 * ys / hp - 1)[:, :, None].expand(-1, -1, wc)], dim=-1)
    crops = F.grid_sample(images[image_index], grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    lim = torch.tensor(image_sizes, device=crop_boxes.device, dtype=torch.float32)[image_index]  # N x (H, W)
    in_x = (xs >= 0) & (xs < lim[:, 1:2])
    in_y = (ys >= 0) & (ys < lim[:, 0:1])
    valid = in_y[:, :, None] & in_x[:, None, :]
    return crops, valid


def box_masks_in_crops(boxes: Tensor, crop_boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """N x Hc x Wc float {0, 1}: crop pixels whose center lies in the box (the object's box in crop
    coordinates; the positive MIL bags cross it, Sec. 3.3). The pixel holding the box center is always
    on, so a box thinner than a crop pixel still has one row and one column."""
    xs, ys = _sample_coords(crop_boxes.float(), size)
    b = boxes.float()

    def inside(coords: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        mid = (lo + hi) / 2
        nearest = (coords - mid[:, None]).abs().argmin(dim=1, keepdim=True)
        hit = (coords >= lo[:, None]) & (coords <= hi[:, None])
        return hit.scatter(1, nearest, True)

    in_x, in_y = inside(xs, b[:, 0], b[:, 2]), inside(ys, b[:, 1], b[:, 3])
    return (in_y[:, :, None] & in_x[:, None, :]).float()


def whole_images(images: Tensor, image_sizes: Sequence[tuple[int, int]], size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The untrimmed-image input of the crop-vs-image ablation (``model.input=image``): each image's valid
    region resized (bilinear, antialiased) so that its longer side is ``size``, at the top-left of a
    ``size`` x ``size`` canvas.

    Args:
        images: B x C x Hp x Wp float images (padded batch, each image at the top-left).
        image_sizes: B valid (H, W).
        size: the canvas side.

    Returns:
        (B x C x size x size canvases, zero outside the image; B x size x size bool valid mask; B x 2 float
        (sx, sy): canvas pixels per image pixel along x and y, so image box ``(x0, y0, x1, y1)`` is canvas box
        ``(sx x0, sy y0, sx x1, sy y1)``).
    """
    b, c = images.shape[:2]
    canvas = images.new_zeros(b, c, size, size)
    valid = torch.zeros(b, size, size, dtype=torch.bool, device=images.device)
    scales = torch.zeros(b, 2, device=images.device)
    for i, (h, w) in enumerate(image_sizes):
        s = size / max(h, w)
        nh, nw = min(max(round(h * s), 1), size), min(max(round(w * s), 1), size)
        canvas[i, :, :nh, :nw] = F.interpolate(images[i: i + 1, :, :h, :w], size=(nh, nw), mode="bilinear",
                                               align_corners=False, antialias=True)[0]
        valid[i, :nh, :nw] = True
        scales[i] = torch.tensor([nw / w, nh / h])
    return canvas, valid, scales


def size_classes(boxes: Tensor, limits: Sequence[float] = SIZE_LIMITS) -> Tensor:
    """N long: 0 small (area < limits[0]^2), 1 medium (< limits[1]^2), 2 large (Appendix A.2)."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return (area >= limits[0] ** 2).long() + (area >= limits[1] ** 2).long()


# --------------------------------------------------------------------------- student augmentations


def _gray(x: Tensor) -> Tensor:
    """N x 3 x H x W -> N x 1 x H x W luma (ITU-R 601)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-crop ``sigma`` (N,), reflect padding."""
    n, c, h, w = x.shape
    radius = max(int(torch.ceil(3 * sigma.max()).item()), 1)
    radius = min(radius, (min(h, w) - 1))  # reflect padding needs radius < size
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C) x K
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def student_augment(crops: Tensor, jitter: float = 0.4, p_jitter: float = 0.8, p_gray: float = 0.2,
                    p_blur: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
                    generator: torch.Generator | None = None) -> Tensor:
    """The task (student) network's extra augmentations (Sec. 4.2: "random color jittering, random
    grey-scale conversion, and random Gaussian blur"; the teacher sees the plain crop).

    The paper gives no magnitudes; these are MoCo v2's (the EMA-teacher recipe MAL cites): with
    probability ``p_jitter`` brightness, contrast and saturation factors ~ U[1 - jitter, 1 + jitter]
    (no hue jitter), grayscale with ``p_gray``, Gaussian blur with ``p_blur`` and sigma ~ U[blur_sigma]
    in pixels of a 224-px crop (scaled to the crop size).

    Args:
        crops: N x 3 x H x W in [0, 1].

    Returns:
        N x 3 x H x W in [0, 1].
    """
    n, dev = crops.shape[0], crops.device
    if n == 0:
        return crops
    u = torch.rand(n, 7, generator=generator, device="cpu").to(dev)

    def pick(p: Tensor) -> Tensor:
        return p.view(n, 1, 1, 1)

    x = crops
    on = pick(u[:, 0] < p_jitter)
    f = 1 - jitter + 2 * jitter * u[:, 1:4]  # brightness, contrast, saturation factors
    y = x * pick(f[:, 0])
    y = (pick(f[:, 1]) * y + (1 - pick(f[:, 1])) * _gray(y).mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    y = (pick(f[:, 2]) * y + (1 - pick(f[:, 2])) * _gray(y)).clamp(0, 1)
    x = torch.where(on, y.clamp(0, 1), x)
    x = torch.where(pick(u[:, 4] < p_gray), _gray(x).expand_as(x), x)
    blur = u[:, 5] < p_blur
    if bool(blur.any()):
        scale = min(x.shape[-2:]) / 224
        sigma = (blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * u[:, 6]) * scale
        x = torch.where(pick(blur), _gaussian_blur(x, sigma.clamp(min=1e-3)), x)
    return x.clamp(0, 1)
