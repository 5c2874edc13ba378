"""The control plane: Azure's rules through set_traffic, deployment lifecycle, keys, restarts.

Real front and stand-in server processes on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import psutil
import pytest
from endpoint_helpers import Endpoint

from backends.local.endpoint.control import wait_port_free
from finetune_phi.workspace import (
    NotFound,
    RuleViolation,
    TrafficState,
    WorkspaceError,
)

pytestmark = pytest.mark.slow


def _processes_named(deployment: str) -> list[psutil.Process]:
    """Stand-in server processes started for `deployment` (any endpoint), still alive."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "stand_in_server.py" in " ".join(cmdline) and deployment in cmdline:
            found.append(process)
    return found


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------- Azure's rules


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (TrafficState({"blue": 60, "green": 30}), "must sum to 100"),
        (TrafficState({"blue": 100}, {"green": 60}), "at most 50%"),
        (
            TrafficState({"blue": 50, "green": 50}, {"green": 10}),
            "cannot mirror traffic to 'green'",
        ),
        (TrafficState({"blue": 100}, {"green": 10, "broken": 10}), "one deployment only"),
        (TrafficState({"purple": 100}), "not a deployment of this endpoint"),
    ],
)
def test_set_traffic_enforces_azure_rules(
    live: Endpoint, state: TrafficState, message: str
) -> None:
    live.route({"blue": 100}, mirror={"green": 10})
    before = live.control.get_traffic(live.name)
    revision = live.control.status(live.name)["revision"]
    with pytest.raises(RuleViolation, match=message):
        live.control.set_traffic(live.name, state)
    assert live.control.get_traffic(live.name) == before  # nothing changed
    assert live.control.status(live.name)["revision"] == revision


def test_live_deployment_cannot_be_deleted(live: Endpoint) -> None:
    live.route({"blue": 100})
    with pytest.raises(RuleViolation, match="cannot delete deployment 'blue'"):
        live.control.delete_deployment(live.name, "blue")
    assert live.control.get_deployment(live.name, "blue") is not None
    assert live.post().status_code == 200


def test_set_traffic_returns_what_the_front_serves(live: Endpoint) -> None:
    applied = live.control.set_traffic(
        live.name, TrafficState({"blue": 80, "green": 20, "broken": 0}, {"slow-shadow": 0})
    )
    assert applied == TrafficState({"blue": 80, "green": 20, "broken": 0}, {})
    status = live.control.status(live.name)
    assert status["front"]["serving_revision"] == status["revision"]
    # setting the same state again is fine (no change, no new revision, no wait for one)
    assert live.control.set_traffic(live.name, applied) == applied


# ---------------------------------------------------------------------- deployments


def test_deployment_that_never_becomes_ready_fails(live: Endpoint) -> None:
    live.stand_in.flags["stuck"] = ["--never-ready"]
    started = time.monotonic()
    with pytest.raises(WorkspaceError) as raised:
        live.control.create_or_update_deployment(live.spec("stuck"))
    assert time.monotonic() - started < 15
    message = str(raised.value)
    assert "'stuck'" in message and "not ready after 4 s" in message
    assert "stand-in stuck: model" in message  # the log tail
    info = live.control.get_deployment(live.name, "stuck")
    assert info is not None
    assert info.provisioning_state == "Failed" and info.ready is False
    assert _processes_named("stuck") == []  # its process is gone
    live.control.delete_deployment(live.name, "stuck")
    assert live.control.get_deployment(live.name, "stuck") is None


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--fail-load"], "the model failed to load: stand-in told to fail loading"),
        (["--exit-on-start"], "exited with code 3 before it was ready"),
    ],
)
def test_deployment_failing_to_start_fails_fast(
    live: Endpoint, flags: list[str], reason: str
) -> None:
    live.stand_in.flags["fails"] = flags
    try:
        started = time.monotonic()
        with pytest.raises(WorkspaceError, match=reason):
            live.control.create_or_update_deployment(live.spec("fails"))
        assert time.monotonic() - started < 3  # no waiting for the readiness timeout
        info = live.control.get_deployment(live.name, "fails")
        assert info is not None and info.provisioning_state == "Failed"
        assert _processes_named("fails") == []
        assert "stand-in fails: model" in live.control.get_deployment_logs(live.name, "fails")
    finally:
        live.control.delete_deployment(live.name, "fails")


def test_missing_model_folder_is_refused(live: Endpoint) -> None:
    spec = live.spec("nomodel")
    spec = type(spec)(
        spec.endpoint, spec.name, type(spec.model)("m", "1", str(live.model_dir / "missing"))
    )
    with pytest.raises(WorkspaceError, match="does not exist"):
        live.control.create_or_update_deployment(spec)
    assert live.control.get_deployment(live.name, "nomodel") is None


def test_unknown_things_are_not_found(live: Endpoint) -> None:
    assert live.control.get_deployment(live.name, "purple") is None
    with pytest.raises(NotFound):
        live.control.delete_deployment(live.name, "purple")
    with pytest.raises(NotFound):
        live.control.get_deployment_logs(live.name, "purple")
    with pytest.raises(NotFound):
        live.control.get_traffic("no-such-endpoint")
    with pytest.raises(NotFound):
        live.control.create_or_update_deployment(
            type(live.spec("x"))("no-such-endpoint", "blue", live.spec("x").model)
        )


def test_list_and_logs(live: Endpoint) -> None:
    names = [d.name for d in live.control.list_deployments(live.name)]
    assert {"blue", "green", "broken", "slow-shadow"} <= set(names)
    assert names == sorted(names)
    blue = live.control.get_deployment(live.name, "blue")
    assert blue is not None
    assert blue.ready and blue.provisioning_state == "Succeeded" and blue.model.endswith(":1")
    assert "stand-in blue: model" in live.control.get_deployment_logs(live.name, "blue", lines=5)


# ---------------------------------------------------------------------- scoring


def test_invoke(live: Endpoint) -> None:
    live.route({"blue": 100})
    assert live.control.invoke(live.name, {"input_data": ["hi"]}) == {
        "deployment": "blue",
        "echo": {"input_data": ["hi"]},
    }
    assert live.control.invoke(live.name, {"q": 1}, deployment="green")["deployment"] == "green"
    with pytest.raises(NotFound, match="404"):
        live.control.invoke(live.name, {"q": 1}, deployment="purple")
    with pytest.raises(WorkspaceError, match="500 .deployment 'broken'.") as raised:
        live.control.invoke(live.name, {"q": 1}, deployment="broken")
    assert raised.value.transient is True
    live.route({"blue": 0})
    with pytest.raises(WorkspaceError, match="503") as raised:
        live.control.invoke(live.name, {"q": 1})
    assert raised.value.transient is True


# ---------------------------------------------------------------------- own endpoints


def test_update_replaces_the_process_without_dropping_requests(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    ep = make_endpoint("rolling", {"blue": ["--load-seconds", "0.5"]}, grace_seconds=2.0)
    ep.route({"blue": 100})
    old = ep.control.status(ep.name)["deployments"]["blue"]
    failures: list[object] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                response = ep.post()
                if response.status_code != 200:
                    failures.append(response.status_code)
            except Exception as exc:  # noqa: BLE001 - any failure is what we look for
                failures.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        info = ep.control.create_or_update_deployment(ep.spec("blue", version="2"))
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert info.model == "stand-in-model:2" and info.provisioning_state == "Succeeded"
    new = ep.control.status(ep.name)["deployments"]["blue"]
    assert new["pid"] != old["pid"] and new["port"] != old["port"]
    assert not _is_running(old["pid"])
    assert ep.control.invoke(ep.name, {"q": 2})["deployment"] == "blue"

    # a failed update keeps the old server serving and says why
    ep.stand_in.flags["blue"] = ["--fail-load"]
    with pytest.raises(WorkspaceError, match="failed to load"):
        ep.control.create_or_update_deployment(ep.spec("blue", version="3"))
    after = ep.control.status(ep.name)["deployments"]["blue"]
    assert after["provisioning_state"] == "Failed" and after["model"] == "stand-in-model:2"
    assert after["pid"] == new["pid"] and after["ready"]
    assert ep.control.invoke(ep.name, {"q": 3})["deployment"] == "blue"


def test_delete_removes_process_state_and_mirror(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("deleting", {"blue": [], "green": []})
    ep.route({"blue": 100, "green": 0}, mirror={"green": 30})
    pid = ep.control.status(ep.name)["deployments"]["green"]["pid"]
    ep.control.delete_deployment(ep.name, "green")
    assert ep.control.get_traffic(ep.name) == TrafficState({"blue": 100}, {})
    assert ep.control.get_deployment(ep.name, "green") is None
    assert not _is_running(pid)
    assert "green" not in ep.client.get(ep.url.replace("/score", "/health")).json()["deployments"]
    assert all(ep.post().status_code == 200 for _ in range(20))


def test_key_rotation_invalidates_the_old_key(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("rotating", {"blue": []})
    ep.route({"blue": 100})
    old = ep.keys
    rotated = ep.control.regenerate_key(ep.name, "primary")
    assert rotated == ep.control.get_endpoint_keys(ep.name)
    assert rotated.primary != old.primary and rotated.secondary == old.secondary
    assert ep.post(key=old.primary).status_code == 401  # at once: the call waited for the front
    assert ep.post(key=rotated.primary).status_code == 200
    assert ep.post(key=old.secondary).status_code == 200  # the other key kept working
    again = ep.control.regenerate_key(ep.name, "secondary")
    assert ep.post(key=old.secondary).status_code == 401
    assert ep.post(key=again.secondary).status_code == 200
    assert ep.control.invoke(ep.name, {"q": 1})["deployment"] == "blue"  # uses the new primary


def test_front_restart_keeps_port_keys_and_traffic(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("restarting", {"blue": [], "green": []})
    ep.route({"blue": 60, "green": 40}, mirror={})
    before = ep.control.status(ep.name)
    os.kill(before["front"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ep.control.status(ep.name)["front"]["alive"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = ep.control.get_or_create_endpoint(ep.name)
    after = ep.control.status(ep.name)
    assert info.scoring_uri == ep.url  # same port
    assert after["front"]["pid"] != before["front"]["pid"] and after["front"]["healthy"]
    assert ep.control.get_endpoint_keys(ep.name) == ep.keys
    assert ep.control.get_traffic(ep.name) == TrafficState({"blue": 60, "green": 40}, {})
    for name in ("blue", "green"):  # the deployments were left alone
        assert after["deployments"][name]["pid"] == before["deployments"][name]["pid"]
    answered = {ep.post().json()["deployment"] for _ in range(40)}
    assert answered == {"blue", "green"}
    # get_or_create on a healthy endpoint changes nothing
    assert ep.control.get_or_create_endpoint(ep.name) == info
    assert ep.control.status(ep.name)["front"]["pid"] == after["front"]["pid"]

    # if someone else took the port meanwhile, the front comes back on another one
    os.kill(after["front"]["pid"], signal.SIGKILL)
    while ep.control.status(ep.name)["front"]["alive"]:
        time.sleep(0.05)
    port = int(ep.url.rsplit(":", 1)[1].split("/")[0])
    assert wait_port_free(port, timeout=5)  # the killed front's connections linger a moment
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        moved = ep.control.get_or_create_endpoint(ep.name)
        assert moved.scoring_uri != ep.url
        assert ep.control.invoke(ep.name, {"q": 1})["deployment"] in {"blue", "green"}


def test_stop_and_bring_back(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("stopping", {"blue": []})
    ep.route({"blue": 100})
    running = ep.control.status(ep.name)
    ep.control.stop_endpoint(ep.name)
    status = ep.control.status(ep.name)
    assert not status["front"]["alive"] and not status["deployments"]["blue"]["alive"]
    for pid in (running["front"]["pid"], running["deployments"]["blue"]["pid"]):
        assert not _is_running(pid)
    with pytest.raises(WorkspaceError) as raised:
        ep.control.invoke(ep.name, {"q": 1})
    assert raised.value.transient is True
    # traffic can still be changed while stopped; the front reads it when it starts
    assert ep.control.set_traffic(ep.name, TrafficState({"blue": 100})) == TrafficState(
        {"blue": 100}
    )
    assert ep.control.get_or_create_endpoint(ep.name).scoring_uri == ep.url
    assert ep.control.invoke(ep.name, {"q": 1})["deployment"] == "blue"
    blue = ep.control.get_deployment(ep.name, "blue")
    assert blue is not None and blue.ready and blue.provisioning_state == "Succeeded"
    back = ep.control.status(ep.name)["deployments"]["blue"]
    assert back["port"] == running["deployments"]["blue"]["port"]  # same port: it was free
    assert back["pid"] != running["deployments"]["blue"]["pid"]
    ep.control.delete_endpoint(ep.name)
    assert ep.control.list_endpoints() == []
