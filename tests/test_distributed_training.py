"""Distributed training: two `torchrun` processes on the CPU (gloo) train one tiny Phi-3.

The trainer runs as a job runs it (`torchrun ... -m trainer.fine_tune` by hand, an Azure ML job
with PyTorch distribution), under tests/distributed_probe.py, which records per rank what it
trained on, where it resumed from and what it wrote. Around it: the rank environment as
torchrun and Azure ML set it, and the sharded (FSDP) option, which needs GPUs: on this CPU
machine only its validation and its plumbing into the Trainer's arguments are tested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from distributed_probe import PROBE_DIR_ENV
from profiles import FAST_TRAINING

from trainer import fine_tune
from trainer.config import Hyperparameters, JobArguments, RunOptions
from trainer.fine_tune import (
    CHECKPOINTS_DIR,
    FAULT_ENV,
    LOSS_CURVES_FILE,
    METRICS_FILE,
    MLFLOW_MODEL_DIR,
    DevicePlan,
    Ranks,
    build_sft_config,
    parse_arguments,
    sharding_arguments,
    share_from_main,
)

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "distributed_probe.py"
CPU = DevicePlan("cpu", "fp32")
GPU = DevicePlan("cuda", "fp32")  # fp32: transformers refuses bf16 arguments on a CPU machine


# --- the ranks, as the launchers set them -----------------------------------------------------


def test_a_plain_process_is_rank_0_of_1() -> None:
    ranks = Ranks.from_environ({})
    assert ranks == Ranks(rank=0, local_rank=0, world_size=1)
    assert ranks.is_main and not ranks.distributed


def test_torchrun_worker_environment() -> None:
    environ = {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }
    ranks = Ranks.from_environ(environ)
    assert ranks == Ranks(rank=1, local_rank=1, world_size=2)
    assert ranks.distributed and not ranks.is_main


def test_azure_ml_pytorch_distribution_environment() -> None:
    """Two nodes of four processes: Azure ML sets NODE_RANK per node, RANK (global) and
    LOCAL_RANK per process; rank 5 is the second process of the second node."""
    environ = {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.4",
        "MASTER_PORT": "6105",
    }
    ranks = Ranks.from_environ(environ)
    assert (ranks.rank, ranks.local_rank, ranks.world_size) == (5, 1, 8)
    assert not ranks.is_main
    assert ranks.describe() == "rank 5 of 8 (local rank 1)"


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "between 0 and WORLD_SIZE - 1"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "between 0 and WORLD_SIZE - 1"),
        ({"RANK": "one"}, "RANK='one': not a whole number"),
    ],
)
def test_a_broken_rank_environment_is_refused(environ: dict[str, str], says: str) -> None:
    with pytest.raises(SystemExit, match=says):
        Ranks.from_environ(environ)


def test_one_process_shares_by_computing() -> None:
    assert share_from_main(Ranks(), lambda: 42) == 42


# --- the sharded full fine-tune (FSDP): validation and plumbing --------------------------------


def test_no_sharding_adds_no_trainer_arguments() -> None:
    assert sharding_arguments(RunOptions(), Hyperparameters(), CPU, Ranks()) == {}


def test_fsdp_on_gpus_is_fsdp2_full_shard_saving_a_full_state_dict() -> None:
    arguments = sharding_arguments(
        RunOptions(sharding="fsdp"), Hyperparameters(), GPU, Ranks(0, 0, 4)
    )
    assert arguments["fsdp"] is True
    assert arguments["fsdp_config"]["version"] == 2
    assert arguments["fsdp_config"]["reshard_after_forward"] is True
    assert arguments["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"


def test_the_trainer_arguments_take_the_fsdp_setting(tmp_path: Path) -> None:
    """The arguments transformers turns into accelerate's FSDP plugin (built, not run: no GPU
    here)."""
    config = build_sft_config(
        RunOptions(sharding="fsdp"), Hyperparameters(), GPU, tmp_path, ranks=Ranks(0, 0, 4)
    )
    assert config.fsdp
    plugin = config.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"
    unsharded = build_sft_config(RunOptions(), Hyperparameters(), CPU, tmp_path, ranks=Ranks())
    assert not unsharded.fsdp


@pytest.mark.parametrize(
    ("hp", "plan", "ranks", "says"),
    [
        (Hyperparameters(), CPU, Ranks(0, 0, 2), "FSDP shards over CUDA GPUs"),
        (Hyperparameters(method="lora"), GPU, Ranks(0, 0, 2), "method=lora"),
        (Hyperparameters(), GPU, Ranks(), "one process"),
    ],
)
def test_fsdp_where_it_cannot_shard_is_refused_saying_why(
    hp: Hyperparameters, plan: DevicePlan, ranks: Ranks, says: str
) -> None:
    with pytest.raises(SystemExit, match="--sharding fsdp cannot be used here") as excinfo:
        sharding_arguments(RunOptions(sharding="fsdp"), hp, plan, ranks)
    assert says in str(excinfo.value)


def test_fsdp_on_this_cpu_stops_before_the_model_is_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def load(*args: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(fine_tune, "load_model_and_tokenizer", load)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    job = JobArguments(
        train_file=str(tmp_path / "train.jsonl"),
        eval_file=str(tmp_path / "test.jsonl"),
        model_output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(SystemExit, match="--sharding fsdp cannot be used here") as excinfo:
        fine_tune.main(job, RunOptions(sharding="fsdp"), Hyperparameters())
    assert "one process" in str(excinfo.value)
    assert not (tmp_path / "out").exists()


def test_sharding_is_a_command_line_option_not_part_of_the_config_hash() -> None:
    required = ["--train-file", "t", "--eval-file", "e", "--model_output_dir", "o"]
    _, run, hp = parse_arguments([*required, "--sharding", "fsdp"])
    assert run.sharding == "fsdp"
    assert hp.config_hash() == Hyperparameters().config_hash()
    with pytest.raises(SystemExit):
        parse_arguments([*required, "--sharding", "zero3"])


# --- two processes for real ---------------------------------------------------------------------


def torchrun(
    config: Path, out: Path, tracking: str, probe_dir: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node 2` of the trainer under the probe (a free port
    is picked by torchrun's c10d rendezvous, so concurrent tests cannot collide)."""
    shutil.rmtree(probe_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(PROBE),
        "--config",
        str(config),
        "--model_output_dir",
        str(out),
        "--mlflow_tracking_uri",
        tracking,
        "--run_name",
        "distributed-test",
    ]
    environ = {
        **{k: v for k, v in os.environ.items() if k not in {FAULT_ENV, "MLFLOW_RUN_ID"}},
        "PYTHONPATH": os.pathsep.join([str(REPO), str(PROBE.parent)]),
        "OMP_NUM_THREADS": "1",  # torchrun's default for several workers, said explicitly
        PROBE_DIR_ENV: str(probe_dir),
        **env,
    }
    return subprocess.run(
        command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=600
    )


def ranks_record(probe_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(path.read_text()) for path in sorted(probe_dir.glob("rank-*.json"))]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 for r in records)
    return records


@pytest.mark.slow
def test_two_ranks_train_on_their_shards_resume_together_and_rank_0_alone_writes(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    """Attempt 1 crashes after step 5 (FAULT_ENV, on both ranks) with checkpoint-3 saved;
    attempt 2 resumes both ranks from checkpoint-3 and finishes step 8."""
    hp = replace(FAST_TRAINING, max_steps=8)
    config = tmp_path / "job.yaml"
    options: dict[str, Any] = {
        **{
            key: getattr(hp, key)
            for key in (
                "learning_rate",
                "warmup_ratio",
                "lr_scheduler_type",
                "per_device_train_batch_size",
                "per_device_eval_batch_size",
                "max_length",
                "max_steps",
                "eval_strategy",
            )
        },
        "save_steps": 3,
        "logging_steps": 2,
        "train_file": str(chat_files["train"]),
        "eval_file": str(chat_files["test"]),
        "base_model": str(tiny_model_dir),
    }
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in options.items()))
    out = tmp_path / "out"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # Attempt 1: both ranks crash after step 5; checkpoint-3 was saved.
    crashed = torchrun(config, out, tracking, tmp_path / "probe-1", **{FAULT_ENV: "5"})
    assert crashed.returncode != 0, crashed.stdout[-2000:]
    assert "SimulatedCrash" in crashed.stderr
    first = ranks_record(tmp_path / "probe-1")
    assert [r["global_step"] for r in first] == [5, 5]
    assert [len(r["batches"]) for r in first] == [5, 5]
    assert (out / CHECKPOINTS_DIR / "checkpoint-3" / "trainer_state.json").is_file()
    # each rank saved its own RNG state into the shared checkpoint: rank 0 the rest
    assert {p.name for p in (out / CHECKPOINTS_DIR / "checkpoint-3").glob("rng_state_*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert not (out / METRICS_FILE).exists()
    assert first[0]["writes"] == ["_start_mlflow_run"]  # rank 0 opened the attempt's run
    assert first[1]["writes"] == []

    # Attempt 2: both resume from the same checkpoint and train steps 4 to 8.
    resumed = torchrun(config, out, tracking, tmp_path / "probe-2")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    second = ranks_record(tmp_path / "probe-2")
    checkpoint_3 = str(out / CHECKPOINTS_DIR / "checkpoint-3")
    assert [r["resume_from"] for r in second] == [checkpoint_3, checkpoint_3]
    assert [r["global_step"] for r in second] == [8, 8]
    assert [len(r["batches"]) for r in second] == [5, 5]  # the same steps on both ranks
    # ... on different data: each step's micro-batches are different shards of its batch
    for attempt in (first, second):
        rank_0, rank_1 = (r["batches"] for r in attempt)
        assert all(a != b for a, b in zip(rank_0, rank_1, strict=True))

    # Only rank 0 wrote: one MLflow model, one metrics.json, one loss curve, one MLflow run;
    # it deleted the checkpoints; rank 1 wrote and deleted nothing.
    assert sorted(second[0]["writes"]) == sorted(
        [
            "_start_mlflow_run",
            "save_mlflow_model",
            "write_loss_curves",
            "_finish_mlflow_run",
            "write_json_atomically",
        ]
    )
    assert CHECKPOINTS_DIR in second[0]["deleted"]
    assert second[1]["writes"] == [] and second[1]["deleted"] == []
    assert not (out / CHECKPOINTS_DIR).exists()
    assert (out / MLFLOW_MODEL_DIR / "MLmodel").is_file()
    assert (out / LOSS_CURVES_FILE).is_file()
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_step"] == 8 and metrics["resumed_from_step"] == 3
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    # one progress line per logging step, from rank 0 only
    assert resumed.stdout.count("step 8/8") == 1

    # MLflow: one run per attempt, not one per rank
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["start_time ASC"]
    )
    assert len(runs) == 2
    assert runs[0].info.status != "FINISHED"  # the crashed attempt (FAILED, or stopped)
    assert runs[1].info.run_id == metrics["mlflow_run_id"]
    assert runs[1].info.status == "FINISHED"
    assert len(client.get_metric_history(runs[1].info.run_id, "loss")) == 3  # steps 4, 6, 8
