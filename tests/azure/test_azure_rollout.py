"""The shared blue-green rollout (finetune_phi.rollout) against AzureWorkspace on the fake."""

from __future__ import annotations

import pytest
from azure_helpers import job_spec
from fake_azure import failing_scorer

from finetune_phi.rollout import RolloutFailed, execute_rollout, plan_rollout
from finetune_phi.settings import RolloutSettings
from finetune_phi.workspace import CHALLENGER, CHAMPION, TrafficState

ENDPOINT = "phi3-chat"
SETTINGS = RolloutSettings(
    traffic_steps=(10, 50, 100), mirror_percent=50, mirror_requests=10, requests_per_step=3
)


def _train_and_register(ws, dataset_files, name):
    job = ws.jobs.submit_job(job_spec(*dataset_files, name=name))
    list(ws.jobs.stream_job_logs(job.name))
    done = ws.jobs.get_job(job.name)
    return ws.registry.register_model("phi3-chat", done.model_uri, tags={}, job_name=done.name)


def _rollout(ws, model, settings=SETTINGS):
    ws.endpoints.get_or_create_endpoint(ENDPOINT)
    deployments = {d.name: d.model for d in ws.endpoints.list_deployments(ENDPOINT)}
    plan = plan_rollout(
        ws.endpoints.get_traffic(ENDPOINT), deployments, f"{model.name}:{model.version}", settings
    )
    return plan, execute_rollout(ws, ENDPOINT, model, plan, settings, log=lambda _: None)


def test_fresh_endpoint_then_blue_green_then_noop(azure_fake, azure_workspace, dataset_files):
    ws = azure_workspace
    v1 = _train_and_register(ws, dataset_files, "ft-first")
    plan, report = _rollout(ws, v1)
    assert plan.new_deployment == "blue" and report.final_traffic == {"blue": 100}
    assert ws.registry.get_model_by_alias("phi3-chat", CHAMPION).version == "1"

    v2 = _train_and_register(ws, dataset_files, "ft-second")
    plan, report = _rollout(ws, v2)
    assert plan.new_deployment == "green" and plan.retire == ("blue",)
    assert report.final_traffic == {"green": 100}
    assert [d.name for d in ws.endpoints.list_deployments(ENDPOINT)] == ["green"]
    assert ws.registry.get_model_by_alias("phi3-chat", CHAMPION).version == "2"
    assert ws.registry.get_model_by_alias("phi3-chat", CHALLENGER) is None
    hows = {how for name, how in azure_fake.scored if name == "green"}
    assert hows == {"direct", "mirror", "live"}  # tested directly, mirrored, then live

    plan, report = _rollout(ws, v2)
    assert plan.new_deployment is None and report.final_traffic == {"green": 100}
    assert azure_fake.count("DELETE", r"/onlineEndpoints/[^/]+$") == 0


def test_failing_direct_test_rolls_back(azure_fake, azure_workspace, dataset_files):
    ws = azure_workspace
    v1 = _train_and_register(ws, dataset_files, "ft-first")
    _rollout(ws, v1)
    v2 = _train_and_register(ws, dataset_files, "ft-second")
    azure_fake.scorers["green"] = failing_scorer(500, "model failed to load")
    with pytest.raises(RolloutFailed, match="direct test"):
        _rollout(ws, v2)
    assert ws.endpoints.get_traffic(ENDPOINT) == TrafficState({"blue": 100}, {})
    assert [d.name for d in ws.endpoints.list_deployments(ENDPOINT)] == ["blue"]
    assert ws.registry.get_model_by_alias("phi3-chat", CHAMPION).version == "1"
    assert ws.registry.get_model_by_alias("phi3-chat", CHALLENGER) is None


def test_failure_during_traffic_shift_restores_traffic_exactly(
    azure_fake, azure_workspace, dataset_files
):
    ws = azure_workspace
    v1 = _train_and_register(ws, dataset_files, "ft-first")
    _rollout(ws, v1)
    v2 = _train_and_register(ws, dataset_files, "ft-second")
    # green answers directly, then breaks once it takes live traffic
    calls = {"n": 0}
    good = azure_fake.scorers.get("green")

    def flaky(body):
        calls["n"] += 1
        if calls["n"] > 2:
            return 500, {"error": "overloaded"}
        from fake_azure import canned_scorer

        return (good or canned_scorer("green"))(body)

    azure_fake.scorers["green"] = flaky
    with pytest.raises(RolloutFailed):
        _rollout(ws, v2, RolloutSettings(traffic_steps=(50, 100), requests_per_step=4))
    assert ws.endpoints.get_traffic(ENDPOINT) == TrafficState({"blue": 100}, {})
    assert [d.name for d in ws.endpoints.list_deployments(ENDPOINT)] == ["blue"]


def test_failed_provisioning_rolls_back(azure_fake, azure_workspace, dataset_files):
    ws = azure_workspace
    v1 = _train_and_register(ws, dataset_files, "ft-first")
    _rollout(ws, v1)
    v2 = _train_and_register(ws, dataset_files, "ft-second")
    azure_fake.deployment_failures["green"] = "readiness probe failed: init() raised"
    with pytest.raises(RolloutFailed, match="readiness probe failed"):
        _rollout(ws, v2)
    assert ws.endpoints.get_traffic(ENDPOINT).live == {"blue": 100}
    assert [d.name for d in ws.endpoints.list_deployments(ENDPOINT)] == ["blue"]


def test_a_throttled_probe_is_sent_again_a_model_error_is_not(
    azure_fake, azure_workspace, dataset_files
):
    """The new deployment full of requests for a moment (429) is not a reason to roll back;
    its container failing (424) is."""
    ws = azure_workspace
    v1 = _train_and_register(ws, dataset_files, "ft-first")
    _rollout(ws, v1)
    v2 = _train_and_register(ws, dataset_files, "ft-second")

    class Busy(dict):
        """green is full for its first two requests, then free."""

        def get(self, key, default=None):
            if key == "green" and self.setdefault("seen", 0) < 2:
                self["seen"] += 1
                return 10**6
            return super().get(key, default)

    azure_fake.pending = Busy()
    plan, report = _rollout(ws, v2)
    assert report.final_traffic == {"green": 100}
    assert azure_fake.pending["seen"] == 2  # two 429s, each sent again

    v3 = _train_and_register(ws, dataset_files, "ft-third")
    azure_fake.scorers["blue"] = failing_scorer(503, "out of memory")
    with pytest.raises(RolloutFailed, match="the model's container answered 503"):
        _rollout(ws, v3)
    assert ws.endpoints.get_traffic(ENDPOINT).live == {"green": 100}
