"""Property-based fuzzing of the scoring API: no request body, however odd, gets a 5xx.

In process: the real deployment app (`serving.server.create_app`, the real scoring script, the
real tiny model loaded once) driven through starlette's TestClient, with over 1,000 generated
bodies: valid-ish shapes with random types and values (hypothesis strategies in
reliability_helpers), then raw bytes (random, and valid bodies with bytes edited). Over real
HTTP: a smaller run through the endpoint's front with a valid key. Every answer must be a 200
of the right shape or a 4xx JSON error, and the server must still answer a good request at the
end. Runs are derandomized (the same cases every time) with no deadline, so CI is stable.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import (
    BODIES,
    GOOD_REQUEST,
    RAW_BODIES,
    LiveEndpoint,
    assert_error_body,
    assert_good_answer,
    encode,
)
from starlette.testclient import TestClient

from serving.server import ServerConfig, create_app

STRUCTURED_CASES = 800
RAW_CASES = 400
FRONT_CASES = 200
JSON_HEADERS = {"content-type": "application/json"}


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,  # the same cases on every run
        database=None,  # nothing written to .hypothesis/
        deadline=None,  # a case that generates may take longer on a busy machine
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


@pytest.fixture(scope="module")
def scoring_app(reliability_model_dir: Path) -> Iterator[TestClient]:
    """The deployment app in process, the real scoring script's init() done (model loaded)."""
    saved = os.environ.get("AZUREML_MODEL_DIR")
    config = ServerConfig(model_dir=reliability_model_dir, name="fuzz")
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while config.state.status == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert config.state.ready, config.state
        yield client
    if saved is None:  # the app's lifespan sets it for the scoring script
        os.environ.pop("AZUREML_MODEL_DIR", None)
    else:
        os.environ["AZUREML_MODEL_DIR"] = saved


def check(response: Any, statuses: Counter[int]) -> None:
    """No 5xx; a 200 has an answer's shape, a 4xx the error body."""
    statuses[response.status_code] += 1
    assert response.status_code < 500, response.text[:500]
    if response.status_code == 200:
        assert_good_answer(response.json())
    else:
        assert 400 <= response.status_code < 500, response.status_code
        assert_error_body(response)


def run_fuzz(send: Callable[[bytes], Any], structured: int, raw: int) -> tuple[Counter[int], float]:
    """Send `structured` generated JSON bodies, then `raw` byte strings; status counts, seconds."""
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    @fuzz_settings(structured)
    @given(body=BODIES)
    def structured_bodies(body: Any) -> None:
        check(send(encode(body)), statuses)

    @fuzz_settings(raw)
    @given(content=RAW_BODIES)
    def raw_bodies(content: bytes) -> None:
        check(send(content), statuses)

    if structured:
        structured_bodies()
    if raw:
        raw_bodies()
    return statuses, time.monotonic() - started


def report(where: str, statuses: Counter[int], seconds: float) -> None:
    cases = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nfuzz {where}: {cases} cases, {server_errors} 5xx, {seconds:.1f} s; "
        f"statuses {dict(sorted(statuses.items()))}"
    )


def test_fuzz_the_scoring_app_in_process(scoring_app: TestClient) -> None:
    def send(content: bytes) -> Any:  # starlette's TestClient has its own Response class
        return scoring_app.post("/score", content=content, headers=JSON_HEADERS)

    statuses, seconds = run_fuzz(send, STRUCTURED_CASES, RAW_CASES)
    report("in process", statuses, seconds)

    assert sum(statuses.values()) >= 1000
    assert not [status for status in statuses if status >= 500]
    assert statuses[200] >= 50, statuses  # the generator reaches the model, not just the parser
    assert scoring_app.get("/readiness").status_code == 200
    good = scoring_app.post("/score", json=GOOD_REQUEST)
    assert good.status_code == 200 and isinstance(good.json()[0], str)


@pytest.mark.slow
def test_fuzz_through_the_front_over_http(live_endpoint: LiveEndpoint) -> None:
    headers = {**JSON_HEADERS, **live_endpoint.auth("front")}

    def send(content: bytes) -> httpx.Response:
        return live_endpoint.client.post(live_endpoint.front_url, content=content, headers=headers)

    statuses, seconds = run_fuzz(send, FRONT_CASES * 3 // 4, FRONT_CASES // 4)
    report("through the front", statuses, seconds)

    assert sum(statuses.values()) >= FRONT_CASES
    assert not [status for status in statuses if status >= 500]
    live_endpoint.assert_healthy("front")
    live_endpoint.assert_healthy("direct")


def test_a_generated_body_is_json_even_with_lone_surrogates() -> None:
    """The encoder sends surrogates as JSON escapes, which is what makes those cases reach the
    parser rather than fail in the client."""
    assert encode({"input_data": ["\ud800"]}) == b'{"input_data": ["\\ud800"]}'
    assert st.text().example is not None  # hypothesis is importable and working
