"""The endpoint's persisted state: atomic writes, revisions, the lock, keys (no processes)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from backends.local.endpoint.control import LocalEndpoints, model_dir_from_source, tail
from backends.local.endpoint.state import EndpointRecord, EndpointStore, list_endpoints
from finetune_phi.workspace import NotFound, RuleViolation, WorkspaceError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_endpoint_record_and_revision(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path, "ep-one")
    with store.lock():
        record = store.create(port=50000)
    assert record.revision == 1
    assert store.read() == record
    assert list_endpoints(tmp_path) == ["ep-one"]
    with store.update() as record:
        record.traffic = {"blue": 100}
    assert store.read().revision == 2
    with store.update():
        pass  # nothing changed: no new revision
    assert store.read().revision == 2
    assert EndpointRecord.from_dict(store.read().to_dict()) == store.read()
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in store.dir.iterdir()) == [".lock", "endpoint.json", "keys.json"]


def test_missing_endpoint_is_not_found(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path, "nothing")
    assert store.read_or_none() is None
    with pytest.raises(NotFound, match="no local endpoint named 'nothing'"):
        store.read()
    with pytest.raises(NotFound), store.update():
        pass


def test_endpoint_name_cannot_escape_the_state_folder(tmp_path: Path) -> None:
    with pytest.raises(RuleViolation):
        EndpointStore(tmp_path, "../outside")


def test_keys_file_is_private_from_the_start(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not make keys readable by others
    try:
        store = EndpointStore(tmp_path, "keyed")
        keys = store.ensure_keys()
    finally:
        os.umask(old_umask)
    assert _mode(store.keys_file) == 0o600
    assert _mode(store.dir) == 0o700
    assert keys.primary != keys.secondary
    assert len(keys.primary) >= 43  # token_urlsafe(32)
    assert store.ensure_keys() == keys  # made once
    assert keys.primary not in repr(keys) and keys.secondary not in repr(keys)
    assert keys.primary not in str(keys)


def test_regenerate_changes_only_one_key(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path, "keyed")
    keys = store.ensure_keys()
    rotated = store.regenerate_key("primary")
    assert rotated.primary != keys.primary and rotated.secondary == keys.secondary
    assert store.read_keys() == rotated
    assert _mode(store.keys_file) == 0o600
    again = store.regenerate_key("secondary")
    assert again.primary == rotated.primary and again.secondary != rotated.secondary
    with pytest.raises(WorkspaceError, match="'primary' or 'secondary'"):
        store.regenerate_key("tertiary")  # type: ignore[arg-type]


def test_lock_serialises_read_modify_write(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path, "busy")
    with store.lock():
        store.create(port=50001)

    def bump() -> None:
        for _ in range(25):
            with store.update() as record:
                record.traffic["n"] = record.traffic.get("n", 0) + 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = store.read()
    assert record.traffic["n"] == 100  # no lost update
    assert record.revision == 101


def test_lock_is_reentrant_within_a_thread(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path, "nested")
    with store.lock(), store.lock():
        store.create(port=50002)
    assert store.read().revision == 1


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("file:///models/phi%203/model", "/models/phi 3/model"),
        ("file://localhost/models/m", "/models/m"),
        ("/models/m", "/models/m"),
        ("relative/model", "relative/model"),
    ],
)
def test_model_dir_from_source(source: str, expected: str) -> None:
    assert model_dir_from_source(source) == Path(expected)


@pytest.mark.parametrize(
    "source", ["mlflow-artifacts:/1/abc/model", "models:/phi/1", "https://x/m"]
)
def test_model_dir_refuses_remote_sources(source: str) -> None:
    with pytest.raises(WorkspaceError, match="not a local folder"):
        model_dir_from_source(source)


def test_tail_reads_the_end_of_a_big_file(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail(log, 3) == "line 99997\nline 99998\nline 99999"
    assert tail(tmp_path / "missing.log") == ""


def test_a_reused_pid_is_not_trusted(tmp_path: Path) -> None:
    control = LocalEndpoints(tmp_path)
    # This very process is alive, but it is not the recorded command: not ours to kill.
    assert control._alive(os.getpid(), ["python", "-m", "backends.local.endpoint.front"]) is None
    assert control._alive(None, []) is None
