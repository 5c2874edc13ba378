"""`finetune-phi models`: the registered versions of a model, newest first, as a table.

    finetune-phi models                       # the profile's model.registered_name
    finetune-phi models phi3-chat --version 3 # every tag of one version

Columns: aliases (champion serves live traffic, challenger is being rolled out), the quality
gate's decision and the held-out loss it measured, the trainer's eval loss, and the lineage
(dataset sha256, base model, training job). Reads only, through the Workspace protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from finetune_phi.rollout import ROLLOUT_TAG
from finetune_phi.settings import ConfigError, Profile
from finetune_phi.state import StateLayout
from finetune_phi.workspace import CHALLENGER, CHAMPION, ModelVersion

EXAMPLES = """\
Examples:
  finetune-phi models
  finetune-phi models phi3-chat
  finetune-phi models --version 2            # all tags of version 2
  finetune-phi models --profile azure        # the Azure ML workspace's registry
"""

COLUMNS = (
    "version",
    "aliases",
    "gate",
    "rollout",
    "gate loss",
    "eval loss",
    "dataset",
    "base model",
    "job",
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; a dash line under the headers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def _loss(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def version_row(version: ModelVersion) -> list[str]:
    tags = version.tags
    gate = tags.get("gate") or ""
    if tags.get("rolled_back"):
        gate = f"{gate} (rolled back)" if gate else "rolled back"
    # What happened after the gate: a rollout that failed its checks and was rolled back
    # (the gate's "promoted" alone would read as if it served).
    rollout = tags.get(ROLLOUT_TAG) or ("serving" if CHAMPION in version.aliases else "-")
    if rollout.startswith("failed"):
        rollout = f"{rollout}, rolled back"
    return [
        version.version,
        ",".join(version.aliases) or "-",
        gate or "-",
        rollout,
        _loss(tags.get("gate_eval_loss")),
        _loss(tags.get("eval_loss")),
        (tags.get("dataset_sha256") or "-")[:12],
        tags.get("base_model") or "-",
        tags.get("job_id") or tags.get("job_name") or "-",
    ]


def with_aliases(
    versions: Sequence[ModelVersion], by_alias: Mapping[str, ModelVersion | None]
) -> list[ModelVersion]:
    """Versions with the aliases the registry resolves (a search of versions, MLflow's
    included, does not always fill them in)."""
    result = []
    for version in versions:
        aliases = set(version.aliases) | {
            alias
            for alias, holder in by_alias.items()
            if holder is not None and holder.version == version.version
        }
        result.append(dataclasses.replace(version, aliases=tuple(sorted(aliases))))
    return result


def run_models_command(args: argparse.Namespace, profile: Profile) -> int:
    name = args.name or profile.model.registered_name
    if profile.backend.kind == "local" and not StateLayout(profile.state_dir).mlflow_db.is_file():
        # Do not create a registry just to say it is empty.
        print(f"no versions of {name}: the state folder {profile.state_dir} has no registry yet")
        return 0
    from backends import open_workspace

    workspace = open_workspace(profile)
    versions = with_aliases(
        workspace.registry.list_model_versions(name),
        {
            alias: workspace.registry.get_model_by_alias(name, alias)
            for alias in (CHAMPION, CHALLENGER)
        },
    )
    if args.version is not None:
        chosen = [v for v in versions if v.version == args.version]
        if not chosen:
            known = ", ".join(v.version for v in versions) or "none"
            raise ConfigError(f"{name} has no version {args.version!r} (versions: {known})")
        version = chosen[0]
        print(
            yaml.safe_dump(
                {
                    "name": version.name,
                    "version": version.version,
                    "aliases": list(version.aliases),
                    "source": version.source,
                    "tags": dict(sorted(version.tags.items())),
                },
                sort_keys=False,
            ),
            end="",
        )
        return 0
    if not versions:
        print(f"no versions of {name} registered")
        return 0
    ordered = sorted(versions, key=lambda v: int(v.version) if v.version.isdigit() else 0)
    champion = next((v.version for v in versions if CHAMPION in v.aliases), None)
    print(
        f"{name}: {len(versions)} version(s)"
        + (f", champion {champion}" if champion else ", no champion")
    )
    for line in format_table(COLUMNS, [version_row(v) for v in reversed(ordered)]):
        print(line)
    return 0


def add_models_parser(
    commands: Any,
    with_profile: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    models = with_profile(
        commands.add_parser(
            "models",
            help="list registered model versions: aliases, gate, losses, lineage",
            description="The registry's versions of a model, newest first.\n\n" + EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    models.add_argument(
        "name", nargs="?", default=None, help="registered model (default: model.registered_name)"
    )
    models.add_argument("--version", default=None, help="show every tag of this version")
    models.set_defaults(func=handler)
