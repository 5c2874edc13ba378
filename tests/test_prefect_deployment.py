"""prefect.yaml for real: a local Prefect server, `prefect deploy`, a deployment run picked up
by a real process worker (`--run-once`), the whole pipeline run by that worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from profiles import small_profile_file

from backends.local.endpoint.control import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real `prefect server start` on loopback with its own home; the env to talk to it."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PWD": str(REPO),  # what the pull step's {{ $PWD }} resolves to in the worker
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not start in 180 s"
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_deploy_from_prefect_yaml_and_run_through_a_worker(
    prefect_server: dict[str, str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = prefect_server
    profile = small_profile_file(tmp_path, tiny_model_dir, smoke={"enabled": False})
    prefect(env, "work-pool", "create", "finetune-phi", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")

    api = env["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"local", "azure"}
    schedules = {name: d["schedules"][0] for name, d in by_name.items()}
    assert schedules["local"]["active"] and schedules["local"]["schedule"]["cron"] == "0 3 * * *"
    assert not schedules["azure"]["active"]  # must not fire before the workspace exists

    out = prefect(
        env,
        "deployment",
        "run",
        "finetune-phi/local",
        "--params",
        json.dumps({"profile": str(profile)}),
    )
    match = re.search(r"UUID[^0-9a-f]*([0-9a-f-]{36})", out)
    assert match, out
    flow_run_id = match.group(1)
    try:
        prefect(env, "worker", "start", "--pool", "finetune-phi", "--run-once", timeout=900)
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
        assert run["state"]["type"] == "COMPLETED", run["state"]
        artifacts = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        ).json()
        assert {a["type"] for a in artifacts} == {"markdown", "table"}
        markdown = next(a for a in artifacts if a["type"] == "markdown")["data"]
        assert markdown.startswith("# finetune-phi: promoted")
    finally:
        from backends.local.endpoint.control import LocalEndpoints

        endpoints = LocalEndpoints(tmp_path / "state")
        for name in endpoints.list_endpoints():
            endpoints.delete_endpoint(name)
