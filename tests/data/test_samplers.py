"""GroupedBatchSampler: shards, aspect grouping, determinism, mid-epoch resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from solo_npu.data.samplers import GroupedBatchSampler


def _indices(batches):
    return [[i for i, _ in b] for b in batches]


def test_ranks_get_disjoint_covering_shards_of_equal_length():
    flags = np.array([1, 0] * 12)  # 12 per group: divisible by batch 3 and 4 batches per rank
    shards = [list(GroupedBatchSampler(24, 3, flags, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    flat = [set(i for b in _indices(s) for i in b) for s in shards]
    assert flat[0].isdisjoint(flat[1]) and flat[0] | flat[1] == set(range(24))


def test_padding_gives_equal_batches_and_only_repeats_to_fill():
    flags = np.array([1] * 7 + [0] * 4)  # 11 samples, groups of 7 and 4, batch 3
    shards = [GroupedBatchSampler(11, 3, flags, seed=0, rank=r, world_size=3) for r in range(3)]
    batches = [list(s) for s in shards]
    assert [len(b) for b in batches] == [len(s) for s in shards] == [2, 2, 2]
    counts = Counter(i for b in batches for batch in _indices(b) for i in batch)
    assert set(counts) == set(range(11))  # every sample is seen
    # groups padded to 9 + 6 = 15 slots (5 batches), then to 6 batches for 3 ranks: 7 repeats in all
    assert sum(counts.values()) == 18 and sum(c - 1 for c in counts.values()) == 7
    assert all(len(b) == 3 for s in batches for b in s)


def test_batches_hold_one_aspect_group_and_carry_the_epoch():
    flags = np.random.default_rng(0).integers(0, 2, 30)
    sampler = GroupedBatchSampler(30, 4, flags, seed=3, epoch=5)
    for batch in sampler:
        assert len({int(flags[i]) for i, _ in batch}) == 1
        assert {e for _, e in batch} == {5}


def test_deterministic_from_seed_and_epoch():
    flags = np.random.default_rng(0).integers(0, 2, 40)
    a = list(GroupedBatchSampler(40, 4, flags, seed=7, epoch=2))
    b = list(GroupedBatchSampler(40, 4, flags, seed=7, epoch=2))
    s = GroupedBatchSampler(40, 4, flags, seed=7)
    s.set_epoch(3)
    assert a == b and _indices(a) != _indices(list(s))
    assert _indices(a) != _indices(list(GroupedBatchSampler(40, 4, flags, seed=8, epoch=2)))


@pytest.mark.parametrize("start_iter", [0, 3, 6])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(start_iter):
    flags = np.random.default_rng(1).integers(0, 2, 50)
    full = list(GroupedBatchSampler(50, 4, flags, seed=2, rank=1, world_size=2, epoch=4))
    resumed = GroupedBatchSampler(50, 4, flags, seed=2, rank=1, world_size=2)
    resumed.set_epoch(4, start_iter=start_iter)
    assert len(resumed) == len(full) - start_iter
    assert list(resumed) == full[start_iter:]


def test_sequential_unpadded_sharding_for_evaluation():
    shards = [list(GroupedBatchSampler(10, 3, shuffle=False, pad=False, rank=r, world_size=3)) for r in range(3)]
    assert _indices(shards[0]) == [[0, 1, 2], [9]] and _indices(shards[1]) == [[3, 4, 5]]
    assert _indices(shards[2]) == [[6, 7, 8]]
    assert len(GroupedBatchSampler(10, 3, shuffle=False, pad=False, rank=0, world_size=3)) == 2


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="rank"):
        GroupedBatchSampler(4, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="group flags"):
        GroupedBatchSampler(4, 2, np.zeros(3))
