"""The front process: keys, traffic split, header routing, mirroring, errors, health, metrics.

All through real processes on loopback: the front and stand-in deployment servers.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from endpoint_helpers import Endpoint

from finetune_phi.workspace import DEPLOYMENT_HEADER

pytestmark = pytest.mark.slow


def _health(ep: Endpoint) -> dict:
    response = ep.client.get(ep.url.replace("/score", "/health"))
    assert response.status_code == 200
    return response.json()


def _metrics(ep: Endpoint) -> dict:
    return ep.client.get(ep.url.replace("/score", "/metrics")).json()


def _port(ep: Endpoint, deployment: str) -> int:
    port = ep.control.status(ep.name)["deployments"][deployment]["port"]
    assert isinstance(port, int)
    return port


def _scored(ep: Endpoint, deployment: str) -> int:
    """How many /score requests the deployment's own server received."""
    stats = ep.client.get(f"http://127.0.0.1:{_port(ep, deployment)}/stats").json()
    return int(stats["scored"])


def _within(count: int, n: int, p: float, sds: float = 4.0) -> bool:
    """Binomial(n, p) tolerance: `sds` standard deviations around n*p (not flaky)."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def test_key_required(live: Endpoint) -> None:
    live.route({"blue": 100})
    missing = live.post(key=None)
    assert missing.status_code == 401
    assert missing.json() == {"error": "missing Authorization header"}
    wrong = live.post(key="not-the-key")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid key"
    assert live.post(key=live.keys.primary[:-1]).status_code == 401  # a prefix is not the key
    basic = live.client.post(live.url, json={}, headers={"Authorization": live.keys.primary})
    assert basic.status_code == 401  # the scheme is required
    assert live.post(key="primary").status_code == 200
    assert live.post(key="secondary").status_code == 200


def test_response_names_the_deployment(live: Endpoint) -> None:
    live.route({"blue": 100})
    response = live.post({"question": "Who founded Microsoft?"})
    assert response.status_code == 200
    assert response.headers[DEPLOYMENT_HEADER] == "blue"
    assert response.headers["x-request-id"]
    assert response.json() == {"deployment": "blue", "echo": {"question": "Who founded Microsoft?"}}


def test_traffic_split_70_30(live: Endpoint) -> None:
    live.route({"blue": 70, "green": 30})
    n = 400
    answered: Counter[str] = Counter()
    for _ in range(n):
        response = live.post()
        assert response.status_code == 200
        assert response.headers[DEPLOYMENT_HEADER] == response.json()["deployment"]
        answered[response.json()["deployment"]] += 1
    assert set(answered) == {"blue", "green"}
    assert _within(answered["blue"], n, 0.7), answered


def test_header_routing_bypasses_traffic(live: Endpoint) -> None:
    live.route({"blue": 100, "green": 0}, mirror={"slow-shadow": 50})
    before = _scored(live, "slow-shadow")
    for _ in range(10):
        response = live.post(**{DEPLOYMENT_HEADER: "green"})
        assert response.status_code == 200
        assert response.json()["deployment"] == "green"
        assert response.headers[DEPLOYMENT_HEADER] == "green"
    assert _scored(live, "slow-shadow") == before  # header requests are never mirrored
    unknown = live.post(**{DEPLOYMENT_HEADER: "purple"})
    assert unknown.status_code == 404
    assert "purple" in unknown.json()["error"]


def test_no_live_traffic_is_503(live: Endpoint) -> None:
    live.route({"blue": 0, "green": 0})
    response = live.post()
    assert response.status_code == 503
    assert response.json() == {"error": "no deployment has traffic"}
    assert live.post(**{DEPLOYMENT_HEADER: "blue"}).status_code == 200  # the header still works


def _settle_mirrors(ep: Endpoint) -> None:
    deadline = time.monotonic() + 10
    while _metrics(ep)["mirrors_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


def test_mirror_copies_a_share_and_answers_from_live(live: Endpoint) -> None:
    live.route({"blue": 100, "green": 0}, mirror={"green": 20})
    _settle_mirrors(live)
    green_before = _scored(live, "green")
    mirrored_before = _metrics(live)["deployments"].get("green", {}).get("mirrored", 0)
    n = 400
    for _ in range(n):
        response = live.post()
        assert response.status_code == 200
        assert response.json()["deployment"] == "blue"
        assert response.headers[DEPLOYMENT_HEADER] == "blue"
    _settle_mirrors(live)
    copies = _scored(live, "green") - green_before  # counted by green's own server
    assert _within(copies, n, 0.2), copies
    assert _metrics(live)["deployments"]["green"]["mirrored"] - mirrored_before == copies


def test_a_slow_failing_mirror_never_delays_or_fails_live(live: Endpoint) -> None:
    # slow-shadow answers 500 after 1.5 s; half of the requests are copied to it.
    live.route({"blue": 100}, mirror={"slow-shadow": 50})
    errors_before = _metrics(live)["deployments"].get("slow-shadow", {}).get("mirror_errors", 0)
    started = time.monotonic()
    for _ in range(20):
        response = live.post()
        assert response.status_code == 200 and response.json()["deployment"] == "blue"
    assert time.monotonic() - started < 5  # about 10 copies x 1.5 s had they been waited for
    _settle_mirrors(live)
    shadow = _metrics(live)["deployments"]["slow-shadow"]
    assert shadow["mirror_errors"] > errors_before
    assert shadow["requests"] == 0  # copies are not live requests


def test_upstream_errors_pass_through_and_are_counted(live: Endpoint) -> None:
    live.route({"blue": 100})
    before = _metrics(live)["deployments"].get("broken", {"errors": 0, "requests": 0})
    response = live.post(**{DEPLOYMENT_HEADER: "broken"})
    assert response.status_code == 500
    assert response.json() == {"error": "stand-in told to fail /score"}
    assert response.headers[DEPLOYMENT_HEADER] == "broken"
    bad_json = live.client.post(
        live.url,
        content=b"{not json",
        headers={"Authorization": f"Bearer {live.keys.primary}", DEPLOYMENT_HEADER: "blue"},
    )
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]
    after = _metrics(live)["deployments"]
    assert after["broken"]["errors"] == before["errors"] + 1
    assert after["broken"]["requests"] == before["requests"] + 1
    assert after["blue"]["client_errors"] >= 1


def test_an_oversized_body_is_refused_by_the_front_itself(live: Endpoint) -> None:
    """Over the deployment's 1 MiB cap: a 413 from the front, which never forwards it (and
    never holds more than the cap of it); a body at the cap still goes through."""
    from serving.server import MAX_BODY_BYTES

    live.route({"blue": 100})
    scored = _scored(live, "blue")
    over = live.post({"q": "x" * MAX_BODY_BYTES})
    assert over.status_code == 413
    assert over.json() == {"error": f"request body over {MAX_BODY_BYTES} bytes"}
    assert DEPLOYMENT_HEADER not in over.headers  # answered by the front, not a deployment
    assert _scored(live, "blue") == scored
    at_cap = live.post({"q": "x" * (MAX_BODY_BYTES - len('{"q": ""}'))})
    assert at_cap.status_code == 200
    assert _scored(live, "blue") == scored + 1


def test_unreachable_deployment_is_502(live: Endpoint) -> None:
    live.route({"blue": 100})
    live.control.create_or_update_deployment(live.spec("doomed"))
    try:
        pid = live.control.status(live.name)["deployments"]["doomed"]["pid"]
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while live.control.get_deployment(live.name, "doomed").ready:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = live.post(**{DEPLOYMENT_HEADER: "doomed"})
        assert response.status_code == 502
        assert "'doomed' is unreachable" in response.json()["error"]
        assert response.headers[DEPLOYMENT_HEADER] == "doomed"
        assert live.post().status_code == 200  # the others are untouched
    finally:
        live.control.delete_deployment(live.name, "doomed")


def test_health_and_metrics_need_no_key_and_hold_no_secrets(live: Endpoint) -> None:
    live.route({"blue": 100})
    health = _health(live)
    assert health["status"] == "ok"
    assert health["revision"] == live.control.status(live.name)["revision"]
    assert set(health["deployments"]) >= {"blue", "green", "broken", "slow-shadow"}
    assert health["traffic"] == {"blue": 100}
    metrics = _metrics(live)
    assert metrics["deployments"]["blue"]["requests"] > 0
    for text in (
        live.client.get(live.url.replace("/score", "/health")).text,
        live.client.get(live.url.replace("/score", "/metrics")).text,
    ):
        assert live.keys.primary not in text and live.keys.secondary not in text


def test_log_has_one_line_per_request_and_no_secrets(live: Endpoint) -> None:
    live.route({"blue": 100})
    marker = "a-body-that-must-not-be-logged"
    live.post({"secret": marker})
    live.post(key="wrong-key-value-xyz")
    front_log = (live.control.state_dir / "endpoints" / live.name / "front.log").read_text()
    assert "deployment=blue status=200 latency_ms=" in front_log
    assert "status=401" in front_log
    for secret in (marker, live.keys.primary, live.keys.secondary, "wrong-key-value-xyz"):
        assert secret not in front_log


def test_other_routes_are_json_errors(live: Endpoint) -> None:
    base = live.url.replace("/score", "")
    assert live.client.get(f"{base}/nope").status_code == 404
    wrong_method = live.client.get(live.url)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_front_serves_concurrent_requests(live: Endpoint) -> None:
    live.route({"blue": 50, "green": 50})

    def one(_: int) -> int:
        return live.post().status_code  # one client, shared by the threads

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(64)))
    assert codes == [200] * 64
