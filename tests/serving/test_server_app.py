"""The server's HTTP mapping, in process and fast, with a scripted scoring module.

The real scoring script is exercised end to end in test_server.py; here a small stand-in with
`init()` / `run()` scripts the cases a real model does not produce on demand (init blocking or
failing, run crashing, an AMLResponse-like result), as httpx's MockTransport scripts responses.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from serving.contract import BadRequest, parse_request
from serving.server import ModelState, ServerConfig, create_app


class ScriptedScorer:
    """init() waits for `release` and may fail; run() calls `answer` on the parsed request."""

    def __init__(self, answer: Callable[[Any], Any] | None = None, fail_init: bool = False):
        self.release = threading.Event()
        self.fail_init = fail_init
        self.answer = answer or (lambda request: ["ok"])
        self.model_dir_seen: str | None = None

    def init(self) -> None:
        import os

        self.model_dir_seen = os.environ.get("AZUREML_MODEL_DIR")
        assert self.release.wait(10)
        if self.fail_init:
            raise OSError("disk on fire\nsecond line of detail")

    def run(self, raw_data: str) -> Any:
        return self.answer(parse_request(raw_data))


def wait_for(state: ModelState, status: str) -> None:
    deadline = time.monotonic() + 10
    while state.status != status:
        assert time.monotonic() < deadline, state
        time.sleep(0.01)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[ScriptedScorer], tuple[TestClient, ModelState]]]:
    clients: list[TestClient] = []

    def start(scorer: ScriptedScorer) -> tuple[TestClient, ModelState]:
        config = ServerConfig(model_dir=tmp_path, name="blue", scorer=scorer)
        client = TestClient(create_app(config), raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan: init() starts in its thread
        clients.append(client)
        return client, config.state

    yield start
    for client in clients:
        client.__exit__(None, None, None)


BODY = json.dumps({"input_data": ["hi"]})


def test_readiness_follows_init_and_score_waits_for_it(serve: Any, tmp_path: Path) -> None:
    scorer = ScriptedScorer()
    client, state = serve(scorer)
    assert client.get("/liveness").status_code == 200
    assert client.get("/readiness").status_code == 503
    assert client.post("/score", content=BODY).status_code == 503
    scorer.release.set()
    wait_for(state, "ready")
    assert client.get("/readiness").json() == {"status": "ready"}
    assert client.post("/score", content=BODY).json() == ["ok"]
    assert scorer.model_dir_seen == str(tmp_path)  # AZUREML_MODEL_DIR set before init()
    assert state.seconds is not None


def test_failed_init_is_500_with_one_line_and_no_traceback(serve: Any) -> None:
    scorer = ScriptedScorer(fail_init=True)
    client, state = serve(scorer)
    scorer.release.set()
    wait_for(state, "failed")
    readiness = client.get("/readiness")
    assert readiness.status_code == 500
    assert readiness.json() == {"status": "failed", "error": "OSError: disk on fire"}
    assert client.get("/liveness").status_code == 200
    assert client.get("/").json()["error"] == "OSError: disk on fire"


def test_run_errors_map_to_400_and_500(serve: Any) -> None:
    def answer(request: Any) -> Any:
        text = request.texts[0]
        if text == "bad":
            raise BadRequest("input_data[0]: not today")
        if text == "crash":
            raise RuntimeError("CUDA out of memory\n  File 'x.py', line 1")
        return [text]

    scorer = ScriptedScorer(answer)
    client, state = serve(scorer)
    scorer.release.set()
    wait_for(state, "ready")
    bad = client.post("/score", content=json.dumps({"input_data": ["bad"]}))
    assert (bad.status_code, bad.json()) == (400, {"error": "input_data[0]: not today"})
    crash = client.post("/score", content=json.dumps({"input_data": ["crash"]}))
    assert crash.status_code == 500
    assert crash.json() == {"error": "RuntimeError: CUDA out of memory"}
    invalid = client.post("/score", content=b"{nope")
    assert invalid.status_code == 400 and "not valid JSON" in invalid.json()["error"]


def test_an_aml_response_like_result_keeps_its_status_body_and_type(serve: Any) -> None:
    class FlaskLikeResponse:  # what azmlinfsrv's AMLResponse (a flask Response) offers
        status_code = 422
        mimetype = "application/json"

        def get_data(self) -> bytes:
            return b'{"error": "from the script"}'

    scorer = ScriptedScorer(lambda request: FlaskLikeResponse())
    client, state = serve(scorer)
    scorer.release.set()
    wait_for(state, "ready")
    response = client.post("/score", content=BODY)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": "from the script"}


def test_requests_are_serialized(serve: Any) -> None:
    """At most one run() at a time: one model, one CPU."""
    running = 0
    most = 0
    guard = threading.Lock()

    def answer(request: Any) -> list[str]:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return ["ok"]

    scorer = ScriptedScorer(answer)
    client, state = serve(scorer)
    scorer.release.set()
    wait_for(state, "ready")
    threads = [
        threading.Thread(target=lambda: client.post("/score", content=BODY)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most == 1
