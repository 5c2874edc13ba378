"""Rollout under load: blue-green rollouts and rollbacks while clients keep calling the endpoint.

    .venv/bin/python -m bench.rollout_load [--requests 2000] [--concurrency 8]
        [--max-new-tokens 8] [--max-seconds 900] [--phases rollout,rollback-smoke,rollback-direct]

In a throwaway state folder, on loopback only: builds the default tiny Phi-3 (or takes
`--base-model DIR`), saves it as MLflow models, registers versions, and rolls v1 out onto an
empty endpoint (no load yet: there is nothing to call). Then, for each phase, `--concurrency`
client threads call the endpoint through its front (key, traffic routing) while the project's
own `plan_rollout` / `execute_rollout` run:

- rollout:          v2 blue -> green (mirror 20%, traffic 10/50/100, probes after each
                    step), blue retired;
- rollback-smoke:   v3 goes to blue and reaches 100% of the traffic, then the smoke check
                    through the endpoint fails (on purpose), so everything is rolled back to
                    green;
- rollback-direct:  a model whose context is too small for any request: its direct test fails
                    and it never gets traffic.

Each phase's load runs from before its rollout starts until the rollout has returned, at least
`--requests` requests were sent and a tail of requests was answered afterwards; it is bounded in
count (`--max-requests`) and time (`--max-seconds`). As a real rollout spaces its steps in time,
each traffic change (mirror, every step, the rollback's restore) is held until `--requests / 4`
more requests were answered, so every split carries load whatever the machine's speed; the
rollout itself is the project's, unchanged. A request fails unless it is answered 200
with the tutorial's shape (a list of one string). Printed per phase: requests, failures (must be
0), which deployment answered over time (the `azureml-model-deployment` header), latency
p50/p95/max, and the rollout's own events at their times. Exit status 1 if any request failed
or a phase did not end as expected.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from backends.local.endpoint.control import LocalEndpoints
from backends.local.workspace import LocalWorkspace
from finetune_phi.rollout import RolloutFailed, execute_rollout, plan_rollout
from finetune_phi.settings import RolloutSettings
from finetune_phi.workspace import DEPLOYMENT_HEADER, ModelVersion, TrafficState

ENDPOINT = "rollout-load"
MODEL = "load-model"
PHASES = ("rollout", "rollback-smoke", "rollback-direct")
# The project's defaults (traffic 10/50/100, 10 probes per step, 20 mirrored, no probe error
# allowed), plus a mirror phase, which the defaults skip.
SETTINGS = RolloutSettings(mirror_percent=20, readiness_timeout_seconds=300)
REQUEST_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Sample:
    """One request: when it started and ended (seconds since the phase began), what came back."""

    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection error, timeout)
    deployment: str | None
    error: str | None  # None: a good answer

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000


class Load:
    """`concurrency` threads posting `body` to `url` until told the rollout is over and enough
    was sent, or the hard bounds (`max_requests`, `max_seconds`) are reached."""

    def __init__(
        self,
        url: str,
        key: str,
        body: Mapping[str, Any],
        *,
        concurrency: int,
        min_requests: int,
        max_requests: int,
        max_seconds: float,
        tail_requests: int,
    ) -> None:
        host = urlparse(url).hostname or ""
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"load goes to loopback only, not {url}")
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.body = json.dumps(body).encode()
        self.concurrency = concurrency
        self.min_requests = min_requests
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.tail_requests = tail_requests
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self.done_at: float | None = None  # when the rollout returned, phase time
        self._lock = threading.Lock()
        self._sent = 0
        self._sent_after_done = 0
        self._threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._threads = [
            threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def rollout_done(self) -> None:
        with self._lock:
            self.done_at = self.now()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(self.max_seconds + REQUEST_TIMEOUT_S + 10)

    def wait_answered(self, count: int) -> None:
        """Until `count` more requests were answered (or the load has stopped)."""
        with self._lock:
            target = len(self.samples) + count
        while any(thread.is_alive() for thread in self._threads):
            with self._lock:
                if len(self.samples) >= target:
                    return
            time.sleep(0.02)

    def _take_ticket(self) -> bool:
        """Whether to send one more request (counted as sent if so)."""
        with self._lock:
            if self._sent >= self.max_requests or self.now() >= self.max_seconds:
                return False
            if (
                self.done_at is not None
                and self._sent >= self.min_requests
                and self._sent_after_done >= self.tail_requests
            ):
                return False
            self._sent += 1
            if self.done_at is not None:
                self._sent_after_done += 1
            return True

    def _worker(self) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while self._take_ticket():
                started = self.now()
                status = deployment = error = None
                try:
                    response = client.post(self.url, content=self.body, headers=self.headers)
                    status = response.status_code
                    deployment = response.headers.get(DEPLOYMENT_HEADER)
                    error = _answer_problem(response)
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                sample = Sample(started, self.now(), status, deployment, error)
                with self._lock:
                    self.samples.append(sample)


def _answer_problem(response: httpx.Response) -> str | None:
    """None for the tutorial's good answer (200, a list of one string), else what is wrong."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        answer = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    if not (isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)):
        return f"unexpected shape: {str(answer)[:200]}"
    return None


# --------------------------------------------------------------------------- phases


class PacedEndpoints(LocalEndpoints):
    """The local endpoints, with each traffic change held until `hold` more requests of `load`
    were answered (see the module docstring); everything else as is."""

    load: Load | None = None
    hold: int = 0
    log: Callable[[str], None] = staticmethod(lambda message: None)

    def set_traffic(self, endpoint: str, state: TrafficState) -> TrafficState:
        applied = super().set_traffic(endpoint, state)
        if self.load is not None and self.hold > 0:
            mirror = f", mirror {dict(applied.mirror_traffic)}" if applied.mirror_traffic else ""
            self.log(
                f"bench: traffic {dict(applied.traffic)}{mirror} applied; held for {self.hold}"
            )
            self.load.wait_answered(self.hold)
        return applied


class PacedWorkspace(LocalWorkspace):
    """The local workspace whose endpoints are `PacedEndpoints`."""

    @cached_property
    def endpoints(self) -> PacedEndpoints:
        return PacedEndpoints(self.layout.root)


@dataclass
class PhaseResult:
    name: str
    samples: list[Sample]
    events: list[tuple[float, str]]  # (phase time, the rollout's event)
    rollout_started: float
    rollout_ended: float
    outcome: str  # "succeeded" or "rolled back: <why>"
    final_traffic: dict[str, int]
    expected_during: frozenset[str]  # deployments that must have answered during the rollout
    expected_after: str  # the one deployment that answers once the rollout returned
    problems: list[str] = field(default_factory=list)  # expectations not met

    @property
    def during(self) -> list[Sample]:
        """The requests started while the rollout ran."""
        return [s for s in self.samples if self.rollout_started <= s.started < self.rollout_ended]

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.error is not None]

    def answered_by(self, *, after: bool | None = None) -> Counter[str]:
        """Good answers per deployment: all, or only those of requests started after (True) /
        before (False) the rollout returned."""
        return Counter(
            s.deployment or "?"
            for s in self.samples
            if s.error is None and (after is None or (s.started >= self.rollout_ended) == after)
        )


def run_phase(
    workspace: PacedWorkspace,
    name: str,
    model: ModelVersion,
    *,
    body: Mapping[str, Any],
    concurrency: int,
    min_requests: int,
    max_requests: int,
    max_seconds: float,
    settings: RolloutSettings = SETTINGS,
    log: Callable[[str], None] = print,
) -> PhaseResult:
    """Roll `model` out while the load runs; the phase's samples, events and checks."""
    traffic = workspace.endpoints.get_traffic(ENDPOINT)
    (live,) = [d for d, pct in traffic.traffic.items() if pct == 100]
    deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(ENDPOINT)}
    plan = plan_rollout(traffic, deployments, f"{model.name}:{model.version}", settings)
    new = plan.new_deployment
    assert new is not None, plan.reason
    smoke_test: Callable[[str | None], Any] | None = None
    if name == "rollout":
        expected_during, expected_after = frozenset({live, new}), new
    elif name == "rollback-smoke":
        expected_during, expected_after = frozenset({live, new}), live
        smoke_test = _smoke_failing_through_the_endpoint
    elif name == "rollback-direct":
        expected_during, expected_after = frozenset({live}), live
    else:
        raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")

    load = Load(
        workspace.endpoints.get_or_create_endpoint(ENDPOINT).scoring_uri,
        workspace.endpoints.get_endpoint_keys(ENDPOINT).primary,
        body,
        concurrency=concurrency,
        min_requests=min_requests,
        max_requests=max_requests,
        max_seconds=max_seconds,
        tail_requests=max(concurrency * 4, min_requests // 20),
    )
    events: list[tuple[float, str]] = []

    def event(message: str) -> None:
        events.append((load.now(), message))
        log(f"  [{load.now():6.1f} s] {message}")

    workspace.endpoints.load, workspace.endpoints.hold, workspace.endpoints.log = (
        load,
        max(1, min_requests // 4),
        event,
    )

    load.start()
    while len(load.samples) < concurrency and load.now() < 30:  # the load is flowing
        time.sleep(0.05)
    rollout_started = load.now()
    try:
        execute_rollout(
            workspace, ENDPOINT, model, plan, settings, smoke_test=smoke_test, log=event
        )
        outcome = "succeeded"
    except RolloutFailed as exc:
        outcome = f"rolled back: {exc}"
        event(f"RolloutFailed: {str(exc)[:160]}")
    load.rollout_done()
    rollout_ended = load.now()
    workspace.endpoints.load = None
    load.join()
    result = PhaseResult(
        name=name,
        samples=sorted(load.samples, key=lambda s: s.started),
        events=events,
        rollout_started=rollout_started,
        rollout_ended=rollout_ended,
        outcome=outcome,
        final_traffic=dict(workspace.endpoints.get_traffic(ENDPOINT).traffic),
        expected_during=expected_during,
        expected_after=expected_after,
    )
    result.problems = check_phase(result, min_requests)
    return result


def _smoke_failing_through_the_endpoint(deployment: str | None) -> str:
    """A smoke check that passes on the new deployment directly and fails through the endpoint,
    i.e. once the new deployment has all the traffic: the latest point a rollout can fail."""
    if deployment is None:
        raise RuntimeError("smoke check through the endpoint failed (on purpose: rollback test)")
    return f"{deployment}: ok"


def check_phase(result: PhaseResult, min_requests: int) -> list[str]:
    """What did not go as this phase must: failures, routing, outcome, counts."""
    problems = []
    if result.failures:
        first = result.failures[0]
        problems.append(f"{len(result.failures)} failed requests; first: {first.error}")
    if len(result.samples) < min_requests:
        problems.append(f"only {len(result.samples)} requests, fewer than {min_requests}")
    # The direct-test rollback never changes the traffic but to restore it: no held steps.
    if result.name != "rollback-direct" and len(result.during) < min_requests:
        problems.append(
            f"only {len(result.during)} requests while the rollout ran, fewer than {min_requests}"
        )
    during = set(result.answered_by(after=False))
    if not result.expected_during <= during:
        problems.append(
            f"during the rollout answers came from {sorted(during)}, expected "
            f"{sorted(result.expected_during)}"
        )
    after = result.answered_by(after=True)
    if not after:
        problems.append("no request was answered after the rollout returned")
    elif set(after) != {result.expected_after}:
        problems.append(
            f"after the rollout answers came from {dict(after)}, expected only "
            f"{result.expected_after!r}"
        )
    if result.final_traffic != {result.expected_after: 100}:
        problems.append(f"final traffic {result.final_traffic}")
    succeeded = result.outcome == "succeeded"
    if succeeded != (result.name == "rollout"):
        problems.append(f"outcome: {result.outcome}")
    return problems


# --------------------------------------------------------------------------- report


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_line(samples: Sequence[Sample]) -> str:
    latencies = [s.latency_ms for s in samples]
    return (
        f"p50 {statistics.median(latencies) if latencies else 0:.1f} ms, "
        f"p95 {percentile(latencies, 95):.1f} ms, max {max(latencies, default=0):.1f} ms"
    )


def timeline(result: PhaseResult, rows: int = 16) -> list[str]:
    """Answers per deployment in time buckets (by request start), with the rollout's events."""
    names = sorted({s.deployment or "?" for s in result.samples if s.error is None})
    end = max((s.ended for s in result.samples), default=0.0)
    width = max(1.0, round(end / rows + 0.5))
    header = f"  {'t (s)':>11}  " + "  ".join(f"{n:>6}" for n in names) + "  failed   events"
    lines = [header]
    start = 0.0
    events = list(result.events)
    while start < end:
        stop = start + width
        bucket = [s for s in result.samples if start <= s.started < stop]
        counts = Counter(s.deployment or "?" for s in bucket if s.error is None)
        failed = sum(1 for s in bucket if s.error is not None)
        here = [f"{t:.1f} {m[:100]}" for t, m in events if start <= t < stop]
        cells = "  ".join(f"{counts.get(n, 0):>6}" for n in names)
        lines.append(
            f"  {start:5.0f}-{stop:<5.0f}  {cells}  {failed:>6}   " + (" | ".join(here) or "")
        )
        start = stop
    return lines


def describe(result: PhaseResult) -> list[str]:
    samples = result.samples
    during = result.during
    lines = [
        f"phase {result.name}: {result.outcome[:200]}",
        f"  rollout {result.rollout_ended - result.rollout_started:.1f} s; "
        f"final traffic {result.final_traffic}",
        f"  requests {len(samples)} ({len(during)} while the rollout ran), "
        f"failed {len(result.failures)}",
        f"  answered by: all {dict(sorted(result.answered_by().items()))}; after the rollout "
        f"returned {dict(sorted(result.answered_by(after=True).items()))}",
        f"  latency {latency_line(samples)}",
        *timeline(result),
    ]
    lines += [f"  PROBLEM: {p}" for p in result.problems] or ["  checks: all passed"]
    return lines


# --------------------------------------------------------------------------- set-up


def save_models(base: Path, folder: Path) -> dict[str, Path]:
    """The base model as MLflow models: "good", and "short" (its context, 8 tokens, fits no
    request: every one is refused with a 400, so its direct test fails)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    paths = {}
    for kind, overrides in (("good", {}), ("short", {"max_position_embeddings": 8})):
        model = AutoModelForCausalLM.from_pretrained(base)
        for key, value in overrides.items():
            setattr(model.config, key, value)
        paths[kind] = folder / kind
        save_mlflow_model(model, AutoTokenizer.from_pretrained(base), paths[kind])
    return paths


def run(
    state_dir: Path,
    base_model: Path,
    *,
    phases: Sequence[str] = PHASES,
    requests: int = 2000,
    concurrency: int = 8,
    max_new_tokens: int = 8,
    max_requests: int | None = None,
    max_seconds: float = 900.0,
    log: Callable[[str], None] = print,
) -> list[PhaseResult]:
    """Set the endpoint up in `state_dir`, run `phases` under load, tear everything down."""
    body = {
        "input_data": ["Who founded Microsoft?"],
        "params": {"max_new_tokens": max_new_tokens, "do_sample": False},
    }
    workspace = PacedWorkspace(state_dir)
    results: list[PhaseResult] = []
    try:
        models = save_models(base_model, state_dir.parent / "models")
        sources = {"v1": "good", "v2": "good", "v3": "good", "short": "short"}
        versions = {
            key: workspace.registry.register_model(
                MODEL, str(models[kind]), tags={"case": key}, job_name=f"load-{key}"
            )
            for key, kind in sources.items()
        }
        workspace.endpoints.get_or_create_endpoint(ENDPOINT)
        first = plan_rollout(
            workspace.endpoints.get_traffic(ENDPOINT),
            {},
            f"{MODEL}:{versions['v1'].version}",
            SETTINGS,
        )
        log("set-up: v1 onto the empty endpoint (no load)")
        execute_rollout(workspace, ENDPOINT, versions["v1"], first, SETTINGS, log=lambda _: None)
        model_of = {"rollout": "v2", "rollback-smoke": "v3", "rollback-direct": "short"}
        for name in phases:
            log(f"phase {name}: rolling out {model_of[name]} under load")
            result = run_phase(
                workspace,
                name,
                versions[model_of[name]],
                body=body,
                concurrency=concurrency,
                min_requests=requests,
                max_requests=max_requests or requests * 20,
                max_seconds=max_seconds,
                log=log,
            )
            results.append(result)
    finally:
        if ENDPOINT in workspace.endpoints.list_endpoints():
            workspace.endpoints.delete_endpoint(ENDPOINT)
        workspace.endpoints.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="at least, per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=None, help="per phase (20x)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per phase")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--base-model", type=Path, default=None, help="a tiny Phi-3 folder")
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    # Offline and quiet, as the tests run (set before transformers and mlflow are imported).
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("MLFLOW_ENABLE_TELEMETRY", "false"),
        ("DO_NOT_TRACK", "1"),
    ):
        os.environ.setdefault(name, value)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-load-") as tmp:
        base = args.base_model
        if base is None:
            from finetune_phi.tiny_model import build_default_tiny_phi3

            base = build_default_tiny_phi3(Path(tmp) / "tiny")
        results = run(
            Path(tmp) / "state",
            base,
            phases=phases,
            requests=args.requests,
            concurrency=args.concurrency,
            max_new_tokens=args.max_new_tokens,
            max_requests=args.max_requests,
            max_seconds=args.max_seconds,
        )
    print()
    for result in results:
        print("\n".join(describe(result)))
        print()
    total = sum(len(r.samples) for r in results)
    failed = sum(len(r.failures) for r in results)
    everything = [s for r in results for s in r.samples]
    print(
        f"all phases: {total} requests, {failed} failed, latency {latency_line(everything)}; "
        f"wall {time.monotonic() - started:.0f} s"
    )
    return 1 if failed or any(r.problems for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
