"""AzureWorkspace through the real MLClient against the stateful fake service."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure_helpers import azure_settings, job_spec
from fake_azure import failing_scorer

from finetune_phi.workspace import (
    CHALLENGER,
    CHAMPION,
    DeploymentSpec,
    JobStatus,
    NotFound,
    RuleViolation,
    TrafficState,
    Workspace,
    WorkspaceError,
    is_transient,
)


def test_is_a_workspace(azure_workspace):
    assert isinstance(azure_workspace, Workspace)
    assert azure_workspace.kind == "azure"


def test_environment_is_versioned_by_content(azure_fake, azure_workspace, tmp_path):
    spec = azure_workspace.jobs.training_environment_spec()
    first = azure_workspace.jobs.ensure_environment()
    second = azure_workspace.jobs.ensure_environment()
    assert first == second
    assert azure_fake.count("PUT", r"/environments/") == 1  # unchanged spec: no new version
    changed = tmp_path / "conda.yml"
    changed.write_text(Path(spec.conda_file).read_text() + "      - rich\n")
    third = azure_workspace.connection.ensure_environment(
        type(spec)(spec.name, spec.image, str(changed), spec.description)
    )
    assert third.version != first.version
    assert azure_fake.count("PUT", r"/environments/") == 2


def test_training_environment_follows_the_profile(tmp_path):
    """The backend owns its defaults: the profile's environment name, image and conda file
    are what the jobs part builds (no task decides them)."""
    from backends.azure.workspace import AzureWorkspace

    conda = tmp_path / "mine.conda.yml"
    conda.write_text("name: mine\ndependencies:\n  - python=3.11\n")
    settings = azure_settings(
        training_environment="my-training-env",
        training_image="example.azurecr.io/base:1",
        training_conda_file=str(conda),
    )
    spec = AzureWorkspace(settings).jobs.training_environment_spec()
    assert (spec.name, spec.image, spec.conda_file) == (
        "my-training-env",
        "example.azurecr.io/base:1",
        str(conda),
    )


def test_compute_get_or_create(azure_fake, azure_workspace):
    assert azure_workspace.jobs.ensure_compute().state == "Succeeded"
    assert azure_workspace.jobs.ensure_compute().state == "Succeeded"
    assert azure_fake.count("PUT", r"/computes/") == 1
    body = next(r for k, r in azure_fake.resources.items() if k.startswith("/computes/"))
    scale = body["properties"]["properties"]["scaleSettings"]
    assert scale["minNodeCount"] == 0 and scale["maxNodeCount"] == 1
    assert scale["nodeIdleTimeBeforeScaleDown"] == "PT30M"


def test_job_runs_to_completion_with_logs_metrics_and_model_uri(
    azure_fake, azure_workspace, dataset_files
):
    job = azure_workspace.jobs.submit_job(job_spec(*dataset_files))
    assert job.status is JobStatus.NOT_STARTED
    assert job.tags["job_name"] == job.name and job.tags["attempt"] == "1"
    lines = list(azure_workspace.jobs.stream_job_logs(job.name))
    assert "step 1/2 loss 2.5" in lines and "done: model saved" in lines
    assert lines[-3] == f"[azure] job {job.name}: Completed"
    done = azure_workspace.jobs.get_job(job.name)
    assert done.status is JobStatus.COMPLETED
    assert done.model_uri == f"azureml://jobs/{job.name}/outputs/model/paths/mlflow_model"
    assert done.metrics["eval_loss"] == 1.6 and "config_hash" in done.metrics
    assert done.studio_url and job.name in done.studio_url
    # what was submitted: the trainer as a command with uri_file inputs and a model output
    props = azure_fake.jobs[job.name].body["properties"]
    assert props["command"].startswith(
        "python -m trainer.fine_tune --train-file ${{inputs.train_file}}"
    )
    assert {i["jobInputType"] for i in props["inputs"].values()} == {"uri_file"}
    assert props["outputs"]["model"]["jobOutputType"] == "uri_folder"
    assert props["outputs"]["model"]["uri"].endswith(f"finetune-phi/jobs/{job.name}/model/")


def test_resubmitting_reattaches_instead_of_starting_again(
    azure_fake, azure_workspace, dataset_files
):
    spec = job_spec(*dataset_files)
    first = azure_workspace.jobs.submit_job(spec)
    again = azure_workspace.jobs.submit_job(spec)
    assert again.name == first.name
    assert azure_fake.count("PUT", r"/jobs/") == 1


@pytest.mark.parametrize("duplicate_status", [409, 400])
def test_retried_submission_whose_answer_was_lost_reattaches(
    azure_fake, azure_workspace, dataset_files, duplicate_status
):
    """The PUT reaches Azure but the connection resets before the answer: azure-core retries
    the PUT (refused: the name exists, with whatever status), and the backend attaches to
    the job that was created, found by its name."""
    azure_fake.duplicate_job_status = duplicate_status
    azure_fake.inject("PUT", r"/jobs/ft-", "reset-after")
    job = azure_workspace.jobs.submit_job(job_spec(*dataset_files))
    assert job.name == "ft-0123abcd-base-cfg"
    assert len(azure_fake.jobs) == 1
    assert azure_fake.count("PUT", r"/jobs/") == 2


def test_retried_task_after_transient_failure_reattaches(azure_fake, tmp_path, dataset_files):
    """Every azure-core retry of the PUT fails too: the job the first PUT created is found
    by its name at once (were the lookup to fail as well, the transient error would make
    the task retry, and the new submit finds it first thing)."""
    from azure_helpers import make_azure_workspace

    workspace = make_azure_workspace(azure_fake, tmp_path)
    azure_fake.inject("PUT", r"/jobs/ft-", "reset-after")
    azure_fake.inject("PUT", r"/jobs/ft-", "reset", times=10)
    job = workspace.jobs.submit_job(job_spec(*dataset_files))
    assert job.name == "ft-0123abcd-base-cfg" and len(azure_fake.jobs) == 1
    azure_fake.faults.clear()
    assert workspace.jobs.submit_job(job_spec(*dataset_files)).name == job.name
    assert len(azure_fake.jobs) == 1


def test_failed_job_reports_studio_and_log_tail_and_resubmission_is_attempt_two(
    azure_fake, azure_workspace, dataset_files
):
    spec = job_spec(*dataset_files)
    azure_fake.job_outcomes[spec.name] = "Failed"
    job = azure_workspace.jobs.submit_job(spec)
    list(azure_workspace.jobs.stream_job_logs(job.name))
    failed = azure_workspace.jobs.get_job(job.name)
    assert failed.status is JobStatus.FAILED and failed.model_uri is None
    assert "ml.azure.com" in failed.error and "CUDA out of memory" in failed.error
    retry = azure_workspace.jobs.submit_job(spec)
    assert retry.name == f"{spec.name}-r2" and retry.tags["attempt"] == "2"
    first_out = azure_fake.jobs[spec.name].body["properties"]["outputs"]["model"]["uri"]
    second_out = azure_fake.jobs[retry.name].body["properties"]["outputs"]["model"]["uri"]
    assert first_out == second_out  # same folder: the trainer resumes from its checkpoints


@pytest.mark.parametrize("outcome", ["Canceled", "Paused"])
def test_stream_ends_on_every_non_success_state(
    azure_fake, azure_workspace, dataset_files, outcome
):
    spec = job_spec(*dataset_files)
    azure_fake.job_outcomes[spec.name] = outcome
    job = azure_workspace.jobs.submit_job(spec)
    lines = list(azure_workspace.jobs.stream_job_logs(job.name))
    assert lines[-1] == f"[azure] job {job.name}: {outcome}"
    record = azure_workspace.jobs.get_job(job.name)
    assert record.status == outcome and record.error and record.model_uri is None


def test_a_job_not_responding_for_a_while_is_waited_for(azure_fake, azure_workspace, dataset_files):
    """NotResponding is not final: a job whose heartbeat comes back completes as usual."""
    spec = job_spec(*dataset_files)
    azure_fake.job_outcomes[spec.name] = "NotResponding"
    azure_fake.not_responding_recovers_after[spec.name] = 3
    job = azure_workspace.jobs.submit_job(spec)
    lines = list(azure_workspace.jobs.stream_job_logs(job.name))
    assert any(": NotResponding (no heartbeat" in line for line in lines)
    assert f"[azure] job {job.name}: Completed" in lines
    assert azure_workspace.jobs.get_job(job.name).model_uri is not None


def test_a_job_not_responding_for_too_long_is_canceled_before_the_next_attempt(
    azure_fake, tmp_path, dataset_files
):
    """The stream stops waiting after `not_responding_timeout_seconds`; the resubmission
    cancels the silent attempt first, so two attempts never write one output folder."""
    from azure_helpers import make_azure_workspace

    workspace = make_azure_workspace(azure_fake, tmp_path, not_responding_timeout_seconds=60.0)
    spec = job_spec(*dataset_files)
    azure_fake.job_outcomes[spec.name] = "NotResponding"  # and it never comes back
    job = workspace.jobs.submit_job(spec)
    lines = list(workspace.jobs.stream_job_logs(job.name))
    assert "stopped waiting" in lines[-1]
    record = workspace.jobs.get_job(job.name)
    assert record.status is JobStatus.NOT_RESPONDING and not record.status.is_terminal
    assert f"job {job.name} is NotResponding" in record.error

    retry = workspace.jobs.submit_job(spec)
    assert retry.name == f"{spec.name}-r2"
    assert azure_fake.jobs[spec.name].status == "Canceled"
    assert azure_fake.count("POST", rf"/jobs/{spec.name}/cancel") == 1


def test_cancel_job(azure_fake, azure_workspace, dataset_files):
    job = azure_workspace.jobs.submit_job(job_spec(*dataset_files))
    azure_workspace.jobs.get_job(job.name)  # Starting
    canceled = azure_workspace.jobs.cancel_job(job.name)
    assert canceled.status is JobStatus.CANCELED
    assert azure_fake.count("POST", r"/jobs/.*/cancel") == 1
    assert azure_workspace.jobs.cancel_job(job.name).status is JobStatus.CANCELED  # idempotent
    assert azure_fake.count("POST", r"/jobs/.*/cancel") == 1


def test_find_jobs_by_tag_and_unknown_job(azure_workspace, dataset_files):
    job = azure_workspace.jobs.submit_job(job_spec(*dataset_files))
    assert [j.name for j in azure_workspace.jobs.find_jobs({"dataset_sha256": "d" * 64})] == [
        job.name
    ]
    assert azure_workspace.jobs.find_jobs({"dataset_sha256": "other"}) == []
    with pytest.raises(NotFound):
        azure_workspace.jobs.get_job("no-such-job")


def _completed_job(workspace, dataset_files, name="ft-0123abcd-base-cfg"):
    job = workspace.jobs.submit_job(job_spec(*dataset_files, name=name))
    list(workspace.jobs.stream_job_logs(job.name))
    return workspace.jobs.get_job(job.name)


def test_registration_is_idempotent_per_job_and_aliases_move(azure_workspace, dataset_files):
    ws = azure_workspace
    job = _completed_job(ws, dataset_files)
    v1 = ws.registry.register_model(
        "phi3-chat", job.model_uri, tags={"eval_loss": "1.6"}, job_name=job.name
    )
    assert (v1.version, v1.tags["job_name"], v1.source) == ("1", job.name, job.model_uri)
    assert ws.registry.register_model("phi3-chat", job.model_uri, tags={}, job_name=job.name) == v1
    job2 = _completed_job(ws, dataset_files, name="ft-second")
    v2 = ws.registry.register_model("phi3-chat", job2.model_uri, tags={}, job_name=job2.name)
    assert v2.version == "2"
    assert [v.version for v in ws.registry.list_model_versions("phi3-chat")] == ["1", "2"]
    assert ws.registry.get_model_by_alias("phi3-chat", CHAMPION) is None
    ws.registry.set_model_alias("phi3-chat", CHAMPION, "1")
    ws.registry.set_model_alias("phi3-chat", CHAMPION, "2")
    ws.registry.set_model_alias("phi3-chat", CHALLENGER, "1")
    assert ws.registry.get_model_by_alias("phi3-chat", CHAMPION).version == "2"
    assert ws.registry.get_model("phi3-chat", "1").aliases == (CHALLENGER,)
    assert "alias.champion" not in ws.registry.get_model("phi3-chat", "2").tags  # aliases, not tags
    ws.registry.delete_model_alias("phi3-chat", CHALLENGER)
    assert ws.registry.get_model_by_alias("phi3-chat", CHALLENGER) is None
    with pytest.raises(NotFound):
        ws.registry.get_model("phi3-chat", "9")
    assert ws.registry.list_model_versions("unknown-model") == []


def test_registering_from_an_unfinished_job_is_refused(azure_workspace, dataset_files):
    job = azure_workspace.jobs.submit_job(job_spec(*dataset_files))
    with pytest.raises(WorkspaceError) as caught:
        azure_workspace.registry.register_model(
            "phi3-chat", f"azureml://jobs/{job.name}/outputs/model/paths/mlflow_model", tags={}
        )
    assert not caught.value.transient


@pytest.fixture
def registered(azure_workspace, dataset_files):
    job = _completed_job(azure_workspace, dataset_files)
    return azure_workspace.registry.register_model(
        "phi3-chat", job.model_uri, tags={}, job_name=job.name
    )


def test_endpoint_deployments_traffic_and_scoring(azure_fake, azure_workspace, registered):
    ws = azure_workspace
    info = ws.endpoints.get_or_create_endpoint("phi3-chat")
    assert info.auth_mode == "key" and info.scoring_uri.endswith("/score")
    assert ws.endpoints.get_or_create_endpoint("phi3-chat") == info
    assert azure_fake.count("PUT", r"/onlineEndpoints/phi3-chat$") == 1
    keys = ws.endpoints.get_endpoint_keys("phi3-chat")
    assert keys.primary == azure_fake.keys["primary"] and "***" in repr(keys)

    blue = ws.endpoints.create_or_update_deployment(DeploymentSpec("phi3-chat", "blue", registered))
    assert (blue.provisioning_state, blue.ready, blue.model) == ("Succeeded", True, "phi3-chat:1")
    dep = next(r for k, r in azure_fake.resources.items() if k.endswith("/deployments/blue"))
    assert dep["properties"]["instanceType"] == "Standard_E4s_v3"
    assert dep["properties"]["codeConfiguration"]["scoringScript"] == "score.py"
    assert dep["properties"]["readinessProbe"]["initialDelay"] == "PT10M"

    assert ws.endpoints.set_traffic("phi3-chat", TrafficState({"blue": 100})).live == {"blue": 100}
    answer = ws.endpoints.invoke(
        "phi3-chat", {"input_data": ["Who founded Microsoft?"], "params": {"max_new_tokens": 8}}
    )
    assert answer == ["Who founded Microsoft?\nBill Gates and Paul Allen (blue)"]
    ws.endpoints.create_or_update_deployment(DeploymentSpec("phi3-chat", "green", registered))
    assert ws.endpoints.invoke(
        "phi3-chat", {"messages": [{"role": "user", "content": "Hi"}]}, deployment="green"
    ) == {"role": "assistant", "content": "Bill Gates and Paul Allen (green)"}
    assert azure_fake.scored[-1] == ("green", "direct")
    with pytest.raises(WorkspaceError) as bad:
        ws.endpoints.invoke("phi3-chat", {"input_data": "not a list"})
    assert "400" in str(bad.value) and not bad.value.transient

    state = ws.endpoints.set_traffic("phi3-chat", TrafficState({"blue": 100}, {"green": 20}))
    assert state.mirror_traffic == {"green": 20} and state.traffic == {"blue": 100, "green": 0}
    assert [d.name for d in ws.endpoints.list_deployments("phi3-chat")] == ["blue", "green"]
    assert "readiness probe passed" in ws.endpoints.get_deployment_logs(
        "phi3-chat", "green", lines=5
    )

    ws.endpoints.delete_deployment("phi3-chat", "green")  # its mirror share goes first
    assert ws.endpoints.get_traffic("phi3-chat") == TrafficState({"blue": 100}, {})
    assert ws.endpoints.get_deployment("phi3-chat", "green") is None
    with pytest.raises(NotFound):
        ws.endpoints.delete_deployment("phi3-chat", "green")


@pytest.mark.parametrize(
    ("traffic", "mirror", "why"),
    [
        ({"blue": 60}, {}, "sum to 100"),
        ({"blue": 90, "nope": 10}, {}, "not a deployment"),
        ({"blue": 100}, {"green": 60}, "at most 50%"),
        ({"blue": 50, "green": 50}, {"green": 10}, "receives live traffic"),
    ],
)
def test_traffic_rules_are_the_services(azure_workspace, registered, traffic, mirror, why):
    ws = azure_workspace
    ws.endpoints.get_or_create_endpoint("phi3-chat")
    for colour in ("blue", "green"):
        ws.endpoints.create_or_update_deployment(DeploymentSpec("phi3-chat", colour, registered))
    ws.endpoints.set_traffic("phi3-chat", TrafficState({"blue": 100}))
    with pytest.raises(RuleViolation, match=why) as caught:
        ws.endpoints.set_traffic("phi3-chat", TrafficState(traffic, mirror))
    assert not is_transient(caught.value)
    assert ws.endpoints.get_traffic("phi3-chat").live == {"blue": 100}  # nothing changed


def test_deleting_a_live_deployment_is_refused(azure_workspace, registered):
    ws = azure_workspace
    ws.endpoints.get_or_create_endpoint("phi3-chat")
    ws.endpoints.create_or_update_deployment(DeploymentSpec("phi3-chat", "blue", registered))
    ws.endpoints.set_traffic("phi3-chat", TrafficState({"blue": 100}))
    with pytest.raises(RuleViolation, match="live traffic"):
        ws.endpoints.delete_deployment("phi3-chat", "blue")
    assert ws.endpoints.get_deployment("phi3-chat", "blue") is not None


def test_failed_deployment_raises_with_its_log(azure_fake, azure_workspace, registered):
    ws = azure_workspace
    ws.endpoints.get_or_create_endpoint("phi3-chat")
    azure_fake.deployment_failures["blue"] = "ImagePullFailure: environment build failed"
    with pytest.raises(WorkspaceError) as caught:
        ws.endpoints.create_or_update_deployment(DeploymentSpec("phi3-chat", "blue", registered))
    assert "ImagePullFailure" in str(caught.value) and not caught.value.transient
    assert ws.endpoints.get_deployment("phi3-chat", "blue").provisioning_state == "Failed"


def test_invoke_refetches_a_rotated_key_and_maps_errors(azure_fake, azure_workspace, registered):
    ws = azure_workspace
    ws.endpoints.get_or_create_endpoint("phi3-chat")
    ws.endpoints.create_or_update_deployment(DeploymentSpec("phi3-chat", "blue", registered))
    ws.endpoints.set_traffic("phi3-chat", TrafficState({"blue": 100}))
    request = {"input_data": ["Hi"], "params": {}}
    ws.endpoints.invoke("phi3-chat", request)
    azure_fake.keys["primary"] = "rotated-" + "c" * 30
    assert ws.endpoints.invoke("phi3-chat", request) == ["Hi\nBill Gates and Paul Allen (blue)"]
    azure_fake.scorers["blue"] = failing_scorer(503, "overloaded")
    with pytest.raises(WorkspaceError) as caught:
        ws.endpoints.invoke("phi3-chat", request)
    assert caught.value.transient and "503" in str(caught.value)
    with pytest.raises(NotFound):
        ws.endpoints.invoke("phi3-chat", request, deployment="purple")


def test_endpoint_is_never_deleted_and_names_are_checked(azure_fake, azure_workspace):
    with pytest.raises(RuleViolation):
        azure_workspace.endpoints.get_or_create_endpoint("x")
    azure_workspace.endpoints.get_or_create_endpoint("phi3-chat")
    assert azure_fake.count("DELETE", r"/onlineEndpoints/[^/]+$") == 0


def test_set_model_tags_and_download_model(azure_workspace, registered, tmp_path):
    ws = azure_workspace
    ws.registry.set_model_tags("phi3-chat", registered.version, {"gate": "passed"})
    assert ws.registry.get_model("phi3-chat", registered.version).tags["gate"] == "passed"
    folder = ws.registry.download_model("phi3-chat", registered.version, tmp_path / "models")
    assert (folder / "MLmodel").is_file() and not (folder / "metrics.json").exists()
    assert (
        ws.registry.download_model("phi3-chat", registered.version, tmp_path / "models") == folder
    )


def test_scoring_errors_are_what_the_service_answers(azure_fake, azure_workspace, registered):
    """The service's own statuses, classified: 424 wraps the container's answer (transient
    only when the container's status is), 408 past the request timeout, 429 when the
    deployment is full, 404 when no deployment takes traffic."""
    from fake_azure import slow_scorer

    from finetune_phi.serving_plan import SKUS, plan_serving

    ws = azure_workspace
    ws.endpoints.get_or_create_endpoint("phi3-chat")
    request = {"input_data": ["Hi"], "params": {}}
    plan = plan_serving(int(3.8e9), SKUS["Standard_E4s_v3"])
    spec = DeploymentSpec("phi3-chat", "blue", registered, "Standard_E4s_v3", serving=plan)
    ws.endpoints.create_or_update_deployment(spec)

    with pytest.raises(NotFound, match="no deployment of the endpoint receives traffic"):
        ws.endpoints.invoke("phi3-chat", request)
    ws.endpoints.set_traffic("phi3-chat", TrafficState({"blue": 100}))

    azure_fake.scorers["blue"] = failing_scorer(400, "bad input")
    with pytest.raises(WorkspaceError) as caught:
        ws.endpoints.invoke("phi3-chat", request)
    assert caught.value.status == 424 and not caught.value.transient
    assert "the model's container answered 400, model_error" in str(caught.value)
    assert "bad input" in str(caught.value) and "(deployment 'blue')" in str(caught.value)
    azure_fake.scorers["blue"] = failing_scorer(503, "still loading")
    with pytest.raises(WorkspaceError) as caught:
        ws.endpoints.invoke("phi3-chat", request)
    assert caught.value.status == 424 and caught.value.transient

    # A slow but healthy model within the plan's request timeout answers; past it, 408.
    timeout_s = plan.request_timeout_ms / 1000
    azure_fake.scorers["blue"] = slow_scorer(timeout_s * 0.9, "blue")
    assert ws.endpoints.invoke("phi3-chat", request)[0].endswith("(blue)")
    azure_fake.scorers["blue"] = slow_scorer(timeout_s * 1.1, "blue")
    with pytest.raises(WorkspaceError, match="request timeout") as caught:
        ws.endpoints.invoke("phi3-chat", request)
    assert caught.value.status == 408 and caught.value.transient

    del azure_fake.scorers["blue"]
    azure_fake.pending["blue"] = 2 * plan.max_concurrent_requests_per_instance
    with pytest.raises(WorkspaceError, match="throttled") as caught:
        ws.endpoints.invoke("phi3-chat", request)
    assert caught.value.status == 429 and caught.value.transient
    azure_fake.pending["blue"] -= 1
    assert ws.endpoints.invoke("phi3-chat", request)[0].endswith("(blue)")


def test_versions_are_numbered_by_the_service_archived_ones_included(
    azure_fake, azure_workspace, dataset_files
):
    """A listing hides archived versions, so "max listed + 1" can be an archived number (a
    409 the SDK raises as AssetPathException, without a status). The service's nextVersion
    is used instead; a number taken meanwhile by another registration is looked at again."""
    ws = azure_workspace
    first = _completed_job(ws, dataset_files, "ft-first")
    second = _completed_job(ws, dataset_files, "ft-second")
    third = _completed_job(ws, dataset_files, "ft-third")
    v1 = ws.registry.register_model("phi3-chat", first.model_uri, tags={}, job_name=first.name)
    v2 = ws.registry.register_model("phi3-chat", second.model_uri, tags={}, job_name=second.name)
    assert (v1.version, v2.version) == ("1", "2")
    ws.connection.ml_client.models.archive(name="phi3-chat", version="2")
    assert [v.version for v in ws.registry.list_model_versions("phi3-chat")] == ["1"]

    azure_fake.next_version_lag = 1  # the next container read offers 2 again: taken
    v3 = ws.registry.register_model("phi3-chat", third.model_uri, tags={}, job_name=third.name)
    assert v3.version == "3" and v3.tags["job_name"] == third.name
    # v2 registered, archived, then refused to the third registration (AssetPathException)
    assert azure_fake.count("PUT", r"/models/phi3-chat/versions/2$") == 3
    assert azure_fake.count("PUT", r"/models/phi3-chat/versions/3$") == 1


def test_a_log_that_cannot_be_read_is_said_once_and_the_job_followed(
    azure_fake, azure_workspace, dataset_files
):
    """Storage reached by identity, no data role: reading the log answers 403. The job keeps
    running on Azure, so the stream follows its status and says why there is no log."""
    spec = job_spec(*dataset_files)
    azure_fake.inject("HEAD", rf"/ExperimentRun/dcid\.{spec.name}/", "403", times=1000)
    azure_fake.inject("GET", rf"/ExperimentRun/dcid\.{spec.name}/", "403", times=1000)
    job = azure_workspace.jobs.submit_job(spec)
    lines = list(azure_workspace.jobs.stream_job_logs(job.name))
    unreadable = [line for line in lines if "its log cannot be read" in line]
    assert len(unreadable) == 1 and "403" in unreadable[0] and "ml.azure.com" in unreadable[0]
    assert lines[-1] == f"[azure] job {job.name}: Completed"
    assert azure_workspace.jobs.get_job(job.name).model_uri is not None


def test_a_distributed_jobs_log_is_rank_zeros(azure_fake, tmp_path, dataset_files):
    """Several processes write std_log_process_<rank>.txt, no std_log.txt: rank 0's is read."""
    from azure_helpers import make_azure_workspace

    workspace = make_azure_workspace(
        azure_fake, tmp_path, training_instance_count=2, training_max_nodes=2, processes_per_node=2
    )
    job = workspace.jobs.submit_job(job_spec(*dataset_files))
    lines = list(workspace.jobs.stream_job_logs(job.name))
    assert "done: model saved" in lines and not any(line.startswith("rank ") for line in lines)
    folder = f"ExperimentRun/dcid.{job.name}/user_logs"
    assert {b for _, b in azure_fake.blobs if b.startswith(folder)} == {
        f"{folder}/std_log_process_{rank}.txt" for rank in range(4)
    }
