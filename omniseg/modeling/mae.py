"""Masked-autoencoder (MAE) pretraining of a plain ViT encoder (He et al., "Masked Autoencoders
Are Scalable Vision Learners", CVPR 2022).

MAL pretrains its ViT image encoder this way (mal-mask-auto-labeler Sec. 4.4 "Image encoder
variation": "the mask pseudo-labels can be further improved by Mask AutoEncoder (MAE)
pretraining [13]"; Tab. 4, ViT-MAE-Base). :class:`MAE` wraps a
:class:`~omniseg.modeling.backbones.vit.VisionTransformer` and reuses its own parts (patch
embedding, cls token, position embedding, blocks, final norm), so :meth:`MAE.backbone_state_dict`
is the encoder's state dict in timm / MAE names, loadable with
:func:`omniseg.modeling.weights.vit_filter_fn`. The decoder's parameters are named as in MAE's
code (``decoder_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``,
``decoder_pos_embed``, ``mask_token``): the filter drops them if the whole state dict is loaded.

Method (MAE Sec. 3): the image is split into patches; a random subset (1 - mask_ratio) is kept
and encoded *without* mask tokens; a light decoder gets the encoded tokens plus a shared learned
mask token at every removed position (with position embeddings) and predicts the pixels of
every patch; the loss is the mean squared error on the removed patches only, against
per-patch normalized pixels when ``norm_pix_loss``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from omniseg.modeling.backbones.vit import Block, VisionTransformer, resize_pos_embed
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images


def patchify(images: Tensor, p: int) -> Tensor:
    """Non-overlapping p x p patches, flattened as MAE does (row-major patches, (y, x, c) inside).

    Args:
        images: B x C x H x W, H and W multiples of ``p``.
        p: patch size.

    Returns:
        B x N x p*p*C with N = (H/p) * (W/p); entry ``[b, i*(W/p) + j, (y*p + x)*C + c]`` is
        ``images[b, c, i*p + y, j*p + x]``.
    """
    b, c, h, w = images.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = images.reshape(b, c, gh, p, gw, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, gh * gw, p * p * c)


def num_kept(n: int, ratio: float) -> int:
    """How many of ``n`` tokens :func:`random_masking` keeps: ``round(n * (1 - ratio))``, at least 1."""
    return max(1, min(n, round(n * (1.0 - ratio))))


def random_masking(x: Tensor, ratio: float, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a uniformly random subset of tokens per image (MAE Sec. 3 "Masking").

    Each image gets its own permutation (argsort of uniform noise, as MAE's code); the first
    ``K =`` :func:`num_kept` ``(N, ratio)`` tokens of it are kept, in permutation order.

    Args:
        x: B x N x D tokens.
        ratio: fraction of tokens to remove, in [0, 1).
        generator: makes the choice reproducible; its device is where the noise is drawn (a CPU
            generator gives the same masks on every device).

    Returns:
        kept: B x K x D, ``kept[b, k] = x[b, perm_b[k]]``.
        mask: B x N float, 0 for kept and 1 for removed tokens (original order).
        ids_restore: B x N long, the inverse permutation: gathering the concatenation
            ``[kept, removed tokens in permutation order]`` with it restores the original order.
    """
    b, n, d = x.shape
    k = num_kept(n, ratio)
    device = generator.device if generator is not None else x.device
    noise = torch.rand(b, n, generator=generator, device=device).to(x.device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = x.gather(1, ids_shuffle[:, :k, None].expand(-1, -1, d))
    mask = torch.ones(b, n, device=x.device)
    mask[:, :k] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """Mean squared error over the removed patches only (MAE Sec. 3 "Reconstruction target").

    Args:
        pred: B x N x P predicted pixels per patch.
        target: B x N x P true pixels per patch (:func:`patchify` of the normalized images).
        mask: B x N weights, 1 for a removed patch (counted), 0 for a kept one (not counted).
        norm_pix: normalize each target patch by its own mean and standard deviation first (MAE
            Sec. 3, "normalized pixels ... improves representation quality"; Tab. 1d). As MAE's
            code: unbiased variance, ``(t - mean) / sqrt(var + 1e-6)``.

    Returns:
        scalar float32: ``sum_bn mask * mean_P (pred - target)^2 / sum_bn mask`` (0 when nothing
        is masked).
    """
    pred, target = pred.float(), target.float()
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


def sincos_pos_embed(dim: int, grid: int, num_prefix_tokens: int = 1) -> Tensor:
    """Fixed 2-D sine-cosine position embedding as MAE's code (zeros for the cls token).

    Returns:
        1 x (num_prefix_tokens + grid*grid) x dim; half the channels encode the row, half the column.
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position embedding needs a dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")

    def enc(pos: Tensor) -> Tensor:  # grid*grid -> grid*grid x dim/2
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([enc(xs), enc(ys)], dim=1)  # MAE: first half from the w coordinate
    return torch.cat([torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), emb])[None].float()


class MAE(nn.Module):
    """MAE around a ViT encoder, trained with :meth:`forward` (train mode) -> ``{"loss_mae"}``.

    Args:
        encoder: the ViT to pretrain; its ``pos_embed`` is set to the fixed 2-D sine-cosine
            embedding and frozen, as in MAE's code (the exported backbone carries it).
        decoder_dim, decoder_depth, decoder_heads: the decoder's width, blocks and heads (MAE
            Tab. 1a/1b: a narrow, shallow decoder suffices; its default is 512-d x 8 blocks).
        mask_ratio: fraction of patches removed (MAE Tab. 1c / Fig. 5: 75%).
        norm_pix_loss: per-patch normalized target (:func:`mae_loss`).

    Attributes:
        backbone_kind: "vit" (the loader filter for :meth:`backbone_state_dict`).
    """

    backbone_kind = "vit"
    reads_labels = False  # images only: the manifest says no label was read

    def __init__(self, *, encoder: VisionTransformer, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.patch_size, self.mask_ratio, self.norm_pix_loss = encoder.patch_size, mask_ratio, norm_pix_loss
        dim, grid, p = encoder.out_channels, encoder.grid_size, encoder.patch_size
        with torch.no_grad():
            encoder.pos_embed.copy_(sincos_pos_embed(dim, grid))
        encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_dim, grid), requires_grad=False)
        self.decoder_blocks = nn.Sequential(*(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth)))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # MAE's code initializes every Linear so
                nn.init.zeros_(m.bias)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The encoder's weights in timm / MAE names (``patch_embed.proj.weight``, ``cls_token``,
        ``pos_embed``, ``blocks.N...``, ``norm...``), detached CPU copies."""
        return {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}

    def forward_encoder(self, x: Tensor, generator: torch.Generator | None = None
                        ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Encode the kept patches of normalized images.

        Args:
            x: B x 3 x H x W normalized images, H and W multiples of the patch size.

        Returns:
            latent: B x (1 + K) x D (cls token first, after the final norm); mask: B x N (1 =
            removed); ids_restore: B x N; grid: (H/p, W/p).
        """
        enc = self.encoder
        x = enc.patch_embed(x)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        pos = resize_pos_embed(enc.pos_embed, (gh, gw), enc.num_prefix_tokens)
        x, mask, ids_restore = random_masking(x + pos[:, 1:], self.mask_ratio, generator)
        cls = (enc.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return enc.norm(enc.blocks(torch.cat([cls, x], dim=1))), mask, ids_restore, (gh, gw)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """B x (1 + K) x D encoded tokens -> B x N x p*p*3 predicted pixels of every patch."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - x.shape[1] + 1, -1)], dim=1)
        tokens = tokens.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))  # original order
        x = torch.cat([x[:, :1], tokens], dim=1) + resize_pos_embed(self.decoder_pos_embed, grid)
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:]

    def reconstruction_loss(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None,
                            generator: torch.Generator | None = None) -> Tensor:
        """The MAE loss of a uint8 batch (B x 3 x H x W, zero padded; H, W multiples of p).

        Patches reaching into the padding (outside ``image_sizes``) are not counted.
        """
        x = normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes)
        latent, mask, ids_restore, grid = self.forward_encoder(x, generator)
        pred = self.forward_decoder(latent, ids_restore, grid)
        if image_sizes is not None:
            mask = mask * self._valid_patches(image_sizes, grid, mask.device)
        return mae_loss(pred, patchify(x, self.patch_size), mask, self.norm_pix_loss)

    def _valid_patches(self, image_sizes: list[tuple[int, int]], grid: tuple[int, int], device) -> Tensor:
        """B x N: 1 for patches lying wholly inside the image, 0 for those reaching into the padding."""
        p = self.patch_size
        rows, cols = torch.arange(grid[0], device=device), torch.arange(grid[1], device=device)
        valid = [((rows[:, None] + 1) * p <= h) & ((cols[None] + 1) * p <= w) for h, w in image_sizes]
        return torch.stack(valid).flatten(1).float()

    def forward(self, batch) -> dict[str, Tensor]:
        """``omniseg.data.batch.Batch`` -> ``{"loss_mae": scalar}`` (images only; targets unread).

        The batch is zero padded up to a multiple of the patch size if needed.
        """
        images = batch.images
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            images = nn.functional.pad(images, (0, math.ceil(w / p) * p - w, 0, math.ceil(h / p) * p - h))
        return {"loss_mae": self.reconstruction_loss(images, list(batch.image_sizes))}
