"""Stage: register the trained model with its lineage (MLflow model registry on sqlite)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, runtime, task

from finetune_phi.lineage import git_commit
from finetune_phi.settings import REPO_ROOT, Profile
from finetune_phi.state import StateLayout
from finetune_phi.tracking import ModelVersionRef, register_model_version
from tasks.dataset import PreparedDataset
from tasks.training import EXPERIMENT, TrainingResult


def lineage_tags(
    profile: Profile, dataset: PreparedDataset, training: TrainingResult, flow_run_id: str
) -> dict[str, str]:
    """Everything needed to tell how a version was made; values are strings (MLflow tags)."""
    metrics = training.metrics

    def number(key: str) -> str:
        value = metrics.get(key)
        return "" if value is None else f"{float(value):.6g}"

    return {
        "dataset_sha256": dataset.sha256,
        "base_model": profile.model.base,
        "trainer_config_hash": str(metrics["config_hash"]),
        "train_loss": number("train_loss"),
        "eval_loss": number("eval_loss"),
        "eval_loss_before": number("eval_loss_before"),
        "job_id": training.job_name,
        "flow_run_id": flow_run_id,
        "git_commit": git_commit(REPO_ROOT),
        "profile": profile.name,
    }


@task(name="register-model", retries=2, retry_delay_seconds=5)
def register_model(
    profile: Profile, dataset: PreparedDataset, training: TrainingResult
) -> ModelVersionRef:
    logger = get_run_logger()
    flow_run_id = str(runtime.flow_run.id or "")
    ref = register_model_version(
        StateLayout(profile.state_dir),
        profile.model.registered_name,
        Path(training.model_dir),
        run_id=training.metrics.get("mlflow_run_id"),
        job_name=training.job_name,
        tags=lineage_tags(profile, dataset, training, flow_run_id),
        experiment=EXPERIMENT,
    )
    verb = "registered" if ref.created else "already registered as"
    logger.info("%s %s version %s", verb, ref.name, ref.version)
    return ref
