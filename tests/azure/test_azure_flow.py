"""The whole Prefect flow (`flows.finetune.finetune_pipeline`) on the Azure backend, offline.

The flow runs under Prefect's test harness with an Azure profile; every task that opens a
workspace gets an `AzureWorkspace` over `FakeAzureML`: the real azure-ai-ml `MLClient` with a
fake credential, the service faked at its HTTP layer (see fake_azure.py). The fake's compute
runs the submitted trainer command for real on the small tiny Phi-3
(`azure_helpers.run_job_here`), so the job outputs are real MLflow transformers models
that the quality gate downloads through the SDK and evaluates on the held-out test set.

One substitution, the smoke test's transport: the real `tasks.rollout.smoke_check` runs the
Prompt flow in its own venv's subprocess (finetune_phi.promptflow_bridge), and that process
cannot reach an endpoint that exists only inside this one, under `responses`. `smoke_check`
here asks the same fact probes (`tasks.rollout.smoke_probes`) in the Prompt flow's request
shape through `AzureWorkspace.invoke` (the real SDK's scoring URI and key against the fake),
judges them with the same `answer_matches` and fails with `SmokeTestFailed` like the real
one. The real Prompt flow is tested against a real local endpoint in tests/promptflow.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure_helpers import (
    CLIENT_KWARGS,
    azure_profile_file,
    make_azure_workspace,
    run_job_here,
    use_workspace_in_tasks,
)
from fake_azure import FakeAzureML, canned_scorer
from model_guard import forbid_model_loading

from backends.azure.workspace import AzureWorkspace
from finetune_phi.chat_data.synthetic import answer_matches
from finetune_phi.evaluation import evaluation_spec
from finetune_phi.promptflow_bridge import SMOKE_PARAMS, SmokeAnswer, SmokeResult
from finetune_phi.rollout import RolloutFailed
from finetune_phi.settings import Profile, load_profile
from finetune_phi.workspace import CHALLENGER, CHAMPION, TrafficState, WorkspaceError
from tasks.rollout import SmokeTestFailed, smoke_probes
from tasks.training import TrainingJobFailed

pytestmark = pytest.mark.slow

ENDPOINT = "phi3-chat"
MODEL = "phi3-chat"


@dataclass
class SmokeCall:
    deployment: str | None
    scoring_uri: str
    key: str
    result: SmokeResult


def reply_of(question: str, body: Any) -> str:
    """The reply in a text-form answer, without the echoed question (as the flow's tool)."""
    if not (isinstance(body, list) and body and isinstance(body[0], str)):
        raise WorkspaceError(f"unexpected response from the endpoint: {str(body)[:200]}")
    text = body[0]
    return (text[len(question) :] if text.startswith(question) else text).strip()


def smoke_over_invoke(
    workspace: AzureWorkspace, calls: list[SmokeCall]
) -> Callable[..., Callable[[str | None], SmokeResult]]:
    """`tasks.rollout.smoke_check` with the Prompt flow's transport replaced by `invoke`."""

    def smoke_check(
        profile: Profile, scoring_uri: str, key: str, *, timeout: float = 300
    ) -> Callable[[str | None], SmokeResult]:
        probes = smoke_probes(profile)
        endpoint = profile.endpoint.name

        def check(deployment: str | None) -> SmokeResult:
            target = (
                f"deployment {deployment!r} of {scoring_uri}"
                if deployment
                else f"endpoint {scoring_uri}"
            )
            started = time.monotonic()
            answers = []
            for probe in probes:
                request = {
                    "input_data": [probe.question],
                    "params": {**SMOKE_PARAMS, "return_full_text": True},
                }
                asked = time.monotonic()
                try:
                    body = workspace.endpoints.invoke(endpoint, request, deployment=deployment)
                    answer, error = reply_of(probe.question, body), None
                except WorkspaceError as exc:
                    answer, error = "", str(exc)
                answers.append(
                    SmokeAnswer(
                        probe,
                        answer,
                        (time.monotonic() - asked) * 1000,
                        correct=error is None and answer_matches(probe, answer),
                        error=error,
                    )
                )
            result = SmokeResult(target, tuple(answers), seconds=time.monotonic() - started)
            calls.append(SmokeCall(deployment, scoring_uri, key, result))
            accuracy = result.correct / max(len(result.answers), 1)
            if result.error or accuracy < profile.smoke.min_accuracy:
                raise SmokeTestFailed(result.summary)
            return result

        return check

    return smoke_check


@dataclass
class AzureFlow:
    """The flow wired to the fake: run it, look at the fake and the workspace."""

    fake: FakeAzureML
    profile: str
    workspace: AzureWorkspace = field(init=False)
    smoke: list[SmokeCall] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    # called at each wait of the job poller's clock (which never really sleeps)
    on_wait: Callable[[], None] | None = None
    # models loaded outside the fake's compute node, i.e. in the flow's process (none, ever)
    model_loads: list[str] = field(default_factory=list)

    def wait(self, seconds: float) -> None:
        """The workspace's clock."""
        self.sleeps.append(seconds)
        if self.on_wait is not None:
            self.on_wait()

    def run(self, **parameters: Any) -> Any:
        from flows.finetune import finetune_pipeline

        return finetune_pipeline(profile=self.profile, **parameters)

    def settings(self, **overrides: Any) -> Profile:
        return load_profile(self.profile, environ={}, overrides=overrides)

    def deployments(self) -> list[str]:
        return [d.name for d in self.workspace.endpoints.list_deployments(ENDPOINT)]

    def champion(self) -> str | None:
        found = self.workspace.registry.get_model_by_alias(MODEL, CHAMPION)
        return found.version if found else None


@pytest.fixture
def azure_flow(
    azure_fake: FakeAzureML,
    tmp_path: Path,
    tiny_model_dir: Path,
    small_conversations: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AzureFlow:
    import tasks.rollout

    # backend.allow_cpu_training; a test parametrizes the fixture (indirect) to turn it off
    allow_cpu: bool = getattr(request, "param", True)

    for name in list(os.environ):  # load_profile reads FINETUNE_PHI__*; none may leak in
        if name.startswith("FINETUNE_PHI"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the trainer: metrics.json only
    azure_fake.job_runner = run_job_here
    # A file in the ultrachat schema, as the Azure profile's hub data: the gate judges by
    # held-out loss and the smoke test asks the tutorial's question ("Who founded Microsoft?",
    # which the fake's deployments answer correctly).
    records = tmp_path / "ultrachat.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in small_conversations))
    profile = azure_profile_file(
        tmp_path,
        tiny_model_dir,
        data={"source": {"kind": "file", "path": str(records)}},
        endpoint={"name": ENDPOINT},
        gate={"max_eval_conversations": 16},
        # The fake's compute node is this CPU machine: without this, the job's trainer gets
        # --require_gpu and stops (test_a_cpu_node_fails_the_job_in_seconds).
        backend={"allow_cpu_training": allow_cpu},
    )
    flow = AzureFlow(azure_fake, str(profile))
    flow.workspace = make_azure_workspace(
        azure_fake, tmp_path, sleep=flow.wait, allow_cpu_training=allow_cpu
    )
    patched = use_workspace_in_tasks(monkeypatch, flow.workspace)
    assert set(patched) >= {
        "tasks.gate",
        "tasks.infrastructure",
        "tasks.registry",
        "tasks.rollout",
        "tasks.training",
    }
    monkeypatch.setattr(tasks.rollout, "smoke_check", smoke_over_invoke(flow.workspace, flow.smoke))
    flow.model_loads = forbid_model_loading(monkeypatch)
    return flow


def test_fresh_endpoint_then_blue_green_then_a_failed_smoke_test_rolls_back(
    prefect_harness: None, azure_flow: AzureFlow
) -> None:
    fake, ws = azure_flow.fake, azure_flow.workspace

    # 1. A fresh workspace: trained on the cluster, registered, deployed as blue, champion.
    first = azure_flow.run()
    assert first.status == "promoted"
    assert first.traffic_before == {} and first.traffic_after == {"blue": 100}
    assert ws.endpoints.get_traffic(ENDPOINT) == TrafficState({"blue": 100}, {})
    assert azure_flow.deployments() == ["blue"] and azure_flow.champion() == "1"
    job = first.training.job_name
    assert list(fake.jobs) == [job] and fake.jobs[job].status == "Completed"
    assert first.training.job_dir.startswith("https://ml.azure.com/runs/" + job)
    metrics = first.training.metrics  # the real trainer's metrics.json, read from the blob
    assert metrics["global_step"] == 6 and metrics["eval_loss"] < metrics["eval_loss_before"]
    assert any(line.startswith("fine-tuning ") for line in fake.jobs[job].log)
    # the tiny base model lives on this machine: uploaded with the job, read by the node there
    assert fake.jobs[job].body["properties"]["inputs"]["base_model"]["jobInputType"] == "uri_folder"
    v1 = ws.registry.get_model(MODEL, "1")
    assert v1.source == f"azureml://jobs/{job}/outputs/model/paths/mlflow_model"
    assert v1.tags["job_name"] == job and v1.tags["dataset_sha256"] == first.dataset.sha256
    assert v1.tags["trainer_config_hash"] == azure_flow.settings().training.config_hash()
    assert v1.tags["gate"] == "promoted" and v1.aliases == (CHAMPION,)
    assert first.gate.champion is None and first.gate.candidate.tokens > 0
    # the smoke test asked blue directly, then the endpoint, with the endpoint's URI and key
    assert [(c.deployment, c.result.passed) for c in azure_flow.smoke] == [
        ("blue", True),
        (None, True),
    ]
    assert {(c.scoring_uri, c.key) for c in azure_flow.smoke} == {
        (ws.endpoints.get_or_create_endpoint(ENDPOINT).scoring_uri, fake.keys["primary"])
    }
    asked = [a.question for a in azure_flow.smoke[0].result.answers]
    assert asked == [p.question for p in smoke_probes(azure_flow.settings())]

    # 2. Another seed: a new job and version; green takes all traffic, blue is retired.
    changed = {"training": {"seed": 1}, "gate_tolerance": 1.0}
    second = azure_flow.run(**changed)
    assert second.status == "promoted" and second.model.version == "2"
    # The gate read numbers: the candidate's from its training job's second step, the
    # champion's from an evaluation job on the cluster (the registered model as its input).
    evaluation = (
        f"eval-{MODEL}-v1-{evaluation_spec(second.settings, second.dataset.sha256, '').key}"
    )
    assert second.training.job_name != job
    assert list(fake.jobs) == [job, second.training.job_name, evaluation]
    assert second.gate.candidate.job == second.training.job_name
    assert second.gate.champion is not None and second.gate.champion.model == f"{MODEL}:1"
    assert second.gate.champion.job == evaluation and second.gate.champion.tokens > 0
    inputs = fake.jobs[evaluation].body["properties"]["inputs"]
    assert inputs["model"]["jobInputType"] == "mlflow_model"
    assert inputs["model"]["uri"].endswith(f"/models/{MODEL}/versions/1")
    assert "evaluation done" in fake.jobs[evaluation].log[-1]
    assert "evaluation done" in fake.jobs[second.training.job_name].log[-1]
    assert azure_flow.model_loads == []  # every model was loaded on the (fake) compute node
    plan = second.rollout.plan
    assert plan.new_deployment == "green" and plan.retire == ("blue",)
    assert second.traffic_before == {"blue": 100} and second.traffic_after == {"green": 100}
    assert ws.endpoints.get_traffic(ENDPOINT) == TrafficState({"green": 100}, {})
    assert azure_flow.deployments() == ["green"] and azure_flow.champion() == "2"
    assert ws.registry.get_model(MODEL, "1").aliases == ()
    assert {how for name, how in fake.scored if name == "green"} >= {"direct", "live"}
    assert fake.count("DELETE", r"/deployments/blue$") == 1

    # 3. The next candidate (blue again) answers wrongly: the smoke test fails on it, the
    # rollout is undone: traffic exactly as before, blue gone, the champion unchanged.
    fake.scorers["blue"] = canned_scorer("blue", answer=lambda question: "I do not know.")
    smoke_before = len(azure_flow.smoke)
    with pytest.raises(RolloutFailed, match=r"smoke test \(direct\)") as failed:
        azure_flow.run(training={"seed": 2}, gate_tolerance=1.0)
    assert "I do not know." in str(failed.value) and "'blue' removed" in str(failed.value)
    assert [(c.deployment, c.result.passed) for c in azure_flow.smoke[smoke_before:]] == [
        ("blue", False)
    ]
    assert ws.endpoints.get_traffic(ENDPOINT) == TrafficState({"green": 100}, {})
    assert azure_flow.deployments() == ["green"] and azure_flow.champion() == "2"
    v3 = ws.registry.get_model(MODEL, "3")  # registered and gated, never champion
    assert v3.tags["gate"] == "promoted" and v3.aliases == ()
    assert ws.registry.get_model_by_alias(MODEL, CHALLENGER) is None
    assert fake.count("PUT", r"/deployments/blue$") == 2  # run 1's blue, run 3's blue

    # 4. Run 2's inputs again: the champion's lineage (Azure tags) matches; nothing to do.
    again = azure_flow.run(**changed)
    assert again.status == "up to date" and again.model.version == "2"
    assert again.rollout.plan.new_deployment is None and again.traffic_after == {"green": 100}
    # runs 1-3 trained; runs 2 and 3 measured their champions (v1, v2); run 4 added nothing
    assert len(fake.jobs) == 5 and [v.version for v in ws.registry.list_model_versions(MODEL)] == [
        "1",
        "2",
        "3",
    ]


def test_a_failed_job_fails_the_flow_with_its_studio_url_and_log(
    prefect_harness: None, azure_flow: AzureFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer itself crashes on the cluster: the job ends Failed, the flow fails with
    TrainingJobFailed naming the studio URL and the log's last lines; nothing downstream."""
    from trainer.fine_tune import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "1")
    with pytest.raises(TrainingJobFailed) as failed:
        azure_flow.run()
    fake = azure_flow.fake
    (job,) = fake.jobs.values()
    assert job.status == "Failed"
    message = str(failed.value)
    assert f"training job {job.name} ended Failed" in message
    assert f"https://ml.azure.com/runs/{job.name}" in message
    assert "SimulatedCrash" in message and f"{FAULT_ENV}=1" in message
    # the train task did not retry a failed job (permanent): one attempt
    assert fake.count("PUT", r"/jobs/") == 1
    assert azure_flow.workspace.registry.list_model_versions(MODEL) == []
    assert fake.count("PUT", r"/models/") == 0
    assert fake.count("PUT", r"/onlineEndpoints/") == 0


@pytest.mark.parametrize("azure_flow", [False], indirect=True, ids=["cpu-not-allowed"])
def test_a_cpu_node_fails_the_job_in_seconds(prefect_harness: None, azure_flow: AzureFlow) -> None:
    """The precision guard (#13 E): a profile that does not allow CPU training runs its trainer
    with --require_gpu; on a node without a usable GPU (the fake's node is this CPU machine)
    the job fails before any model is loaded, and the flow's error ends with what the trainer
    found and what to do."""
    with pytest.raises(TrainingJobFailed) as failed:
        azure_flow.run()
    (job,) = azure_flow.fake.jobs.values()
    assert job.status == "Failed"
    message = str(failed.value)
    assert "--require_gpu: no usable CUDA GPU" in message
    assert "found: torch.cuda.is_available() False" in message
    assert "backend.training_sku" in message and "backend.allow_cpu_training: true" in message
    assert not any(line.startswith("fine-tuning ") for line in job.log)  # never got to loading
    assert azure_flow.workspace.registry.list_model_versions(MODEL) == []


def test_a_retried_submission_reattaches_to_the_one_job(
    prefect_harness: None, azure_flow: AzureFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job PUT reaches Azure but its answer is lost, and every azure-core retry of it
    fails too: the train task fails with a transient error; Prefect retries the task and the
    new submission re-attaches to the job the first PUT created. One job, trained once.

    The task's retry policy is the project's (3 retries, transient only); only its delay is
    cut (10 s here would be idle time)."""
    import flows.finetune

    monkeypatch.setattr(
        flows.finetune,
        "train_model",
        flows.finetune.train_model.with_options(retry_delay_seconds=0),
    )
    retries = int(CLIENT_KWARGS["retry_total"])  # azure-core's, per request
    fake = azure_flow.fake
    fake.inject("PUT", r"/jobs/ft-", "reset-after")
    fake.inject("PUT", r"/jobs/ft-", "reset", times=retries)

    result = azure_flow.run()
    assert result.status == "promoted"
    assert list(fake.jobs) == [result.training.job_name]  # no second job, no -r2 attempt
    assert all(f.times == 0 for f in fake.faults)  # every injected fault was hit
    assert fake.count("PUT", r"/jobs/") == 1 + retries  # all in the task's first try
    log = fake.jobs[result.training.job_name].log
    assert sum(line.startswith("fine-tuning ") for line in log) == 1  # trained once
    assert result.model.tags["job_name"] == result.training.job_name
    assert azure_flow.champion() == "1"


def test_a_flow_stopped_while_training_cancels_the_azure_job(
    prefect_harness: None, azure_flow: AzureFlow
) -> None:
    """SIGTERM reaches the flow run's process (a cancelled run, a stopping worker) while the
    train task follows the job's log: Prefect raises TerminationSignal in the task, the task
    cancels the Azure job (no GPU keeps training for a run that is gone), the run crashes,
    and Prefect hands the signal on to the handler that was there before (here: a recorder
    instead of the default, which would end pytest)."""
    from prefect.exceptions import TerminationSignal

    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    azure_flow.on_wait = lambda: os.kill(os.getpid(), signal.SIGTERM)
    try:
        with pytest.raises(TerminationSignal):
            azure_flow.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
    fake = azure_flow.fake
    (job,) = fake.jobs.values()
    assert job.status == "Canceled" and "job canceled" in job.log
    assert fake.count("POST", r"/jobs/[^/]+/cancel$") == 1
    assert len(azure_flow.sleeps) == 1  # stopped at the log stream's first wait
    assert fake.count("PUT", r"/models/") == 0
    assert fake.count("PUT", r"/onlineEndpoints/") == 0
