import json
from collections import Counter

import pytest

from omniseg.data.sampler import MultiSourceBatchSampler


def _take(sampler: MultiSourceBatchSampler, n: int) -> list[list[tuple[int, int, int]]]:
    return [sampler.next_batch() for _ in range(n)]


def test_alternate_exact_proportions_and_order():
    s = MultiSourceBatchSampler([10, 25], batch_size=3, policy="alternate", weights=[1, 2])
    batches = _take(s, 30)
    per_batch = [{k[0] for k in b} for b in batches]
    assert all(len(p) == 1 for p in per_batch)  # whole batches from one source
    assert [p.pop() for p in per_batch] == [0, 1, 1] * 10
    counts = Counter(k[0] for b in batches for k in b)
    assert counts == {0: 30, 1: 60}
    assert s.epoch_batches == 3


def test_switchable_schedule_boundaries():
    # sources: 0 = detection, 1 = panoptic, 2 = image-text (both phases)
    s = MultiSourceBatchSampler([40, 30, 50], batch_size=2, policy="switchable",
                                warmup_sources=[0, 2], cooldown_sources=[1, 2],
                                warmup_batches=5, cooldown_batches=3)
    batches = _take(s, 24)
    sources = [b[0][0] for b in batches]
    assert all(len({k[0] for k in b}) == 1 for b in batches)
    epoch = [0, 2, 0, 2, 0] + [1, 2, 1]
    assert sources == epoch * 3
    assert [s.phase_of(i) for i in range(9)] == ["warmup"] * 5 + ["cooldown"] * 3 + ["warmup"]
    assert s.epoch_batches == 8


def test_switchable_default_lengths_are_one_pass():
    s = MultiSourceBatchSampler([40, 30, 50], batch_size=5, policy="switchable",
                                warmup_sources=[0, 2], cooldown_sources=[1, 2], world_size=2)
    # per rank: 20, 15, 25 indices -> 4 + 5 warmup batches, 3 + 5 cooldown batches
    assert s.epoch_batches == 17
    assert [s.phase_of(i) for i in (0, 8, 9, 16, 17)] == ["warmup", "warmup", "cooldown", "cooldown", "warmup"]


def test_mix_proportions_within_tolerance_and_mixed_batches():
    s = MultiSourceBatchSampler([50, 50], batch_size=8, policy="mix", weights=[1, 3], seed=11)
    batches = _take(s, 400)
    frac0 = sum(k[0] == 0 for b in batches for k in b) / 3200
    # binomial sd = sqrt(0.25 * 0.75 / 3200) = 0.0077; allow 4 sd
    assert abs(frac0 - 0.25) < 0.031
    assert any(len({k[0] for k in b}) == 2 for b in batches)
    zero = MultiSourceBatchSampler([5, 5], batch_size=4, policy="mix", weights=[0, 1])
    assert all(k[0] == 1 for b in _take(zero, 10) for k in b)


@pytest.mark.parametrize("policy", ["mix", "alternate"])
def test_ranks_draw_disjoint_indices(policy):
    sizes, world = [10, 23], 3
    per_rank = [s // world for s in sizes]
    samplers = [MultiSourceBatchSampler(sizes, 2, policy=policy, rank=r, world_size=world, seed=4)
                for r in range(world)]
    draws = [_take(s, 40) for s in samplers]
    for src in range(2):
        per = [[k[1] for b in d for k in b if k[0] == src] for d in draws]
        assert len({len(p) for p in per}) == 1  # ranks consume each source at the same rate
        n_pass = len(per[0]) // per_rank[src]
        assert n_pass >= 2
        for p in range(n_pass):
            chunk = [set(x[p * per_rank[src]:(p + 1) * per_rank[src]]) for x in per]
            assert all(len(c) == per_rank[src] for c in chunk)  # no repeat within a pass
            assert not (chunk[0] & chunk[1]) and not (chunk[0] & chunk[2]) and not (chunk[1] & chunk[2])
            assert all(0 <= i < sizes[src] for c in chunk for i in c)


def test_single_rank_pass_is_a_permutation_and_reshuffles():
    s = MultiSourceBatchSampler([20], batch_size=4, policy="alternate", seed=2)
    idx = [k[1] for b in _take(s, 10) for k in b]
    assert sorted(idx[:20]) == list(range(20)) and sorted(idx[20:]) == list(range(20))
    assert idx[:20] != idx[20:]
    other = MultiSourceBatchSampler([20], batch_size=4, policy="alternate", seed=3)
    assert [k[1] for b in _take(other, 5) for k in b] != idx[:20]


def test_aug_seeds_are_fresh_per_draw():
    s = MultiSourceBatchSampler([3], batch_size=3, policy="mix")
    keys = [k for b in _take(s, 4) for k in b]
    assert len({k[2] for k in keys}) == len(keys)


@pytest.mark.parametrize("policy", ["mix", "alternate", "switchable"])
def test_resume_continues_the_same_sequence(policy):
    kw = dict(policy=policy, weights=[1, 2, 1], warmup_sources=[0, 2], cooldown_sources=[1, 2],
              warmup_batches=3, cooldown_batches=2, rank=1, world_size=2, seed=9)
    a = MultiSourceBatchSampler([9, 14, 6], 3, **kw)
    _take(a, 7)
    state = json.loads(json.dumps(a.state_dict()))
    expected = _take(a, 12)
    b = MultiSourceBatchSampler([9, 14, 6], 3, **kw)
    b.load_state_dict(state)
    assert _take(b, 12) == expected
    assert b.state_dict() == a.state_dict()


def test_load_state_rejects_other_layout():
    a = MultiSourceBatchSampler([9, 14], 3, policy="mix")
    b = MultiSourceBatchSampler([9, 15], 3, policy="mix")
    with pytest.raises(ValueError, match="sizes"):
        b.load_state_dict(a.state_dict())
    c = MultiSourceBatchSampler([9, 14], 3, policy="mix", rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        c.load_state_dict(a.state_dict())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="policy"):
        MultiSourceBatchSampler([4], 2, policy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="world_size"):
        MultiSourceBatchSampler([4], 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than world_size"):
        MultiSourceBatchSampler([4, 1], 2, world_size=2)
    with pytest.raises(ValueError, match="integer"):
        MultiSourceBatchSampler([4, 4], 2, policy="alternate", weights=[1, 1.5])
    with pytest.raises(ValueError, match="warmup_sources"):
        MultiSourceBatchSampler([4, 4], 2, policy="switchable", cooldown_sources=[1])
    with pytest.raises(ValueError, match="weights"):
        MultiSourceBatchSampler([4, 4], 2, weights=[1])
