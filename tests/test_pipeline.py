"""The pipeline as Prefect runs it: dataset stage, training job, registry, under the harness.

The flow runs for real (Prefect test harness, the trainer as a child process, MLflow on sqlite)
on a small synthetic dataset and the small tiny Phi-3, passed as a local base-model folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from model_guard import forbid_model_loading
from prefect.logging import disable_run_logger
from profiles import small_profile_file

from backends.local.workspace import LocalWorkspace
from finetune_phi.settings import load_profile
from finetune_phi.state import StateLayout
from finetune_phi.tracking import client
from finetune_phi.workspace import CHAMPION
from tasks.dataset import chat_token_counter, prepare_dataset_task

pytestmark = pytest.mark.slow


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


def test_flow_promotes_then_is_up_to_date_then_rejects_a_worse_candidate(
    prefect_harness: None,
    endpoint_cleanup: None,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.finetune import finetune_pipeline

    profile_file = str(small_profile_file(tmp_path, tiny_model_dir, smoke={"enabled": False}))
    layout = StateLayout(tmp_path / "state")
    workspace = LocalWorkspace(layout.root)
    # The flow's process reads numbers: training, the gate's measurements and serving load
    # models in processes of their own (jobs, deployments); here any load fails the run.
    model_loads = forbid_model_loading(monkeypatch)

    # 1. Fresh state: trained, registered, no champion -> promoted and serving.
    first = finetune_pipeline(profile=profile_file)
    assert first.status == "promoted"
    metrics = first.training.metrics
    assert metrics["global_step"] == 6
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert first.gate.champion is None
    assert first.traffic_before == {} and first.traffic_after == {"blue": 100}
    model = first.model
    version = client(layout).get_model_version(model.name, model.version)
    assert version.tags["dataset_sha256"] == first.dataset.sha256
    assert version.tags["job_id"] == first.training.job_name
    assert version.tags["flow_run_id"]  # set by Prefect's runtime
    assert version.tags["gate"] == "promoted"
    assert float(version.tags["eval_loss"]) == pytest.approx(metrics["eval_loss"], rel=1e-5)
    # The registry's copy of the files lives in the state folder, nowhere else.
    assert version.source.startswith(layout.mlflow_artifacts_dir.as_uri())
    assert version.aliases == ["champion"]
    answer = workspace.endpoints.invoke(
        "phi3-chat-local", {"input_data": ["Who founded Microsoft?"], "params": {}}
    )
    assert isinstance(answer, list) and answer[0].startswith("Who founded Microsoft?")

    # 2. Same inputs: "up to date", nothing trained, registered or deployed.
    again = finetune_pipeline(profile=profile_file)
    assert again.status == "up to date"
    assert again.training is None and again.gate is None
    assert again.model.version == model.version
    assert again.rollout.plan.new_deployment is None
    log = (Path(first.training.job_dir) / "train.log").read_text()
    assert log.count("--- attempt") == 1
    assert len(workspace.registry.list_model_versions(model.name)) == 1

    # 3. A deliberately worse candidate (a learning rate too small to learn anything): the
    # gate keeps the champion, the candidate is recorded as rejected, traffic is untouched.
    worse = finetune_pipeline(profile=profile_file, training={"learning_rate": 1e-7})
    assert worse.status == "not promoted"
    assert worse.gate.champion is not None
    assert worse.gate.candidate.eval_loss > worse.gate.champion.eval_loss
    assert "not promoted: eval loss" in worse.gate.reason
    rejected = workspace.registry.get_model(model.name, worse.model.version)
    assert rejected.tags["gate"] == "rejected" and CHAMPION not in rejected.aliases
    assert workspace.registry.get_model_by_alias(model.name, CHAMPION).version == model.version
    assert workspace.endpoints.get_traffic("phi3-chat-local").traffic == {"blue": 100}
    assert [d.name for d in workspace.endpoints.list_deployments("phi3-chat-local")] == ["blue"]
    # The candidate was measured by its training job, the champion by an evaluation job.
    assert worse.gate.candidate.job == worse.training.job_name
    champion_job = worse.gate.champion.job
    assert champion_job.startswith(f"eval-{model.name}-v{model.version}-")
    assert (layout.job_dir(champion_job) / "output" / "evaluation.json").is_file()

    # 4. Another candidate on the same data: the champion's numbers are reused, not measured
    # again (no new evaluation job, no second attempt of the first).
    other = finetune_pipeline(profile=profile_file, training={"learning_rate": 2e-7})
    assert other.status == "not promoted" and other.gate.champion.job == champion_job
    assert other.gate.champion == worse.gate.champion
    evaluation_jobs = [p.name for p in layout.jobs_dir.iterdir() if p.name.startswith("eval-")]
    assert evaluation_jobs == [champion_job]
    assert (layout.job_dir(champion_job) / "train.log").read_text().count("--- attempt") == 1
    assert model_loads == []

    # The report says what happened, in each of the three endings.
    from finetune_phi.report import report_markdown, report_rows, summary_lines

    promoted = report_markdown(first)
    assert promoted.startswith("# finetune-phi: promoted")
    assert "no champion yet: the first model is promoted" in promoted
    assert "traffic after: `{'blue': 100}`" in promoted
    assert summary_lines(again, [])[0].startswith("finetune-phi: up to date")
    rejected_report = report_markdown(worse)
    assert "## Quality gate" in rejected_report and "- champion `phi3-chat:1`" in rejected_report
    rows = {row["metric"]: row["value"] for row in report_rows(worse)}
    assert rows["gate"] == "rejected" and rows["traffic after"] == "{'blue': 100}"


def test_a_rolled_back_candidate_is_not_promoted_again_by_a_rerun(
    prefect_harness: None,
    endpoint_cleanup: None,
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Promoted v1, promoted v2, `finetune-phi endpoint rollback` back to v1; a run with v2's
    inputs then finds the same job and version and would promote v2 again on its numbers: the
    operator's rollback tag stops it, and v1 keeps serving."""
    from cli.main import main as cli_main
    from flows.finetune import finetune_pipeline

    profile_file = str(
        small_profile_file(
            tmp_path,
            tiny_model_dir,
            smoke={"enabled": False},
            rollout={"keep_previous": True},  # the old colour stays up to roll back onto
            gate={"loss_tolerance": 1.0, "fact_accuracy_tolerance": 1.0},  # v2 surely wins
        )
    )
    workspace = LocalWorkspace(tmp_path / "state")
    endpoint = "phi3-chat-local"

    first = finetune_pipeline(profile=profile_file)
    second = finetune_pipeline(profile=profile_file, training={"max_steps": 8})
    assert (first.status, second.status) == ("promoted", "promoted")
    assert workspace.endpoints.get_traffic(endpoint).live == {"green": 100}
    assert workspace.registry.get_model_by_alias(first.model.name, CHAMPION).version == "2"

    assert cli_main(["endpoint", "rollback", "--profile", profile_file]) == 0
    assert "champion phi3-chat: 2 -> 1" in capsys.readouterr().out
    assert workspace.endpoints.get_traffic(endpoint).live == {"blue": 100}

    rerun = finetune_pipeline(profile=profile_file, training={"max_steps": 8})
    assert rerun.status == "not promoted"
    assert rerun.model.version == "2"  # the same job, the same registered version
    assert rerun.training.job_name == second.training.job_name
    assert "an operator rolled this version back" in rerun.gate.reason
    assert workspace.endpoints.get_traffic(endpoint).live == {"blue": 100}
    assert workspace.registry.get_model_by_alias(first.model.name, CHAMPION).version == "1"
    assert workspace.registry.get_model(first.model.name, "2").tags["gate"] != "promoted"
