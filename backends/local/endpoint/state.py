"""The local endpoint's persisted state: one folder per endpoint in the state folder.

```
<state_dir>/endpoints/<endpoint>/      (mode 0700)
  endpoint.json     the record: front port/pid, deployments, traffic, mirror, revision
  keys.json         primary and secondary key (mode 0600, created that way)
  .lock             fcntl lock held around every read-modify-write of endpoint.json
  front.log         the front process's log
  deployments/<name>/server-<generation>.log   one log per deployment server process
```

Why a file and not an API: the front and the control plane are different processes, and either
may be restarted at any time. The control plane is the only writer (under the lock; the
front's supervisor thread, which restarts crashed servers, writes through it too); the front
only reads, and notices a change by the file's stat. Writes are atomic (temporary file +
`os.replace`), so a reader sees the old record or the new one, never half of one. `revision`
goes up by one on every change, which is how the control plane confirms that the front applied
a change: the front reports the revision it serves in `GET /health`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backends.local.endpoint.rules import validate_name
from finetune_phi.workspace import EndpointKeys, NotFound, TrafficState, WorkspaceError

SCHEMA_VERSION = 1
STATE_FILE = "endpoint.json"
KEYS_FILE = "keys.json"
LOCK_FILE = ".lock"
FRONT_LOG = "front.log"
KEY_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits

KeyName = Literal["primary", "secondary"]


def endpoints_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "endpoints"


def list_endpoints(state_dir: Path) -> list[str]:
    """Names of the endpoints that have a record under `state_dir`."""
    root = endpoints_dir(state_dir)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{STATE_FILE}"))


# --------------------------------------------------------------------------- records


@dataclass
class PendingProcess:
    """A replacement server being started for an existing deployment (an update). The front
    keeps routing to the deployment's current process until this one is ready."""

    model: str
    model_dir: str
    environment_variables: dict[str, str]
    generation: int
    port: int
    pid: int
    command: list[str]
    log_file: str  # relative to the endpoint folder
    started_at: float


@dataclass
class DeploymentRecord:
    name: str
    model: str  # "<name>:<version>"
    model_dir: str  # absolute path of the MLflow model folder the server loads
    provisioning_state: str  # Azure's: Creating, Updating, Succeeded, Failed, Deleting
    created_at: float
    updated_at: float
    environment_variables: dict[str, str] = field(default_factory=dict)
    generation: int = 1  # one per server process started for this deployment
    port: int | None = None  # where the front sends this deployment's requests
    pid: int | None = None  # process group leader of the server; None when stopped
    command: list[str] = field(default_factory=list)  # to recognise the pid (pids get reused)
    log_file: str | None = None  # relative to the endpoint folder
    started_at: float | None = None
    # The process fields describe a server that became ready and should be running: what
    # `get_or_create_endpoint` restarts after a stop or a reboot (even when the deployment is
    # "Failed" because a later update failed while this server kept serving).
    serving: bool = False
    error: str | None = None  # why the last create/update failed
    pending: PendingProcess | None = None
    # Restarts of a crashed server by the supervisor (`supervisor.py`) since the deployment
    # last became ready through the control plane or stayed up for a while.
    restarts: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        pending = values.get("pending")
        values["pending"] = PendingProcess(**pending) if pending else None
        return cls(**values)


@dataclass
class EndpointRecord:
    name: str
    port: int  # the front's port; kept while the front is stopped so the URI stays the same
    created_at: float
    revision: int = 0
    pid: int | None = None  # the front's pid; None when stopped
    command: list[str] = field(default_factory=list)
    log_file: str = FRONT_LOG
    started_at: float | None = None
    key_generation: int = 0  # bumped on key rotation, so the rotation changes the revision
    deployments: dict[str, DeploymentRecord] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    mirror_traffic: dict[str, int] = field(default_factory=dict)

    @property
    def traffic_state(self) -> TrafficState:
        return TrafficState(traffic=dict(self.traffic), mirror_traffic=dict(self.mirror_traffic))

    @property
    def scoring_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointRecord:
        if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise WorkspaceError(
                f"endpoint state has schema {data.get('schema')!r}; this code reads "
                f"{SCHEMA_VERSION}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["deployments"] = {
            name: DeploymentRecord.from_dict(d) for name, d in data.get("deployments", {}).items()
        }
        return cls(**values)


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` atomically, mode 0600 from the first byte.

    The temporary file is created by `os.open(..., 0o600)` (O_EXCL, O_NOFOLLOW), so a key is
    never readable by others, not even between create and chmod; `os.replace` then swaps it in.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _dump(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


_held = threading.local()  # per thread: lock path -> depth, so the lock is re-entrant


class EndpointStore:
    """Reads and writes one endpoint's folder. The control plane's only door to the state."""

    def __init__(self, state_dir: Path, endpoint: str) -> None:
        validate_name("endpoint", endpoint)
        self.state_dir = Path(state_dir)
        self.endpoint = endpoint
        self.dir = endpoints_dir(self.state_dir) / endpoint

    def __repr__(self) -> str:
        return f"EndpointStore({str(self.dir)!r})"

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def keys_file(self) -> Path:
        return self.dir / KEYS_FILE

    @property
    def lock_file(self) -> Path:
        return self.dir / LOCK_FILE

    def path(self, relative: str) -> Path:
        """A path recorded relative to the endpoint folder, made absolute."""
        return self.dir / relative

    def deployment_log(self, deployment: str, generation: int) -> str:
        """Where a deployment's server process logs (relative; see `path`)."""
        return f"deployments/{deployment}/server-{generation}.log"

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # keys, environment variables and logs: the owner's only

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for a read-modify-write (across processes: fcntl; re-entrant within a
        thread, so helpers that lock can be called by code already holding it)."""
        self.ensure_dir()
        depths: dict[str, int] = getattr(_held, "depths", None) or {}
        _held.depths = depths
        key = str(self.lock_file)
        if depths.get(key):
            depths[key] += 1
            try:
                yield
            finally:
                depths[key] -= 1
            return
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            depths[key] = 1
            try:
                yield
            finally:
                depths[key] = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ the record

    def exists(self) -> bool:
        return self.state_file.is_file()

    def read_or_none(self) -> EndpointRecord | None:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return None
        return EndpointRecord.from_dict(json.loads(text))

    def read(self) -> EndpointRecord:
        record = self.read_or_none()
        if record is None:
            raise NotFound(f"no local endpoint named {self.endpoint!r} (looked in {self.dir})")
        return record

    def write(self, record: EndpointRecord) -> EndpointRecord:
        """Write `record` as the next revision. Call with the lock held."""
        current = self.read_or_none()
        record.revision = max(record.revision, current.revision if current else 0) + 1
        _atomic_write(self.state_file, _dump(record.to_dict()))
        return record

    def create(self, port: int) -> EndpointRecord:
        """A new endpoint record (and its keys) on `port`. Call with the lock held."""
        self.ensure_dir()
        self.ensure_keys()
        return self.write(EndpointRecord(name=self.endpoint, port=port, created_at=time.time()))

    @contextlib.contextmanager
    def update(self) -> Iterator[EndpointRecord]:
        """Lock, read, let the caller change the record, write it back as a new revision if it
        changed. NotFound if the endpoint has no record."""
        with self.lock():
            record = self.read()
            before = record.to_dict()
            yield record
            if record.to_dict() != before:
                self.write(record)

    def delete(self) -> None:
        """Remove the endpoint's folder (keys and logs included)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ keys

    def read_keys(self) -> EndpointKeys:
        try:
            data = json.loads(self.keys_file.read_text())
        except FileNotFoundError:
            raise NotFound(f"endpoint {self.endpoint!r} has no keys") from None
        return EndpointKeys(primary=data["primary"], secondary=data["secondary"])

    def _write_keys(self, keys: EndpointKeys) -> None:
        self.ensure_dir()
        _atomic_write(self.keys_file, _dump({"primary": keys.primary, "secondary": keys.secondary}))

    def ensure_keys(self) -> EndpointKeys:
        """The endpoint's keys, made on first use."""
        with self.lock():
            if self.keys_file.is_file():
                return self.read_keys()
            keys = EndpointKeys(
                primary=secrets.token_urlsafe(KEY_BYTES),
                secondary=secrets.token_urlsafe(KEY_BYTES),
            )
            self._write_keys(keys)
            return keys

    def regenerate_key(self, which: KeyName) -> EndpointKeys:
        """Replace one key with a fresh one (the other keeps working: rotate one at a time)."""
        if which not in ("primary", "secondary"):
            raise WorkspaceError(f"key must be 'primary' or 'secondary', not {which!r}")
        with self.lock():
            keys = self.read_keys()
            fresh = secrets.token_urlsafe(KEY_BYTES)
            keys = dataclasses.replace(keys, **{which: fresh})
            self._write_keys(keys)
            return keys
