"""A healthy but slow deployment is not rolled back when the serving plan says the model is
slow; the same deployment under a plan for a fast model is; a broken one always is.

The deployments are stand-in servers that answer the tutorial's shape after `--score-delay`
seconds (a 3.8B model on a CPU takes about a second a token); the rollout, the local endpoint,
the registry and the plan are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from endpoint_helpers import StandIn, cleanup

from backends.local.endpoint.control import LocalEndpoints
from backends.local.workspace import LocalWorkspace
from finetune_phi.rollout import RolloutFailed, execute_rollout, plan_rollout
from finetune_phi.serving_plan import (
    SKUS,
    Floors,
    ServingOverrides,
    ServingPlan,
    plan_serving,
)
from finetune_phi.settings import RolloutSettings
from finetune_phi.workspace import CHAMPION, TrafficState

ENDPOINT = "slow"
DELAY = 11.0  # seconds per answer: past the 10 s a plan for a fast model allows a probe
SETTINGS = RolloutSettings(traffic_steps=(100,), requests_per_step=1)
TINY = 1_000_000


def plan_for(seconds_per_token: float | None) -> ServingPlan:
    """The plan of a tiny model (fast) or of a slow one; with a 10 s floor for probes (the
    project's is 30 s, for busy machines) so that the test waits seconds, not minutes."""
    overrides = ServingOverrides(seconds_per_token=seconds_per_token)
    return plan_serving(TINY, SKUS["local"], overrides, floors=Floors(probe_seconds=10))


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[LocalWorkspace]:
    state = tmp_path / "state"
    workspace = LocalWorkspace(state)
    stand_in = StandIn()
    stand_in.flags["blue"] = ["--score-delay", str(DELAY), "--answer", "Bill Gates"]
    control = LocalEndpoints(state, stand_in, grace_seconds=2.0)
    workspace.endpoints = control  # type: ignore[misc]  # the local endpoint, stand-in servers
    control.get_or_create_endpoint(ENDPOINT)
    try:
        yield workspace
    finally:
        cleanup(control)


def roll_out(workspace: LocalWorkspace, model_dir: Path, serving: ServingPlan) -> None:
    model = workspace.registry.register_model("stand-in", str(model_dir), tags={})
    plan = plan_rollout(TrafficState(), {}, f"{model.name}:{model.version}", SETTINGS)
    execute_rollout(workspace, ENDPOINT, model, plan, SETTINGS, serving=serving, log=lambda _: None)


@pytest.mark.slow
def test_slow_but_healthy_is_kept_only_under_a_plan_that_expects_it(
    workspace: LocalWorkspace, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    fast, slow = plan_for(None), plan_for(0.5)
    assert fast.probe_timeout_seconds < DELAY < slow.probe_timeout_seconds

    with pytest.raises(RolloutFailed, match="failed at direct test"):
        roll_out(workspace, model_dir, fast)  # 11 s answers under a plan for a fast model
    assert workspace.endpoints.get_traffic(ENDPOINT).live == {}
    assert workspace.endpoints.list_deployments(ENDPOINT) == []

    roll_out(workspace, model_dir, slow)  # the same answers, a plan that knows they are slow
    assert workspace.endpoints.get_traffic(ENDPOINT).live == {"blue": 100}
    assert workspace.registry.get_model_by_alias("stand-in", CHAMPION) is not None


@pytest.mark.slow
def test_a_broken_deployment_is_rolled_back_whatever_the_plan(
    workspace: LocalWorkspace, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert isinstance(workspace.endpoints, LocalEndpoints)
    stand_in = workspace.endpoints.server_command
    assert isinstance(stand_in, StandIn)
    stand_in.flags["blue"] = ["--fail-score"]
    with pytest.raises(RolloutFailed, match="failed at direct test.*500"):
        roll_out(workspace, model_dir, plan_for(0.5))
    assert workspace.endpoints.list_deployments(ENDPOINT) == []
