"""`python -m trainer.fine_tune`, recorded: run by torchrun in tests/test_distributed_training.py.

Each rank runs the trainer's own `main` with a few of its functions wrapped, and writes
`$FINETUNE_PHI_PROBE_DIR/rank-<RANK>.json` when it exits (also when it crashes):

- `writes`: which of the writing functions ran on this rank (the MLflow model, metrics.json,
  the loss curve, the MLflow run) and the folders it deleted;
- `batches`: a digest of each training micro-batch it trained on, in order;
- `resume_from`: the checkpoint its `trainer.train` resumed from (null: none);
- `global_step`: the trainer's step when `train` returned or raised.

Nothing here changes what the trainer does.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from trainer import fine_tune

PROBE_DIR_ENV = "FINETUNE_PHI_PROBE_DIR"
WRITERS = (
    "save_mlflow_model",
    "write_json_atomically",
    "write_loss_curves",
    "_start_mlflow_run",
    "_finish_mlflow_run",
)

record: dict[str, Any] = {
    "rank": int(os.environ.get("RANK", "0")),
    "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    "writes": [],
    "deleted": [],
    "batches": [],
    "resume_from": None,
    "global_step": None,
}


def _save_record() -> None:
    folder = Path(os.environ[PROBE_DIR_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{record['rank']}.json").write_text(json.dumps(record, indent=2) + "\n")


def _recorded(name: str) -> None:
    original = getattr(fine_tune, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record["writes"].append(name)
        return original(*args, **kwargs)

    setattr(fine_tune, name, wrapper)


class _RecordingShutil:
    """`shutil` as the trainer module sees it, with deletions recorded (by folder name)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(shutil, name)

    @staticmethod
    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        record["deleted"].append(Path(path).name)
        shutil.rmtree(path, *args, **kwargs)


def _traced_build_trainer(*args: Any, **kwargs: Any) -> Any:
    trainer = build_trainer(*args, **kwargs)
    training_step = trainer.training_step
    train = trainer.train

    def traced_step(model: Any, inputs: Any, *rest: Any, **more: Any) -> Any:
        ids = inputs["input_ids"].detach().cpu().contiguous().numpy().tobytes()
        record["batches"].append(hashlib.sha256(ids).hexdigest()[:16])
        return training_step(model, inputs, *rest, **more)

    def traced_train(*train_args: Any, **train_kwargs: Any) -> Any:
        record["resume_from"] = train_kwargs.get("resume_from_checkpoint")
        try:
            return train(*train_args, **train_kwargs)
        finally:
            record["global_step"] = trainer.state.global_step
            _save_record()  # now as well: a rank torchrun stops runs no atexit hook

    trainer.training_step = traced_step
    trainer.train = traced_train
    return trainer


build_trainer = fine_tune.build_trainer

if __name__ == "__main__":
    for writer in WRITERS:
        _recorded(writer)
    fine_tune.shutil = _RecordingShutil()  # type: ignore[assignment]
    fine_tune.build_trainer = _traced_build_trainer
    atexit.register(_save_record)
    fine_tune.main(*fine_tune.parse_arguments(sys.argv[1:]))
