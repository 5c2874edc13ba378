"""The pipeline as Prefect runs it: dataset stage, training job, registry, under the harness.

The flow runs for real (Prefect test harness, the trainer as a child process, MLflow on sqlite)
on a small synthetic dataset and the small tiny Phi-3, passed as a local base-model folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.logging import disable_run_logger

from backends.local.workspace import LocalWorkspace
from finetune_phi.settings import load_profile
from finetune_phi.state import StateLayout
from finetune_phi.tracking import client
from tasks.dataset import chat_token_counter, prepare_dataset_task

pytestmark = pytest.mark.slow


def small_profile_file(tmp_path: Path, base_model: Path, **training: Any) -> Path:
    """The local profile, shrunk: 120 conversations, a few training steps, a tmp state folder."""
    data = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "configs/profiles/local.yaml").read_text()
    )
    data["state_dir"] = str(tmp_path / "state")
    data["model"]["base"] = str(base_model)
    data["data"]["source"] = {"kind": "synthetic", "conversations": 120, "seed": 0}
    data["training"].update(
        {
            "max_steps": 6,
            "learning_rate": 3e-3,
            "max_length": 256,
            "warmup_ratio": 0.0,
            "per_device_train_batch_size": 8,
            **training,
        }
    )
    data["training_run"].update({"save_steps": 1000, "logging_steps": 2})
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_token_counter_counts_the_templated_conversation(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "user", "content": "Who founded Microsoft?"},
        {"role": "assistant", "content": "Bill Gates and Paul Allen founded Microsoft in 1975."},
    ]
    expected = len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"])

    assert expected > 10
    assert chat_token_counter(str(tiny_model_dir))(messages) == expected


def test_dataset_stage_is_content_addressed(tmp_path: Path, tiny_model_dir: Path) -> None:
    profile = load_profile(str(small_profile_file(tmp_path, tiny_model_dir)), environ={})

    with disable_run_logger():  # the task's body, without a Prefect run around it
        first = prepare_dataset_task.fn(profile, str(tiny_model_dir))
        second = prepare_dataset_task.fn(profile, str(tiny_model_dir))

    assert first.directory == second.directory
    assert Path(first.directory).name == first.sha256[:16]
    assert first.manifest.counts.train == 96 and first.manifest.counts.test == 24
    lengths = first.manifest.token_lengths
    assert lengths.min > 10 and lengths.max <= 512
    # Only the final folder is left: no staging folder survives a run.
    datasets = StateLayout(profile.state_dir).datasets_dir
    assert [p.name for p in datasets.iterdir()] == [Path(first.directory).name]


@pytest.fixture
def endpoint_cleanup(tmp_path: Path) -> Iterator[None]:
    """The flow leaves its endpoint serving (that is the point); tests must not."""
    yield
    from backends.local.endpoint.control import LocalEndpoints

    endpoints = LocalEndpoints(tmp_path / "state")
    for name in endpoints.list_endpoints():
        endpoints.delete_endpoint(name)


def test_flow_trains_registers_deploys_and_a_rerun_converges(
    prefect_harness: None, endpoint_cleanup: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from flows.finetune import finetune_pipeline

    profile_file = str(small_profile_file(tmp_path, tiny_model_dir))
    result = finetune_pipeline(profile=profile_file)

    metrics = result.training.metrics
    assert metrics["global_step"] == 6
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert result.registration.created and result.registration.model.version == "1"
    assert (Path(result.training.model_dir) / "MLmodel").is_file()

    layout = StateLayout(Path(tmp_path / "state"))
    model = result.registration.model
    version = client(layout).get_model_version(model.name, model.version)
    assert version.tags["dataset_sha256"] == result.dataset.sha256
    assert version.tags["job_id"] == result.training.job_name
    # The registry's copy of the files lives in the state folder, nowhere else.
    assert version.source.startswith(layout.mlflow_artifacts_dir.as_uri())
    assert version.tags["flow_run_id"]  # set by Prefect's runtime
    assert float(version.tags["eval_loss"]) == pytest.approx(metrics["eval_loss"], rel=1e-5)
    # Deployed to the empty endpoint, answering the tutorial's request over HTTP.
    assert result.rollout.final_traffic == {"blue": 100}
    assert version.aliases == ["champion"]
    answer = LocalWorkspace(layout.root).invoke(
        "phi3-chat-local", {"input_data": ["Who founded Microsoft?"], "params": {}}
    )
    assert isinstance(answer, list) and answer[0].startswith("Who founded Microsoft?")

    # Same inputs again: the same dataset folder, the finished job is not retrained, and the
    # registry finds the version it made instead of adding one.
    again = finetune_pipeline(profile=profile_file)
    assert again.dataset.directory == result.dataset.directory
    assert again.training.job_name == result.training.job_name
    assert again.registration.model.version == "1" and not again.registration.created
    log = (Path(result.training.job_dir) / "train.log").read_text()
    assert log.count("--- attempt") == 1, log[-2000:]  # re-attached, not started again
    assert again.rollout.plan.new_deployment is None  # already live: nothing to roll out

    # A changed hyperparameter is a new job and a new version.
    changed = finetune_pipeline(profile=profile_file, overrides={"training": {"seed": 1}})
    assert changed.training.job_name != result.training.job_name
    assert changed.registration.model.version == "2"
    assert changed.rollout.final_traffic == {"green": 100}  # blue-green: the other colour
    assert json.loads((Path(changed.training.job_dir) / "output/metrics.json").read_text())
