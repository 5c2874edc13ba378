"""The run plan: what one run of the pipeline will do, decided in one place.

    observe(profile, workspace, dataset_sha256) -> Observed     (reads, never writes)
    plan_run(profile, base_model, dataset, observed) -> RunPlan  (pure)

The flow executes the plan (`flows/finetune.py`: serve the champion when it is up to date,
else train the plan's job, register, gate and roll out); `finetune-phi run --dry-run` prints
it (`RunPlan.describe`), and the Azure dry run renders the same plan's job through the entity
builders (`backends/azure/dry_run.py`). Nothing the flow decides is written a second time.

What the plan decides: which base model is loaded, the training job (its deterministic name,
hyperparameters, lineage tags), whether the champion was trained on exactly these inputs
(then nothing is trained), and, when the endpoint was read, the blue-green steps a rollout
would take. It does not decide the gate (that needs the trained model) nor the rollout that
actually runs (the rollout task plans again from the endpoint as it is at that moment, with the
same `plan_rollout`).

No Prefect, no CLI here: this is the core floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from finetune_phi.evaluation import evaluation_job_name, evaluation_spec
from finetune_phi.lineage import training_job_name
from finetune_phi.rollout import RolloutPlan, RolloutPlanError, plan_rollout
from finetune_phi.settings import TINY_MODEL, Profile
from finetune_phi.state import StateLayout
from finetune_phi.workspace import (
    CHAMPION,
    ComputeRef,
    EnvironmentRef,
    JobRecord,
    ModelVersion,
    NotFound,
    TrafficState,
    TrainingJobSpec,
    Workspace,
)
from trainer.config import Hyperparameters

EXPERIMENT = "finetune-phi"  # the MLflow / Azure ML experiment every training job belongs to

Action = Literal["serve the champion", "train"]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class DatasetFacts:
    """What the plan needs of the prepared dataset. `sha256` is None when it is not known
    (a dry run of a hub source that was never downloaded); `how` says how it was found."""

    sha256: str | None
    train_file: str | None = None
    eval_file: str | None = None
    how: str = ""
    train_count: int | None = None
    test_count: int | None = None
    invalid_count: int | None = None
    problems: Mapping[str, int] = field(default_factory=dict)  # invalid records by kind


@dataclass(frozen=True)
class EndpointFacts:
    """The endpoint as it is now: live and mirror traffic, deployment name -> model."""

    traffic: TrafficState = field(default_factory=TrafficState)
    deployments: Mapping[str, str] = field(default_factory=dict)
    exists: bool = True


@dataclass(frozen=True)
class Observed:
    """What a run finds before it acts. A part that was not read (no credential in a dry run,
    no state folder yet) is None with a word on why in `not_read`."""

    champion: ModelVersion | None = None
    registry_read: bool = True
    job: JobRecord | None = None  # the job of the planned name, when one exists
    endpoint: EndpointFacts | None = None
    not_read: Mapping[str, str] = field(default_factory=dict)  # part -> why


# --------------------------------------------------------------------------- pure decisions


def resolve_base_model(profile: Profile) -> str:
    """What `from_pretrained` loads: the tiny model's folder, a hub id or a local path."""
    if profile.model.base == TINY_MODEL:
        return str(StateLayout(profile.state_dir).tiny_model_dir)
    return profile.model.base


def input_tags(profile: Profile, dataset_sha256: str) -> dict[str, str]:
    """The tags that say which inputs a job (and the version it registers) was made from."""
    return {
        "dataset_sha256": dataset_sha256,
        "base_model": profile.model.base,
        "trainer_config_hash": profile.training.config_hash(),
        "profile": profile.name,
    }


def lineage_matches(champion: ModelVersion, profile: Profile, dataset_sha256: str) -> bool:
    """Would this run train exactly the champion again?"""
    tags = champion.tags
    return (
        tags.get("dataset_sha256") == dataset_sha256
        and tags.get("trainer_config_hash") == profile.training.config_hash()
        and tags.get("base_model") == profile.model.base
    )


def training_job_spec(
    profile: Profile,
    base_model: str,
    dataset_sha256: str,
    train_file: str,
    eval_file: str,
    environment: EnvironmentRef | None = None,
    compute: ComputeRef | None = None,
) -> TrainingJobSpec:
    """The job the profile and the prepared data describe; its name is a function of them."""
    return TrainingJobSpec(
        name=training_job_name(dataset_sha256, base_model, profile.training),
        experiment=EXPERIMENT,
        base_model=base_model,
        train_file=train_file,
        eval_file=eval_file,
        hyperparameters=profile.training,
        run_options=profile.training_run,
        tags=input_tags(profile, dataset_sha256),
        display_name=f"fine-tune {profile.model.base} on {dataset_sha256[:12]}",
        environment=environment,
        compute=compute.name if compute is not None else None,
        # The gate's measurement of the trained model, on the training compute (a second step).
        evaluation=evaluation_spec(profile, dataset_sha256, eval_file),
    )


@dataclass(frozen=True)
class RunPlan:
    profile: Profile
    base_model: str  # what the trainer loads
    dataset: DatasetFacts
    job: TrainingJobSpec | None  # None only when the dataset's sha256 is not known
    observed: Observed
    action: Action | None  # None: not known (the registry or the dataset was not read)
    rollout: RolloutPlan | None = None  # when the endpoint was read and a plan can start
    rollout_problem: str = ""  # why no rollout can start from the endpoint as it is

    @property
    def up_to_date(self) -> bool:
        return self.action == "serve the champion"

    @property
    def champion(self) -> ModelVersion | None:
        return self.observed.champion

    def describe(self) -> list[str]:
        """The plan for people, one `label  text` line each (what `--dry-run` prints)."""
        return [f"{label:<10} {text}" for label, text in _lines(self)]


def plan_run(
    profile: Profile, base_model: str, dataset: DatasetFacts, observed: Observed
) -> RunPlan:
    """Decide what the run does from its inputs and what it found (pure)."""
    job = None
    if dataset.sha256 is not None:
        job = training_job_spec(
            profile,
            base_model,
            dataset.sha256,
            dataset.train_file or "",
            dataset.eval_file or "",
        )
    champion = observed.champion
    action: Action | None
    if dataset.sha256 is None or not observed.registry_read:
        action = None
    elif champion is not None and lineage_matches(champion, profile, dataset.sha256):
        action = "serve the champion"
    else:
        action = "train"
    rollout, problem = None, ""
    if observed.endpoint is not None:
        registered = profile.model.registered_name
        model = (
            f"{registered}:{champion.version}"
            if action == "serve the champion" and champion is not None
            else f"{registered}:<next>"
        )
        try:
            rollout = plan_rollout(
                observed.endpoint.traffic, observed.endpoint.deployments, model, profile.rollout
            )
        except RolloutPlanError as exc:
            problem = str(exc)
    return RunPlan(profile, base_model, dataset, job, observed, action, rollout, problem)


# --------------------------------------------------------------------------- reading


def observe(
    profile: Profile, workspace: Workspace, job_name: str | None = None, *, endpoint: bool = False
) -> Observed:
    """Read the champion (and, when asked, the planned job and the endpoint) from the
    workspace. Reads only; a missing endpoint is `exists=False`, not an error."""
    champion = workspace.registry.get_model_by_alias(profile.model.registered_name, CHAMPION)
    job = None
    if job_name is not None:
        try:
            job = workspace.jobs.get_job(job_name)
        except NotFound:
            job = None
    facts = None
    if endpoint:
        name = profile.endpoint.name
        try:
            traffic = workspace.endpoints.get_traffic(name)
            deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(name)}
            facts = EndpointFacts(traffic, deployments)
        except NotFound:
            facts = EndpointFacts(exists=False)
    return Observed(champion=champion, job=job, endpoint=facts)


# --------------------------------------------------------------------------- describing


def describe_source(profile: Profile) -> str:
    """Where the records come from, in a few words."""
    source = profile.data.source
    if source.kind == "synthetic":
        return f"synthetic: {source.conversations} conversations, seed {source.seed}"
    if source.kind == "file":
        return f"file {source.path}"
    return f"hub {source.name} ({source.config}) split {source.split}" + (
        f" @ {source.revision}" if source.revision else ""
    )


def describe_data(profile: Profile) -> str:
    data = profile.data
    return (
        f"{describe_source(profile)}; test fraction {data.test_fraction:g} (seed {data.seed}), "
        f"at most {data.max_tokens} tokens, invalid records: {data.invalid.action}"
    )


def batching(hp: Hyperparameters) -> str:
    if hp.packing:
        return f"packed to {hp.max_length} tokens"
    return "padding-free batches" if hp.padding_free else "padded batches"


def describe_training(profile: Profile) -> str:
    hp = profile.training
    length = f"{hp.max_steps} steps" if hp.max_steps > 0 else f"{hp.num_train_epochs:g} epochs"
    return (
        f"{hp.method}, {length}, lr {hp.learning_rate:g} {hp.lr_scheduler_type} "
        f"(warmup {hp.warmup_ratio:g}), batch {hp.per_device_train_batch_size}"
        f"x{hp.gradient_accumulation_steps}, max length {hp.max_length}, precision "
        f"{hp.precision}, {hp.attn_implementation} attention, {batching(hp)}; "
        f"config {hp.config_hash()[:12]}"
    )


def describe_lineage(model: ModelVersion) -> str:
    tags = model.tags
    return (
        f"dataset {tags.get('dataset_sha256', '?')[:12]}, base {tags.get('base_model', '?')}, "
        f"config {tags.get('trainer_config_hash', '?')[:12]}"
    )


def _kinds(problems: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(problems.items()))


_JOB_REUSE = {
    "Completed": "finished: re-used, not trained again",
    "Running": "running: re-attached",
}


def _lines(plan: RunPlan) -> list[tuple[str, str]]:
    profile, observed, dataset = plan.profile, plan.observed, plan.dataset
    lines: list[tuple[str, str]] = [
        (
            "profile",
            f"{profile.name} ({profile.backend.kind} backend), state folder "
            f"{profile.state_dir}"
            + ("" if profile.state_dir.is_dir() else " (does not exist yet)"),
        ),
        ("model", f"base {profile.model.base}, registered as {profile.model.registered_name}"),
        ("data", describe_data(profile)),
    ]
    if dataset.sha256 is not None:
        lines.append(
            (
                "",
                f"dataset {dataset.sha256[:16]}: {dataset.train_count} train / "
                f"{dataset.test_count} test, {dataset.invalid_count} invalid left out"
                + (f" ({_kinds(dataset.problems)})" if dataset.problems else "")
                + f" ({dataset.how})",
            )
        )
    else:
        lines.append(("", f"dataset sha256 {dataset.how}"))
    lines.append(("training", describe_training(profile)))

    if plan.job is None:
        lines.append(("job", "named after the dataset's sha256, known once the data is prepared"))
    else:
        if "job" in observed.not_read:
            state = ""
        elif observed.job is None:
            state = " (new)"
        else:
            status = observed.job.status.value
            state = f" (exists, {status}: {_JOB_REUSE.get(status, 'resubmitted, resumes')})"
        lines.append(("job", plan.job.name + state))

    registered = profile.model.registered_name
    champion = observed.champion
    if "registry" in observed.not_read or not observed.registry_read:
        lines.append(("champion", observed.not_read.get("registry", "not read")))
    elif champion is None:
        lines.append(("champion", f"none: the first {registered} trained is promoted"))
    elif plan.up_to_date:
        lines.append(
            (
                "champion",
                f"{registered}:{champion.version} is up to date "
                f"({describe_lineage(champion)}): nothing is trained; the run only makes "
                "sure it serves",
            )
        )
    else:
        lines.append(
            ("champion", f"{registered}:{champion.version} ({describe_lineage(champion)})")
        )
        verdict = (
            "differs from this run's inputs"
            if dataset.sha256 is not None
            else "may differ (the dataset's sha256 is not known)"
        )
        gate = profile.gate
        lines.append(
            (
                "",
                f"{verdict}: a candidate is trained, then gated against it "
                f"(loss tolerance {gate.loss_tolerance:.0%}, fact accuracy tolerance "
                f"{gate.fact_accuracy_tolerance:.0%}, {gate.max_eval_conversations} "
                "test conversations)",
            )
        )
        if plan.job is not None and plan.job.evaluation is not None:
            measuring = evaluation_job_name(champion, plan.job.evaluation)
            lines.append(
                (
                    "",
                    "both measured on the training compute: the candidate by the job's "
                    f"second step, the champion by job {measuring} (reused when it exists)",
                )
            )

    name = profile.endpoint.name
    endpoint = observed.endpoint
    if endpoint is None:
        lines.append(("endpoint", observed.not_read.get("endpoint", f"{name}: not read")))
    else:
        if endpoint.exists:
            shown = ", ".join(f"{d}={m}" for d, m in sorted(endpoint.deployments.items()))
            lines.append(
                (
                    "endpoint",
                    f"{name}: traffic {dict(endpoint.traffic.traffic)}, "
                    f"deployments {shown or 'none'}",
                )
            )
        else:
            lines.append(("endpoint", f"{name} does not exist yet: the rollout creates it"))
        prefix = "" if plan.up_to_date else "if the gate promotes: "
        if plan.rollout is None:
            lines.append(("rollout", f"{prefix}cannot start: {plan.rollout_problem}"))
        else:
            steps = plan.rollout.describe()
            lines.append(("rollout", prefix + steps[0]))
            lines += [("", step) for step in steps[1:]]

    smoke = profile.smoke
    lines.append(
        (
            "smoke",
            f"Prompt flow smoke test: {smoke.questions} question(s), at least "
            f"{smoke.min_accuracy:.0%} right (a failure rolls back)"
            if smoke.enabled
            else "Prompt flow smoke test disabled",
        )
    )
    return lines
