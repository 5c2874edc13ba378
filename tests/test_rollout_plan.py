"""The blue-green plan is pure: every starting state of an endpoint, checked without processes."""

from __future__ import annotations

import pytest

from finetune_phi.rollout import RolloutPlanError, plan_rollout, split_remainder
from finetune_phi.settings import RolloutSettings
from finetune_phi.workspace import TrafficState

STEPS = RolloutSettings(traffic_steps=(10, 50, 100))


def test_first_rollout_on_an_empty_endpoint_goes_straight_to_100() -> None:
    plan = plan_rollout(TrafficState(), {}, "phi3-chat:1", STEPS)

    assert plan.new_deployment == "blue"
    assert plan.traffic_steps == ({"blue": 100},)
    assert plan.mirror_percent == 0 and plan.retire == ()


def test_new_version_goes_to_the_colour_that_is_not_live_in_steps() -> None:
    plan = plan_rollout(TrafficState({"blue": 100}), {"blue": "phi3-chat:1"}, "phi3-chat:2", STEPS)

    assert plan.new_deployment == "green"
    assert plan.previous == {"blue": 100}
    assert plan.traffic_steps == (
        {"green": 10, "blue": 90},
        {"green": 50, "blue": 50},
        {"green": 100, "blue": 0},
    )
    assert plan.retire == ("blue",)


def test_every_step_sums_to_100() -> None:
    plan = plan_rollout(
        TrafficState({"green": 100}),
        {"green": "m:1"},
        "m:2",
        RolloutSettings(traffic_steps=(1, 33, 67, 100)),
    )
    assert plan.new_deployment == "blue"
    assert all(sum(step.values()) == 100 for step in plan.traffic_steps)


def test_keep_previous_keeps_the_live_deployment_for_instant_rollback() -> None:
    plan = plan_rollout(
        TrafficState({"blue": 100}),
        {"blue": "m:1", "old-green": "m:0"},
        "m:2",
        RolloutSettings(keep_previous=True),
    )
    assert plan.retire == ("old-green",)  # stale 0% deployments still go


def test_mirror_phase_only_when_there_is_live_traffic_to_copy() -> None:
    mirrored = RolloutSettings(mirror_percent=20)
    assert (
        plan_rollout(TrafficState({"blue": 100}), {"blue": "m:1"}, "m:2", mirrored).mirror_percent
        == 20
    )
    assert plan_rollout(TrafficState(), {}, "m:1", mirrored).mirror_percent == 0


def test_a_model_that_already_has_all_traffic_needs_nothing() -> None:
    plan = plan_rollout(TrafficState({"blue": 100}), {"blue": "m:2"}, "m:2", STEPS)

    assert plan.new_deployment is None
    assert plan.describe() == ["nothing to do: 'blue' serves it at 100%"]


def test_a_leftover_zero_percent_deployment_of_the_free_colour_is_reused() -> None:
    plan = plan_rollout(
        TrafficState({"blue": 100, "green": 0}), {"blue": "m:1", "green": "m:1"}, "m:2", STEPS
    )
    assert plan.new_deployment == "green"


def test_traffic_split_across_both_colours_cannot_be_planned() -> None:
    with pytest.raises(RolloutPlanError, match="split across"):
        plan_rollout(
            TrafficState({"blue": 50, "green": 50}), {"blue": "m:1", "green": "m:2"}, "m:3", STEPS
        )


def test_traffic_of_several_old_deployments_shrinks_proportionally() -> None:
    plan = plan_rollout(
        TrafficState({"blue": 70, "canary": 30}),
        {"blue": "m:1", "canary": "m:1"},
        "m:2",
        RolloutSettings(traffic_steps=(50, 100)),
    )
    assert plan.new_deployment == "green"
    assert plan.traffic_steps == (
        {"green": 50, "blue": 35, "canary": 15},
        {"green": 100, "blue": 0, "canary": 0},
    )


@pytest.mark.parametrize(
    ("weights", "total", "expected"),
    [
        ({"a": 1, "b": 1, "c": 1}, 100, {"a": 34, "b": 33, "c": 33}),
        ({"a": 90}, 50, {"a": 50}),
        ({"a": 1, "b": 2}, 0, {"a": 0, "b": 0}),
    ],
)
def test_split_remainder_is_exact_and_deterministic(
    weights: dict[str, int], total: int, expected: dict[str, int]
) -> None:
    assert split_remainder(weights, total) == expected


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((50, 10, 100), "steps must increase"),
        ((10, 50), "last step must be 100"),
        ((0, 100), "between 1 and 100"),
    ],
)
def test_bad_traffic_steps_are_rejected(steps: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RolloutSettings(traffic_steps=steps)


def test_a_rollout_killed_midway_is_resumed_from_its_share() -> None:
    """The flow died after the first step: the next run for the same model takes the steps
    above the new colour's share, with no mirror phase and no new deployment."""
    plan = plan_rollout(
        TrafficState({"green": 10, "blue": 90}), {"blue": "m:1", "green": "m:2"}, "m:2", STEPS
    )
    assert plan.new_deployment == "green" and plan.resumed_from == 10
    assert plan.traffic_steps == ({"green": 50, "blue": 50}, {"green": 100, "blue": 0})
    assert plan.mirror_percent == 0 and plan.retire == ("blue",)
    assert plan.previous == {"green": 10, "blue": 90}
    assert plan.describe()[0] == "resume: 'green' serves m:2 at 10%"


def test_a_rollout_killed_after_its_last_step_retires_the_old_colour() -> None:
    current = TrafficState({"green": 100, "blue": 0})
    deployments = {"blue": "m:1", "green": "m:2"}
    plan = plan_rollout(current, deployments, "m:2", STEPS)
    assert plan.new_deployment is None and plan.retire == ("blue",)
    assert plan.describe() == ["nothing to do: 'green' serves it at 100%", "retire 'blue'"]
    kept = plan_rollout(current, deployments, "m:2", RolloutSettings(keep_previous=True))
    assert kept.retire == ()  # kept on purpose, for an instant rollback
