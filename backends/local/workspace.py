"""`LocalWorkspace`: the Workspace protocol on one machine.

Jobs are processes (`jobs.py`), the registry is MLflow on sqlite (`registry.py`), the online
endpoint is a front process on loopback routing to one server process per deployment
(`endpoint/`). Everything lives under the profile's state folder, so deleting it resets all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.local.jobs import LocalJobs
from backends.local.registry import LocalRegistry
from backends.workspace import (
    ComputeRef,
    ComputeSpec,
    DeploymentInfo,
    DeploymentSpec,
    EndpointInfo,
    EndpointKeys,
    EnvironmentRef,
    EnvironmentSpec,
    JobRecord,
    ModelVersion,
    TrafficState,
    TrainingJobSpec,
)
from finetune_phi.state import StateLayout

if TYPE_CHECKING:
    from backends.local.endpoint.control import LocalEndpoints

LOCAL_ENVIRONMENT_VERSION = "venv"  # the project's own .venv is the environment here


class LocalWorkspace:
    kind = "local"

    def __init__(self, state_dir: Path) -> None:
        self.layout = StateLayout(Path(state_dir))
        self.jobs = LocalJobs(self.layout)
        self.registry = LocalRegistry(self.layout)

    @cached_property
    def endpoints(self) -> LocalEndpoints:
        from backends.local.endpoint.control import LocalEndpoints

        return LocalEndpoints(self.layout.root)

    # environments and compute: this machine and this venv; recorded, nothing to provision
    def ensure_environment(self, spec: EnvironmentSpec) -> EnvironmentRef:
        return EnvironmentRef(spec.name, LOCAL_ENVIRONMENT_VERSION)

    def ensure_compute(self, spec: ComputeSpec) -> ComputeRef:
        return ComputeRef(spec.name, "Local")

    # jobs
    def submit_job(self, spec: TrainingJobSpec) -> JobRecord:
        return self.jobs.submit_job(spec)

    def get_job(self, name: str) -> JobRecord:
        return self.jobs.get_job(name)

    def stream_job_logs(self, name: str, *, follow: bool = True) -> Iterator[str]:
        return self.jobs.stream_job_logs(name, follow=follow)

    def cancel_job(self, name: str) -> JobRecord:
        return self.jobs.cancel_job(name)

    def find_jobs(self, tags: Mapping[str, str]) -> list[JobRecord]:
        return self.jobs.find_jobs(tags)

    # models
    def register_model(
        self, name: str, model_uri: str, *, tags: Mapping[str, str], job_name: str | None = None
    ) -> ModelVersion:
        return self.registry.register_model(name, model_uri, tags=tags, job_name=job_name)

    def get_model(self, name: str, version: str) -> ModelVersion:
        return self.registry.get_model(name, version)

    def get_model_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        return self.registry.get_model_by_alias(name, alias)

    def list_model_versions(self, name: str) -> list[ModelVersion]:
        return self.registry.list_model_versions(name)

    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        self.registry.set_model_tags(name, version, tags)

    def download_model(self, name: str, version: str, destination: Path) -> Path:
        return self.registry.download_model(name, version, destination)

    def set_model_alias(self, name: str, alias: str, version: str) -> None:
        self.registry.set_model_alias(name, alias, version)

    def delete_model_alias(self, name: str, alias: str) -> None:
        self.registry.delete_model_alias(name, alias)

    # endpoints, deployments, traffic, scoring
    def get_or_create_endpoint(self, name: str) -> EndpointInfo:
        return self.endpoints.get_or_create_endpoint(name)

    def get_endpoint_keys(self, name: str) -> EndpointKeys:
        return self.endpoints.get_endpoint_keys(name)

    def create_or_update_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        return self.endpoints.create_or_update_deployment(spec)

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo | None:
        return self.endpoints.get_deployment(endpoint, name)

    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        return self.endpoints.list_deployments(endpoint)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        self.endpoints.delete_deployment(endpoint, name)

    def get_deployment_logs(self, endpoint: str, name: str, *, lines: int = 100) -> str:
        return self.endpoints.get_deployment_logs(endpoint, name, lines=lines)

    def get_traffic(self, endpoint: str) -> TrafficState:
        return self.endpoints.get_traffic(endpoint)

    def set_traffic(self, endpoint: str, state: TrafficState) -> TrafficState:
        return self.endpoints.set_traffic(endpoint, state)

    def invoke(
        self,
        endpoint: str,
        request: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout: float = 60.0,
    ) -> Any:
        return self.endpoints.invoke(endpoint, request, deployment=deployment, timeout=timeout)
