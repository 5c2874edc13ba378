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

import codecs
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from finetune_phi.chat_data.config import DataSource, FileSource, HubSource, SyntheticSource
from finetune_phi.chat_data.synthetic import generate_conversations
from finetune_phi.chat_data.validation import ProblemKind, UnparsableRecord
from finetune_phi.errors import UsageError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "DataFileNotFoundError",
    "DataSourceError",
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


class DataSourceError(UsageError, ValueError):
    """The configured source cannot be read at all (not one bad record: those are problems).
    The message names the file and says why, for the person who configured it."""


class DataFileNotFoundError(DataSourceError, FileNotFoundError):
    """The configured data file does not exist."""


def read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """Records of a JSONL file, one per non-blank line, ref "line N" (1-based).

    The file must be UTF-8. A UTF-8 byte order mark at the very start of the file (what some
    Windows editors write) is skipped, as Python's "utf-8-sig" codec does; one anywhere else
    makes that line an INVALID_ENCODING problem.
    """
    # Bytes, decoded per line: one badly encoded line becomes one problem, not a failed read.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            ref = f"line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                message = f"not UTF-8 text ({error.reason} at byte {error.start} of the line)"
                yield ref, UnparsableRecord(message, ProblemKind.INVALID_ENCODING)
                continue
            if text.startswith("\ufeff"):
                message = (
                    "a UTF-8 byte order mark (BOM) starts this line; only the first line of a "
                    "file may have one (were files concatenated?)"
                )
                yield ref, UnparsableRecord(message, ProblemKind.INVALID_ENCODING)
                continue
            try:
                # Without the line ending: inside a string cut short it would be reported as an
                # "invalid control character" instead of the unterminated string it is.
                yield ref, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                yield ref, UnparsableRecord(_json_error(error))


def _json_error(error: json.JSONDecodeError) -> str:
    """The decoder's message with the column; some of its messages end in "at" already
    ("Unterminated string starting at")."""
    joiner = " " if error.msg.endswith(" at") else " at "
    return f"{error.msg}{joiner}column {error.colno}"


def _check_jsonl_encoding(path: Path) -> None:
    """Refuse a UTF-16 or UTF-32 file at once (by its byte order mark): read as UTF-8 every
    line would be a problem of its own, which says nothing about the real cause."""
    with path.open("rb") as stream:
        head = stream.read(4)
    for name, bom in (
        ("UTF-32", codecs.BOM_UTF32_LE),
        ("UTF-32", codecs.BOM_UTF32_BE),
        ("UTF-16", codecs.BOM_UTF16_LE),
        ("UTF-16", codecs.BOM_UTF16_BE),
    ):
        if head.startswith(bom):
            raise DataSourceError(
                f"data file {str(path)!r} is {name} text (it starts with a {name} byte order "
                "mark); JSONL must be UTF-8: convert it, e.g. "
                f"`iconv -f {name} -t UTF-8 {path.name} > {path.stem}.utf8.jsonl`"
            )


def read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    """Records of a Parquet file, ref "row N" (0-based).

    A file pyarrow cannot read as Parquet (another format, a truncated or corrupt file) raises
    DataSourceError naming the file, with pyarrow's reason after it.
    """
    import pyarrow as pa  # heavy; only needed for this source
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = reason.split(f"{str(path)!r}: ", 1)[-1]  # pyarrow names the file again
        raise DataSourceError(
            f"data file {str(path)!r} cannot be read as Parquet (is it a Parquet file, "
            f"complete?): {reason}"
        ) from error
    for index, row in enumerate(rows):
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
    try:
        rows = loader(source.name, source.config, split=source.split, revision=source.revision)
    except ValueError as error:  # an unknown split or configuration, a slice out of range
        raise DataSourceError(
            f"hub dataset {source.name!r} (configuration {source.config!r}, split "
            f"{source.split!r}) cannot be loaded: {error}"
        ) from error
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
        raise DataSourceError(
            f"unsupported data file {str(source.path)!r}: the suffix must be one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not source.path.exists():
        raise DataFileNotFoundError(f"data file not found: {source.path}")
    if not source.path.is_file():
        raise DataSourceError(f"data file {str(source.path)!r} is not a file (a folder?)")
    if not os.access(source.path, os.R_OK):
        raise DataSourceError(f"data file {str(source.path)!r} cannot be read: permission denied")
    if suffix == ".jsonl":
        _check_jsonl_encoding(source.path)
        return read_jsonl(source.path)
    return read_parquet(source.path)


def iter_source(
    source: DataSource, *, hub_loader: HubLoader | None = None
) -> Iterator[tuple[str, object]]:
    """The `(ref, record)` pairs of any configured source.

    A file source is checked eagerly: an unknown suffix, a folder, an unreadable file or a
    UTF-16/UTF-32 JSONL file raises DataSourceError (a ValueError) and a missing file
    DataFileNotFoundError (also a FileNotFoundError) when this is called, not on first
    iteration. A file that is not Parquet raises DataSourceError on the first iteration. Both
    are `UsageError`s: the command line prints them as one paragraph.
    """
    if isinstance(source, FileSource):
        return _file_records(source)
    if isinstance(source, HubSource):
        return load_hub_records(source, hub_loader)
    if isinstance(source, SyntheticSource):
        return synthetic_records(source)
    raise TypeError(f"unknown data source {source!r}")  # unreachable with a validated config
