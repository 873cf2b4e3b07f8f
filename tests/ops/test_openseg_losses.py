import math

import pytest
import torch

from omniseg.ops.losses import clip_contrastive_loss, squared_dice_loss
from omniseg.ops.openseg_losses import (
    batched_max_dice_segmentation_loss,
    grounding_loss,
    grounding_scores,
    max_dice_segmentation_loss,
    pairwise_squared_dice,
    pixel_text_loss,
)

DT = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- slow references


def ref_ls(logits, gt, valid=None):
    """Eq. 1 by loops, each Dice from losses.squared_dice_loss on one (proposal, mask) pair."""
    w = None if valid is None else valid.reshape(1, -1)
    per_mask = []
    for j in range(gt.shape[0]):
        best = max(
            1
            - squared_dice_loss(
                torch.sigmoid(logits[i]).reshape(1, -1), gt[j].reshape(1, -1).to(DT), w
            ).item()
            for i in range(logits.shape[0])
        )
        per_mask.append(1 - best)
    return sum(per_mask) / len(per_mask)


def cosine(a, b):
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def ref_g(z, zv, w, wv, tau):
    """Eq. 3 by loops (returned / tau, as grounding_scores)."""
    out = torch.zeros(z.shape[0], w.shape[0], dtype=DT)
    for b in range(z.shape[0]):
        regions = [z[b, i] for i in range(z.shape[1]) if zv[b, i]]
        for c in range(w.shape[0]):
            words = [w[c, j] for j in range(w.shape[1]) if wv[c, j]]
            total = 0.0
            for word in words:
                cos = [cosine(r, word) for r in regions]
                den = sum(math.exp(x / tau) for x in cos)
                total += sum(math.exp(x / tau) / den * x for x in cos)
            out[b, c] = total / len(words) / tau
    return out


def ref_lg(s):
    b = len(s)
    rows = [-math.log(math.exp(s[i][i]) / sum(math.exp(s[i][c]) for c in range(b))) for i in range(b)]
    cols = [-math.log(math.exp(s[i][i]) / sum(math.exp(s[r][i]) for r in range(b))) for i in range(b)]
    return 0.5 * (sum(rows) + sum(cols)) / b


def ref_pixel(emb, text, labels, tau, ignore=-1):
    terms = []
    for b in range(emb.shape[0]):
        for y in range(emb.shape[2]):
            for x in range(emb.shape[3]):
                lab = int(labels[b, y, x])
                if lab == ignore:
                    continue
                logits = [cosine(emb[b, :, y, x], text[k]) / tau for k in range(text.shape[0])]
                terms.append(-logits[lab] + math.log(sum(math.exp(v) for v in logits)))
    return sum(terms) / len(terms)


# ---------------------------------------------------------------- L_S


def test_pairwise_dice_matches_squared_dice_loss():
    p = torch.rand(4, 30, generator=gen(0), dtype=DT)
    t = (torch.rand(3, 30, generator=gen(1), dtype=DT) > 0.5).to(DT)
    d = pairwise_squared_dice(p, t)
    for i in range(4):
        for j in range(3):
            assert d[i, j].item() == pytest.approx(
                1 - squared_dice_loss(p[i : i + 1], t[j : j + 1]).item(), abs=1e-12
            )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ls_matches_loop_reference(seed):
    g = gen(seed)
    logits = torch.randn(5, 6, 7, generator=g, dtype=DT) * 3
    gt = torch.rand(3, 6, 7, generator=g) > 0.6
    valid = torch.rand(6, 7, generator=g) > 0.2
    assert max_dice_segmentation_loss(logits, gt).item() == pytest.approx(ref_ls(logits, gt), abs=1e-6)
    assert max_dice_segmentation_loss(logits, gt, valid).item() == pytest.approx(
        ref_ls(logits, gt, valid), abs=1e-6
    )


def test_ls_hand_worked():
    gt = torch.tensor([[[1, 0], [0, 0]], [[0, 1], [1, 1]]])
    exact = torch.where(gt[0].bool(), 100.0, -100.0)[None]
    half = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    # Proposal equal to the mask: Dice 1, contribution 0.
    assert max_dice_segmentation_loss(exact, gt[:1]).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 on 4 pixels vs a 1-pixel mask: Dice = (2 * 0.5 + 1) / (4 * 0.25 + 1 + 1) = 2/3.
    assert max_dice_segmentation_loss(half, gt[:1]).item() == pytest.approx(1 / 3, abs=1e-6)
    # The max picks the best proposal, whatever its position.
    for props in (torch.cat([exact, half]), torch.cat([half, exact])):
        assert max_dice_segmentation_loss(props, gt[:1]).item() == pytest.approx(0.0, abs=1e-6)
    # Two masks, mean over masks: mask 2 (3 pixels) best matched by `half`: (2 * 1.5 + 1) / (1 + 3 + 1) = 4/5.
    assert max_dice_segmentation_loss(torch.cat([exact, half]), gt).item() == pytest.approx(
        0.5 * (0 + 1 / 5), abs=1e-6
    )


def test_ls_gradient_only_to_best_proposal_and_padding_ignored():
    gt = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    logits = torch.tensor([[[2.0, -2.0], [-2.0, -2.0]], [[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    max_dice_segmentation_loss(logits, gt).backward()
    assert logits.grad[0].abs().sum() > 0 and torch.all(logits.grad[1] == 0)
    # Padding (right column) holds NaN logits and garbage labels: same loss as the cropped image, zero grad there.
    valid = torch.tensor([[True, False], [True, False]])
    padded = torch.tensor([[[2.0, math.nan], [-1.0, math.nan]]], requires_grad=True)
    gt_pad = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    loss = max_dice_segmentation_loss(padded, gt_pad, valid)
    loss.backward()
    crop = max_dice_segmentation_loss(torch.tensor([[[2.0], [-1.0]]]), torch.tensor([[[1.0], [0.0]]]))
    assert loss.item() == pytest.approx(crop.item(), abs=1e-6)
    assert torch.isfinite(padded.grad).all() and torch.all(padded.grad[..., 1] == 0)


def test_ls_empty_cases():
    logits = torch.randn(4, 3, 3, requires_grad=True)
    zero = max_dice_segmentation_loss(logits, torch.zeros(0, 3, 3))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.all(logits.grad == 0)
    assert max_dice_segmentation_loss(torch.zeros(0, 3, 3), torch.ones(2, 3, 3)).item() == 1.0
    with pytest.raises(ValueError):
        max_dice_segmentation_loss(torch.zeros(2, 3, 3), torch.ones(1, 3, 4))


def test_batched_ls_mean_over_images_with_masks():
    g = gen(3)
    logits = [
        torch.randn(4, 5, 6, generator=g, dtype=DT),
        torch.randn(4, 3, 3, generator=g, dtype=DT),
        torch.randn(4, 4, 4, generator=g, dtype=DT),
    ]
    gts = [
        torch.rand(1, 5, 6, generator=g) > 0.5,
        torch.zeros(0, 3, 3),
        torch.rand(3, 4, 4, generator=g) > 0.5,
    ]
    valid = [torch.rand(5, 6, generator=g) > 0.3, None, None]
    got = batched_max_dice_segmentation_loss(logits, gts, valid).item()
    # Equal weight per image with masks (image 0: 1 mask, image 2: 3 masks); image 1 (no masks) not counted.
    assert got == pytest.approx(
        0.5 * (ref_ls(logits[0], gts[0], valid[0]) + ref_ls(logits[2], gts[2])), abs=1e-6
    )
    none = batched_max_dice_segmentation_loss(logits[1:2], gts[1:2])
    assert none.item() == 0.0
    x = torch.randn(2, 3, 3, requires_grad=True)
    z = batched_max_dice_segmentation_loss([x], [torch.zeros(0, 3, 3)])
    z.backward()
    assert z.item() == 0.0 and torch.all(x.grad == 0)


# ---------------------------------------------------------------- G(I, C) and L_G


def random_batch(seed, b=3, b2=4, n=5, w=4, d=6):
    g = gen(seed)
    z = torch.randn(b, n, d, generator=g, dtype=DT)
    wd = torch.randn(b2, w, d, generator=g, dtype=DT)
    zv = torch.rand(b, n, generator=g) > 0.3
    wv = torch.rand(b2, w, generator=g) > 0.3
    zv[:, 0] = True
    wv[:, 0] = True
    return z, zv, wd, wv


@pytest.mark.parametrize("seed,tau", [(0, 0.1), (1, 0.5), (2, 2.0)])
def test_grounding_scores_match_loop_reference(seed, tau):
    z, zv, w, wv = random_batch(seed)
    got = grounding_scores(z, zv, w, wv, tau)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, ref_g(z, zv, w, wv, tau), atol=1e-6, rtol=0)


def test_grounding_scores_hand_worked():
    # One region: G = mean over words of their cosine to it. Words: cos 1 and cos 0 -> G = 0.5 (any tau).
    z = torch.tensor([[[1.0, 0.0]]])
    w = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    one = torch.ones(1, 1, dtype=torch.bool)
    s = grounding_scores(z, one, w, torch.ones(1, 2, dtype=torch.bool), 0.25)
    assert s.item() * 0.25 == pytest.approx(0.5, abs=1e-6)
    # Small tau: each word takes its best region (G -> mean of max_i cos); large tau: plain mean over regions.
    z2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    w2 = torch.tensor([[[1.0, 0.0]]])
    assert grounding_scores(
        z2, torch.ones(1, 2, dtype=torch.bool), w2, one, 1e-3
    ).item() * 1e-3 == pytest.approx(1.0)
    g_big = grounding_scores(z2, torch.ones(1, 2, dtype=torch.bool), w2, one, 1e4).item() * 1e4
    assert g_big == pytest.approx(0.5, abs=1e-4)


def test_grounding_scores_masked_entries_ignored():
    z, zv, w, wv = random_batch(4)
    clean = grounding_scores(z, zv, w, wv, 0.3)
    z_bad, w_bad = z.clone(), w.clone()
    z_bad[~zv] = math.nan
    w_bad[~wv] = math.nan
    z_bad.requires_grad_(True)
    w_bad.requires_grad_(True)
    tau = torch.tensor(0.3, dtype=DT, requires_grad=True)
    dirty = grounding_scores(z_bad, zv, w_bad, wv, tau)
    torch.testing.assert_close(dirty, clean, atol=1e-12, rtol=0)
    grounding_loss(dirty[:3, :3]).backward()
    for t, v in ((z_bad, zv), (w_bad, wv)):
        assert torch.isfinite(t.grad).all() and torch.all(t.grad[~v] == 0) and t.grad[v].abs().sum() > 0
    assert torch.isfinite(tau.grad) and tau.grad != 0
    # An image without regions / a caption without words scores 0.
    s = grounding_scores(z, torch.zeros_like(zv), w, wv, 0.3)
    assert torch.all(s == 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_grounding_loss_matches_loop_reference(seed):
    s = torch.randn(5, 5, generator=gen(seed), dtype=DT) * 3
    assert grounding_loss(s).item() == pytest.approx(ref_lg(s.tolist()), abs=1e-6)


def test_grounding_loss_hand_worked_and_valid():
    for b in (1, 2, 7):
        assert grounding_loss(torch.full((b, b), 0.3)).item() == pytest.approx(math.log(b), abs=1e-6)
    assert grounding_loss(torch.eye(4) * 50).item() < 1e-6
    assert grounding_loss(torch.eye(4) * 5).item() < grounding_loss(torch.eye(4)).item()
    # valid removes pairs from rows and columns: NaN there does not matter.
    s = torch.randn(4, 4, generator=gen(5), dtype=DT)
    bad = s.clone()
    bad[2, :] = math.nan
    bad[:, 2] = math.nan
    keep = torch.tensor([True, True, False, True])
    sub = s[[0, 1, 3]][:, [0, 1, 3]]
    assert grounding_loss(bad, keep).item() == pytest.approx(ref_lg(sub.tolist()), abs=1e-6)
    x = torch.randn(3, 3, requires_grad=True)
    zero = grounding_loss(x, torch.zeros(3, dtype=torch.bool))
    zero.backward()
    assert zero.item() == 0.0 and torch.all(x.grad == 0)
    with pytest.raises(ValueError):
        grounding_loss(torch.zeros(2, 3))


def test_grounding_loss_equals_clip_loss_on_one_region_one_word():
    # With one region per image and one word per caption, G = cos(z_b, w_c), so L_G is CLIP's symmetric loss.
    g = gen(6)
    z, w = torch.randn(4, 1, 8, generator=g), torch.randn(4, 1, 8, generator=g)
    ones = torch.ones(4, 1, dtype=torch.bool)
    got = grounding_loss(grounding_scores(z, ones, w, ones, 0.07))
    want = clip_contrastive_loss(z[:, 0], w[:, 0], temperature=0.07)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)


def test_grounding_gradients_reach_inputs_and_temperature():
    z, zv, w, wv = random_batch(7, b=3, b2=3)
    z.requires_grad_(True)
    w.requires_grad_(True)
    log_tau = torch.tensor(math.log(0.1), dtype=DT, requires_grad=True)
    grounding_loss(grounding_scores(z, zv, w, wv, log_tau.exp())).backward()
    for t in (z, w, log_tau):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_grounding_under_bf16_autocast():
    z, zv, w, wv = random_batch(8, b=3, b2=3)
    z32, w32 = z.float(), w.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = grounding_scores(z32.bfloat16(), zv, w32.bfloat16(), wv, 0.05)
        loss = grounding_loss(s)
    assert s.dtype == torch.float32 and loss.dtype == torch.float32
    ref = grounding_scores(z32.bfloat16().float(), zv, w32.bfloat16().float(), wv, 0.05)
    torch.testing.assert_close(s, ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- LSeg+ pixel-text loss


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_pixel_text_loss_matches_loop_reference(tau):
    g = gen(9)
    emb = torch.randn(2, 5, 3, 4, generator=g, dtype=DT)
    text = torch.randn(6, 5, generator=g, dtype=DT)
    labels = torch.randint(0, 6, (2, 3, 4), generator=g)
    labels[0, 0, :2] = -1
    assert pixel_text_loss(emb, text, labels, tau).item() == pytest.approx(
        ref_pixel(emb, text, labels, tau), abs=1e-6
    )


def test_pixel_text_loss_ignored_pixels_and_gradients():
    g = gen(10)
    emb = torch.randn(1, 4, 2, 3, generator=g, dtype=DT)
    text = torch.randn(3, 4, generator=g, dtype=DT)
    labels = torch.tensor([[[0, 255, 2], [1, 1, 255]]])
    clean = pixel_text_loss(emb, text, labels, 0.1, ignore_index=255)
    bad = emb.clone()
    bad[0, :, 0, 1] = math.nan
    bad[0, :, 1, 2] = math.inf
    bad.requires_grad_(True)
    text.requires_grad_(True)
    tau = torch.tensor(0.1, dtype=DT, requires_grad=True)
    loss = pixel_text_loss(bad, text, labels, tau, ignore_index=255)
    assert loss.item() == pytest.approx(clean.item(), abs=1e-12)
    loss.backward()
    assert (
        torch.isfinite(bad.grad).all() and torch.all(bad.grad[0, :, 0, 1] == 0) and bad.grad.abs().sum() > 0
    )
    assert text.grad.abs().sum() > 0 and tau.grad != 0
    # Hand-worked: pixel = class 0's text, 2 orthogonal classes, tau = 1: loss = -log(e / (e + 1)).
    e = torch.tensor([[1.0, 0.0]]).reshape(1, 2, 1, 1)
    one = pixel_text_loss(e, torch.eye(2), torch.zeros(1, 1, 1, dtype=torch.long), 1.0)
    assert one.item() == pytest.approx(-math.log(math.e / (math.e + 1)), abs=1e-6)
    # Every pixel ignored: zero, in the graph.
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    zero = pixel_text_loss(x, text.detach(), torch.full((1, 2, 2), -1), 0.1)
    zero.backward()
    assert zero.item() == 0.0 and torch.all(x.grad == 0)
    with pytest.raises(ValueError):
        pixel_text_loss(x, text.detach(), torch.zeros(1, 2, 3, dtype=torch.long), 0.1)
