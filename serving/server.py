"""One deployment's server process: the scoring script behind HTTP on loopback.

    python -m serving.server --model-dir DIR --port PORT [--host 127.0.0.1] [--name NAME]

It plays the part Azure's inference server (azmlinfsrv) plays in a managed online deployment:
load the scoring script's model once (`score.init()`, in a background thread so the probes
answer while it loads), then hand each request body to `score.run()`.

    GET  /liveness   200 as soon as the process serves HTTP
    GET  /readiness  503 while init() runs, 200 once it finished, 500 with the error if it failed
    POST /score      the answer (200); 400 {"error"} on a bad request or invalid JSON; 413 on a
                     body over 1 MiB; 415 on a Content-Type other than JSON (none at all is
                     taken as JSON); 503 {"error"} before the model is ready or if it failed to
                     load; 500 {"error"} on any other failure (no traceback: that goes to the log)
    GET  /           200 {"name", "model_dir", "status", "ready", "error", "init_seconds"}
    GET  /metrics    200 {"batching", "batch_window_ms", "max_batch_size", "request_batches",
                     "generate_batches"}: how many batches of each size were run (see below)

Any other path is a 404 and any other method a 405, both with an {"error"} JSON body.

Generation is serialized (one model): one generation runs at a time, requests queue on the
event loop, not on threads. Concurrent requests are batched dynamically: a request that arrives
while the server is busy (or within --batch-window-ms of the first of a batch, when requests
have been arriving together: see `Batcher`) joins the next batch, up to --max-batch-size; the
scoring script's `run_many` generates the prompts that share generation parameters in one
padded `model.generate` call, and each caller gets its own answer (greedy answers are the
same as unbatched). A lone request on an idle server does not wait for the window. A scoring
module without `run_many`, or --max-batch-size 1, serves one request at a time via `run`.
`/metrics` counts the batches: `request_batches` (requests per batch) and `generate_batches`
(prompts per `model.generate` call), each as {size: count}.
Each request is logged to stdout as one line (method, path, status, latency); bodies never
are. SIGTERM and SIGINT stop it gracefully: no new connections, in-flight requests finish
(up to --graceful-timeout seconds), exit status 0. When the socket listens it prints
`serving <name> on http://<host>:<port>`, which callers may wait for.

It must not know about endpoints, keys or traffic: the endpoint front does that.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.contract import BadRequest, error_body

LOGGER = logging.getLogger("serving.server")

MAX_BODY_BYTES = 1 << 20  # a request is at most 16 texts of 8,000 characters: 1 MiB is ample
MAX_ERROR_CHARS = 1_000  # an error message in a response body; the log has the whole story
# Test hook: init() waits until this file exists, so tests can observe "not ready" reliably.
# Never set in real use.
INIT_GATE_ENV = "FINETUNE_PHI_SERVING_INIT_GATE"


@dataclass
class ModelState:
    """Where init() is: "loading", "ready" or "failed" (with the error). Written by the init
    thread, read by request handlers; single attribute writes need no lock under the GIL."""

    status: str = "loading"
    error: str | None = None
    seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


DEFAULT_BATCH_WINDOW_MS = 5.0
DEFAULT_MAX_BATCH_SIZE = 8


@dataclass
class ServerConfig:
    model_dir: Path
    name: str = "deployment"
    # Dynamic batching: how long the first request of a batch waits for others, and how many
    # requests a batch holds at most (1: no batching).
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    # The scoring module (anything with init() and run(raw_data)); a seam for tests.
    scorer: Any = None
    state: ModelState = field(default_factory=ModelState)


def _load_scorer() -> ModuleType:
    from serving import score

    return score


def _init_model(config: ServerConfig) -> None:
    """Run the scoring script's init() and record the outcome; runs in its own thread."""
    started = time.monotonic()
    try:
        gate = os.environ.get(INIT_GATE_ENV)
        if gate:
            while not Path(gate).exists():
                time.sleep(0.05)
        if config.scorer is None:
            config.scorer = _load_scorer()
        config.scorer.init()
    except BaseException as exc:  # even SystemExit: a silent init thread would hang readiness
        LOGGER.exception("init() failed")
        config.state.seconds = round(time.monotonic() - started, 3)
        config.state.error = _describe(exc)
        config.state.status = "failed"  # last: readers see a complete state once it changes
    else:
        config.state.seconds = round(time.monotonic() - started, 3)
        config.state.status = "ready"
        LOGGER.info("ready in %.1f s", config.state.seconds)


@dataclass
class _Pending:
    body: str
    future: asyncio.Future[Any]
    arrived: float


class Batcher:
    """Collects concurrent requests into batches for `run_many(bodies, max_batch_size)`, one
    batch at a time, in a worker task on the event loop.

    How many requests to wait for: as many as were waiting or generating at once during the
    previous batch (the clients that came together are likely to come again), or that are in
    `in_flight()` now, capped at `max_batch_size`. The first request of a batch waits for them
    at most `window_s`, counted from when it arrived or the previous batch finished, whichever
    is later. So a lone client on an idle server never waits, and a batch that comes back to
    a group of clients does not leave before their next requests are in.
    """

    def __init__(
        self,
        run_many: Any,
        window_s: float,
        max_batch_size: int,
        in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self.run_many = run_many
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self.in_flight = in_flight
        self.sizes: dict[int, int] = {}
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._active = 0  # submitted and not yet answered
        self._peak = 0  # most active at once since the current batch started
        self._free_since = 0.0

    async def submit(self, body: str) -> Any:
        """run_many's outcome for this body: an answer, or the exception to raise."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        pending = _Pending(body, loop.create_future(), loop.time())
        self._active += 1
        self._peak = max(self._peak, self._active)
        self._queue.put_nowait(pending)
        try:
            return await pending.future
        finally:
            self._active -= 1

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        wanted = min(self.max_batch_size, max(self._peak, self.in_flight()))
        if self.window_s > 0 and wanted > 1:
            deadline = max(batch[0].arrived, self._free_since) + self.window_s
            while len(batch) < wanted:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [item for item in await self._collect() if not item.future.done()]
            if not batch:  # every caller gave up (disconnected) while it waited
                continue
            self._peak = self._active
            self.sizes[len(batch)] = self.sizes.get(len(batch), 0) + 1
            try:
                outcomes = await asyncio.to_thread(
                    self.run_many, [item.body for item in batch], self.max_batch_size
                )
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"run_many answered {len(outcomes)} of {len(batch)}")
            except Exception as exc:
                LOGGER.exception("run_many() failed")
                outcomes = [exc] * len(batch)
            self._free_since = loop.time()
            for item, outcome in zip(batch, outcomes, strict=True):
                if not item.future.done():
                    item.future.set_result(outcome)


def create_app(config: ServerConfig) -> Starlette:
    """The ASGI app for one deployment. Sets AZUREML_MODEL_DIR and starts init() at start-up."""
    generation_lock = asyncio.Lock()
    state = config.state
    in_flight = 0  # score requests being handled now
    batcher = Batcher(
        None,
        config.batch_window_ms / 1000,
        config.max_batch_size,
        in_flight=lambda: in_flight,
    )

    def batching() -> bool:
        return config.max_batch_size > 1 and callable(getattr(config.scorer, "run_many", None))

    async def generate(text: str) -> Any:
        if not batching():
            async with generation_lock:
                return await asyncio.to_thread(config.scorer.run, text)
        batcher.run_many = config.scorer.run_many
        outcome = await batcher.submit(text)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def liveness(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readiness(request: Request) -> Response:
        if state.status == "ready":
            return JSONResponse({"status": "ready"})
        if state.status == "failed":
            return JSONResponse({"status": "failed", "error": state.error}, status_code=500)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "name": config.name,
                "model_dir": str(config.model_dir),
                "status": state.status,
                "ready": state.ready,
                "error": state.error,
                "init_seconds": state.seconds,
            }
        )

    async def metrics(request: Request) -> Response:
        scorer_metrics = getattr(config.scorer, "metrics", None)
        generate_batches = scorer_metrics().get("generate_batches", {}) if scorer_metrics else {}
        return JSONResponse(
            {
                "batching": batching(),
                "batch_window_ms": config.batch_window_ms,
                "max_batch_size": config.max_batch_size,
                "request_batches": _by_size(batcher.sizes),
                "generate_batches": _by_size(generate_batches),
            }
        )

    async def score(request: Request) -> Response:
        nonlocal in_flight
        in_flight += 1
        try:
            return await score_one(request)
        finally:
            in_flight -= 1

    async def score_one(request: Request) -> Response:
        if not state.ready:
            why = f"failed to load: {state.error}" if state.status == "failed" else "loading"
            return _error(503, f"the model is not ready ({why})")
        media_type = _media_type(request.headers.get("content-type"))
        if media_type is not None and not _is_json(media_type):
            return _error(415, f"Content-Type must be application/json, got {media_type!r}")
        body = await read_body(request)
        if body is None:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _error(400, f"request body is not UTF-8: {exc}")
        try:
            result = await generate(text)
            return _to_response(result)  # inside: an unserializable answer is a 500 too
        except BadRequest as exc:
            return _error(400, str(exc))
        except Exception as exc:
            LOGGER.exception("run() failed")
            return _error(500, _describe(exc))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        os.environ["AZUREML_MODEL_DIR"] = str(config.model_dir)
        threading.Thread(target=_init_model, args=(config,), name="score-init", daemon=True).start()
        yield
        batcher.stop()
        LOGGER.info("stopped")

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    app = Starlette(
        routes=[
            Route("/", info, methods=["GET"]),
            Route("/liveness", liveness, methods=["GET"]),
            Route("/readiness", readiness, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/score", score, methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed},
    )
    app.add_middleware(AccessLog, name=config.name)
    return app


class AccessLog:
    """One stdout line per request: method, path (no query string), status, latency in ms.

    Written as plain ASGI middleware so it sees the real status of every response; request
    bodies are never read here, so prompts never reach the log.
    """

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            LOGGER.info(
                "%s %s %s %d %.1fms",
                self.name,
                scope["method"],
                scope["path"],
                status,
                elapsed_ms,
            )


async def read_body(request: Request) -> bytes | None:
    """The body, or None past MAX_BODY_BYTES (read no further: the cap is for memory)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(header: str | None) -> str | None:
    """The media type of a Content-Type header, lower case, without parameters; None if absent
    or blank."""
    if header is None:
        return None
    media_type = header.split(";", 1)[0].strip().lower()
    return media_type or None


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _to_response(result: Any) -> Response:
    """run()'s result as HTTP: an AMLResponse-like (flask) response keeps its status, body and
    content type; anything else is JSON with 200."""
    status = getattr(result, "status_code", None)
    get_data = getattr(result, "get_data", None)
    if isinstance(status, int) and callable(get_data):
        media_type = getattr(result, "mimetype", None) or "application/json"
        return Response(get_data(), status_code=status, media_type=media_type)
    return JSONResponse(result)


def _by_size(counts: dict[int, int]) -> dict[str, int]:
    return {str(size): counts[size] for size in sorted(counts)}


def _error(status: int, message: str) -> Response:
    # A lone surrogate (from a JSON "\ud800" escape) would make the JSON body unencodable.
    safe = message[:MAX_ERROR_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(error_body(safe), status_code=status)


def _describe(exc: BaseException) -> str:
    """One line for a response body: the exception type and message, never a traceback."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --------------------------------------------------------------------------- command line


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Serve one deployment: the scoring script behind HTTP on loopback.",
    )
    parser.add_argument("--model-dir", required=True, type=Path, help="AZUREML_MODEL_DIR")
    parser.add_argument("--port", required=True, type=_port, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--name", default="deployment", help="deployment name, for the logs")
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM (default 30)",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=DEFAULT_BATCH_WINDOW_MS,
        help="how long the first request of a batch waits for others, when requests come "
        f"together (default {DEFAULT_BATCH_WINDOW_MS:g}; 0: only those already queued)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=_positive,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"most requests generated together (default {DEFAULT_MAX_BATCH_SIZE}; 1: none)",
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {port}")
    return port


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before the server starts, so a taken port fails at once, clearly.

    The protocol is named (IPPROTO_TCP, not the default 0) because asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on connections whose socket says TCP, and accepted
    connections inherit the listener's. With proto 0 a response's headers and body went out
    as two small writes, the second held back until the client's delayed ACK of the first:
    about 40 ms added to every answer on a kept-alive connection (the front's, a client's).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO,
        force=True,
    )
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 2
    import uvicorn

    config = ServerConfig(
        model_dir=args.model_dir.resolve(),
        name=args.name,
        batch_window_ms=max(0.0, args.batch_window_ms),
        max_batch_size=args.max_batch_size,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            access_log=False,  # AccessLog writes our own line, without query strings
            log_config=None,  # keep logging.basicConfig's stdout handler
            timeout_graceful_shutdown=args.graceful_timeout,
            lifespan="on",
        )
    )
    # uvicorn catches SIGTERM/SIGINT while serving (stop accepting, let in-flight requests
    # finish, run the lifespan's shutdown), then raises the signal again once it has restored
    # the handlers found here: these make that a clean exit, status 0, as a requested stop is.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    print(f"serving {args.name} on http://{args.host}:{args.port}", flush=True)
    server.run(sockets=[sock])
    return 0


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
