import math

import pytest
import torch

from omniseg.modeling.preprocess import PIXEL_STD
from omniseg.ops.crf_loss import crf_loss, crf_refine

STD = [s / 255 for s in PIXEL_STD]


def ref_refine(m, img, box, valid, zeta=0.5, omega=2.0, iterations=3, dilation=1, eps=1e-6):
    """Slow mean field, one pixel and one neighbour at a time (module docstring of omniseg.ops.crf_loss)."""
    n, c, h, w = img.shape
    out = torch.zeros(n, h, w, dtype=torch.float64)

    def kernel(i, y, x, yy, xx):
        d2 = sum(((float(img[i, ch, y, x]) - float(img[i, ch, yy, xx])) / STD[ch]) ** 2 for ch in range(c))
        return omega * math.exp(-d2 / (2 * zeta**2))

    for i in range(n):
        allowed = [[bool(valid[i, y, x]) and bool(box[i, y, x]) for x in range(w)] for y in range(h)]
        q = [[float(m[i, y, x]) if allowed[y][x] else 0.0 for x in range(w)] for y in range(h)]
        for _ in range(iterations):
            new = [[0.0] * w for _ in range(h)]
            for y in range(h):
                for x in range(w):
                    if not allowed[y][x]:
                        continue
                    msg = 0.0
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            yy, xx = y + dy * dilation, x + dx * dilation
                            if (dy, dx) != (0, 0) and 0 <= yy < h and 0 <= xx < w and valid[i, yy, xx]:
                                msg += kernel(i, y, x, yy, xx) * (2 * q[yy][xx] - 1)
                    mc = min(max(float(m[i, y, x]), eps), 1 - eps)
                    new[y][x] = 1 / (1 + math.exp(-(math.log(mc / (1 - mc)) + msg)))
            q = new
        out[i] = torch.tensor(q, dtype=torch.float64)
    return out


def ref_dice(p, t, valid, smooth=1.0):
    losses = []
    for i in range(p.shape[0]):
        cells = [(y, x) for y in range(p.shape[1]) for x in range(p.shape[2]) if valid[i, y, x]]
        if cells:
            inter = sum(float(p[i, y, x] * t[i, y, x]) for y, x in cells)
            denom = sum(float(p[i, y, x] ** 2 + t[i, y, x] ** 2) for y, x in cells)
            losses.append(1 - (2 * inter + smooth) / (denom + smooth))
    return sum(losses) / max(len(losses), 1)


def random_case(seed, n=2, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, h, w, generator=g, dtype=torch.float64)
    img = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64) * 0.3  # close colours: kernels far from 0
    box = torch.zeros(n, h, w)
    box[:, 1:4, 1:5] = 1
    valid = torch.ones(n, h, w, dtype=torch.bool)
    valid[1, :, 4:] = False
    return m, img, box, valid


@pytest.mark.parametrize("dilation", [1, 2])
def test_refine_matches_slow_reference(dilation):
    m, img, box, valid = random_case(0)
    all_valid, no_box = torch.ones_like(valid), torch.ones_like(box)
    for b, v in ((None, None), (box, valid)):
        got = crf_refine(m, img, b, iterations=3, dilation=dilation, valid=v, tol=0, hard=False)
        want = ref_refine(
            m, img, no_box if b is None else b, all_valid if v is None else v, dilation=dilation
        )
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    hard = crf_refine(m, img, box, iterations=3, dilation=dilation, valid=valid, tol=0)
    assert torch.equal(hard, (want > 0.5).double())


def two_colour_case():
    """12 x 12: an object of one colour on a background of another, and a noisy mask of it."""
    g = torch.Generator().manual_seed(3)
    obj = torch.zeros(12, 12)
    obj[3:9, 2:10] = 1
    obj[3, 2] = obj[3, 9] = obj[8, 2] = obj[8, 9] = 0  # cut corners
    obj[6:9, 5:7] = 0  # a notch from below
    a, b = torch.tensor([0.9, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.7])
    img = torch.where(obj.bool(), a[:, None, None], b[:, None, None]) + 0.02 * torch.rand(
        3, 12, 12, generator=g
    )
    m = 0.3 + 0.4 * obj  # right but unsure
    for y, x in [(4, 4), (5, 8), (7, 3), (3, 3)]:
        m[y, x] = 0.2  # holes in the object
    for y, x in [(0, 0), (1, 6), (10, 10), (6, 5)]:
        m[y, x] = 0.8  # specks on the background (one in the notch)
    m[9, 2:6] = 0.6  # a spill below the object
    box = torch.zeros(12, 12)
    box[3:9, 2:10] = 1
    return obj[None], img[None], m[None], box[None]


def test_refine_snaps_to_the_colour_boundary():
    obj, img, m, box = two_colour_case()
    assert ((m > 0.5).float() != obj).sum() > 5  # the noisy mask is wrong in places
    for b in (None, box):
        assert torch.equal(crf_refine(m, img, b), obj)
    uniform = torch.full_like(img, 0.5)  # no colour edges: the spill and the specks are smoothed, not snapped
    assert not torch.equal(crf_refine(m, uniform), obj)


def test_box_restricts_the_labeling():
    obj, img, m, _ = two_colour_case()
    small = torch.zeros(1, 12, 12)
    small[0, 3:9, 2:6] = 1
    out = crf_refine(m, img, small)
    assert out[small == 0].sum() == 0 and torch.equal(out[small == 1], obj[small == 1])


def test_padding_is_left_out():
    obj, img, m, box = two_colour_case()

    def pad(t, v):
        return torch.nn.functional.pad(t, (0, 4, 0, 3), value=v)

    valid = pad(torch.ones(1, 12, 12, dtype=torch.bool), False)
    mp, imgp, boxp = pad(m, float("nan")), pad(img, float("nan")), pad(box, 1.0)
    out = crf_refine(mp, imgp, boxp, valid=valid)
    assert torch.equal(out[:, :12, :12], crf_refine(m, img, box)) and out[~valid].sum() == 0
    loss = crf_loss(mp, mp, imgp, boxp, valid=valid)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(crf_loss(m, m, img, box).item(), abs=1e-6)


def test_crf_loss_matches_reference_and_gradient_skips_teacher():
    m, img, box, valid = random_case(1, n=3)
    g = torch.Generator().manual_seed(2)
    teacher = torch.rand(m.shape, generator=g, dtype=torch.float64).requires_grad_(True)
    student = m.clone().requires_grad_(True)
    loss = crf_loss(student, teacher, img, box, valid=valid, iterations=3)
    target = (ref_refine((m + teacher.detach()) / 2, img, box, valid) > 0.5).double()
    assert loss.item() == pytest.approx(ref_dice(m, target, valid), abs=1e-6)
    loss.backward()
    assert teacher.grad is None
    # The gradient is that of the dice to a constant target: nothing flows through the refinement.
    s = m.clone().requires_grad_(True)
    w = valid.double()
    per = 1 - (2 * (w * s * target).sum((1, 2)) + 1) / ((w * (s**2 + target**2)).sum((1, 2)) + 1)
    per.mean().backward()
    torch.testing.assert_close(student.grad, s.grad)
    assert student.grad.abs().sum() > 0


def test_crf_loss_hand_worked():
    obj, img, m, box = two_colour_case()
    assert crf_loss(obj, obj, img, box).item() == pytest.approx(
        0.0, abs=1e-7
    )  # right mask, its own refinement
    # The student spills below the object; the teacher is right; their average refines to the object.
    student = obj.clone()
    student[0, 9, 2:6] = 1
    inter, denom = obj.sum().item(), obj.sum().item() * 2 + 4
    assert crf_loss(student, obj, img, box).item() == pytest.approx(1 - (2 * inter + 1) / (denom + 1))
    empty = torch.zeros(0, 12, 12, requires_grad=True)
    loss = crf_loss(empty, empty, torch.zeros(0, 3, 12, 12))
    loss.backward()
    assert loss.item() == 0.0
