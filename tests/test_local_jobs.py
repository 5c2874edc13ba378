"""Local jobs: the real trainer as a process group, records on disk, re-attach, cancel, resume.

A "flow restart" is simulated by a fresh `LocalJobs` on the same state folder: it knows only
what is on disk, exactly like a flow process started again.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from profiles import FAST_TRAINING

from backends.local.jobs import LocalJobs
from finetune_phi.state import StateLayout
from finetune_phi.workspace import JobStatus, NotFound, TrainingJobSpec
from trainer.config import RunOptions
from trainer.fine_tune import FAULT_ENV

pytestmark = pytest.mark.slow


def spec(chat_files: dict[str, Path], base: Path, name: str, max_steps: int) -> TrainingJobSpec:
    return TrainingJobSpec(
        name=name,
        experiment="tests",
        base_model=str(base),
        train_file=str(chat_files["train"]),
        eval_file=str(chat_files["test"]),
        hyperparameters=replace(FAST_TRAINING, max_steps=max_steps),
        run_options=RunOptions(save_steps=2, logging_steps=1, eval_before_training=False),
        tags={"purpose": "test", "job": name},
    )


def wait_terminal(jobs: LocalJobs, name: str, timeout: float = 180) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.get_job(name).status
        if status.is_terminal:
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {name} still {status} after {timeout} s")


def test_unknown_job_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no local job named 'nope'"):
        LocalJobs(StateLayout(tmp_path)).get_job("nope")


def test_restarted_flow_reattaches_instead_of_starting_another(
    tmp_path: Path, chat_files: dict[str, Path], tiny_model_dir: Path
) -> None:
    job_spec = spec(chat_files, tiny_model_dir, "ft-reattach", max_steps=6)
    first = LocalJobs(StateLayout(tmp_path)).submit_job(job_spec)
    assert first.status is JobStatus.RUNNING
    pid = json.loads((tmp_path / "jobs/ft-reattach/job.json").read_text())["pid"]

    restarted = LocalJobs(StateLayout(tmp_path))  # a new flow process: only the disk is shared
    again = restarted.submit_job(job_spec)
    assert again.status is JobStatus.RUNNING
    assert json.loads((tmp_path / "jobs/ft-reattach/job.json").read_text())["pid"] == pid

    lines = list(restarted.stream_job_logs("ft-reattach", follow=True))
    assert any(line.startswith("step 6/6") for line in lines), lines[-10:]
    done = restarted.get_job("ft-reattach")
    assert done.status is JobStatus.COMPLETED
    assert done.model_uri and (Path(done.model_uri) / "MLmodel").is_file()
    assert done.metrics["global_step"] == 6

    # Submitting a completed job returns it: one attempt in the log, no new process.
    assert restarted.submit_job(job_spec).status is JobStatus.COMPLETED
    log = (tmp_path / "jobs/ft-reattach/train.log").read_text()
    assert log.count("--- attempt") == 1
    assert [j.name for j in restarted.find_jobs({"purpose": "test"})] == ["ft-reattach"]
    assert restarted.find_jobs({"purpose": "other"}) == []


def test_failed_job_reports_why_and_resubmit_resumes_from_checkpoint(
    tmp_path: Path, chat_files: dict[str, Path], tiny_model_dir: Path
) -> None:
    jobs = LocalJobs(StateLayout(tmp_path))
    job_spec = spec(chat_files, tiny_model_dir, "ft-crash", max_steps=6)

    jobs.submit_job(job_spec, env={FAULT_ENV: "4"})
    assert wait_terminal(jobs, "ft-crash") is JobStatus.FAILED
    failed = jobs.get_job("ft-crash")
    assert failed.error and "exited with code" in failed.error and "simulated crash" in failed.error
    assert failed.model_uri is None

    jobs.submit_job(job_spec)  # no fault this time
    assert wait_terminal(jobs, "ft-crash") is JobStatus.COMPLETED
    log = (tmp_path / "jobs/ft-crash/train.log").read_text()
    assert "--- attempt 2" in log
    assert "resuming from" in log
    # The crash hook fires at the end of step 4, before that step's checkpoint is written.
    assert jobs.get_job("ft-crash").metrics["resumed_from_step"] == 2


def test_cancel_stops_the_whole_process_group(
    tmp_path: Path, chat_files: dict[str, Path], tiny_model_dir: Path
) -> None:
    jobs = LocalJobs(StateLayout(tmp_path))
    jobs.submit_job(spec(chat_files, tiny_model_dir, "ft-cancel", max_steps=10_000))
    pid = json.loads((tmp_path / "jobs/ft-cancel/job.json").read_text())["pid"]
    launcher = psutil.Process(pid)
    # Wait until the trainer (the launcher's child) is up, so there is a group to stop.
    deadline = time.monotonic() + 60
    while not launcher.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    trainer_pids = [child.pid for child in launcher.children(recursive=True)]
    assert trainer_pids

    cancelled = jobs.cancel_job("ft-cancel", grace_seconds=5)

    assert cancelled.status is JobStatus.CANCELED
    for stale in (pid, *trainer_pids):
        assert not psutil.pid_exists(stale) or psutil.Process(stale).status() == "zombie"


def test_the_launcher_runs_steps_in_order_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    """A training job's steps (the trainer, then the gate's evaluation): the second runs only
    after the first succeeded; exit.json has the failing step's status."""
    import subprocess
    import sys

    from backends.local.launcher import EXIT_FILE, THEN

    def launch(job_dir: Path, *steps: list[str]) -> int:
        job_dir.mkdir()
        command = [arg for i, step in enumerate(steps) for arg in ([THEN] if i else []) + step]
        done = subprocess.run(
            [sys.executable, "-m", "backends.local.launcher", str(job_dir), "--", *command],
            timeout=60,
        )
        assert json.loads((job_dir / EXIT_FILE).read_text())["returncode"] == done.returncode
        return done.returncode

    def write(path: Path) -> list[str]:
        return [sys.executable, "-c", f"open({str(path)!r}, 'a').write('x')"]

    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    assert launch(tmp_path / "a", write(tmp_path / "1"), write(tmp_path / "2")) == 0
    assert (tmp_path / "1").read_text() == (tmp_path / "2").read_text() == "x"
    assert launch(tmp_path / "b", fail, write(tmp_path / "3")) == 3
    assert not (tmp_path / "3").exists()
