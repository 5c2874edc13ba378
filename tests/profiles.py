"""Profiles for tests: the local profile shrunk to seconds, written as a real profile file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.config import Hyperparameters

# Trainer hyperparameters for a tiny model in tests: a high learning rate, few steps, short
# sequences. Tests take it with `dataclasses.replace(FAST_TRAINING, max_steps=...)`.
FAST_TRAINING = Hyperparameters(
    learning_rate=3e-3,
    warmup_ratio=0.0,
    lr_scheduler_type="constant",
    per_device_train_batch_size=8,
    per_device_eval_batch_size=16,
    max_length=256,
    max_steps=12,
    eval_strategy="no",
)

LOCAL_PROFILE = Path(__file__).resolve().parent.parent / "configs" / "profiles" / "local.yaml"


def small_profile_file(
    tmp_path: Path,
    base_model: Path,
    *,
    conversations: int = 120,
    training: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Path:
    """The local profile with a tmp state folder, a local base model folder, a small synthetic
    dataset and a few training steps; `sections` replace or extend whole top-level sections."""
    data = yaml.safe_load(LOCAL_PROFILE.read_text())
    data["state_dir"] = str(tmp_path / "state")
    data["model"]["base"] = str(base_model)
    data["data"]["source"] = {"kind": "synthetic", "conversations": conversations, "seed": 0}
    data["training"].update(
        {
            "max_steps": 6,
            "learning_rate": 3e-3,
            "max_length": 256,
            "warmup_ratio": 0.0,
            "per_device_train_batch_size": 8,
            **(training or {}),
        }
    )
    data["training_run"].update({"save_steps": 1000, "logging_steps": 2})
    data["rollout"] = {"traffic_steps": [50, 100], "requests_per_step": 2}
    data["gate"] = {"max_eval_conversations": 48}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
