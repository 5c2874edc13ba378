"""`finetune-phi`: the command line for people (the Makefile and README call it too).

    finetune-phi run                          # the full pipeline, as a Prefect flow
    finetune-phi run --dry-run                # its plan: data, job, champion, rollout
    finetune-phi demo                         # the same run on the profile (kept for make demo)
    finetune-phi data inspect                 # counts, problems, token-length histogram
    finetune-phi models                       # registered versions, aliases, gate, lineage
    finetune-phi endpoint rollback            # all traffic back to the other colour
    finetune-phi config show --profile azure  # the resolved profile (after env overrides)
    finetune-phi config schema                # JSON schema of a profile
    finetune-phi build-tiny-model             # the tiny Phi-3 into the state folder
    finetune-phi generate-data out.jsonl -n 1200
    finetune-phi prepare-data                 # validate + split, no Prefect

Exit status: 0 done, 1 a failure (a failed run, a backend that refused), 2 a usage or
configuration error. Errors are one line with the reason, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from cli.options import parse_assignments, profile_from_args, with_profile
from finetune_phi import __version__
from finetune_phi.errors import FinetunePhiError
from finetune_phi.settings import ConfigError, load_profile

# --------------------------------------------------------------------------- commands


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "schema":
        from finetune_phi.settings import profile_json_schema

        print(json.dumps(profile_json_schema(), indent=2))
        return 0
    profile = profile_from_args(args)
    if args.action == "validate":
        print(f"profile {profile.name}: valid")
        return 0
    print(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from finetune_phi.state import StateLayout
    from finetune_phi.tiny_model import build_default_tiny_phi3

    output = args.output or StateLayout(profile_from_args(args).state_dir).tiny_model_dir
    build_default_tiny_phi3(Path(output))
    print(f"tiny Phi-3 written to {output}")
    return 0


def cmd_generate_data(args: argparse.Namespace) -> int:
    from finetune_phi.chat_data.synthetic import generate_conversations

    records = generate_conversations(args.conversations, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records)} conversations written to {args.output}")
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from finetune_phi.chat_data import prepare_dataset
    from finetune_phi.state import StateLayout

    profile = profile_from_args(args)
    output = args.output or StateLayout(profile.state_dir).dataset_dir("manual")
    manifest = prepare_dataset(profile.data, output, progress=print)
    print(manifest.to_json(), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.run import run_pipeline

    return run_pipeline(args, parse_assignments(args.set))


def cmd_run(args: argparse.Namespace) -> int:
    from cli.run import dry_run, run_pipeline

    overrides = parse_assignments(args.set)
    if args.dry_run:
        return dry_run(load_profile(args.profile, overrides=overrides))
    return run_pipeline(args, overrides)


def cmd_data(args: argparse.Namespace) -> int:
    from cli.data import run_data_command

    if args.bins < 1:
        raise ConfigError(f"--bins {args.bins}: needs at least 1 bin")
    return run_data_command(args, profile_from_args(args))


def cmd_models(args: argparse.Namespace) -> int:
    from cli.models import run_models_command

    return run_models_command(args, profile_from_args(args))


def cmd_endpoint(args: argparse.Namespace) -> int:
    from cli.endpoint import run_endpoint_command

    return run_endpoint_command(args, profile_from_args(args))


def cmd_chat(args: argparse.Namespace) -> int:
    from cli.chat import run_chat_command

    return run_chat_command(args, profile_from_args(args))


def cmd_azure(args: argparse.Namespace) -> int:
    from cli.azure_ml import run_azure_command

    return run_azure_command(args, profile_from_args(args))


# --------------------------------------------------------------------------- parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-phi",
        description="Fine-tune Phi-3 on chat data, register it, deploy it; locally or on Azure.",
    )
    parser.add_argument("--version", action="version", version=f"finetune-phi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from cli.run import add_run_parser

    add_run_parser(commands, with_profile, cmd_run)
    demo = with_profile(
        commands.add_parser(
            "demo",
            help="run the full pipeline as a Prefect flow and print a summary",
            description="The full pipeline on the profile (what `make demo` runs; the same as "
            "`finetune-phi run`). Examples:\n"
            "  finetune-phi demo\n"
            "  finetune-phi demo --set training.num_train_epochs=2",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    demo.set_defaults(func=cmd_demo)
    from cli.data import add_data_parser

    add_data_parser(commands, with_profile, cmd_data)
    from cli.models import add_models_parser

    add_models_parser(commands, with_profile, cmd_models)

    config = with_profile(commands.add_parser("config", help="show, validate or describe profiles"))
    config.add_argument("action", choices=["show", "validate", "schema"])
    config.set_defaults(func=cmd_config)

    tiny = with_profile(
        commands.add_parser(
            "build-tiny-model", help="build the tiny Phi-3 (default: into the state folder)"
        )
    )
    tiny.add_argument("--output", type=Path, default=None, help="model folder to write")
    tiny.set_defaults(func=cmd_build_tiny_model)

    generate = commands.add_parser(
        "generate-data", help="write the synthetic chat dataset (ultrachat_200k schema) as JSONL"
    )
    generate.add_argument("output", type=Path, help="JSONL file to write")
    generate.add_argument("-n", "--conversations", type=int, default=1200)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(func=cmd_generate_data)

    prepare = with_profile(
        commands.add_parser(
            "prepare-data", help="validate and split the profile's data source (no Prefect)"
        )
    )
    prepare.add_argument("--output", type=Path, default=None, help="output folder")
    prepare.set_defaults(func=cmd_prepare_data)
    from cli.endpoint import add_endpoint_parser

    add_endpoint_parser(commands, with_profile, cmd_endpoint)
    from cli.chat import add_chat_parser

    add_chat_parser(commands, with_profile, cmd_chat)
    from cli.azure_ml import add_azure_parser

    add_azure_parser(commands, with_profile, cmd_azure)
    return parser


def error_paragraph(exc: BaseException, prefix: str = "") -> str:
    """An error as one paragraph for the terminal: `finetune-phi: <first line>`, the rest of
    its lines indented under it (a data report, a smoke test's answers)."""
    lines = [line.rstrip() for line in str(exc).strip().splitlines() if line.strip()]
    first, rest = (lines[0], lines[1:]) if lines else (type(exc).__name__, [])
    return "\n".join([f"finetune-phi: {prefix}{first}", *(f"  {line.strip()}" for line in rest)])


# Prefect's temporary server migrates a fresh database on its first start, which took past
# Prefect's default 20 s on two busy cores (a newcomer's first `finetune-phi demo`). Set the
# variable to override.
PREFECT_STARTUP_TIMEOUT = ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(*PREFECT_STARTUP_TIMEOUT)
    args = make_parser().parse_args(argv)
    running = args.command == "demo" or (args.command == "run" and not args.dry_run)
    prefix = "run failed: " if running else ""
    try:
        return int(args.func(args))
    except FinetunePhiError as exc:
        # Expected failures (a bad profile or data file, a failed job, a rolled-back rollout,
        # a backend that refused): the message says what happened; no traceback. Anything
        # else that escapes is a bug and keeps its traceback.
        print(error_paragraph(exc, prefix), file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(error_paragraph(exc, prefix), file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a tokenizer or dataset that cannot be read or downloaded
        print(error_paragraph(exc, f"{prefix}{type(exc).__name__}: "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("finetune-phi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
