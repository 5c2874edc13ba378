"""A stand-in deployment server: the contract of `python -m serving.server`, without a model.

    python tests/endpoint/stand_in_server.py --model-dir DIR --port PORT --host 127.0.0.1 \
        --name NAME [--load-seconds S] [--never-ready] [--fail-load] [--fail-score]
        [--score-delay S] [--answer TEXT] [--exit-on-start]

- GET /liveness: 200 once the process is up.
- GET /readiness: 503 while "loading" (`--load-seconds`, forever with `--never-ready`), then
  200; 500 `{"error": ...}` with `--fail-load`.
- POST /score: 200 `{"deployment": NAME, "echo": <body>}`; 400 `{"error"}` for a body that is
  not JSON; 500 `{"error"}` with `--fail-score`; answers after `--score-delay` seconds.
- GET /stats: `{"name": NAME, "scored": N}`, the /score requests it received (to count what
  mirroring sent it, independently of the front's own counters).

Front and control-plane tests use it so they need no model and start in well under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def build_app(args: argparse.Namespace) -> Starlette:
    started = time.monotonic()
    scored = 0

    async def liveness(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readiness(request: Request) -> Response:
        if args.fail_load:
            return JSONResponse({"error": "stand-in told to fail loading"}, status_code=500)
        if args.never_ready or time.monotonic() - started < args.load_seconds:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def score(request: Request) -> Response:
        nonlocal scored
        scored += 1
        if args.score_delay:
            await asyncio.sleep(args.score_delay)
        if args.fail_score:
            return JSONResponse({"error": "stand-in told to fail /score"}, status_code=500)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if args.answer is not None:  # the tutorial's answer shape, as a rollout probe expects
            return JSONResponse([args.answer])
        return JSONResponse({"deployment": args.name, "echo": body})

    async def stats(request: Request) -> Response:
        return JSONResponse({"name": args.name, "scored": scored})

    return Starlette(
        routes=[
            Route("/liveness", liveness),
            Route("/readiness", readiness),
            Route("/score", score, methods=["POST"]),
            Route("/stats", stats),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", required=True)
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--fail-load", action="store_true")
    parser.add_argument("--fail-score", action="store_true")
    parser.add_argument("--score-delay", type=float, default=0.0)
    parser.add_argument("--answer", default=None, help="answer every /score with [ANSWER]")
    parser.add_argument("--exit-on-start", action="store_true")
    args = parser.parse_args(argv)
    print(f"stand-in {args.name}: model {args.model_dir}, port {args.port}", flush=True)
    if args.exit_on_start:
        print("stand-in told to exit on start", flush=True)
        return 3
    uvicorn.run(build_app(args), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
