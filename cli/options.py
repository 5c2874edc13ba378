"""What every command shares: the `--profile` and `--set` options and turning them into a
validated profile. Pure argument handling; no command lives here."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from finetune_phi.settings import (
    ConfigError,
    Profile,
    available_profiles,
    load_profile,
    parse_override_value,
    set_path,
)


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """`a.b=value` pairs into a nested mapping, values typed as environment overrides are."""
    tree: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.seed=1")
        set_path(tree, key.split("."), parse_override_value(raw), label=f"--set {item!r}")
    return tree


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile `--profile` names, with the `--set` overrides applied and validated."""
    return load_profile(args.profile, overrides=parse_assignments(args.set))


def with_profile(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--profile` and `--set` to a command's parser (returned for chaining)."""
    sub.add_argument(
        "--profile",
        default=None,
        help="profile name or YAML path (default: $FINETUNE_PHI_PROFILE or 'local'; "
        f"available: {', '.join(available_profiles())})",
    )
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one profile key, e.g. --set training.num_train_epochs=2 (repeatable)",
    )
    return sub
