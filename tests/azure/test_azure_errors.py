"""One classification of Azure failures; faults injected under the real MLClient."""

from __future__ import annotations

import time

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure_helpers import FakeCredential, job_spec, make_azure_workspace

from backends.azure.errors import AzureWorkspaceError, classify
from finetune_phi.workspace import NotFound, RuleViolation, WorkspaceError, is_transient


class _Response:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}
        self.reason = "reason"
        self.text = lambda: ""


def _http(status: int, message: str = "boom", **headers: str) -> HttpResponseError:
    exc = HttpResponseError(message=message)
    exc.status_code = status
    exc.response = _Response(status, headers)  # type: ignore[assignment]
    return exc


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_http(429, Retry_After="7"), True),
        (_http(408), True),
        (_http(500), True),
        (_http(503), True),
        (ServiceRequestError("connection refused"), True),
        (ServiceResponseError("connection reset"), True),
        (ServiceResponseTimeoutError("read timed out"), True),
        (ClientAuthenticationError("no token"), False),
        (_http(401), False),
        (_http(403), False),
        (_http(400, "QuotaExceeded: not enough cores"), False),
        (_http(400, "invalid instance type"), False),
        (_http(409), False),
        (ResourceNotFoundError("gone"), False),
        (ValueError("SDK validation"), False),
    ],
)
def test_classification(exc, transient):
    error = classify(exc, "doing it")
    assert isinstance(error, WorkspaceError)
    assert error.transient is transient
    assert is_transient(error) is transient
    assert str(error).startswith("doing it: ")


def test_classification_details():
    throttled = classify(_http(429, **{"Retry-After": "7"}), "x")
    assert isinstance(throttled, AzureWorkspaceError) and throttled.retry_after == 7.0
    assert isinstance(classify(ResourceNotFoundError("gone"), "x"), NotFound)
    assert "quota" in str(classify(_http(400, "QuotaExceeded"), "x")).lower()
    assert "az login" in str(classify(ClientAuthenticationError("no"), "x"))
    assert "role" in str(classify(_http(403), "x"))
    assert isinstance(
        classify(_http(400, "traffic must sum to 100"), "x", rules=True), RuleViolation
    )
    assert not isinstance(classify(_http(400, "bad"), "x"), RuleViolation)


def test_throttling_with_retry_after_is_retried_by_the_sdk(azure_fake, azure_workspace):
    """One 429 with Retry-After: 1 -> azure-core waits about a second and the call succeeds."""
    azure_fake.inject("GET", r"/computes/", "429", retry_after="1")
    started = time.monotonic()
    assert azure_workspace.jobs.ensure_compute().state == "Succeeded"
    assert time.monotonic() - started >= 0.9
    assert azure_fake.count("GET", r"/computes/") >= 2


@pytest.mark.parametrize("kind", ["429", "503", "reset"])
def test_persistent_transient_faults_surface_as_transient(azure_fake, azure_workspace, kind):
    azure_fake.inject("GET", r"/onlineEndpoints/", kind, times=20)
    with pytest.raises(WorkspaceError) as caught:
        azure_workspace.endpoints.get_traffic("phi3-chat")
    assert caught.value.transient
    # azure-core's own retries ran first (retry_total=3 in the tests' client)
    assert azure_fake.count("GET", r"/onlineEndpoints/") == 4
    if kind == "429":
        assert caught.value.retry_after == 0.0


def test_unauthorized_is_permanent(azure_fake, azure_workspace):
    azure_fake.inject("GET", r"/onlineEndpoints/", "401")
    with pytest.raises(WorkspaceError) as caught:
        azure_workspace.endpoints.get_traffic("phi3-chat")
    assert not caught.value.transient and "az login" in str(caught.value)
    assert azure_fake.count("GET", r"/onlineEndpoints/") == 1  # not retried


def test_quota_exceeded_is_permanent(azure_fake, azure_workspace):
    azure_fake.inject("PUT", r"/computes/", "quota")
    with pytest.raises(WorkspaceError) as caught:
        azure_workspace.jobs.ensure_compute()
    assert not caught.value.transient and "quota" in str(caught.value).lower()


def test_credential_failure_is_permanent(azure_fake, tmp_path):
    workspace = make_azure_workspace(azure_fake, tmp_path, credential=FakeCredential(fail=True))
    with pytest.raises(WorkspaceError) as caught:
        workspace.endpoints.get_traffic("phi3-chat")
    assert not caught.value.transient
    assert azure_fake.calls == []  # nothing reached the service


def test_job_log_stream_survives_transient_errors(azure_fake, tmp_path, dataset_files):
    sleeps: list[float] = []
    workspace = make_azure_workspace(azure_fake, tmp_path, sleeps=sleeps, job_poll_seconds=30)
    job = workspace.jobs.submit_job(job_spec(*dataset_files))
    azure_fake.inject("GET", r"/jobs/ft-", "503", times=4)  # one whole SDK call fails
    lines = list(workspace.jobs.stream_job_logs(job.name))
    assert lines[-3].endswith("Completed")
    assert sleeps and max(sleeps) <= 30  # backoff is capped by job_poll_seconds


def test_missing_job_while_streaming_is_not_found(azure_workspace):
    with pytest.raises(NotFound):
        list(azure_workspace.jobs.stream_job_logs("nope"))
