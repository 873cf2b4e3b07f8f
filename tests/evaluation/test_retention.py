import math

import pytest

from omniseg.evaluation.retention import retention_rate, retention_table


@pytest.mark.parametrize(
    "box_ap, full_ap, ret_percent",
    [
        # MAL Table 1 (val): (box-supervised mask AP, supervised mask AP of the same model, Ret.)
        (35.0, 37.5, 93.3),  # SOLOv2 ResNet-50
        (42.3, 44.8, 94.4),  # Cascade R-CNN ConvNeXt-Small
        (43.3, 46.1, 93.9),  # Mask2Former Swin-Small
        (30.7, 37.5, 81.9),  # DiscoBox SOLOv2 ResNet-50
    ],
)
def test_matches_mal_table_1(box_ap, full_ap, ret_percent):
    assert round(100 * retention_rate(box_ap, full_ap), 1) == ret_percent


def test_hand_values_and_edges():
    assert retention_rate(0.3, 0.4) == pytest.approx(0.75)
    assert retention_rate(0.0, 0.4) == 0.0
    assert retention_rate(0.5, 0.4) == pytest.approx(1.25)  # may exceed 1; not clipped
    assert math.isnan(retention_rate(float("nan"), 0.4))
    with pytest.raises(ValueError, match="fully supervised AP must be > 0"):
        retention_rate(0.3, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        retention_rate(-0.1, 0.5)


def test_table():
    box = {"AP": 0.3, "novel/AP": 0.2, "APs": 0.1, "only_here": 1.0}
    full = {"AP": 0.4, "novel/AP": 0.25, "APs": 0.0}
    out = retention_table(box, full)
    assert set(out) == {"AP", "novel/AP", "APs"}
    assert out["AP"] == pytest.approx(0.75) and out["novel/AP"] == pytest.approx(0.8)
    assert math.isnan(out["APs"])
