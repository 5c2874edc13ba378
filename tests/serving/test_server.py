"""The deployment server process, end to end: `python -m serving.server` on loopback, real HTTP.

One process serves the tiny model for most tests (session fixture); cheap extra processes
cover the states a healthy one never shows (still loading, failed to load, port taken).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.server import INIT_GATE_ENV

pytestmark = pytest.mark.slow

QUESTION = "Who founded Microsoft?"
# The tutorial's request, byte for byte what its Prompt flow tool sends.
TUTORIAL: dict[str, Any] = {
    "input_data": [QUESTION],
    "params": {
        "temperature": 0.7,
        "max_new_tokens": 128,
        "do_sample": True,
        "return_full_text": True,
    },
}

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(served_deployment: Any) -> Iterator[httpx.Client]:
    served_deployment.wait_ready()
    with served_deployment.client() as http:
        yield http


def test_tutorials_exact_request_is_answered_with_a_list_of_one_string(client: Any) -> None:
    response = client.post("/score", json=TUTORIAL)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert isinstance(answer, list) and len(answer) == 1
    assert isinstance(answer[0], str) and answer[0].startswith(QUESTION)
    # What the tutorial's tool does with it: response.json()[0]
    assert len(answer[0]) > len(QUESTION)


def test_chat_form_bare_and_wrapped_answer_one_assistant_message(client: Any) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    params = {"max_new_tokens": 12}
    bare = client.post("/score", json={"messages": messages, "params": params})
    wrapped = client.post("/score", json={"input_data": {"messages": messages}, "params": params})
    assert bare.status_code == wrapped.status_code == 200
    assert bare.json() == wrapped.json()  # greedy: the same answer
    assert bare.json()["role"] == "assistant" and isinstance(bare.json()["content"], str)
    # the same text in the tutorial's form, without the full text, is the same reply
    text_form = client.post(
        "/score",
        json={"input_data": [QUESTION], "params": {**params, "return_full_text": False}},
    )
    assert text_form.json() == [bare.json()["content"]]


def test_legacy_form_answers_a_list(client: Any) -> None:
    body = {"input_data": {"input_string": [QUESTION, "Hi"], "parameters": {"max_new_tokens": 4}}}
    response = client.post("/score", json=body)
    assert response.status_code == 200
    answers = response.json()
    assert len(answers) == 2 and answers[0].startswith(QUESTION) and answers[1].startswith("Hi")


def test_bad_param_is_a_400_that_says_what_is_wrong(client: Any) -> None:
    body = {"input_data": [QUESTION], "params": {**TUTORIAL["params"], "max_new_tokens": 100000}}
    response = client.post("/score", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "params.max_new_tokens: must be an integer between 1 and 512, got 100000"
    }
    unknown = client.post("/score", json={"input_data": ["hi"], "params": {"max_tokens": 5}})
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith('params: unknown parameter "max_tokens"')


def test_invalid_json_and_wrong_shapes_are_400(client: Any) -> None:
    broken = client.post(
        "/score", content=b'{"input_data": [', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"].startswith("request body is not valid JSON")
    assert client.post("/score", content=b"").status_code == 400
    assert (
        client.post("/score", content=b"\xff\xfe")
        .json()["error"]
        .startswith("request body is not UTF-8")
    )
    assert client.post("/score", json=["hi"]).status_code == 400


def test_a_huge_body_is_refused_unread(client: Any) -> None:
    body = json.dumps({"input_data": ["x" * (1 << 20)]}).encode()
    response = client.post("/score", content=body)
    assert response.status_code == 413
    assert response.json() == {"error": "request body over 1048576 bytes"}


def test_probes_info_and_methods(client: Any, served_deployment: Any) -> None:
    assert client.get("/liveness").status_code == 200
    assert client.get("/readiness").json() == {"status": "ready"}
    info = client.get("/").json()
    assert info["name"] == "blue" and info["ready"] is True and info["status"] == "ready"
    assert Path(info["model_dir"]).is_dir() and info["error"] is None
    assert client.get("/score").status_code == 405
    assert client.get("/nowhere").status_code == 404


def test_concurrent_requests_are_all_answered(client: Any, served_deployment: Any) -> None:
    """Generation is serialized, not refused: parallel clients all get their answers."""
    import concurrent.futures

    body = {"input_data": [QUESTION], "params": {"max_new_tokens": 6}}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: client.post("/score", json=body), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.text for r in responses}) == 1  # greedy: one answer
    # the probes stay responsive (they never wait for the model)
    assert client.get("/liveness", timeout=2).status_code == 200


def test_each_request_is_logged_without_its_body(client: Any, served_deployment: Any) -> None:
    secret = "my-secret-prompt-7f3a"
    assert client.post("/score", json={"input_data": [secret]}).status_code == 200
    assert (
        client.post("/score", json={"input_data": [secret], "params": {"x": 1}}).status_code == 400
    )
    log = served_deployment.log()
    assert f"serving blue on {served_deployment.url}" in log
    assert " blue POST /score 200 " in log and " blue POST /score 400 " in log
    assert " blue GET /readiness 200 " in log
    assert secret not in log


# --------------------------------------------------------------------------- other processes


def test_liveness_before_readiness_and_graceful_sigterm(
    azureml_model_dir: Path, start_server_process: Callable[..., Any], tmp_path: Path
) -> None:
    """While init() has not finished: alive, not ready, scoring refused with 503."""
    gate = tmp_path / "never-opened"
    server = start_server_process(azureml_model_dir, name="green", env={INIT_GATE_ENV: str(gate)})
    server.wait_listening()
    with server.client(timeout=5) as http:
        assert http.get("/liveness").status_code == 200
        readiness = http.get("/readiness")
        assert readiness.status_code == 503 and readiness.json() == {"status": "loading"}
        refused = http.post("/score", json=TUTORIAL)
        assert refused.status_code == 503
        assert refused.json() == {"error": "the model is not ready (loading)"}
        assert http.get("/").json()["ready"] is False
    started = time.monotonic()
    assert server.stop() == 0  # SIGTERM: a clean exit, not a kill
    assert time.monotonic() - started < 10
    assert "Shutting down" in server.log()


def test_a_model_that_fails_to_load_makes_readiness_500_with_the_error(
    tmp_path: Path, start_server_process: Callable[..., Any]
) -> None:
    server = start_server_process(tmp_path / "no-such-model", name="broken")
    server.wait_listening()
    with server.client(timeout=5) as http:
        deadline = time.monotonic() + 30
        while (readiness := http.get("/readiness")).status_code == 503:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert readiness.status_code == 500
        error = readiness.json()["error"]
        assert error.startswith("FileNotFoundError: model folder ") and "does not exist" in error
        assert "Traceback" not in readiness.text
        assert http.get("/liveness").status_code == 200
        refused = http.post("/score", json=TUTORIAL)
        assert refused.status_code == 503
        assert refused.json()["error"].startswith("the model is not ready (failed to load: ")
    assert "Traceback" in server.log()  # the whole story is in the log, not in the body


def test_a_taken_port_fails_at_once_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "serving.server", "--model-dir", str(tmp_path)]
            + ["--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
    client: httpx.Client, served_deployment: Any
) -> None:
    """Last on purpose: it stops the shared deployment.

    Hot sampling of the longest answers over the most texts a request may hold keeps the
    model busy for seconds (a request's texts are generated as one batch, so it takes the
    length, not the count, to be slow); SIGTERM arrives meanwhile. The request still gets its
    full answer, logged after uvicorn's "Shutting down".
    """
    import concurrent.futures

    body = {
        "input_data": [QUESTION] * 16,
        "params": {"max_new_tokens": 512, "do_sample": True, "temperature": 2.0, "seed": 1},
    }
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/score", json=body)
        time.sleep(0.3)  # the request is at the server (about 1.6 s of generating here)
        assert not in_flight.done(), "the request finished before the signal: test proves nothing"
        exit_code = served_deployment.stop(timeout=60)
        response = in_flight.result(timeout=60)
    assert response.status_code == 200 and len(response.json()) == 16
    assert exit_code == 0
    log = served_deployment.log()
    assert log.index("Shutting down") < log.rindex(" blue POST /score 200 ")
