"""The fine-tuning pipeline as a Prefect flow: wiring only, no logic.

    ensure base model -> prepare dataset -> train -> register -> blue-green rollout

Later stages (quality gate, Prompt flow smoke test, report) plug in around the rollout.
Run it with `finetune-phi demo`, or through a Prefect deployment (prefect.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow

from finetune_phi.rollout import RolloutReport
from finetune_phi.settings import Profile, load_profile
from tasks.base_model import ensure_base_model
from tasks.dataset import PreparedDataset, prepare_dataset_task
from tasks.registry import Registration, register_model
from tasks.rollout import rollout_model
from tasks.training import TrainingResult, train_model


@dataclass(frozen=True)
class PipelineResult:
    settings: Profile
    dataset: PreparedDataset
    training: TrainingResult
    registration: Registration
    rollout: RolloutReport


@flow(name="finetune-phi", log_prints=True)
def finetune_pipeline(
    profile: str = "local", overrides: dict[str, Any] | None = None
) -> PipelineResult:
    """Fine-tune and register a Phi-3 model as the profile describes.

    Args:
        profile: profile name (configs/profiles/<name>.yaml) or path to a profile file.
        overrides: nested keys that replace the profile's, e.g.
            {"training": {"num_train_epochs": 1.0}}; validated like the profile.
    """
    settings = load_profile(profile, overrides=overrides)
    base_model = ensure_base_model(settings)
    dataset = prepare_dataset_task(settings, base_model)
    training = train_model(settings, base_model, dataset)
    registration = register_model(settings, dataset, training)
    rollout = rollout_model(settings, registration.model)
    return PipelineResult(settings, dataset, training, registration, rollout)
