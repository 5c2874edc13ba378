"""The trainer, for real: a tiny Phi-3 fine-tuned for a few steps on CPU.

Each test trains (seconds, not minutes): weights change, eval loss drops, a crash resumes from
its checkpoint, LoRA merges on save, the saved MLflow model loads and generates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from profiles import FAST_TRAINING
from safetensors.torch import load_file

from trainer.config import JobArguments, RunOptions
from trainer.fine_tune import (
    CHECKPOINTS_DIR,
    FAULT_ENV,
    METRICS_FILE,
    MLFLOW_MODEL_DIR,
    SimulatedCrash,
    build_trainer,
    load_model_and_tokenizer,
    main,
    parse_arguments,
    plan_device,
)

REPO = Path(__file__).resolve().parent.parent

FAST = FAST_TRAINING
QUIET = RunOptions(save_steps=1000, logging_steps=4)


def job(chat_files: dict[str, Path], base: Path, out: Path, **kwargs: object) -> JobArguments:
    return JobArguments(
        train_file=str(chat_files["train"]),
        eval_file=str(chat_files["test"]),
        model_output_dir=str(out),
        base_model=str(base),
        **kwargs,  # type: ignore[arg-type]
    )


def saved_weights(mlflow_model_dir: Path) -> dict[str, torch.Tensor]:
    (weights,) = (mlflow_model_dir / "model").glob("*.safetensors")
    return load_file(weights)


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def changed_tensors(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    assert before.keys() == after.keys()
    return sum(not torch.equal(before[name], after[name]) for name in before)


@pytest.mark.slow
def test_entry_point_fine_tunes_and_logs_to_mlflow(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    """`python -m trainer.fine_tune` with the tutorial's flags: loss drops, MLflow has the run."""
    out = tmp_path / "out"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "job.yaml"
    config.write_text(
        "learning_rate: 3.0e-3\nwarmup_ratio: 0.0\nmax_steps: 12\n"
        "max_length: 256\nper_device_train_batch_size: 8\neval_strategy: 'no'\n"
        "logging_steps: 4\nsave_steps: 1000\n"
    )
    command = [
        sys.executable,
        "-m",
        "trainer.fine_tune",
        "--config",
        str(config),
        "--train-file",
        str(chat_files["train"]),
        "--eval-file",
        str(chat_files["test"]),
        "--model_output_dir",
        str(out),
        "--base_model",
        str(tiny_model_dir),
        "--mlflow_tracking_uri",
        tracking,
        "--run_name",
        "entry-point-test",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "step 12/12" in result.stdout  # progress lines with tokens/s and ETA
    assert "tok/s eta" in result.stdout

    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["global_step"] == 12
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.5
    assert metrics["real_tokens_per_second"] > 0
    assert metrics["train_tokens"] > 0
    assert metrics["precision"] == "fp32" and metrics["device"] == "cpu"
    assert metrics["hyperparameters"]["learning_rate"] == 3e-3  # from the YAML config
    assert changed_tensors(base_weights(tiny_model_dir), saved_weights(out / MLFLOW_MODEL_DIR)) > 0
    assert not (out / CHECKPOINTS_DIR).exists()  # removed once the model is saved

    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=tracking).get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["base_model"] == str(tiny_model_dir)
    assert float(run.data.metrics["eval_loss"]) == pytest.approx(metrics["eval_loss"])
    history = MlflowClient(tracking_uri=tracking).get_metric_history(run.info.run_id, "loss")
    assert len(history) >= 3  # logged each logging step, not only at the end


@pytest.mark.slow
def test_rerun_of_finished_output_is_a_no_op(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    hp = replace(FAST, max_steps=4)
    first = main(job(chat_files, tiny_model_dir, out), QUIET, hp)
    stamp = (out / METRICS_FILE).stat().st_mtime_ns
    again = main(job(chat_files, tiny_model_dir, out), QUIET, hp)
    assert again == first
    assert (out / METRICS_FILE).stat().st_mtime_ns == stamp
    # A different config is a different model: it must train, not reuse the old one.
    changed = main(job(chat_files, tiny_model_dir, out), QUIET, replace(hp, seed=1))
    assert changed["config_hash"] != first["config_hash"]


@pytest.mark.slow
def test_crash_resumes_from_last_checkpoint(
    tiny_model_dir: Path,
    chat_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    hp = replace(FAST, max_steps=8)
    run = RunOptions(save_steps=3, logging_steps=2, keep_checkpoints=True)
    monkeypatch.setenv(FAULT_ENV, "5")
    with pytest.raises(SimulatedCrash):
        main(job(chat_files, tiny_model_dir, out), run, hp)
    assert (out / CHECKPOINTS_DIR / "checkpoint-3").is_dir()
    assert not (out / METRICS_FILE).exists()

    monkeypatch.delenv(FAULT_ENV)
    metrics = main(job(chat_files, tiny_model_dir, out), run, hp)
    assert metrics["resumed_from_step"] == 3
    assert metrics["global_step"] == 8
    state = json.loads((out / CHECKPOINTS_DIR / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


@pytest.mark.slow
def test_lora_is_merged_on_save_and_the_model_generates(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    hp = replace(FAST, method="lora", lora_r=8, lora_alpha=16, learning_rate=1e-2, max_steps=6)
    metrics = main(job(chat_files, tiny_model_dir, out), QUIET, hp)
    model_dir = out / MLFLOW_MODEL_DIR
    # Merged: a plain model folder, same tensor names as the base, no adapter files.
    assert not list(model_dir.rglob("adapter_config.json"))
    assert changed_tensors(base_weights(tiny_model_dir), saved_weights(model_dir)) > 0
    assert metrics["hyperparameters"]["method"] == "lora"

    # Loaded the way a deployment loads it (serving/score.py), and it generates.
    from serving.contract import GenerationParams
    from serving.score import Scorer

    scorer = Scorer.load(model_dir)
    question = [{"role": "user", "content": "Who founded Microsoft?"}]
    assert isinstance(scorer.reply(question, GenerationParams(max_new_tokens=8)), str)
    prompt = scorer.tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    # A few steps of LoRA cannot teach the answer yet; it must still generate tokens.
    output = scorer.model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 8


def test_padding_free_batches_hold_the_same_tokens_and_give_the_same_loss(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    """Unpacked, padding-free batches are the padded batches without the pad tokens: one row
    of the same conversations, and the same eval loss (conversations must not attend to each
    other across the row, which would change it)."""
    plan = plan_device("fp32", cuda=False, bf16_supported=False)
    trainers = {}
    for padding_free in (False, True):
        hp = replace(FAST, packing=False, padding_free=padding_free, seed=0)
        model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), hp, plan)
        trainers[padding_free] = build_trainer(
            job(chat_files, tiny_model_dir, tmp_path / "out"),
            QUIET,
            hp,
            plan,
            tmp_path / f"checkpoints-{padding_free}",
            model=model,
            tokenizer=tokenizer,
        )
    padded = next(iter(trainers[False].get_eval_dataloader()))
    flat = next(iter(trainers[True].get_eval_dataloader()))
    real = padded["attention_mask"].bool()
    assert padded["input_ids"].shape[0] == FAST.per_device_eval_batch_size
    assert not real.all()  # these short conversations do get padded
    assert flat["input_ids"].shape == (1, int(real.sum()))  # one row, no pad token
    assert torch.equal(flat["input_ids"][0], padded["input_ids"][real])
    assert "attention_mask" not in flat
    assert int((flat["position_ids"][0] == 0).sum()) == padded["input_ids"].shape[0]

    losses = {key: trainer.evaluate()["eval_loss"] for key, trainer in trainers.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.slow
def test_token_count_includes_steps_after_the_last_logging_step(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    """Five steps logged every fourth count the same tokens as five steps logged each step."""
    hp = replace(FAST, max_steps=5, packing=False)
    counted = {
        every: main(
            job(chat_files, tiny_model_dir, tmp_path / f"out-{every}"),
            RunOptions(save_steps=1000, logging_steps=every, eval_before_training=False),
            hp,
        )["train_tokens"]
        for every in (1, 4)
    }
    assert counted[1] > 0
    assert counted[4] == counted[1]


def test_plan_device_chooses_bf16_only_on_a_gpu_that_has_it() -> None:
    assert plan_device("auto", cuda=False, bf16_supported=False).precision == "fp32"
    assert plan_device("auto", cuda=True, bf16_supported=True).precision == "bf16"
    assert plan_device("auto", cuda=True, bf16_supported=False).precision == "fp32"
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        plan_device("bf16", cuda=False, bf16_supported=False)


def test_arguments_precedence_defaults_yaml_cli(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "train_file: a.jsonl\neval_file: b.jsonl\nmodel_output_dir: out\n"
        "learning_rate: 1.0e-4\nmethod: lora\n"
    )
    job_args, run, hp = parse_arguments(["--config", str(config), "--method", "full"])
    assert job_args.train_file == "a.jsonl"  # required option satisfied by the YAML
    assert hp.learning_rate == 1e-4  # YAML over the default (5e-6)
    assert hp.method == "full"  # command line over YAML
    assert hp.num_train_epochs == 3.0  # the tutorial's default
    assert run.save_steps == 500


def test_tutorial_flag_spelling_is_accepted() -> None:
    job_args, _, _ = parse_arguments(
        ["--train-file", "t.jsonl", "--eval-file", "e.jsonl", "--model_output_dir", "o"]
    )
    assert (job_args.train_file, job_args.eval_file, job_args.model_output_dir) == (
        "t.jsonl",
        "e.jsonl",
        "o",
    )


def test_unknown_key_in_config_names_it(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1.0e-4\nlearnig_rate: 2.0e-4\n")
    with pytest.raises(SystemExit, match="unknown option.*learnig_rate"):
        parse_arguments(
            [
                "--config",
                str(config),
                "--train-file",
                "t",
                "--eval-file",
                "e",
                "--model_output_dir",
                "o",
            ]
        )


def test_missing_required_argument_is_an_error() -> None:
    with pytest.raises(SystemExit):
        parse_arguments(["--train-file", "t.jsonl"])


def test_invalid_choice_is_rejected() -> None:
    with pytest.raises(SystemExit):
        parse_arguments(
            [
                "--train-file",
                "t",
                "--eval-file",
                "e",
                "--model_output_dir",
                "o",
                "--method",
                "qlora",
            ]
        )


def test_a_bf16_checkpoint_is_upcast_for_cpu_training_tensor_by_tensor(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """fp32 training on a CPU from a bf16 checkpoint (how the Hub stores Phi-3.5-mini): the
    same float32 values as loading straight into float32, without the whole checkpoint
    mapped beside the float32 copy (the 3.8B rehearsal's load peaked at 23 GB that way)."""
    from transformers import AutoModelForCausalLM

    from trainer.fine_tune import load_upcast

    stored = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    stored.save_pretrained(tmp_path / "bf16")
    direct = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    upcast = load_upcast(str(tmp_path / "bf16"), "sdpa")
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    expected = direct.state_dict()
    for name, value in upcast.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert str(upcast.config.dtype).endswith("float32")
