"""The real-size rehearsal (issue #13): the whole flow at Phi-3.5-mini-instruct's size on this
machine, with a checkpoint and a resume, measured stage by stage.

    .venv/bin/python -m bench.rehearsal                  # make rehearsal: 32 layers, 3.82B
    .venv/bin/python -m bench.rehearsal --layers 2       # the same shape two layers deep
    .venv/bin/python -m bench.rehearsal --prepare-only   # build the inputs, run nothing

1. Inputs, built once and reused (outside the rehearsal's state folder, in --inputs-dir):
   the Phi-3.5-mini-shaped model (`finetune_phi.real_size`; --layers N: the same shape N
   layers deep) and ultrachat_200k-shaped data in the Hub's layout, at ultrachat_200k's split
   sizes (`finetune_phi.chat_data.ultrachat_like`). Built in a child process, so the driver
   stays small (it is one of the processes measured).
2. A fresh state folder (--state-dir): whatever an earlier rehearsal left there is stopped and
   deleted.
3. The flow with the `rehearsal` profile (configs/profiles/rehearsal.yaml) in a fresh process,
   as `finetune-phi run --profile rehearsal` runs it (its own Prefect home and temporary
   server, offline). As soon as the training job has written its first checkpoint, the job
   is cancelled (what `follow_job` does when a flow run is stopped): that run fails.
4. The flow again, in a fresh process: the training job of the same name is started again and
   resumes from that checkpoint; then the merged save, the evaluation, registration, the
   gate, the blue-green rollout with the Prompt flow smoke test, the report.
5. One question through the endpoint, then the endpoint is stopped (a 3.8B deployment holds
   15 GB), unless --keep.

Measured from outside, every 0.5 s (`finetune_phi.resources`): resident memory summed over
every process of the run (the flow, Prefect's server, the trainer, the evaluation, the
deployment servers, Prompt flow), CPU seconds, and the state folder's size. Each stage's
figures come from that timeline and the moments Prefect recorded for each task run. The
report goes to --report (JSON) and a table to stdout; the last line reads

    rehearsal: <ending>, peak RSS <X.X> GB, disk <Y.Y> GB, wall <N> s

(disk: the state folder at its largest plus the inputs it reads; wall: steps 3-5). The exit
status is 1 when the run failed, did not resume, the endpoint gave no answer, or a limit
(--max-rss-gb, --max-wall-minutes) was passed; the lines above the last one say which.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from finetune_phi.resources import Snapshot, disk_usage, metered

REPO = Path(__file__).resolve().parent.parent
PROFILE = "rehearsal"
FULL_LAYERS = 32  # Phi-3.5-mini-instruct's
# ultrachat_200k's train_sft and test_sft rows (finetune_phi/chat_data/ultrachat_like.py).
ULTRACHAT_TRAIN_SFT = 207_865
ULTRACHAT_TEST_SFT = 23_110
DATASET_SEED = 0
DATASET_SHARDS = 3  # ultrachat_200k's train_sft is three parquet shards on the Hub
DATASET_MARKER = "rehearsal-dataset.json"
MAX_RSS_GB = 20.0
MAX_WALL_MINUTES = 45.0
QUESTION = "Who founded Microsoft?"
ANSWER_TOKENS = 8
SAMPLE_SECONDS = 0.5
# The processes that do the heavy work: each gets its own row under the stage it ran in.
WORKERS = ("trainer.fine_tune", "serving.evaluate", "serving.server")
DISK_EVERY_SECONDS = 2.0
POLL_SECONDS = 0.25
GB = 1e9


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Where the rehearsal's inputs are (built once, reused by every rehearsal)."""

    layers: int
    dataset_rows: int  # rows of train_sft; the flow reads the first 1%
    model_dir: Path
    dataset_dir: Path

    @classmethod
    def under(cls, inputs_dir: Path, layers: int, dataset_rows: int) -> Inputs:
        model = "phi35-shaped" + ("" if layers == FULL_LAYERS else f"-{layers}-layers")
        data = "ultrachat_200k-like" + (
            "" if dataset_rows == ULTRACHAT_TRAIN_SFT else f"-{dataset_rows}-rows"
        )
        return cls(layers, dataset_rows, inputs_dir / "models" / model, inputs_dir / "hub" / data)

    @property
    def inputs_dir(self) -> Path:
        return self.model_dir.parent.parent

    @property
    def dataset_spec(self) -> dict[str, int]:
        test_rows = max(1, round(self.dataset_rows * ULTRACHAT_TEST_SFT / ULTRACHAT_TRAIN_SFT))
        return {
            "train_sft": self.dataset_rows,
            "test_sft": test_rows,
            "seed": DATASET_SEED,
            "shards": DATASET_SHARDS,
        }

    @property
    def max_shard_bytes(self) -> int:
        """The Hub's 2 GB shards at full size; proportionally smaller ones for fewer layers,
        so a smaller model is sharded (index and all) the way the real one is."""
        from finetune_phi.real_size import DEFAULT_MAX_SHARD_BYTES

        return DEFAULT_MAX_SHARD_BYTES * min(self.layers, FULL_LAYERS) // FULL_LAYERS

    def disk_bytes(self) -> int:
        return disk_usage(self.model_dir) + disk_usage(self.dataset_dir)


def prepare_inputs(inputs: Inputs) -> None:
    """Build the model and write the dataset, each unless already there (atomically)."""
    from finetune_phi.chat_data.ultrachat_like import write_ultrachat_like
    from finetune_phi.real_size import build_phi35_shaped_model

    started = time.monotonic()
    build_phi35_shaped_model(
        inputs.model_dir, num_hidden_layers=inputs.layers, max_shard_bytes=inputs.max_shard_bytes
    )
    print(f"model: {inputs.model_dir} ({time.monotonic() - started:.0f} s)", flush=True)

    started = time.monotonic()
    folder, spec = inputs.dataset_dir, inputs.dataset_spec
    marker = folder / DATASET_MARKER
    if not (marker.is_file() and json.loads(marker.read_text()) == spec):
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        write_ultrachat_like(
            staging,
            train_sft=spec["train_sft"],
            test_sft=spec["test_sft"],
            seed=spec["seed"],
            shards=spec["shards"],
        )
        (staging / DATASET_MARKER).write_text(json.dumps(spec) + "\n")  # written last
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    print(f"dataset: {folder} ({time.monotonic() - started:.0f} s)", flush=True)


def overrides(state_dir: Path, inputs: Inputs) -> dict[str, Any]:
    """The rehearsal profile, pointed at this state folder and these inputs."""
    return {
        "state_dir": str(state_dir),
        "model": {"base": str(inputs.model_dir)},
        "data": {"source": {"kind": "hub", "name": str(inputs.dataset_dir)}},
    }


def child_environment(state_dir: Path) -> dict[str, str]:
    """A newcomer's run: its own Prefect home and temporary server, the Hub libraries offline
    (every input is local) with their dataset cache inside the state folder (it counts)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(state_dir / "prefect"),
        # A fresh Prefect home migrates its database on the temporary server's first start:
        # past Prefect's default 20 s on two busy cores (seen here), as the CLI allows too.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": os.environ.get(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"
        ),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(state_dir / "hf-datasets"),
    }
    env.pop("PREFECT_API_URL", None)
    return env


# --------------------------------------------------------------------------- the flow (child)


def _plain(value: Any) -> Any:
    """A result object as JSON-ready data."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def result_facts(result: Any) -> dict[str, Any]:
    """What the driver and the tests check, from the flow's `PipelineResult`."""
    facts: dict[str, Any] = {
        "ending": result.status,
        "model": _plain(result.model),
        "dataset": _plain(result.dataset.manifest),
        "traffic_after": _plain(result.traffic_after),
    }
    if result.training is not None:
        facts["training"] = _plain(result.training)
    if result.gate is not None:
        facts["gate"] = _plain(result.gate)
    if result.rollout is not None:
        facts["rollout"] = {
            "events": list(result.rollout.events),
            "seconds": result.rollout.seconds,
            "smoke": {where: _plain(smoke) for where, smoke in result.rollout.smoke.items()},
        }
    return facts


def run_flow(state_dir: Path, inputs: Inputs, output: Path) -> int:
    """In the child: run the flow once, write what happened and Prefect's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from cli.run import quiet_expected_failures
    from flows.finetune import finetune_pipeline

    with quiet_expected_failures():
        state = finetune_pipeline(
            profile=PROFILE, overrides=overrides(state_dir, inputs), return_state=True
        )
    outcome = state.result(raise_on_failure=False)
    facts: dict[str, Any]
    if isinstance(outcome, BaseException):
        facts = {"error": f"{type(outcome).__name__}: {outcome}"}
    else:
        facts = result_facts(outcome)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None  # a flow run that returned a state has an id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    facts["flow"] = {
        "start": flow_run.start_time.timestamp() if flow_run.start_time else None,
        "end": flow_run.end_time.timestamp() if flow_run.end_time else None,
        "state": str(flow_run.state_name),
    }
    facts["tasks"] = sorted(
        (
            {
                # Task run names are "<task name>-<short id>".
                "name": run.name.rsplit("-", 1)[0],
                "start": run.start_time.timestamp(),
                "end": run.end_time.timestamp() if run.end_time else time.time(),
                "state": str(run.state_name),
            }
            for run in task_runs
            if run.start_time is not None
        ),
        key=lambda task: task["start"],
    )
    output.write_text(json.dumps(facts, indent=2, default=str) + "\n")
    return 0


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Stage:
    name: str
    start: float  # time.time()
    end: float
    note: str = ""


class Timeline:
    """The meter's snapshots and the state folder's size, over time."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.snapshots: list[Snapshot] = []
        self.disk: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def add(self, snapshot: Snapshot) -> None:
        """The meter's callback (its thread); the disk is read every DISK_EVERY_SECONDS."""
        with self._lock:
            self.snapshots.append(snapshot)
            if not self.disk or snapshot.at - self.disk[-1][0] >= DISK_EVERY_SECONDS:
                self.disk.append((snapshot.at, disk_usage(self.state_dir)))

    def write(self, path: Path, since: float) -> None:
        """The samples as JSON lines: seconds since `since`, GB in all and by process kind,
        CPU seconds so far, the state folder's GB (as last read)."""
        with self._lock:
            disk = iter(self.disk)
            current, upcoming = 0, next(disk, None)
            with path.open("w") as out:
                for snapshot in self.snapshots:
                    while upcoming is not None and upcoming[0] <= snapshot.at:
                        current, upcoming = upcoming[1], next(disk, None)
                    line = {
                        "seconds": round(snapshot.at - since, 2),
                        "rss_gb": round(snapshot.rss / GB, 3),
                        "anon_gb": round(snapshot.anon / GB, 3),
                        "rss_gb_by_process": {
                            name: round(rss / GB, 3) for name, rss in snapshot.rss_by_name.items()
                        },
                        "cpu_seconds": round(snapshot.cpu_seconds, 1),
                        "state_disk_gb": round(current / GB, 3),
                    }
                    out.write(json.dumps(line) + "\n")

    def disk_now(self) -> None:
        with self._lock:
            self.disk.append((time.time(), disk_usage(self.state_dir)))

    def figures(self, start: float, end: float, kind: str | None = None) -> dict[str, Any]:
        """Wall, CPU seconds, peak RSS (by process kind) and disk of [start, end]; with `kind`,
        of that kind of process alone (its wall: from first to last seen)."""
        with self._lock:
            inside = [s for s in self.snapshots if start <= s.at <= end]
            if kind is not None:
                inside = [s for s in inside if kind in s.rss_by_name]
            elif not inside:  # shorter than a sample: the first one after it started
                inside = [s for s in self.snapshots if s.at >= start][:1]

            def cpu_at(moment: float) -> float:
                before = [s for s in self.snapshots if s.at <= moment]
                if not before:
                    return 0.0
                if kind is None:
                    return before[-1].cpu_seconds
                return before[-1].cpu_seconds_by_name.get(kind, 0.0)

            disk_until = [size for at, size in self.disk if at <= end + DISK_EVERY_SECONDS]
            by_name: dict[str, int] = {}
            for snapshot in inside:
                for name, rss in snapshot.rss_by_name.items():
                    by_name[name] = max(by_name.get(name, 0), rss)
            sizes = [s.rss_by_name[kind] if kind else s.rss for s in inside]
            private = [s.anon_by_name.get(kind, 0) if kind else s.anon for s in inside]
            wall = end - start
            if kind is not None:
                wall = inside[-1].at - inside[0].at + SAMPLE_SECONDS if inside else 0.0
        return {
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(max(0.0, cpu_at(end) - cpu_at(start)), 1),
            "peak_rss_gb": round(max(sizes) / GB, 2) if sizes else None,
            "peak_anon_gb": round(max(private) / GB, 2) if private else None,
            "peak_rss_by_process_gb": {
                name: round(size / GB, 2)
                for name, size in sorted(by_name.items(), key=lambda item: -item[1])
                if size >= 0.05 * GB and kind is None
            },
            "state_disk_gb": round(disk_until[-1] / GB, 2) if disk_until else 0.0,
        }

    def rows(self, stages: Sequence[Stage]) -> list[dict[str, Any]]:
        """One row per stage, and under it one per worker process that ran in it."""
        rows = []
        for stage in stages:
            rows.append(
                {"name": stage.name, "note": stage.note, **self.figures(stage.start, stage.end)}
            )
            for kind in WORKERS:
                figures = self.figures(stage.start, stage.end, kind)
                if figures["cpu_seconds"] >= 1.0:  # it worked in this stage (not just idled)
                    rows.append({"name": f"{stage.name} / {kind}", "note": "", **figures})
        return rows


# --------------------------------------------------------------------------- the driver


@dataclass
class Attempt:
    number: int
    spawned: float
    exited: float = 0.0
    returncode: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # the checkpoint the job was cancelled at
    cancelled: float | None = None

    def stages(self) -> list[Stage]:
        prefix = f"{self.number}: "
        flow = self.facts.get("flow") or {}
        tasks = self.facts.get("tasks") or []
        stages = [Stage(prefix + "start-up", self.spawned, flow.get("start") or self.exited)]
        for task in tasks:
            note = "" if task["state"] == "Completed" else task["state"].lower()
            if task["name"] == "train-model" and self.checkpoint:
                note = f"cancelled at {self.checkpoint}"
            elif task["name"] == "train-model" and self.number > 1:
                resumed = (self.facts.get("training") or {}).get("metrics", {})
                if resumed.get("resumed_from_step"):
                    note = f"resumed from checkpoint-{resumed['resumed_from_step']}"
            stages.append(Stage(prefix + task["name"], task["start"], task["end"], note))
        if flow.get("end"):
            stages.append(Stage(prefix + "shut-down", flow["end"], self.exited))
        return stages


def first_checkpoint(state_dir: Path) -> tuple[str, str] | None:
    """(job name, checkpoint) once a training job has a complete checkpoint (the Trainer
    writes trainer_state.json last)."""
    for state_file in sorted(
        (state_dir / "jobs").glob("*/output/checkpoints/checkpoint-*/trainer_state.json")
    ):
        checkpoint = state_file.parent
        return checkpoint.parents[2].name, checkpoint.name
    return None


def this_module(inputs: Inputs) -> list[str]:
    """This module's command line in a child process, for these inputs."""
    return [
        sys.executable,
        "-m",
        "bench.rehearsal",
        "--layers",
        str(inputs.layers),
        "--dataset-rows",
        str(inputs.dataset_rows),
        "--inputs-dir",
        str(inputs.inputs_dir),
    ]


def run_attempt(
    number: int, state_dir: Path, inputs: Inputs, *, cancel_at_checkpoint: bool
) -> Attempt:
    """The flow in a fresh process; with `cancel_at_checkpoint`, its training job is
    cancelled once its first checkpoint is complete."""
    from backends.local.jobs import LocalJobs
    from finetune_phi.state import StateLayout

    output = state_dir / f"rehearsal-attempt-{number}.json"
    output.unlink(missing_ok=True)
    command = [*this_module(inputs), "--child", str(output), "--state-dir", str(state_dir)]
    print(f"rehearsal: flow run {number}", flush=True)
    attempt = Attempt(number, time.time())
    child = subprocess.Popen(command, cwd=REPO, env=child_environment(state_dir))
    while child.poll() is None:
        if cancel_at_checkpoint and attempt.cancelled is None:
            found = first_checkpoint(state_dir)
            if found is not None:
                job, attempt.checkpoint = found
                print(f"rehearsal: {job} wrote {attempt.checkpoint}: cancelling it", flush=True)
                LocalJobs(StateLayout(state_dir)).cancel_job(job)
                attempt.cancelled = time.time()
        time.sleep(POLL_SECONDS)
    attempt.exited, attempt.returncode = time.time(), child.returncode
    if output.is_file():
        attempt.facts = json.loads(output.read_text())
    else:
        attempt.facts = {"error": f"the flow's process exited {child.returncode} without a result"}
    return attempt


def clear_state(state_dir: Path) -> None:
    """Stop what an earlier rehearsal left running in `state_dir` (jobs, endpoints), then
    delete it."""
    if not state_dir.exists():
        return
    from backends.local.endpoint.control import LocalEndpoints
    from backends.local.jobs import LocalJobs
    from finetune_phi.state import StateLayout
    from finetune_phi.workspace import JobStatus

    jobs = LocalJobs(StateLayout(state_dir))
    for job in jobs.find_jobs({}):
        if job.status is JobStatus.RUNNING:
            jobs.cancel_job(job.name)
    endpoints = LocalEndpoints(state_dir)
    for name in endpoints.list_endpoints():
        endpoints.delete_endpoint(name)
    shutil.rmtree(state_dir)


def ask_endpoint(state_dir: Path, endpoint: str) -> str:
    """One short greedy question through the endpoint; its answer."""
    from backends.local.endpoint.control import LocalEndpoints

    request = {
        "messages": [{"role": "user", "content": QUESTION}],
        "params": {"max_new_tokens": ANSWER_TOKENS, "do_sample": False},
    }
    answer = LocalEndpoints(state_dir).invoke(endpoint, request, timeout=600)
    return str(answer["content"])


def stop_endpoint(state_dir: Path, endpoint: str) -> None:
    from backends.local.endpoint.control import LocalEndpoints

    endpoints = LocalEndpoints(state_dir)
    if endpoint in endpoints.list_endpoints():
        endpoints.stop_endpoint(endpoint)


def problems_of(report: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """Why the rehearsal failed (empty: it passed)."""
    problems = []
    first, second = report["attempts"]
    if not first.get("checkpoint"):
        problems.append(
            "the first run ended before its training job wrote a checkpoint: "
            f"{first['facts'].get('error', 'no error')}"
        )
    facts = second["facts"]
    if "error" in facts:
        problems.append(f"the run failed: {facts['error']}")
    elif facts.get("ending") != "promoted":
        problems.append(
            f"the run ended {facts.get('ending')!r}: on a fresh state the first model is promoted"
        )
    metrics = (facts.get("training") or {}).get("metrics") or {}
    if first.get("checkpoint") and not metrics.get("resumed_from_step"):
        problems.append("the training job did not resume from its checkpoint")
    for where, smoke in ((facts.get("rollout") or {}).get("smoke") or {}).items():
        for answer in smoke.get("answers") or []:
            if answer.get("error") or not str(answer.get("answer") or "").strip():
                problems.append(f"smoke test ({where}): no answer: {answer.get('error')}")
    if report.get("answer_error"):
        problems.append(f"the endpoint did not answer: {report['answer_error']}")
    elif "error" not in facts and not str(report.get("answer") or "").strip():
        problems.append("the endpoint's answer was empty")
    totals = report["totals"]
    if totals["peak_rss_gb"] > limits["max_rss_gb"]:
        problems.append(
            f"peak RSS {totals['peak_rss_gb']:.1f} GB is over the limit of "
            f"{limits['max_rss_gb']:g} GB"
        )
    if totals["wall_seconds"] > limits["max_wall_minutes"] * 60:
        problems.append(
            f"wall {totals['wall_seconds']:.0f} s is over the limit of "
            f"{limits['max_wall_minutes']:g} minutes"
        )
    return problems


def table(stages: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| stage | wall s | CPU s | peak RSS GB | anonymous GB | state folder GB "
        "| biggest processes (RSS GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        biggest = ", ".join(
            f"{name} {gb:.1f}" for name, gb in list(stage["peak_rss_by_process_gb"].items())[:2]
        )
        name = stage["name"] + (f" ({stage['note']})" if stage["note"] else "")
        peak = "" if stage["peak_rss_gb"] is None else f"{stage['peak_rss_gb']:.2f}"
        anon = "" if stage["peak_anon_gb"] is None else f"{stage['peak_anon_gb']:.2f}"
        lines.append(
            f"| {name} | {stage['wall_seconds']:.1f} | {stage['cpu_seconds']:.1f} | "
            f"{peak} | {anon} | {stage['state_disk_gb']:.2f} | {biggest} |"
        )
    return "\n".join(lines)


def rehearse(args: argparse.Namespace) -> int:
    from finetune_phi.settings import load_profile

    state_dir: Path = args.state_dir
    inputs = Inputs.under(args.inputs_dir, args.layers, args.dataset_rows)
    profile = load_profile(PROFILE, overrides=overrides(state_dir, inputs))
    endpoint = profile.endpoint.name

    print(f"rehearsal: inputs ({inputs.layers} layers, {inputs.dataset_rows} rows)", flush=True)
    started = time.time()
    subprocess.run([*this_module(inputs), "--prepare-only"], cwd=REPO, check=True)
    inputs_seconds = time.time() - started
    inputs_bytes = inputs.disk_bytes()
    clear_state(state_dir)
    state_dir.mkdir(parents=True)

    report: dict[str, Any] = {
        "layers": inputs.layers,
        "inputs": {
            "model_dir": str(inputs.model_dir),
            "dataset_dir": str(inputs.dataset_dir),
            "dataset": inputs.dataset_spec,
            "seconds": round(inputs_seconds, 1),
            "disk_gb": round(inputs_bytes / GB, 2),
        },
        "state_dir": str(state_dir),
        "profile": profile.model_dump(mode="json"),
    }
    timeline = Timeline(state_dir)
    stages: list[Stage] = []
    with metered(str(state_dir), SAMPLE_SECONDS, on_sample=timeline.add) as meter:
        begun = time.time()
        try:
            first = run_attempt(1, state_dir, inputs, cancel_at_checkpoint=True)
            second = run_attempt(2, state_dir, inputs, cancel_at_checkpoint=False)
            stages += first.stages() + second.stages()
            if "error" not in second.facts:
                asked = time.time()
                try:
                    report["answer"] = ask_endpoint(state_dir, endpoint)
                except Exception as exc:  # recorded: the rehearsal fails, saying why
                    report["answer_error"] = f"{type(exc).__name__}: {exc}"
                stages.append(
                    Stage("ask the endpoint", asked, time.time(), f"{ANSWER_TOKENS} tokens")
                )
        finally:
            if not args.keep:
                stopping = time.time()
                stop_endpoint(state_dir, endpoint)
                stages.append(Stage("stop the endpoint", stopping, time.time()))
            ended = time.time()
            timeline.disk_now()
    report["attempts"] = [
        {
            "number": a.number,
            "returncode": a.returncode,
            "checkpoint": a.checkpoint,
            "cancelled_after_seconds": round(a.cancelled - a.spawned, 1) if a.cancelled else None,
            "facts": a.facts,
        }
        for a in (first, second)
    ]
    report["stages"] = timeline.rows(stages)
    usage = meter.usage
    peak_disk = max((size for _, size in timeline.disk), default=0)
    report["totals"] = {
        "wall_seconds": round(ended - begun, 1),
        "cpu_seconds": round(usage.cpu_seconds, 1),
        "peak_rss_gb": round(usage.peak_rss / GB, 2),
        "peak_anon_gb": round(usage.peak_anon / GB, 2),
        "peak_rss_by_process_gb": {
            name: round(rss / GB, 2)
            for name, rss in sorted(usage.peak_rss_by_name.items(), key=lambda item: -item[1])
        },
        "state_disk_peak_gb": round(peak_disk / GB, 2),
        "disk_gb": round((peak_disk + inputs_bytes) / GB, 2),
    }
    limits = {"max_rss_gb": args.max_rss_gb, "max_wall_minutes": args.max_wall_minutes}
    report["limits"] = limits
    report["problems"] = problems_of(report, limits)
    ending = second.facts.get("ending") or "failed"
    report["ending"] = ending
    args.report.parent.mkdir(parents=True, exist_ok=True)
    timeline_file = args.report.with_suffix(".timeline.jsonl")
    timeline.write(timeline_file, begun)
    report["timeline"] = str(timeline_file)
    args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")

    totals = report["totals"]
    print()
    print(table(report["stages"]))
    print(
        f"\ninputs: {inputs.model_dir.name} and {inputs.dataset_dir.name}, "
        f"{report['inputs']['disk_gb']:.1f} GB, ready in {inputs_seconds:.0f} s; "
        f"report: {args.report}"
    )
    print(
        f"peak anonymous memory {totals['peak_anon_gb']:.1f} GB (the peak RSS less the pages of "
        "files the processes map, e.g. safetensors shards while a model loads: the kernel "
        "can drop those)"
    )
    for problem in report["problems"]:
        print(f"FAILED: {problem}")
    print(
        f"rehearsal: {ending}, peak RSS {totals['peak_rss_gb']:.1f} GB, "
        f"disk {totals['disk_gb']:.1f} GB, wall {totals['wall_seconds']:.0f} s"
    )
    return 1 if report["problems"] else 0


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rehearsal",
        description=__doc__.split("\n\n")[0]
        + " Writes a JSON report and a table of every stage (wall, CPU seconds, peak RSS, "
        "disk); see docs/rehearsal.md.",
        epilog="Examples:\n"
        "  .venv/bin/python -m bench.rehearsal                 # 32 layers: about half an hour\n"
        "  .venv/bin/python -m bench.rehearsal --layers 2      # a quick trial, a few minutes\n"
        "  .venv/bin/python -m bench.rehearsal --keep          # leave the endpoint serving\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=FULL_LAYERS,
        help="hidden layers of the Phi-3.5-mini-shaped model (default 32, the real one: "
        "3.82B parameters; 2 is the same shape at ~0.45B, for a quick trial)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO / "state" / "rehearsal",
        help="the rehearsal's own state folder, emptied first (default state/rehearsal)",
    )
    parser.add_argument(
        "--inputs-dir",
        type=Path,
        default=REPO / "state",
        help="where the model (models/phi35-shaped...) and the dataset (hub/ultrachat_200k-"
        "like...) are built once and kept between rehearsals (default state/)",
    )
    parser.add_argument(
        "--dataset-rows",
        type=int,
        default=ULTRACHAT_TRAIN_SFT,
        help="rows of the dataset's train_sft split (default ultrachat_200k's 207,865: its 1%% "
        "is the 2,079 rows the azure profile reads); fewer are quicker to write",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the endpoint serving at the end (at full size it holds 15 GB); "
        "`finetune-phi chat --profile rehearsal` talks to it",
    )
    parser.add_argument(
        "--report",
        type=Path,
        help="where the JSON report goes (default: rehearsal.json in the state folder)",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="build the model and write the dataset (each unless already there), run nothing",
    )
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=MAX_RSS_GB,
        help=f"fail when the run's peak RSS is over this (default {MAX_RSS_GB:g})",
    )
    parser.add_argument(
        "--max-wall-minutes",
        type=float,
        default=MAX_WALL_MINUTES,
        help=f"fail when the run takes longer (default {MAX_WALL_MINUTES:g})",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    if args.dataset_rows < 200:
        parser.error(
            "--dataset-rows must be at least 200 (its 1% must hold a train and a test row)"
        )
    args.state_dir = args.state_dir.resolve()
    args.inputs_dir = args.inputs_dir.resolve()
    args.report = (args.report or args.state_dir / "rehearsal.json").resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    inputs = Inputs.under(args.inputs_dir, args.layers, args.dataset_rows)
    if args.child:
        return run_flow(args.state_dir, inputs, args.child)
    if args.prepare_only:
        prepare_inputs(inputs)
        return 0
    return rehearse(args)


if __name__ == "__main__":
    sys.exit(main())
