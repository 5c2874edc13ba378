"""The endpoint front: what an Azure managed online endpoint's router does, on loopback.

    python -m backends.local.endpoint.front --state-dir DIR --endpoint NAME --port PORT

One process per endpoint (started detached by the control plane). It checks the key, picks a
deployment (the `azureml-model-deployment` header, else a weighted draw over the traffic map),
proxies the request to that deployment's server process, and copies a share of requests to the
mirror deployment in the background. Routes:

- `POST /score` (key): 200/4xx/5xx as the deployment answered; 401 no or wrong key; 404 the
  header names no deployment; 503 no (healthy) deployment has traffic; 502 the deployment cannot
  be reached; 504 it did not answer in time. Every proxied response carries
  `azureml-model-deployment: <who answered>` and `x-request-id`.
- `GET /health` (no key): `{"status": "ok", "endpoint", "revision", "deployments", "traffic",
  "mirror_traffic", "unhealthy"}`; the control plane reads `revision` back to confirm a change
  applied.
- `GET /metrics` (no key): per-deployment counts of requests, errors and latency since start.

The front never writes state. It re-reads `endpoint.json` and `keys.json` when their stat
changes (checked on every request: two `stat` calls), so the control plane changes traffic or
rotates a key by writing the files; a restarted front reads the same files and serves the same
way. Request bodies and keys are never logged.

Crashed deployments (Azure: an instance's container exits): a deployment with live traffic
whose server refuses connections (seen on a request, or by the once-a-second check) is
unhealthy until its `/readiness` answers 200 again. Live requests go to the healthy deployments
with traffic (a request that failed on a dead server is sent to one of them instead: scoring
is stateless); with none left the answer is a 503 JSON error naming the unhealthy
deployment. Requests that name a deployment in the header still go to it. The front's
supervisor thread (`supervisor.py`) restarts the dead server: the one part of the front that
writes state, through the control plane and its lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.local.endpoint.rules import pick_deployment, should_mirror
from backends.local.endpoint.state import EndpointRecord, EndpointStore
from backends.local.endpoint.supervisor import DEFAULT_MAX_RESTARTS, Supervisor
from finetune_phi.workspace import DEPLOYMENT_HEADER, EndpointKeys
from serving.server import MAX_BODY_BYTES, read_body

log = logging.getLogger("backends.local.endpoint.front")

REQUEST_ID_HEADER = "x-request-id"
MAX_MIRRORS_IN_FLIGHT = 64  # beyond this, mirror copies are dropped (and counted), not queued
DEFAULT_UPSTREAM_TIMEOUT = 180.0  # Azure's request_timeout_ms tops out at 180 s
HEALTH_INTERVAL = 1.0  # seconds between checks of the deployments with live traffic


@dataclass(frozen=True)
class Upstream:
    """A deployment's answer, read whole: what the front copies back to its client."""

    status: int
    content_type: str | None
    body: bytes


# What a failed upstream call raises. Timeouts first: aiohttp's are TimeoutErrors, and its
# connect timeout is also a ClientError.
UPSTREAM_TIMEOUT_ERRORS = (TimeoutError,)
UPSTREAM_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


@dataclass
class Counters:
    """What one deployment saw through this front since it started."""

    requests: int = 0  # live and header-routed requests proxied to it
    errors: int = 0  # of those, 5xx answers and unreachable/timeouts (what a rollout watches)
    client_errors: int = 0  # of those, 4xx answers
    latency_ms_total: float = 0.0
    mirrored: int = 0  # mirror copies sent to it
    mirror_errors: int = 0  # mirror copies that failed (5xx or unreachable); never seen by users
    mirror_dropped: int = 0  # mirror copies skipped because too many were in flight


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Front:
    """The front's state: the endpoint record and keys it serves, the upstream client, the
    counters. Reloaded lazily from the files whenever their stat changes."""

    def __init__(
        self,
        store: EndpointStore,
        *,
        upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.upstream_timeout = upstream_timeout
        self.rng = rng or random.Random()
        self.record: EndpointRecord | None = None
        self.keys: EndpointKeys | None = None
        self._seen: tuple[Any, Any] = (None, None)
        self.counters: dict[str, Counters] = {}
        self.started_at = time.time()
        # aiohttp rather than httpx: about 0.3 ms less per proxied request here, which halved
        # the front's p50 overhead (BENCHMARKS.md); made in the app's lifespan.
        self.client: aiohttp.ClientSession | None = None
        self._mirrors: set[asyncio.Task[None]] = set()
        self.down: dict[str, int] = {}  # unhealthy deployment -> the port that refused

    # ------------------------------------------------------------------ state

    def refresh(self) -> None:
        """Re-read the state and keys files if either changed since the last look."""
        seen = (_stat_key(self.store.state_file), _stat_key(self.store.keys_file))
        if seen == self._seen:
            return
        try:
            record = self.store.read_or_none()
            keys = self.store.read_keys() if seen[1] is not None else None
        except Exception as exc:  # keep serving the last good state; say why once per change
            log.error("could not reload endpoint state: %s", type(exc).__name__)
            self._seen = seen
            return
        if record is not None and (self.record is None or record.revision != self.record.revision):
            log.info(
                "serving revision %d: traffic=%s mirror=%s",
                record.revision,
                record.traffic,
                record.mirror_traffic,
            )
        self.record, self.keys, self._seen = record, keys, seen

    def routable(self) -> dict[str, int]:
        """Deployment name -> port for deployments the front may send requests to."""
        if self.record is None:
            return {}
        return {
            name: d.port
            for name, d in self.record.deployments.items()
            if d.port is not None and d.provisioning_state != "Deleting"
        }

    def live_traffic(self, ports: dict[str, int]) -> dict[str, int]:
        """The traffic map without the deployments that are unhealthy or not routable."""
        traffic = self.record.traffic if self.record is not None else {}
        return {
            name: pct
            for name, pct in traffic.items()
            if name in ports and self.down.get(name) != ports[name]
        }

    def mark_down(self, name: str, port: int) -> None:
        if self.down.get(name) != port:
            log.warning("deployment %s (port %d) refuses connections: unhealthy", name, port)
        self.down[name] = port

    async def watch(self, interval: float = HEALTH_INTERVAL) -> None:
        """Every `interval` s: a deployment with live traffic that refuses connections is
        marked unhealthy; an unhealthy one is healthy again once its /readiness answers 200.
        A TCP connect is the live check, so the servers' logs get no line per check."""
        while True:
            await asyncio.sleep(interval)
            self.refresh()
            ports = self.routable()
            self.down = {n: p for n, p in self.down.items() if ports.get(n) == p}
            traffic = self.record.traffic if self.record is not None else {}
            for name, port in ports.items():
                if self.down.get(name) == port:
                    if await self._ready(port):
                        log.info("deployment %s (port %d) is ready again: healthy", name, port)
                        self.down.pop(name, None)
                elif traffic.get(name, 0) > 0 and not await _accepts(port):
                    self.mark_down(name, port)

    async def _ready(self, port: int) -> bool:
        assert self.client is not None
        try:
            async with self.client.get(
                f"http://127.0.0.1:{port}/readiness", timeout=aiohttp.ClientTimeout(total=2.0)
            ) as response:
                return response.status == 200
        except (*UPSTREAM_TIMEOUT_ERRORS, *UPSTREAM_TRANSPORT_ERRORS):
            return False

    def authorized(self, header: str | None) -> str | None:
        """None if the Authorization header carries a valid key, else why not (no secrets)."""
        if not header:
            return "missing Authorization header"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Authorization must be 'Bearer <key>'"
        if self.keys is None:
            return "the endpoint has no keys"
        given = token.strip().encode()
        # Compare against both keys every time: the time taken says nothing about which matched.
        ok_primary = hmac.compare_digest(given, self.keys.primary.encode())
        ok_secondary = hmac.compare_digest(given, self.keys.secondary.encode())
        return None if (ok_primary or ok_secondary) else "invalid key"

    @property
    def mirrors_in_flight(self) -> int:
        return len(self._mirrors)

    def counter(self, name: str) -> Counters:
        return self.counters.setdefault(name, Counters())

    # ------------------------------------------------------------------ upstream

    async def forward(self, name: str, port: int, body: bytes, headers: dict[str, str]) -> Upstream:
        assert self.client is not None, "the front's client is made in the app's lifespan"
        async with self.client.post(
            f"http://127.0.0.1:{port}/score", data=body, headers=headers
        ) as response:
            return Upstream(
                response.status, response.headers.get("content-type"), await response.read()
            )

    def mirror(self, name: str, port: int, body: bytes, headers: dict[str, str]) -> None:
        """Send a copy to the mirror deployment in the background; its answer is discarded."""
        counters = self.counter(name)
        if len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            counters.mirror_dropped += 1
            return
        counters.mirrored += 1

        async def shadow() -> None:
            try:
                response = await self.forward(name, port, body, headers)
                if response.status >= 500:
                    counters.mirror_errors += 1
            except Exception:  # a mirror never fails anything but itself
                counters.mirror_errors += 1

        task = asyncio.get_running_loop().create_task(shadow())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def close(self) -> None:
        for task in list(self._mirrors):
            task.cancel()
        if self.client is not None:
            await self.client.close()


async def _accepts(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on loopback `port`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except OSError:  # refused, or TimeoutError (an OSError too)
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(front: Front) -> Starlette:
    """The front's Starlette app around `front` (tests can build one in-process)."""

    async def score(request: Request) -> Response:
        started = time.perf_counter()
        front.refresh()
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        base_headers = {REQUEST_ID_HEADER: request_id}
        why = front.authorized(request.headers.get("authorization"))
        if why is not None:
            log.info("score rid=%s status=401 reason=%r", request_id, why)
            return _error(401, why, {**base_headers, "WWW-Authenticate": "Bearer"})

        ports = front.routable()
        wanted = request.headers.get(DEPLOYMENT_HEADER)
        mirror_to: str | None = None
        if wanted:
            route = "header"
            if wanted not in ports:
                log.info("score rid=%s route=header status=404 deployment=%r", request_id, wanted)
                return _error(404, f"no deployment named {wanted!r} on this endpoint", base_headers)
            target = wanted
        else:
            route = "traffic"
            record = front.record
            picked = pick_deployment(front.live_traffic(ports), front.rng)
            if picked is None:
                down = sorted(n for n, p in (record.traffic if record else {}).items() if p > 0)
                log.info("score rid=%s route=traffic status=503 no healthy traffic", request_id)
                if down:
                    return _error(
                        503,
                        f"no healthy deployment has traffic: {', '.join(map(repr, down))} "
                        "not answering",
                        base_headers,
                    )
                return _error(503, "no deployment has traffic", base_headers)
            target = picked
            if record is not None:
                mirror_to = should_mirror(record.mirror_traffic, front.rng)

        # The deployment's own cap, enforced here too, so the front never holds more than it
        # of a request in memory either (Azure's router has its own limit).
        body = await read_body(request)
        if body is None:
            log.info("score rid=%s status=413 body over %d bytes", request_id, MAX_BODY_BYTES)
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes", base_headers)
        upstream_headers = {
            "content-type": request.headers.get("content-type", "application/json"),
            REQUEST_ID_HEADER: request_id,
        }
        if mirror_to is not None and mirror_to != target and mirror_to in ports:
            front.mirror(mirror_to, ports[mirror_to], body, upstream_headers)

        while True:
            counters = front.counter(target)
            counters.requests += 1
            reply_headers = {**base_headers, DEPLOYMENT_HEADER: target}
            try:
                upstream = await front.forward(target, ports[target], body, upstream_headers)
            except UPSTREAM_TIMEOUT_ERRORS:
                status = 504
                response: Response = _error(
                    504, f"deployment {target!r} did not answer in time", reply_headers
                )
            except UPSTREAM_TRANSPORT_ERRORS as exc:
                # Dead, not just slow: it refuses new connections (a pooled connection to a
                # killed server fails with a read error instead). Scoring is stateless, so a
                # request it could not answer may be answered by another deployment.
                refused = isinstance(exc, aiohttp.ClientConnectorError) or not await _accepts(
                    ports[target]
                )
                if refused:
                    front.mark_down(target, ports[target])
                if refused and route == "traffic":
                    counters.errors += 1
                    other = pick_deployment(front.live_traffic(ports), front.rng)
                    if other is not None:
                        log.info("score rid=%s %s refused: sent to %s", request_id, target, other)
                        target = other
                        continue
                    status = 503
                    response = _error(
                        503,
                        f"deployment {target!r} is not answering and no other "
                        "deployment with traffic is healthy",
                        base_headers,
                    )
                    log.info("score rid=%s route=traffic status=503 %s refused", request_id, target)
                    return response
                status = 502
                response = _error(
                    502,
                    f"deployment {target!r} is unreachable ({type(exc).__name__})",
                    reply_headers,
                )
            else:
                status = upstream.status
                if upstream.content_type:
                    reply_headers["content-type"] = upstream.content_type
                response = Response(upstream.body, status_code=status, headers=reply_headers)
            break
        latency_ms = (time.perf_counter() - started) * 1000
        counters.latency_ms_total += latency_ms
        if status >= 500:
            counters.errors += 1
        elif status >= 400:
            counters.client_errors += 1
        log.info(
            "score rid=%s route=%s deployment=%s status=%d latency_ms=%.1f%s",
            request_id,
            route,
            target,
            status,
            latency_ms,
            f" mirror={mirror_to}" if mirror_to else "",
        )
        return response

    async def health(request: Request) -> Response:
        front.refresh()
        record = front.record
        if record is None:
            return _error(503, "the endpoint has no state")
        return JSONResponse(
            {
                "status": "ok",
                "endpoint": record.name,
                "revision": record.revision,
                "deployments": sorted(front.routable()),
                "traffic": record.traffic,
                "mirror_traffic": record.mirror_traffic,
                "unhealthy": sorted(front.down),
            }
        )

    async def metrics(request: Request) -> Response:
        front.refresh()
        record = front.record
        return JSONResponse(
            {
                "endpoint": record.name if record else front.store.endpoint,
                "revision": record.revision if record else None,
                "started_at": front.started_at,  # counters start at 0 when the front restarts
                "mirrors_in_flight": front.mirrors_in_flight,
                "deployments": {name: asdict(c) for name, c in sorted(front.counters.items())},
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        front.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200),
            timeout=aiohttp.ClientTimeout(total=front.upstream_timeout, connect=5.0),
            trust_env=False,  # loopback only: never through a proxy from the environment
            auto_decompress=False,  # the body goes back to the client as it came
            skip_auto_headers=("User-Agent", "Accept-Encoding"),  # so never compressed
        )
        front.refresh()
        watcher = asyncio.get_running_loop().create_task(front.watch())
        try:
            yield
        finally:
            watcher.cancel()
            await front.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    return Starlette(
        routes=[
            Route("/score", score, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.local.endpoint.front")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream-timeout", type=float, default=DEFAULT_UPSTREAM_TIMEOUT)
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=DEFAULT_MAX_RESTARTS,
        help="restarts in a row of a crashed deployment server (0: never restart)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s front[%(process)d] %(message)s",
    )
    store = EndpointStore(args.state_dir, args.endpoint)
    if not store.exists():
        log.error("no endpoint state at %s", store.state_file)
        return 2
    front = Front(store, upstream_timeout=args.upstream_timeout)
    log.info("endpoint %s: front on http://%s:%d", args.endpoint, args.host, args.port)
    config = uvicorn.Config(
        create_app(front),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,  # one line per request is logged above, without bodies or keys
        timeout_graceful_shutdown=5,
    )
    supervisor = None
    if args.max_restarts > 0:
        supervisor = Supervisor(args.state_dir, args.endpoint, max_restarts=args.max_restarts)
        supervisor.start()
    try:
        uvicorn.Server(config).run()
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
