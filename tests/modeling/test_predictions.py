"""ImagePrediction / InstancePredictions: restrict, records, and the per-pixel argmax (semantic_labels)."""

from __future__ import annotations

import math

import pytest
import torch

from omniseg.modeling.predictions import ImagePrediction, InstancePredictions, semantic_labels
from omniseg.ops.rle import rle_decode

INF = math.inf


def _prediction(semantic: torch.Tensor | None = None) -> ImagePrediction:
    boxes = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 1, 1]])
    masks = torch.zeros(3, 3, 3, dtype=torch.bool)
    masks[0, :2, :2] = masks[1, 1:, 1:] = masks[2, 0, 0] = True
    inst = InstancePredictions(boxes, torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0, 1, 0]), masks)
    return ImagePrediction(inst, ["cat", "dog"], region_embeddings=torch.arange(6.0).view(3, 2), semantic=semantic)


def test_semantic_labels_hand_values():
    """2 classes x 1 x 4 pixels: a clear winner, a tie (the first class), NaN next to a number (the
    number wins), and both ruled out (-inf, NaN: no class)."""
    scores = torch.tensor([[[0.2, 0.5, math.nan, -INF]], [[0.7, 0.5, -3.0, math.nan]]])
    labels, best = semantic_labels(scores)
    assert labels.tolist() == [[1, 0, 1, -1]]
    assert best.tolist() == [[pytest.approx(0.7), 0.5, -3.0, -INF]]
    labels, _ = semantic_labels(scores, min_score=0.6)
    assert labels.tolist() == [[1, -1, -1, -1]]
    labels, best = semantic_labels(torch.zeros(0, 2, 3))
    assert labels.tolist() == [[-1] * 3] * 2 and best.isnan().all()
    with pytest.raises(ValueError, match="K x H x W"):
        semantic_labels(torch.zeros(2, 3))


def test_semantic_labels_match_a_slow_reference():
    torch.manual_seed(0)
    scores = torch.randn(5, 7, 6)
    labels, best = semantic_labels(scores, min_score=0.5)
    for i in range(7):
        for j in range(6):
            column = scores[:, i, j].tolist()
            top = max(column)
            assert best[i, j].item() == pytest.approx(top)
            assert labels[i, j].item() == (column.index(top) if top >= 0.5 else -1)


def test_restrict_keeps_instances_of_the_vocabulary_and_rules_out_other_channels():
    semantic = torch.tensor([[[0.1, 0.9]], [[0.8, 0.2]]])  # cat, dog over 1 x 2 pixels
    out = _prediction(semantic).restrict(["cat"])
    assert out.instances.labels.tolist() == [0, 0] and out.instances.scores.tolist() == pytest.approx([0.9, 0.2])
    assert out.region_embeddings.tolist() == [[0.0, 1.0], [4.0, 5.0]]
    assert out.texts == ["cat", "dog"]  # labels still index the same texts
    assert out.semantic.tolist() == [[[pytest.approx(0.1), pytest.approx(0.9)]], [[-INF, -INF]]]
    assert semantic_labels(out.semantic)[0].tolist() == [[0, 0]]
    assert semantic.tolist()[1] == [[pytest.approx(0.8), pytest.approx(0.2)]]  # the input is not changed
    assert _prediction().restrict(["dog"]).semantic is None  # models without per-pixel output


def test_to_instances_names_and_masks():
    found = _prediction().to_instances(category_ids=[7, None], source="unit")
    assert [(i.text, i.category_id, i.source) for i in found] == [("cat", 7, "unit"), ("dog", None, "unit"),
                                                                 ("cat", 7, "unit")]
    assert rle_decode(found[1].mask).tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert found[0].box == (0.0, 0.0, 2.0, 2.0) and found[2].score == pytest.approx(0.2)
