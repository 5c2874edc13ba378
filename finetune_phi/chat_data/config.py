"""Configuration of the chat-data stage: where records come from, how they are split and checked.

These models only describe settings; they never read files, touch the network or generate data.
They derive from `StrictModel`, so a profile with an unknown key or a wrong type ("0.2" for a
float) is rejected when it is loaded, not halfway through a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from finetune_phi.config_base import StrictModel


class HubSource(StrictModel):
    """Records loaded with `datasets.load_dataset` from the Hugging Face Hub (or its cache)."""

    kind: Literal["hub"] = Field(description="Selects this source: records from the Hub.")
    name: str = Field(
        default="HuggingFaceH4/ultrachat_200k",
        description="Dataset repository id on the Hub.",
    )
    config: str | None = Field(
        default="default",
        description="Dataset configuration name passed to load_dataset (None for none).",
    )
    split: str = Field(
        default="train_sft[:1%]",
        description="Split expression passed to load_dataset, slices included.",
    )
    revision: str | None = Field(
        default=None,
        description="Git revision (commit, tag or branch) to pin; None takes the default branch.",
    )


class FileSource(StrictModel):
    """Records read from a local file in the ultrachat schema."""

    kind: Literal["file"] = Field(description="Selects this source: records from a local file.")
    path: Path = Field(description="A .jsonl (one record per line) or .parquet file.")


class SyntheticSource(StrictModel):
    """Records made by the project's seeded generator (`finetune_phi.chat_data.synthetic`)."""

    kind: Literal["synthetic"] = Field(
        description="Selects this source: the project's own synthetic chat data."
    )
    conversations: int = Field(
        default=1200, ge=1, description="Number of distinct conversations to generate."
    )
    seed: int = Field(default=0, description="Seed of the generator; same seed, same records.")


DataSource = Annotated[HubSource | FileSource | SyntheticSource, Field(discriminator="kind")]
"""One of the sources, chosen by its `kind` key."""


class InvalidRecordPolicy(StrictModel):
    """What to do with records that fail validation."""

    action: Literal["drop", "fail"] = Field(
        default="drop",
        description=(
            "'drop': leave invalid records out (they are reported) but still fail when more than "
            "max_invalid_fraction of the input is invalid; 'fail': fail on any invalid record."
        ),
    )
    max_invalid_fraction: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="With action 'drop', the largest tolerated share of invalid records (0..1).",
    )


class DataSettings(StrictModel):
    """The whole chat-data stage: source, split, length limit and invalid-record policy."""

    source: DataSource = Field(
        default=SyntheticSource(kind="synthetic"),
        description="Where the records come from: hub, file or synthetic (by 'kind').",
    )
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Share of valid records held out for testing."
    )
    seed: int = Field(default=0, description="Seed of the train/test shuffle.")
    max_tokens: int = Field(
        default=2048,
        ge=8,
        description="Longest conversation kept, in tokens (estimated when no tokenizer is given).",
    )
    invalid: InvalidRecordPolicy = Field(
        default=InvalidRecordPolicy(),
        description="What to do with records that fail validation.",
    )
