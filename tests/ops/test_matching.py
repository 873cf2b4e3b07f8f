import itertools
import math

import pytest
import torch

from omniseg.ops.matching import (
    MatcherConfig,
    batch_class_cost,
    batch_dice_cost,
    batch_sigmoid_ce_cost,
    hungarian_match,
    match_queries,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_batch_costs_match_pairwise_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(3, 9, generator=g) > 0.5).double()
    t[0, 0] = 0.25
    ce = batch_sigmoid_ce_cost(x, t)
    dice = batch_dice_cost(x, t)
    assert ce.shape == dice.shape == (4, 3)
    for n in range(4):
        for m in range(3):
            ps = [sig(v) for v in x[n].tolist()]
            ts = t[m].tolist()
            ref_ce = sum(-(b * math.log(p) + (1 - b) * math.log(1 - p)) for p, b in zip(ps, ts)) / 9
            ref_dice = 1 - (2 * sum(p * b for p, b in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)
            assert ce[n, m].item() == pytest.approx(ref_ce, rel=1e-10)
            assert dice[n, m].item() == pytest.approx(ref_dice, rel=1e-10)
    logits = torch.randn(4, 5, generator=g)
    labels = torch.tensor([4, 0, 4])
    cls = batch_class_cost(logits, labels)
    assert torch.allclose(cls, -logits.softmax(-1)[:, [4, 0, 4]])
    assert torch.allclose(batch_class_cost(logits, labels, use_sigmoid=True), -logits.sigmoid()[:, [4, 0, 4]])
    assert batch_dice_cost(x, t[:0]).shape == (4, 0)


def test_hungarian_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    for n, m in [(4, 3), (3, 4), (5, 5)]:
        cost = torch.rand(n, m, generator=g)
        rows, cols = hungarian_match(cost)
        k = min(n, m)
        assert len(rows) == len(cols) == k and len(set(rows.tolist())) == k and len(set(cols.tolist())) == k
        got = cost[rows, cols].sum().item()
        if n >= m:
            best = min(sum(cost[p[j], j].item() for j in range(m)) for p in itertools.permutations(range(n), m))
        else:
            best = min(sum(cost[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(m), n))
        assert got == pytest.approx(best, rel=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        hungarian_match(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def _targets_from_queries(masks, order):
    return (masks[order] > 0).float()


def test_match_queries_recovers_permutation_and_respects_mask_valid():
    g = torch.Generator().manual_seed(2)
    q, c, h = 6, 4, 16
    pred_masks = torch.randn(1, q, h, h, generator=g) * 10
    pred_logits = torch.zeros(1, q, c)
    order = torch.tensor([4, 1, 3])
    tgt = {"labels": torch.tensor([0, 0, 0]), "masks": _targets_from_queries(pred_masks[0], order)}
    rows, cols = match_queries(pred_logits, pred_masks, [tgt], MatcherConfig(num_points=256), g)[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 1, 2: 3}
    # A target without mask supervision is matched on class only, whatever its (fake) mask says.
    pred_logits2 = torch.full((1, q, c), -5.0)
    pred_logits2[0, 0, 2] = 5.0  # only query 0 believes in class 2
    tgt2 = {
        "labels": torch.tensor([0, 2]),
        "masks": torch.stack([(pred_masks[0, 1] > 0).float(), (pred_masks[0, 5] > 0).float()]),
        "mask_valid": torch.tensor([True, False]),
    }
    rows, cols = match_queries(pred_logits2, pred_masks, [tgt2], MatcherConfig(num_points=256), g)[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}
    tgt2["mask_valid"] = torch.tensor([True, True])  # now the mask term pulls target 1 to query 5
    rows, cols = match_queries(pred_logits2, pred_masks, [tgt2], MatcherConfig(num_points=256), g)[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 5}


def test_match_queries_empty_and_reproducible():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3, generator=g)
    masks = torch.randn(2, 5, 8, 8, generator=g)
    targets = [
        {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8)},
        {"labels": torch.tensor([1, 2]), "masks": (torch.rand(2, 32, 32, generator=g) > 0.5).float()},
    ]
    out1 = match_queries(logits, masks, targets, MatcherConfig(num_points=64), torch.Generator().manual_seed(7))
    out2 = match_queries(logits, masks, targets, MatcherConfig(num_points=64), torch.Generator().manual_seed(7))
    assert out1[0][0].numel() == 0 and out1[0][1].numel() == 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(out1, out2))
    assert len(out1[1][0]) == 2
    with pytest.raises(ValueError, match="target dicts"):
        match_queries(logits, masks, targets[:1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out3 = match_queries(logits, masks, targets, MatcherConfig(num_points=64), torch.Generator().manual_seed(7))
    assert torch.equal(out3[1][1], out1[1][1])
