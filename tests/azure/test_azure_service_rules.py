"""Two service rules the fake plays, and what the backend does about them.

- An endpoint or deployment that another operation is changing (Creating/Updating) refuses
  updates with 409 until that operation ends: traffic and deployment updates wait and try
  again (a bounded number of times) instead of failing the rollout.
- An environment whose image cannot be built: a job on it ends Failed while Preparing, before
  any process ran, with the build log in its artifact folder; the job's error says so and
  gives the build log's last lines.
"""

from __future__ import annotations

import pytest
from azure_helpers import job_spec, make_azure_workspace

from backends.azure.workspace import BUSY_RETRIES, IMAGE_BUILD_LOG
from finetune_phi.workspace import DeploymentSpec, JobStatus, TrafficState, WorkspaceError

ENDPOINT = "phi3-chat"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def ws(azure_fake, tmp_path, sleeps):
    return make_azure_workspace(azure_fake, tmp_path, sleeps=sleeps)


@pytest.fixture
def registered(ws, dataset_files):
    job = ws.jobs.submit_job(job_spec(*dataset_files))
    list(ws.jobs.stream_job_logs(job.name))
    done = ws.jobs.get_job(job.name)
    return ws.registry.register_model("phi3-chat", done.model_uri, tags={}, job_name=done.name)


@pytest.fixture
def blue(ws, registered):
    ws.endpoints.get_or_create_endpoint(ENDPOINT)
    ws.endpoints.create_or_update_deployment(DeploymentSpec(ENDPOINT, "blue", registered))
    return registered


def test_a_traffic_update_waits_while_the_endpoint_is_updating(azure_fake, ws, blue, sleeps):
    azure_fake.begin_foreign_update(f"/onlineEndpoints/{ENDPOINT}", requests=2)
    assert ws.endpoints.get_or_create_endpoint(ENDPOINT).provisioning_state == "Updating"
    sleeps.clear()
    state = ws.endpoints.set_traffic(ENDPOINT, TrafficState({"blue": 100}))
    assert state.live == {"blue": 100}
    puts = [p for m, p in azure_fake.calls if m == "PUT" and p.endswith(f"/{ENDPOINT}")]
    assert len(puts) == 1 + 2 + 1  # the endpoint's creation, two refusals, the update
    assert sleeps[:2] == [15.0, 30.0]  # waited between the tries


def test_the_409_is_the_services_error_and_the_wait_is_bounded(azure_fake, ws, blue, sleeps):
    azure_fake.begin_foreign_update(f"/onlineEndpoints/{ENDPOINT}", requests=100)
    before = azure_fake.count("PUT", rf"/onlineEndpoints/{ENDPOINT}$")
    with pytest.raises(WorkspaceError) as caught:
        ws.endpoints.set_traffic(ENDPOINT, TrafficState({"blue": 100}))
    assert caught.value.transient  # a later run may find the endpoint free
    assert "[409 Conflict]" in str(caught.value)
    assert "Updating provisioning state" in str(caught.value)
    assert f"still refused after {BUSY_RETRIES} tries" in str(caught.value)
    assert azure_fake.count("PUT", rf"/onlineEndpoints/{ENDPOINT}$") - before == BUSY_RETRIES
    assert len(sleeps) >= BUSY_RETRIES - 1 and max(sleeps) == 60.0
    assert ws.endpoints.get_traffic(ENDPOINT).traffic.get("blue", 0) == 0  # nothing changed


def test_a_deployment_update_waits_while_the_deployment_is_updating(azure_fake, ws, blue, sleeps):
    azure_fake.begin_foreign_update(f"/onlineEndpoints/{ENDPOINT}/deployments/blue", requests=1)
    assert ws.endpoints.get_deployment(ENDPOINT, "blue").provisioning_state == "Updating"
    info = ws.endpoints.create_or_update_deployment(DeploymentSpec(ENDPOINT, "blue", blue))
    assert info.ready and info.provisioning_state == "Succeeded"
    puts = [p for m, p in azure_fake.calls if m == "PUT" and p.endswith("/deployments/blue")]
    assert len(puts) == 1 + 1 + 1  # its creation, one refusal, the update
    assert 15.0 in sleeps


def test_a_new_deployment_waits_while_the_endpoint_is_updating(azure_fake, ws, blue, sleeps):
    azure_fake.begin_foreign_update(f"/onlineEndpoints/{ENDPOINT}", requests=1)
    info = ws.endpoints.create_or_update_deployment(DeploymentSpec(ENDPOINT, "green", blue))
    assert info.ready
    puts = [p for m, p in azure_fake.calls if m == "PUT" and p.endswith("/deployments/green")]
    assert len(puts) == 2  # refused once (the endpoint was Updating), then created


def test_other_refusals_are_not_retried(azure_fake, ws, blue, sleeps):
    with pytest.raises(WorkspaceError, match="sum to 100"):
        ws.endpoints.set_traffic(ENDPOINT, TrafficState({"blue": 60}))
    assert not [s for s in sleeps if s >= 15.0]


def test_a_job_whose_image_cannot_be_built_fails_with_the_build_log(azure_fake, ws, dataset_files):
    environment = ws.jobs.training_environment_spec().name
    azure_fake.image_build_failures[environment] = "\n".join(
        [
            "Step 5/9 : RUN conda env create -p /azureml-envs/env -f conda.yml",
            "Pip subprocess error:",
            "ERROR: Could not find a version that satisfies the requirement torch==99.0",
            "ERROR: No matching distribution found for torch==99.0",
        ]
    )
    job = ws.jobs.submit_job(job_spec(*dataset_files))
    lines = list(ws.jobs.stream_job_logs(job.name))
    assert lines[-1] == f"[azure] job {job.name}: Failed"
    assert not [line for line in lines if not line.startswith("[azure]")]  # nothing ran
    failed = ws.jobs.get_job(job.name)
    assert failed.status is JobStatus.FAILED
    assert "before it ran" in failed.error and "could not be built" in failed.error
    assert environment in failed.error
    assert f"ExperimentRun/dcid.{job.name}/{IMAGE_BUILD_LOG}" in failed.error
    assert failed.error.rstrip().endswith("No matching distribution found for torch==99.0")
    assert "ml.azure.com" in failed.error  # and where to look in the studio


def test_a_job_that_ran_and_failed_is_not_called_an_image_failure(azure_fake, ws, dataset_files):
    spec = job_spec(*dataset_files)
    azure_fake.job_outcomes[spec.name] = "Failed"
    job = ws.jobs.submit_job(spec)
    list(ws.jobs.stream_job_logs(job.name))
    failed = ws.jobs.get_job(job.name)
    assert "CUDA out of memory" in failed.error and "could not be built" not in failed.error
