"""The pipeline's wall time and what orchestration adds to it, as `make demo` runs it.

    .venv/bin/python -m bench.pipeline [--keep STATE_DIR]

Two commands in a row, each a fresh process like `finetune-phi demo`, on a new state folder
and a new Prefect home (a newcomer's first run): the first on fresh state (tiny model, data,
training, gate, rollout, report), the second with its inputs unchanged ("up to date"). For
each, from the process itself and from Prefect's own records of the run (read through the
Prefect client before the temporary server stops):

    command      the process, start to exit (imports, Prefect's temporary server, the flow)
    imports      process start to the flow's module imported (torch, transformers, prefect)
    start-up     process start to the flow run's start (imports, server start, run creation)
    flow         the flow run's start to its end, as Prefect recorded it
    tasks        the sum of the task runs' own run times (the tasks run one after another)
    overhead     flow - tasks: what Prefect's engine adds between and around the tasks
                 (state changes, result records, the flow's own code between tasks)
    command - tasks  everything that is not task work: imports, the temporary server,
                 the engine, the summary and charts printed after the flow

Figures, not a test: BENCHMARKS.md records the results. The local endpoint the first run
starts is stopped at the end (unless --keep names a state folder to leave in place).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STARTED = time.time()  # as early as this module can know: the child's process start


def measure_one_run(state_dir: Path) -> dict[str, Any]:
    """Run the flow in this process and read back Prefect's records of it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.finetune import finetune_pipeline

    imported = time.time()
    state = finetune_pipeline(
        profile="local", overrides={"state_dir": str(state_dir)}, return_state=True
    )
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert flow_run.start_time is not None and flow_run.end_time is not None
    flow_seconds = (flow_run.end_time - flow_run.start_time).total_seconds()
    # Task run names are "<task name>-<short id>".
    tasks = {run.name.rsplit("-", 1)[0]: run.total_run_time.total_seconds() for run in task_runs}
    return {
        "outcome": result.status,
        "import_seconds": imported - STARTED,
        "startup_seconds": flow_run.start_time.timestamp() - STARTED,
        "flow_seconds": flow_seconds,
        "task_seconds": sum(tasks.values()),
        "tasks": dict(sorted(tasks.items(), key=lambda item: -item[1])),
        "finished_at": datetime.now(UTC).isoformat(),
    }


def run_command(state_dir: Path, prefect_home: Path) -> dict[str, Any]:
    """One child process, timed from outside; its own figures from its last stdout line."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)  # the temporary server, as `make demo` gets it
    command = [sys.executable, "-m", "bench.pipeline", "--child", str(state_dir)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"pipeline run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["command_seconds"] = wall
    return figures


def table(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| run | outcome | command s | imports s | start-up s | flow s | tasks s "
        "| overhead s | command - tasks s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        overhead = run["flow_seconds"] - run["task_seconds"]
        lines.append(
            f"| {name} | {run['outcome']} | {run['command_seconds']:.1f} | "
            f"{run['import_seconds']:.1f} | {run['startup_seconds']:.1f} | "
            f"{run['flow_seconds']:.1f} | {run['task_seconds']:.1f} | {overhead:.1f} | "
            f"{run['command_seconds'] - run['task_seconds']:.1f} |"
        )
    for name, run in runs.items():
        spent = ", ".join(f"{task} {seconds:.1f}" for task, seconds in run["tasks"].items())
        lines.append(f"\n{name}, task run times (s): {spent}")
    return "\n".join(lines)


def stop_endpoint(state_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "cli.main", "endpoint", "down"]
        + ["--set", f"state_dir={state_dir}"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="state folder to use and leave in place")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one_run(args.child)))
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    state_dir = args.keep or scratch / "state"
    try:
        runs = {}
        for name in ("fresh state", "unchanged inputs"):
            runs[name] = run_command(state_dir, scratch / "prefect-home")
            print(
                f"{name}: {runs[name]['outcome']} in {runs[name]['command_seconds']:.1f} s",
                flush=True,
            )
        print()
        print(table(runs))
    finally:
        if args.keep is None:
            stop_endpoint(state_dir)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
