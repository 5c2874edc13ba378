"""Reliability fixtures: the tiny model as Azure lays it out, and a live local endpoint (the
real front and one real deployment server process) shared by the session's reliability tests.
Processes started here are stopped in teardown, whatever the tests did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_helpers import DEPLOYMENT, ENDPOINT, LiveEndpoint, cleanup

from backends.local.endpoint.control import LocalEndpoints
from finetune_phi.workspace import DeploymentSpec, ModelVersion, TrafficState


@pytest.fixture(scope="session")
def reliability_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """What Azure ML mounts as AZUREML_MODEL_DIR: the tiny model, saved by the trainer's own
    `save_mlflow_model`, one folder down."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    root = tmp_path_factory.mktemp("reliability-model")
    save_mlflow_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        AutoTokenizer.from_pretrained(tiny_model_dir),
        root / "tiny-phi3-mlflow",
    )
    return root


@pytest.fixture(scope="session")
def live_endpoint(
    tmp_path_factory: pytest.TempPathFactory, reliability_model_dir: Path
) -> Iterator[LiveEndpoint]:
    """Endpoint `reliability`: its front, and deployment `blue` (`python -m serving.server`
    with the tiny model) with all the traffic."""
    control = LocalEndpoints(tmp_path_factory.mktemp("reliability") / "state", grace_seconds=5.0)
    client = httpx.Client(timeout=60, trust_env=False)
    try:
        info = control.get_or_create_endpoint(ENDPOINT)
        model = ModelVersion("reliability-model", "1", source=reliability_model_dir.as_uri())
        control.create_or_update_deployment(DeploymentSpec(ENDPOINT, DEPLOYMENT, model))
        control.set_traffic(ENDPOINT, TrafficState({DEPLOYMENT: 100}, {}))
        port = control.status(ENDPOINT)["deployments"][DEPLOYMENT]["port"]
        yield LiveEndpoint(
            control=control,
            front_url=info.scoring_uri,
            key=control.get_endpoint_keys(ENDPOINT).primary,
            direct_url=f"http://127.0.0.1:{port}",
            client=client,
        )
    finally:
        client.close()
        cleanup(control)
