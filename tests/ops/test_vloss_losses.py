import math

import pytest
import torch

from omniseg.ops.vloss_losses import (
    box_masks,
    box_projection_loss,
    filip_contrastive_loss,
    point_mask_losses,
    query_classification_loss,
    uncertain_point_coords,
)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def cell_centres(h: int, w: int, n: int) -> torch.Tensor:
    """n x (h * w) x 2 points at the cell centres (bilinear sampling reads the cell value exactly)."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)[None].expand(n, -1, -1).double()


def test_point_mask_losses_match_loops():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 3
    tgt = (torch.rand(3, 4, 5, generator=g) > 0.5).double()
    tgt[1] = 0  # an empty target mask
    bce, dice = point_mask_losses(pred, tgt, cell_centres(4, 5, 3))
    ref_bce, ref_dice = 0.0, 0.0
    for n in range(3):
        ps = [sig(v) for v in pred[n].flatten().tolist()]
        ts = tgt[n].flatten().tolist()
        ref_bce += sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(ps, ts)) / len(ps)
        ref_dice += 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)
    assert bce.item() == pytest.approx(ref_bce / 3, rel=1e-6)
    assert dice.item() == pytest.approx(ref_dice / 3, rel=1e-6)


def test_point_mask_losses_empty_and_targets_at_another_resolution():
    pred = torch.randn(0, 4, 4, requires_grad=True)
    bce, dice = point_mask_losses(pred, torch.zeros(0, 16, 16), torch.rand(0, 8, 2))
    assert bce.item() == dice.item() == 0.0
    (bce + dice).backward()  # a grad path even when empty
    # a 2x2 target read at the 4 cell centres of a 2x2 prediction == the same target upsampled 4x (nearest)
    p = torch.randn(1, 2, 2, dtype=torch.float64)
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    big = t.repeat_interleave(4, 1).repeat_interleave(4, 2)
    a = point_mask_losses(p, t, cell_centres(2, 2, 1))
    b = point_mask_losses(p, big, cell_centres(2, 2, 1))
    assert a[0].item() == pytest.approx(b[0].item()) and a[1].item() == pytest.approx(b[1].item())


def test_uncertain_points_prefer_logits_near_zero():
    logits = torch.full((2, 16, 16), 20.0)
    logits[:, :, :8] = 0.0  # left half: maximal uncertainty
    g = torch.Generator().manual_seed(0)
    pts = uncertain_point_coords(logits, 40, oversample_ratio=3.0, importance_ratio=0.75, generator=g)
    assert pts.shape == (2, 40, 2) and float(pts.min()) >= 0 and float(pts.max()) <= 1
    assert bool((pts[:, :30, 0] < 0.5).all())  # the 30 important points all lie in the uncertain half
    assert uncertain_point_coords(logits[:0], 40).shape == (0, 40, 2)


def test_query_classification_loss_matches_loop_and_ignores_zero_weights():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 0, 3, 2, 3])
    w = torch.tensor([0.1, 1.0, 0.0, 1.0, 0.1], dtype=torch.float64)
    num, den = 0.0, 0.0
    for q in range(5):
        row = logits[q].tolist()
        ce = -(row[y[q]] - math.log(sum(math.exp(v) for v in row)))
        num += w[q].item() * ce
        den += w[q].item()
    assert query_classification_loss(logits, y, w).item() == pytest.approx(num / den, rel=1e-6)
    # a weight-0 query: its logits (even NaN) change nothing
    bad = logits.clone()
    bad[2] = float("nan")
    assert query_classification_loss(bad, y, w).item() == pytest.approx(num / den, rel=1e-6)
    x = logits.clone().requires_grad_(True)
    zero = query_classification_loss(x, y, torch.zeros(5, dtype=torch.float64))
    zero.backward()
    assert zero.item() == 0.0 and float(x.grad.abs().sum()) == 0.0
    assert query_classification_loss(logits[:0], y[:0], w[:0]).item() == 0.0


def test_box_masks_by_hand():
    m = box_masks(torch.tensor([[1.5, 0.0, 3.0, 2.0]]), (4, 4))
    expected = torch.zeros(4, 4)
    expected[0:2, 1:3] = 1  # cells overlapping x in [1.5, 3), y in [0, 2)
    assert torch.equal(m[0], expected)
    m2 = box_masks(torch.tensor([[4.0, 1.0, 5.0, 3.0]]), (4, 4), stride=2)  # 2-px cells
    expected2 = torch.zeros(4, 4)
    expected2[0:2, 2] = 1
    assert torch.equal(m2[0], expected2)
    assert box_masks(torch.zeros(0, 4), (3, 3)).shape == (0, 3, 3)


def test_box_projection_loss_matches_loop():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 4, 4, generator=g, dtype=torch.float64) * 2
    boxes = torch.tensor([[4.0, 0.0, 12.0, 8.0], [0.0, 8.0, 16.0, 16.0]])  # stride 4 -> cells
    loss = box_projection_loss(pred, boxes, stride=4)
    ref = 0.0
    for n in range(2):
        x1, y1, x2, y2 = (int(v) // 4 for v in boxes[n].tolist())
        p = [[sig(v) for v in row] for row in pred[n].tolist()]
        rows = [max(p[r]) for r in range(4)]
        cols = [max(p[r][c] for r in range(4)) for c in range(4)]
        s = rows + cols
        lab = [1.0 if y1 <= r < y2 else 0.0 for r in range(4)] + [1.0 if x1 <= c < x2 else 0.0 for c in range(4)]
        ref += 1 - (2 * sum(a * b for a, b in zip(s, lab)) + 1) / (sum(a * a for a in s) + sum(lab) + 1)
    assert loss.item() == pytest.approx(ref / 2, rel=1e-6)
    # a mask filling the box exactly has (almost) zero loss
    perfect = torch.full((1, 4, 4), -30.0)
    perfect[0, 0:2, 1:3] = 30.0
    assert box_projection_loss(perfect, boxes[:1], 4).item() < 1e-6
    assert box_projection_loss(pred[:0], boxes[:0], 4).item() == 0.0


def test_filip_matches_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(3)
    img = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    txt = torch.randn(3, 3, 5, generator=g, dtype=torch.float64)
    tv = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    tau = 0.5
    loss = filip_contrastive_loss(img, txt, tv, tau)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    toks = [[txt[j, t] for t in range(3) if tv[j, t]] for j in range(3)]
    s_i2t = [[sum(max(cos(img[i, n], t) for t in toks[j]) for n in range(4)) / 4 for j in range(3)] for i in range(3)]
    s_t2i = [[sum(max(cos(img[i, n], t) for n in range(4)) for t in toks[j]) / len(toks[j]) for j in range(3)]
             for i in range(3)]

    def ce(row, k):
        return -(row[k] / tau - math.log(sum(math.exp(v / tau) for v in row)))

    ref = 0.5 * (sum(ce(s_i2t[i], i) for i in range(3)) / 3 + sum(ce([s_t2i[i][j] for i in range(3)], j)
                                                                  for j in range(3)) / 3)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    padded = txt.clone()
    padded[0, 2] = img[1, 0] * 100  # a padding token that would match image 1 perfectly
    assert filip_contrastive_loss(img, padded, tv, tau).item() == pytest.approx(ref, rel=1e-6)
    # a caption without tokens leaves its pair out entirely
    tv2 = tv.clone()
    tv2[2] = False
    sub = filip_contrastive_loss(img[:2], txt[:2], tv[:2], tau)
    assert filip_contrastive_loss(img, txt, tv2, tau).item() == pytest.approx(sub.item(), rel=1e-6)
    x = img.clone().requires_grad_(True)
    none = filip_contrastive_loss(x, txt, torch.zeros_like(tv), tau)
    none.backward()
    assert none.item() == 0.0
