"""The workspace interfaces: what the pipeline needs from a backend, local or Azure ML.

Three protocols, one per part a stage actually uses: `TrainingJobs` (the training environment,
compute and jobs), `ModelRegistry` (versions, tags, aliases) and `OnlineEndpoints` (endpoint,
deployments, traffic, scoring). A `Workspace` is the three together plus its `kind`. Two
backends implement them: `backends.local` (processes, MLflow on sqlite, a local endpoint on
loopback) and `backends.azure` (azure-ai-ml SDK v2), each part by a class of its own, so there
is no forwarding layer. Tasks only ever talk to these protocols, so the flow is the same on
both; each backend owns its defaults (which environment and compute a job runs on).

Names follow Azure ML where it has one: job statuses are Azure's strings, an endpoint has
deployments, `traffic` maps deployment name -> percent of live requests, `mirror_traffic` maps
one deployment -> percent of requests copied to it (responses discarded), and the header
`azureml-model-deployment` sends a request to one deployment directly.

The value types here are plain frozen dataclasses: no backend object crosses this boundary.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from finetune_phi.errors import FinetunePhiError
from finetune_phi.serving_plan import ServingPlan
from trainer.config import Hyperparameters, RunOptions

# The header that targets one deployment, bypassing the traffic map and mirroring (Azure's).
DEPLOYMENT_HEADER = "azureml-model-deployment"

CHAMPION = "champion"  # registry alias of the model serving live traffic
CHALLENGER = "challenger"  # registry alias of the model being rolled out


class JobStatus(StrEnum):
    """Azure ML's job statuses (the strings `ml_client.jobs.get(name).status` returns)."""

    NOT_STARTED = "NotStarted"
    STARTING = "Starting"
    PROVISIONING = "Provisioning"
    PREPARING = "Preparing"
    QUEUED = "Queued"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    CANCEL_REQUESTED = "CancelRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"
    NOT_RESPONDING = "NotResponding"
    PAUSED = "Paused"
    UNKNOWN = "Unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


# NotResponding (no heartbeat lately) is not final: the service can bring a job back to
# Running. Backends decide how long to wait for it (Azure: `not_responding_timeout_seconds`).
TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})


class WorkspaceError(FinetunePhiError, RuntimeError):
    """A backend operation failed. `transient` says whether retrying the same call may help
    (a timeout, a 429/503, a connection reset) as opposed to a bad request or a missing thing.
    Task retries are decided by this flag only (see `is_transient`)."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status  # the HTTP status behind it, when there was one


# HTTP statuses worth retrying as they are, from any client: the request timed out (408), the
# service is throttling (429), or it failed on its side (5xx).
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: the one classification every task's retry condition uses.

    Backends raise WorkspaceError with `transient` decided where they know the cause (the local
    endpoint by HTTP status, the Azure backend from azure-core's exception types). The libraries
    that reach a hub (datasets and transformers through huggingface_hub, which uses httpx; older
    ones requests) raise their own types: a dropped connection or a timeout is transient, and
    so is an HTTP error whose response says 408, 429 or 5xx. Anything else (a bug, a validation
    error, a failed job, a 401 or 404 from the hub) is permanent: retrying only wastes time.
    """
    if isinstance(exc, WorkspaceError):
        return exc.transient
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, _transport_errors()):
        return True
    # requests.HTTPError, httpx.HTTPStatusError and huggingface_hub's HfHubHTTPError all carry
    # the response they failed on.
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and status in TRANSIENT_HTTP_STATUSES


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP clients the stack uses, where installed
    (httpx; httpx2, which huggingface_hub 2 uses; requests)."""
    import importlib

    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    errors: list[type[BaseException]] = [RequestsConnectionError, Timeout]
    for client in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


# What an Azure ML online endpoint answers besides the container's own 200 (the service's
# "Troubleshoot online endpoint deployment and scoring" page, status code table):
#   404  the URL is wrong, or "No valid deployments to route to": no deployment has traffic
#   408  the model ran longer than the deployment's `request_timeout_ms`
#   424  the model's container answered non-200 (its status and reason in the two headers
#        below, its body passed through), or its response was over 1.5 MB
#   429  over 100 requests/s, or more pending requests than the deployment takes
#        (2 x max_concurrent_requests_per_instance x instance_count)
MODEL_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_REASON_HEADER = "ms-azureml-model-error-reason"
MODEL_ERROR = 424


def scoring_error(
    endpoint: str,
    status: int,
    body: str,
    *,
    deployment: str | None = None,
    served_by: str = "",
    model_status: int | None = None,
    model_reason: str = "",
) -> WorkspaceError:
    """The error for a scoring call that answered `status` >= 400, the same on every backend:
    NotFound for 404, transient for 408, 429 and 5xx, the body (first 2,000 characters) in
    the message. `deployment` is the one a direct call targeted; `served_by` the one that
    answered, when the endpoint says.

    A 424 is Azure's wrapper of the container's own answer (`model_status`, from the
    `ms-azureml-model-error-statuscode` header): transient when the container's status is
    (a 500 or 503 of a model that is loading or overloaded), permanent when it is a 4xx (the
    request itself) or unknown (e.g. a response too large)."""
    target = f"deployment {deployment!r} of " if deployment else ""
    by = f" (deployment {served_by!r})" if served_by else ""
    said = ""
    if status == MODEL_ERROR:
        inner = f"{model_status}" if model_status is not None else "an unknown status"
        said = f" (the model's container answered {inner}" + (
            f", {model_reason})" if model_reason else ")"
        )
    elif status == 408:
        said = " (the model took longer than the deployment's request timeout)"
    elif status == 429:
        said = " (throttled: too many requests, or more pending than the deployment takes)"
    message = f"{target}endpoint {endpoint!r} answered {status}{by}{said}: {body[:2000]}"
    if status == 404:
        if "no valid deployments" in body.lower():
            message += " (no deployment of the endpoint receives traffic)"
        return NotFound(message, status=status)
    if status == MODEL_ERROR:
        transient = model_status is not None and (
            model_status >= 500 or model_status in TRANSIENT_HTTP_STATUSES
        )
    else:
        transient = status >= 500 or status in TRANSIENT_HTTP_STATUSES
    return WorkspaceError(message, transient=transient, status=status)


class NotFound(WorkspaceError):
    """The named job, model, endpoint or deployment does not exist."""


class RuleViolation(WorkspaceError):
    """A request the backend refuses by Azure's rules (traffic not summing to 100, mirroring to
    a live deployment, deleting a deployment that has traffic...). Never transient."""


# --------------------------------------------------------------------------- environments, compute


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    image: str  # base image (Azure); ignored locally, where the project's venv is the environment
    conda_file: str | None = None  # path to a conda YAML (environments/training.conda.yml)
    description: str = ""


@dataclass(frozen=True)
class EnvironmentRef:
    name: str
    version: str


@dataclass(frozen=True)
class ComputeSpec:
    name: str
    size: str  # VM size (Azure); informational locally
    min_instances: int = 0
    max_instances: int = 1
    idle_seconds_before_scale_down: int = 1800


@dataclass(frozen=True)
class ComputeRef:
    name: str
    state: str  # Azure's provisioning state, e.g. "Succeeded"; "Local" for this machine


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    source: str  # where the registry keeps the files (artifact URI / azureml path)
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


# --------------------------------------------------------------------------- training jobs


@dataclass(frozen=True)
class EvaluationSpec:
    """What the quality gate measures a model on, in a job on the training compute
    (`serving.evaluate`): the first `max_conversations` of the held-out file and, when the
    data has them, greedy answers to `questions`. `key` names the question asked (the
    dataset's sha256, the settings, the questions): a model's evaluation with the same key is
    reused, never measured twice (`finetune_phi.evaluation.evaluation_spec` computes it)."""

    test_file: str
    dataset_sha256: str
    max_conversations: int
    key: str
    questions: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingJobSpec:
    """A fine-tuning job, independent of where it runs.

    Each backend turns it into its own command (local: a YAML config for `trainer.fine_tune`;
    Azure: a command job whose inputs are uploaded and whose flags carry the hyperparameters).
    `name` is deterministic (`finetune_phi.lineage.training_job_name`), which is what makes
    submitting idempotent: a job of that name is found, not started again.
    """

    name: str
    experiment: str
    base_model: str  # hub id, or a local folder (local backend only)
    train_file: str
    eval_file: str
    hyperparameters: Hyperparameters
    run_options: RunOptions = field(default_factory=RunOptions)
    environment: EnvironmentRef | None = None
    compute: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    display_name: str | None = None
    # The gate's evaluation of the trained model, as the job's second step on the same
    # compute (None: the job only trains; the gate then runs an evaluation job).
    evaluation: EvaluationSpec | None = None


@dataclass(frozen=True)
class EvaluationJobSpec:
    """A job that measures a registered model version (`model`) as `evaluation` says, on the
    training compute. `name` is a function of the version and the evaluation's key
    (`finetune_phi.evaluation.evaluation_job_name`), so a champion measured once on a dataset
    is found again, not measured again. `model_location` is where the job reads the version's
    files (`ModelRegistry.model_location`): nothing is downloaded to the caller."""

    name: str
    experiment: str
    model: ModelVersion
    model_location: str
    evaluation: EvaluationSpec
    environment: EnvironmentRef | None = None
    compute: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRecord:
    name: str
    status: JobStatus
    tags: Mapping[str, str] = field(default_factory=dict)
    # Where the trained MLflow model is once the job completed (a folder, or an azureml:// URI).
    model_uri: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the trainer's metrics.json
    studio_url: str | None = None  # Azure ML studio link; the job folder locally
    error: str | None = None  # why it failed, when it did
    # The job's evaluation.json (`serving.evaluate`), once written: a training job's second
    # step, or an evaluation job's result. None when there is none.
    evaluation: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    scoring_uri: str
    auth_mode: str = "key"
    provisioning_state: str = "Succeeded"


@dataclass(frozen=True)
class EndpointKeys:
    primary: str
    secondary: str

    def __repr__(self) -> str:  # keys never end up in logs by accident
        return "EndpointKeys(primary=***, secondary=***)"


@dataclass(frozen=True)
class DeploymentSpec:
    endpoint: str
    name: str  # a colour in blue-green rollouts: "blue" / "green"
    model: ModelVersion
    instance_type: str = "local"
    instance_count: int = 1
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    # The serving plan (dtype, request timeout, concurrency, probe delays, how long to wait
    # for readiness), derived from the model's size and the SKU; None: the backend's defaults.
    serving: ServingPlan | None = None


@dataclass(frozen=True)
class DeploymentInfo:
    endpoint: str
    name: str
    model: str  # "<name>:<version>"
    provisioning_state: str  # Azure's: Creating, Updating, Succeeded, Failed, Deleting
    ready: bool = False


@dataclass(frozen=True)
class TrafficState:
    traffic: Mapping[str, int] = field(default_factory=dict)
    mirror_traffic: Mapping[str, int] = field(default_factory=dict)

    @property
    def live(self) -> dict[str, int]:
        """Deployments that receive live traffic (percent > 0)."""
        return {name: pct for name, pct in self.traffic.items() if pct > 0}


# --------------------------------------------------------------------------- the protocols


@runtime_checkable
class TrainingJobs(Protocol):
    """Where and how a fine-tuning job runs. Methods block until the backend has done what
    they say. The environment and compute are the backend's own (its settings say which)."""

    def ensure_environment(self) -> EnvironmentRef:
        """The training environment, created if missing (idempotent)."""
        ...

    def ensure_compute(self) -> ComputeRef:
        """The training compute, created if missing (an existing one is used as it is)."""
        ...

    def submit_job(self, spec: TrainingJobSpec) -> JobRecord:
        """Start the job, or return the existing one of the same name (running or finished)."""
        ...

    def submit_evaluation_job(self, spec: EvaluationJobSpec) -> JobRecord:
        """Start a job measuring a registered model (on the training compute), or return the
        existing one of the same name; its record carries `evaluation` once completed."""
        ...

    def get_job(self, name: str) -> JobRecord: ...
    def stream_job_logs(self, name: str, *, follow: bool = True) -> Iterator[str]: ...
    def cancel_job(self, name: str) -> JobRecord: ...
    def find_jobs(self, tags: Mapping[str, str]) -> list[JobRecord]: ...


@runtime_checkable
class ModelRegistry(Protocol):
    """Registered model versions, their tags and aliases (`champion`, `challenger`)."""

    def register_model(
        self, name: str, model_uri: str, *, tags: Mapping[str, str], job_name: str | None = None
    ) -> ModelVersion:
        """Register once per job: a version tagged with the same job_name is returned as is."""
        ...

    def get_model(self, name: str, version: str) -> ModelVersion: ...
    def get_model_by_alias(self, name: str, alias: str) -> ModelVersion | None: ...
    def list_model_versions(self, name: str) -> list[ModelVersion]: ...
    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Add or overwrite tags of one version (the gate records its decision this way)."""
        ...

    def model_location(self, name: str, version: str) -> str:
        """Where a job of this backend reads the version's files as its input, without
        copying them anywhere: the registry's folder locally, the model asset on Azure."""
        ...

    def download_model(self, name: str, version: str, destination: Path) -> Path:
        """A local folder holding the version's files: downloaded under `destination`, or
        the registry's own folder when it is already local (nothing is copied then)."""
        ...

    def set_model_alias(self, name: str, alias: str, version: str) -> None: ...
    def delete_model_alias(self, name: str, alias: str) -> None: ...


@runtime_checkable
class OnlineEndpoints(Protocol):
    """An online endpoint, its deployments, traffic and scoring. Deployment calls block until
    provisioned (not necessarily ready to score)."""

    def get_or_create_endpoint(self, name: str) -> EndpointInfo: ...
    def get_endpoint_keys(self, name: str) -> EndpointKeys: ...

    def create_or_update_deployment(self, spec: DeploymentSpec) -> DeploymentInfo: ...
    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo | None: ...
    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]: ...
    def delete_deployment(self, endpoint: str, name: str) -> None: ...
    def get_deployment_logs(self, endpoint: str, name: str, *, lines: int = 100) -> str: ...

    def get_traffic(self, endpoint: str) -> TrafficState: ...
    def set_traffic(self, endpoint: str, state: TrafficState) -> TrafficState:
        """Apply the traffic and mirror maps together; returns what the backend now reports."""
        ...

    def invoke(
        self,
        endpoint: str,
        request: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout: float = 60.0,
    ) -> Any:
        """POST the request to the endpoint (or to one deployment via the header); the
        decoded JSON response. Raises WorkspaceError with the status and body on HTTP errors
        (see `scoring_error`)."""
        ...


@runtime_checkable
class Workspace(Protocol):
    """A backend: its three parts. Stages take the part they need (`workspace.jobs`, ...)."""

    kind: str  # "local" | "azure"

    @property
    def jobs(self) -> TrainingJobs: ...
    @property
    def registry(self) -> ModelRegistry: ...
    @property
    def endpoints(self) -> OnlineEndpoints: ...
