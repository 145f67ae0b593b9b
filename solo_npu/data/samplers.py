"""Deterministic, distributed, aspect-ratio grouped batch sampling with mid-epoch resume.

The list of batches of an epoch is a pure function of (seed, epoch, dataset size, group flags),
computed identically on every rank; rank ``r`` takes batches ``r, r + world_size, ...``. Batches
yield ``(index, epoch)`` pairs, which :class:`~solo_npu.data.coco.CocoInstanceDataset` uses to seed
the sample's augmentation, so a sample never depends on worker state or on where training resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler over ``num_samples`` indices.

    Args:
        num_samples: dataset length.
        batch_size: images per batch on each rank.
        group_flags: optional int/bool [N]; a batch only holds indices of one group (e.g. w >= h).
        shuffle: random order from (seed, epoch); otherwise sequential.
        seed: base seed, identical on every rank.
        rank, world_size: this process's shard.
        pad: complete each group's last batch and the rank split by repeating indices (training: every
            rank gets the same number of full batches); without it the last batches may be short and
            ranks may differ by one batch (evaluation: every index exactly once).
        epoch, start_iter: see :meth:`set_epoch`.
    """

    def __init__(self, num_samples: int, batch_size: int, group_flags: np.ndarray | None = None, *,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True,
                 epoch: int = 0, start_iter: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if group_flags is not None and len(group_flags) != num_samples:
            raise ValueError(f"{len(group_flags)} group flags for {num_samples} samples")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.group_flags = None if group_flags is None else np.asarray(group_flags).astype(np.int64)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad = pad
        self.set_epoch(epoch, start_iter)

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        """Select the epoch to iterate and the number of this rank's batches to skip (exact resume)."""
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.epoch = int(epoch)
        self.start_iter = int(start_iter)

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches of an epoch, in global order."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        flags = np.zeros(self.num_samples, np.int64) if self.group_flags is None else self.group_flags
        batches: list[list[int]] = []
        for group in np.unique(flags):
            members = order[flags[order] == group]
            if self.pad and len(members) % self.batch_size:
                extra = self.batch_size - len(members) % self.batch_size
                members = np.concatenate([members, np.resize(members, extra)])
            batches += [members[i:i + self.batch_size].tolist() for i in range(0, len(members), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        elif self.group_flags is not None:
            batches.sort(key=lambda b: b[0])
        if self.pad and len(batches) % self.world_size:
            extra = self.world_size - len(batches) % self.world_size
            batches += [batches[i % len(batches)] for i in range(extra)]
        return batches

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch, before skipping ``start_iter``."""
        return self.epoch_batches(epoch)[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.rank_batches(epoch)[self.start_iter:]:
            yield [(i, epoch) for i in batch]

    def __len__(self) -> int:
        """Batches this rank yields in the selected epoch (after ``start_iter``)."""
        if self.pad:
            total = 0
            flags = np.zeros(self.num_samples, np.int64) if self.group_flags is None else self.group_flags
            for count in np.unique(flags, return_counts=True)[1]:
                total += -(-int(count) // self.batch_size)
            per_rank = -(-total // self.world_size)
        else:
            per_rank = len(self.rank_batches())
        return max(0, per_rank - self.start_iter)
