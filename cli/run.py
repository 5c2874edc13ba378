"""`finetune-phi run`: run the pipeline (as `demo` does), or print its plan with `--dry-run`.

    finetune-phi run                                  # the flow on the local profile
    finetune-phi run --profile azure --set training.num_train_epochs=1
    finetune-phi run --dry-run                        # what a run would do; changes nothing

The dry run reads and never writes: the dataset is prepared in a temporary folder (to know its
sha256, hence the job name and whether the champion is up to date), the registry and the
endpoint are only read, and only when the state folder already has them. For an azure profile
it adds the Azure dry run (every entity as `az ml` YAML and the call plan, no credential).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_phi.settings import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    TINY_MODEL,
    ConfigError,
    Profile,
    load_profile,
)
from finetune_phi.state import StateLayout

if TYPE_CHECKING:
    from finetune_phi.chat_data import DatasetManifest
    from finetune_phi.workspace import ModelVersion
    from trainer.config import Hyperparameters

# The demo runs on a machine that may have no internet: Prefect's temporary server would log a
# failed analytics call at start-up. Users who set these themselves keep their choice.
# (Telemetry is off already: finetune_phi.telemetry, applied on import.)
OFFLINE_PREFECT_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true"}

EXAMPLES = """\
Examples:
  finetune-phi run                                   # the whole pipeline, local profile
  finetune-phi run --set training.num_train_epochs=2 --set data.source.conversations=2000
  finetune-phi run --dry-run                         # the plan: data, job, champion, rollout
  finetune-phi run --profile azure --dry-run > plan.txt
  FINETUNE_PHI__STATE_DIR=/tmp/phi finetune-phi run

Exit status: 0 the run ended (promoted, not promoted or up to date), 1 it failed (the reason is
printed; traffic was restored), 2 a bad profile or option.
"""


# --------------------------------------------------------------------------- the real run


def profile_choice(args: argparse.Namespace) -> str:
    """The profile the flow gets: the option, else $FINETUNE_PHI_PROFILE, else 'local'
    (the same choice `load_profile` makes, so the flow runs what was validated)."""
    return str(args.profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE)


def run_pipeline(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Run the flow (Prefect starts a temporary server unless PREFECT_API_URL is set), draw
    the gate's picture, print the summary. A failed run is one line and exit status 1."""
    # Prefect's analytics (which would also log a failed call on an offline machine) are off
    # already: finetune_phi.telemetry, applied when the package is imported.
    chosen = profile_choice(args)
    load_profile(chosen, overrides=overrides)  # a typo costs no Prefect start-up
    from finetune_phi.report import (
        print_pipeline_summary,
        publish_gate_chart,
        publish_traffic_chart,
    )
    from flows.finetune import finetune_pipeline

    try:
        result = finetune_pipeline(profile=chosen, overrides=overrides or None)
    except (ConfigError, FileNotFoundError):
        raise
    except (RuntimeError, ValueError) as exc:
        # A failed job, a rolled-back rollout, a smoke test that failed, data that does not
        # validate: Prefect has logged the details above; this is the last word.
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        more = " (details in the log above)" if len(lines) > 1 else ""
        print(f"finetune-phi: run failed: {lines[0]}{more}", file=sys.stderr)
        return 1
    pictures: dict[str, str] = {}
    chart = publish_gate_chart(result)
    if chart:
        pictures["gate comparison"] = chart
    traffic = publish_traffic_chart(result)
    if traffic:
        pictures["traffic"] = traffic
    print_pipeline_summary(result, pictures)
    return 0


# --------------------------------------------------------------------------- the dry run


@dataclass
class PlannedDataset:
    manifest: DatasetManifest | None
    how: str  # how the sha256 was found, or why it is not known
    train_file: str | None = None
    eval_file: str | None = None


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.lines.append(f"{label:<10} {text}")

    def more(self, text: str) -> None:
        self.lines.append(f"{'':<10} {text}")


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


def batching(hp: Hyperparameters) -> str:
    if hp.packing:
        return f"packed to {hp.max_length} tokens"
    return "padding-free batches" if hp.padding_free else "padded batches"


def _earlier_manifest(profile: Profile) -> DatasetManifest | None:
    """A dataset prepared earlier in this state folder from the same source settings."""
    from finetune_phi.chat_data import load_manifest

    datasets = StateLayout(profile.state_dir).datasets_dir
    if not datasets.is_dir():
        return None
    wanted = profile.data.source.model_dump(mode="json")
    for folder in sorted(datasets.iterdir()):
        manifest_file = folder / "manifest.json"
        if folder.name.startswith(".") or not manifest_file.is_file():
            continue
        manifest = load_manifest(manifest_file)
        if (
            manifest.source == wanted
            and manifest.split.test_fraction == profile.data.test_fraction
            and manifest.split.seed == profile.data.seed
            and manifest.max_tokens == profile.data.max_tokens
        ):
            return manifest
    return None


def plan_dataset(profile: Profile, base_model: str, scratch: Path) -> PlannedDataset:
    """The dataset a run would train on, prepared in `scratch` (never in the state folder)."""
    from finetune_phi.chat_data import prepare_dataset
    from finetune_phi.tiny_model import build_default_tiny_phi3, is_built
    from tasks.dataset import chat_token_counter

    layout = StateLayout(profile.state_dir)
    if profile.data.source.kind == "hub":
        earlier = _earlier_manifest(profile)
        if earlier is None:
            return PlannedDataset(
                None, "not known: a hub source is downloaded by the run itself (not by a dry run)"
            )
        folder = layout.datasets_dir / earlier.dataset_sha256[:16]
        return PlannedDataset(
            earlier,
            "from an earlier preparation of the same hub source in this state folder",
            str(folder / "train.jsonl"),
            str(folder / "test.jsonl"),
        )
    tokenizer = base_model
    if profile.model.base == TINY_MODEL and not is_built(layout.tiny_model_dir):
        # Deterministic: a scratch build has the very tokenizer the run would build.
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        tokenizer = str(build_default_tiny_phi3(scratch / "tiny-phi3"))
    try:
        counter = chat_token_counter(tokenizer)
    except OSError as exc:  # e.g. a hub model with no internet and no cache
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PlannedDataset(
            None, f"not known: the tokenizer of {base_model} is unavailable ({first})"
        )
    manifest = prepare_dataset(profile.data, scratch / "dataset", count_tokens=counter)
    folder = layout.datasets_dir / manifest.dataset_sha256[:16]
    how = "prepared in a temporary folder" + (
        "; the same folder already exists in the state folder" if folder.is_dir() else ""
    )
    return PlannedDataset(manifest, how, str(folder / "train.jsonl"), str(folder / "test.jsonl"))


def _lineage(model: ModelVersion) -> str:
    tags = model.tags
    return (
        f"dataset {tags.get('dataset_sha256', '?')[:12]}, base {tags.get('base_model', '?')}, "
        f"config {tags.get('trainer_config_hash', '?')[:12]}"
    )


def dry_run(profile: Profile, emit: Callable[[str], None] = print) -> int:
    from finetune_phi.lineage import training_job_name
    from tasks.base_model import resolve_base_model
    from tasks.gate import lineage_matches

    plan = Plan()
    layout = StateLayout(profile.state_dir)
    azure = profile.backend.kind == "azure"
    plan.lines.append("dry run: nothing is built, trained, registered or deployed")
    plan.add(
        "profile",
        f"{profile.name} ({profile.backend.kind} backend), state folder {profile.state_dir}"
        + ("" if profile.state_dir.is_dir() else " (does not exist yet)"),
    )
    base_model = resolve_base_model(profile)
    plan.add("model", f"base {profile.model.base}, registered as {profile.model.registered_name}")
    plan.add("data", describe_data(profile))
    with tempfile.TemporaryDirectory(prefix="finetune-phi-dry-run-") as scratch:
        dataset = plan_dataset(profile, base_model, Path(scratch))
    manifest = dataset.manifest
    if manifest is not None:
        counts = manifest.counts
        plan.more(
            f"dataset {manifest.dataset_sha256[:16]}: {counts.train} train / {counts.test} "
            f"test, {counts.invalid} invalid left out ({dataset.how})"
        )
    else:
        plan.more(f"dataset sha256 {dataset.how}")
    plan.add("training", describe_training(profile))

    sha = manifest.dataset_sha256 if manifest is not None else None
    job_name = training_job_name(sha, base_model, profile.training) if sha else None
    champion = None
    if job_name is None:
        plan.add("job", "named after the dataset's sha256, known once the data is prepared")
    else:
        plan.add("job", job_name + _job_state(profile, job_name))

    registered = profile.model.registered_name
    if azure:
        plan.add(
            "champion",
            "not read (the registry needs a credential: `finetune-phi azure "
            "preflight --profile ...`)",
        )
    elif not layout.mlflow_db.is_file():
        plan.add(
            "champion",
            "none (no registry in the state folder yet): the first model trained is promoted",
        )
    else:
        from backends import open_workspace
        from finetune_phi.workspace import CHAMPION

        champion = open_workspace(profile).registry.get_model_by_alias(registered, CHAMPION)
        if champion is None:
            plan.add("champion", f"none: the first {registered} trained is promoted")
        elif sha is not None and lineage_matches(champion, profile, sha):
            plan.add(
                "champion",
                f"{registered}:{champion.version} is up to date ({_lineage(champion)}):"
                " nothing is trained; the run only makes sure it serves",
            )
        else:
            plan.add("champion", f"{registered}:{champion.version} ({_lineage(champion)})")
            verdict = (
                "differs from this run's inputs"
                if sha is not None
                else "may differ (the dataset's sha256 is not known)"
            )
            plan.more(
                f"{verdict}: a candidate is trained, then gated against it "
                f"(loss tolerance {profile.gate.loss_tolerance:.0%}, fact accuracy tolerance "
                f"{profile.gate.fact_accuracy_tolerance:.0%}, "
                f"{profile.gate.max_eval_conversations} test conversations)"
            )
    up_to_date = (
        champion is not None and sha is not None and lineage_matches(champion, profile, sha)
    )

    if azure:
        plan.add("endpoint", f"{profile.endpoint.name} (Azure managed online endpoint; not read)")
    else:
        _plan_local_rollout(plan, profile, champion if up_to_date else None)
    smoke = profile.smoke
    plan.add(
        "smoke",
        f"Prompt flow smoke test: {smoke.questions} question(s), at least "
        f"{smoke.min_accuracy:.0%} right (a failure rolls back)"
        if smoke.enabled
        else "Prompt flow smoke test disabled",
    )

    if not azure:
        for line in plan.lines:
            emit(line)
        return 0
    # The azure profile: the plan as YAML comments, then the Azure dry run (valid YAML).
    from backends.azure.dry_run import PLACEHOLDER_SHA256, build_dry_run

    for line in plan.lines:
        emit(f"# {line}")
    kwargs: dict[str, Any] = {"dataset_sha256": sha or PLACEHOLDER_SHA256}
    if dataset.train_file and dataset.eval_file:
        kwargs.update(train_file=dataset.train_file, eval_file=dataset.eval_file)
    emit(build_dry_run(profile, **kwargs).render().rstrip("\n"))
    return 0


def _job_state(profile: Profile, job_name: str) -> str:
    if profile.backend.kind != "local":
        return ""
    job_dir = StateLayout(profile.state_dir).job_dir(job_name)
    if not (job_dir / "job.json").is_file():
        return " (new)"
    from backends import open_workspace

    job = open_workspace(profile).jobs.get_job(job_name)
    reuse = {"Completed": "finished: re-used, not trained again", "Running": "running: re-attached"}
    return f" (exists, {job.status.value}: {reuse.get(job.status.value, 'resubmitted, resumes')})"


def _plan_local_rollout(plan: Plan, profile: Profile, champion: ModelVersion | None) -> None:
    from backends.local.endpoint.state import list_endpoints
    from finetune_phi.rollout import RolloutPlanError, plan_rollout
    from finetune_phi.workspace import TrafficState

    name = profile.endpoint.name
    registered = profile.model.registered_name
    model = f"{registered}:{champion.version}" if champion else f"{registered}:<next>"
    if name in list_endpoints(profile.state_dir):
        from backends import open_workspace

        workspace = open_workspace(profile)
        traffic = workspace.endpoints.get_traffic(name)
        deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(name)}
        shown = ", ".join(f"{d}={m}" for d, m in sorted(deployments.items())) or "none"
        plan.add("endpoint", f"{name}: traffic {dict(traffic.traffic)}, deployments {shown}")
    else:
        traffic, deployments = TrafficState(), {}
        plan.add("endpoint", f"{name} does not exist yet: the rollout creates it")
    prefix = "" if champion else "if the gate promotes: "
    try:
        rollout = plan_rollout(traffic, deployments, model, profile.rollout)
    except RolloutPlanError as exc:
        plan.add("rollout", f"{prefix}cannot start: {exc}")
        return
    steps = rollout.describe()
    plan.add("rollout", prefix + steps[0])
    for step in steps[1:]:
        plan.more(step)


# --------------------------------------------------------------------------- parser


def add_run_parser(
    commands: Any,
    with_profile: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    run = with_profile(
        commands.add_parser(
            "run",
            help="run the pipeline as a Prefect flow (or print its plan with --dry-run)",
            description="Run the fine-tuning pipeline as a Prefect flow: base model, data,\n"
            "training, registry, quality gate, blue-green rollout, smoke test, report.\n\n"
            + EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what a run would do (dataset, job name, champion, rollout) and change nothing",
    )
    run.set_defaults(func=handler)
