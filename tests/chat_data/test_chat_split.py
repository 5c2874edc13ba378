"""The seeded train/test split."""

from __future__ import annotations

import pytest

from finetune_phi.chat_data.split import held_out_size, split_records


def test_deterministic_for_a_seed() -> None:
    records = list(range(100))
    assert split_records(records, 0.2, seed=7) == split_records(records, 0.2, seed=7)


def test_other_seed_other_split() -> None:
    records = list(range(100))
    assert split_records(records, 0.2, seed=7)[1] != split_records(records, 0.2, seed=8)[1]


def test_partition_of_the_input_in_shuffled_order() -> None:
    records = [f"r{i}" for i in range(50)]
    train, test = split_records(records, 0.2, seed=0)
    assert (len(train), len(test)) == (40, 10)
    assert sorted(train + test) == sorted(records)
    assert train + test != records  # shuffled, not sliced


@pytest.mark.parametrize(
    ("total", "fraction", "expected"),
    [(100, 0.2, 20), (10, 0.25, 2), (2, 0.2, 1), (3, 0.01, 1), (5, 0.99, 4), (1200, 0.2, 240)],
)
def test_test_size_is_rounded_and_never_empties_a_side(
    total: int, fraction: float, expected: int
) -> None:
    assert held_out_size(total, fraction) == expected
    train, test = split_records(list(range(total)), fraction, seed=1)
    assert (len(train), len(test)) == (total - expected, expected)


@pytest.mark.parametrize("total", [0, 1])
def test_fewer_than_two_records_is_an_error(total: int) -> None:
    with pytest.raises(ValueError, match="at least 2 records"):
        split_records(list(range(total)), 0.2, seed=0)


def test_fraction_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_records([1, 2, 3], 1.0, seed=0)
