"""A small stateful fake of the Azure ML REST resources the Azure backend uses.

It sits under the REAL `MLClient` (and the real azure-storage-blob clients the SDK uploads
with): `responses` intercepts every HTTP request `requests` would send, and `FakeAzureML.handle`
answers it from in-memory state. Nothing of the backend is mocked; only the service is fake.

What it models, with the service's rules:
- ARM resources under one workspace: environments and code versions, computes, jobs, models,
  datastores (+ listSecrets), online endpoints and deployments, the workspace itself, VM sizes
  and usages of the region;
- long-running operations the SDK polls: a PUT/DELETE answers 201/202 with an
  `Azure-AsyncOperation` URL that says InProgress (Updating for endpoints and deployments)
  `lro_polls` times, then Succeeded/Failed; an endpoint's or deployment's PUT also has a
  `Location` (the resource), a DELETE a `Location` (the operation's result);
- an endpoint or deployment that is Creating/Updating/Deleting refuses updates (and a
  deployment cannot be created on an endpoint that is) with 409 until its operation ends;
  `begin_foreign_update(rel, requests=n)` has another client hold it for n refusals;
- an environment whose image build fails (`image_build_failures[name] = build log`): a job on
  it ends Failed while Preparing, with no user log and the build log at
  `ExperimentRun/dcid.<job>/azureml-logs/20_image_build_log.txt` in the artifact store;
- jobs move NotStarted -> Starting -> Preparing -> Queued -> Running -> Finalizing -> a final
  state, one step per GET of the job, writing the trainer's log to the artifact store and (on
  Completed) metrics.json + mlflow_model/MLmodel to the job output folder; cancel goes through
  CancelRequested to Canceled; a job name can be created once;
- compute, when a test gives one (`job_runner`): the job's submitted command really runs as a
  node would run it, with its inputs downloaded from blob storage and its output folder (with
  what earlier attempts left there) as local paths; what it prints is the job's log, what it
  writes becomes the job's output, an exception fails the job with its traceback in the log
  (`azure_helpers.run_job_here` runs the trainer itself, in this process);
- traffic: names must be deployments, live traffic sums to 100 or 0, mirror goes to at most one
  deployment, at most 50 %, never to one with live traffic; a deployment with live traffic
  cannot be deleted;
- blob storage (what the SDK's uploads and the backend's reads need): put/get/head blobs,
  metadata, ranges;
- scoring: `POST https://<endpoint>.<region>.inference.ml.azure.com/score` with the key; the
  `azureml-model-deployment` header picks a deployment, else the traffic map (seeded draw);
  mirrored requests are counted. The service's own answers: 404 "No valid deployments to
  route to" when nothing takes traffic, 424 with the container's status in
  `ms-azureml-model-error-statuscode` when the container answers non-200, 408 when the model
  takes longer than the deployment's `requestTimeout` (`slow_scorer`), 429 when the
  deployment is busy with 2 x max concurrent x instances requests (`pending`). Each
  deployment answers through `serving.contract` (the same request validation as the real
  scoring script) with a canned reply, or with what
  `scorers[deployment]` returns (`canned_scorer(name, answer=...)`: replies of your choice,
  `failing_scorer()`: errors);
- endpoint names are unique per region across customers: `taken_endpoint_names` are other
  customers' (creating one is refused), and `resolves(host)` is the region's DNS of
  scoring hosts (`<endpoint>.<region>.inference.ml.azure.com`), preflight's name check;
- faults: `inject(method, path_pattern, kind)` makes matching requests fail with 429 (+
  Retry-After), 503, a connection reset (before or after the service acted), 401 or a quota
  error.

Checked against recorded answers of the real service (test_fake_fidelity.py; the fixtures in
recordings/ keep the shapes and name each recording's repository, path and commit): status
codes, operation headers, polling answers and the fields of each body, with the fields the
fake leaves out listed there, each with why. Per resource:
- online endpoint: azure-sdk-assets python/sdk/ml/azure-ai-ml/tests/recordings/
  online_services/e2etests/test_online_endpoint.pyTestOnlineEndpointtest_online_endpoint_e2e
  .json (2026, azure-ai-ml 1.32), and for the traffic update (201, not 200) azure-sdk-for-python
  sdk/ml/azure-ai-ml/tests/recordings/online_services/e2etests/test_online_deployment.py
  TestOnlineDeploymenttest_online_deployment.json (2022);
- online deployment: that same test_online_deployment recording (2022, azure-ai-ml 1.1);
- endpoint keys and deployment logs: no recording uses key auth; the SDK's REST models
  (EndpointAuthKeys, DeploymentLogs);
- command job: azure-sdk-assets .../command_job/e2etests/test_command_job.pyTestCommandJob
  test_command_job_serverless.json (2026);
- model version and container: azure-sdk-assets .../model/e2etests/test_model.pyTestModel
  test_crud_file.json (2026) and azure-sdk-for-python .../model/e2etests/test_model.py
  TestModeltest_create_autoincrement.json (2022);
- environment version: azure-sdk-assets .../environment/e2etests/test_environment.py
  TestEnvironmenttest_environment_get.json (2023) and the test_online_deployment recording;
- compute: azure-sdk-assets .../compute/e2etests/test_compute.pyTestComputetest_aml_compute_
  create_and_delete.json (2024);
- errors: the 404 of test_crud_file ({"error": {"code", "message", ...}}); the busy 409 and
  its code are assumed (only its message is known, from azure-sdk-for-net#36961); the image
  build failure's log file is the one the run's error names (a run error quoted in
  Azure-Samples/mlops-enterprise-template#4).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import copy
import email.utils
import hashlib
import io
import itertools
import json
import random
import re
import shlex
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import isodate
import requests
import responses

from finetune_phi.workspace import MODEL_ERROR, MODEL_REASON_HEADER, MODEL_STATUS_HEADER
from serving import contract

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-finetune"
WORKSPACE = "ws-finetune"
# What the service answers (404) when no deployment of the endpoint takes traffic
NO_ROUTE = (
    "No valid deployments to route to. Please check that the endpoint has at least one "
    "deployment with positive weight values or use a deployment specific header to route."
)
REGION = "eastus2"
STORAGE_ACCOUNT = "wsfinetunestorage"
BLOB_CONTAINER = "azureml-blobstore-0000"
ARTIFACT_CONTAINER = "azureml"
ARM = "https://management.azure.com"
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
LOCATION_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.MachineLearningServices/locations"
)
JOB_PROGRESSION = ("NotStarted", "Starting", "Preparing", "Queued", "Running", "Finalizing")
# NotResponding is not final in the service: a job can return to Running (or be canceled).
TERMINAL = {"Completed", "Failed", "Canceled"}
# An endpoint or deployment in these states is being changed: the service refuses another
# update with 409 until the running operation ends.
BUSY_STATES = ("Creating", "Updating", "Deleting")
# Where a job's image build writes its log, in the job's artifact folder: the file the run's
# error names ("Image build failed. For more details, check log file azureml-logs/...").
IMAGE_BUILD_LOG = "azureml-logs/20_image_build_log.txt"
# VM sizes offered in the fake region: name -> (family, vCPUs, GPUs)
VM_SIZES = {
    "Standard_NC24ads_A100_v4": ("standardNCADSA100v4Family", 24, 1),
    "Standard_E4s_v3": ("standardESv3Family", 4, 0),
    "Standard_DS3_v2": ("standardDSv2Family", 4, 0),
}


def _now() -> str:
    return "2026-11-01T00:00:00.000000+00:00"


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    body = {"error": {"code": code, "message": message}}
    return status, {"x-ms-error-code": code, **(headers or {})}, json.dumps(body)


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    kind: str  # "429" | "503" | "reset" | "reset-after" | "401" | "403" | "quota"
    times: int = 1
    retry_after: str = "0"


@dataclass
class Operation:
    polls_left: int
    on_done: Callable[[], None]
    failure: str | None = None  # error message when the operation ends Failed
    done: bool = False
    # What a poll says while it runs: "Updating" for endpoints and deployments (their
    # recordings), "InProgress" for computes and the rest.
    running: str = "InProgress"
    resource: str | None = None  # the resource (lower-case rel path) it holds busy


@dataclass
class FakeJob:
    name: str
    body: dict[str, Any]
    status: str = "NotStarted"
    outcome: str = "Completed"  # where it ends up
    log: list[str] = field(default_factory=list)
    # with outcome NotResponding: GETs it stays so before it runs again (None: forever)
    recovers_after: int | None = None


class FakeAzureML:
    """State + one `handle(request)` that answers like the Azure ML service (see module doc)."""

    def __init__(self, *, lro_polls: int = 1, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self.lro_polls = lro_polls
        self.poll_delay_ms = "1"
        self.rng = random.Random(seed)
        self.resources: dict[str, dict[str, Any]] = {}  # ARM path (lower case) -> resource
        self.jobs: dict[str, FakeJob] = {}
        self.operations: dict[str, Operation] = {}
        self.blobs: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.keys = {"primary": "primary-key-" + "a" * 20, "secondary": "secondary-key-" + "b" * 20}
        # deployment -> scorer: (status, body) or (status, body, seconds the model took)
        self.scorers: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {}
        # deployment -> requests it is busy with (load from elsewhere; the service sheds
        # requests past 2 x max concurrent x instances with 429)
        self.pending: dict[str, int] = {}
        # >0: the next model container read says a nextVersion that is already taken (a
        # concurrent registration got there first)
        self.next_version_lag = 0
        self.duplicate_job_status = 409  # what a second PUT of a job name answers
        # job name -> GETs a NotResponding job stays so before it runs again
        self.not_responding_recovers_after: dict[str, int] = {}
        self.scored: list[tuple[str, str]] = []  # (deployment, "live" | "direct" | "mirror")
        self.deployment_failures: dict[str, str] = {}  # deployment name -> provisioning error
        # environment "name" or "name:version" -> the log of its image build, which fails: a
        # job on it ends Failed while Preparing, with that log in its artifact folder
        self.image_build_failures: dict[str, str] = {}
        self.job_outcomes: dict[str, str] = {}  # job name -> final state it reaches
        self.default_job_outcome = "Completed"
        # The compute: runs a job's command line (argv, inputs and outputs as local paths)
        # when the job would complete; None: canned log and outputs (see module doc).
        self.job_runner: Callable[[list[str]], None] | None = None
        self.authenticated = True
        self.quota: dict[str, tuple[int, int]] = {  # family -> (used, limit) vCPUs
            "standardNCADSA100v4Family": (0, 24),
            "standardESv3Family": (0, 32),
            "standardDSv2Family": (0, 32),
        }
        # Endpoint names other Azure customers hold in the region (names are unique per
        # region): their scoring hosts resolve (`resolves`), and creating one is refused.
        self.taken_endpoint_names: set[str] = set()
        self._add_workspace()

    # ------------------------------------------------------------------ wiring

    def install(self, rsps: responses.RequestsMock) -> None:
        for method in ("GET", "PUT", "POST", "PATCH", "DELETE", "HEAD"):
            rsps.add_callback(method, re.compile(r"https://.*"), callback=self.handle)

    def inject(
        self, method: str, pattern: str, kind: str, *, times: int = 1, retry_after: str = "0"
    ) -> None:
        """Make the next `times` requests `method` on a path matching `pattern` fail."""
        self.faults.append(Fault(method.upper(), re.compile(pattern), kind, times, retry_after))

    def count(self, method: str, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for m, p in self.calls if m == method and regex.search(p))

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: Any) -> Any:
        url = urlparse(request.url)
        method = request.method.upper()
        with self.lock:
            self.calls.append((method, url.path))
            fault = self._fault(method, url.path)
            if fault is not None and fault.kind not in ("reset-after",):
                status, headers, body = self._fail(fault)
                # No body to a HEAD (the error code is in the x-ms-error-code header).
                return status, headers, "" if method == "HEAD" else body
            result = self._route(request, url, method)
            if fault is not None:  # reset-after: the service acted, the answer is lost
                raise requests.exceptions.ConnectionError("Connection reset by peer (fake)")
            return result

    def _fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                fault.times -= 1
                return fault
        return None

    def _fail(self, fault: Fault) -> Any:
        if fault.kind == "429":
            return _error(
                429, "TooManyRequests", "Rate limit exceeded", {"Retry-After": fault.retry_after}
            )
        if fault.kind == "503":
            return _error(503, "ServiceUnavailable", "The service is temporarily unavailable")
        if fault.kind == "403":  # e.g. storage reached by identity, no data role
            return _error(
                403,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            )
        if fault.kind == "401":
            return _error(401, "InvalidAuthenticationToken", "The access token is invalid")
        if fault.kind == "quota":
            return _error(
                400,
                "QuotaExceeded",
                "Not enough quota available for Standard_NC24ads_A100_v4 in eastus2",
            )
        if fault.kind == "reset":
            raise requests.exceptions.ConnectionError("Connection reset by peer (fake)")
        raise AssertionError(f"unknown fault {fault.kind}")

    def _route(self, request: Any, url: Any, method: str) -> Any:
        host = url.hostname or ""
        if host.endswith(".blob.core.windows.net"):
            return self._blob(request, url, method)
        if host.endswith(".inference.ml.azure.com"):
            return self._score(request, host.split(".")[0])
        if host == "management.azure.com":
            if not self.authenticated:
                return _error(401, "InvalidAuthenticationToken", "The access token is invalid")
            path = unquote(url.path)
            if path.startswith("/operations/"):
                return self._poll(path.split("/")[-1])
            if path.lower().startswith(LOCATION_PATH.lower()):
                return self._location(path[len(LOCATION_PATH) :])
            if path.lower().startswith(WS_PATH.lower()):
                body = json.loads(request.body) if request.body else None
                query = parse_qs(url.query)
                return self._workspace_resource(path, path[len(WS_PATH) :], method, body, query)
        return _error(404, "NotFound", f"the fake has no {method} {request.url}")

    # ------------------------------------------------------------------ helpers

    def _ok(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body)

    def _lro(
        self,
        status: int,
        body: Any,
        on_done: Callable[[], None],
        failure: str | None = None,
        location: bool = False,
        *,
        running: str = "InProgress",
        resource: str | None = None,
        resource_url: str | None = None,
    ) -> Any:
        op_id = uuid.uuid4().hex
        self.operations[op_id] = Operation(
            self.lro_polls, on_done, failure, running=running, resource=resource
        )
        op_url = f"{ARM}/operations/{op_id}?api-version=2023-04-01-preview"
        # The SDK's poller waits Retry-After (or its 5-30 s default when none or 0 is given).
        headers = {"Azure-AsyncOperation": op_url, "retry-after-ms": self.poll_delay_ms}
        if location:  # a DELETE's Location: where the operation's result will be
            headers["Location"] = op_url
        if resource_url:  # an endpoint's or deployment's PUT: Location is the resource
            headers["Location"] = resource_url
            headers["x-ms-async-operation-timeout"] = "PT30M"
        if body is None:
            return status, headers, ""
        return self._ok(body, status, headers)

    def _poll(self, op_id: str) -> Any:
        op = self.operations.get(op_id)
        if op is None:
            return _error(404, "NotFound", "no such operation")
        # The operation status body of the recordings: id, name, startTime, endTime,
        # percentComplete, status.
        status = {
            "id": f"{LOCATION_PATH}/{REGION}/mfeOperationsStatus/{op_id}",
            "name": op_id,
            "startTime": _now(),
            "endTime": "0001-01-01T00:00:00+00:00",
            "percentComplete": 0.0,
        }
        if op.polls_left > 0:
            op.polls_left -= 1
            return self._ok(
                {**status, "status": op.running}, headers={"retry-after-ms": self.poll_delay_ms}
            )
        self._finish(op)
        status.update(endTime=_now(), percentComplete=100.0)
        if op.failure:
            return self._ok(
                {
                    **status,
                    "status": "Failed",
                    "error": {"code": "DeploymentFailed", "message": op.failure},
                }
            )
        return self._ok({**status, "status": "Succeeded"})

    @staticmethod
    def _finish(op: Operation) -> None:
        if not op.done:
            op.done = True
            op.on_done()

    def _settle(self, rel: str) -> None:
        """Time passes for the operations holding `rel` busy: each write to a busy resource
        brings its operations one poll nearer their end (an operation nobody polls, such as
        another client's or one whose answer was lost, still ends)."""
        for op in list(self.operations.values()):
            if op.resource == rel.lower() and not op.done:
                if op.polls_left > 0:
                    op.polls_left -= 1
                else:
                    self._finish(op)

    def _busy(self, rel: str) -> str | None:
        """The provisioning state that makes the service refuse an update of `rel` (409:
        another operation on it is in progress), after `_settle`; None when it is free."""
        self._settle(rel)
        found = self._get(rel)
        state = (found or {}).get("properties", {}).get("provisioningState")
        return state if state in BUSY_STATES else None

    def begin_foreign_update(self, rel: str, *, requests: int = 2) -> None:
        """Another client's operation on `rel` (e.g. "/onlineEndpoints/phi3-chat" or its
        "/deployments/blue"): it reads as Updating, and the next `requests` updates of it are
        refused with 409 before the operation ends and it is Succeeded again."""
        resource = self._get(rel)
        assert resource is not None, rel
        resource["properties"]["provisioningState"] = "Updating"

        def done() -> None:
            resource["properties"]["provisioningState"] = "Succeeded"

        op = Operation(requests, done, running="Updating", resource=rel.lower())
        self.operations[uuid.uuid4().hex] = op

    def _arm_id(self, rel: str) -> str:
        return WS_PATH + rel

    def _store(self, rel: str, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources[rel.lower()] = resource
        return resource

    def _get(self, rel: str) -> dict[str, Any] | None:
        return self.resources.get(rel.lower())

    def _children(self, rel: str) -> list[dict[str, Any]]:
        prefix = rel.lower().rstrip("/") + "/"
        return [
            res
            for key, res in sorted(self.resources.items())
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]

    def _resource(self, rel: str, name: str, body: dict[str, Any], kind: str) -> dict[str, Any]:
        resource = copy.deepcopy(body)
        resource.update(
            id=self._arm_id(rel),
            name=name,
            type=f"Microsoft.MachineLearningServices/workspaces/{kind}",
            systemData={
                "createdAt": _now(),
                "createdBy": "fake",
                "createdByType": "User",
                "lastModifiedAt": _now(),
                "lastModifiedBy": "fake",
                "lastModifiedByType": "User",
            },
        )
        return resource

    # ------------------------------------------------------------------ the workspace

    def _add_workspace(self) -> None:
        self.workspace = {
            "id": WS_PATH,
            "name": WORKSPACE,
            "location": REGION,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "properties": {
                "friendlyName": WORKSPACE,
                "storageAccount": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
                f"/providers/Microsoft.Storage/storageAccounts/{STORAGE_ACCOUNT}",
                "discoveryUrl": f"https://{REGION}.api.azureml.ms/discovery",
                "mlFlowTrackingUri": f"azureml://{REGION}.api.azureml.ms/mlflow/v1.0{WS_PATH}",
                "provisioningState": "Succeeded",
            },
        }
        for name, container, default in (
            ("workspaceblobstore", BLOB_CONTAINER, True),
            ("workspaceartifactstore", ARTIFACT_CONTAINER, False),
        ):
            rel = f"/datastores/{name}"
            self._store(
                rel,
                {
                    "id": self._arm_id(rel),
                    "name": name,
                    "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                    "properties": {
                        "datastoreType": "AzureBlob",
                        "accountName": STORAGE_ACCOUNT,
                        "containerName": container,
                        "endpoint": "core.windows.net",
                        "protocol": "https",
                        "isDefault": default,
                        "credentials": {"credentialsType": "AccountKey"},
                    },
                },
            )

    def _location(self, rest: str) -> Any:
        parts = rest.strip("/").split("/")
        if parts[0] != REGION:
            return self._ok({"value": []})
        if parts[1] == "vmSizes":
            return self._ok(
                {
                    "value": [
                        {
                            "name": name,
                            "family": family,
                            "vCPUs": vcpus,
                            "gpus": gpus,
                            "memoryGB": 64.0,
                            "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
                        }
                        for name, (family, vcpus, gpus) in VM_SIZES.items()
                    ]
                }
            )
        if parts[1] == "usages":
            return self._ok(
                {
                    "value": [
                        {
                            "id": f"{LOCATION_PATH}/{REGION}/usages/{family}",
                            "type": "Microsoft.MachineLearningServices/totalCores/usages",
                            "unit": "Count",
                            "currentValue": used,
                            "limit": limit,
                            "name": {"value": family, "localizedValue": family},
                        }
                        for family, (used, limit) in self.quota.items()
                    ]
                }
            )
        return _error(404, "NotFound", rest)

    def _workspace_resource(
        self, full: str, rel: str, method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        parts = [p for p in rel.split("/") if p]
        if not parts:
            return self._ok(self.workspace) if method == "GET" else _error(405, "NotAllowed", rel)
        kind = parts[0]
        handler = {
            "environments": self._versioned,
            "codes": self._versioned,
            "models": self._versioned,
            "data": self._versioned,
            "computes": self._compute,
            "jobs": self._job,
            "datastores": self._datastore,
            "onlineEndpoints": self._endpoint,
        }.get(kind)
        if handler is None:
            return _error(404, "NotFound", f"the fake has no {kind}")
        return handler(rel, parts, method, body, query)

    # ------------------------------------------------------------------ versioned assets

    def _versioned(
        self, rel: str, parts: list[str], method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        kind = parts[0]
        if len(parts) == 2:  # the container
            if method == "GET":
                container = self._get(rel)
                if container is None:
                    return _error(404, "UserError", f"{kind} {parts[1]} not found")
                # The service counts every version, archived ones too (which lists hide).
                numbers = [
                    int(v["name"]) for v in self._children(f"{rel}/versions") if v["name"].isdigit()
                ]
                latest = max(numbers, default=0)
                lag, self.next_version_lag = self.next_version_lag, 0
                container = copy.deepcopy(container)
                container["properties"].update(
                    latestVersion=str(latest), nextVersion=str(latest + 1 - lag)
                )
                return self._ok(container)
            if method == "PUT":
                return self._ok(self._store(rel, self._resource(rel, parts[1], body, kind)))
        if len(parts) == 3 and parts[2] == "versions" and method == "GET":
            if kind == "codes" and query.get("hash"):  # content lookup: workspace-wide
                wanted = query["hash"][0]
                found = [
                    res
                    for key, res in sorted(self.resources.items())
                    if key.startswith("/codes/")
                    and "/versions/" in key
                    and res["properties"].get("properties", {}).get("hash_sha256") == wanted
                ]
                return self._ok({"value": found})
            versions = self._children(rel)
            if query.get("listViewType", ["ActiveOnly"])[0].lower() != "all":
                versions = [v for v in versions if not v["properties"].get("isArchived")]
            return self._ok({"value": versions})
        if len(parts) == 5 and parts[4] == "startPendingUpload" and method == "POST":
            upload = f"code-{uuid.uuid4().hex[:12]}"
            account = f"https://{STORAGE_ACCOUNT}.blob.core.windows.net"
            return self._ok(
                {
                    "blobReferenceForConsumption": {
                        "blobUri": f"{account}/{upload}",
                        "storageAccountArmId": "fake",
                        "credential": {
                            "credentialType": "SAS",
                            "sasUri": f"{account}/{upload}?sv=2025-01-05&sig=fake",
                        },
                    },
                    "pendingUploadId": uuid.uuid4().hex,
                    "pendingUploadType": "TemporaryBlobReference",
                }
            )
        if len(parts) == 4:
            name, version = parts[1], parts[3]
            existing = self._get(rel)
            if method == "GET":
                if existing is None:
                    return _error(404, "UserError", f"{kind} {name}:{version} not found")
                return self._ok(existing)
            if method == "PUT":
                return self._put_version(rel, kind, name, version, body, existing)
        return _error(405, "NotAllowed", f"{method} {rel}")

    def _put_version(
        self, rel: str, kind: str, name: str, version: str, body: Any, existing: Any
    ) -> Any:
        props = body.get("properties", {})
        if kind == "models":
            path = props.get("modelUri")
            if not path:
                return _error(400, "UserError", "modelUri is required")
            if existing is not None and existing["properties"].get("modelUri") != path:
                # The SDK recognises this exact message (ASSET_PATH_ERROR).
                return _error(
                    409, "UserError", "The specified asset path is different from the existing one"
                )
            match = re.match(r"azureml://jobs/([^/]+)/outputs/([^/]+)/paths/(.+)", path)
            if match:
                job = self.jobs.get(match.group(1))
                if job is None or job.status != "Completed":
                    return _error(400, "UserError", f"job {match.group(1)} has no outputs")
        if kind == "environments":
            if existing is not None:
                mutable = ("description", "tags", "properties", "isArchived")
                old = {k: v for k, v in existing["properties"].items() if k not in mutable}
                new = {k: v for k, v in props.items() if k not in mutable}
                old.pop("provisioningState", None)
                for filled in ("environmentType", "osType"):  # the service's, if not sent
                    if filled not in new:
                        old.pop(filled, None)
                if old != new:
                    return _error(
                        409, "UserError", f"environment {name}:{version} exists and is immutable"
                    )
            if not props.get("image") and not props.get("build"):
                return _error(400, "UserError", "an environment needs an image or a build")
        if kind == "codes":
            uri = props.get("codeUri", "")
            if not self._blob_exists_under(uri):
                return _error(400, "UserError", f"code {name}:{version}: nothing at {uri}")
        resource = self._resource(rel, version, body, f"{kind}/versions")
        if kind == "environments":
            resource["properties"]["provisioningState"] = "Succeeded"
            resource["properties"].setdefault("environmentType", "UserCreated")
            resource["properties"].setdefault("osType", "Linux")
        if kind == "models":
            resource["properties"].setdefault("provisioningState", "Succeeded")
            resource["properties"].setdefault("jobName", None)
        for key, default in (("description", None), ("tags", {}), ("properties", {})):
            resource["properties"].setdefault(key, default)
        if kind == "models" and resource["properties"].get("modelType") == "mlflow_model":
            # The service reads the flavors from the MLmodel file.
            resource["properties"].setdefault(
                "flavors", {"python_function": {"data": {"loader_module": "mlflow.transformers"}}}
            )
        if kind == "models":
            resource["properties"].setdefault("flavors", {})
        container: dict[str, Any] = {
            "description": None,
            "tags": {},
            "properties": {},
            "isArchived": False,
        }
        self._store(
            rel.rsplit("/versions/", 1)[0],
            self._resource(rel.rsplit("/versions/", 1)[0], name, {"properties": container}, kind),
        ) if self._get(rel.rsplit("/versions/", 1)[0]) is None else None
        if existing:
            return self._ok(self._store(rel, resource))
        location = f"{ARM}{self._arm_id(rel)}?api-version=2023-08-01-preview"
        return self._ok(self._store(rel, resource), 201, {"Location": location})

    # ------------------------------------------------------------------ compute

    def _compute(
        self, rel: str, parts: list[str], method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        existing = self._get(rel)
        if method == "GET":
            if existing is None:
                return _error(404, "ResourceNotFound", f"compute {parts[1]} not found")
            return self._ok(existing)
        if method == "PUT":
            props = body["properties"]
            if props.get("computeType") != "AmlCompute":
                return _error(400, "BadRequest", "only AmlCompute in this fake")
            size = props["properties"]["vmSize"]
            if size not in VM_SIZES:
                return _error(400, "BadRequest", f"VM size {size} is not offered in {REGION}")
            scale = props["properties"]["scaleSettings"]
            if int(scale.get("minNodeCount", 0)) > int(scale["maxNodeCount"]):
                return _error(400, "BadRequest", "minNodeCount exceeds maxNodeCount")
            resource = self._resource(rel, parts[1], body, "computes")
            resource["location"] = body.get("location", REGION)
            resource.setdefault("tags", {})
            resource["properties"]["provisioningState"] = "Creating"
            # What the service fills (its recorded GET): times, state, node counts.
            resource["properties"].update(
                createdOn=_now(),
                modifiedOn=_now(),
                computeLocation=resource["location"],
                resourceId=None,
                provisioningErrors=None,
                isAttachedCompute=False,
            )
            resource["properties"]["properties"].update(
                currentNodeCount=0,
                targetNodeCount=0,
                nodeStateCounts={
                    f"{state}NodeCount": 0
                    for state in ("preparing", "running", "idle", "unusable", "leaving")
                }
                | {"preemptedNodeCount": 0},
                allocationState="Steady",
                errors=None,
            )
            self._store(rel, resource)

            def done() -> None:
                resource["properties"]["provisioningState"] = "Succeeded"

            return self._lro(201, resource, done)
        return _error(405, "NotAllowed", f"{method} {rel}")

    # ------------------------------------------------------------------ datastores

    def _datastore(
        self, rel: str, parts: list[str], method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        if len(parts) == 1 and method == "GET":
            stores = self._children("/datastores")
            if query.get("isDefault") == ["true"]:
                stores = [s for s in stores if s["properties"]["isDefault"]]
            return self._ok({"value": stores})
        if len(parts) == 2 and method == "GET":
            found = self._get(rel)
            return self._ok(found) if found else _error(404, "UserError", "no such datastore")
        if len(parts) == 3 and parts[2] == "listSecrets" and method == "POST":
            key = base64.b64encode(b"fake-storage-account-key").decode()
            return self._ok({"secretsType": "AccountKey", "key": key})
        return _error(405, "NotAllowed", f"{method} {rel}")

    # ------------------------------------------------------------------ jobs

    def _job_resource(self, job: FakeJob) -> dict[str, Any]:
        resource = copy.deepcopy(job.body)
        resource["properties"]["status"] = job.status
        resource["properties"].setdefault("services", {})["Studio"] = {
            "jobServiceType": "Studio",
            "endpoint": f"https://ml.azure.com/runs/{job.name}?wsid={WS_PATH}",
        }
        return resource

    def _job(
        self, rel: str, parts: list[str], method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        if len(parts) == 1 and method == "GET":
            return self._ok({"value": [self._job_resource(j) for j in self.jobs.values()]})
        name = parts[1]
        job = self.jobs.get(name)
        if len(parts) == 2 and method == "GET":
            if job is None:
                return _error(404, "UserError", f"job {name} not found")
            self._advance(job)
            return self._ok(self._job_resource(job))
        if len(parts) == 2 and method == "PUT":
            if job is not None:  # the status is not documented: tests try 409 and 400
                return _error(self.duplicate_job_status, "UserError", f"job {name} already exists")
            problem = self._check_job(body)
            if problem:
                return _error(400, "UserError", problem)
            job = FakeJob(name, self._resource(rel, name, body, "jobs"))
            resources = job.body["properties"].setdefault("resources", {}) or {}
            resources.setdefault("shmSize", "2g")  # the service's default, as recorded
            job.body["properties"]["resources"] = resources
            job.outcome = self.job_outcomes.get(name, self.default_job_outcome)
            job.recovers_after = self.not_responding_recovers_after.get(name)
            self.jobs[name] = job
            location = f"{ARM}{self._arm_id(rel)}?api-version=2025-01-01-preview"
            return self._ok(self._job_resource(job), 201, {"Location": location})
        if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
            if job is None:
                return _error(404, "UserError", f"job {name} not found")
            if job.status in TERMINAL:
                return _error(400, "UserError", f"job {name} is already {job.status}")
            job.status = "CancelRequested"

            def done() -> None:
                job.status = "Canceled"
                self._log(job, "job canceled")

            return self._lro(202, None, done, location=True)
        return _error(405, "NotAllowed", f"{method} {rel}")

    def _check_job(self, body: dict[str, Any]) -> str | None:
        """The service's checks on a command job: every referenced thing must exist."""
        props = body.get("properties", {})
        if props.get("jobType") != "Command":
            return "only command jobs in this fake"
        if not props.get("command"):
            return "command is required"
        refs = {
            "computeId": props.get("computeId"),
            "environmentId": props.get("environmentId"),
            "codeId": props.get("codeId"),
        }
        for key, ref in refs.items():
            if not ref:
                return f"{key} is required"
            rel = ref.split(WORKSPACE, 1)[-1] if ref.lower().startswith("/subscriptions/") else None
            if rel is None or self._get(rel) is None:
                return f"{key} {ref} does not exist"
        for name, data in (props.get("inputs") or {}).items():
            uri = data.get("uri", "")
            if not self._blob_exists_under(uri):
                return f"input {name}: nothing at {uri}"
        return None

    def _advance(self, job: FakeJob) -> None:
        """One step of the job's life per GET (Paused/terminal states stay)."""
        if job.status in TERMINAL or job.status in ("Paused", "CancelRequested"):
            return
        if job.status == "NotResponding":
            if job.recovers_after is None:
                return
            if job.recovers_after > 0:
                job.recovers_after -= 1
                return
            job.status, job.outcome = "Running", "Completed"  # the heartbeat is back
            self._log(job, "heartbeat resumed")
            return
        if job.status in JOB_PROGRESSION:
            index = JOB_PROGRESSION.index(job.status)
            if index + 1 < len(JOB_PROGRESSION):
                job.status = JOB_PROGRESSION[index + 1]
                if job.status == "Preparing" and self._image_build_fails(job):
                    return
                if job.status == "Running" and self.job_runner is None:
                    self._log(job, f"fine-tuning {job.name}")
                    self._log(job, "step 1/2 loss 2.5")
                return
        if job.outcome == "Paused":
            job.status = "Paused"
            return
        job.status = job.outcome
        if job.outcome == "Completed" and self.job_runner is not None:
            if not self._run_on_compute(job):
                job.status = "Failed"
        elif job.outcome == "Completed":
            self._log(job, "step 2/2 loss 1.5")
            self._log(job, "done: model saved")
            self._write_outputs(job)
        elif job.outcome == "Failed":
            self._log(job, "Traceback (most recent call last):")
            self._log(job, "RuntimeError: CUDA out of memory (fake)")

    def _image_build_fails(self, job: FakeJob) -> bool:
        """Preparing builds the environment's image; when that build fails the job ends
        Failed there: no process ran (no user log), the build log is in the job's artifact
        folder under IMAGE_BUILD_LOG (the run's error, which names that file, is in the
        service's run history: the job resource has no error field)."""
        env = job.body["properties"].get("environmentId") or ""
        match = re.search(r"/environments/([^/]+)/versions/([^/]+)$", env)
        if match is None:
            return False
        name, version = match.groups()
        build_log = self.image_build_failures.get(f"{name}:{version}")
        if build_log is None:
            build_log = self.image_build_failures.get(name)
        if build_log is None:
            return False
        blob = f"ExperimentRun/dcid.{job.name}/{IMAGE_BUILD_LOG}"
        self.blobs[(ARTIFACT_CONTAINER, blob)] = (build_log.encode(), {})
        job.status = job.outcome = "Failed"
        return True

    def _log(self, job: FakeJob, line: str) -> None:
        """The job's user log; a job of several processes writes one per process (rank 0's
        has the lines here, the others a line each)."""
        job.log.append(line)
        props = job.body["properties"]
        processes = int((props.get("distribution") or {}).get("processCountPerInstance") or 1)
        processes *= int((props.get("resources") or {}).get("instanceCount") or 1)
        folder = f"ExperimentRun/dcid.{job.name}/user_logs"
        text = ("\n".join(job.log) + "\n").encode()
        if processes == 1:
            self.blobs[(ARTIFACT_CONTAINER, f"{folder}/std_log.txt")] = (text, {})
            return
        self.blobs[(ARTIFACT_CONTAINER, f"{folder}/std_log_process_0.txt")] = (text, {})
        for rank in range(1, processes):
            other = f"rank {rank} of {processes}\n".encode()
            self.blobs[(ARTIFACT_CONTAINER, f"{folder}/std_log_process_{rank}.txt")] = (other, {})

    def _write_outputs(self, job: FakeJob) -> None:
        output = job.body["properties"]["outputs"]["model"]
        uri = output["uri"]
        match = re.match(r"azureml://datastores/([^/]+)/paths/(.+)", uri)
        assert match, uri
        folder = match.group(2).rstrip("/")
        metrics = {
            "config_hash": job.body["properties"]["tags"].get("trainer_config_hash", "0" * 64),
            "train_loss": 1.5,
            "eval_loss": 1.6,
            "eval_loss_before": 2.6,
            "mlflow_run_id": f"run-{job.name}",
        }
        self.blobs[(BLOB_CONTAINER, f"{folder}/metrics.json")] = (json.dumps(metrics).encode(), {})
        self.blobs[(BLOB_CONTAINER, f"{folder}/mlflow_model/MLmodel")] = (b"flavors: {}\n", {})

    def _run_on_compute(self, job: FakeJob) -> bool:
        """Run the job's command with `job_runner` as a node would; whether it succeeded."""
        assert self.job_runner is not None
        props = job.body["properties"]
        with tempfile.TemporaryDirectory(prefix=f"fake-aml-{job.name}-") as tmp:
            root = Path(tmp)
            paths: dict[str, Path] = {}
            for name, data in (props.get("inputs") or {}).items():
                paths[f"inputs.{name}"] = self._download(data["uri"], root / "inputs" / name)
            outputs: dict[str, tuple[Path, tuple[str, str]]] = {}
            for name, data in (props.get("outputs") or {}).items():
                where = self._locate(data["uri"])
                assert where is not None, data["uri"]
                # rw_mount: what an earlier attempt wrote is there (checkpoints to resume from)
                folder = self._download(data["uri"], root / "outputs" / name)
                folder.mkdir(parents=True, exist_ok=True)
                paths[f"outputs.{name}"] = folder
                outputs[name] = (folder, where)
            command = re.sub(
                r"\$\{\{\s*([\w.]+)\s*\}\}",
                lambda m: shlex.quote(str(paths[m.group(1)])),
                props["command"],
            )
            printed = io.StringIO()
            failure: list[str] = []
            try:
                # A node of its own: none of the caller's context variables (e.g. Prefect's
                # run context, which would turn the job's prints into the flow's logs).
                with contextlib.redirect_stdout(printed):
                    contextvars.Context().run(self.job_runner, shlex.split(command))
            except SystemExit as exc:  # the node's process exits: what Python prints, its status
                if exc.code not in (None, 0):
                    failure = [
                        f"{exc.code}\n" if isinstance(exc.code, str) else f"exit {exc.code}\n"
                    ]
            except Exception as exc:
                failure = traceback.format_exception(exc)
            for line in printed.getvalue().splitlines() + "".join(failure).splitlines():
                self._log(job, line)
            if failure:
                return False
            for folder, (container, prefix) in outputs.values():
                for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                    blob = f"{prefix.rstrip('/')}/{file.relative_to(folder).as_posix()}"
                    self.blobs[(container, blob)] = (file.read_bytes(), {})
        return True

    def _download(self, uri: str, destination: Path) -> Path:
        """A blob (uri_file: the local file) or a folder of blobs (the local folder)."""
        where = self._locate(uri)
        assert where is not None, uri
        container, path = where
        path = path.rstrip("/")
        if (container, path) in self.blobs:
            target = destination / path.rsplit("/", 1)[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.blobs[(container, path)][0])
            return target
        for (c, blob), (data, _) in sorted(self.blobs.items()):
            if c == container and blob.startswith(path + "/"):
                target = destination / blob[len(path) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return destination

    def set_job_status(self, name: str, status: str) -> None:
        self.jobs[name].status = status

    # ------------------------------------------------------------------ endpoints

    def _endpoint_rel(self, name: str) -> str:
        return f"/onlineEndpoints/{name}"

    def resolves(self, host: str) -> bool:
        """DNS of the fake region's scoring hosts, `<endpoint>.<region>.inference.ml.azure.com`
        (preflight's `resolve`): a host resolves when an endpoint of that name exists in the
        region, in this workspace or another customer's (`taken_endpoint_names`)."""
        suffix = f".{REGION}.inference.ml.azure.com"
        if not host.lower().endswith(suffix):
            return False
        name = host.lower()[: -len(suffix)]
        if name in {n.lower() for n in self.taken_endpoint_names}:
            return True
        return any(e["name"].lower() == name for e in self._children("/onlineEndpoints"))

    def _endpoint_name_taken(self, name: str) -> Any:
        """The service's answer to creating an endpoint whose name another customer holds in
        the region (the message Azure/azureml-examples pull request 1931 quotes), or None."""
        if name.lower() not in {n.lower() for n in self.taken_endpoint_names}:
            return None
        return _error(
            400,
            "BadRequest",
            "There is already an endpoint with this name, Endpoint name needs to be unique "
            "within a region. Try some other name.",
        )

    def _deployments_of(self, endpoint: str) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self._children(f"/onlineEndpoints/{endpoint}/deployments")}

    def _endpoint(
        self, rel: str, parts: list[str], method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        if len(parts) >= 3 and parts[2] == "deployments":
            return self._deployment(rel, parts, method, body, query)
        name = parts[1]
        existing = self._get(self._endpoint_rel(name))
        if len(parts) == 3 and parts[2] == "listKeys" and method == "POST":
            if existing is None:
                return _error(404, "UserError", f"endpoint {name} not found")
            return self._ok(
                {"primaryKey": self.keys["primary"], "secondaryKey": self.keys["secondary"]}
            )
        if len(parts) != 2:
            return _error(405, "NotAllowed", f"{method} {rel}")
        if method == "GET":
            if existing is None:
                return _error(404, "UserError", f"endpoint {name} not found")
            return self._ok(existing)
        if method in ("PUT", "PATCH"):
            props = body.get("properties", {})
            if existing is None and method == "PATCH":
                return _error(404, "UserError", f"endpoint {name} not found")
            traffic = props.get("traffic")
            mirror = props.get("mirrorTraffic")
            deployments = self._deployments_of(name)
            if existing is None:
                if traffic:
                    return _error(400, "BadRequest", "a new endpoint has no deployments")
                taken = self._endpoint_name_taken(name)
                if taken is not None:
                    return taken
                resource = self._resource(rel, name, body, "onlineEndpoints")
                resource["location"] = body.get("location", REGION)
                resource.setdefault("kind", "Managed")
                for key, default in (("description", None), ("compute", None)):
                    resource["properties"].setdefault(key, default)
                resource["properties"].setdefault("publicNetworkAccess", "Enabled")
                resource["properties"].update(
                    scoringUri=f"https://{name}.{REGION}.inference.ml.azure.com/score",
                    swaggerUri=f"https://{name}.{REGION}.inference.ml.azure.com/swagger.json",
                    provisioningState="Creating",
                    traffic={},
                    mirrorTraffic={},
                )
                self._store(self._endpoint_rel(name), resource)

                def created() -> None:
                    resource["properties"]["provisioningState"] = "Succeeded"

                return self._lro(
                    201,
                    resource,
                    created,
                    running="Updating",
                    resource=self._endpoint_rel(name).lower(),
                    resource_url=f"{ARM}{self._arm_id(rel)}?api-version=2022-02-01-preview",
                )
            busy = self._busy(self._endpoint_rel(name))
            if busy:
                return _error(
                    409,
                    "Conflict",
                    f"Cannot update endpoint {name} because it is in {busy} provisioning state.",
                )
            if props.get("authMode") and props["authMode"] != existing["properties"]["authMode"]:
                return _error(400, "BadRequest", "authMode cannot change")
            new_traffic = traffic if traffic is not None else existing["properties"]["traffic"]
            new_mirror = mirror if mirror is not None else existing["properties"]["mirrorTraffic"]
            problem = traffic_problem(new_traffic, new_mirror, set(deployments))
            if problem:
                return _error(400, "BadRequest", problem)
            existing["properties"]["provisioningState"] = "Updating"

            def updated() -> None:
                # Azure: deployments not named in the map get 0 %.
                existing["properties"]["traffic"] = {
                    d: int(new_traffic.get(d, 0)) for d in self._deployments_of(name)
                }
                existing["properties"]["mirrorTraffic"] = {
                    d: int(p) for d, p in new_mirror.items() if int(p) > 0
                }
                existing["properties"]["provisioningState"] = "Succeeded"
                if body.get("tags") is not None:
                    existing["tags"] = body["tags"]

            # The recorded traffic update (a PUT of the whole endpoint) answered 201, not 200.
            return self._lro(
                201 if method == "PUT" else 200,
                existing,
                updated,
                running="Updating",
                resource=self._endpoint_rel(name).lower(),
                resource_url=f"{ARM}{self._arm_id(rel)}?api-version=2022-02-01-preview",
            )
        return _error(405, "NotAllowed", f"{method} {rel}")

    def _deployment(
        self, rel: str, parts: list[str], method: str, body: Any, query: dict[str, list[str]]
    ) -> Any:
        endpoint_name = parts[1]
        endpoint = self._get(self._endpoint_rel(endpoint_name))
        if endpoint is None:
            return _error(404, "UserError", f"endpoint {endpoint_name} not found")
        if len(parts) == 3 and method == "GET":
            return self._ok({"value": list(self._deployments_of(endpoint_name).values())})
        name = parts[3]
        drel = f"/onlineEndpoints/{endpoint_name}/deployments/{name}"
        existing = self._get(drel)
        if len(parts) == 5 and parts[4] == "getLogs" and method == "POST":
            if existing is None:
                return _error(404, "UserError", f"deployment {name} not found")
            tail = int((body or {}).get("tail") or 100)
            lines = existing.setdefault("_logs", [])[-tail:]
            return self._ok({"content": "\n".join(lines)})
        if len(parts) != 4:
            return _error(405, "NotAllowed", f"{method} {rel}")
        if method == "GET":
            if existing is None:
                return _error(404, "UserError", f"deployment {name} not found")
            return self._ok(self._public(existing))
        if method == "PUT":
            busy = self._busy(self._endpoint_rel(endpoint_name))
            if busy:  # the message azure-sdk-for-net#36961 quotes from the service
                return _error(
                    409,
                    "Conflict",
                    f"Cannot create a deployment in endpoint {endpoint_name} because it is in "
                    f"{busy} provisioning state.",
                )
            busy = self._busy(drel) if existing is not None else None
            if busy:
                return _error(
                    409,
                    "Conflict",
                    f"Cannot update deployment {name} because it is in {busy} provisioning state.",
                )
            props = body.get("properties", {})
            for key in ("model", "environmentId"):
                ref = props.get(key) or ""
                rel_ref = ref.split(WORKSPACE, 1)[-1] if ref.startswith("/subscriptions/") else ""
                if not rel_ref or self._get(rel_ref) is None:
                    return _error(400, "BadRequest", f"{key} {ref!r} does not exist")
            code = (props.get("codeConfiguration") or {}).get("codeId", "")
            if not self._get(code.split(WORKSPACE, 1)[-1]):
                return _error(400, "BadRequest", f"code {code!r} does not exist")
            if props.get("instanceType") not in VM_SIZES:
                return _error(400, "BadRequest", f"instance type {props.get('instanceType')}")
            resource = self._resource(drel, name, body, "onlineEndpoints/deployments")
            resource["location"] = body.get("location", REGION)
            resource["properties"]["provisioningState"] = (
                "Creating" if existing is None else "Updating"
            )
            resource["properties"].setdefault("scaleSettings", {"scaleType": "Default"})
            self._deployment_defaults(resource)
            resource["_logs"] = [f"{name}: pulling image", f"{name}: init() loading model"]
            self._store(drel, resource)
            failure = self.deployment_failures.get(name)

            def done() -> None:
                state = "Failed" if failure else "Succeeded"
                resource["properties"]["provisioningState"] = state
                resource["_logs"].append(failure or f"{name}: readiness probe passed")

            return self._lro(
                201 if existing is None else 200,
                self._public(resource),
                done,
                failure,
                running="Updating",
                resource=drel.lower(),
                resource_url=f"{ARM}{self._arm_id(drel)}?api-version=2022-02-01-preview",
            )
        if method == "DELETE":
            if existing is None:
                return _error(404, "UserError", f"deployment {name} not found")
            live = int(endpoint["properties"]["traffic"].get(name, 0))
            if live > 0:
                return _error(
                    400,
                    "BadRequest",
                    f"cannot delete deployment {name}: it receives {live}% of live traffic",
                )
            existing["properties"]["provisioningState"] = "Deleting"

            def deleted() -> None:
                self.resources.pop(drel.lower(), None)
                endpoint["properties"]["traffic"].pop(name, None)
                endpoint["properties"]["mirrorTraffic"].pop(name, None)

            return self._lro(
                202, None, deleted, location=True, running="Updating", resource=drel.lower()
            )
        return _error(405, "NotAllowed", f"{method} {rel}")

    @staticmethod
    def _deployment_defaults(resource: dict[str, Any]) -> None:
        """What the service fills in a deployment it was not told (its recorded GET)."""
        probe = {
            "failureThreshold": 30,
            "successThreshold": 1,
            "timeout": "PT2S",
            "period": "PT10S",
            "initialDelay": "PT10S",
        }
        defaults = {
            "description": None,
            "properties": {},
            "environmentVariables": {},
            "requestSettings": {
                "maxQueueWait": "PT0S",
                "requestTimeout": "PT5S",
                "maxConcurrentRequestsPerInstance": 1,
            },
            "modelMountPath": None,
            "appInsightsEnabled": False,
            "livenessProbe": probe,
            "readinessProbe": dict(probe),
            "egressPublicNetworkAccess": "Enabled",
            "endpointComputeType": "Managed",
        }
        for key, value in defaults.items():
            resource["properties"].setdefault(key, value)
        for key in ("livenessProbe", "readinessProbe"):  # a probe sent in part is completed
            if isinstance(resource["properties"][key], dict):
                for field_name, setting in probe.items():
                    resource["properties"][key].setdefault(field_name, setting)
        resource.setdefault("kind", "Managed")
        resource.setdefault("tags", {})
        if isinstance(resource.get("sku"), dict):
            resource["sku"].setdefault("tier", "Standard")

    @staticmethod
    def _public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if not k.startswith("_")}

    # ------------------------------------------------------------------ scoring

    def _score(self, request: Any, endpoint_name: str) -> Any:
        endpoint = self._get(self._endpoint_rel(endpoint_name))
        if endpoint is None:
            return 404, {}, "endpoint not found"
        auth = request.headers.get("Authorization", "")
        if auth not in (f"Bearer {self.keys['primary']}", f"Bearer {self.keys['secondary']}"):
            return 401, {}, json.dumps({"message": "key_auth_access_denied"})
        deployments = self._deployments_of(endpoint_name)
        direct = request.headers.get("azureml-model-deployment")
        if direct:
            if direct not in deployments:
                return 404, {}, json.dumps({"message": f"deployment {direct} not found"})
            target, how = direct, "direct"
        else:
            live = sorted((n, p) for n, p in endpoint["properties"]["traffic"].items() if p > 0)
            if not live:
                return 404, {}, json.dumps({"message": NO_ROUTE})
            names, weights = zip(*live, strict=True)
            target, how = self.rng.choices(names, weights)[0], "live"
            for mirror, pct in endpoint["properties"]["mirrorTraffic"].items():
                if self.rng.random() * 100 < pct:
                    self.scored.append((mirror, "mirror"))
        if deployments[target]["properties"]["provisioningState"] != "Succeeded":
            return 503, {}, json.dumps({"message": f"deployment {target} is not ready"})
        deployment = deployments[target]
        settings = deployment["properties"].get("requestSettings") or {}
        instances = int((deployment.get("sku") or {}).get("capacity") or 1)
        capacity = 2 * int(settings.get("maxConcurrentRequestsPerInstance") or 1) * instances
        headers = {"Content-Type": "application/json", "azureml-model-deployment": target}
        if self.pending.get(target, 0) >= capacity:
            return 429, headers, json.dumps({"message": "Too many pending requests"})
        self.scored.append((target, how))
        body = json.loads(request.body or b"null")
        scorer = self.scorers.get(target, canned_scorer(target))
        status, answer, *took = scorer(body)
        timeout = isodate.parse_duration(settings.get("requestTimeout") or "PT5S")
        if took and took[0] > timeout.total_seconds():
            return 408, headers, json.dumps({"message": "Request timed out"})
        if status != 200:  # the service wraps the container's answer: 424 + its status
            headers |= {MODEL_STATUS_HEADER: str(status), MODEL_REASON_HEADER: "model_error"}
            return MODEL_ERROR, headers, json.dumps(answer)
        return status, headers, json.dumps(answer)

    # ------------------------------------------------------------------ blob storage

    def _locate(self, uri: str) -> tuple[str, str] | None:
        """(container, path) of an azureml:// or https:// storage URI, a job output
        (`azureml://jobs/<job>/outputs/<output>/paths/<path>`) or a model version's ARM id
        (what a job's model input carries); None if not ours."""
        model = re.match(r"(?:azureml:)?/subscriptions/.+(/models/[^/]+/versions/[^/]+)$", uri)
        if model:
            found = self._get(model.group(1))
            return None if found is None else self._locate(found["properties"]["modelUri"])
        output = re.match(r"azureml://jobs/([^/]+)/outputs/([^/]+)/paths/(.*)", uri)
        if output:
            job = self.jobs.get(output.group(1))
            outputs = (job.body["properties"].get("outputs") or {}) if job else {}
            if output.group(2) not in outputs:
                return None
            where = self._locate(outputs[output.group(2)]["uri"])
            if where is None:
                return None
            return where[0], f"{where[1].rstrip('/')}/{output.group(3)}"
        match = re.match(
            r"azureml://subscriptions/[^/]+/resourcegroups/[^/]+/workspaces/[^/]+/datastores/"
            r"([^/]+)/paths/(.*)",
            uri,
            re.IGNORECASE,
        ) or re.match(r"azureml://datastores/([^/]+)/paths/(.*)", uri)
        if match:
            store = self._get(f"/datastores/{match.group(1)}")
            if store is None:
                return None
            return store["properties"]["containerName"], match.group(2)
        parsed = urlparse(uri)
        if not (parsed.hostname or "").endswith(".blob.core.windows.net"):
            return None
        container, _, path = parsed.path.lstrip("/").partition("/")
        return container, path

    def _blob_exists_under(self, uri: str) -> bool:
        """Whether an azureml:// or https:// storage URI names an uploaded blob or folder."""
        where = self._locate(uri)
        if where is None:
            return False
        container, path = where[0], where[1].rstrip("/")
        return any(
            c == container and (b == path or b.startswith(path + "/")) for c, b in self.blobs
        )

    def _blob(self, request: Any, url: Any, method: str) -> Any:
        container, _, blob = unquote(url.path).lstrip("/").partition("/")
        query = parse_qs(url.query)
        key = (container, blob)
        if query.get("comp") == ["list"]:
            prefix = query.get("prefix", [""])[0]
            names = sorted(b for c, b in self.blobs if c == container and b.startswith(prefix))
            items = "".join(
                f"<Blob><Name>{n}</Name><Properties><Content-Length>"
                f"{len(self.blobs[(container, n)][0])}</Content-Length><BlobType>BlockBlob"
                "</BlobType></Properties><Metadata /></Blob>"
                for n in names
            )
            xml = (
                '<?xml version="1.0" encoding="utf-8"?><EnumerationResults '
                f'ContainerName="{container}"><Prefix>{prefix}</Prefix><Blobs>{items}</Blobs>'
                "<NextMarker /></EnumerationResults>"
            )
            return 200, {"Content-Type": "application/xml"}, xml
        headers = {
            "ETag": '"0x8D000000000000"',
            "Last-Modified": email.utils.formatdate(usegmt=True),
            "x-ms-version": "2025-01-05",
            "x-ms-request-id": str(uuid.uuid4()),
        }
        if method == "PUT" and query.get("comp") == ["metadata"]:
            if key not in self.blobs:
                return self._blob_missing()
            metadata = {
                k[len("x-ms-meta-") :].lower(): v
                for k, v in request.headers.items()
                if k.lower().startswith("x-ms-meta-")
            }
            self.blobs[key] = (self.blobs[key][0], metadata)
            return 200, headers, ""
        if method == "PUT":
            data = request.body or b""
            if hasattr(data, "read"):
                data = data.read()
            if isinstance(data, str):
                data = data.encode()
            metadata = {
                k[len("x-ms-meta-") :].lower(): v
                for k, v in request.headers.items()
                if k.lower().startswith("x-ms-meta-")
            }
            self.blobs[key] = (bytes(data), metadata)
            md5 = base64.b64encode(hashlib.md5(bytes(data)).digest()).decode()
            return 201, {**headers, "Content-MD5": md5, "x-ms-request-server-encrypted": "true"}, ""
        if method in ("HEAD", "GET"):
            if key not in self.blobs:
                return self._blob_missing()
            data, metadata = self.blobs[key]
            meta_headers = {f"x-ms-meta-{k}": v for k, v in metadata.items()}
            common = {
                **headers,
                **meta_headers,
                "x-ms-blob-type": "BlockBlob",
                "Content-Type": "application/octet-stream",
            }
            if method == "HEAD":
                return 200, {**common, "Content-Length": str(len(data))}, ""
            range_header = request.headers.get("x-ms-range") or request.headers.get("Range")
            if range_header:
                start_text, _, end_text = range_header.split("=")[1].partition("-")
                start = int(start_text)
                end = int(end_text) if end_text else len(data) - 1
                if start >= len(data):
                    return 416, {"x-ms-error-code": "InvalidRange"}, ""
                chunk = data[start : end + 1]
                return (
                    206,
                    {
                        **common,
                        "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{len(data)}",
                        "Content-Length": str(len(chunk)),
                    },
                    chunk,
                )
            return 200, {**common, "Content-Length": str(len(data))}, data
        return 405, {}, ""

    @staticmethod
    def _blob_missing() -> Any:
        return 404, {"x-ms-error-code": "BlobNotFound"}, ""


# --------------------------------------------------------------------------- rules, scoring


def traffic_problem(
    traffic: dict[str, Any], mirror: dict[str, Any], deployments: set[str]
) -> str | None:
    """The service's traffic rules; the message of the 400 it answers, or None."""
    for label, shares in (("traffic", traffic), ("mirror traffic", mirror)):
        for name, pct in shares.items():
            if name not in deployments:
                return f"{label}: {name} is not a deployment of this endpoint"
            if not 0 <= int(pct) <= 100:
                return f"{label}: {name} has {pct}%"
    total = sum(int(p) for p in traffic.values())
    if total not in (0, 100):
        return f"live traffic must sum to 100 (or 0), got {total}"
    mirrored = {n: int(p) for n, p in mirror.items() if int(p) > 0}
    if len(mirrored) > 1:
        return "mirror traffic can go to one deployment only"
    for name, pct in mirrored.items():
        if pct > 50:
            return f"mirror traffic of {name} is {pct}%; at most 50% can be mirrored"
        if int(traffic.get(name, 0)) > 0:
            return f"cannot mirror traffic to {name}: it receives live traffic"
    return None


def canned_scorer(
    deployment: str, answer: Callable[[str], str] | None = None
) -> Callable[[Any], tuple[int, Any]]:
    """A deployment that validates requests exactly as serving/score.py does (its contract)
    and answers "Bill Gates and Paul Allen (<deployment>)" to everything, or `answer(question)`
    (the question: each text of a text request, the last message of a chat)."""

    def reply(question: str) -> str:
        return answer(question) if answer else f"Bill Gates and Paul Allen ({deployment})"

    def score(body: Any) -> tuple[int, Any]:
        try:
            request = contract.parse_request(body)
        except contract.BadRequest as exc:
            return 400, contract.error_body(str(exc))
        if isinstance(request, contract.ChatRequest):
            return 200, contract.chat_response(reply(request.messages[-1].content))
        return 200, contract.text_response(request, [reply(t) for t in request.texts])

    return score


def failing_scorer(status: int = 500, message: str = "model crashed") -> Callable[..., Any]:
    """The container answers `status` (the service passes it on as a 424)."""

    def score(body: Any) -> tuple[int, Any]:
        return status, {"error": message}

    return score


def slow_scorer(seconds: float, deployment: str = "") -> Callable[..., Any]:
    """A deployment whose model takes `seconds` per request (past the deployment's
    request timeout, the service answers 408)."""
    inner = canned_scorer(deployment)

    def score(body: Any) -> tuple[int, Any, float]:
        status, answer = inner(body)
        return status, answer, seconds

    return score


_counter = itertools.count()
