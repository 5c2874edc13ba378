"""The precision guard (#13 E): a training run that must have a GPU and finds none stops in
seconds, before loading the model, saying what torch found and what to do; never hours of fp32
on a CPU. The check is pure (`gpu_problem` of a `GpuProbe`), so every case runs on this CPU
machine; the trainer is also run for real, as a process, with the flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_phi.settings import AzureBackendSettings, ConfigError, load_profile
from trainer import fine_tune
from trainer.config import Hyperparameters, JobArguments, RunOptions
from trainer.fine_tune import GpuProbe, gpu_problem, parse_arguments, plan_device

REPO = Path(__file__).resolve().parent.parent

CPU_BUILD = GpuProbe(
    cuda_available=False, device_count=0, torch_version="2.13.0+cpu", cuda_build=None
)
# A CPU VM with pip's CUDA wheel: the common Azure mistake (a CPU SKU for training_sku).
CUDA_BUILD_NO_GPU = GpuProbe(
    cuda_available=False, device_count=0, torch_version="2.13.0+cu128", cuda_build="12.8"
)
A100 = GpuProbe(
    cuda_available=True,
    device_count=1,
    torch_version="2.13.0+cu128",
    cuda_build="12.8",
    bf16_supported=True,
)


# --------------------------------------------------------------------------- the pure check


def test_a_usable_gpu_is_no_problem() -> None:
    assert gpu_problem(A100) is None
    assert gpu_problem(GpuProbe(True, 8, "2.13.0+cu128", "12.8", bf16_supported=False)) is None


def test_no_gpu_says_what_it_found_and_what_to_do() -> None:
    message = gpu_problem(CUDA_BUILD_NO_GPU)
    assert message is not None
    lines = message.splitlines()
    assert lines[0].startswith("--require_gpu: no usable CUDA GPU")
    assert "before loading the model" in lines[0] and "fp32" in lines[0]
    assert lines[1] == (
        "  found: torch.cuda.is_available() False, 0 CUDA device(s), "
        "torch 2.13.0+cu128 (built for CUDA 12.8)"
    )
    assert lines[2].startswith("  to fix: run on a GPU machine")
    assert "backend.training_sku" in lines[2] and "Standard_NC24ads_A100_v4" in lines[2]
    assert lines[-1].startswith("  or: allow CPU training explicitly")
    assert "backend.allow_cpu_training: true" in lines[-1] and "--require_gpu" in lines[-1]
    assert "CPU-only build" not in message  # this torch has CUDA: the node has no GPU
    assert len(lines) == 4


def test_a_cpu_only_torch_is_named_as_a_second_fix() -> None:
    message = gpu_problem(CPU_BUILD)
    assert message is not None
    lines = message.splitlines()
    assert "torch 2.13.0+cpu (a CPU-only build)" in lines[1]
    assert lines[2].startswith("  to fix: run on a GPU machine")
    assert lines[3].startswith("  also: this torch is a CPU-only build")
    assert "CUDA build of torch" in lines[3]
    assert len(lines) == 5


@pytest.mark.parametrize("hidden", ["", "-1", " "])
def test_cuda_visible_devices_that_hides_every_gpu_is_the_first_fix(hidden: str) -> None:
    probe = GpuProbe(False, 0, "2.13.0+cu128", "12.8", visible_devices=hidden)
    message = gpu_problem(probe)
    assert message is not None
    lines = message.splitlines()
    assert lines[1].endswith(f", CUDA_VISIBLE_DEVICES={hidden!r}")
    assert lines[2] == (
        "  to fix: CUDA_VISIBLE_DEVICES hides every GPU: unset it or name the GPUs to use"
    )
    assert lines[3].startswith("  also: run on a GPU machine")
    # Shown, but no fix of its own, where torch could not use a GPU anyway.
    cpu_build = gpu_problem(GpuProbe(False, 0, "2.13.0+cpu", None, visible_devices=hidden))
    assert cpu_build is not None and f"CUDA_VISIBLE_DEVICES={hidden!r}" in cpu_build
    assert "hides every GPU" not in cpu_build


def test_available_but_no_device_is_still_no_gpu() -> None:
    """torch.cuda.is_available() True with 0 devices cannot train on a GPU either."""
    probe = GpuProbe(True, 0, "2.13.0+cu128", "12.8")
    assert not probe.usable
    message = gpu_problem(probe)
    assert message is not None and "is_available() True, 0 CUDA device(s)" in message


def test_precision_errors_carry_the_same_found_line() -> None:
    """`--precision bf16/fp16` without a GPU was already an error; it now says what was found
    in the same words as the guard."""
    found = CPU_BUILD.describe()
    for precision in ("bf16", "fp16"):
        with pytest.raises(SystemExit) as excinfo:
            plan_device(precision, cuda=False, bf16_supported=False, found=found)
        first, second = str(excinfo.value.code).splitlines()
        assert first == f"--precision {precision} needs a CUDA device; use fp32 or auto on CPU"
        assert second == f"  found: {found}"
    # auto on a CPU is still fp32 on the CPU: the guard, not plan_device, refuses that
    assert plan_device("auto", cuda=False, bf16_supported=False, found=found).device == "cpu"


# --------------------------------------------------------------------------- the trainer option


def test_require_gpu_is_an_option_of_the_trainer_off_by_default() -> None:
    required = ["--train-file", "t", "--eval-file", "e", "--model_output_dir", "o"]
    assert parse_arguments(required)[1].require_gpu is False
    assert parse_arguments([*required, "--require_gpu"])[1].require_gpu is True
    assert parse_arguments([*required, "--require_gpu", "True"])[1].require_gpu is True
    assert parse_arguments([*required, "--require_gpu", "False"])[1].require_gpu is False
    assert RunOptions().require_gpu is False


def _main_until_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: RunOptions
) -> list[str]:
    """Run `main` on a probe that finds no GPU, stopping where the model would be loaded."""
    loaded: list[str] = []

    def load(base_model: str, *args: object) -> None:
        loaded.append(base_model)
        raise RuntimeError("stop: loading")

    monkeypatch.setattr(fine_tune, "probe_gpu", lambda: CUDA_BUILD_NO_GPU)
    monkeypatch.setattr(fine_tune, "load_model_and_tokenizer", load)
    job = JobArguments(
        train_file=str(tmp_path / "train.jsonl"),
        eval_file=str(tmp_path / "test.jsonl"),
        model_output_dir=str(tmp_path / "out"),
        base_model="microsoft/Phi-3.5-mini-instruct",
    )
    with pytest.raises((SystemExit, RuntimeError)) as excinfo:
        fine_tune.main(job, run, Hyperparameters())
    loaded.append(f"{type(excinfo.value).__name__}: {excinfo.value}")
    return loaded


def test_main_refuses_before_loading_or_writing_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (outcome,) = _main_until_loading(monkeypatch, tmp_path, RunOptions(require_gpu=True))
    assert outcome.startswith("SystemExit: --require_gpu: no usable CUDA GPU")
    assert not (tmp_path / "out").exists()


def test_without_the_flag_a_cpu_still_trains_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The local backend (and the demo, which has no GPU) trains on the CPU as it always has."""
    loaded = _main_until_loading(monkeypatch, tmp_path, RunOptions())
    assert loaded == ["microsoft/Phi-3.5-mini-instruct", "RuntimeError: stop: loading"]


def test_the_trainer_process_fails_in_seconds_without_loading_a_model(tmp_path: Path) -> None:
    """`python -m trainer.fine_tune --require_gpu` on a machine with no usable GPU (here: none
    visible, so the test means the same on a GPU machine): exit status 1 within seconds, the
    message on stderr, no model loaded (the base model does not even exist), nothing written."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "trainer.fine_tune",
        "--train-file",
        str(tmp_path / "missing-train.jsonl"),
        "--eval-file",
        str(tmp_path / "missing-test.jsonl"),
        "--model_output_dir",
        str(out),
        "--base_model",
        str(tmp_path / "no-such-model"),
        "--require_gpu",
        "True",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert seconds < 60, f"took {seconds:.1f} s"  # about 3 s on 2 CPU cores
    # The message ends stderr: the last lines of an Azure job's log, which the backend reports.
    lines = result.stderr.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("--require_gpu: "))
    assert lines[header].startswith("--require_gpu: no usable CUDA GPU"), result.stderr
    found = lines[header + 1]
    assert found.startswith("  found: torch.cuda.is_available() False, 0 CUDA device(s), torch ")
    assert found.endswith(", CUDA_VISIBLE_DEVICES=''")
    assert lines[header + 2].startswith("  to fix: ")
    assert lines[-1].startswith("  or: allow CPU training explicitly")
    assert "Traceback" not in result.stderr
    assert "fine-tuning" not in result.stdout  # the line printed just before loading
    assert not out.exists()


# --------------------------------------------------------------------------- the profile setting


def test_azure_profiles_require_a_gpu_unless_they_allow_cpu() -> None:
    assert AzureBackendSettings(kind="azure").allow_cpu_training is False
    backend = load_profile("azure", environ={}).backend
    assert isinstance(backend, AzureBackendSettings) and backend.allow_cpu_training is False
    by_set = load_profile("azure", environ={}, overrides={"backend": {"allow_cpu_training": True}})
    assert isinstance(by_set.backend, AzureBackendSettings) and by_set.backend.allow_cpu_training
    by_env = load_profile(
        "azure", environ={"FINETUNE_PHI__BACKEND__ALLOW_CPU_TRAINING": "true"}
    ).backend
    assert isinstance(by_env, AzureBackendSettings) and by_env.allow_cpu_training is True


def test_allow_cpu_training_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_profile("azure", environ={"FINETUNE_PHI__BACKEND__ALLOW_CPU_TRAINING": "yes"})
    message = str(excinfo.value)
    assert "backend.allow_cpu_training" in message
    assert "FINETUNE_PHI__BACKEND__ALLOW_CPU_TRAINING" in message


def test_the_local_backend_has_no_such_setting_and_trains_on_the_cpu() -> None:
    """Locally the CPU is allowed (the demo has none other); a local GPU machine can still ask
    for the guard with the trainer's own option, `training_run.require_gpu`."""
    with pytest.raises(ConfigError, match=r"backend\.allow_cpu_training: unknown key"):
        load_profile("local", environ={}, overrides={"backend": {"allow_cpu_training": True}})
    profile = load_profile("local", environ={})
    assert profile.training_run.require_gpu is False
    guarded = load_profile("local", environ={}, overrides={"training_run": {"require_gpu": True}})
    assert guarded.training_run.require_gpu is True
