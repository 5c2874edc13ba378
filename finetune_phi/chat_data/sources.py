"""Thin readers that turn a configured data source into `(ref, record)` pairs.

A ref tells a person where to find the record: "line N" (1-based, as editors count) for JSONL,
"row N" (0-based, as `table[N]` and `dataset[N]` index) for Parquet and the Hub, "record N"
(0-based) for synthetic data. A JSONL line that cannot be parsed is yielded as an
`UnparsableRecord`, so validation reports it with the others instead of the read stopping.

This module must not judge records (that is `validation`) nor write anything. Heavy libraries
(`datasets`, `pyarrow`) are imported only when their source is used, so importing the package
stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from finetune_phi.chat_data.config import DataSource, FileSource, HubSource, SyntheticSource
from finetune_phi.chat_data.synthetic import generate_conversations
from finetune_phi.chat_data.validation import UnparsableRecord

__all__ = [
    "SUPPORTED_SUFFIXES",
    "HubLoader",
    "iter_source",
    "load_hub_records",
    "read_jsonl",
    "read_parquet",
    "synthetic_records",
]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".jsonl", ".parquet")

HubLoader = Callable[..., Iterable[Any]]
"""`datasets.load_dataset`, or anything called like it that returns an iterable of rows."""


def read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """Records of a JSONL file, one per non-blank line, ref "line N" (1-based)."""
    # Bytes, decoded per line: one badly encoded line becomes one problem, not a failed read.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            ref = f"line {number}"
            try:
                yield ref, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield (
                    ref,
                    UnparsableRecord(f"not UTF-8 text ({error.reason} at byte {error.start})"),
                )
            except json.JSONDecodeError as error:
                yield ref, UnparsableRecord(f"{error.msg} at column {error.colno}")


def read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    """Records of a Parquet file, ref "row N" (0-based)."""
    import pyarrow.parquet as pq  # heavy; only needed for this source

    for index, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"row {index}", row


def load_hub_records(
    source: HubSource, loader: HubLoader | None = None
) -> Iterator[tuple[str, object]]:
    """Records of a Hub dataset split, ref "row N" (0-based).

    `loader` defaults to `datasets.load_dataset`; tests pass their own to check the call without
    a network.
    """
    if loader is None:
        from datasets import load_dataset  # heavy, and needs the network or a warm cache

        loader = load_dataset
    rows = loader(source.name, source.config, split=source.split, revision=source.revision)
    for index, row in enumerate(rows):
        yield f"row {index}", row


def synthetic_records(source: SyntheticSource) -> Iterator[tuple[str, object]]:
    """The generator's records, ref "record N" (0-based)."""
    for index, record in enumerate(generate_conversations(source.conversations, source.seed)):
        yield f"record {index}", record


def _file_records(source: FileSource) -> Iterator[tuple[str, object]]:
    # Checked before any reading starts, so a wrong path fails at once with a clear message.
    suffix = source.path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported data file {str(source.path)!r}: the suffix must be one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not source.path.is_file():
        raise FileNotFoundError(f"data file not found: {source.path}")
    return read_jsonl(source.path) if suffix == ".jsonl" else read_parquet(source.path)


def iter_source(
    source: DataSource, *, hub_loader: HubLoader | None = None
) -> Iterator[tuple[str, object]]:
    """The `(ref, record)` pairs of any configured source.

    A file source is checked eagerly: an unknown suffix raises ValueError and a missing file
    FileNotFoundError when this is called, not on first iteration.
    """
    if isinstance(source, FileSource):
        return _file_records(source)
    if isinstance(source, HubSource):
        return load_hub_records(source, hub_loader)
    if isinstance(source, SyntheticSource):
        return synthetic_records(source)
    raise TypeError(f"unknown data source {source!r}")  # unreachable with a validated config
