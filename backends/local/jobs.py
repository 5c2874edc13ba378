"""Local training jobs: the trainer as a child process whose record lives in the state folder.

Each job has a folder `state/jobs/<name>/` holding `job.json` (the record), `config.yaml`
(the trainer's arguments), `train.log`, `exit.json` (written by the launcher when the process
ends) and `output/` (checkpoints, the MLflow model, metrics.json, and evaluation.json: the
gate's measurement of the model, the job's second step). An evaluation job (a registered model
measured by `serving.evaluate`) has the same folder with only `output/evaluation.json`.

Because the record is on disk and the process runs in its own session, a flow that crashed or
was restarted finds the job again: `submit` of a name that is running or completed returns
that job instead of starting another. A failed or canceled job is started again on submit and
the trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import yaml

from backends.local.launcher import EXIT_FILE, THEN
from backends.local.processes import read_cmdline
from finetune_phi.state import StateLayout
from finetune_phi.tracking import ensure_experiment
from finetune_phi.workspace import (
    ComputeRef,
    EnvironmentRef,
    EvaluationJobSpec,
    EvaluationSpec,
    JobRecord,
    JobStatus,
    NotFound,
    TrainingJobSpec,
)

RECORD_FILE = "job.json"
CONFIG_FILE = "config.yaml"
QUESTIONS_FILE = "questions.json"
EVALUATION_FILE = "evaluation.json"  # serving.evaluate.EVALUATION_FILE
MLFLOW_MODEL_DIR = "mlflow_model"  # trainer.fine_tune.MLFLOW_MODEL_DIR
LOG_FILE = "train.log"
OUTPUT_DIR = "output"
CANCEL_MARKER = "cancel_requested"
LAUNCHER_MODULE = "backends.local.launcher"
REPO_ROOT = Path(__file__).resolve().parents[2]


def trainer_config(spec: TrainingJobSpec, output_dir: Path) -> dict[str, Any]:
    """The trainer's YAML config (pure): hyperparameters + run options + where things are."""
    return {
        **asdict(spec.hyperparameters),
        **asdict(spec.run_options),
        "train_file": spec.train_file,
        "eval_file": spec.eval_file,
        "model_output_dir": str(output_dir),
        "base_model": spec.base_model,
        "mlflow_experiment": spec.experiment,
        "run_name": spec.name,
    }


def evaluation_command(
    python: str, spec: EvaluationSpec, model_dir: Path | str, output_dir: Path, job_dir: Path
) -> list[str]:
    """`serving.evaluate`'s command line for `spec` (its questions written beside the job)."""
    command = [
        python,
        "-m",
        "serving.evaluate",
        "--model_dir",
        str(model_dir),
        "--test_file",
        spec.test_file,
        "--output_dir",
        str(output_dir),
        "--max_conversations",
        str(spec.max_conversations),
        "--key",
        spec.key,
    ]
    if spec.questions:
        questions = job_dir / QUESTIONS_FILE
        _write_json(questions, list(spec.questions))
        command += ["--questions_file", str(questions)]
    return command


def _write_json(path: Path, data: Any) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    staging.replace(path)


def _tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


LOCAL_ENVIRONMENT = "finetune-phi-training"
LOCAL_ENVIRONMENT_VERSION = "venv"  # the project's own .venv is the environment here
LOCAL_COMPUTE = "local"


class LocalJobs:
    """Submit, watch and cancel trainer processes; records persist under `state/jobs/`."""

    def __init__(self, layout: StateLayout, *, python: str = sys.executable) -> None:
        self.layout = layout
        self.python = python

    # ------------------------------------------------------------------ environment, compute
    # This machine and the project's venv: recorded, nothing to provision.

    def ensure_environment(self) -> EnvironmentRef:
        return EnvironmentRef(LOCAL_ENVIRONMENT, LOCAL_ENVIRONMENT_VERSION)

    def ensure_compute(self) -> ComputeRef:
        return ComputeRef(LOCAL_COMPUTE, "Local")

    # ------------------------------------------------------------------ paths and records

    def job_dir(self, name: str) -> Path:
        return self.layout.job_dir(name)

    def _read_record(self, name: str) -> dict[str, Any]:
        path = self.job_dir(name) / RECORD_FILE
        if not path.is_file():
            raise NotFound(f"no local job named {name!r} (looked in {path.parent})")
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _to_job_record(self, data: Mapping[str, Any]) -> JobRecord:
        job_dir = self.job_dir(data["name"])
        output = job_dir / OUTPUT_DIR
        metrics_file = output / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        evaluation_file = output / EVALUATION_FILE
        evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else None
        status = JobStatus(data["status"])
        done = status is JobStatus.COMPLETED
        trains = data.get("kind", "training") == "training"
        return JobRecord(
            name=data["name"],
            status=status,
            tags=dict(data.get("tags", {})),
            model_uri=str(output / MLFLOW_MODEL_DIR) if done and trains else None,
            metrics=metrics if done else {},
            studio_url=str(job_dir),
            error=data.get("error"),
            evaluation=evaluation if done else None,
        )

    # ------------------------------------------------------------------ process facts

    def _process(self, data: Mapping[str, Any]) -> psutil.Process | None:
        """The job's launcher process, if it is alive and really ours (pids get reused)."""
        pid = data.get("pid")
        if not pid:
            return None
        try:
            process = psutil.Process(int(pid))
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = read_cmdline(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if LAUNCHER_MODULE in cmdline and str(self.job_dir(data["name"])) in cmdline:
            return process
        return None

    def _refresh(self, data: dict[str, Any]) -> dict[str, Any]:
        """Bring a non-terminal record up to date with the process and its exit file."""
        if JobStatus(data["status"]).is_terminal:
            return data
        job_dir = self.job_dir(data["name"])
        exit_file = job_dir / EXIT_FILE
        alive = self._process(data) is not None
        if alive:
            return data
        if (job_dir / CANCEL_MARKER).exists():
            # Checked first: a canceled trainer also leaves an exit.json (killed by SIGTERM).
            data.update(status=JobStatus.CANCELED.value, error="canceled")
        elif exit_file.is_file():
            returncode = json.loads(exit_file.read_text())["returncode"]
            if returncode == 0:
                data.update(status=JobStatus.COMPLETED.value, error=None)
            else:
                data.update(
                    status=JobStatus.FAILED.value,
                    error=f"trainer exited with code {returncode}; last lines of "
                    f"{job_dir / LOG_FILE}:\n{_tail(job_dir / LOG_FILE)}",
                )
        else:
            data.update(
                status=JobStatus.FAILED.value,
                error=f"job process {data.get('pid')} ended without an exit status "
                f"(killed?); last lines of {job_dir / LOG_FILE}:\n{_tail(job_dir / LOG_FILE)}",
            )
        data["ended_at"] = time.time()
        _write_json(job_dir / RECORD_FILE, data)
        return data

    # ------------------------------------------------------------------ the protocol's part

    def submit_job(
        self, spec: TrainingJobSpec, *, env: Mapping[str, str] | None = None
    ) -> JobRecord:
        """Start the job, or re-attach to the running or completed job of the same name.
        With `spec.evaluation`, the gate's evaluation of the trained model follows the
        trainer in the same job (a second process)."""

        def steps(job_dir: Path) -> list[list[str]]:
            (job_dir / CONFIG_FILE).write_text(
                yaml.safe_dump(trainer_config(spec, job_dir / OUTPUT_DIR), sort_keys=True)
            )
            train = [self.python, "-m", "trainer.fine_tune", "--config", str(job_dir / CONFIG_FILE)]
            if spec.evaluation is None:
                return [train]
            output = job_dir / OUTPUT_DIR
            evaluate = evaluation_command(
                self.python, spec.evaluation, output / MLFLOW_MODEL_DIR, output, job_dir
            )
            return [train, evaluate]

        return self._start(spec.name, spec.experiment, spec.tags, "training", steps, env)

    def submit_evaluation_job(
        self, spec: EvaluationJobSpec, *, env: Mapping[str, str] | None = None
    ) -> JobRecord:
        """Start `serving.evaluate` on the registered model's own folder, or re-attach to
        the job of the same name (running or completed: then its evaluation is reused)."""

        def steps(job_dir: Path) -> list[list[str]]:
            output = job_dir / OUTPUT_DIR
            return [
                evaluation_command(
                    self.python, spec.evaluation, spec.model_location, output, job_dir
                )
            ]

        return self._start(spec.name, spec.experiment, spec.tags, "evaluation", steps, env)

    def _start(
        self,
        name: str,
        experiment: str,
        tags: Mapping[str, str],
        kind: str,
        steps: Callable[[Path], list[list[str]]],  # writes its files, returns the commands
        env: Mapping[str, str] | None,
    ) -> JobRecord:
        job_dir = self.job_dir(name)
        if (job_dir / RECORD_FILE).is_file():
            data = self._refresh(self._read_record(name))
            if JobStatus(data["status"]) in {JobStatus.RUNNING, JobStatus.COMPLETED}:
                return self._to_job_record(data)
            attempt = int(data.get("attempt", 1)) + 1
        else:
            attempt = 1
        job_dir.mkdir(parents=True, exist_ok=True)
        # Created here, with its artifacts in the state folder: if the trainer created it,
        # MLflow would put the artifacts in ./mlruns of whatever directory it runs in.
        ensure_experiment(self.layout, experiment)
        for stale in (EXIT_FILE, CANCEL_MARKER):
            (job_dir / stale).unlink(missing_ok=True)
        commands: list[list[str]] = steps(job_dir)
        command = [arg for i, step in enumerate(commands) for arg in ([THEN] if i else []) + step]
        child_env = {
            **os.environ,
            **(env or {}),
            "MLFLOW_TRACKING_URI": self.layout.mlflow_tracking_uri,
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        with (job_dir / LOG_FILE).open("a") as log:
            log.write(f"--- attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            log.flush()
            process = subprocess.Popen(
                [self.python, "-m", LAUNCHER_MODULE, str(job_dir), "--", *command],
                cwd=REPO_ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: survives the flow, cancellable
            )
        data = {
            "name": name,
            "kind": kind,
            "status": JobStatus.RUNNING.value,
            "pid": process.pid,
            "attempt": attempt,
            "tags": dict(tags),
            "experiment": experiment,
            "started_at": time.time(),
            "command": command,
        }
        _write_json(job_dir / RECORD_FILE, data)
        return self._to_job_record(data)

    def get_job(self, name: str) -> JobRecord:
        return self._to_job_record(self._refresh(self._read_record(name)))

    def stream_job_logs(
        self, name: str, *, follow: bool = True, poll_seconds: float = 0.5
    ) -> Iterator[str]:
        """The job's log lines; with `follow`, until the job ends (like `az ml job stream`)."""
        log_path = self.job_dir(name) / LOG_FILE
        self._read_record(name)  # NotFound for an unknown job
        position = 0
        pending = ""
        while True:
            finished = not follow or self.get_job(name).status.is_terminal
            if log_path.is_file():
                with log_path.open(errors="replace") as handle:
                    handle.seek(position)
                    chunk = handle.read()
                    position = handle.tell()
                pending += chunk
                *lines, pending = pending.split("\n")
                yield from lines
            if finished:
                if pending:
                    yield pending
                return
            time.sleep(poll_seconds)

    def cancel_job(self, name: str, *, grace_seconds: float = 10.0) -> JobRecord:
        data = self._read_record(name)
        job_dir = self.job_dir(name)
        (job_dir / CANCEL_MARKER).touch()
        process = self._process(data)
        if process is not None:
            _stop_process_group(process, grace_seconds)
        return self.get_job(name)

    def find_jobs(self, tags: Mapping[str, str]) -> list[JobRecord]:
        found: list[JobRecord] = []
        if not self.layout.jobs_dir.is_dir():
            return found
        for record_file in sorted(self.layout.jobs_dir.glob(f"*/{RECORD_FILE}")):
            data = json.loads(record_file.read_text())
            if all(data.get("tags", {}).get(k) == v for k, v in tags.items()):
                found.append(self._to_job_record(self._refresh(data)))
        return found


def _stop_process_group(process: psutil.Process, grace_seconds: float) -> None:
    """SIGTERM the job's process group, then SIGKILL whatever is left after the grace period."""
    members = [process, *process.children(recursive=True)]
    try:
        os.killpg(process.pid, signal.SIGTERM)  # the launcher leads its own group
    except ProcessLookupError:
        return
    # psutil reaps the launcher when it is our child, so a zombie never looks alive here.
    _, alive = psutil.wait_procs(members, timeout=grace_seconds)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5)
