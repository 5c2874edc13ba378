"""The trainer's arguments, as dataclasses whose fields carry their help text.

`Hyperparameters` are what changes the trained weights: they are hashed into the model's
lineage and validated as the `training:` section of a profile. `JobArguments` say where
things are (files, output folder, MLflow) and `RunOptions` how the run behaves (checkpoints,
logging); changing those never counts as a new config.

Defaults are the tutorial's (Phi-3.5-mini, lr 5e-6, cosine, warmup 0.2, 3 epochs, batch 4,
max length 2048) except where the project knows better: SDPA attention instead of eager,
no gradient checkpointing unless memory needs it. Profiles override them per model size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

Method = Literal["full", "lora"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Attention = Literal["sdpa", "eager", "flash_attention_2"]
EvalStrategy = Literal["no", "epoch", "steps"]
Sharding = Literal["none", "fsdp"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Hyperparameters:
    """Everything that changes the trained weights (and so the config hash)."""

    # pydantic reads this when a profile validates its `training:` section against this class;
    # the trainer itself never imports pydantic.
    __pydantic_config__ = {"extra": "forbid", "strict": True}  # noqa: RUF012

    method: Method = field(
        default="full",
        metadata=_help(
            "full: update every weight (the tutorial). lora: train LoRA adapters with "
            "peft and merge them into the base weights on save."
        ),
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank (method=lora)."))
    lora_alpha: int = field(default=32, metadata=_help("LoRA alpha (method=lora)."))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout (method=lora)."))
    lora_target_modules: str = field(
        default="all-linear",
        metadata=_help(
            "Modules LoRA adapts: 'all-linear' or a comma-separated list (e.g. 'qkv_proj,o_proj')."
        ),
    )
    attn_implementation: Attention = field(
        default="sdpa",
        metadata=_help(
            "Attention kernel: sdpa (default), eager (the tutorial's), "
            "flash_attention_2 (CUDA only, needs flash-attn)."
        ),
    )
    precision: Precision = field(
        default="auto",
        metadata=_help(
            "auto: bf16 on a CUDA device that supports it, fp32 otherwise "
            "(CPUs here have no bf16 hardware: it would be ~50x slower); with require_gpu, "
            "no GPU is an error instead. bf16 and fp16 need a CUDA device."
        ),
    )
    packing: bool = field(
        default=True,
        metadata=_help(
            "Pack several conversations into one sequence (padding-free, "
            "best-fit decreasing) so no compute is spent on padding."
        ),
    )
    padding_free: bool = field(
        default=True,
        metadata=_help(
            "Without packing: concatenate each batch's conversations into one row with "
            "position ids instead of padding them to the longest (the same loss, no compute "
            "on pad tokens; measured 1.4x faster on the CPU). Packing is always padding-free."
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help(
            "Recompute activations in the backward pass: saves memory, costs ~30%% "
            "more compute. The tutorial turns it on; turn it on when memory needs it."
        ),
    )
    num_train_epochs: float = field(default=3.0, metadata=_help("Passes over the training set."))
    max_steps: int = field(
        default=-1, metadata=_help("Stop after this many optimizer steps (-1: use epochs).")
    )
    learning_rate: float = field(default=5e-6, metadata=_help("Peak learning rate."))
    lr_scheduler_type: str = field(
        default="cosine",
        metadata=_help("transformers scheduler name (cosine, linear, constant...)."),
    )
    warmup_ratio: float = field(
        default=0.2, metadata=_help("Fraction of the steps spent warming the learning rate up.")
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    per_device_train_batch_size: int = field(
        default=4, metadata=_help("Sequences per device per step (packed sequences when packing).")
    )
    per_device_eval_batch_size: int = field(default=4, metadata=_help("Eval batch size."))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("Micro-batches accumulated into one optimizer step.")
    )
    max_length: int = field(
        default=2048, metadata=_help("Tokens per training sequence; longer ones are truncated.")
    )
    seed: int = field(default=0, metadata=_help("Random seed (data order, init of LoRA weights)."))
    eval_strategy: EvalStrategy = field(
        default="epoch", metadata=_help("When to evaluate during training: no, epoch or steps.")
    )
    eval_steps: int = field(
        default=100, metadata=_help("Evaluate every N steps (eval_strategy=steps).")
    )

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of these values: the trainer-config part of lineage."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JobArguments:
    """Where the inputs and outputs are; never part of the config hash."""

    # Names keep the tutorial's spelling (--train-file, --eval-file, --model_output_dir): the
    # parser accepts both the dashed and the underscored form of every option.
    train_file: str = field(metadata=_help("Training data: JSONL in ultrachat_200k's schema."))
    eval_file: str = field(metadata=_help("Held-out data: JSONL in the same schema."))
    model_output_dir: str = field(
        metadata=_help(
            "Job output folder: mlflow_model/ (the MLflow transformers model), "
            "metrics.json and checkpoints/ (for resume) are written here."
        ),
    )
    base_model: str = field(
        default="microsoft/Phi-3.5-mini-instruct",
        metadata=_help("Hugging Face hub id or local folder of the model to fine-tune."),
    )
    config: str | None = field(
        default=None,
        metadata=_help("YAML file of defaults for any option here; command-line flags win."),
    )
    mlflow_tracking_uri: str | None = field(
        default=None,
        metadata=_help(
            "MLflow tracking URI; default: $MLFLOW_TRACKING_URI, and no tracking run "
            "when neither is set (the model is still saved)."
        ),
    )
    mlflow_experiment: str = field(
        default="finetune-phi", metadata=_help("MLflow experiment name.")
    )
    run_name: str | None = field(default=None, metadata=_help("MLflow run name."))


@dataclass(frozen=True)
class RunOptions:
    """How the run behaves (checkpoints, logging, threads, the GPU guard); never part of the
    config hash."""

    __pydantic_config__ = {"extra": "forbid", "strict": True}  # noqa: RUF012

    save_steps: int = field(
        default=500, metadata=_help("Save a resumable checkpoint every N optimizer steps.")
    )
    save_total_limit: int = field(default=2, metadata=_help("Checkpoints kept on disk."))
    keep_checkpoints: bool = field(
        default=False,
        metadata=_help(
            "Keep checkpoints/ after the model is saved (they are large: weights plus "
            "optimizer state)."
        ),
    )
    eval_before_training: bool = field(
        default=True, metadata=_help("Evaluate the base model first, to report the improvement.")
    )
    logging_steps: int = field(default=10, metadata=_help("Log loss and tokens/s every N steps."))
    torch_threads: int = field(
        default=0, metadata=_help("CPU threads for torch (0: torch's default).")
    )
    require_gpu: bool = field(
        default=False,
        metadata=_help(
            "Stop within seconds, before the model is loaded, when torch finds no usable CUDA "
            "GPU (saying what it found), instead of training on the CPU in fp32: hours for a "
            "3.8B model. The Azure backend turns it on unless backend.allow_cpu_training is "
            "true; the local backend leaves it off."
        ),
    )
    sharding: Sharding = field(
        default="none",
        metadata=_help(
            "none: every training process holds the whole model (one process, or data "
            "parallel with DDP when several train). fsdp: shard weights, gradients and "
            "optimizer state across the processes (PyTorch FSDP2 through accelerate), for a "
            "full fine-tune too big for one GPU; needs method=full, CUDA GPUs and more than "
            "one process (on Azure: backend.processes_per_node, training_instance_count). "
            "See docs/distributed.md."
        ),
    )


def option_names() -> frozenset[str]:
    """Every option the trainer accepts, across its three argument groups."""
    return frozenset(
        f.name for cls in (JobArguments, RunOptions, Hyperparameters) for f in fields(cls)
    )
