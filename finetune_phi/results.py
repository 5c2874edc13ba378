"""What the pipeline's stages hand each other and what a run returns: plain frozen values.

They live in the core (not beside the tasks that make them) because the report, the CLI and
the tests read them too, and those must not import the Prefect floors to do so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from finetune_phi.chat_data import DatasetManifest
from finetune_phi.evaluation import GateDecision
from finetune_phi.rollout import RolloutReport
from finetune_phi.settings import Profile
from finetune_phi.workspace import ModelVersion

# How a run ended. None of them is a crash; a failed job or a rolled-back rollout fails the
# run instead (with its reason), after traffic was restored.
Status = Literal["promoted", "not promoted", "up to date"]


@dataclass(frozen=True)
class PreparedDataset:
    directory: str
    train_file: str
    test_file: str
    manifest: DatasetManifest

    @property
    def sha256(self) -> str:
        return self.manifest.dataset_sha256


@dataclass(frozen=True)
class TrainingResult:
    job_name: str
    job_dir: str  # where to look: the job folder locally, the studio URL on Azure
    model_dir: str  # the MLflow model the job wrote
    metrics: dict[str, Any]
    # the gate's measurement of the model, made by the job's second step (evaluation.json)
    evaluation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Registration:
    model: ModelVersion
    created: bool  # False when this job's version was already registered (a re-run)


@dataclass(frozen=True)
class PipelineResult:
    settings: Profile
    status: Status
    dataset: PreparedDataset
    model: ModelVersion  # the candidate, or the champion when up to date
    training: TrainingResult | None = None
    registration: Registration | None = None
    gate: GateDecision | None = None
    rollout: RolloutReport | None = None
    traffic_before: dict[str, int] | None = None
    traffic_after: dict[str, int] | None = None
    # label -> file of the pictures the report drew (the gate's comparison, the traffic)
    pictures: Mapping[str, str] = field(default_factory=dict)
