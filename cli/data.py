"""`finetune-phi data inspect`: the dataset a run trains on, prepared (or reused) as the flow
does it, described: counts, problems by kind, token-length statistics and a histogram.

    finetune-phi data inspect
    finetune-phi data inspect --set data.source.conversations=2000 --bins 20

It does what the flow's first stages do, through the same core functions and without Prefect:
the base model (the tiny Phi-3 is built into the state folder when it is the base), then
`finetune_phi.chat_data.prepare_into_store` validating for that model's chat template, so the
folder it leaves in the state folder is the one the next run re-uses. Invalid records are
reported by kind; data that breaks the profile's invalid-record policy, or a source that cannot
be read, ends the command with the same report a run gives (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from finetune_phi.chat_data.prepare import PROBLEMS_NAME
from finetune_phi.chat_data.validation import SHOWN_PROBLEMS
from finetune_phi.settings import TINY_MODEL, Profile
from finetune_phi.state import StateLayout

EXAMPLES = """\
Examples:
  finetune-phi data inspect
  finetune-phi data inspect --set data.source.conversations=2000 --bins 20
  finetune-phi data inspect --set 'data.source={"kind": "file", "path": "chats.jsonl"}'
  finetune-phi data inspect --profile azure      # downloads the hub split, like a run does
"""

BAR_WIDTH = 40


def histogram_lines(values: Sequence[int], bins: int = 10, width: int = BAR_WIDTH) -> list[str]:
    """A text histogram: equal-width integer bins from the smallest to the largest value, one
    line each (`  lo-  hi | ####   count`); bars scale to the fullest bin."""
    if not values:
        return ["(no records)"]
    low, high = min(values), max(values)
    step = max(1, math.ceil((high - low + 1) / max(bins, 1)))
    counts = Counter((value - low) // step for value in values)
    fullest = max(counts.values())
    digits = len(str(low + step * bins))
    lines = []
    for index in range(math.ceil((high - low + 1) / step)):
        start = low + index * step
        count = counts.get(index, 0)
        bar = "#" * (round(width * count / fullest) if count else 0)
        if count and not bar:
            bar = "."  # a non-empty bin never looks empty
        lines.append(f"  {start:>{digits}}-{start + step - 1:<{digits}} |{bar:<{width}} {count}")
    return lines


def conversation_lengths(files: Sequence[Path], count: Callable[[Any], int]) -> list[int]:
    lengths = []
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    lengths.append(count(json.loads(line)["messages"]))
    return lengths


def ensure_base_model(profile: Profile) -> str:
    """What the run's base model is loaded from, the tiny Phi-3 built first when it is the base
    and not built yet (as the flow's `ensure-base-model` stage does)."""
    if profile.model.base != TINY_MODEL:
        return profile.model.base
    from finetune_phi.tiny_model import build_default_tiny_phi3, is_built

    folder = StateLayout(profile.state_dir).tiny_model_dir
    if not is_built(folder):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # building the tiny model: no progress bar
        build_default_tiny_phi3(folder)
    return str(folder)


def first_problems(problems_file: Path, shown: int = SHOWN_PROBLEMS) -> list[str]:
    """The first problems of a problems.jsonl as `ref: message` lines, then "... and N more"."""
    with problems_file.open(encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    lines = [f"{problem['ref']}: {problem['message']}" for problem in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more")
    return lines


def run_data_command(args: argparse.Namespace, profile: Profile) -> int:
    from finetune_phi.chat_data import chat_token_counter, estimate_tokens, prepare_into_store
    from finetune_phi.run_plan import describe_source

    base = ensure_base_model(profile)
    counter = chat_token_counter(base)
    stored = prepare_into_store(
        profile.data, StateLayout(profile.state_dir).datasets_dir, count_tokens=counter
    )
    manifest = stored.manifest
    folder = stored.directory
    counts = manifest.counts
    lengths = manifest.token_lengths
    reused = stored.reused

    print(
        f"dataset {manifest.dataset_sha256[:16]} in {folder} "
        f"({'re-used: same content as an earlier preparation' if reused else 'prepared'})"
    )
    print(f"  source    {describe_source(profile)}")
    system = (
        "has a system turn (system messages are kept)"
        if counter.capabilities.system_turn
        else "has no system turn (records with a system message are refused)"
    )
    print(f"  template  {base}: its chat template {system}")
    print(
        f"  records   {counts.input} read, {counts.valid} valid, {counts.invalid} invalid "
        f"({profile.data.invalid.action})"
    )
    print(
        f"  split     {counts.train} train / {counts.test} test "
        f"(test fraction {manifest.split.test_fraction:g}, seed {manifest.split.seed})"
    )
    if counts.by_kind:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.by_kind.items()))
        problems_file = folder / PROBLEMS_NAME
        print(f"  problems  {kinds} (one line each in {problems_file})")
        for line in first_problems(problems_file):
            print(f"            {line}")
    else:
        print("  problems  none")
    unit = "tokens" if lengths.unit == "tokens" else "estimated tokens (characters / 4)"
    print(
        f"  lengths   min {lengths.min}, mean {lengths.mean:g}, p50 {lengths.p50}, "
        f"p95 {lengths.p95}, max {lengths.max} {unit}; limit {manifest.max_tokens}"
    )
    measure = counter if lengths.unit == "tokens" else estimate_tokens
    measured = conversation_lengths([stored.train_file, stored.test_file], measure)
    print(
        f"histogram of conversation lengths ({len(measured)} conversations, train + test, {unit})"
    )
    for line in histogram_lines(measured, args.bins):
        print(line)
    return 0


def add_data_parser(
    commands: Any,
    with_profile: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    data = with_profile(
        commands.add_parser(
            "data",
            help="inspect the dataset a run trains on (counts, problems, token lengths)",
            description="Prepare the profile's dataset as the flow does (or find the same "
            "content already prepared) and describe it.\n\n" + EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    data.add_argument("action", choices=["inspect"])
    data.add_argument("--bins", type=int, default=10, help="histogram bins (default 10)")
    data.set_defaults(func=handler)
