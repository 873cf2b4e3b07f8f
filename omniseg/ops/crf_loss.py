"""MAL's CRF loss: mean-field refinement of the averaged student / teacher mask, then dice to the refinement
(Lan et al., MAL, Sec. 3.3 "Conditional Random Field Loss", Eq. 3-5; Appendix A.1, Algorithm 1).

Energy (Eq. 3): E(l | m^a, I) = unary(l | m^a) + pairwise(l | I), with the pairwise term of Eq. 4 over the
8 immediate neighbours N(i) of each pixel:

    psi(X | I) = sum_{i, j in N(i)} omega * exp(-|I_i - I_j|^2 / (2 zeta^2)) * [X_i != X_j]

Mean field (Krähenbühl & Koltun 2011, the paper's [56]) for two labels with the Potts term above gives

    Q_i(fg) = sigmoid( logit(m^a_i) + sum_{j in N(i)} K_ij (2 Q_j(fg) - 1) ),   K_ij = omega exp(-|I_i - I_j|^2 / 2 zeta^2)

which is Algorithm 1 read in the two-label form: l <- m (line 4); message passing l_i + sum_j K_ij l_j (line 9)
for the foreground and the background label; phi (line 13) keeps l in [0, 1]; lambda (line 15) thresholds at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.modeling.preprocess import PIXEL_STD
from omniseg.ops.losses import reduce_instance_losses, squared_dice_loss

# The 8 immediate neighbours of Eq. 4 (MAL Fig. 2), as (dy, dx) steps.
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
_EPS = 1e-6  # probabilities are clamped to [eps, 1 - eps] before the logit of the unary


def _shifted(padded: Tensor, dy: int, dx: int, pad: int, h: int, w: int) -> Tensor:
    """value at (y + dy, x + dx) for every (y, x) of the H x W grid, from a tensor padded by ``pad`` on both sides."""
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def pairwise_kernels(
    images: Tensor,
    zeta: float = 0.5,
    omega: float = 2.0,
    dilation: int = 1,
    valid: Tensor | None = None,
    image_std: float | Sequence[float] | None = None,
) -> Tensor:
    """K_ij = omega * exp(-|I_i - I_j|^2 / (2 zeta^2)) (MAL Eq. 4) to each of the 8 neighbours.

    Args:
        images: N x C x H x W colours in [0, 1]; divided by ``image_std`` per channel before the distance.
        zeta, omega: Eq. 4's bandwidth and weight.
        dilation: neighbours are ``dilation`` pixels away (1: the paper's immediate neighbours).
        valid: N x H x W bool, pixels inside the image; a padding pixel is nobody's neighbour.
        image_std: colour scale; None: the ImageNet std (``PIXEL_STD / 255``) for 3 channels, else 1.

    Returns:
        8 x N x H x W, in the order of :data:`NEIGHBOURS`; 0 where the neighbour is outside the grid or invalid.
    """
    n, c, h, w = images.shape
    if image_std is None:
        image_std = [s / 255 for s in PIXEL_STD] if c == 3 else 1.0
    std = torch.as_tensor(image_std, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    x = images / std
    inside = torch.ones(n, h, w, dtype=torch.bool, device=images.device) if valid is None else valid.bool()
    d = dilation
    xp = F.pad(x, (d, d, d, d))
    ip = F.pad(inside, (d, d, d, d))  # False outside the grid
    out = []
    for dy, dx in NEIGHBOURS:
        dist2 = ((x - _shifted(xp, dy * d, dx * d, d, h, w)) ** 2).sum(1)
        k = omega * torch.exp(-dist2 / (2 * zeta**2))
        out.append(torch.where(inside & _shifted(ip, dy * d, dx * d, d, h, w), k, torch.zeros_like(k)))
    return torch.stack(out)


@torch.no_grad()
def crf_refine(
    probs: Tensor,
    images: Tensor,
    box_masks: Tensor | None = None,
    zeta: float = 0.5,
    omega: float = 2.0,
    iterations: int = 20,
    dilation: int = 1,
    *,
    valid: Tensor | None = None,
    image_std: float | Sequence[float] | None = None,
    tol: float = 1e-3,
    hard: bool = True,
) -> Tensor:
    """Mean-field refinement of m^a (MAL Appendix A.1, Algorithm 1; energy of Eq. 3-4, see the module docstring).

    Pairwise kernel exactly as Eq. 4: K_ij = omega * exp(-|I_i - I_j|^2 / (2 zeta^2)) over the 8 immediate
    neighbours (Algorithm 1 line 2 prints |I_i - I_j| without the square; we follow Eq. 4). zeta = 0.5, omega = 2
    (Sec. 4.2 "Implementation Details", Phase 1).

    Choices where the paper is silent:
      - Colour scale: ``images`` are the crop's colours in [0, 1]; they are divided by the ImageNet std
        (``image_std``) before the kernel, i.e. distances are measured on the mean/std-normalised crop the network
        sees, as in the authors' released code. zeta = 0.5 is then about 0.11 in [0, 1] units.
      - Unary: -log m^a (Eq. 3 "aligns X_i and m^a_i"), kept in every update as in [56]; Algorithm 1 only uses m
        to initialise l, and its literal update (adding non-negative messages, then clamping) can only grow the
        foreground, so we read lines 9 and 13 in the two-label form above, phi being the normalisation.
      - Iterations: "until convergence" -> at most ``iterations`` (20) updates, stopping early once no probability
        moves by ``tol`` or more (tol <= 0: always ``iterations``). Updates are parallel (all pixels at once).
      - Box: with ``box_masks`` the labeling is foreground only inside the ground-truth box (a tight box holds the
        whole object; the authors' code does the same). Pixels outside it are background, and their colours pull
        similar pixels inside the box towards background.
      - Padding (``valid`` False): always background, nobody's neighbour.

    Args:
        probs: N x H x W mask probabilities m^a in [0, 1].
        images: N x C x H x W crop colours in [0, 1] (float; C = 3 RGB for the default ``image_std``).
        box_masks: N x H x W {0, 1}: 1 inside the object's box; None: no restriction.
        zeta, omega: Eq. 4's bandwidth and weight.
        iterations: maximum number of mean-field updates.
        dilation: neighbour distance in pixels (1: the paper's 8 immediate neighbours).
        valid: N x H x W bool, pixels inside the image (not padding); None: all valid.
        image_std: per-channel colour scale (see above).
        tol: convergence threshold on the largest change of a probability.
        hard: return the thresholded labeling l in {0, 1} (Algorithm 1 line 15, lambda at 0.5; what Eq. 5 uses);
            False returns the soft Q(fg).

    Returns:
        N x H x W labeling (dtype of ``probs``, no gradient).
    """
    if (
        probs.dim() != 3
        or images.dim() != 4
        or images.shape[0] != probs.shape[0]
        or images.shape[2:] != probs.shape[1:]
    ):
        raise ValueError(
            f"probs {tuple(probs.shape)} / images {tuple(images.shape)}: want N x H x W / N x C x H x W"
        )
    dtype = torch.promote_types(probs.dtype, torch.float32)
    h, w = probs.shape[1:]
    kernels = pairwise_kernels(images.to(dtype), zeta, omega, dilation, valid, image_std)
    allowed = torch.ones_like(probs, dtype=torch.bool) if valid is None else valid.bool()
    if box_masks is not None:
        allowed = allowed & (box_masks > 0)
    m = probs.to(dtype)
    unary = torch.logit(m.clamp(_EPS, 1 - _EPS))
    zero = torch.zeros_like(m)
    q = torch.where(allowed, m.clamp(0, 1), zero)  # Algorithm 1 line 4: l <- m
    d = dilation
    for _ in range(iterations):
        vote = F.pad(2 * q - 1, (d, d, d, d))  # +1 for a foreground neighbour, -1 for a background one
        message = sum(k * _shifted(vote, dy * d, dx * d, d, h, w) for k, (dy, dx) in zip(kernels, NEIGHBOURS))
        new = torch.where(allowed, torch.sigmoid(unary + message), zero)
        change = (new - q).abs().amax() if new.numel() else zero.sum()
        q = new
        if tol > 0 and change < tol:
            break
    out = (q > 0.5) if hard else q
    return out.to(probs.dtype)


def crf_loss(
    student_probs: Tensor,
    teacher_probs: Tensor,
    images: Tensor,
    box_masks: Tensor | None = None,
    zeta: float = 0.5,
    omega: float = 2.0,
    valid: Tensor | None = None,
    *,
    iterations: int = 20,
    dilation: int = 1,
    image_std: float | Sequence[float] | None = None,
    smooth: float = 1.0,
) -> Tensor:
    """MAL's CRF loss (Sec. 3.3, Eq. 5): m^a = (m + m^t) / 2 refined by :func:`crf_refine` into the labeling l,
    then the dice loss 1 - (2 sum l m + s) / (sum l^2 + sum m^2 + s) between the student's probabilities m and l,
    averaged over the N instances. No gradient reaches the teacher or the refinement (l is a pseudo-label).

    ``smooth`` (s) = 1 as :func:`omniseg.ops.losses.dice_loss`; the paper gives none. Padding (``valid`` False)
    is left out of the dice sums and of the refinement; an instance without valid pixels has weight 0.

    Args:
        student_probs: N x H x W student mask probabilities m in [0, 1] (gradient flows here).
        teacher_probs: N x H x W EMA-teacher probabilities m^t in [0, 1] (detached).
        images: N x C x H x W crop colours in [0, 1] (see :func:`crf_refine`).
        box_masks: N x H x W {0, 1}, 1 inside the object's box; None: refinement not restricted to the box.
        zeta, omega, iterations, dilation, image_std: passed to :func:`crf_refine`.
        valid: N x H x W bool, pixels inside the image (not padding); None: all valid.
        smooth: dice smoothing.

    Returns:
        Scalar (0, still in the graph, when N == 0 or nothing is valid).
    """
    if student_probs.shape != teacher_probs.shape:
        raise ValueError(
            f"student {tuple(student_probs.shape)} and teacher {tuple(teacher_probs.shape)} differ"
        )
    # m^a = (m + m^t) / 2 (Sec. 3.3, "for more stable training"); the refinement is a constant pseudo-label.
    average = (student_probs.detach() + teacher_probs.detach()) / 2
    target = crf_refine(
        average, images, box_masks, zeta, omega, iterations, dilation, valid=valid, image_std=image_std
    )
    per_instance = squared_dice_loss(student_probs, target, valid, smooth)
    instance_valid = None if valid is None else valid.flatten(1).any(1)
    return reduce_instance_losses(per_instance, instance_valid)
