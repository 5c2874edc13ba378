"""Fine-tune Phi-3 / Phi-3.5-mini-instruct (or the tiny Phi-3) on chat data with TRL.

The same script runs from the local job runner, inside the Azure ML command job and by hand:

    # the tutorial's arguments
    python -m trainer.fine_tune --train-file data/train.jsonl --eval-file data/test.jsonl \
        --model_output_dir out --base_model microsoft/Phi-3.5-mini-instruct
    # defaults < YAML --config < command-line flags
    python -m trainer.fine_tune --config job.yaml --learning_rate 1e-4 --method lora
    # where training must run on a GPU: no usable GPU stops it in seconds, saying what was found
    python -m trainer.fine_tune --config job.yaml --require_gpu
    python -m trainer.fine_tune --help

It writes into --model_output_dir:
    mlflow_model/   the fine-tuned model as an MLflow transformers model (registered from here,
                    not from the run's artifact store: see SEED.md)
    metrics.json    train/eval loss, eval loss before training, real tokens/s, duration, lineage
    loss_curves.png training and eval loss by step (also logged to the MLflow run)
    checkpoints/    resumable checkpoints while training; a re-run resumes from the last one

A re-run whose output already holds a finished model for the same hyperparameters does
nothing and exits 0, so a retried job converges instead of training twice.

Several processes train one model together when a launcher starts them (torchrun by hand, an
Azure ML job with PyTorch distribution): each rank trains on its own shard of every batch and
all resume from the same checkpoint; only rank 0 writes mlflow_model/, metrics.json and the
loss curve, logs to MLflow and deletes the checkpoints, and the others wait for it
(docs/distributed.md):

    torchrun --nproc_per_node 2 -m trainer.fine_tune --config job.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from trainer.config import Hyperparameters, JobArguments, RunOptions, option_names

LOGGER = logging.getLogger("trainer.fine_tune")

MLFLOW_MODEL_DIR = "mlflow_model"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
LOSS_CURVES_FILE = "loss_curves.png"
# FSDP: the gathered full model, staged by rank 0 on its way to mlflow_model/ (then removed).
FSDP_GATHERED_DIR = "fsdp_gathered.partial"
# Test hook for resume: raise after this optimizer step, as a crash would (never set in real use).
FAULT_ENV = "FINETUNE_PHI_FAIL_AFTER_STEP"
# How long a rank waits for the others (rank 0 alone saves a model of several GB while they
# wait for it): the process group's timeout, torch's and transformers' default being 30 min.
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)

T = TypeVar("T")


class SimulatedCrash(RuntimeError):
    """Raised by the FAULT_ENV test hook."""


# --------------------------------------------------------------------------- arguments


def make_parser():  # -> transformers.HfArgumentParser
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        (JobArguments, RunOptions, Hyperparameters),  # type: ignore[arg-type]  # frozen dataclasses
        description="Fine-tune a Phi-3 model on chat data (ultrachat_200k schema) with TRL.",
    )
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML mapping of option names to values; unknown names are errors naming the key."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(
            f"--config {path}: expected a mapping of options, got {type(data).__name__}"
        )
    unknown = sorted(set(data) - option_names())
    if unknown:
        raise SystemExit(f"--config {path}: unknown option(s): {', '.join(unknown)}")
    return data


def parse_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[JobArguments, RunOptions, Hyperparameters]:
    """Parse with precedence: dataclass defaults < YAML --config < command-line flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = make_parser()
    if known.config:
        defaults = read_config_file(known.config)
        parser.set_defaults(**defaults)
        # A required option given by the YAML file is no longer required on the command line.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
    job, run, hp = parser.parse_args_into_dataclasses(args=argv)
    return job, run, hp


# --------------------------------------------------------------------------- planning (pure)


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32"


def plan_device(
    precision: str, *, cuda: bool, bf16_supported: bool, found: str | None = None
) -> DevicePlan:
    """bf16 on a GPU that has it, fp32 elsewhere: CPUs here emulate bf16 ~50x slower.

    `found` (`GpuProbe.describe()`) is added to an error as its `found:` line.
    """
    device = "cuda" if cuda else "cpu"
    found_line = f"\n  found: {found}" if found else ""
    if precision == "auto":
        return DevicePlan(device, "bf16" if cuda and bf16_supported else "fp32")
    if precision in {"bf16", "fp16"} and not cuda:
        raise SystemExit(
            f"--precision {precision} needs a CUDA device; use fp32 or auto on CPU{found_line}"
        )
    if precision == "bf16" and not bf16_supported:
        raise SystemExit(
            f"--precision bf16: this GPU has no bf16 support; use fp16 or auto{found_line}"
        )
    return DevicePlan(device, precision)


@dataclass(frozen=True)
class GpuProbe:
    """What torch finds on this machine: `probe_gpu` fills it in, tests write it by hand."""

    cuda_available: bool  # torch.cuda.is_available()
    device_count: int  # torch.cuda.device_count()
    torch_version: str  # torch.__version__
    cuda_build: str | None  # torch.version.cuda: the CUDA torch was built for, None if CPU-only
    bf16_supported: bool = False  # torch.cuda.is_bf16_supported(), on a usable GPU only
    visible_devices: str | None = None  # $CUDA_VISIBLE_DEVICES, when it is set

    @property
    def usable(self) -> bool:
        return self.cuda_available and self.device_count > 0

    def describe(self) -> str:
        build = f"built for CUDA {self.cuda_build}" if self.cuda_build else "a CPU-only build"
        found = (
            f"torch.cuda.is_available() {self.cuda_available}, "
            f"{self.device_count} CUDA device(s), torch {self.torch_version} ({build})"
        )
        if self.visible_devices is not None:
            found += f", CUDA_VISIBLE_DEVICES={self.visible_devices!r}"
        return found


def gpu_problem(probe: GpuProbe) -> str | None:
    """Why `--require_gpu` stops this run, or None on a usable GPU: what torch found and what
    to do, most likely fix first. It is the whole of what a user sees (in an Azure job: the
    last lines of its log), so it names the profile keys as well as the flag."""
    if probe.usable:
        return None
    fixes = [
        "run on a GPU machine: on Azure ML set backend.training_sku to a GPU VM size (NC or "
        "ND series, e.g. Standard_NC24ads_A100_v4), and check its NVIDIA driver (nvidia-smi)"
    ]
    hidden = probe.visible_devices is not None and probe.visible_devices.strip() in {"", "-1"}
    if hidden and probe.cuda_build is not None:
        fixes.insert(0, "CUDA_VISIBLE_DEVICES hides every GPU: unset it or name the GPUs to use")
    if probe.cuda_build is None:
        fixes.append(
            "this torch is a CPU-only build: the training environment needs a CUDA build of "
            "torch (pip's default Linux wheel is one)"
        )
    lines = [
        "--require_gpu: no usable CUDA GPU, so the run stops before loading the model instead "
        "of training on the CPU in fp32 (hours for a 3.8B model)",
        f"  found: {probe.describe()}",
        *(f"  {'to fix' if i == 0 else 'also'}: {fix}" for i, fix in enumerate(fixes)),
        "  or: allow CPU training explicitly (backend.allow_cpu_training: true in an Azure "
        "profile; by hand, leave out --require_gpu)",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes that train one model together.

    The launcher says so in the environment, as `torch.distributed`'s env:// initialisation
    reads it: torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every
    worker it starts; an Azure ML command job with `PyTorchDistribution` starts
    `process_count_per_instance` processes on each of `instance_count` nodes and sets
    MASTER_ADDR, MASTER_PORT, WORLD_SIZE and NODE_RANK for each node and RANK and LOCAL_RANK
    for each process (Microsoft Learn, "Distributed GPU training guide (SDK v2)", PyTorch
    section: learn.microsoft.com/azure/machine-learning/how-to-train-distributed-gpu). A plain
    `python -m trainer.fine_tune` has none of them: rank 0 of 1.
    """

    rank: int = 0  # global: 0 is the main process, the one that writes
    local_rank: int = 0  # on this node: which GPU
    world_size: int = 1  # processes over all nodes

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Ranks:
        def number(name: str, default: int) -> int:
            text = environ.get(name, "").strip()
            try:
                return int(text) if text else default
            except ValueError:
                raise SystemExit(f"{name}={text!r}: not a whole number") from None

        ranks = cls(number("RANK", 0), number("LOCAL_RANK", 0), number("WORLD_SIZE", 1))
        if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size:
            raise SystemExit(
                f"RANK={ranks.rank}, WORLD_SIZE={ranks.world_size}: the rank must be between 0 "
                "and WORLD_SIZE - 1 (set by the launcher: torchrun, or Azure ML's PyTorch "
                "distribution)"
            )
        return ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} (local rank {self.local_rank})"


def sharding_arguments(
    run: RunOptions, hp: Hyperparameters, plan: DevicePlan, ranks: Ranks
) -> dict[str, Any]:
    """SFTConfig's `fsdp`/`fsdp_config` for `run.sharding`, or why this run cannot shard.

    FSDP (version 2, through accelerate) wraps each decoder layer (the model's
    `_no_split_modules`: Phi3DecoderLayer) and shards it fully across the processes; the
    trained model is gathered whole (FULL_STATE_DICT) to be saved. accelerate turns FSDP on
    only for a GPU-like process group: on CPU (gloo) it would silently train unsharded, so a
    CPU run is refused here rather than pretending to shard.
    """
    if run.sharding == "none":
        return {}
    problems = []
    if hp.method != "full":
        problems.append(
            f"method={hp.method}: sharding is for full fine-tuning; LoRA's trainable weights are "
            "small, so data parallel (sharding none) already fits"
        )
    if plan.device != "cuda":
        problems.append(
            f"this run trains on {plan.device}: FSDP shards over CUDA GPUs (accelerate enables it "
            "for GPU process groups only, not for CPU/gloo)"
        )
    if not ranks.distributed:
        problems.append(
            "one process (WORLD_SIZE unset or 1): start one per GPU, with torchrun "
            "--nproc_per_node N by hand or backend.processes_per_node on Azure"
        )
    if problems:
        raise SystemExit(
            "--sharding fsdp cannot be used here:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,  # full shard (ZeRO-3-like)
            "state_dict_type": "FULL_STATE_DICT",
        },
    }


def build_sft_config(
    run: RunOptions,
    hp: Hyperparameters,
    plan: DevicePlan,
    checkpoints_dir: Path,
    *,
    ranks: Ranks | None = None,
):  # -> trl.SFTConfig
    from trl import SFTConfig

    ranks = Ranks.from_environ() if ranks is None else ranks
    return SFTConfig(
        output_dir=str(checkpoints_dir),
        # hyperparameters
        num_train_epochs=hp.num_train_epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        # transformers 5 reads a float below 1 as a ratio of the total steps.
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        per_device_train_batch_size=hp.per_device_train_batch_size,
        per_device_eval_batch_size=hp.per_device_eval_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        gradient_checkpointing=hp.gradient_checkpointing,
        max_length=hp.max_length,
        packing=hp.packing,
        # Best-fit decreasing packing is padding-free: no compute is spent on pad tokens.
        packing_strategy="bfd",
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=plan.device == "cpu",
        eval_strategy=hp.eval_strategy,
        eval_steps=hp.eval_steps if hp.eval_strategy == "steps" else None,
        # run options
        save_strategy="steps",
        save_steps=run.save_steps,
        save_total_limit=run.save_total_limit,
        logging_steps=run.logging_steps,
        logging_first_step=True,
        # The tutorial turns Hugging Face's MLflow callback off; we log a bounded set ourselves.
        report_to="none",
        # Progress is printed one line per logging step (readable in job log files).
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,
        # The process group is started by `start_process_group` before the trainer exists.
        ddp_timeout=int(PROCESS_GROUP_TIMEOUT.total_seconds()),
        **sharding_arguments(run, hp, plan, ranks),
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# --------------------------------------------------------------------------- side effects


def probe_gpu() -> GpuProbe:
    """Ask torch what GPU it can use (seconds: nothing is loaded onto the device)."""
    import torch

    available = torch.cuda.is_available()
    return GpuProbe(
        cuda_available=available,
        device_count=torch.cuda.device_count(),
        torch_version=str(torch.__version__),
        cuda_build=torch.version.cuda,
        bf16_supported=available and torch.cuda.is_bf16_supported(),
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def start_process_group(ranks: Ranks, plan: DevicePlan) -> None:
    """Join the launcher's process group, before anything is decided for all the ranks.

    accelerate's `PartialState` chooses the backend the way the Trainer would: gloo for a CPU
    run (DistributedType.MULTI_CPU; mpi only where torch was built with it), nccl for CUDA
    GPUs, each process bound to the GPU of its LOCAL_RANK (accelerate 1.16,
    `PartialState._prepare_backend`); PyTorch's own rule of thumb is the same (torch.distributed
    docs, "Which backend to use?": NCCL for GPU training, Gloo for CPU training). The Trainer
    reuses this group later: accelerate calls `init_process_group` only when none exists.
    """
    if not ranks.distributed:
        return
    from accelerate import PartialState

    PartialState(cpu=plan.device == "cpu", timeout=PROCESS_GROUP_TIMEOUT)


def stop_process_group(ranks: Ranks) -> None:
    import torch.distributed as dist

    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


class MainProcessFailed(SystemExit):
    """Raised on the other ranks when rank 0 failed at a step they were waiting for."""


def share_from_main(ranks: Ranks, compute: Callable[[], T]) -> T:
    """`compute()` on the main process only, its value on every rank.

    The other ranks wait for it (a barrier that carries a value). When it fails on rank 0 they
    are told and stop too, instead of waiting for the process group's timeout.
    """
    if not ranks.distributed:
        return compute()
    import torch.distributed as dist

    if ranks.is_main:
        try:
            value = compute()
        except Exception as exc:
            dist.broadcast_object_list([("failed", f"{type(exc).__name__}: {exc}")], src=0)
            raise
        dist.broadcast_object_list([("ok", value)], src=0)
        return value
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status != "ok":
        raise MainProcessFailed(f"{ranks.describe()}: stopping, rank 0 failed: {value}")
    return value


@contextmanager
def main_process_first(ranks: Ranks) -> Iterator[None]:
    """Rank 0 runs the block first (filling a cache), then the other ranks."""
    if not ranks.distributed:
        yield
        return
    import torch.distributed as dist

    if not ranks.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if ranks.is_main:
            dist.barrier()


def torch_dtype(precision: str):  # -> torch.dtype
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_model_and_tokenizer(base_model: str, hp: Hyperparameters, plan: DevicePlan):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch_dtype(plan.precision)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.model_max_length = hp.max_length
    if tokenizer.pad_token is None:
        # The tutorial's choice (pad = unk); eos when a tokenizer has no unk token.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    if plan.device == "cpu" and plan.precision == "fp32":
        model = load_upcast(base_model, hp.attn_implementation)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=dtype, attn_implementation=hp.attn_implementation
        )
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    return model, tokenizer


def load_upcast(base_model: str, attn_implementation: str) -> Any:
    """The model in float32 from a checkpoint stored in bf16 or fp16 (as the Hub stores
    Phi-3.5-mini), converted one tensor at a time.

    Loading straight into float32 keeps the whole checkpoint mapped while the float32 copy
    fills: at 3.8B that is 7.6 GB of mapped bf16 beside 15.3 GB of float32, 23 GB at the
    peak. Loading as stored and converting tensor by tensor peaks at the float32 model plus
    one tensor. The values are the same: bf16 and fp16 convert to float32 exactly."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype="auto", attn_implementation=attn_implementation
    )
    for parameter in model.parameters():
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.to(torch.float32)
    model.config.dtype = torch.float32
    return model


def load_chat_split(path: str):  # -> datasets.Dataset
    """Only `messages` goes to TRL: a string `prompt` column would make it a prompt dataset."""
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=path, split="train")
    if "messages" not in dataset.column_names:
        raise SystemExit(f"{path}: no 'messages' column (expected ultrachat_200k's schema)")
    return dataset.select_columns(["messages"])


def lora_config(hp: Hyperparameters):  # -> peft.LoraConfig
    from peft import LoraConfig

    spec = hp.lora_target_modules
    targets: str | list[str] = spec
    if spec != "all-linear":
        targets = [name.strip() for name in spec.split(",") if name.strip()]
    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def build_trainer(
    job: JobArguments,
    run: RunOptions,
    hp: Hyperparameters,
    plan: DevicePlan,
    checkpoints_dir: Path,
    *,
    model: Any,
    tokenizer: Any,
    callbacks: Sequence[Any] = (),
    ranks: Ranks | None = None,
):  # -> trl.SFTTrainer
    """TRL's SFTTrainer over the job's train and eval files, batches as `hp` says.

    With several ranks each one reads both files (rank 0 first: it fills the datasets cache);
    the Trainer gives each rank its own shard of every batch.
    """
    from trl import SFTTrainer

    ranks = Ranks.from_environ() if ranks is None else ranks
    args = build_sft_config(run, hp, plan, checkpoints_dir, ranks=ranks)
    with main_process_first(ranks):
        train_dataset = load_chat_split(job.train_file)
        eval_dataset = load_chat_split(job.eval_file)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(hp) if hp.method == "lora" else None,
        callbacks=list(callbacks),
    )
    use_padding_free_batches(trainer, hp)
    return trainer


def use_padding_free_batches(trainer: Any, hp: Hyperparameters) -> None:
    """Collate unpacked conversations padding-free when `hp.padding_free` asks for it.

    TRL refuses `padding_free=True` without packing while `max_length` is set (it would not
    enforce the limit), yet its dataset preparation truncates every conversation to
    `max_length` before any batch is built. So the trainer is built padded, with TRL's
    truncation, and then its collator is switched to padding-free: each batch becomes one row
    of concatenated conversations with per-conversation position ids (the attention kernel
    keeps them apart; the first label of each is masked), so the loss is that of the padded
    batch and no compute is spent on pad tokens. Packing is padding-free already.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if hp.packing or not hp.padding_free:
        return
    collator = trainer.data_collator
    if not isinstance(collator, DataCollatorForLanguageModeling):
        raise TypeError(
            f"padding_free needs TRL's language-modeling collator, got {type(collator).__name__}"
        )
    collator.padding_free = True


def make_progress_callback(mlflow_active: bool):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """One line per logging step: step, loss, real tokens/s, ETA; metrics to MLflow."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_step: int | None = None
            self.last_tokens = 0.0
            self.last_time = self.started
            # Non-padding tokens trained on so far, as counted by TRL (`num_tokens`).
            self.num_tokens = 0.0
            self.tokens_at_start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.last_time = time.monotonic()
            self.first_step = state.global_step
            self.tokens_at_start = self.num_tokens = self.last_tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            now = time.monotonic()
            if "num_tokens" in logs:
                # Also in the Trainer's closing log line (train_runtime...), which counts the
                # steps after the last logging step. TRL gathers it over all the ranks.
                self.num_tokens = max(self.num_tokens, float(logs["num_tokens"]))
            if not state.is_world_process_zero:
                return  # one progress line and one MLflow series per run, from rank 0
            if "loss" in logs:
                tokens = float(logs.get("num_tokens", 0.0))
                rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
                self.last_tokens, self.last_time = tokens, now
                done = state.global_step - (self.first_step or 0)
                remaining = state.max_steps - state.global_step
                eta = (now - self.started) / done * remaining if done > 0 else float("nan")
                pct = 100.0 * state.global_step / max(state.max_steps, 1)
                print(
                    f"step {state.global_step}/{state.max_steps} ({pct:.0f}%) "
                    f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0.0):.2e} "
                    f"{rate:,.0f} tok/s eta {format_duration(eta) if math.isfinite(eta) else '?'}",
                    flush=True,
                )
            if mlflow_active:
                import mlflow

                numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
                mlflow.log_metrics(numeric, step=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            fail_after = os.environ.get(FAULT_ENV)
            if fail_after and state.global_step >= int(fail_after):
                raise SimulatedCrash(f"{FAULT_ENV}={fail_after}: simulated crash")

    return ProgressCallback()


def last_checkpoint(checkpoints_dir: Path) -> str | None:
    """The newest complete checkpoint to resume from.

    The Trainer writes a checkpoint's files in place, `trainer_state.json` last, so a process
    killed while saving leaves a `checkpoint-N` without a readable one: resuming from it would
    fail on every retry. Such a checkpoint is deleted (saying so) and the one before is used.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoints_dir.is_dir():
        return None
    while (found := get_last_checkpoint(str(checkpoints_dir))) is not None:
        try:
            json.loads((Path(found) / "trainer_state.json").read_text())
            return found
        except (OSError, ValueError):
            print(
                f"discarding incomplete {Path(found).name}: no readable trainer_state.json "
                "(the process was killed while saving it)",
                flush=True,
            )
            shutil.rmtree(found)
    return None


def save_mlflow_model(model: Any, tokenizer: Any, destination: Path) -> None:
    """Save as an MLflow transformers model, atomically (staging folder, then rename)."""
    import mlflow

    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.padding_side = "left"  # generation pads on the left
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(staging),
        task="text-generation",
        pip_requirements=serving_requirements(),
    )
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)


def serving_requirements() -> list[str]:
    """What the saved model needs to run, pinned to what trained it.

    MLflow's inferred list always adds torchvision for torch models (which has no CPU build
    here and is not needed for text generation), so the list is explicit.
    """
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in ("transformers", "tokenizers", "accelerate")]
    # torch as a lower bound: a serving machine picks the CPU or CUDA build it needs.
    torch_release = version("torch").split("+")[0]
    return [*pins, f"torch>={torch_release}", "mlflow"]


def finished_metrics(output_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The metrics of a finished run with the same hyperparameters, if the output has one."""
    metrics_path = output_dir / METRICS_FILE
    if not (metrics_path.is_file() and (output_dir / MLFLOW_MODEL_DIR / "MLmodel").is_file()):
        return None
    metrics = json.loads(metrics_path.read_text())
    return metrics if metrics.get("config_hash") == config_hash else None


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    staging.replace(path)


def loss_points(
    log_history: Sequence[dict[str, Any]], eval_before: float | None = None
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) of training and of evaluation, from the Trainer's `state.log_history`.

    The eval loss before training (measured before `train()` resets the state) is step 0.
    """
    train = [
        (int(entry["step"]), float(entry["loss"]))
        for entry in log_history
        if "loss" in entry and "step" in entry
    ]
    evals: dict[int, float] = {} if eval_before is None else {0: float(eval_before)}
    for entry in log_history:
        if "eval_loss" in entry and "step" in entry:
            evals[int(entry["step"])] = float(entry["eval_loss"])
    return train, sorted(evals.items())


def write_loss_curves(
    log_history: Sequence[dict[str, Any]],
    eval_before: float | None,
    destination: Path,
    *,
    title: str = "",
) -> Path | None:
    """Training and eval loss by step as a PNG (matplotlib's Agg canvas, no display needed).

    A picture is a nice-to-have: without matplotlib, or without a single point, it is skipped
    (None) and training is not failed for it.
    """
    train, evals = loss_points(log_history, eval_before)
    if not train and not evals:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no loss curve picture", flush=True)
        return None
    figure = Figure(figsize=(7.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        axes.plot(*zip(*evals, strict=True), "o--", label="eval loss", color="tab:orange")
        for step, loss in (evals[0], evals[-1]):
            axes.annotate(f"{loss:.3f}", (step, loss), textcoords="offset points", xytext=(4, 6))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (cross-entropy)")
    axes.set_title(title or "loss curves")
    axes.grid(alpha=0.3)
    axes.legend()
    staging = destination.with_name(destination.name + ".partial")
    figure.savefig(staging, format="png")
    staging.replace(destination)
    return destination


def main(job: JobArguments, run: RunOptions, hp: Hyperparameters) -> dict[str, Any]:
    """Fine-tune, evaluate, save the MLflow model and metrics.json; return the metrics.

    Every rank of a distributed run calls it and gets the same metrics back; only rank 0
    writes (see the module's docstring).
    """
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )
    ranks = Ranks.from_environ()
    output_dir = Path(job.model_output_dir)
    config_hash = hp.config_hash()
    # Read by every rank on its own (no rank waits on another to leave): nothing writes
    # metrics.json while a run of the same output is training.
    done = finished_metrics(output_dir, config_hash)
    if done is not None:
        if ranks.is_main:
            print(
                f"{output_dir} already holds a model trained with config {config_hash[:12]}: "
                "nothing to do",
                flush=True,
            )
        return done

    probe = probe_gpu()
    # Before anything is loaded or written: a GPU-less node fails in seconds, not hours.
    problem = gpu_problem(probe) if run.require_gpu else None
    if problem is not None:
        raise SystemExit(problem)
    plan = plan_device(
        hp.precision,
        cuda=probe.usable,
        bf16_supported=probe.bf16_supported,
        found=probe.describe(),
    )
    sharding_arguments(run, hp, plan, ranks)  # a run that cannot shard stops here, in seconds
    start_process_group(ranks, plan)
    if run.torch_threads > 0:
        import torch

        torch.set_num_threads(run.torch_threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints_dir = output_dir / CHECKPOINTS_DIR
    # Rank 0 chooses (discarding a checkpoint killed while being saved); all resume from it.
    resume_from = share_from_main(ranks, lambda: last_checkpoint(checkpoints_dir))

    if ranks.is_main:
        processes = f", {ranks.world_size} processes" if ranks.distributed else ""
        sharded = ", FSDP" if run.sharding == "fsdp" else ""
        print(
            f"fine-tuning {job.base_model} ({hp.method}, {plan.precision} on {plan.device}"
            f"{processes}{sharded}, {hp.attn_implementation} attention, config "
            f"{config_hash[:12]})",
            flush=True,
        )
    model, tokenizer = load_model_and_tokenizer(job.base_model, hp, plan)

    tracking_uri = job.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    # One MLflow run per training attempt, not one per rank: only rank 0 logs.
    mlflow_run_id = _start_mlflow_run(job, hp, tracking_uri) if ranks.is_main else None
    progress = make_progress_callback(mlflow_active=mlflow_run_id is not None)
    try:
        trainer = build_trainer(
            job,
            run,
            hp,
            plan,
            checkpoints_dir,
            model=model,
            tokenizer=tokenizer,
            callbacks=[progress],
            ranks=ranks,
        )
        eval_before = _eval_before_training(trainer, run, checkpoints_dir, resume_from, ranks)

        if resume_from:
            print(f"{ranks.describe()}: resuming from {resume_from}", flush=True)
        started = time.monotonic()
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = time.monotonic() - started
        eval_metrics = trainer.evaluate()  # every rank: the eval set is sharded too
        final_model = gather_trained_model(trainer, hp, plan, output_dir)

        def write_outputs() -> dict[str, Any]:
            """Rank 0 only: the MLflow model, the loss curve, the MLflow run, metrics.json."""
            final_model.config.use_cache = True  # serving wants the KV cache back
            save_mlflow_model(final_model, tokenizer, output_dir / MLFLOW_MODEL_DIR)
            shutil.rmtree(output_dir / FSDP_GATHERED_DIR, ignore_errors=True)

            # Tokens since this process started (a resumed run counts only its own part).
            train_tokens = progress.num_tokens - progress.tokens_at_start
            metrics = {
                "base_model": job.base_model,
                # the served model's size: the serving plan sizes its timeouts by it
                "model_parameters": sum(p.numel() for p in final_model.parameters()),
                "config_hash": config_hash,
                "hyperparameters": asdict(hp),
                "device": plan.device,
                "precision": plan.precision,
                "world_size": ranks.world_size,
                "sharding": run.sharding,
                "train_loss": train_result.training_loss,
                "eval_loss": eval_metrics.get("eval_loss"),
                "eval_loss_before": eval_before,
                "global_step": trainer.state.global_step,
                "epochs": trainer.state.epoch,
                "train_tokens": train_tokens,
                "real_tokens_per_second": (
                    train_tokens / train_seconds if train_seconds > 0 else None
                ),
                "train_seconds": round(train_seconds, 3),
                "resumed_from_step": _checkpoint_step(resume_from),
                "train_file_sha256": file_sha256(job.train_file),
                "eval_file_sha256": file_sha256(job.eval_file),
                "mlflow_run_id": mlflow_run_id,
            }
            try:
                curves = write_loss_curves(
                    trainer.state.log_history,
                    eval_before,
                    output_dir / LOSS_CURVES_FILE,
                    title=f"fine-tuning {Path(job.base_model).name} ({hp.method}, config "
                    f"{config_hash[:12]})",
                )
            except Exception as exc:  # a picture never fails a finished training run
                print(f"no loss curve picture: {type(exc).__name__}: {exc}", flush=True)
                curves = None
            metrics["loss_curves"] = curves.name if curves is not None else None
            metrics["loss_curves_artifact_uri"] = _finish_mlflow_run(
                mlflow_run_id, metrics, artifact=curves
            )
            write_json_atomically(output_dir / METRICS_FILE, metrics)
            return metrics

        # The other ranks wait until rank 0 has written everything: a job's next step
        # (`serving.evaluate`) must not start on a model that is still being saved.
        metrics = share_from_main(ranks, write_outputs)
    except BaseException:
        if mlflow_run_id is not None:
            import mlflow

            mlflow.end_run(status="FAILED")
        raise

    # After the wait above: every rank is past training, no one reads a checkpoint any more.
    if ranks.is_main and not run.keep_checkpoints:
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
    stop_process_group(ranks)
    if ranks.is_main:
        print(
            f"done in {format_duration(metrics['train_seconds'])}: eval loss "
            f"{_fmt(eval_before)} -> {_fmt(metrics['eval_loss'])}, "
            f"{_fmt(metrics['real_tokens_per_second'], '{:,.0f}')} real tokens/s; "
            f"model in {output_dir / MLFLOW_MODEL_DIR}",
            flush=True,
        )
    return metrics


def gather_trained_model(
    trainer: Any, hp: Hyperparameters, plan: DevicePlan, output_dir: Path
) -> Any:
    """The trained model, whole, on rank 0 (None on the other ranks); every rank calls it.

    Data parallel: every rank holds a whole copy; rank 0's is used (LoRA merged into it). FSDP:
    every rank holds a shard; `Trainer.save_model` gathers the full state dict (a collective,
    FULL_STATE_DICT) and rank 0 writes it to a staging folder, from which it loads the model
    back whole, on the CPU.
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        staging = output_dir / FSDP_GATHERED_DIR
        trainer.save_model(str(staging))
        if not trainer.is_world_process_zero():
            return None
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            staging, dtype=torch_dtype(plan.precision), attn_implementation=hp.attn_implementation
        )
    if not trainer.is_world_process_zero():
        return None
    model = trainer.model  # the model itself, not its DistributedDataParallel wrapper
    return model.merge_and_unload() if hp.method == "lora" else model


def _fmt(value: float | None, spec: str = "{:.4f}") -> str:
    return "n/a" if value is None else spec.format(value)


def _checkpoint_step(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def _eval_before_training(
    trainer: Any,
    run: RunOptions,
    checkpoints_dir: Path,
    resume_from: str | None,
    ranks: Ranks | None = None,
) -> float | None:
    """Eval loss of the base model; computed once and kept beside the checkpoints for resume.

    Every rank evaluates (its shard; the loss is gathered over all of them); rank 0 keeps it.
    """
    if not run.eval_before_training:
        return None
    ranks = Ranks() if ranks is None else ranks
    cached = checkpoints_dir / "eval_before.json"

    def read_cached() -> float | None:
        if resume_from and cached.is_file():
            return float(json.loads(cached.read_text())["eval_loss"])
        return None

    kept = share_from_main(ranks, read_cached)
    if kept is not None:
        return kept
    loss = float(trainer.evaluate(metric_key_prefix="eval")["eval_loss"])
    if ranks.is_main:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"eval_loss": loss}) + "\n")
        print(f"eval loss before training: {loss:.4f}", flush=True)
    return loss


def _start_mlflow_run(
    job: JobArguments, hp: Hyperparameters, tracking_uri: str | None
) -> str | None:
    if not tracking_uri:
        print("no MLflow tracking URI: metrics go to metrics.json only", flush=True)
        return None
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    # Inside an Azure ML job MLFLOW_RUN_ID names the job's own run; start_run attaches to it.
    if not os.environ.get("MLFLOW_RUN_ID"):
        _create_experiment_beside_database(tracking_uri, job.mlflow_experiment)
        mlflow.set_experiment(job.mlflow_experiment)
    active = mlflow.start_run(run_name=job.run_name)
    # A bounded parameter set: the hyperparameters and where the data came from.
    params: dict[str, Any] = {f.name: getattr(hp, f.name) for f in fields(hp)}
    params.update(
        base_model=job.base_model,
        config_hash=hp.config_hash(),
        train_file_sha256=file_sha256(job.train_file),
        eval_file_sha256=file_sha256(job.eval_file),
    )
    mlflow.log_params(params)
    return str(active.info.run_id)


def _create_experiment_beside_database(tracking_uri: str, name: str) -> None:
    """A new experiment on a sqlite store keeps its artifacts beside the database
    (`<db folder>/mlartifacts/<name>`, as `finetune_phi.tracking` lays out the state folder),
    not in ./mlruns of whatever directory the trainer runs in. Existing experiments (the
    local job runner creates its own first) are left as they are."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_experiment_by_name(name) is None:
        artifacts = Path(tracking_uri[len(prefix) :]).resolve().parent / "mlartifacts" / name
        client.create_experiment(name, artifact_location=artifacts.as_uri())


def _finish_mlflow_run(
    run_id: str | None, metrics: dict[str, Any], *, artifact: Path | None = None
) -> str | None:
    """Log the final metrics (and the picture, when there is one) and close the run; the
    picture's artifact URI."""
    if run_id is None:
        return None
    import mlflow

    final = {
        key: float(metrics[key])
        for key in (
            "train_loss",
            "eval_loss",
            "eval_loss_before",
            "real_tokens_per_second",
            "train_seconds",
        )
        if metrics.get(key) is not None
    }
    mlflow.log_metrics(final)
    artifact_uri = None
    if artifact is not None:
        mlflow.log_artifact(str(artifact))
        artifact_uri = mlflow.get_artifact_uri(artifact.name)
    mlflow.end_run(status="FINISHED")
    return artifact_uri


if __name__ == "__main__":
    main(*parse_arguments())
