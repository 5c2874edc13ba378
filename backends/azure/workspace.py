"""`AzureWorkspace`: the workspace protocols on Azure ML, through azure-ai-ml SDK v2: three
parts (`AzureJobs`, `AzureRegistry`, `AzureEndpoints`) on one `AzureConnection`.

What maps to what (the local backend's behaviour, Azure's way):
- environments: versioned by a hash of image + conda spec (`entities.build_environment`);
  get first, create only a version that does not exist;
- compute: get-or-create an `AmlCompute` cluster that scales to zero;
- jobs: a command job running `python -m trainer.fine_tune` then `python -m serving.evaluate`
  (the gate's measurement), or an evaluation job (`serving.evaluate` on a registered model);
  Azure job names are unique forever, so attempt 1 of logical job `ft-...` is named `ft-...`
  and a resubmission after a Failed/Canceled attempt is `ft-...-r2` (same output folder: it
  resumes from the checkpoints); a NotResponding attempt (not final: it may come back) is
  waited for up to `not_responding_timeout_seconds`, and canceled before a new attempt
  starts. A name that is running or completed, looked up before creating and after a failed
  create, is re-attached to (a retried submission whose first PUT did reach Azure finds it);
- logs: the job's `user_logs/std_log.txt` (rank 0's `std_log_process_0.txt` for several
  processes) in the workspace artifact store, read from the offset already seen, while the
  status is polled with backoff; a log that cannot be read is said once, not fatal; a job
  that failed before it ran (its environment's image build failed) is reported with the
  build log's last lines (`azureml-logs/20_image_build_log.txt`);
- registry: workspace models; a version is tagged `job_name` (registration is idempotent per
  job). The workspace registry has no MLflow-style aliases, so an alias is a version tag
  `alias.<name>=true`: setting it tags the new version first, then untags the others (an
  interrupted move leaves two tagged versions; the highest wins and the next move cleans up);
- endpoints: get-or-create a key-auth managed online endpoint, never deleted here; deployments
  run serving/score.py on the inference environment; traffic and mirror traffic are set in one
  endpoint update and read back; an update the service refuses with 409 because the endpoint
  or deployment is busy (Creating/Updating) is tried again a bounded number of times; `invoke`
  POSTs to the scoring URI with the key and, for a direct call, the
  `azureml-model-deployment` header.

Every Azure call goes through `errors.azure_call`, which turns failures into WorkspaceError /
NotFound / RuleViolation with `transient` decided in one place.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

from backends.azure import entities
from backends.azure.errors import AzureWorkspaceError, azure_call, status_of
from finetune_phi.settings import REPO_ROOT, AzureBackendSettings
from finetune_phi.workspace import (
    DEPLOYMENT_HEADER,
    MODEL_REASON_HEADER,
    MODEL_STATUS_HEADER,
    ComputeRef,
    DeploymentInfo,
    DeploymentSpec,
    EndpointInfo,
    EndpointKeys,
    EnvironmentRef,
    EnvironmentSpec,
    EvaluationJobSpec,
    EvaluationSpec,
    JobRecord,
    JobStatus,
    ModelVersion,
    NotFound,
    RuleViolation,
    TrafficState,
    TrainingJobSpec,
    WorkspaceError,
    scoring_error,
)

log = logging.getLogger(__name__)

ALIAS_TAG_PREFIX = "alias."
ARTIFACT_DATASTORE = "workspaceartifactstore"  # where Azure keeps jobs' user_logs/
# A job's log (Azure's user_logs): one file, or one per process of a distributed job.
USER_LOGS = ("user_logs/std_log.txt", "user_logs/std_log_process_0.txt")
_PAST_THE_END = 2**62  # an offset that reads nothing: whether a blob exists, cheaply
# Attempts in these states are over and failed: a new submission starts the next attempt.
# A NotResponding attempt is canceled first (it may come back, and would then write the same
# output folder as the new attempt).
RETRYABLE_JOB_STATES = frozenset({JobStatus.FAILED, JobStatus.CANCELED})
# The stream stops on these too: a Paused job waits for a person, not for the pipeline.
STREAM_STOP_STATES = frozenset({*RETRYABLE_JOB_STATES, JobStatus.COMPLETED, JobStatus.PAUSED})
KEY_CACHE_SECONDS = 300.0
LOG_TAIL_LINES = 30
MAX_POLL_ERRORS = 5  # consecutive transient errors a log stream tolerates
# Where the service leaves a job's image build log (the file the run's error names when the
# build fails: "Image build failed. For more details, check log file azureml-logs/...").
IMAGE_BUILD_LOG = "azureml-logs/20_image_build_log.txt"
# An endpoint or deployment being changed by another operation (Creating/Updating) refuses
# updates with 409 until that ends: traffic and deployment updates wait and try again, this
# many times at most, waiting BUSY_WAIT_SECONDS x attempt (60 s at most) in between.
BUSY_RETRIES = 8
BUSY_WAIT_SECONDS = 15.0

_T = TypeVar("_T")


def _alias_tag(alias: str) -> str:
    return f"{ALIAS_TAG_PREFIX}{alias}"


def _text(value: Any) -> str:
    """An SDK enum or string as Azure's plain string ("Succeeded", not ProvisioningState...)."""
    return str(getattr(value, "value", value) or "")


def _job_status(raw: str | None) -> JobStatus:
    try:
        return JobStatus(raw or "Unknown")
    except ValueError:
        return JobStatus.UNKNOWN


class AzureConnection:
    """What the three parts share: the settings, the credential, one `MLClient`, the HTTP
    session for scoring, and reading blobs from the workspace's datastores. Everything is
    built on first use, so a dry run or `--help` never needs Azure.

    Args:
        settings: the profile's `backend` section (subscription, resource group, workspace...).
        credential: an azure-core token credential; default `DefaultAzureCredential()` (so
            `az login`, managed identity and AZURE_* variables all work).
        ml_client: an `MLClient` to use as is (tests, notebooks); built from the above if None.
        repo_root: where trainer/, serving/ and environments/ are.
        client_kwargs: passed to `MLClient` (e.g. azure-core `retry_total`, `transport`).
        sleep: how the job poller waits (tests pass a fake clock).
        http: the requests session `invoke` uses for scoring calls.
    """

    def __init__(
        self,
        settings: AzureBackendSettings,
        *,
        credential: Any = None,
        ml_client: Any = None,
        repo_root: Path = REPO_ROOT,
        client_kwargs: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        http: requests.Session | None = None,
        code_staging_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.repo_root = Path(repo_root)
        self._credential = credential
        self._ml_client = ml_client
        self._client_kwargs = dict(client_kwargs or {})
        self._sleep = sleep
        self._http = http
        self._code_staging_dir = code_staging_dir

    def __repr__(self) -> str:
        s = self.settings
        return f"AzureConnection({s.subscription_id}/{s.resource_group}/{s.workspace})"

    @property
    def credential(self) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    @property
    def ml_client(self) -> Any:
        """The MLClient, built on first use (so a dry run or `--help` never needs Azure)."""
        if self._ml_client is None:
            from azure.ai.ml import MLClient

            s = self.settings
            missing = [
                f"FINETUNE_PHI__BACKEND__{key.upper()}"
                for key in ("subscription_id", "resource_group", "workspace")
                if not getattr(s, key)
            ]
            if missing:
                raise WorkspaceError(
                    "the azure profile does not say which workspace to use: set "
                    + ", ".join(missing)
                )
            self._ml_client = MLClient(
                self.credential,
                s.subscription_id,
                s.resource_group,
                s.workspace,
                show_progress=False,
                **self._client_kwargs,
            )
        return self._ml_client

    @property
    def http(self) -> requests.Session:
        if self._http is None:
            self._http = requests.Session()
        return self._http

    def _stage(self, *packages: str) -> Path:
        return entities.stage_code(
            packages, repo_root=self.repo_root, staging_root=self._code_staging_dir
        )

    def _container(self, datastore: str) -> Any:
        """A blob ContainerClient for a datastore, through the SDK's public datastore API:
        its key or SAS when the datastore keeps one, else this connection's credential (an
        identity-based datastore: the caller then needs a storage data role, docs/azure.md)."""
        from azure.storage.blob import ContainerClient

        found = self.ml_client.datastores.get(datastore, include_secrets=True)
        secret = getattr(found, "credentials", None)
        credential = (
            getattr(secret, "account_key", None) or getattr(secret, "sas_token", None)
        ) or self.credential
        protocol = getattr(found, "protocol", None) or "https"
        endpoint = getattr(found, "endpoint", None) or "core.windows.net"
        account_url = f"{protocol}://{found.account_name}.blob.{endpoint}"
        return ContainerClient(account_url, found.container_name, credential=credential)

    def _datastore_blob(self, datastore: str, blob: str, offset: int = 0) -> bytes | None:
        """Bytes of `blob` from `offset` in a datastore's container; None if it is not there."""
        try:
            with azure_call(f"read {datastore}/{blob}"):
                client = self._container(datastore).get_blob_client(blob)
                size = client.get_blob_properties().size
                if offset >= size:
                    return b""
                data: bytes = client.download_blob(offset=offset).readall()
                return data
        except NotFound:
            return None

    def ensure_environment(self, spec: EnvironmentSpec) -> EnvironmentRef:
        """The version named by the spec's content hash; created only if it does not exist."""
        if spec.conda_file is None:
            raise WorkspaceError(f"environment {spec.name}: a conda_file is required on Azure")
        env = entities.build_environment(
            spec.name, spec.image, Path(spec.conda_file), spec.description
        )
        ops = self.ml_client.environments
        try:
            with azure_call(f"get environment {env.name}:{env.version}"):
                found = ops.get(env.name, env.version)
            return EnvironmentRef(found.name, str(found.version))
        except NotFound:
            pass
        with azure_call(f"create environment {env.name}:{env.version}"):
            created = ops.create_or_update(env)
        log.info("created environment %s:%s", created.name, created.version)
        return EnvironmentRef(created.name, str(created.version))


class _AzurePart:
    """One part of the workspace, on a shared connection."""

    def __init__(self, connection: AzureConnection) -> None:
        self.connection = connection

    @property
    def settings(self) -> AzureBackendSettings:
        return self.connection.settings

    @property
    def repo_root(self) -> Path:
        return self.connection.repo_root

    @property
    def ml_client(self) -> Any:
        return self.connection.ml_client

    @property
    def http(self) -> requests.Session:
        return self.connection.http

    def _sleep(self, seconds: float) -> None:
        self.connection._sleep(seconds)

    def _stage(self, *packages: str) -> Path:
        return self.connection._stage(*packages)

    def _datastore_blob(self, datastore: str, blob: str, offset: int = 0) -> bytes | None:
        return self.connection._datastore_blob(datastore, blob, offset)


class AzureJobs(_AzurePart):
    """Training jobs: environment, compute cluster, command jobs and their logs."""

    def training_environment_spec(self) -> EnvironmentSpec:
        s = self.settings
        return EnvironmentSpec(
            s.training_environment,
            s.training_image,
            str(self.repo_root / s.training_conda_file),
            "finetune-phi training: trainer/fine_tune.py",
        )

    def ensure_environment(self) -> EnvironmentRef:
        """The training environment the profile names, created if that version is missing."""
        return self.connection.ensure_environment(self.training_environment_spec())

    def ensure_compute(self) -> ComputeRef:
        """Get the cluster, or create it (min nodes 0: nothing is billed while idle). An
        existing cluster is used as it is: resizing a shared cluster is a person's decision."""
        spec = entities.training_compute_spec(self.settings)
        ops = self.ml_client.compute
        try:
            with azure_call(f"get compute {spec.name}"):
                found = ops.get(spec.name)
            return ComputeRef(found.name, _text(found.provisioning_state))
        except NotFound:
            pass
        with azure_call(f"create compute {spec.name} ({spec.size})"):
            created = ops.begin_create_or_update(
                entities.build_compute(spec, self.settings)
            ).result()
        return ComputeRef(created.name, _text(created.provisioning_state))

    def _studio_url(self, job: Any) -> str | None:
        services = getattr(job, "services", None) or {}
        studio = services.get("Studio")
        endpoint = getattr(studio, "endpoint", None)
        if endpoint:
            return str(endpoint)
        s = self.settings
        return (
            f"https://ml.azure.com/runs/{job.name}?wsid=/subscriptions/{s.subscription_id}"
            f"/resourcegroups/{s.resource_group}/workspaces/{s.workspace}"
        )

    def _get_raw_job(self, name: str) -> Any | None:
        try:
            with azure_call(f"get job {name}"):
                return self.ml_client.jobs.get(name)
        except NotFound:
            return None

    def _record(self, job: Any, *, with_details: bool = True) -> JobRecord:
        status = _job_status(job.status)
        tags = {str(k): str(v) for k, v in (job.tags or {}).items()}
        studio = self._studio_url(job)
        model_uri = metrics = error = evaluation = None
        logical = tags.get(entities.JOB_NAME_TAG, job.name)
        evaluates = tags.get(entities.JOB_KIND_TAG) == "evaluation"
        if status is JobStatus.COMPLETED:
            output = entities.EVALUATION_OUTPUT if evaluates else entities.MODEL_OUTPUT
            if not evaluates:
                model_uri = entities.model_uri(job.name)
            if with_details:
                if not evaluates:
                    metrics = self._read_output_json(logical, output, entities.METRICS_FILE)
                evaluation = self._read_output_json(logical, output, entities.EVALUATION_FILE)
        elif status in RETRYABLE_JOB_STATES | {JobStatus.PAUSED, JobStatus.NOT_RESPONDING}:
            tail = self._log_tail(job.name) if with_details else ""
            verb = "is" if status is JobStatus.NOT_RESPONDING else "ended"
            error = f"job {job.name} {verb} {status.value}; see {studio}" + (
                f"\nlast log lines:\n{tail}" if tail else ""
            )
            failed_early = status is JobStatus.FAILED and with_details and not tail
            build = self._image_build_failure(job) if failed_early else None
            if build:
                what, build_tail = build
                error = (
                    f"job {job.name} ended Failed before it ran: {what}; see {studio}\n"
                    f"last build log lines:\n{build_tail}"
                )
        return JobRecord(
            name=job.name,
            status=status,
            tags=tags,
            model_uri=model_uri,
            metrics=metrics or {},
            studio_url=studio,
            error=error,
            evaluation=evaluation,
        )

    def submit_job(self, spec: TrainingJobSpec) -> JobRecord:
        """Start the job, or re-attach to the attempt that is running or completed."""

        def build(name: str, attempt: int, environment: EnvironmentRef, compute: str) -> Any:
            return entities.build_job(
                spec,
                job_name=name,
                attempt=attempt,
                environment=environment,
                compute=compute,
                code=self._stage(*entities.TRAINING_JOB_PACKAGES),
                settings=self.settings,
                questions_file=self._questions(spec.evaluation),
            )

        return self._submit(spec.name, spec.environment, spec.compute, build)

    def submit_evaluation_job(self, spec: EvaluationJobSpec) -> JobRecord:
        """Measure a registered model on the training cluster, or re-attach to the job of
        the same name (a champion measured on this data before: its evaluation is reused)."""

        def build(name: str, attempt: int, environment: EnvironmentRef, compute: str) -> Any:
            return entities.build_evaluation_job(
                spec,
                job_name=name,
                attempt=attempt,
                environment=environment,
                compute=compute,
                code=self._stage(entities.SERVING_PACKAGE),
                questions_file=self._questions(spec.evaluation),
            )

        return self._submit(spec.name, spec.environment, spec.compute, build)

    def _questions(self, evaluation: EvaluationSpec | None) -> Path | None:
        if evaluation is None or not evaluation.questions:
            return None
        return entities.stage_questions(
            evaluation.questions, staging_root=self.connection._code_staging_dir
        )

    def _submit(
        self,
        logical_name: str,
        environment_ref: EnvironmentRef | None,
        compute_name: str | None,
        build: Callable[[str, int, EnvironmentRef, str], Any],
    ) -> JobRecord:
        """Submit attempt n of a logical job (n: one past the last failed attempt), or
        re-attach to the attempt that is running or completed."""
        attempt = 1
        while True:
            name = entities.attempt_name(logical_name, attempt)
            existing = self._get_raw_job(name)
            if existing is None:
                break
            status = _job_status(existing.status)
            if status is JobStatus.NOT_RESPONDING:
                # One writer per output folder: this attempt is stopped before the next.
                log.warning("job %s is NotResponding: canceling it before a new attempt", name)
                status = self._cancel_and_wait(name)
            if status not in RETRYABLE_JOB_STATES:
                log.info("job %s exists (%s): re-attaching", name, status.value)
                return self._record(existing)
            attempt += 1
            if attempt > entities.MAX_ATTEMPTS:
                raise WorkspaceError(
                    f"job {logical_name}: {entities.MAX_ATTEMPTS} attempts failed; see "
                    f"{self._studio_url(existing)}"
                )
        environment = environment_ref or self.ensure_environment()
        compute = compute_name or self.ensure_compute().name
        job = build(name, attempt, environment, compute)
        try:
            with azure_call(f"submit job {name}"):
                created = self.ml_client.jobs.create_or_update(job)
        except AzureWorkspaceError:
            # The job may exist all the same: the service acted and its answer was lost, or
            # another submission of the same name got there first (whatever status the
            # service refuses a duplicate name with). The name decides: attach when found.
            found = self._get_raw_job(name)
            if found is None:
                raise
            log.info("job %s exists after a failed submission: re-attaching", name)
            return self._record(found)
        return self._record(created)

    def get_job(self, name: str) -> JobRecord:
        job = self._get_raw_job(name)
        if job is None:
            raise NotFound(f"no Azure ML job named {name!r}")
        return self._record(job)

    def _read_output_json(self, logical_name: str, output: str, file: str) -> dict[str, Any] | None:
        """A JSON file the job wrote to its output folder; None when it is not there."""
        import json

        data = self._datastore_blob(
            entities.DATASTORE, f"{entities.output_folder(logical_name, output)}/{file}"
        )
        if not data:
            return None
        result: dict[str, Any] = json.loads(data)
        return result

    def _log_blob(self, name: str) -> str | None:
        """The job's user log: `std_log.txt`, or rank 0's `std_log_process_0.txt` when the
        job runs several processes (each writes its own); None while neither exists."""
        for log_file in USER_LOGS:
            blob = f"ExperimentRun/dcid.{name}/{log_file}"
            if self._datastore_blob(ARTIFACT_DATASTORE, blob, offset=_PAST_THE_END) is not None:
                return blob
        return None

    def _log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        try:
            blob = self._log_blob(name)
            data = self._datastore_blob(ARTIFACT_DATASTORE, blob) if blob else None
        except WorkspaceError:
            return ""
        text = (data or b"").decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _image_build_failure(self, job: Any) -> tuple[str, str] | None:
        """What to say, and the build log's last lines, when a failed job never ran because
        its environment's image could not be built: no user log, and the build log in its
        artifact folder (a job that ran has a user log, whether or not a build log is there
        too). None otherwise."""
        blob = f"ExperimentRun/dcid.{job.name}/{IMAGE_BUILD_LOG}"
        try:
            data = self._datastore_blob(ARTIFACT_DATASTORE, blob)
        except WorkspaceError:
            return None
        if data is None:
            return None
        lines = data.decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        environment = getattr(job, "environment", None) or "of the job"
        return (
            f"the image of environment {environment} could not be built (its conda/pip "
            f"spec is the usual cause); build log: {ARTIFACT_DATASTORE}/{blob}",
            "\n".join(lines),
        )

    def stream_job_logs(self, name: str, *, follow: bool = True) -> Iterator[str]:
        """The job's log lines, then (with `follow`) new ones as they come, until the job
        reaches a terminal status (or Paused). Status changes are reported as lines too.

        `jobs.stream` is not used: it raises only for Failed and hides the other endings.
        Polling backs off from 5 s to `job_poll_seconds` while the log is quiet.

        The log is a nice-to-have, the status is not: a log that cannot be read (a 403 when
        the storage account is reached by identity and the user has no data role on it) is
        said once, and the job is followed by its status alone, as it keeps running.
        """
        interval_max = self.settings.job_poll_seconds
        interval = min(5.0, interval_max)
        position, pending, last_status, errors = 0, "", None, 0
        silent = 0.0  # seconds waited while the job is NotResponding
        blob: str | None = None
        log_readable = True
        while True:
            try:
                job = self._get_raw_job(name)
                if job is None:
                    raise NotFound(f"no Azure ML job named {name!r}")
                status = _job_status(job.status)
                errors = 0
            except WorkspaceError as exc:
                if not exc.transient or errors >= MAX_POLL_ERRORS:
                    raise
                errors += 1
                log.warning("reading job %s: %s (retrying)", name, exc)
                self._sleep(interval)
                continue
            chunk = None
            if log_readable:
                try:
                    blob = blob or self._log_blob(name)
                    if blob is not None:
                        chunk = self._datastore_blob(ARTIFACT_DATASTORE, blob, position)
                except WorkspaceError as exc:
                    if not exc.transient:
                        log_readable = False
                        yield (
                            f"[azure] job {name}: its log cannot be read ({exc}); following "
                            f"its status only; the log is in the studio: {self._studio_url(job)}"
                        )
            if status != last_status:
                yield f"[azure] job {name}: {status.value}" + (
                    " (no heartbeat; the service may bring it back: waiting up to "
                    f"{self.settings.not_responding_timeout_seconds:.0f} s)"
                    if status is JobStatus.NOT_RESPONDING
                    else ""
                )
                last_status = status
            silent = silent if status is JobStatus.NOT_RESPONDING else 0.0
            if chunk:
                position += len(chunk)
                pending += chunk.decode(errors="replace")
                *lines, pending = pending.split("\n")
                yield from lines
                interval = min(5.0, interval_max)
            else:
                interval = min(interval * 1.5, interval_max)
            given_up = silent >= self.settings.not_responding_timeout_seconds
            if given_up:
                yield (
                    f"[azure] job {name}: NotResponding for {silent:.0f} s: stopped waiting; "
                    "the next run cancels it and resumes from its checkpoint"
                )
            if not follow or status in STREAM_STOP_STATES or given_up:
                if pending:
                    yield pending
                return
            self._sleep(interval)
            if status is JobStatus.NOT_RESPONDING:
                silent += interval

    def _cancel_and_wait(self, name: str, polls: int = 60) -> JobStatus:
        """Cancel a job and wait (polling) until the service says it is over; its status."""
        with azure_call(f"cancel job {name}"):
            self.ml_client.jobs.begin_cancel(name).result()
        for _ in range(polls):
            job = self._get_raw_job(name)
            status = _job_status(job.status) if job is not None else JobStatus.CANCELED
            if status.is_terminal:
                return status
            self._sleep(min(5.0, self.settings.job_poll_seconds))
        raise WorkspaceError(
            f"job {name} was canceled but has not stopped; a new attempt would share its "
            "output folder: try again later",
            transient=True,
        )

    def cancel_job(self, name: str) -> JobRecord:
        job = self._get_raw_job(name)
        if job is None:
            raise NotFound(f"no Azure ML job named {name!r}")
        if not _job_status(job.status).is_terminal:
            with azure_call(f"cancel job {name}"):
                self.ml_client.jobs.begin_cancel(name).result()
        return self.get_job(name)

    def find_jobs(self, tags: Mapping[str, str]) -> list[JobRecord]:
        with azure_call("list jobs"):
            jobs = list(self.ml_client.jobs.list())
        return [
            self._record(job)
            for job in sorted(jobs, key=lambda j: j.name)
            if all((job.tags or {}).get(k) == v for k, v in tags.items())
        ]


class AzureRegistry(_AzurePart):
    """The workspace's model registry; aliases are version tags `alias.<name>=true`."""

    @staticmethod
    def _model_version(model: Any) -> ModelVersion:
        tags = {str(k): str(v) for k, v in (model.tags or {}).items()}
        aliases = sorted(
            key[len(ALIAS_TAG_PREFIX) :]
            for key, value in tags.items()
            if key.startswith(ALIAS_TAG_PREFIX) and value == "true"
        )
        plain = {k: v for k, v in tags.items() if not k.startswith(ALIAS_TAG_PREFIX)}
        return ModelVersion(
            name=model.name,
            version=str(model.version),
            source=str(model.path),
            tags=plain,
            aliases=tuple(aliases),
        )

    def _raw_versions(self, name: str) -> list[Any]:
        try:
            with azure_call(f"list versions of model {name}"):
                found = list(self.ml_client.models.list(name=name))
        except NotFound:
            return []
        return sorted(found, key=lambda m: (len(str(m.version)), str(m.version)))

    def register_model(
        self, name: str, model_uri: str, *, tags: Mapping[str, str], job_name: str | None = None
    ) -> ModelVersion:
        """Register `model_uri` (a job output) as a new version, once per job.

        The service numbers the version (the SDK reads the model container's `nextVersion`,
        which counts archived versions too, unlike a listing). When another registration
        takes that number first, the service refuses the path change (409; the SDK raises
        it as AssetPathException): look again, the other one may have been this job's."""
        for _ in range(3):
            if job_name is not None:
                for model in self._raw_versions(name):
                    if (model.tags or {}).get(entities.JOB_NAME_TAG) == job_name:
                        return self._model_version(model)
            all_tags = {**tags, **({entities.JOB_NAME_TAG: job_name} if job_name else {})}
            model = entities.build_model(name, None, model_uri, all_tags)
            try:
                with azure_call(f"register model {name}"):
                    created = self.ml_client.models.create_or_update(model)
                return self._model_version(created)
            except AzureWorkspaceError as exc:
                if exc.status != 409:  # 409: that version was just taken; look again
                    raise
        raise WorkspaceError(f"register model {name}: versions kept changing; try again")

    def _raw_model(self, name: str, version: str) -> Any:
        with azure_call(f"get model {name}:{version}"):
            return self.ml_client.models.get(name=name, version=version)

    def get_model(self, name: str, version: str) -> ModelVersion:
        return self._model_version(self._raw_model(name, version))

    def get_model_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        tagged = [
            m for m in self._raw_versions(name) if (m.tags or {}).get(_alias_tag(alias)) == "true"
        ]
        return self._model_version(tagged[-1]) if tagged else None

    def list_model_versions(self, name: str) -> list[ModelVersion]:
        return [self._model_version(m) for m in self._raw_versions(name)]

    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Add or overwrite tags of one version (Azure allows tag updates on a version)."""
        model = self._raw_model(name, version)
        model.tags = {**(model.tags or {}), **{str(k): str(v) for k, v in tags.items()}}
        with azure_call(f"tag model {name}:{version}"):
            self.ml_client.models.create_or_update(model)

    def _datastore_uri(self, path: str) -> str:
        """A model path as an `azureml://datastores/<store>/paths/<folder>/` URI: a job output
        path is resolved through the job's output definition."""
        match = re.match(r"azureml://jobs/([^/]+)/outputs/([^/]+)/paths/(.*)", path)
        if match:
            job_name, output, sub = match.groups()
            with azure_call(f"get job {job_name}"):
                job = self.ml_client.jobs.get(job_name)
            base = str(job.outputs[output].path).rstrip("/")
            return f"{base}/{sub.strip('/')}/"
        long_form = re.match(r"azureml://subscriptions/.+?/datastores/([^/]+)/paths/(.*)", path)
        if long_form:
            return f"azureml://datastores/{long_form.group(1)}/paths/{long_form.group(2)}"
        if path.startswith("azureml://datastores/"):
            return path
        raise WorkspaceError(f"model path {path!r} is not in a datastore this backend can read")

    def model_location(self, name: str, version: str) -> str:
        """The model asset, as a job input names it (the job mounts it; nothing is copied)."""
        self._raw_model(name, version)  # NotFound for a version that is not there
        return f"azureml:{name}:{version}"

    def download_model(self, name: str, version: str, destination: Path) -> Path:
        """The version's files under `destination/<name>-<version>/` (kept: a second call with
        the MLmodel already there downloads nothing). For people and tools: the pipeline's
        own stages never download a model (the gate measures in jobs).

        `models.download` cannot be used: it parses the model's path as a datastore URI, and
        a version registered from a job output (`azureml://jobs/...`) has none; the job's
        output definition says where the files are (`_datastore_uri`)."""
        from azure.ai.ml._artifacts._artifact_utilities import download_artifact_from_aml_uri

        target = Path(destination) / f"{name}-{version}"
        if (target / "MLmodel").is_file():
            return target
        uri = self._datastore_uri(str(self._raw_model(name, version).path))
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with azure_call(f"download model {name}:{version} from {uri}"):
            download_artifact_from_aml_uri(uri, str(partial), self.ml_client.datastores)
        if not (partial / "MLmodel").is_file():
            raise NotFound(f"model {name}:{version}: no MLmodel under {uri}")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        return target

    def _retag(self, model: Any, alias: str, on: bool) -> None:
        tags = dict(model.tags or {})
        if on:
            tags[_alias_tag(alias)] = "true"
        else:
            tags.pop(_alias_tag(alias), None)
        model.tags = tags
        with azure_call(f"{'set' if on else 'clear'} {alias} on {model.name}:{model.version}"):
            self.ml_client.models.create_or_update(model)

    def set_model_alias(self, name: str, alias: str, version: str) -> None:
        target = self._raw_model(name, version)
        if (target.tags or {}).get(_alias_tag(alias)) != "true":
            self._retag(target, alias, True)
        for model in self._raw_versions(name):
            if str(model.version) != version and (model.tags or {}).get(_alias_tag(alias)):
                self._retag(model, alias, False)

    def delete_model_alias(self, name: str, alias: str) -> None:
        for model in self._raw_versions(name):
            if (model.tags or {}).get(_alias_tag(alias)):
                self._retag(model, alias, False)


class AzureEndpoints(_AzurePart):
    """A managed online endpoint: deployments, traffic, keys and scoring."""

    def __init__(self, connection: AzureConnection) -> None:
        super().__init__(connection)
        self._scoring: dict[str, tuple[str, str, float]] = {}  # endpoint -> (uri, key, when)

    def inference_environment_spec(self) -> EnvironmentSpec:
        s = self.settings
        return EnvironmentSpec(
            s.inference_environment,
            s.inference_image,
            str(self.repo_root / s.inference_conda_file),
            "finetune-phi inference: serving/score.py under azmlinfsrv",
        )

    def _raw_endpoint(self, name: str) -> Any:
        with azure_call(f"get endpoint {name}"):
            return self.ml_client.online_endpoints.get(name)

    def get_or_create_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint, created (key auth) if it does not exist. Never deleted here."""
        from backends.local.endpoint.rules import validate_name

        validate_name("endpoint", name)
        try:
            endpoint = self._raw_endpoint(name)
        except NotFound:
            with azure_call(f"create endpoint {name}"):
                endpoint = self.ml_client.online_endpoints.begin_create_or_update(
                    entities.build_endpoint(name, self.settings)
                ).result()
        if _text(endpoint.auth_mode).lower() != "key":
            raise WorkspaceError(
                f"endpoint {name} exists with auth mode {endpoint.auth_mode!r}; the pipeline "
                "uses key auth: pick another endpoint.name or change that endpoint"
            )
        return EndpointInfo(
            name=endpoint.name,
            scoring_uri=str(endpoint.scoring_uri),
            auth_mode="key",
            provisioning_state=_text(endpoint.provisioning_state),
        )

    def get_endpoint_keys(self, name: str) -> EndpointKeys:
        with azure_call(f"get keys of endpoint {name}"):
            keys = self.ml_client.online_endpoints.get_keys(name)
        return EndpointKeys(primary=keys.primary_key, secondary=keys.secondary_key)

    @staticmethod
    def _deployment_info(endpoint: str, deployment: Any) -> DeploymentInfo:
        state = _text(deployment.provisioning_state) or "Unknown"
        tags = deployment.tags or {}
        model = tags.get("model") or str(deployment.model or "")
        if model.startswith("azureml:") or "/models/" in model:  # an ARM id or azureml:n:v
            parts = model.replace("azureml:", "").rstrip("/").split("/")
            model = f"{parts[-3]}:{parts[-1]}" if "/models/" in model else parts[-1]
        return DeploymentInfo(
            endpoint=endpoint,
            name=deployment.name,
            model=model,
            provisioning_state=state,
            ready=state == "Succeeded",
        )

    def create_or_update_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        """Create or update the deployment and wait for provisioning to end. Ready means
        provisioning Succeeded: Azure only reports that once the readiness probe passed. A
        deployment or endpoint busy with another operation (409) is waited for."""
        from backends.local.endpoint.rules import validate_name

        validate_name("deployment", spec.name)
        environment = self.connection.ensure_environment(self.inference_environment_spec())
        deployment = entities.build_deployment(
            spec,
            environment=environment,
            code=self._stage(entities.SERVING_PACKAGE),
            settings=self.settings,
        )
        what = f"deploy {spec.model.name}:{spec.model.version} as {spec.endpoint}/{spec.name}"

        def put() -> Any:
            with azure_call(what, rules=True):
                return self.ml_client.online_deployments.begin_create_or_update(deployment).result()

        try:
            result = self._while_busy(what, put)
        except WorkspaceError as exc:
            if isinstance(exc, RuleViolation) or exc.transient:
                raise
            logs = self._safe_logs(spec.endpoint, spec.name)
            raise AzureWorkspaceError(
                f"{exc}" + (f"\ndeployment log tail:\n{logs}" if logs else ""),
                status=status_of(exc),
            ) from exc
        return self._deployment_info(spec.endpoint, result)

    def _while_busy(self, what: str, call: Callable[[], _T]) -> _T:
        """`call()`, tried again while the service answers 409 because the endpoint or the
        deployment is busy with another operation (Creating/Updating: a rollout from another
        run, a scale-out, a portal edit); BUSY_RETRIES tries, then a transient error."""
        for attempt in range(1, BUSY_RETRIES + 1):
            try:
                return call()
            except AzureWorkspaceError as exc:
                if exc.status != 409 or isinstance(exc, RuleViolation):
                    raise
                if attempt == BUSY_RETRIES:
                    raise AzureWorkspaceError(
                        f"{exc}; still refused after {BUSY_RETRIES} tries: another operation "
                        "on it has not ended, try again later",
                        transient=True,
                        status=409,
                        code=exc.code,
                    ) from exc
                wait = min(BUSY_WAIT_SECONDS * attempt, 60.0)
                log.warning("%s: busy (409), trying again in %.0f s: %s", what, wait, exc)
                self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _safe_logs(self, endpoint: str, name: str) -> str:
        try:
            return self.get_deployment_logs(endpoint, name, lines=LOG_TAIL_LINES)
        except WorkspaceError:
            return ""

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo | None:
        try:
            with azure_call(f"get deployment {endpoint}/{name}"):
                deployment = self.ml_client.online_deployments.get(name, endpoint)
        except NotFound:
            return None
        return self._deployment_info(endpoint, deployment)

    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        with azure_call(f"list deployments of {endpoint}"):
            found = list(self.ml_client.online_deployments.list(endpoint))
        return sorted((self._deployment_info(endpoint, d) for d in found), key=lambda d: d.name)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        """Delete a deployment without live traffic (Azure refuses otherwise: RuleViolation).
        A mirror share it has is removed first, as the local endpoint does."""
        if self.get_deployment(endpoint, name) is None:
            raise NotFound(f"endpoint {endpoint!r} has no deployment named {name!r}")
        current = self.get_traffic(endpoint)
        if current.mirror_traffic.get(name):
            mirror = {k: v for k, v in current.mirror_traffic.items() if k != name}
            self.set_traffic(endpoint, TrafficState(dict(current.traffic), mirror))
        with azure_call(f"delete deployment {endpoint}/{name}", rules=True):
            self.ml_client.online_deployments.begin_delete(name, endpoint).result()

    def get_deployment_logs(self, endpoint: str, name: str, *, lines: int = 100) -> str:
        with azure_call(f"logs of deployment {endpoint}/{name}"):
            text = self.ml_client.online_deployments.get_logs(name, endpoint, lines)
        return str(text or "")

    def get_traffic(self, endpoint: str) -> TrafficState:
        raw = self._raw_endpoint(endpoint)
        return TrafficState(
            traffic={k: int(v) for k, v in (raw.traffic or {}).items()},
            mirror_traffic={k: int(v) for k, v in (raw.mirror_traffic or {}).items() if v},
        )

    def set_traffic(self, endpoint: str, state: TrafficState) -> TrafficState:
        """Both maps in one endpoint update (Azure checks its rules: RuleViolation), then
        what Azure reports back. An endpoint busy with another operation (409) is waited
        for (`_while_busy`)."""
        what = f"set traffic of {endpoint}"

        def put() -> None:
            raw = self._raw_endpoint(endpoint)  # read again on each try: it may have changed
            raw.traffic = {k: int(v) for k, v in state.traffic.items()}
            raw.mirror_traffic = {k: int(v) for k, v in state.mirror_traffic.items() if v}
            with azure_call(what, rules=True):
                self.ml_client.online_endpoints.begin_create_or_update(raw).result()

        self._while_busy(what, put)
        return self.get_traffic(endpoint)

    def _scoring_target(self, endpoint: str, *, refresh: bool = False) -> tuple[str, str]:
        cached = self._scoring.get(endpoint)
        if cached and not refresh and time.monotonic() - cached[2] < KEY_CACHE_SECONDS:
            return cached[0], cached[1]
        uri = str(self._raw_endpoint(endpoint).scoring_uri)
        key = self.get_endpoint_keys(endpoint).primary
        self._scoring[endpoint] = (uri, key, time.monotonic())
        return uri, key

    def invoke(
        self,
        endpoint: str,
        request: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout: float = 60.0,
    ) -> Any:
        """POST `request` to the scoring URI with the primary key (one deployment with
        `deployment`, via the azureml-model-deployment header). Keys are cached a few minutes
        and fetched again once on a 401 (a rotated key)."""
        target = f"deployment {deployment!r} of " if deployment else ""
        for attempt in (1, 2):
            uri, key = self._scoring_target(endpoint, refresh=attempt == 2)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            if deployment is not None:
                headers[DEPLOYMENT_HEADER] = deployment
            with azure_call(f"{target}endpoint {endpoint!r} at {uri}"):
                response = self.http.post(uri, json=dict(request), headers=headers, timeout=timeout)
            if response.status_code == 401 and attempt == 1:
                continue
            break
        if response.status_code >= 400:
            model_status = response.headers.get(MODEL_STATUS_HEADER, "")
            raise scoring_error(
                endpoint,
                response.status_code,
                response.text,
                deployment=deployment,
                served_by=response.headers.get(DEPLOYMENT_HEADER, ""),
                model_status=int(model_status) if model_status.isdigit() else None,
                model_reason=response.headers.get(MODEL_REASON_HEADER, ""),
            )
        try:
            return response.json()
        except ValueError as exc:
            raise WorkspaceError(
                f"{target}endpoint {endpoint!r} answered {response.status_code} with a body that "
                f"is not JSON: {response.text[:200]!r}"
            ) from exc


class AzureWorkspace:
    """The workspace protocols against one Azure ML workspace (see the module doc): three
    parts on one connection. Arguments: as `AzureConnection`'s."""

    kind = "azure"

    def __init__(self, settings: AzureBackendSettings, **connection: Any) -> None:
        self.connection = AzureConnection(settings, **connection)
        self.jobs = AzureJobs(self.connection)
        self.registry = AzureRegistry(self.connection)
        self.endpoints = AzureEndpoints(self.connection)

    @property
    def settings(self) -> AzureBackendSettings:
        return self.connection.settings

    def __repr__(self) -> str:
        s = self.settings
        return f"AzureWorkspace({s.subscription_id}/{s.resource_group}/{s.workspace})"
