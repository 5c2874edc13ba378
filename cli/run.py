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
import contextlib
import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_phi.errors import FinetunePhiError
from finetune_phi.lineage import training_job_name
from finetune_phi.run_plan import (
    DatasetFacts,
    Observed,
    observe,
    plan_run,
    resolve_base_model,
)
from finetune_phi.settings import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    TINY_MODEL,
    Profile,
    load_profile,
)
from finetune_phi.state import StateLayout

if TYPE_CHECKING:
    from finetune_phi.chat_data import DatasetManifest
    from finetune_phi.results import PipelineResult


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
    """Run the flow (Prefect starts a temporary server unless PREFECT_API_URL is set) and
    print the summary. A failed run is one paragraph and exit status 1 (see cli.main)."""
    chosen = profile_choice(args)
    load_profile(chosen, overrides=overrides)  # a typo costs no Prefect start-up
    from flows.finetune import finetune_pipeline

    with quiet_expected_failures():
        result = finetune_pipeline(profile=chosen, overrides=overrides or None)
    print_pipeline_summary(result)
    return 0


class ExpectedFailureFilter(logging.Filter):
    """On the terminal, an expected failure (a `FinetunePhiError`: a rolled-back rollout, a
    failed job, data that does not validate) is said once, by the command's last paragraph.
    Prefect would also log it with a traceback for the task and again for the flow, and repeat
    it in its 'Finished in state Failed(...)' lines: the exception records are dropped here and
    those state lines name the error's class only. A bug's records keep everything. The Prefect
    UI (the API log handler) still gets every record whole."""

    STATE_LINE = re.compile(r"^Finished in state Failed\(.*?exception:? (\w+): ", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FinetunePhiError):
            return False
        match = self.STATE_LINE.match(record.getMessage())
        if match and match.group(1) in _expected_error_names():
            record.msg = f"Finished in state Failed: {match.group(1)} (the reason follows below)"
            record.args = ()
        return True


def _expected_error_names() -> set[str]:
    names, pending = set(), [FinetunePhiError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return names


@contextlib.contextmanager
def quiet_expected_failures() -> Iterator[None]:
    """Put `ExpectedFailureFilter` on Prefect's console handlers (set up when prefect is
    imported) for the duration of a run."""
    from prefect.logging.handlers import PrefectConsoleHandler

    quiet = ExpectedFailureFilter()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def endpoint_asker(profile: Profile) -> Callable[[str], str]:
    """A question -> answer function that goes through the profile's live endpoint."""
    from backends import open_workspace

    endpoints = open_workspace(profile).endpoints

    def ask(question: str) -> str:
        request = {
            "messages": [{"role": "user", "content": question}],
            "params": {"max_new_tokens": 48, "do_sample": False},
        }
        return str(endpoints.invoke(profile.endpoint.name, request)["content"])

    return ask


def print_pipeline_summary(result: PipelineResult) -> None:
    """The run's last words: the summary, with answers from whatever serves live traffic, and
    the pictures the report drew."""
    from finetune_phi.report import sample_answers, summary_lines

    serving = bool(result.traffic_after or result.traffic_before)
    answers = sample_answers(endpoint_asker(result.settings)) if serving else []
    print("\n".join(summary_lines(result, answers, result.pictures)))


# --------------------------------------------------------------------------- the dry run


def preview_dataset(profile: Profile, base_model: str, scratch: Path) -> DatasetFacts:
    """The dataset a run would train on, prepared in `scratch` (never in the state folder)."""
    from finetune_phi.chat_data import chat_token_counter, prepare_dataset
    from finetune_phi.tiny_model import build_default_tiny_phi3, is_built

    layout = StateLayout(profile.state_dir)
    if profile.data.source.kind == "hub":
        earlier = _earlier_manifest(profile)
        if earlier is None:
            return DatasetFacts(
                None,
                how="not known: a hub source is downloaded by the run itself (not by a dry run)",
            )
        folder = layout.datasets_dir / earlier.dataset_sha256[:16]
        return _facts(
            earlier,
            folder,
            "from an earlier preparation of the same hub source in this state folder",
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
        return DatasetFacts(
            None, how=f"not known: the tokenizer of {base_model} is unavailable ({first})"
        )
    manifest = prepare_dataset(profile.data, scratch / "dataset", count_tokens=counter)
    folder = layout.datasets_dir / manifest.dataset_sha256[:16]
    how = "prepared in a temporary folder" + (
        "; the same folder already exists in the state folder" if folder.is_dir() else ""
    )
    return _facts(manifest, folder, how)


def _facts(manifest: DatasetManifest, folder: Path, how: str) -> DatasetFacts:
    counts = manifest.counts
    return DatasetFacts(
        manifest.dataset_sha256,
        str(folder / "train.jsonl"),
        str(folder / "test.jsonl"),
        how=how,
        train_count=counts.train,
        test_count=counts.test,
        invalid_count=counts.invalid,
        problems=dict(counts.by_kind),
    )


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


def observe_without_writing(profile: Profile, job_name: str | None) -> Observed:
    """What the run would find, read without creating anything: an Azure workspace is not
    read at all (no credential in a dry run); locally the registry, the job and the endpoint
    are read only where the state folder already has them."""
    if profile.backend.kind == "azure":
        return Observed(
            registry_read=False,
            not_read={
                "registry": "not read (the registry needs a credential: `finetune-phi azure "
                "preflight --profile ...`)",
                "job": "",
                "endpoint": f"{profile.endpoint.name} (Azure managed online endpoint; not read)",
            },
        )
    from backends.local.endpoint.state import list_endpoints
    from backends.local.workspace import LocalWorkspace
    from finetune_phi.run_plan import EndpointFacts

    layout = StateLayout(profile.state_dir)
    workspace = LocalWorkspace(profile.state_dir)
    has_job = job_name is not None and (layout.job_dir(job_name) / "job.json").is_file()
    if layout.mlflow_db.is_file():
        observed = observe(profile, workspace, job_name if has_job else None)
        not_read: dict[str, str] = {}
    else:
        observed = Observed()
        not_read = {
            "registry": "none (no registry in the state folder yet): the first model trained "
            "is promoted"
        }
    endpoint = EndpointFacts(exists=False)
    if profile.endpoint.name in list_endpoints(profile.state_dir):
        endpoint = observe(profile, workspace, endpoint=True).endpoint or endpoint
    return dataclasses.replace(observed, endpoint=endpoint, not_read=not_read)


def dry_run(profile: Profile, emit: Callable[[str], None] = print) -> int:
    """Print the run plan (`finetune_phi.run_plan`), and for an azure profile the same plan
    as Azure ML entities; read everything, change nothing."""
    base_model = resolve_base_model(profile)
    with tempfile.TemporaryDirectory(prefix="finetune-phi-dry-run-") as scratch:
        dataset = preview_dataset(profile, base_model, Path(scratch))
    job_name = (
        training_job_name(dataset.sha256, base_model, profile.training) if dataset.sha256 else None
    )
    plan = plan_run(profile, base_model, dataset, observe_without_writing(profile, job_name))
    lines = ["dry run: nothing is built, trained, registered or deployed", *plan.describe()]
    if profile.backend.kind != "azure":
        for line in lines:
            emit(line)
        return 0
    # The azure profile: the plan as YAML comments, then the Azure dry run (valid YAML).
    from backends.azure.dry_run import build_dry_run

    for line in lines:
        emit(f"# {line}")
    emit(build_dry_run(plan).render().rstrip("\n"))
    return 0


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
