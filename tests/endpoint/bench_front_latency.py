"""What the front costs: latency of a tiny /score through the front vs straight to the server.

    .venv/bin/python tests/endpoint/bench_front_latency.py [--requests 200]

Starts a throwaway endpoint (state in a temporary folder) with one stand-in deployment at
100 %, warms both paths up, then sends N sequential requests each way, alternating (front,
direct, front, ...) so both see the same machine load, over one keep-alive client each.
Prints p50/p90/p99 in milliseconds. Not a test (pytest does not collect it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
# The repository, tests/ (shared helpers such as endpoint_cleanup) and this folder.
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from endpoint_helpers import StandIn, cleanup, start  # noqa: E402

from backends.local.endpoint.control import LocalEndpoints  # noqa: E402
from finetune_phi.workspace import TrafficState  # noqa: E402


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100)
    return f"p50 {statistics.median(ordered):6.2f} ms  p90 {q[89]:6.2f} ms  p99 {q[98]:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        control = LocalEndpoints(root / "state", StandIn())
        try:
            endpoint = start(control, root / "model", "bench", {"blue": []})
            control.set_traffic("bench", TrafficState({"blue": 100}))
            port = control.status("bench")["deployments"]["blue"]["port"]
            direct_url = f"http://127.0.0.1:{port}/score"
            body = {"input_data": ["Who founded Microsoft?"], "params": {"max_new_tokens": 8}}
            auth = {"Authorization": f"Bearer {endpoint.keys.primary}"}
            front_ms: list[float] = []
            direct_ms: list[float] = []
            with httpx.Client(trust_env=False) as via, httpx.Client(trust_env=False) as straight:
                for _ in range(20):  # warm up connections and code paths
                    via.post(endpoint.url, json=body, headers=auth).raise_for_status()
                    straight.post(direct_url, json=body).raise_for_status()
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    via.post(endpoint.url, json=body, headers=auth).raise_for_status()
                    t1 = time.perf_counter()
                    straight.post(direct_url, json=body).raise_for_status()
                    t2 = time.perf_counter()
                    front_ms.append((t1 - t0) * 1000)
                    direct_ms.append((t2 - t1) * 1000)
            endpoint.client.close()
        finally:
            cleanup(control)
    print(f"{args.requests} sequential requests each way, tiny JSON body, loopback")
    print(f"through the front  {_percentiles(front_ms)}")
    print(f"direct to server   {_percentiles(direct_ms)}")
    added = statistics.median(front_ms) - statistics.median(direct_ms)
    print(f"front adds (p50)   {added:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
