"""Azure's endpoint rules as pure functions: every rule, and what its message says."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from backends.local.endpoint.rules import (
    check_can_delete,
    pick_deployment,
    should_mirror,
    validate_name,
    validate_traffic,
)
from finetune_phi.workspace import RuleViolation, TrafficState

DEPLOYMENTS = ("blue", "green", "red")


@pytest.mark.parametrize(
    "state",
    [
        TrafficState(),  # a new endpoint: nothing routed
        TrafficState({"blue": 0, "green": 0}),  # all at 0
        TrafficState({"blue": 100}),
        TrafficState({"blue": 100, "green": 0}),
        TrafficState({"blue": 70, "green": 30}),
        TrafficState({"blue": 34, "green": 33, "red": 33}),
        TrafficState({"blue": 100}, {"green": 10}),
        TrafficState({"blue": 100, "green": 0}, {"green": 50}),
        TrafficState({"blue": 100}, {"green": 0, "red": 20}),  # a 0 % mirror entry is no mirror
        TrafficState({}, {"green": 50}),
    ],
)
def test_accepted_states(state: TrafficState) -> None:
    validate_traffic(state, DEPLOYMENTS)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (TrafficState({"purple": 100}), "traffic names 'purple', which is not a deployment"),
        (TrafficState({"blue": 100}, {"purple": 10}), "mirror traffic names 'purple'"),
        (TrafficState({"blue": 110, "green": -10}), "between 0 and 100, got 110"),
        (TrafficState({"blue": 100}, {"green": -5}), "between 0 and 100, got -5"),
        (TrafficState({"blue": 50.5, "green": 49.5}), "whole percent, got 50.5"),  # type: ignore[dict-item]
        (TrafficState({"blue": True}), "whole percent, got True"),
        (TrafficState({"blue": 90}), "must sum to 100 (or be 0 for every deployment); got 90"),
        (TrafficState({"blue": 70, "green": 40}), "got 110 (blue=70, green=40)"),
        (TrafficState({"blue": 100}, {"green": 10, "red": 10}), "one deployment only"),
        (TrafficState({"blue": 100}, {"green": 51}), "at most 50% of requests"),
        (TrafficState({"blue": 100}, {"blue": 10}), "cannot mirror traffic to 'blue'"),
        (TrafficState({"blue": 60, "green": 40}, {"green": 5}), "it receives 40% of live"),
    ],
)
def test_refused_states(state: TrafficState, message: str) -> None:
    with pytest.raises(RuleViolation) as raised:
        validate_traffic(state, DEPLOYMENTS)
    assert message in str(raised.value)
    assert raised.value.transient is False


def test_unknown_name_message_lists_deployments() -> None:
    with pytest.raises(RuleViolation, match=r"deployments: blue, green, red"):
        validate_traffic(TrafficState({"x": 100}), DEPLOYMENTS)
    with pytest.raises(RuleViolation, match=r"deployments: none"):
        validate_traffic(TrafficState({"x": 100}), ())


def test_delete_refused_with_live_traffic() -> None:
    with pytest.raises(RuleViolation, match="cannot delete deployment 'blue': it receives 100%"):
        check_can_delete(TrafficState({"blue": 100, "green": 0}), "blue")


def test_delete_drops_the_deployment_and_its_mirror_share() -> None:
    state = TrafficState({"blue": 100, "green": 0}, {"green": 20})
    assert check_can_delete(state, "green") == TrafficState({"blue": 100}, {})
    assert check_can_delete(state, "red") == state  # not in either map: nothing to drop


def test_pick_follows_the_weights() -> None:
    rng = random.Random(7)
    counts = Counter(
        pick_deployment({"blue": 70, "green": 30, "red": 0}, rng) for _ in range(10_000)
    )
    assert set(counts) == {"blue", "green"}  # 0 % is never picked
    assert 6_800 < counts["blue"] < 7_200  # 4+ standard deviations (46) either side of 7000


def test_pick_without_live_traffic() -> None:
    rng = random.Random(0)
    assert pick_deployment({}, rng) is None
    assert pick_deployment({"blue": 0, "green": 0}, rng) is None


def test_pick_is_reproducible_with_a_seed() -> None:
    traffic = {"green": 30, "blue": 70}
    first = [pick_deployment(traffic, random.Random(3)) for _ in range(5)]
    again = [pick_deployment(dict(reversed(traffic.items())), random.Random(3)) for _ in range(5)]
    assert first == again  # map order does not matter


def test_should_mirror_rate() -> None:
    rng = random.Random(1)
    hits = sum(should_mirror({"green": 20}, rng) == "green" for _ in range(10_000))
    assert 1_840 < hits < 2_160  # 4 standard deviations (40) either side of 2000
    assert should_mirror({}, rng) is None
    assert all(should_mirror({"green": 0}, rng) is None for _ in range(1000))


@pytest.mark.parametrize("name", ["blue", "green-2", "abc", "a" * 32, "Blue01"])
def test_valid_names(name: str) -> None:
    validate_name("deployment", name)


@pytest.mark.parametrize(
    "name", ["", "ab", "a" * 33, "1blue", "blue-", "blue_green", "../etc", "a/b", "blüe"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RuleViolation, match="invalid deployment name"):
        validate_name("deployment", name)
