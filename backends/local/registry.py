"""The local model registry: MLflow's model registry on sqlite in the state folder.

Versions carry their lineage as tags (see `tasks.registry.lineage_tags`) and the tag
`job_name`, which makes registration idempotent: the version a job made is found, not made
twice. Aliases follow the workspace protocol: `champion` is the live model, `challenger` the
one being rolled out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune_phi.state import StateLayout
from finetune_phi.tracking import client, ensure_experiment
from finetune_phi.workspace import ModelVersion, NotFound

REGISTRATION_EXPERIMENT = "finetune-phi"


def _is_missing(exc: Exception) -> bool:
    text = str(exc)
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower()


class LocalRegistry:
    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout

    def _client(self) -> Any:
        return client(self.layout)

    @staticmethod
    def _to_model_version(version: Any) -> ModelVersion:
        return ModelVersion(
            name=version.name,
            version=str(version.version),
            source=version.source,
            tags=dict(version.tags),
            aliases=tuple(sorted(getattr(version, "aliases", []) or [])),
        )

    def _find_by_job(self, name: str, job_name: str) -> ModelVersion | None:
        for version in self.list_model_versions(name):
            if version.tags.get("job_name") == job_name:
                return version
        return None

    def register_model(
        self, name: str, model_uri: str, *, tags: Mapping[str, str], job_name: str | None = None
    ) -> ModelVersion:
        """Register the MLflow model folder `model_uri` as a new version of `name`.

        The files are logged to the training run named by the `mlflow_run_id` tag when there
        is one (else to a registration run), so the registry owns its copy and the job folder
        can be deleted.
        """
        from mlflow.exceptions import MlflowException

        if job_name is not None:
            existing = self._find_by_job(name, job_name)
            if existing is not None:
                return existing
        mlflow_client = self._client()
        run_id = tags.get("mlflow_run_id") or None
        if run_id is None:
            experiment_id = ensure_experiment(self.layout, REGISTRATION_EXPERIMENT)
            run = mlflow_client.create_run(experiment_id, run_name=f"register-{job_name or name}")
            run_id = run.info.run_id
            mlflow_client.set_terminated(run_id)
        mlflow_client.log_artifacts(run_id, str(Path(model_uri)), artifact_path="model")
        artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
        try:
            mlflow_client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
        all_tags = {**tags, **({"job_name": job_name} if job_name else {})}
        version = mlflow_client.create_model_version(
            name, source=artifact_uri, run_id=run_id, tags=all_tags
        )
        return self._to_model_version(version)

    def get_model(self, name: str, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self._to_model_version(self._client().get_model_version(name, version))
        except MlflowException as exc:
            if _is_missing(exc):
                raise NotFound(f"model {name} version {version} is not registered") from None
            raise

    def get_model_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self._client().get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if _is_missing(exc) or "alias" in str(exc).lower():
                return None
            raise
        return self._to_model_version(version)

    def list_model_versions(self, name: str) -> list[ModelVersion]:
        versions = self._client().search_model_versions(f"name = '{name}'")
        found = [self._to_model_version(v) for v in versions]
        return sorted(found, key=lambda v: int(v.version))

    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        self.get_model(name, version)  # NotFound rather than MLflow's error text
        mlflow_client = self._client()
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, value)

    def model_location(self, name: str, version: str) -> str:
        """The registry's own folder of the version (jobs here read it in place)."""
        from urllib.parse import unquote, urlparse

        source = self.get_model(name, version).source
        parsed = urlparse(source)
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(source)
        if not path.is_dir():
            raise NotFound(f"files of model {name} version {version} missing at {path}")
        return str(path)

    def download_model(self, name: str, version: str, destination: Path) -> Path:
        """The registry's artifacts are already on this disk: return their folder."""
        return Path(self.model_location(name, version))

    def set_model_alias(self, name: str, alias: str, version: str) -> None:
        self._client().set_registered_model_alias(name, alias, version)

    def delete_model_alias(self, name: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client().delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            if not _is_missing(exc):
                raise
