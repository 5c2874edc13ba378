"""Run the chat flow for real, for a list of questions (runs INSIDE .venv-promptflow).

The core venv cannot import promptflow (see README.md), so the pipeline calls this script as a
child process (`finetune_phi/promptflow_bridge.py`):

    FINETUNE_PHI_ENDPOINT_KEY=... .venv-promptflow/bin/python promptflow_app/run_flow.py < job.json

stdin, one JSON job:

    {"endpoint_url": "http://127.0.0.1:PORT/score",
     "deployment": "green",                  # optional: the azureml-model-deployment header
     "questions": ["Who founded Microsoft?", ...],
     "chat_history": [{"inputs": {"question": ...}, "outputs": {"answer": ...}}],  # optional
     "params": {"do_sample": false, "max_new_tokens": 64, "temperature": 0.7}}     # optional

stdout, one JSON array, one result per question, in order:

    [{"question": ..., "answer": ..., "latency_ms": 812.4, "error": null}, ...]

A question that fails gets `"answer": ""` and the error's message; the others still run. Each
question runs with the same given history (they are independent probes). With `--lines`, the
script reads one job per line and writes one result array per line until stdin closes, so a
chat pays promptflow's start-up (about 2 s) once instead of per turn.

The key comes from the environment, never argv; it never appears in the output (errors are
scrubbed). Everything promptflow or the tool prints goes to stderr: stdout carries only results.
Exit status: 0 when the job ran (even if questions failed), 2 for a bad job or a missing key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

import pf_runtime

FLOW_PARAMS = ("temperature", "max_new_tokens", "do_sample")


def parse_job(line: str) -> dict[str, Any]:
    """Validate one job; ValueError says what is wrong."""
    try:
        job = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the job is not valid JSON: {exc}") from None
    if not isinstance(job, dict):
        raise ValueError("the job must be a JSON object")
    url = job.get("endpoint_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("endpoint_url: expected an http(s) URL")
    questions = job.get("questions")
    if (
        not isinstance(questions, list)
        or not questions
        or not all(isinstance(q, str) and q.strip() for q in questions)
    ):
        raise ValueError("questions: expected a non-empty list of non-blank strings")
    deployment = job.get("deployment")
    if deployment is not None and not isinstance(deployment, str):
        raise ValueError("deployment: expected a string or null")
    if not isinstance(job.get("chat_history", []), list):
        raise ValueError("chat_history: expected a list")
    params = job.get("params") or {}
    if not isinstance(params, dict) or set(params) - set(FLOW_PARAMS):
        raise ValueError(f"params: expected an object with keys among {', '.join(FLOW_PARAMS)}")
    return job


def run_job(flow: Any, job: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Invoke the flow once per question; never raises for a failing question."""
    connections = pf_runtime.connections(job["endpoint_url"], key)
    results = []
    for question in job["questions"]:
        inputs = {
            "question": question,
            "chat_history": job.get("chat_history") or [],
            "deployment": job.get("deployment") or "",
            **(job.get("params") or {}),
        }
        started = time.perf_counter()
        answer, error = "", None
        try:
            result = flow.invoke(inputs, connections=connections)
            output = result.output if hasattr(result, "output") else result
            answer = str(output.get("answer", "")) if isinstance(output, dict) else str(output)
            run_info = getattr(result, "run_info", None)
            if run_info is not None and getattr(run_info, "error", None):
                error = _error_message(run_info.error)
        except Exception as exc:  # one failing probe must not hide the others' answers
            error = f"{type(exc).__name__}: {exc}"
        latency_ms = (time.perf_counter() - started) * 1000
        results.append(
            {
                "question": question,
                "answer": answer,
                "latency_ms": round(latency_ms, 1),
                "error": pf_runtime.scrub(error, key) if error else None,
            }
        )
    return results


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", action="store_true", help="one job per stdin line (a chat)")
    args = parser.parse_args(argv)

    # stdout is for results only: promptflow, the tool and any library print to stderr.
    results_out: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    key = pf_runtime.endpoint_key()
    pf_runtime.prepare_home()
    from promptflow.core import Flow  # after prepare_home: PF_HOME_DIRECTORY is read at import

    flow = Flow.load(pf_runtime.FLOW_DIR)

    lines = sys.stdin if args.lines else [sys.stdin.read()]
    for line in lines:
        if args.lines and not line.strip():
            continue
        try:
            job = parse_job(line)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if not args.lines:
                return 2
            results_out.write(json.dumps({"error": str(exc)}) + "\n")
            results_out.flush()
            continue
        results_out.write(json.dumps(run_job(flow, job, key), ensure_ascii=False) + "\n")
        results_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
