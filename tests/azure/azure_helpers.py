"""Shared builders for the Azure backend tests."""

from __future__ import annotations

from backends.workspace import TrainingJobSpec
from trainer.config import Hyperparameters, RunOptions

BASE_MODEL = "microsoft/Phi-3.5-mini-instruct"


def job_spec(train: str, test: str, name: str = "ft-0123abcd-base-cfg") -> TrainingJobSpec:
    hp = Hyperparameters(num_train_epochs=1.0, learning_rate=1e-4, packing=False)
    return TrainingJobSpec(
        name=name,
        experiment="finetune-phi",
        base_model=BASE_MODEL,
        train_file=train,
        eval_file=test,
        hyperparameters=hp,
        run_options=RunOptions(save_steps=50),
        tags={"dataset_sha256": "d" * 64, "trainer_config_hash": hp.config_hash()},
        display_name="fine-tune test",
    )
