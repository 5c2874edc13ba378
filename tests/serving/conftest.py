"""Serving fixtures: an Azure-shaped model folder, a served deployment process, helpers.

The model is the session's tiny Phi-3 saved as an MLflow transformers model by the trainer's
own `save_mlflow_model`, placed one folder down as Azure ML lays out AZUREML_MODEL_DIR.
Processes started here are always stopped in teardown (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backends.local.endpoint.control import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL_FOLDER = "tiny-phi3-mlflow"  # the registered model's folder name under AZUREML_MODEL_DIR
READY_TIMEOUT_S = 180.0


@pytest.fixture(scope="session")
def azureml_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """What Azure ML mounts as AZUREML_MODEL_DIR: the MLflow model one folder down."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    root = tmp_path_factory.mktemp("azureml-model-dir")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    save_mlflow_model(model, tokenizer, root / MODEL_FOLDER)
    return root


@dataclass
class ServerProcess:
    """A running `python -m serving.server` and where its output goes."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    name: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the process prints its `serving <name> on <url>` line."""
        deadline = time.monotonic() + timeout
        expected = f"serving {self.name} on {self.url}"
        while expected not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no '{expected}' in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until /readiness answers 200; fails at once if it answers 500 or the process dies."""
        self.wait_listening()
        deadline = time.monotonic() + timeout
        with self.client(timeout=5) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited {self.process.returncode}:\n{self.log()}")
                status = client.get("/readiness").status_code
                if status == 200:
                    return
                if status != 503 or time.monotonic() > deadline:
                    raise AssertionError(f"readiness {status}:\n{self.log()}")
                time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, and SIGKILL if it has not exited in `timeout` seconds; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def start_server(
    model_dir: Path, log_dir: Path, *, name: str = "blue", env: dict[str, str] | None = None
) -> ServerProcess:
    """Start the deployment server on a free loopback port (not waiting for anything)."""
    port = free_port()
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.server",
                "--model-dir",
                str(model_dir),
                "--port",
                str(port),
                "--name",
                name,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return ServerProcess(process, f"http://127.0.0.1:{port}", log_path, name)


@pytest.fixture
def start_server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`start(model_dir, name=..., env=...)`: a server process that is stopped after the test,
    passed or failed."""
    started: list[ServerProcess] = []

    def start(
        model_dir: Path, *, name: str = "blue", env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = start_server(model_dir, tmp_path, name=name, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def served_deployment(
    azureml_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One deployment process serving the tiny model, shared by the end-to-end tests.

    Not waited for here: the caller waits (`wait_ready`), so the process loads its model while
    the test process does other work (two cores: half the wall time).
    """
    server = start_server(azureml_model_dir, tmp_path_factory.mktemp("server-logs"))
    try:
        yield server
    finally:
        server.stop()
