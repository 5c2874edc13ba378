"""A seeded, deterministic train/test split.

Pure: it only reorders what it is given. The same records, fraction and seed always give the same
split, so a re-run of the pipeline on unchanged data trains on exactly the same examples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["held_out_size", "split_records"]

T = TypeVar("T")


def held_out_size(total: int, test_fraction: float) -> int:
    """round(total * test_fraction), kept within 1..total-1 so neither split is empty."""
    if total < 2:
        raise ValueError(f"need at least 2 records to make a train and a test split, got {total}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    return min(max(round(total * test_fraction), 1), total - 1)


def split_records(records: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split into (train, test), both in the order of a random.Random(seed) shuffle.

    The first held_out_size() shuffled records go to test, the rest to train.
    """
    size = held_out_size(len(records), test_fraction)
    order = list(range(len(records)))
    # Shuffling indices, not the records, keeps the result independent of what the records are.
    random.Random(seed).shuffle(order)
    test = [records[i] for i in order[:size]]
    train = [records[i] for i in order[size:]]
    return train, test
