"""The local endpoint's control plane: the endpoint part of the Workspace protocol.

`LocalEndpoints` does locally what Azure's managed online endpoints do: it starts one front
process per endpoint (`backends.local.endpoint.front`) and one server process per deployment
(`python -m serving.server`, or whatever `server_command` says), records everything in the
endpoint's state folder (`state.py`), and enforces Azure's rules (`rules.py`) before it changes
anything. Every process runs in its own session (process group), detached from the caller, so
the endpoint outlives the flow that created it and a later flow finds it again.

Lifecycle decisions (documented because Azure has no exact equivalent):
- `get_or_create_endpoint` is get-or-create for the whole endpoint: it reuses a healthy front,
  restarts a dead one on the same port (a new port only if someone else took it), and restarts
  deployment servers that died (after a reboot or `stop_endpoint`) on their recorded ports.
- `stop_endpoint` stops the front and every deployment server but keeps the state (keys,
  deployments, traffic), so `get_or_create_endpoint` brings the same endpoint back.
  `delete_endpoint` stops it and removes its folder.
- An update of a deployment starts the new server next to the old one and switches the front
  over only once the new one is ready; the old one then stops (gracefully: in-flight requests
  finish). If the new server fails, the old one keeps serving, the deployment is marked
  "Failed" with the reason, and `WorkspaceError` is raised.
- A pid in the state is trusted only if that process is alive and its command line is the one
  recorded (pids get reused).
- A deployment server that dies on its own is restarted by the front's supervisor thread
  (`supervisor.py`, through `crashed_deployments` and `restart_crashed` here), as Azure
  restarts a crashed container; the front routes live traffic around it meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psutil
import requests

from backends.local.endpoint import rules
from backends.local.endpoint.state import (
    DeploymentRecord,
    EndpointRecord,
    EndpointStore,
    KeyName,
    PendingProcess,
    list_endpoints,
)
from backends.local.processes import read_cmdline
from finetune_phi.workspace import (
    DEPLOYMENT_HEADER,
    DeploymentInfo,
    DeploymentSpec,
    EndpointInfo,
    EndpointKeys,
    NotFound,
    TrafficState,
    WorkspaceError,
    scoring_error,
)
from serving.score import DTYPE_ENV

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
FRONT_MODULE = "backends.local.endpoint.front"
SERVER_MODULE = "serving.server"
HOST = "127.0.0.1"

DEFAULT_READY_TIMEOUT = 180.0  # loading a real Phi-3 on CPU takes a while
DEFAULT_FRONT_TIMEOUT = 30.0
DEFAULT_APPLY_TIMEOUT = 10.0  # for the front to report a new revision
DEFAULT_GRACE_SECONDS = 5.0  # SIGTERM -> SIGKILL
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 30
# A restarted server that stays up this long is healthy again: its restart count starts over
# (Kubernetes resets a container's crash back-off after 10 minutes of running).
STABLE_SECONDS = 600.0
BUSY_STATES = ("Creating", "Updating", "Deleting")  # the control plane is changing it


def default_server_command(
    *, model_dir: Path, port: int, name: str, host: str = HOST, python: str = sys.executable
) -> list[str]:
    """The deployment server's command line (the project's scoring server). The one place that
    names it: tests pass their own `server_command` with the same keyword arguments."""
    return [
        python,
        "-m",
        SERVER_MODULE,
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--host",
        host,
        "--name",
        name,
    ]


def front_command(state_dir: Path, endpoint: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        FRONT_MODULE,
        "--state-dir",
        str(state_dir),
        "--endpoint",
        endpoint,
        "--port",
        str(port),
    ]


def model_dir_from_source(source: str) -> Path:
    """The local folder of a registered model: a `file://` URI or a plain path."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise WorkspaceError(f"model source {source!r} is on another host")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise WorkspaceError(
            f"model source {source!r} is not a local folder (scheme {parsed.scheme!r}); the "
            "local endpoint serves models from a file:// URI or a path"
        )
    return Path(source)


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the OS picks; the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_port_free(port: int, timeout: float = 2.0, host: str = HOST) -> bool:
    """Whether `port` is (or within `timeout` becomes) free. Right after a process is killed
    its port can stay taken for a moment by the connections it left closing."""
    deadline = time.monotonic() + timeout
    while not port_is_free(port, host):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a (possibly large) text file; "" if it does not exist."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            block, data = 8192, b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - block)
                handle.seek(start)
                data = handle.read(end - start) + data
                end = start
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


@dataclass
class _Started:
    """A server process this call started and is waiting for."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    command: list[str]
    log_file: str


class LocalEndpoints:
    """Endpoints, deployments, traffic, keys and scoring on loopback (see the module doc)."""

    def __init__(
        self,
        state_dir: Path,
        server_command: Callable[..., list[str]] = default_server_command,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        front_timeout: float = DEFAULT_FRONT_TIMEOUT,
        apply_timeout: float = DEFAULT_APPLY_TIMEOUT,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.server_command = server_command
        self.ready_timeout = ready_timeout
        self.front_timeout = front_timeout
        self.apply_timeout = apply_timeout
        self.grace_seconds = grace_seconds
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # ours to reap
        self._session: requests.Session | None = None

    def __repr__(self) -> str:
        return f"LocalEndpoints({str(self.state_dir)!r})"

    # ------------------------------------------------------------------ helpers

    def _store(self, endpoint: str) -> EndpointStore:
        return EndpointStore(self.state_dir, endpoint)

    def _existing(self, endpoint: str) -> tuple[EndpointStore, EndpointRecord]:
        store = self._store(endpoint)
        return store, store.read()

    @property
    def _http(self) -> requests.Session:
        """One keep-alive session for probes and scoring (requests, not httpx: httpx logs every
        request at INFO, and the readiness polls would flood the caller's logs)."""
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # loopback only: never through a proxy
        return self._session

    def close(self) -> None:
        """Close the HTTP client (the processes keep running: they are detached)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _spawn(
        self, command: list[str], log_path: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start `command` detached: own session and process group, output to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the caller; killable as a group
            )
        self._children[process.pid] = process
        return process

    def _alive(self, pid: int | None, command: list[str]) -> psutil.Process | None:
        """The process `pid` if it is alive and runs `command` (else the pid was reused, or it
        is not a process of ours)."""
        if not pid:
            return None
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            self._children.pop(pid, None)  # reaped: it is gone
            return None
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            # The arguments (which hold the port and the paths) must match; the interpreter's
            # path may be spelt differently (.venv/bin/python vs python3) by another caller.
            cmdline = read_cmdline(process)
            if not command or cmdline[1:] != command[1:]:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return process

    def _stop(self, pid: int | None, command: list[str]) -> None:
        """SIGTERM the process group led by `pid` (if it is ours), SIGKILL what is left after
        the grace period."""
        leader = self._alive(pid, command)
        if leader is None or pid is None:
            return
        try:
            members = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            members = [leader]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(members, timeout=self.grace_seconds)
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            for leftover in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    leftover.kill()
            psutil.wait_procs(alive, timeout=5)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(Exception):
                child.wait(timeout=1)

    def _get(self, port: int, path: str, timeout: float = 2.0) -> requests.Response | None:
        try:
            return self._http.get(f"http://{HOST}:{port}{path}", timeout=timeout)
        except requests.RequestException:
            return None

    def _front_health(self, record: EndpointRecord) -> dict[str, Any] | None:
        """The front's /health answer, if the front on the recorded port is this endpoint's."""
        response = self._get(record.port, "/health", timeout=1.0)
        if response is None or response.status_code != 200:
            return None
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            return None
        return data if data.get("endpoint") == record.name else None

    # ------------------------------------------------------------------ the front

    def _start_front(self, store: EndpointStore, record: EndpointRecord) -> None:
        """Start the front (lock held); on the recorded port if free, else on a new one."""
        for attempt in range(3):
            if attempt or not wait_port_free(record.port):
                record.port = free_port()
            command = front_command(self.state_dir, record.name, record.port)
            process = self._spawn(command, store.path(record.log_file), {})
            record.pid, record.command, record.started_at = process.pid, command, time.time()
            store.write(record)  # before the wait: a crash now still leaves the pid on record
            deadline = time.monotonic() + self.front_timeout
            while time.monotonic() < deadline:
                if self._front_health(record) is not None:
                    log.info("endpoint %s: front on port %d", record.name, record.port)
                    return
                if process.poll() is not None:
                    break
                time.sleep(POLL_SECONDS)
            self._stop(process.pid, command)
            record.pid = None
            store.write(record)
            if port_is_free(record.port):  # it failed for its own reasons, not the port
                break
        raise WorkspaceError(
            f"the front of endpoint {record.name!r} did not start; last lines of "
            f"{store.path(record.log_file)}:\n{tail(store.path(record.log_file))}",
            transient=True,
        )

    def _ensure_front(self, store: EndpointStore, record: EndpointRecord) -> None:
        """Reuse a healthy front; wait for one that is starting; restart a dead or stuck one."""
        if self._alive(record.pid, record.command) is not None:
            deadline = time.monotonic() + self.front_timeout
            while time.monotonic() < deadline:
                if self._front_health(record) is not None:
                    return
                if self._alive(record.pid, record.command) is None:
                    break
                time.sleep(POLL_SECONDS)
            log.warning(
                "endpoint %s: front pid %s is not healthy; restarting", record.name, record.pid
            )
            self._stop(record.pid, record.command)
        self._start_front(store, record)

    def _await_front(self, store: EndpointStore, revision: int) -> dict[str, Any] | None:
        """Wait until the front serves `revision` (or later); its /health. None if no front is
        running: it reads the state when it starts, so there is nothing to wait for."""
        deadline = time.monotonic() + self.apply_timeout
        while True:
            record = store.read()
            if self._alive(record.pid, record.command) is None:
                return None
            health = self._front_health(record)
            if health is not None and int(health.get("revision", -1)) >= revision:
                return health
            if time.monotonic() >= deadline:
                raise WorkspaceError(
                    f"the front of endpoint {record.name!r} did not apply revision {revision} "
                    f"within {self.apply_timeout:.0f} s",
                    transient=True,
                )
            time.sleep(POLL_SECONDS / 2)

    # ------------------------------------------------------------------ deployment processes

    def _start_server(
        self,
        store: EndpointStore,
        name: str,
        model_dir: str,
        env: Mapping[str, str],
        generation: int,
        port: int | None = None,
    ) -> _Started:
        if port is None or not wait_port_free(port):
            port = free_port()
        command = self.server_command(model_dir=Path(model_dir), port=port, name=name, host=HOST)
        log_file = store.deployment_log(name, generation)
        process = self._spawn(command, store.path(log_file), env)
        return _Started(name, process, port, command, log_file)

    def _await_ready(self, started: _Started, deadline: float) -> str | None:
        """Poll the server's /readiness until 200 (None) or a reason it will not be ready.
        The interval grows from 0.1 s to 1 s: quick for small models, and a long model load
        does not fill the server's log with probe lines."""
        began = time.monotonic()
        interval = POLL_SECONDS
        while True:
            code = started.process.poll()
            if code is not None:
                return f"the server process exited with code {code} before it was ready"
            response = self._get(started.port, "/readiness", timeout=1.0)
            if response is not None and response.status_code == 200:
                return None
            if response is not None and response.status_code == 500:
                try:
                    detail = response.json().get("error", response.text)
                except ValueError:
                    detail = response.text
                return f"the model failed to load: {detail}"
            if time.monotonic() >= deadline:
                return f"not ready after {deadline - began:.0f} s"
            time.sleep(interval)
            interval = min(1.0, interval * 1.5)

    def _failure(self, store: EndpointStore, started: _Started, reason: str) -> WorkspaceError:
        path = store.path(started.log_file)
        return WorkspaceError(
            f"deployment {started.name!r} of endpoint {store.endpoint!r} failed: {reason}; "
            f"last lines of {path}:\n{tail(path)}"
        )

    def _restart_dead_deployments(self, store: EndpointStore) -> None:
        """Bring back deployment servers that should run but do not (after `stop_endpoint` or a
        reboot), on their recorded ports when free; mark those that do not come back Failed."""
        started: list[_Started] = []
        with store.update() as record:
            for dep in record.deployments.values():
                busy = dep.provisioning_state in ("Creating", "Updating", "Deleting")
                if not dep.serving or busy or self._alive(dep.pid, dep.command):
                    continue
                dep.generation += 1
                run = self._start_server(
                    store,
                    dep.name,
                    dep.model_dir,
                    dep.environment_variables,
                    dep.generation,
                    dep.port,
                )
                dep.port, dep.pid, dep.command = run.port, run.process.pid, run.command
                dep.log_file, dep.started_at = run.log_file, time.time()
                started.append(run)
        self._settle_restarts(store, started)

    def _settle_restarts(
        self, store: EndpointStore, started: list[_Started], *, crashes_again: bool = False
    ) -> list[str]:
        """Wait for restarted servers; stop those that do not become ready and mark their
        deployments Failed (with `crashes_again`, one whose process exited is left as crashed
        instead, for the supervisor's next restart). The names that came back."""
        if not started:
            return []
        deadline = time.monotonic() + self.ready_timeout
        failures = {run.name: self._await_ready(run, deadline) for run in started}
        back = []
        with store.update() as record:
            for run in started:
                reason = failures[run.name]
                current = record.deployments.get(run.name)
                if reason is None and current is not None:
                    back.append(run.name)
                    continue
                if crashes_again and run.process.poll() is not None:
                    log.warning("endpoint %s: %s: %s", store.endpoint, run.name, reason)
                    continue
                self._stop(run.process.pid, run.command)
                if current is not None and current.pid == run.process.pid:
                    current.provisioning_state, current.pid = "Failed", None
                    current.serving = False
                    current.error = str(self._failure(store, run, reason or "removed"))
                    log.warning("endpoint %s: %s", store.endpoint, current.error)
        return back

    # ------------------------------------------------------------------ crashed servers

    def _crashed(self, dep: DeploymentRecord) -> bool:
        """The server should be running (it became ready, nobody stopped it, the control plane
        is not changing the deployment) but its process is gone."""
        return (
            dep.serving
            and dep.provisioning_state not in BUSY_STATES
            and dep.pid is not None
            and self._alive(dep.pid, dep.command) is None
        )

    def crashed_deployments(self, endpoint: str) -> dict[str, tuple[int, int]]:
        """Deployments whose server died on its own: name -> (the pid that died, restarts so
        far). Not those stopped by `stop_endpoint` (their pid is cleared). Read-only."""
        record = self._store(endpoint).read_or_none()
        if record is None:
            return {}
        return {
            dep.name: (int(dep.pid or 0), dep.restarts)
            for dep in record.deployments.values()
            if self._crashed(dep)
        }

    def restart_crashed(
        self, endpoint: str, names: Collection[str], *, max_restarts: int
    ) -> list[str]:
        """Restart the crashed servers of deployments `names` from their persisted spec: the
        recorded command (same port), the deployment's environment variables, a new log file.
        A deployment already restarted `max_restarts` times in a row (or whose port someone
        else took) is marked Failed instead, with the reason. Waits until the restarted
        servers are ready; the names that came back. One that dies again before it is ready
        stays crashed, for the next (counted) restart; one that will not load is Failed."""
        store = self._store(endpoint)
        started: list[_Started] = []
        with store.update() as record:
            for name in names:
                dep = record.deployments.get(name)
                if dep is None or not self._crashed(dep):
                    continue  # gone, changed or already restarted meanwhile
                if dep.started_at is not None and time.time() - dep.started_at > STABLE_SECONDS:
                    dep.restarts = 0
                last_log = store.path(dep.log_file) if dep.log_file else None
                why = None
                if dep.restarts >= max_restarts:
                    why = (
                        f"its server process died again after {dep.restarts} restart(s); not "
                        f"restarted again (max_restarts {max_restarts}, like Azure's "
                        "CrashLoopBackOff): fix the cause, then update the deployment"
                    )
                elif dep.port is None or not wait_port_free(dep.port):
                    why = f"its server process died and its port {dep.port} is taken"
                if why is not None:
                    dep.provisioning_state, dep.pid, dep.serving = "Failed", None, False
                    dep.error = f"deployment {name!r}: {why}; last lines of {last_log}:\n" + (
                        tail(last_log) if last_log else ""
                    )
                    log.error("endpoint %s: %s", endpoint, dep.error)
                    continue
                assert dep.port is not None  # checked above
                dep.restarts += 1
                dep.generation += 1
                log.warning(
                    "endpoint %s: the server of deployment %s (pid %s) died; restart %d of at "
                    "most %d, on port %d",
                    endpoint,
                    name,
                    dep.pid,
                    dep.restarts,
                    max_restarts,
                    dep.port,
                )
                log_file = store.deployment_log(name, dep.generation)
                process = self._spawn(dep.command, store.path(log_file), dep.environment_variables)
                dep.pid, dep.log_file, dep.started_at = process.pid, log_file, time.time()
                started.append(_Started(name, process, dep.port, list(dep.command), log_file))
        return self._settle_restarts(store, started, crashes_again=True)

    # ------------------------------------------------------------------ endpoints

    def get_or_create_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint, its front running and healthy (created, started or restarted as
        needed), its deployment servers running."""
        rules.validate_name("endpoint", name)
        store = self._store(name)
        with store.lock():
            record = store.read_or_none() or store.create(free_port())
            store.ensure_keys()
            self._ensure_front(store, record)
        self._restart_dead_deployments(store)
        return EndpointInfo(name=name, scoring_uri=store.read().scoring_uri)

    def get_endpoint_keys(self, name: str) -> EndpointKeys:
        store, _ = self._existing(name)
        return store.read_keys()

    def regenerate_key(self, name: str, which: KeyName = "primary") -> EndpointKeys:
        """Replace one key; the front rejects the old one once this returns."""
        store, _ = self._existing(name)
        with store.update() as record:
            keys = store.regenerate_key(which)
            record.key_generation += 1
        self._await_front(store, record.revision)
        return keys

    def list_endpoints(self) -> list[str]:
        return list_endpoints(self.state_dir)

    def stop_endpoint(self, name: str) -> None:
        """Stop the front and every deployment server; keep the state (keys, deployments,
        traffic), so `get_or_create_endpoint` brings the same endpoint back."""
        store, _ = self._existing(name)
        with store.update() as record:
            self._stop(record.pid, record.command)
            record.pid = None
            for dep in record.deployments.values():
                if dep.pending is not None:
                    self._stop(dep.pending.pid, dep.pending.command)
                    dep.pending = None
                self._stop(dep.pid, dep.command)
                dep.pid = None

    def delete_endpoint(self, name: str) -> None:
        """Stop everything and remove the endpoint's folder (keys and logs included)."""
        store = self._store(name)
        if store.exists():
            self.stop_endpoint(name)
        store.delete()

    def status(self, name: str) -> dict[str, Any]:
        """What a CLI shows: processes, readiness, traffic, counters. No keys, no env values."""
        store, record = self._existing(name)
        front_alive = self._alive(record.pid, record.command) is not None
        health = self._front_health(record) if front_alive else None
        metrics_response = self._get(record.port, "/metrics", timeout=1.0) if health else None
        deployments = {}
        for dep in record.deployments.values():
            alive = self._alive(dep.pid, dep.command) is not None
            deployments[dep.name] = {
                "model": dep.model,
                "model_dir": dep.model_dir,
                "provisioning_state": dep.provisioning_state,
                "port": dep.port,
                "pid": dep.pid,
                "alive": alive,
                "ready": alive and self._ready(dep),
                "log_file": str(store.path(dep.log_file)) if dep.log_file else None,
                "error": dep.error,
                "updating": dep.pending is not None,
            }
        return {
            "endpoint": name,
            "scoring_uri": record.scoring_uri,
            "revision": record.revision,
            "front": {
                "pid": record.pid,
                "port": record.port,
                "alive": front_alive,
                "healthy": health is not None,
                "serving_revision": health.get("revision") if health else None,
                "log_file": str(store.path(record.log_file)),
            },
            "traffic": dict(record.traffic),
            "mirror_traffic": dict(record.mirror_traffic),
            "deployments": deployments,
            "metrics": (
                metrics_response.json().get("deployments")
                if metrics_response is not None and metrics_response.status_code == 200
                else None
            ),
        }

    # ------------------------------------------------------------------ deployments

    def _ready(self, dep: DeploymentRecord) -> bool:
        if dep.port is None:
            return False
        response = self._get(dep.port, "/readiness")
        return response is not None and response.status_code == 200

    def _info(self, endpoint: str, dep: DeploymentRecord, *, probe: bool = True) -> DeploymentInfo:
        alive = self._alive(dep.pid, dep.command) is not None
        return DeploymentInfo(
            endpoint=endpoint,
            name=dep.name,
            model=dep.model,
            provisioning_state=dep.provisioning_state,
            ready=probe and alive and self._ready(dep),
        )

    def create_or_update_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        """Start the deployment's server and wait until it is ready ("Succeeded"). A failure
        marks it "Failed", stops the new process and raises WorkspaceError with the log tail.
        An update keeps the old server serving until the new one is ready."""
        rules.validate_name("deployment", spec.name)
        store, _ = self._existing(spec.endpoint)
        model_dir = model_dir_from_source(spec.model.source).resolve()
        if not model_dir.is_dir():
            raise WorkspaceError(
                f"model {spec.model.name}:{spec.model.version}: folder {model_dir} does not exist"
            )
        model = f"{spec.model.name}:{spec.model.version}"
        env = dict(spec.environment_variables)
        # The serving plan sizes the wait for a model to load (minutes for a 3.8B model on a
        # CPU) and chooses its dtype; without one, this control plane's defaults.
        ready_timeout = self.ready_timeout
        if spec.serving is not None:
            ready_timeout = float(spec.serving.readiness_timeout_seconds)
            env.setdefault(DTYPE_ENV, spec.serving.dtype)
        now = time.time()

        with store.update() as record:
            dep = record.deployments.get(spec.name)
            if dep is not None and dep.pending is not None:  # a previous update died midway
                self._stop(dep.pending.pid, dep.pending.command)
                dep.pending = None
            # An update next to a live server keeps it serving until the new one is ready;
            # otherwise (new, failed or stopped deployment) the new server simply takes over.
            rolling = dep is not None and self._alive(dep.pid, dep.command) is not None
            generation = dep.generation + 1 if dep is not None else 1
            run = self._start_server(store, spec.name, str(model_dir), env, generation)
            if dep is None:
                dep = record.deployments[spec.name] = DeploymentRecord(
                    name=spec.name,
                    model=model,
                    model_dir=str(model_dir),
                    provisioning_state="Creating",
                    created_at=now,
                    updated_at=now,
                )
            else:
                dep.provisioning_state = "Updating"
            if rolling:
                dep.pending = PendingProcess(
                    model=model,
                    model_dir=str(model_dir),
                    environment_variables=env,
                    generation=generation,
                    port=run.port,
                    pid=run.process.pid,
                    command=run.command,
                    log_file=run.log_file,
                    started_at=now,
                )
            else:
                dep.model, dep.model_dir, dep.environment_variables = model, str(model_dir), env
                dep.port, dep.pid, dep.command = run.port, run.process.pid, run.command
                dep.log_file, dep.started_at, dep.generation = run.log_file, now, generation
                dep.serving = False
            dep.updated_at, dep.error = now, None

        reason = self._await_ready(run, time.monotonic() + ready_timeout)

        replaced: tuple[int | None, list[str]] | None = None
        with store.update() as record:
            dep = record.deployments.get(spec.name)
            pending = dep.pending if dep is not None else None
            ours = pending is not None and pending.pid == run.process.pid
            if dep is None:
                reason = reason or "it was deleted while starting"
            elif reason is None:
                if pending is not None and ours:  # switch the front over to the new server
                    replaced = (dep.pid, dep.command)
                    dep.port, dep.pid, dep.command = pending.port, pending.pid, pending.command
                    dep.log_file, dep.started_at = pending.log_file, pending.started_at
                    dep.generation, dep.model = pending.generation, pending.model
                    dep.model_dir = pending.model_dir
                    dep.environment_variables = pending.environment_variables
                    dep.pending = None
                dep.provisioning_state, dep.updated_at = "Succeeded", time.time()
                dep.serving, dep.restarts = True, 0
            else:
                dep.provisioning_state, dep.updated_at, dep.error = "Failed", time.time(), reason
                if ours:
                    dep.pending = None  # the old server keeps serving
                elif dep.pid == run.process.pid:
                    dep.pid, dep.serving = None, False
        if reason is not None:
            self._stop(run.process.pid, run.command)
            raise self._failure(store, run, reason)
        if replaced is not None:  # the front must route to the new server before the old stops
            self._await_front(store, record.revision)
            self._stop(*replaced)
        info = self.get_deployment(spec.endpoint, spec.name)
        assert info is not None
        return info

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo | None:
        """The deployment, `ready` meaning its server answers /readiness 200 right now."""
        _, record = self._existing(endpoint)
        dep = record.deployments.get(name)
        return None if dep is None else self._info(endpoint, dep)

    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        _, record = self._existing(endpoint)
        return [self._info(endpoint, dep) for _, dep in sorted(record.deployments.items())]

    def delete_deployment(self, endpoint: str, name: str) -> None:
        """Delete a deployment with no live traffic (RuleViolation otherwise): it leaves the
        traffic and mirror maps, the front stops routing to it, then its server stops."""
        store, _ = self._existing(endpoint)
        with store.update() as record:
            dep = record.deployments.get(name)
            if dep is None:
                raise NotFound(f"endpoint {endpoint!r} has no deployment named {name!r}")
            remaining = rules.check_can_delete(record.traffic_state, name)
            record.traffic = dict(remaining.traffic)
            record.mirror_traffic = dict(remaining.mirror_traffic)
            dep.provisioning_state = "Deleting"
        self._await_front(store, record.revision)
        with store.update() as record:
            dep = record.deployments.get(name)
            if dep is None:
                return
            if dep.pending is not None:
                self._stop(dep.pending.pid, dep.pending.command)
            self._stop(dep.pid, dep.command)
            del record.deployments[name]

    def get_deployment_logs(self, endpoint: str, name: str, *, lines: int = 100) -> str:
        """The last lines of the deployment server's log (the update in progress, if any)."""
        store, record = self._existing(endpoint)
        dep = record.deployments.get(name)
        if dep is None:
            raise NotFound(f"endpoint {endpoint!r} has no deployment named {name!r}")
        log_file = dep.pending.log_file if dep.pending is not None else dep.log_file
        return tail(store.path(log_file), lines) if log_file else ""

    # ------------------------------------------------------------------ traffic

    def get_traffic(self, endpoint: str) -> TrafficState:
        _, record = self._existing(endpoint)
        return record.traffic_state

    def set_traffic(self, endpoint: str, state: TrafficState) -> TrafficState:
        """Apply both maps together (Azure's rules first), wait until the front serves them,
        and return what the front reports (the state file's when no front runs)."""
        store, _ = self._existing(endpoint)
        with store.update() as record:
            rules.validate_traffic(state, record.deployments.keys())
            record.traffic = {name: int(pct) for name, pct in state.traffic.items()}
            record.mirror_traffic = {
                name: int(pct) for name, pct in state.mirror_traffic.items() if pct > 0
            }
        health = self._await_front(store, record.revision)
        if health is None:
            return self.get_traffic(endpoint)
        return TrafficState(
            traffic=dict(health["traffic"]), mirror_traffic=dict(health["mirror_traffic"])
        )

    # ------------------------------------------------------------------ scoring

    def invoke(
        self,
        endpoint: str,
        request: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout: float = 60.0,
    ) -> Any:
        """POST `request` to the endpoint with the primary key (to one deployment with
        `deployment`); the decoded JSON answer. HTTP errors raise WorkspaceError with the
        status and body (NotFound for 404; transient for 408, 429, 5xx and connection errors)."""
        store, record = self._existing(endpoint)
        keys = store.read_keys()
        headers = {"Authorization": f"Bearer {keys.primary}"}
        if deployment is not None:
            headers[DEPLOYMENT_HEADER] = deployment
        target = f"deployment {deployment!r} of " if deployment else ""
        try:
            response = self._http.post(
                record.scoring_uri, json=dict(request), headers=headers, timeout=timeout
            )
        except requests.Timeout as exc:
            raise WorkspaceError(
                f"{target}endpoint {endpoint!r} did not answer within {timeout} s", transient=True
            ) from exc
        except requests.RequestException as exc:
            raise WorkspaceError(
                f"{target}endpoint {endpoint!r} unreachable at {record.scoring_uri}: "
                f"{type(exc).__name__}: {exc}",
                transient=True,
            ) from exc
        if response.status_code >= 400:
            raise scoring_error(
                endpoint,
                response.status_code,
                response.text,
                deployment=deployment,
                served_by=response.headers.get(DEPLOYMENT_HEADER, ""),
            )
        try:
            return response.json()
        except ValueError as exc:
            raise WorkspaceError(
                f"{target}endpoint {endpoint!r} answered {response.status_code} with a body that "
                f"is not JSON: {response.text[:200]!r}"
            ) from exc
