"""SimMIM-style masked image modeling for a ResNet trunk: self-supervised pretraining on images
only (issue 12: "pretrain once on the 80 real photos of coco-mini").

Xie et al. 2022, "SimMIM: a Simple Framework for Masked Image Modeling" (Sec. 3), adapted to a
convolutional trunk:

* masking (Sec. 3.2): random 32 x 32 patches at ratio 0.6 -- SimMIM's choice; a patch as large as
  the trunk's output stride means a masked patch cannot be filled in from its own pixels;
* the masked input patches are replaced by a learned mask token before the stem (for a ConvNet the
  token is 3 values, one per image channel; SimMIM's ViT / Swin replace the patch embedding);
* prediction head (Sec. 3.3): a "linear head" on the stride-32 C5 features, a 1x1 conv to
  32 * 32 * 3 values per cell rearranged into pixels by a pixel shuffle;
* target and loss (Sec. 3.4, Eq. 1): the raw normalized pixels, L1 over the masked pixels only.

Only the trunk is kept (:meth:`MaskedImagePretrainer.backbone_state_dict`, torchvision names):
detectors load it with ``model.pretrained=`` (:func:`omniseg.modeling.weights.load_resnet_trunk`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.modeling.backbones.resnet import ResNet
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images


def num_masked(n: int, ratio: float) -> int:
    """How many of ``n`` patches :func:`random_patch_mask` masks: ``round(ratio * n)`` within 0..n."""
    return max(0, min(n, round(ratio * n)))


def random_patch_mask(b: int, h: int, w: int, patch: int, ratio: float,
                      generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """Random patch masks, exactly :func:`num_masked` ``(N, ratio)`` masked patches per image.

    The image is tiled by ``ceil(h / patch) x ceil(w / patch) = N`` patches (a partial patch at the
    bottom / right border counts as one); each image gets its own uniform choice (argsort of uniform
    noise, as SimMIM's and MAE's code).

    Args:
        b, h, w: batch size and image height / width in pixels.
        patch: patch side in pixels.
        ratio: fraction of patches to mask, in [0, 1].
        generator: makes the choice reproducible; the noise is drawn on its device (a CPU generator
            gives the same masks on every device).
        device: where the returned mask lives (default: the generator's, else CPU).

    Returns:
        B x H x W bool, True on masked pixels.
    """
    gh, gw = -(-h // patch), -(-w // patch)
    n = gh * gw
    noise = torch.rand(b, n, generator=generator, device=generator.device if generator is not None else None)
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch in its image's permutation
    grid = (rank < num_masked(n, ratio)).view(b, gh, gw)
    mask = grid.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)[:, :h, :w]
    return mask.to(device) if device is not None else mask


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 reconstruction loss over masked pixels only (SimMIM Eq. 1).

    Args:
        pred: B x C x H x W predicted pixels.
        target: B x C x H x W true (normalized) pixels.
        mask: B x H x W bool (or 0/1), the pixels counted.

    Returns:
        scalar float32: ``sum |pred - target| over masked pixels and channels / (masked pixels * C)``
        (0, with a graph, when nothing is masked).
    """
    m = mask.to(pred.device, torch.float32)[:, None]
    err = (pred.float() - target.float()).abs() * m
    return err.sum() / (m.sum() * pred.shape[1]).clamp(min=1.0)


def valid_pixels(image_sizes: Sequence[tuple[int, int]], h: int, w: int, device: torch.device | None = None) -> Tensor:
    """B x H x W bool, True inside each image's valid (unpadded) ``(height, width)``."""
    valid = torch.zeros(len(image_sizes), h, w, dtype=torch.bool, device=device)
    for i, (ih, iw) in enumerate(image_sizes):
        valid[i, :ih, :iw] = True
    return valid


class MaskedImagePretrainer(nn.Module):
    """ResNet trunk + SimMIM linear head, trained to reconstruct masked patches.

    Args:
        trunk: the ResNet to pretrain (must return ``c5``, stride 32).
        patch: side of a masked patch in pixels (SimMIM: 32).
        mask_ratio: fraction of patches masked (SimMIM: 0.6).
    """

    backbone_kind = "resnet"
    reads_labels = False  # images only: the manifest says no label was read

    def __init__(self, *, trunk: ResNet, patch: int = 32, mask_ratio: float = 0.6):
        super().__init__()
        if "c5" not in trunk.out_channels:
            raise ValueError("the trunk must return c5 (stride 32) for the SimMIM head")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.trunk, self.patch, self.mask_ratio = trunk, int(patch), float(mask_ratio)
        self.stride = int(trunk.strides["c5"])
        # the mask token, in normalized pixel units (SimMIM Sec. 3.2: a learnable vector; 0 = the mean colour)
        self.mask_token = nn.Parameter(torch.zeros(1, 3, 1, 1))
        # SimMIM Sec. 3.3 "linear head": 1x1 conv to stride^2 * 3 values, pixel shuffle back to full size
        self.decoder = nn.Sequential(nn.Conv2d(trunk.out_channels["c5"], self.stride ** 2 * 3, 1),
                                     nn.PixelShuffle(self.stride))
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def reconstruct(self, x: Tensor, mask: Tensor) -> Tensor:
        """Normalized images B x 3 x H x W (H, W multiples of 32) and B x H x W bool mask ->
        B x 3 x H x W predicted pixels (the masked pixels replaced by the mask token at the input)."""
        m = mask[:, None].to(x.dtype)
        x = x * (1 - m) + self.mask_token.to(x.dtype) * m
        return self.decoder(self.trunk(x)["c5"])

    def loss(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """Masked L1 of a padded uint8 batch B x 3 x H x W: the mask is drawn with ``generator``
        and restricted to each image's valid pixels (padding is neither masked nor scored)."""
        b, _, h, w = images.shape
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the trunk stride {self.stride}")
        x = normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes)
        mask = random_patch_mask(b, h, w, self.patch, self.mask_ratio, generator, device=x.device)
        if image_sizes is not None:
            mask &= valid_pixels(image_sizes, h, w, x.device)
        return masked_l1(self.reconstruct(x, mask), x, mask)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Training loss on a batch's images (its targets are never read): {"loss_mim": scalar}."""
        return {"loss_mim": self.loss(batch.images, batch.image_sizes)}

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The trunk's weights in torchvision ResNet names (what ``resnet_filter_fn`` loads)."""
        return {k: v.detach().clone() for k, v in self.trunk.state_dict().items()}
