"""bench/alp_overlap.py: which exact-box FCOS locations an ALP box takes over (smallest area wins)."""

from __future__ import annotations

BENCH = ("alp_overlap",)


def test_smaller_alp_inside_takes_the_central_locations_a_larger_one_none(bench):
    import torch

    taken = bench["alp_overlap"].taken_locations
    exact = torch.tensor([[64.0, 64.0, 128.0, 128.0]])
    own, lost, shares = taken(exact, torch.zeros(0, 4), 256)
    assert own > 0 and lost == 0 and shares == [0.0]  # no ALPs: every location stays
    # a larger ALP box around it: the exact box has the smaller area and keeps everything
    assert taken(exact, torch.tensor([[56.0, 56.0, 136.0, 136.0]]), 256)[1:] == (0, [0.0])
    # an ALP far away takes nothing
    assert taken(exact, torch.tensor([[0.0, 0.0, 30.0, 30.0]]), 256)[1:] == (0, [0.0])
    # a scribble box on the centre, smaller than the object: it takes the centre-sampled locations it covers
    own2, lost2, shares2 = taken(exact, torch.tensor([[80.0, 80.0, 112.0, 112.0]]), 256)
    assert own2 == own and 0 < lost2 <= own and shares2 == [lost2 / own]
    # the same box counted as exact twice (two exact objects) loses nothing to ALPs
    assert taken(torch.cat([exact, exact]), torch.zeros(0, 4), 256)[1] == 0


def test_a_missing_config_is_one_line_and_exit_1(bench_error, tmp_path):
    assert "none.yaml" in bench_error("alp_overlap", str(tmp_path / "none.yaml"))
