"""Stage: run the fine-tuning job (the trainer as a child process) and collect its metrics.

The job folder is named after the job's inputs (see `finetune_phi.lineage`), and the trainer
resumes from its last checkpoint and skips work it has finished, so re-running this task after
a crash converges instead of starting over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task

from finetune_phi.lineage import training_job_name
from finetune_phi.settings import REPO_ROOT, Profile
from finetune_phi.state import StateLayout
from finetune_phi.tracking import ensure_experiment
from tasks.dataset import PreparedDataset
from trainer.fine_tune import METRICS_FILE, MLFLOW_MODEL_DIR

EXPERIMENT = "finetune-phi"
# Lines of the trainer's output worth showing in the Prefect UI; everything goes to the log file.
SHOWN_PREFIXES = ("step ", "eval loss", "fine-tuning", "resuming", "done", "Traceback", "Error")


class TrainingJobFailed(RuntimeError):
    """The trainer exited non-zero; the message carries the log file and its last lines."""


@dataclass(frozen=True)
class TrainingResult:
    job_name: str
    job_dir: str
    model_dir: str  # the MLflow model written by the trainer
    metrics: dict[str, Any]


def trainer_command(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "trainer.fine_tune", "--config", str(config_file)]


def job_config(
    profile: Profile, base_model: str, dataset: PreparedDataset, output: Path, job_name: str
) -> dict[str, Any]:
    """The trainer's YAML config: hyperparameters + run options + where things are."""
    return {
        **asdict(profile.training),
        **asdict(profile.training_run),
        "train_file": dataset.train_file,
        "eval_file": dataset.test_file,
        "model_output_dir": str(output),
        "base_model": base_model,
        "mlflow_experiment": EXPERIMENT,
        "run_name": job_name,
    }


@task(name="train-model", retries=1, retry_delay_seconds=5)
def train_model(profile: Profile, base_model: str, dataset: PreparedDataset) -> TrainingResult:
    logger = get_run_logger()
    layout = StateLayout(profile.state_dir)
    job_name = training_job_name(dataset.sha256, base_model, profile.training)
    job_dir = layout.job_dir(job_name)
    output = job_dir / "output"
    job_dir.mkdir(parents=True, exist_ok=True)
    config_file = job_dir / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(job_config(profile, base_model, dataset, output, job_name), sort_keys=True)
    )
    ensure_experiment(layout, EXPERIMENT)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": layout.mlflow_tracking_uri,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log_file = job_dir / "train.log"
    logger.info("training job %s (log: %s)", job_name, log_file)
    tail: list[str] = []
    with (
        log_file.open("a") as log,
        subprocess.Popen(
            trainer_command(config_file),
            cwd=REPO_ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            tail = [*tail[-19:], line.rstrip()]
            if line.startswith(SHOWN_PREFIXES):
                logger.info("%s", line.rstrip())
        returncode = process.wait()
    if returncode != 0:
        raise TrainingJobFailed(
            f"training job {job_name} failed (exit {returncode}); log: {log_file}\n"
            + "\n".join(tail)
        )
    metrics = json.loads((output / METRICS_FILE).read_text())
    return TrainingResult(job_name, str(job_dir), str(output / MLFLOW_MODEL_DIR), metrics)
