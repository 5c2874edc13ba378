"""`finetune-phi azure ...`: checks and a dry run for the Azure ML backend.

    finetune-phi azure preflight --profile azure   credential, workspace, SKUs, quota, endpoint
    finetune-phi azure dry-run --profile azure     target, quota, every entity as az-ml YAML,
                                                   the call plan
    finetune-phi azure dry-run --profile azure --output-dir plan/
                                                   the same, one file per entity beside the code
                                                   it uploads: `az ml ... create -f plan/<file>`

Neither creates anything in Azure; the dry run does not even need a credential.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_phi.settings import AzureBackendSettings, ConfigError, Profile


def _azure_settings(profile: Profile) -> AzureBackendSettings:
    if not isinstance(profile.backend, AzureBackendSettings):
        raise ConfigError(
            f"profile {profile.name!r} uses the {profile.backend.kind} backend; "
            "the azure commands need an azure profile (--profile azure)"
        )
    return profile.backend


def run_azure_command(args: argparse.Namespace, profile: Profile) -> int:
    settings = _azure_settings(profile)
    if args.action == "preflight":
        from backends.azure.preflight import preflight_ok, run_preflight
        from backends.azure.workspace import AzureWorkspace

        checks = run_preflight(AzureWorkspace(settings), profile.endpoint.name)
        for check in checks:
            print(check.line())
        ok = preflight_ok(checks)
        warnings = sum(check.warning for check in checks)
        said = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
        print(("preflight passed" if ok else "preflight failed") + said, file=sys.stderr)
        return 0 if ok else 1
    from backends.azure.dry_run import PLACEHOLDER_SHA256, build_dry_run
    from finetune_phi.run_plan import DatasetFacts, Observed, plan_run, resolve_base_model

    dataset = DatasetFacts(
        args.dataset_sha256 or PLACEHOLDER_SHA256,
        args.train_file or "state/datasets/<sha256>/train.jsonl",
        args.eval_file or "state/datasets/<sha256>/test.jsonl",
    )
    plan = plan_run(profile, resolve_base_model(profile), dataset, Observed(registry_read=False))
    run = build_dry_run(plan)
    if args.output_dir:
        written = run.write(Path(args.output_dir))
        print(
            f"dry run written to {args.output_dir}: plan.yaml and {len(written)} files for "
            "`az ml <group> create -f <file>` (the commands are in plan.yaml)",
            file=sys.stderr,
        )
        return 0
    text = run.render()
    if args.output:
        Path(args.output).write_text(text)
        print(f"dry run written to {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def add_azure_parser(
    commands: Any,
    with_profile: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    azure = with_profile(
        commands.add_parser(
            "azure",
            help="Azure ML backend: preflight checks, dry run (nothing is created)",
            description="Check an Azure ML setup, or print what a run would submit. Examples:\n"
            "  finetune-phi azure preflight --profile azure\n"
            "  finetune-phi azure dry-run --profile azure > plan.yaml\n"
            "  finetune-phi azure dry-run --profile azure --output-dir plan/\n"
            "  finetune-phi azure dry-run --profile azure --train-file data/train.jsonl "
            "--eval-file data/test.jsonl",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    azure.add_argument("action", choices=["preflight", "dry-run"])
    azure.add_argument("--train-file", default=None, help="dry-run: training data path shown")
    azure.add_argument("--eval-file", default=None, help="dry-run: eval data path shown")
    azure.add_argument(
        "--dataset-sha256", default=None, help="dry-run: dataset hash the job name derives from"
    )
    azure.add_argument("--output", default=None, help="dry-run: write to this file")
    azure.add_argument(
        "--output-dir",
        default=None,
        help="dry-run: write each entity's YAML to this folder, with the code it uploads "
        "(ready for `az ml <group> create -f`)",
    )
    azure.set_defaults(func=handler)
