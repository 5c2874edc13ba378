"""Security of the local endpoint and of what a run leaves behind, checked for real.

- The key: required on `/score` (401 without it, with a wrong one, with one of the right length
  that differs in the last character), compared in constant time (`hmac.compare_digest`, read
  from the code), and rotated without downtime: requests with the secondary key keep flowing,
  with zero failures, while the primary is regenerated, and the other way round.
- Binding: the front and every deployment server listen on 127.0.0.1 only (their actual
  listening sockets, from psutil).
- Secrets at rest: after a real run of the flow (training, registration, rollout with the
  Prompt flow smoke test, which is given the key), no file in the state folder (logs, endpoint
  and job logs, the MLflow database and artifacts, reports), none of Prefect's (its database,
  the run's logs and artifacts through its API) and none promptflow left holds either endpoint
  key; only the 0600 keys file does. The repository's files hold nothing that looks like a key.
"""

from __future__ import annotations

import ast
import inspect
import json
import secrets
import stat
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from profiles import small_profile_file
from recovery_helpers import (
    GOOD_REQUEST,
    REPO_ROOT,
    SECRET_PATTERNS,
    files_holding,
    files_under,
    git_files,
    listening_addresses,
    stop_endpoints,
    tiny_mlflow_model,
)

from backends.local.endpoint import front
from backends.local.endpoint.control import LocalEndpoints
from backends.local.endpoint.state import KEY_BYTES, KEYS_FILE, EndpointStore
from finetune_phi.workspace import DEPLOYMENT_HEADER, DeploymentSpec, ModelVersion, TrafficState

ENDPOINT = "secured"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict]:
    """The real front and one real deployment (`serving.server`, the tiny model), all traffic."""
    control = LocalEndpoints(tmp_path_factory.mktemp("secured") / "state", grace_seconds=3.0)
    client = httpx.Client(timeout=60, trust_env=False)
    try:
        info = control.get_or_create_endpoint(ENDPOINT)
        model = ModelVersion("tiny", "1", source=tiny_mlflow_model(tiny_model_dir).as_uri())
        control.create_or_update_deployment(DeploymentSpec(ENDPOINT, "blue", model))
        control.set_traffic(ENDPOINT, TrafficState({"blue": 100}, {}))
        yield {"control": control, "url": info.scoring_uri, "client": client}
    finally:
        client.close()
        stop_endpoints(control)


def post(endpoint: dict, authorization: str | None, url: str | None = None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return endpoint["client"].post(url or endpoint["url"], json=GOOD_REQUEST, headers=headers)


def last_char_changed(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


# --------------------------------------------------------------------------- the key


def test_the_key_is_required(endpoint: dict) -> None:
    keys = endpoint["control"].get_endpoint_keys(ENDPOINT)
    wrong = {
        "no header": None,
        "empty": "",
        "no scheme": keys.primary,
        "basic scheme": f"Basic {keys.primary}",
        "bearer, no key": "Bearer",
        "wrong key": "Bearer not-the-key",
        "primary, last char changed": f"Bearer {last_char_changed(keys.primary)}",
        "secondary, last char changed": f"Bearer {last_char_changed(keys.secondary)}",
        "primary, one char short": f"Bearer {keys.primary[:-1]}",
        "primary + one char": f"Bearer {keys.primary}x",
        "both keys": f"Bearer {keys.primary}{keys.secondary}",
    }
    assert len(last_char_changed(keys.primary)) == len(keys.primary) == 43
    for case, authorization in wrong.items():
        response = post(endpoint, authorization)
        assert response.status_code == 401, (case, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert set(response.json()) == {"error"}
        assert keys.primary not in response.text and keys.secondary not in response.text
    # In the query string instead of the header: still no key.
    query = post(endpoint, None, url=f"{endpoint['url']}?key={keys.primary}")
    assert query.status_code == 401
    for key in (keys.primary, keys.secondary):
        assert post(endpoint, f"Bearer {key}").status_code == 200
        assert post(endpoint, f"bearer {key}").status_code == 200  # the scheme is case-blind


def test_keys_are_compared_in_constant_time() -> None:
    """`Front.authorized` compares with `hmac.compare_digest`, against both keys every time,
    and never with `==`/`!=`/`in` on a key."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(front.Front.authorized)))
    digests = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "compare_digest"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("hmac", "secrets")
    ]
    compared = {ast.unparse(arg) for call in digests for arg in call.args}
    assert "self.keys.primary.encode()" in compared and "self.keys.secondary.encode()" in compared
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            text = ast.unparse(node)
            assert "primary" not in text and "secondary" not in text and "given" not in text, text
    # Both comparisons always run (no short-circuit between them).
    source = inspect.getsource(front.Front.authorized)
    assert "ok_primary = hmac.compare_digest" in source and "ok_secondary = hmac" in source


def test_keys_rotate_without_downtime(endpoint: dict) -> None:
    control: LocalEndpoints = endpoint["control"]
    store = EndpointStore(control.state_dir, ENDPOINT)
    statuses: dict[str, Counter[int]] = {"secondary": Counter(), "primary": Counter()}
    using: dict[str, str] = {}
    stop = threading.Event()

    def client(which: str) -> None:
        with httpx.Client(timeout=60, trust_env=False) as http:
            while not stop.is_set():
                key = using[which]
                response = http.post(
                    endpoint["url"], json=GOOD_REQUEST, headers={"Authorization": f"Bearer {key}"}
                )
                statuses[which][response.status_code] += 1

    def rotate(which: str, traffic_on: str) -> None:
        """Regenerate `which` while a client keeps using `traffic_on`."""
        using[traffic_on] = getattr(control.get_endpoint_keys(ENDPOINT), traffic_on)
        thread = threading.Thread(target=client, args=(traffic_on,))
        stop.clear()
        thread.start()
        time.sleep(1.0)
        old = getattr(control.get_endpoint_keys(ENDPOINT), which)
        for _ in range(2):
            rotated = control.regenerate_key(ENDPOINT, which)  # type: ignore[arg-type]
            # Once it returns, the old key is refused and the new one works.
            assert post(endpoint, f"Bearer {old}").status_code == 401
            old = getattr(rotated, which)
            assert post(endpoint, f"Bearer {old}").status_code == 200
            time.sleep(0.5)
        stop.set()
        thread.join(timeout=60)

    rotate("primary", traffic_on="secondary")
    rotate("secondary", traffic_on="primary")  # and back: the primary is the new one
    for which, counts in statuses.items():
        assert set(counts) == {200} and counts[200] >= 5, (which, counts)
    mode = stat.S_IMODE(store.keys_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    print(
        f"\nkey rotation: {statuses['secondary'][200]} requests with the secondary while the "
        f"primary was rotated twice, {statuses['primary'][200]} with the new primary while "
        "the secondary was: all 200"
    )


# --------------------------------------------------------------------------- binding


def test_front_and_deployments_listen_on_loopback_only(endpoint: dict) -> None:
    status = endpoint["control"].status(ENDPOINT)
    pids = {"front": status["front"]["pid"]}
    pids |= {name: dep["pid"] for name, dep in status["deployments"].items()}
    ports = {"front": status["front"]["port"]}
    ports |= {name: dep["port"] for name, dep in status["deployments"].items()}
    for name, pid in pids.items():
        addresses = listening_addresses(pid)
        assert addresses == [("127.0.0.1", ports[name])], (name, addresses)


# --------------------------------------------------------------------------- secrets at rest


def prefect_api_dump() -> str:
    """The logs, artifacts, flow and task runs Prefect's API holds, as one JSON text."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parts: list[Any] = []
        parts += [log.model_dump(mode="json") for log in client.read_logs(limit=200)]
        offset = 200
        while True:  # every log line, not the first page only
            page = client.read_logs(limit=200, offset=offset)
            if not page:
                break
            parts += [log.model_dump(mode="json") for log in page]
            offset += 200
        parts += [a.model_dump(mode="json") for a in client.read_artifacts()]
        parts += [r.model_dump(mode="json") for r in client.read_flow_runs()]
        parts += [r.model_dump(mode="json") for r in client.read_task_runs()]
    assert any("dataset" in json.dumps(p) for p in parts), "the run's records were not found"
    return json.dumps(parts)


@pytest.mark.slow
def test_no_endpoint_key_in_logs_or_artifacts_after_a_real_run(
    prefect_harness: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

    from flows.finetune import finetune_pipeline

    started = time.time()
    profile = small_profile_file(
        tmp_path, tiny_model_dir, smoke={"enabled": True, "questions": 1, "min_accuracy": 0.0}
    )
    state = tmp_path / "state"
    try:
        result = finetune_pipeline(profile=str(profile))
        assert result.status == "promoted"
        assert result.rollout is not None and result.rollout.smoke  # the key went to promptflow
        store = EndpointStore(state, result.settings.endpoint.name)
        keys = store.read_keys()
        secrets = [keys.primary, keys.secondary]

        # Every file of the state folder except the keys file itself.
        state_files = list(files_under(state))
        assert store.keys_file in state_files
        assert any(p.suffix == ".db" for p in state_files)  # the MLflow database is scanned
        assert any(p.name == "front.log" for p in state_files)
        assert any(p.name == "train.log" for p in state_files)
        leaks = files_holding([p for p in state_files if p != store.keys_file], secrets)
        assert leaks == {}, leaks
        assert files_holding([store.keys_file], secrets) == {store.keys_file: [0, 1]}
        assert stat.S_IMODE(store.keys_file.stat().st_mode) == 0o600
        assert store.keys_file.name == KEYS_FILE

        # Prefect: its database and home folder, and what its API serves for the runs.
        database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
        prefect_files = [p for p in files_under(database.parent)]
        prefect_files += [
            p for p in files_under(PREFECT_HOME.value()) if p.stat().st_mtime >= started
        ]
        assert database in prefect_files
        assert files_holding(prefect_files, secrets) == {}
        api = prefect_api_dump()
        assert keys.primary not in api and keys.secondary not in api

        # What promptflow wrote in its flow folder (its own home is a temporary folder).
        flow_files = [
            p for p in files_under(REPO_ROOT / "promptflow_app") if p.stat().st_mtime >= started
        ]
        assert files_holding(flow_files, secrets) == {}
        print(
            f"\nsecrets scan: {len(state_files) - 1} state files, {len(prefect_files)} Prefect "
            f"files, {len(api):,} characters from Prefect's API, {len(flow_files)} promptflow "
            "files: no endpoint key"
        )
    finally:
        control = LocalEndpoints(state)
        stop_endpoints(control)


def test_repository_files_hold_no_key() -> None:
    # The scanner finds what it looks for: keys in the endpoint's format, assigned secrets.
    made = [secrets.token_urlsafe(KEY_BYTES) for _ in range(20)]
    assert sum(any(p.search(f"x {key} y") for p in SECRET_PATTERNS) for key in made) >= 15
    pasted = "api_key = " + repr("Zm9vYmFy" * 4)  # built here, so this file does not match
    assert any(p.search(pasted) for p in SECRET_PATTERNS)
    files = [p for p in git_files(REPO_ROOT) if p.is_file()]
    assert len(files) > 50
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (pictures): not where a key is pasted
        for pattern in SECRET_PATTERNS:
            for match in pattern.finditer(text):
                found.append(f"{path.relative_to(REPO_ROOT)}: {match.group(0)[:60]}")
    assert found == [], found


def test_deployment_header_cannot_bypass_the_key(endpoint: dict) -> None:
    """Naming a deployment in the header does not skip the key check."""
    response = endpoint["client"].post(
        endpoint["url"], json=GOOD_REQUEST, headers={DEPLOYMENT_HEADER: "blue"}
    )
    assert response.status_code == 401
