"""Batches: :func:`collate`, the training order (:class:`EpochSampler`: per-epoch permutation and per-image
augmentation seeds), the distributed evaluation order (:class:`RankBatchSampler`) and :func:`build_loader`."""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from yolo_loss.data.bad_input import DataError
from yolo_loss.data.dataset import DetectionDataset


def collate(batch: Sequence[tuple[Tensor, Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Stack samples of :class:`DetectionDataset`.

    Returns:
        ``images`` ``Tensor[B, 3, S, S]``; ``targets`` ``Tensor[N, 6]`` rows ``(image index in the batch,
        class, cx, cy, w, h)`` with the box normalised to the input size, ``N`` the boxes of all images;
        ``metas``, the ``B`` meta dicts in order.
    """
    images, targets, metas = zip(*batch)
    rows = [torch.cat((target.new_full((len(target), 1), float(i)), target), dim=1) for i, target in enumerate(targets)]
    return torch.stack(images), torch.cat(rows) if rows else torch.zeros((0, 6)), list(metas)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` with the worker's torch seed.

    PyTorch seeds each worker's torch generator with ``base_seed + worker_id``, ``base_seed`` drawn from the
    loader's generator. PyTorch 1.9 and later also seed numpy and ``random`` in workers, by a formula of their
    own; this hook states the rule here (numpy's and ``random``'s seed is the worker's torch seed) so that it
    does not depend on the PyTorch version. The transforms draw from torch only; this is for any numpy or
    ``random`` use added later.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


SEED_RANGE = 2**62  # per-image augmentation seeds are in [0, 2^62)
AUGMENT_SEED_MIX = 0x2545F4914F6CDD1D  # an odd 64-bit constant: augment_seed k shifts every seed by k * this


class EpochSampler(Sampler[tuple[int, int]]):
    """The training order: every epoch, a permutation of the ``size`` samples and a seed for each, both drawn from
    ``generator``; yields ``(index, seed)`` pairs, which :class:`DetectionDataset` reads.

    Each sample's augmentation draws from its own generator seeded with its seed, so it depends only on the
    generator's state at the start of the epoch and the sample's position in it: the same with 0 or 8 loader
    workers, and exactly the same again when a run resumes mid-epoch. To resume, restore the generator's state
    from the start of the epoch and set ``start`` to the number of samples already trained (by all processes):
    the next epoch drawn skips them (without loading them) and continues identically; ``start`` then returns to 0.

    Under ``torchrun`` (``world_size`` N > 1) every process draws the same permutation and seeds from a generator
    seeded alike, and the order is cut into global batches of N * ``batch_size``: process ``rank`` takes the
    slice ``[rank * batch_size, (rank + 1) * batch_size)`` of each. N processes then see, step by step, exactly
    the batches one process with batch N * ``batch_size`` sees. The samples after the last whole global batch are
    left out of the epoch (one process drops its last partial batch too), so every process takes the same number
    of steps.

    ``augment_seed`` (``train.augment_seed``) shifts every augmentation seed by a constant of its own, so it
    changes the augmentation draws and nothing else (the order and everything drawn before stay): the nuisance
    seed of an A/A check. 0 leaves the seeds as drawn.
    """

    def __init__(self, size: int, generator: torch.Generator, *, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1, augment_seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size = size
        self.generator = generator
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed_offset = augment_seed * AUGMENT_SEED_MIX % SEED_RANGE
        self.start = 0

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        return self.size // (self.batch_size * self.world_size) * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator)
        seeds = (torch.randint(0, SEED_RANGE, (self.size,), generator=self.generator) + self.seed_offset) % SEED_RANGE
        start, self.start = self.start, 0
        if self.world_size == 1:
            positions = torch.arange(start, self.size)
        else:
            global_batch = self.batch_size * self.world_size
            batches = (self.size - start) // global_batch
            # [global batch, process, place in the process's batch] -> this process's slice of every global batch
            grid = (start + torch.arange(batches * global_batch)).view(batches, self.world_size, self.batch_size)
            positions = grid[:, self.rank].flatten()
        return zip(order[positions].tolist(), seeds[positions].tolist())


class RankBatchSampler(Sampler[list[int]]):
    """Evaluation under ``torchrun``: the data set in order, cut into batches of ``batch_size`` (the last one
    shorter), of which process ``rank`` takes batches ``rank, rank + world_size, ...``.

    Every image is evaluated once, by one process (``DistributedSampler`` would pad with repeated images), each in
    the batch it has in one process, and :func:`yolo_loss.train.distributed.gather_batches` puts the batches back in
    single-process order.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, math.ceil(self.size / self.batch_size), self.world_size))

    def __iter__(self):
        for batch in range(self.rank, math.ceil(self.size / self.batch_size), self.world_size):
            yield list(range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.size)))


def build_loader(dataset: DetectionDataset, batch_size: int, *, shuffle: bool, workers: int,
                 seed: int, rank: int = 0, world_size: int = 1, augment_seed: int = 0) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` yielding :func:`collate` batches of ``batch_size`` (per process).

    Everything random comes from a ``torch.Generator`` seeded with ``seed`` (``loader.generator``; save its
    state at the start of an epoch to resume): with ``shuffle`` (a training loader), the order and the
    per-sample augmentation seeds of :class:`EpochSampler` (``loader.sampler``, shifted by ``augment_seed``), and
    the workers' seeds. A
    training loader drops the last partial batch (unless the data set is smaller than one batch), so every
    step sees ``batch_size`` images. ``pin_memory`` is on when CUDA is available.

    ``rank`` and ``world_size`` (``torchrun``'s, :mod:`yolo_loss.train.distributed`) give this process its part: its
    slice of every global batch of a training loader (:class:`EpochSampler`), every ``world_size``-th batch of
    an evaluation loader (:class:`RankBatchSampler`).

    Raises:
        DataError: a distributed training set smaller than one global batch (``batch_size * world_size``).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if shuffle:
        if world_size > 1 and len(dataset) < batch_size * world_size:
            raise DataError(f"the training set has {len(dataset)} images, fewer than one global batch of "
                            f"{world_size} processes x train.batch_size {batch_size}; lower train.batch_size")
        sampler = EpochSampler(len(dataset), generator, batch_size=batch_size, rank=rank, world_size=world_size,
                               augment_seed=augment_seed)
        batching = {"batch_size": batch_size, "sampler": sampler, "drop_last": len(dataset) >= batch_size}
    elif world_size > 1:
        batching = {"batch_sampler": RankBatchSampler(len(dataset), batch_size, rank, world_size)}
    else:
        batching = {"batch_size": batch_size}
    return DataLoader(dataset, **batching, num_workers=workers, collate_fn=collate, worker_init_fn=seed_worker,
                      generator=generator, pin_memory=torch.cuda.is_available())
