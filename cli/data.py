"""`finetune-phi data inspect`: the dataset a run trains on, prepared (or reused) as the flow
does it, described: counts, problems by kind, token-length statistics and a histogram.

    finetune-phi data inspect
    finetune-phi data inspect --set data.source.conversations=2000 --bins 20

It runs the flow's own stage bodies (`ensure-base-model`, `prepare-dataset`) without Prefect
around them, so the folder it leaves in the state folder is the one the next run re-uses.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from finetune_phi.settings import Profile
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


def run_data_command(args: argparse.Namespace, profile: Profile) -> int:
    from prefect.logging import disable_run_logger

    from cli.run import describe_source
    from finetune_phi.chat_data.validation import estimate_tokens
    from tasks.base_model import ensure_base_model
    from tasks.dataset import chat_token_counter, prepare_dataset_task

    datasets = StateLayout(profile.state_dir).datasets_dir
    before = {p.name for p in datasets.iterdir()} if datasets.is_dir() else set()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # building the tiny model: no progress bar
    with disable_run_logger():  # the stages' bodies, without a Prefect run around them
        base = ensure_base_model.fn(profile)
        dataset = prepare_dataset_task.fn(profile, base)
    manifest = dataset.manifest
    folder = Path(dataset.directory)
    counts = manifest.counts
    lengths = manifest.token_lengths
    reused = folder.name in before

    print(
        f"dataset {manifest.dataset_sha256[:16]} in {folder} "
        f"({'re-used: same content as an earlier preparation' if reused else 'prepared'})"
    )
    print(f"  source    {describe_source(profile)}")
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
        print(f"  problems  {kinds} (one line each in {folder / 'problems.jsonl'})")
    else:
        print("  problems  none")
    unit = "tokens" if lengths.unit == "tokens" else "estimated tokens (characters / 4)"
    print(
        f"  lengths   min {lengths.min}, mean {lengths.mean:g}, p50 {lengths.p50}, "
        f"p95 {lengths.p95}, max {lengths.max} {unit}; limit {manifest.max_tokens}"
    )
    counter = chat_token_counter(base) if lengths.unit == "tokens" else estimate_tokens
    measured = conversation_lengths(
        [folder / manifest.files.train.path, folder / manifest.files.test.path], counter
    )
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
