import pytest
import torch

from omniseg.ops.nms import batched_nms, nms
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
