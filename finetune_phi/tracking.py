"""MLflow on sqlite in the state folder: the client and the experiment.

Everything MLflow writes (the database and the artifacts) stays inside the state folder, so
deleting that folder resets the registry. The registry itself is `backends.local.registry`.
"""

from __future__ import annotations

from finetune_phi.state import StateLayout


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
