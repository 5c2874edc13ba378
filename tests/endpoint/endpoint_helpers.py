"""Helpers for the local endpoint tests: the stand-in server command, a running endpoint,
and cleanup (used by conftest.py's fixtures and by the tests for typing)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from endpoint_cleanup import cleanup_endpoints

from backends.local.endpoint.control import LocalEndpoints
from finetune_phi.workspace import DeploymentSpec, EndpointKeys, ModelVersion, TrafficState

STAND_IN = Path(__file__).with_name("stand_in_server.py")


class StandIn:
    """A `server_command` for LocalEndpoints that runs the stand-in server; `flags` adds
    per-deployment options (`--never-ready`, `--fail-score`, ...)."""

    def __init__(self) -> None:
        self.flags: dict[str, list[str]] = {}

    def __call__(self, *, model_dir: Path, port: int, name: str, host: str) -> list[str]:
        return [
            sys.executable,
            str(STAND_IN),
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--host",
            host,
            "--name",
            name,
            *self.flags.get(name, []),
        ]


def cleanup(endpoints: LocalEndpoints) -> None:
    """Stop every endpoint of this control plane and anything it started (see endpoint_cleanup)."""
    cleanup_endpoints(endpoints)


def model_version(folder: Path, version: str = "1") -> ModelVersion:
    return ModelVersion(name="stand-in-model", version=version, source=folder.as_uri())


@dataclass
class Endpoint:
    """A running endpoint and what tests need to talk to it."""

    control: LocalEndpoints
    stand_in: StandIn
    name: str
    url: str
    keys: EndpointKeys
    model_dir: Path
    client: httpx.Client

    def spec(self, deployment: str, version: str = "1") -> DeploymentSpec:
        return DeploymentSpec(self.name, deployment, model_version(self.model_dir, version))

    def post(
        self, body: object = None, *, key: str | None = "primary", **headers: str
    ) -> httpx.Response:
        """POST /score through the front; `key` is "primary", "secondary", None or a literal."""
        if key in ("primary", "secondary"):
            key = getattr(self.keys, key)
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return self.client.post(self.url, json=body if body is not None else {"q": 1}, headers=sent)

    def route(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        self.control.set_traffic(self.name, TrafficState(traffic, mirror or {}))


def start(
    control: LocalEndpoints, model_dir: Path, name: str, deployments: dict[str, list[str]]
) -> Endpoint:
    """Create the endpoint and its deployments (each with its stand-in flags)."""
    assert isinstance(control.server_command, StandIn)
    control.server_command.flags.update(deployments)
    info = control.get_or_create_endpoint(name)
    endpoint = Endpoint(
        control=control,
        stand_in=control.server_command,
        name=name,
        url=info.scoring_uri,
        keys=control.get_endpoint_keys(name),
        model_dir=model_dir,
        client=httpx.Client(timeout=30, trust_env=False),
    )
    for deployment in deployments:
        control.create_or_update_deployment(endpoint.spec(deployment))
    return endpoint
