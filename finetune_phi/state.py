"""Where everything lives inside the state folder: one place that names the paths.

The state folder holds the MLflow database and artifacts, datasets, built models and job
folders. It is outside git, configurable (`state_dir` in the profile) and safe to delete.
This module only computes paths; callers create what they write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def tiny_model_dir(self) -> Path:
        return self.models_dir / "tiny-phi3"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    def dataset_dir(self, name: str) -> Path:
        return self.datasets_dir / name

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def job_dir(self, job_name: str) -> Path:
        return self.jobs_dir / job_name

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"
