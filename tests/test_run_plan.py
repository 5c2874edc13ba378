"""The run plan is pure: what a run does follows from the profile, the dataset and what was
observed, and the flow, the dry run and the Azure dry run all read this one plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from finetune_phi.lineage import training_job_name
from finetune_phi.run_plan import (
    EXPERIMENT,
    DatasetFacts,
    EndpointFacts,
    Observed,
    plan_run,
    resolve_base_model,
)
from finetune_phi.settings import Profile, load_profile
from finetune_phi.workspace import JobRecord, JobStatus, ModelVersion, TrafficState

SHA = "ab" * 32


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    return load_profile("local", environ={}, overrides={"state_dir": str(tmp_path / "state")})


def dataset(sha: str | None = SHA) -> DatasetFacts:
    return DatasetFacts(sha, "d/train.jsonl", "d/test.jsonl", "prepared", 96, 24, 0)


def champion_of(profile: Profile, sha: str = SHA, version: str = "3") -> ModelVersion:
    tags = {
        "dataset_sha256": sha,
        "base_model": profile.model.base,
        "trainer_config_hash": profile.training.config_hash(),
    }
    return ModelVersion(profile.model.registered_name, version, "src", tags, ("champion",))


def test_no_champion_means_train_with_a_job_named_after_the_inputs(profile: Profile) -> None:
    base = resolve_base_model(profile)
    plan = plan_run(profile, base, dataset(), Observed())

    assert plan.action == "train" and not plan.up_to_date
    assert plan.job is not None
    assert plan.job.name == training_job_name(SHA, base, profile.training)
    assert plan.job.experiment == EXPERIMENT
    assert (plan.job.train_file, plan.job.eval_file) == ("d/train.jsonl", "d/test.jsonl")
    assert plan.job.tags == {
        "dataset_sha256": SHA,
        "base_model": profile.model.base,
        "trainer_config_hash": profile.training.config_hash(),
        "profile": profile.name,
    }
    assert plan.job.hyperparameters == profile.training


def test_a_champion_trained_on_exactly_these_inputs_is_up_to_date(profile: Profile) -> None:
    champion = champion_of(profile)
    plan = plan_run(profile, "base", dataset(), Observed(champion=champion))
    assert plan.up_to_date and plan.champion == champion


@pytest.mark.parametrize("changed", ["dataset", "config", "base"])
def test_any_changed_input_means_train(profile: Profile, changed: str) -> None:
    champion = champion_of(profile, sha="cd" * 32 if changed == "dataset" else SHA)
    if changed == "config":
        training = dataclasses.replace(profile.training, learning_rate=1e-3)
        profile = profile.model_copy(update={"training": training})
    if changed == "base":
        profile = profile.model_copy(
            update={"model": profile.model.model_copy(update={"base": "microsoft/Phi-3.5-mini"})}
        )
    plan = plan_run(profile, "base", dataset(), Observed(champion=champion))
    assert plan.action == "train"


def test_unknown_dataset_or_unread_registry_leave_the_decision_open(profile: Profile) -> None:
    unknown = plan_run(profile, "base", dataset(None), Observed())
    assert unknown.action is None and unknown.job is None
    unread = plan_run(profile, "base", dataset(), Observed(registry_read=False))
    assert unread.action is None and unread.job is not None


def test_the_rollout_preview_uses_the_same_blue_green_plan(profile: Profile) -> None:
    endpoint = EndpointFacts(TrafficState({"blue": 100}), {"blue": "phi3-chat:3"})
    fresh = plan_run(profile, "base", dataset(), Observed(endpoint=endpoint))
    assert fresh.rollout is not None and fresh.rollout.new_deployment == "green"
    assert fresh.rollout.model == "phi3-chat:<next>"

    champion = champion_of(profile)
    serving = plan_run(profile, "base", dataset(), Observed(champion=champion, endpoint=endpoint))
    assert serving.rollout is not None and serving.rollout.new_deployment is None  # serves 100%

    both_live = EndpointFacts(TrafficState({"blue": 50, "green": 50}), {})
    stuck = plan_run(profile, "base", dataset(), Observed(endpoint=both_live))
    assert stuck.rollout is None and "blue" in stuck.rollout_problem


def test_describe_says_what_will_happen(profile: Profile) -> None:
    job = plan_run(profile, "base", dataset(), Observed()).job
    assert job is not None
    running = JobRecord(job.name, JobStatus.RUNNING)
    plan = plan_run(
        profile,
        "base",
        dataset(),
        Observed(job=running, endpoint=EndpointFacts(exists=False)),
    )
    lines = plan.describe()
    text = "\n".join(lines)
    assert f"{'job':<10} {job.name} (exists, Running: running: re-attached)" in lines
    assert f"dataset {SHA[:16]}: 96 train / 24 test, 0 invalid left out (prepared)" in text
    assert "does not exist yet: the rollout creates it" in text
    assert "deploy phi3-chat:<next> as 'blue' at 0%" in text
    assert text.count("\n") == len(lines) - 1  # one line each
