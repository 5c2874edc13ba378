"""Helpers for the crash recovery and security tests (imported by the test modules; never
`from conftest`): the tiny model as an MLflow model, process and socket facts, cleanup, a
secret scanner, and a rollout child process to kill.

Run as a script, this module is that child:

    python tests/reliability/recovery_helpers.py rollout STATE_DIR ENDPOINT MODEL VERSION TRIGGER

It rolls MODEL:VERSION out with `execute_rollout`, printing each event; when an event contains
TRIGGER it prints KILL_ME and waits, so the test can SIGKILL it at exactly that point.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
KILL_ME = "KILL_ME"
GOOD_REQUEST: dict[str, Any] = {
    "input_data": ["Who founded Microsoft?"],
    "params": {"max_new_tokens": 2},
}

_saved: dict[Path, Path] = {}


def tiny_mlflow_model(tiny_model_dir: Path) -> Path:
    """The tiny model saved by the trainer's own `save_mlflow_model`, once per test session
    (next to the session's tiny model folder)."""
    if tiny_model_dir not in _saved:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainer.fine_tune import save_mlflow_model

        destination = tiny_model_dir.parent / "recovery-mlflow-model"
        if not (destination / "MLmodel").is_file():
            save_mlflow_model(
                AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                AutoTokenizer.from_pretrained(tiny_model_dir),
                destination,
            )
        _saved[tiny_model_dir] = destination
    return _saved[tiny_model_dir]


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition()` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_refuses(port: int) -> bool:
    """Whether a TCP connect to loopback `port` is refused (nothing listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket the process listens on."""
    connections = psutil.Process(pid).net_connections(kind="inet")
    return sorted((c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN)


def server_processes(marker: str) -> dict[int, list[str]]:
    """Running deployment servers (`serving.server`) whose command line contains `marker`
    (e.g. a test's own model folder): pid -> command line."""
    found = {}
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "serving.server" in cmdline and any(marker in part for part in cmdline):
            found[process.info["pid"]] = cmdline
    return found


def persisted_server_pids(state_dir: Path, endpoint: str) -> set[int]:
    """The server pids the endpoint's persisted state records (current and pending)."""
    from backends.local.endpoint.state import EndpointStore

    record = EndpointStore(state_dir, endpoint).read()
    pids = set()
    for dep in record.deployments.values():
        if dep.pid:
            pids.add(dep.pid)
        if dep.pending is not None:
            pids.add(dep.pending.pid)
    return pids


def stop_endpoints(control: Any) -> None:
    """Delete every endpoint of this control plane and anything it started."""
    # Imported here: this file also runs as a child script, where tests/ is not on sys.path.
    from endpoint_cleanup import cleanup_endpoints

    cleanup_endpoints(control, delete=True)


def kill_servers(marker: str) -> None:
    """SIGKILL what `server_processes(marker)` finds (a test's leftovers, if any)."""
    for pid in server_processes(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- secrets

# What a credential looks like in a text file: a key-ish name assigned a long opaque value,
# a private key block, an Azure connection-string key, a bearer token.
SECRET_PATTERNS = [
    re.compile(
        r"(?i)\b[\w-]*(?:api[_-]?key|secret|password|passwd|token|access[_-]?key)[\w-]*"
        r"""["']?\s*[:=]\s*["']([A-Za-z0-9+/_\-]{24,}={0,2})["']"""
    ),
    re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |)PRIVATE KEY-----"),
    re.compile(r"(?i)AccountKey=[A-Za-z0-9+/]{40,}={0,2}"),
    re.compile(r"(?i)\bBearer\s+([A-Za-z0-9_\-]{32,})\b"),
    re.compile(r"\b(?:ghp|gho|ghs)_[A-Za-z0-9]{36}\b|\bAKIA[0-9A-Z]{16}\b|\bsk-[A-Za-z0-9]{32,}"),
    # The local endpoint's own key format: secrets.token_urlsafe(32), 43 characters, mixed.
    re.compile(
        r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[a-z])(?=[A-Za-z0-9_\-]*[A-Z])"
        r"(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{43}(?![A-Za-z0-9_\-])"
    ),
]


def files_under(root: Path) -> Iterator[Path]:
    """Every regular file under `root` (symlinks not followed)."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def files_holding(paths: Iterable[Path], secrets: Iterable[str]) -> dict[Path, list[int]]:
    """The files whose bytes contain any of `secrets`: path -> indexes of the secrets found.
    Raw bytes, so binary files (sqlite databases, pickles) are searched too."""
    needles = [secret.encode() for secret in secrets if secret]
    found: dict[Path, list[int]] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue  # removed meanwhile (a temporary file)
        hits = [i for i, needle in enumerate(needles) if needle in data]
        if hits:
            found[path] = hits
    return found


def git_files(repo: Path) -> list[Path]:
    """Tracked files, plus the untracked ones git does not ignore (what a commit may take)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    return [repo / name for name in listed.decode().split("\0") if name]


# --------------------------------------------------------------------------- rollout child

CHILD_SETTINGS: dict[str, Any] = {
    "traffic_steps": (10, 50, 100),
    "mirror_percent": 0,
    "requests_per_step": 1,
    "readiness_timeout_seconds": 120,
}


def rollout_command(state_dir: Path, endpoint: str, model: str, version: str, trigger: str):
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "rollout",
        str(state_dir),
        endpoint,
        model,
        version,
        trigger,
    ]


def roll_out(state_dir: Path, endpoint: str, model: str, version: str, log: Any) -> Any:
    """Plan and execute a rollout of `model:version` as the flow's task does."""
    from backends.local.workspace import LocalWorkspace
    from finetune_phi.rollout import execute_rollout, plan_rollout
    from finetune_phi.settings import RolloutSettings

    settings = RolloutSettings(**CHILD_SETTINGS)
    workspace = LocalWorkspace(state_dir)
    target = workspace.registry.get_model(model, version)
    workspace.endpoints.get_or_create_endpoint(endpoint)
    deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(endpoint)}
    plan = plan_rollout(
        workspace.endpoints.get_traffic(endpoint), deployments, f"{model}:{version}", settings
    )
    for line in plan.describe():
        log(f"plan: {line}")
    return execute_rollout(workspace, endpoint, target, plan, settings, log=log)


def _child(argv: list[str]) -> int:
    state_dir, endpoint, model, version, trigger = argv

    def log(message: str) -> None:
        print(message, flush=True)
        if trigger and trigger in message:
            print(KILL_ME, flush=True)
            time.sleep(600)  # the test kills this process here

    roll_out(Path(state_dir), endpoint, model, version, log)
    print("ROLLOUT_DONE", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "rollout":
        sys.path.insert(0, str(REPO_ROOT))
        sys.exit(_child(sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
