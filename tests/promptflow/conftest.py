"""Fixtures for the Prompt flow tests: promptflow's venv, a fine-tuned tiny model, a real local
endpoint serving it, a stand-in endpoint that records requests, and a network guard.

Processes started here are stopped in the fixtures' teardown, whatever the tests did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from pf_helpers import (
    ENDPOINT,
    TRAINED,
    UNTRAINED,
    LiveEndpoint,
    StandInEndpoint,
    TrainedModel,
    fine_tune_facts,
    install_network_guard,
    save_untrained,
    stand_in_handler,
    start_endpoint,
    stop_endpoint,
    trained_facts,
)

from finetune_phi import promptflow_bridge


@pytest.fixture(scope="session")
def pf_python() -> Path:
    """promptflow's interpreter. Missing is a failure, not a skip: `make install` builds it."""
    try:
        return promptflow_bridge.promptflow_python()
    except promptflow_bridge.PromptflowError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def trained_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The tiny Phi-3 fine-tuned on a few facts until it answers them (measured ~12 s of
    training on 2 busy cores); printed with -s for the record."""
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("pf-models") / "trained"
    hf_folder = folder.parent / "trained-hf"
    path, seconds = fine_tune_facts(tiny_model_dir, folder, trained_facts(), hf_folder)
    total = time.monotonic() - started
    print(f"\n[promptflow tests] fine-tune fixture: {seconds:.1f} s training, {total:.1f} s total")
    return TrainedModel(path, hf_folder, seconds, total)


@pytest.fixture(scope="session")
def untrained_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained(tiny_model_dir, tmp_path_factory.mktemp("pf-models") / "untrained")


@pytest.fixture(scope="session")
def live_endpoint(
    trained_model: TrainedModel, untrained_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveEndpoint]:
    """A real local endpoint (front + two `serving.server` processes) on loopback."""
    state = tmp_path_factory.mktemp("pf-endpoint") / "state"
    endpoint = start_endpoint(
        state, ENDPOINT, {TRAINED: trained_model.path, UNTRAINED: untrained_model}
    )
    try:
        yield endpoint
    finally:
        stop_endpoint(endpoint.control)


@pytest.fixture
def network_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every promptflow child started during the test refuses and records any connection or
    name lookup off this machine. Returns the log; the test asserts it stayed empty."""
    folder, log = install_network_guard(tmp_path / "net-guard")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.setenv("FINETUNE_PHI_NET_GUARD_LOG", str(log))
    return log


@pytest.fixture
def stand_in() -> Iterator[StandInEndpoint]:
    endpoint = StandInEndpoint(url="", key="stand-in-key-5f1c9a")
    server = ThreadingHTTPServer(("127.0.0.1", 0), stand_in_handler(endpoint))
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/score"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
