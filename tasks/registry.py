"""Stage: register the trained model with its lineage in the workspace's registry."""

from __future__ import annotations

from prefect import get_run_logger, runtime, task

from backends import open_workspace
from finetune_phi.lineage import git_commit
from finetune_phi.results import PreparedDataset, Registration, TrainingResult
from finetune_phi.rollout import PARAMETERS_TAG
from finetune_phi.run_plan import input_tags
from finetune_phi.settings import REPO_ROOT, Profile
from tasks.retry import retry_if_transient


def lineage_tags(
    profile: Profile, dataset: PreparedDataset, training: TrainingResult, flow_run_id: str
) -> dict[str, str]:
    """Everything needed to tell how a version was made; values are strings (registry tags)."""
    metrics = training.metrics

    def number(key: str) -> str:
        value = metrics.get(key)
        return "" if value is None else f"{float(value):.6g}"

    return {
        **input_tags(profile, dataset.sha256),
        "trainer_config_hash": str(metrics["config_hash"]),  # what the trainer really used
        "train_loss": number("train_loss"),
        "eval_loss": number("eval_loss"),
        "eval_loss_before": number("eval_loss_before"),
        "job_id": training.job_name,
        "mlflow_run_id": str(metrics.get("mlflow_run_id") or ""),
        "flow_run_id": flow_run_id,
        "git_commit": git_commit(REPO_ROOT),
        PARAMETERS_TAG: str(metrics.get("model_parameters") or ""),
    }


@task(
    name="register-model",
    retries=3,
    retry_delay_seconds=[5, 15, 45],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=1800,
)
def register_model(
    profile: Profile, dataset: PreparedDataset, training: TrainingResult
) -> Registration:
    logger = get_run_logger()
    workspace = open_workspace(profile)
    name = profile.model.registered_name
    before = {v.version for v in workspace.registry.list_model_versions(name)}
    version = workspace.registry.register_model(
        name,
        training.model_dir,
        tags=lineage_tags(profile, dataset, training, str(runtime.flow_run.id or "")),
        job_name=training.job_name,
    )
    created = version.version not in before
    verb = "registered" if created else "already registered as"
    logger.info("%s %s version %s", verb, name, version.version)
    return Registration(version, created)
