"""Benchmark the local endpoint with the real tiny model: rollout time and front overhead.

    .venv/bin/python -m bench.endpoint [--requests 100] [--max-new-tokens 16]

In a throwaway state folder: builds the default tiny Phi-3, registers it twice as MLflow
versions, rolls v1 out to an empty endpoint, then v2 blue-green (10/50/100 with probes), and
times both. Then sends the tutorial's request N times through the front (key, routing) and N
times straight to the deployment's own port, alternating so both paths see the same machine
load, and prints p50/p90 of each, for each `--max-new-tokens` (default 1 and 16: with one
token the generation is short and steady, so the difference is mostly the front's own cost).
Figures, not a test: compare the two paths within one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from backends.local.workspace import LocalWorkspace
from finetune_phi.rollout import execute_rollout, plan_rollout
from finetune_phi.settings import RolloutSettings
from finetune_phi.tiny_model import build_default_tiny_phi3

ENDPOINT = "bench"


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(sorted(samples), n=10)
    return f"p50 {statistics.median(samples):7.1f} ms   p90 {q[8]:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument(
        "--max-new-tokens", default="1,16", help="comma-separated, one measurement each"
    )
    args = parser.parse_args()
    requests = [
        {
            "input_data": ["Who founded Microsoft?"],
            "params": {"max_new_tokens": int(tokens), "do_sample": False},
        }
        for tokens in args.max_new_tokens.split(",")
    ]
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        workspace = LocalWorkspace(Path(tmp) / "state")
        try:
            run(workspace, requests, args.requests, Path(tmp))
        finally:
            if ENDPOINT in workspace.endpoints.list_endpoints():
                workspace.endpoints.delete_endpoint(ENDPOINT)
    return 0


def run(workspace: LocalWorkspace, requests: list[dict], count: int, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    base = build_default_tiny_phi3(tmp / "tiny")
    mlflow_dir = tmp / "mlflow-model"
    save_mlflow_model(
        AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base), mlflow_dir
    )
    versions = [
        workspace.registry.register_model(
            "bench-model", str(mlflow_dir), tags={}, job_name=f"bench-{i}"
        )
        for i in (1, 2)
    ]
    settings = RolloutSettings()
    workspace.endpoints.get_or_create_endpoint(ENDPOINT)
    for version in versions:
        deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(ENDPOINT)}
        plan = plan_rollout(
            workspace.endpoints.get_traffic(ENDPOINT),
            deployments,
            f"bench-model:{version.version}",
            settings,
        )
        started = time.monotonic()
        report = execute_rollout(workspace, ENDPOINT, version, plan, settings, log=lambda _: None)
        kind = "first rollout (empty endpoint)" if version is versions[0] else "blue-green"
        steps = " -> ".join(str(dict(s)) for s in plan.traffic_steps)
        print(f"{kind:32s} {time.monotonic() - started:6.1f} s   {steps}")
        assert report.final_traffic

    status = workspace.endpoints.status(ENDPOINT)
    (live,) = [name for name, pct in status["traffic"].items() if pct == 100]
    direct_url = f"http://127.0.0.1:{status['deployments'][live]['port']}/score"
    key = workspace.endpoints.get_endpoint_keys(ENDPOINT).primary
    front = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    direct = httpx.Client(timeout=60)
    for request in requests:
        measure_front_overhead(front, status["scoring_uri"], direct, direct_url, request, count)


def measure_front_overhead(
    front: httpx.Client,
    front_url: str,
    direct: httpx.Client,
    direct_url: str,
    request: dict,
    count: int,
) -> None:
    samples: dict[str, list[float]] = {"through the front": [], "direct to deployment": []}
    for _ in range(3):  # warm both paths (connections, first generation)
        front.post(front_url, json=request).raise_for_status()
        direct.post(direct_url, json=request).raise_for_status()
    for _ in range(count):
        for label, client, url in (
            ("through the front", front, front_url),
            ("direct to deployment", direct, direct_url),
        ):
            started = time.perf_counter()
            client.post(url, json=request).raise_for_status()
            samples[label].append((time.perf_counter() - started) * 1000)
    print(f"latency, {count} requests each, max_new_tokens={request['params']['max_new_tokens']}:")
    for label, values in samples.items():
        print(f"  {label:22s} {percentiles(values)}")
    overhead = statistics.median(samples["through the front"]) - statistics.median(
        samples["direct to deployment"]
    )
    print(f"  front overhead (p50 difference): {overhead:.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
