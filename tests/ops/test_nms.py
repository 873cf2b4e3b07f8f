import math

import pytest
import torch

import omniseg.ops.nms as nms_module
from omniseg.modeling.anchors import AnchorGenerator
from omniseg.modeling.rpn import RPN_BOX_WEIGHTS, select_proposals
from omniseg.ops.boxes import clip_boxes, decode_boxes
from omniseg.ops.nms import batched_nms, nms
from omniseg.ops.nms_reference import batched_nms_reference, nms_reference
from omniseg.ops.roi_align import torchvision_ops


def ref_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, thr):
    """Plain greedy NMS: visit by (-score, index), keep unless IoU > thr with a kept box."""
    b = boxes.double().tolist()
    s = scores.double().tolist()
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))
    keep = []
    for i in order:
        if all(ref_iou(b[i], b[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def random_case(n, seed, tie_scores=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    scores = torch.rand(n, generator=g)
    if tie_scores:
        scores = (scores * 5).floor() / 5  # only 5 distinct values: many ties
    return torch.cat([xy, xy + wh], dim=1), scores


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_greedy_reference(thr, ties):
    boxes, scores = random_case(150, 0, ties)
    assert nms(boxes, scores, thr, impl="torch").tolist() == ref_nms(boxes, scores, thr)


def test_many_boxes_cross_blocks():
    boxes, scores = random_case(600, 1, tie_scores=True)  # > one 256-box block
    assert nms(boxes, scores, 0.5, impl="torch").tolist() == ref_nms(boxes, scores, 0.5)


def test_hand_case_and_duplicates():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    # box 3 duplicates box 0 with the same score: lower index wins; IoU(0,1) = 81/119 = 0.68
    assert nms(boxes, scores, 0.5, impl="torch").tolist() == [0, 2]
    assert nms(boxes, scores, 0.7, impl="torch").tolist() == [0, 1, 2]
    assert nms(boxes, scores, 1.0, impl="torch").tolist() == [0, 3, 1, 2]  # IoU 1 is not > 1


def test_empty_single_and_errors():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5, impl="torch").tolist() == []
    assert nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5, impl="torch").tolist() == [0]
    with pytest.raises(ValueError, match="NaN"):
        nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([float("nan")]), 0.5, impl="torch")
    with pytest.raises(ValueError, match="N x 4"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5, impl="torch")
    # NaN coordinates never suppress and are never suppressed
    boxes = torch.tensor([[0.0, 0, 10, 10], [float("nan"), 0, 10, 10]])
    assert nms(boxes, torch.tensor([0.5, 0.9]), 0.1, impl="torch").tolist() == [1, 0]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).tolist() == []


def test_batched_matches_per_class_reference():
    boxes, scores = random_case(200, 2, tie_scores=True)
    classes = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(3))
    got = batched_nms(boxes, scores, classes, 0.5, impl="torch").tolist()
    kept = []
    for c in range(4):
        idx = [i for i in range(200) if classes[i] == c]
        kept += [idx[j] for j in ref_nms(boxes[idx], scores[idx], 0.5)]
    expected = sorted(kept, key=lambda i: (-scores[i].item(), i))
    assert got == expected
    # same class everywhere == plain nms
    same = torch.zeros(200, dtype=torch.long)
    assert batched_nms(boxes, scores, same, 0.5, impl="torch").tolist() == ref_nms(boxes, scores, 0.5)


@pytest.mark.skipif(torchvision_ops() is None, reason="torchvision's compiled ops are not importable")
def test_agrees_with_torchvision():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    boxes, scores = random_case(500, 4)  # distinct scores: tie order is not specified by torchvision
    boxes, scores = boxes.to(device), scores.to(device)
    classes = (torch.arange(500) % 3).to(device)
    for thr in (0.3, 0.6):
        a = nms(boxes, scores, thr, impl="torch")
        b = nms(boxes, scores, thr, impl="torchvision")
        assert a.tolist() == b.tolist()
        a = batched_nms(boxes, scores, classes, thr, impl="torch")
        b = batched_nms(boxes, scores, classes, thr, impl="torchvision")
        assert sorted(a.tolist()) == sorted(b.tolist())


# --- the fast path against the earlier implementation (omniseg.ops.nms_reference), exactly ---


def hostile_case(n, seed, *, grid=False, ties=False, dup=0.0, flat=0.0, nonfinite=0.0, scale=100.0):
    """Random boxes with the awkward parts: integer grids (IoUs exactly at thresholds), tied
    scores, duplicated boxes, zero-area / inverted boxes, NaN and inf coordinates."""
    g = torch.Generator().manual_seed(seed)
    if grid:
        xy = torch.randint(0, 8, (n, 2), generator=g).double()
        boxes = torch.cat([xy, xy + torch.randint(1, 5, (n, 2), generator=g).double()], dim=1)
    else:
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale
        wh = torch.exp(torch.rand(n, 2, generator=g, dtype=torch.float64) * 3) * scale / 40
        boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 4).floor() / 4
    if n and dup:
        src = torch.randint(0, n, (n,), generator=g)
        take = torch.rand(n, generator=g) < dup
        boxes[take] = boxes[src[take]]
    if n and flat:
        take = torch.rand(n, generator=g) < flat
        boxes[take, 2] = boxes[take, 0] - torch.randint(0, 2, (int(take.sum()),), generator=g).double()  # w 0 or -1
    if n and nonfinite:
        take = (torch.rand(n, generator=g) < nonfinite).nonzero().flatten()
        vals = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
        col = torch.randint(0, 4, (take.numel(),), generator=g)
        boxes[take, col] = vals[torch.randint(0, 3, (take.numel(),), generator=g)]
    return boxes, scores


CASES = {
    "plain": dict(),
    "grid": dict(grid=True),
    "grid_ties": dict(grid=True, ties=True),
    "ties_dups": dict(ties=True, dup=0.3),
    "flat_nonfinite": dict(ties=True, flat=0.15, nonfinite=0.15, dup=0.1),
    "dense": dict(scale=10.0, ties=True),
}
THRESHOLDS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_cases_match_reference(case):
    for seed, n in enumerate([0, 1, 2, 3, 17, 64, 250]):
        boxes, scores = hostile_case(n, seed, **CASES[case])
        for thr in THRESHOLDS:
            expected = nms_reference(boxes, scores, thr).tolist()
            assert nms(boxes, scores, thr, impl="torch").tolist() == expected, (case, n, thr)
            assert nms(boxes.float(), scores, thr, impl="torch").tolist() == nms_reference(boxes.float(), scores, thr).tolist()


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_random_cases_match_reference(case):
    for seed, n in enumerate([2, 40, 300]):
        boxes, scores = hostile_case(n, 100 + seed, **CASES[case])
        g = torch.Generator().manual_seed(seed)
        for classes in (torch.randint(-3, 3, (n,), generator=g), torch.randint(0, 2**40, (n,), generator=g) % 7 * 10**9):
            for thr in (0.0, 0.5, 0.7):
                expected = batched_nms_reference(boxes, scores, classes, thr).tolist()
                assert batched_nms(boxes, scores, classes, thr, impl="torch").tolist() == expected, (case, n, thr)


def test_threshold_boundaries_and_degenerate_thresholds():
    # IoU exactly 0.5 does not suppress; just above does.
    boxes = torch.tensor([[0.0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 2, 1.0000001]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5, impl="torch").tolist() == [0, 1]
    boxes, scores = hostile_case(120, 7, grid=True, ties=True, flat=0.1, nonfinite=0.1)
    for thr in (-0.5, math.nan, 1.0 + 1e-12, 1.5, math.inf, 1e-7, 1e-300):
        assert nms(boxes, scores, thr, impl="torch").tolist() == nms_reference(boxes, scores, thr).tolist(), thr
    classes = torch.arange(120) % 3
    for thr in (-0.5, math.nan):
        assert (batched_nms(boxes, scores, classes, thr, impl="torch").tolist()
                == batched_nms_reference(boxes, scores, classes, thr).tolist())


def test_extreme_scales_use_exact_windows():
    # tiny sides (products near underflow) and huge coordinates (areas overflow)
    for scale in (1e-118, 1e-300, 1e150, 1e300):
        boxes, scores = hostile_case(150, 3, ties=True, dup=0.2, scale=1.0)
        boxes = boxes * scale
        for thr in (0.0, 0.3, 0.7):
            assert nms(boxes, scores, thr, impl="torch").tolist() == nms_reference(boxes, scores, thr).tolist()


def test_blocks_chunks_and_sequential_finish(monkeypatch):
    """Small pair budgets force many blocks and chunks; one fixed-point round forces the
    sequential finish; long chains of boxes need it for real."""
    monkeypatch.setattr(nms_module, "_BLOCK_PAIRS", 200)
    monkeypatch.setattr(nms_module, "_MIN_BLOCK", 8)
    monkeypatch.setattr(nms_module, "_PAIR_CHUNK", 64)
    for case in ("plain", "ties_dups", "dense", "flat_nonfinite"):
        boxes, scores = hostile_case(400, 11, **CASES[case])
        classes = torch.arange(400) % 2
        for thr in (0.3, 0.7):
            assert nms(boxes, scores, thr, impl="torch").tolist() == nms_reference(boxes, scores, thr).tolist()
            assert (batched_nms(boxes, scores, classes, thr, impl="torch").tolist()
                    == batched_nms_reference(boxes, scores, classes, thr).tolist())
    monkeypatch.setattr(nms_module, "_ROUNDS", 1)
    boxes, scores = hostile_case(300, 12, **CASES["dense"])
    assert nms(boxes, scores, 0.5, impl="torch").tolist() == nms_reference(boxes, scores, 0.5).tolist()
    monkeypatch.undo()
    # a row of boxes, each overlapping the next three, by decreasing score: a 300-long chain
    x = torch.arange(300, dtype=torch.float64) * 3
    row = torch.stack([x, torch.zeros_like(x), x + 10, torch.full_like(x, 10)], dim=1)
    scores = torch.linspace(1, 0, 300)
    for thr in (0.3, 0.5):
        assert nms(row, scores, thr, impl="torch").tolist() == nms_reference(row, scores, thr).tolist()


def test_identical_boxes_and_large_random_case():
    same = torch.tensor([[10.0, 10, 200, 200]]).repeat(3000, 1)
    scores = torch.rand(3000, generator=torch.Generator().manual_seed(0))
    assert nms(same, scores, 0.5, impl="torch").tolist() == [int(scores.argmax())]
    boxes, scores = hostile_case(2000, 5, ties=True, dup=0.05)
    assert nms(boxes, scores, 0.5, impl="torch").tolist() == nms_reference(boxes, scores, 0.5).tolist()


def test_rpn_one_call_for_all_images_matches_per_image_reference():
    """select_proposals runs one batched NMS over images x levels; per image, per level with the
    reference gives the same proposals in the same order."""
    gen = AnchorGenerator()
    sizes = [(2, 2) if s >= 32 else (64 // s, 64 // s) for s in gen.strides]
    anchors = gen(sizes)
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, a.shape[0], generator=g).round(decimals=1) for a in anchors]  # with ties
    deltas = [torch.randn(3, a.shape[0], 4, generator=g) * 0.3 for a in anchors]
    image_sizes = [(64, 64), (50, 60), (64, 40)]
    got = select_proposals(anchors, logits, deltas, image_sizes, pre_nms_topk=300, post_nms_topk=100)
    for i, (h, w) in enumerate(image_sizes):
        boxes, scores, levels = [], [], []
        for lvl, (anc, lo, de) in enumerate(zip(anchors, logits, deltas)):
            top_s, top_i = lo[i].topk(min(300, lo.shape[1]), sorted=True)
            boxes.append(decode_boxes(de[i][top_i], anc[top_i], RPN_BOX_WEIGHTS))
            scores.append(top_s)
            levels.append(torch.full((top_s.numel(),), lvl))
        b, s, lv = clip_boxes(torch.cat(boxes), (h, w)), torch.cat(scores), torch.cat(levels)
        ok = ((b[:, 2:] - b[:, :2]) > 0).all(dim=1)
        b, s, lv = b[ok], s[ok], lv[ok]
        keep = batched_nms_reference(b, s, lv, 0.7)[:100]
        assert torch.equal(got[i].boxes, b[keep]) and torch.equal(got[i].objectness_logits, s[keep])
    assert select_proposals(anchors, logits, deltas, [], 10, 10) == []
