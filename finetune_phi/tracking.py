"""MLflow on sqlite in the state folder: the experiment, and model versions with lineage tags.

Everything MLflow writes (the database and the artifacts) stays inside the state folder, so
deleting that folder resets the registry. Registration is idempotent: a version is found by
its training job's name before a new one is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from finetune_phi.state import StateLayout


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str | None
    source: str
    created: bool  # False when an existing version was found


def client(layout: StateLayout):  # -> mlflow.MlflowClient
    from mlflow import MlflowClient

    uri = layout.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(layout: StateLayout, name: str) -> str:
    """Get or create the experiment, with its artifacts inside the state folder."""
    layout.root.mkdir(parents=True, exist_ok=True)
    mlflow_client = client(layout)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    artifacts = layout.mlflow_artifacts_dir / name
    return str(mlflow_client.create_experiment(name, artifact_location=artifacts.as_uri()))


def find_version_by_tag(layout: StateLayout, name: str, key: str, value: str):
    """The model version of `name` whose tag `key` equals `value`, or None."""
    mlflow_client = client(layout)
    for version in mlflow_client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(key) == value:
            return version
    return None


def register_model_version(
    layout: StateLayout,
    name: str,
    model_dir: Path,
    *,
    run_id: str | None,
    job_name: str,
    tags: Mapping[str, str],
    experiment: str,
) -> ModelVersionRef:
    """Register the MLflow model in `model_dir` as a new version of `name` (once per job).

    The model's files are logged to the training run (or a registration run when the trainer
    ran without tracking), and the version points at them, so the registry owns its copy.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(layout)
    existing = find_version_by_tag(layout, name, "job_name", job_name)
    if existing is not None:
        return ModelVersionRef(name, str(existing.version), existing.run_id, existing.source, False)

    if run_id is None:
        experiment_id = ensure_experiment(layout, experiment)
        run_id = mlflow_client.create_run(
            experiment_id, run_name=f"register-{job_name}"
        ).info.run_id
        mlflow_client.set_terminated(run_id)
    mlflow_client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = mlflow_client.create_model_version(
        name, source=artifact_uri, run_id=run_id, tags={"job_name": job_name, **tags}
    )
    return ModelVersionRef(name, str(version.version), run_id, artifact_uri, True)
