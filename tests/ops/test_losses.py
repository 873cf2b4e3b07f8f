import math

import pytest
import torch

from omniseg.ops.losses import (
    clip_contrastive_loss,
    dice_loss,
    image_label_loss,
    info_nce_loss,
    reduce_instance_losses,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
    squared_dice_loss,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


def ref_bce(x, t):
    p = sig(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def ref_focal_row(xs, ts, alpha, gamma):
    total = 0.0
    for x, t in zip(xs, ts):
        p = sig(x)
        pt = p * t + (1 - p) * (1 - t)
        a = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
        total += a * (1 - pt) ** gamma * ref_bce(x, t)
    return total


def ref_dice_row(xs, ts):
    ps = [sig(x) for x in xs]
    return 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)


def ref_mean(rows, w):
    s = sum(wi for wi in w)
    return sum(r * wi for r, wi in zip(rows, w)) / (s if s > 0 else 1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(5, 6, generator=g) > 0.5).double()
    targets[0, 0] = 0.3  # soft target
    return logits, targets


def test_losses_match_reference_loops(data):
    x, t = data
    w = [1.0, 0.0, 2.0, 1.0, 0.5]
    wt = torch.tensor(w, dtype=torch.float64)
    xl, tl = x.tolist(), t.tolist()
    focal = [ref_focal_row(xl[i], tl[i], 0.25, 2.0) for i in range(5)]
    assert sigmoid_focal_loss(x, t, wt).item() == pytest.approx(ref_mean(focal, w), rel=1e-10)
    focal_na = [ref_focal_row(xl[i], tl[i], -1, 1.5) for i in range(5)]
    assert sigmoid_focal_loss(x, t, alpha=-1, gamma=1.5).item() == pytest.approx(sum(focal_na) / 5, rel=1e-10)
    bce = [sum(ref_bce(a, b) for a, b in zip(xl[i], tl[i])) / 6 for i in range(5)]
    assert sigmoid_bce_loss(x, t, wt).item() == pytest.approx(ref_mean(bce, w), rel=1e-10)
    dice = [ref_dice_row(xl[i], tl[i]) for i in range(5)]
    assert dice_loss(x, t, wt).item() == pytest.approx(ref_mean(dice, w), rel=1e-10)
    assert dice_loss(x, t, reduction="none").tolist() == pytest.approx(dice, rel=1e-10)
    assert sigmoid_bce_loss(x, t, reduction="sum").item() == pytest.approx(sum(bce), rel=1e-10)
    assert sigmoid_focal_loss(x, t, normalizer=2.0).item() == pytest.approx(sum(focal) / 2, rel=1e-10)


def test_hand_values():
    assert sigmoid_bce_loss(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(math.log(2))
    # p = 0.5 everywhere, target [1, 0]: 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    assert dice_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 / 3)
    # focal with gamma 0, alpha off is plain BCE summed over the row
    x, t = torch.tensor([[0.3, -1.2]]), torch.tensor([[1.0, 0.0]])
    assert sigmoid_focal_loss(x, t, alpha=-1, gamma=0).item() == pytest.approx(ref_bce(0.3, 1) + ref_bce(-1.2, 0), rel=1e-6)
    # focal at p = 0.5, y = 1, alpha .25, gamma 2: .25 * .25 * log 2
    assert sigmoid_focal_loss(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.0625 * math.log(2))


@pytest.mark.parametrize("fn", [sigmoid_focal_loss, sigmoid_bce_loss, dice_loss])
def test_invalid_instances_get_no_loss_and_zero_grad(fn, data):
    x, t = data
    x = x.clone().requires_grad_()
    valid = torch.tensor([True, False, True, True, False])
    bad_t = t.clone()
    bad_t[1] = float("nan")  # an unsupervised row may hold garbage
    loss = fn(x, bad_t, valid)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(x.grad[1] == 0) and torch.all(x.grad[4] == 0) and x.grad[0].abs().sum() > 0
    keep = valid.nonzero().flatten()
    assert loss.item() == pytest.approx(fn(x[keep], t[keep]).item(), rel=1e-10)
    none = fn(x, t, torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0 and not torch.isnan(none)
    x.grad = None
    none.backward()
    assert torch.all(x.grad == 0)
    empty = fn(x[:0], t[:0])
    assert empty.item() == 0.0 and empty.requires_grad
    assert fn(x, t, valid, reduction="none")[1].item() == 0.0
    # NaN in a *valid* instance propagates
    nan_x = x.detach().clone()
    nan_x[0, 0] = float("nan")
    assert torch.isnan(fn(nan_x, t, valid))


@pytest.mark.parametrize("fn", [sigmoid_focal_loss, sigmoid_bce_loss, dice_loss])
def test_bf16_autocast_and_fp16_close(fn):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 8, generator=g)
    t = (torch.rand(4, 8, 8, generator=g) > 0.5).float()
    ref = fn(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x.bfloat16(), t)
    assert out.float().item() == pytest.approx(ref.item(), rel=0.02, abs=1e-3)
    half = fn(x.half(), t)
    assert half.dtype == torch.float16 and half.float().item() == pytest.approx(ref.item(), rel=5e-3, abs=1e-3)


def test_reduce_instance_losses_rules():
    per = torch.tensor([1.0, 2.0, 4.0])
    assert reduce_instance_losses(per).item() == pytest.approx(7 / 3)
    assert reduce_instance_losses(per, torch.tensor([0.5, 0.0, 0.5])).item() == pytest.approx(2.5)
    assert reduce_instance_losses(per, normalizer=0).item() == pytest.approx(7.0)  # <= 0 -> 1
    assert reduce_instance_losses(per, normalizer=torch.tensor(2.0)).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="reduction"):
        reduce_instance_losses(per, reduction="max")
    with pytest.raises(ValueError, match="shape"):
        reduce_instance_losses(per, torch.ones(2, dtype=torch.bool))


def ref_info_nce(q, k, pos, tau):
    out = []
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        sims = [(qi @ (kj / kj.norm())).item() / tau for kj in k]
        m = max(sims)
        lse = m + math.log(sum(math.exp(s - m) for s in sims))
        out.append(lse - sims[pos[i]])
    return out


def test_info_nce_reference_and_valid():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 5, generator=g, dtype=torch.float64)
    pos = torch.tensor([0, 3, 5, 3])
    ref = ref_info_nce(q.detach(), k, pos.tolist(), 0.1)
    assert info_nce_loss(q, k, pos, temperature=0.1).item() == pytest.approx(sum(ref) / 4, rel=1e-9)
    valid = torch.tensor([True, False, True, False])
    loss = info_nce_loss(q, k, torch.tensor([0, 99, 5, -7]), valid, temperature=0.1)  # junk targets when invalid
    assert loss.item() == pytest.approx((ref[0] + ref[2]) / 2, rel=1e-9)
    loss.backward()
    assert torch.all(q.grad[1] == 0) and torch.all(q.grad[3] == 0)
    assert info_nce_loss(q, k[:0], pos).item() == 0.0


def test_clip_loss_reference_hand_and_valid():
    # identical orthonormal embeddings, tau = 1: s = I -> each term -log(e / (e + 1))
    eye = torch.eye(2)
    assert clip_contrastive_loss(eye, eye, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    g = torch.Generator().manual_seed(3)
    img = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(5, 4, generator=g, dtype=torch.float64)
    s = [[(img[i] / img[i].norm() @ (txt[j] / txt[j].norm())).item() / 0.5 for j in range(5)] for i in range(5)]
    total = 0.0
    for i in range(5):
        row = math.log(sum(math.exp(v) for v in s[i])) - s[i][i]
        col = math.log(sum(math.exp(s[j][i]) for j in range(5))) - s[i][i]
        total += row + col
    assert clip_contrastive_loss(img, txt, temperature=0.5).item() == pytest.approx(total / 10, rel=1e-9)
    valid = torch.tensor([True, True, False, True, False])
    junk = txt.clone()
    junk[2] = float("nan")
    loss = clip_contrastive_loss(img, junk, valid, temperature=0.5)
    keep = valid.nonzero().flatten()
    assert loss.item() == pytest.approx(clip_contrastive_loss(img[keep], txt[keep], temperature=0.5).item())
    loss.backward()
    assert torch.all(img.grad[2] == 0) and torch.all(img.grad[4] == 0)
    none = clip_contrastive_loss(img, txt, torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = clip_contrastive_loss(img.float(), txt.float(), temperature=0.5)
    assert bf.item() == pytest.approx(total / 10, rel=1e-5)  # similarities are kept in fp32
    half = clip_contrastive_loss(img.bfloat16(), txt.bfloat16(), temperature=0.5)
    assert half.dtype == torch.float32  # so is the loss of bf16 embeddings (not rounded back to bf16)
    assert half.item() == pytest.approx(clip_contrastive_loss(img.bfloat16().float(), txt.bfloat16().float(),
                                                              temperature=0.5).item(), rel=1e-6)


def ref_image_label(logits, labels):
    """Per image: -sum_k (1/K) log softmax over the C vocabulary columns; mean over labelled images."""
    terms = []
    for row, lab in zip(logits.tolist(), labels):
        ks = sorted(set(lab))
        if not ks:
            continue
        c = len(row) - 1
        z = math.log(sum(math.exp(v) for v in row[:c]))
        terms.append(-sum(row[k] - z for k in ks) / len(ks))
    return sum(terms) / len(terms) if terms else 0.0


def test_image_label_loss_reference_and_hand_values():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g) * 3
    labels = [[0, 2], [], [4, 4, 1], [3]]
    got = image_label_loss(logits, [torch.tensor(x, dtype=torch.long) for x in labels])
    assert float(got) == pytest.approx(ref_image_label(logits, labels), rel=1e-5)
    # one image, uniform logits over C=3 columns: loss = log 3 whatever the background logit
    two = torch.tensor([[1.0, 1.0, 1.0, 50.0]])
    assert float(image_label_loss(two, [torch.tensor([1])])) == pytest.approx(math.log(3), rel=1e-6)
    # no labels anywhere: zero, still differentiable
    x = torch.randn(2, 5, requires_grad=True)
    z = image_label_loss(x, [torch.zeros(0, dtype=torch.long)] * 2)
    z.backward()
    assert float(z.detach()) == 0.0 and float(x.grad.abs().sum()) == 0.0
    # gradient raises the labelled columns' logits, never touches background
    x = torch.zeros(1, 4, requires_grad=True)
    image_label_loss(x, [torch.tensor([0, 2])]).backward()
    assert x.grad[0, 0] < 0 and x.grad[0, 2] < 0 and x.grad[0, 1] > 0 and x.grad[0, 3] == 0


def test_squared_dice_weights_drop_elements():
    p = torch.tensor([[0.5, 0.2, float("nan")]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    got = squared_dice_loss(p, t, torch.tensor([[True, True, False]]), smooth=0.0)
    assert got.item() == pytest.approx(1 - 2 * 0.5 / (0.25 + 0.04 + 1))
