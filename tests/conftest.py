"""Shared fixtures: a small tiny-Phi-3 and small chat data, built once per test session.

Tests run the real libraries offline: nothing may reach a hub or send telemetry, and every
cache lands in the session's temporary folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.telemetry import telemetry_off

_CACHE = Path(tempfile.mkdtemp(prefix="finetune-phi-tests-"))
# Set before transformers/datasets/mlflow are imported by any test module.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HOME=str(_CACHE / "hf"),
    HF_DATASETS_CACHE=str(_CACHE / "hf-datasets"),
    TOKENIZERS_PARALLELISM="false",
)
telemetry_off()  # the project's own policy, before any library under test is imported


@pytest.fixture(scope="session")
def small_conversations() -> list[dict]:
    from finetune_phi.chat_data.synthetic import generate_conversations

    return generate_conversations(160, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, small_conversations) -> Path:
    from finetune_phi.tiny_model import SMALL_SPEC, build_tiny_phi3

    return build_tiny_phi3(
        tmp_path_factory.mktemp("tiny") / "tiny-phi3", small_conversations, SMALL_SPEC
    )


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory: pytest.TempPathFactory, small_conversations) -> dict[str, Path]:
    """train.jsonl / test.jsonl from the small synthetic set (80/20, seeded)."""
    from finetune_phi.chat_data.split import split_records

    folder = tmp_path_factory.mktemp("chat")
    train, test = split_records(small_conversations, 0.2, seed=0)
    files = {}
    for name, rows in (("train", train), ("test", test)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files[name] = path
    return files


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API (sqlite in a temp folder) for tests that run flows.

    Start-up measured ~35 s here, over the harness's default 30 s timeout (COMPAT.md).
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def endpoint_cleanup(tmp_path: Path) -> Iterator[None]:
    """Deletes the endpoints a test's flow left serving under `tmp_path/state` (that is the
    flow's point; a test must not leave them)."""
    yield
    from endpoint_cleanup import cleanup_endpoints

    from backends.local.endpoint.control import LocalEndpoints

    cleanup_endpoints(LocalEndpoints(tmp_path / "state"), delete=True)
