"""The chat-data stage end to end: load, validate, apply the policy, split, write, describe.

Output folder layout (all names fixed, so later stages find them):

    train.jsonl     training records, ultrachat schema, one JSON object per line
    test.jsonl      held-out records, same format
    problems.jsonl  one {"kind", "ref", "message"} object per problem found
    manifest.json   counts, token lengths, file hashes and `dataset_sha256`; written last

The manifest is the completion marker: it is removed before any data file is replaced and written
only after all of them are in place, each file going through a temporary file and `os.replace`.
A crash therefore never leaves a folder whose manifest describes files it does not hold.

The manifest is byte-identical for the same input and settings (no timestamps, no absolute paths
added, no random temp names), so `dataset_sha256` tells later stages whether the data changed.

`prepare_into_store` puts a prepared dataset into a content-addressed folder
(`<datasets_dir>/<sha256[:16]>/`), the one the flow's stage, `finetune-phi data inspect` and
later runs share: the same content is prepared once and re-used.

This module must not know about Prefect or the training backends, and must not download anything
itself: the source readers do the reading.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from finetune_phi import __version__
from finetune_phi.chat_data.config import DataSettings, FileSource
from finetune_phi.chat_data.sources import HubLoader, iter_source
from finetune_phi.chat_data.split import split_records
from finetune_phi.chat_data.template import ChatTemplateCounter
from finetune_phi.chat_data.validation import (
    ChatCapabilities,
    DataValidationError,
    TokenCounter,
    apply_policy,
    problem_summary,
    validate_records,
)
from finetune_phi.config_base import StrictModel

__all__ = [
    "MANIFEST_NAME",
    "PROBLEMS_NAME",
    "TEST_NAME",
    "TRAIN_NAME",
    "DatasetManifest",
    "StoredDataset",
    "dataset_sha256",
    "file_sha256",
    "load_manifest",
    "prepare_dataset",
    "prepare_into_store",
    "verify_dataset",
]

TRAIN_NAME = "train.jsonl"
TEST_NAME = "test.jsonl"
PROBLEMS_NAME = "problems.jsonl"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class SplitInfo(StrictModel):
    """How the valid records were split."""

    test_fraction: float = Field(description="Share of valid records held out for testing.")
    seed: int = Field(description="Seed of the shuffle.")


class RecordCounts(StrictModel):
    """How many records went where."""

    input: int = Field(description="Records read from the source, valid or not.")
    valid: int = Field(description="Records that passed validation (train + test).")
    invalid: int = Field(description="Records with at least one problem (left out).")
    train: int = Field(description="Records in train.jsonl.")
    test: int = Field(description="Records in test.jsonl.")
    by_kind: dict[str, int] = Field(description="Problems per kind, keys sorted.")


class TokenLengths(StrictModel):
    """Distribution of conversation lengths over the valid records."""

    min: int = Field(description="Shortest conversation.")
    mean: float = Field(description="Mean length, rounded to 2 decimals.")
    p50: int = Field(description="Median length (nearest rank).")
    p95: int = Field(description="95th percentile (nearest rank).")
    max: int = Field(description="Longest conversation.")
    unit: Literal["tokens", "estimated_tokens"] = Field(
        description="'tokens' when a tokenizer measured them, else characters / 4."
    )


class FileEntry(StrictModel):
    """One output data file."""

    path: str = Field(description="File name, relative to the manifest's folder.")
    sha256: str = Field(description="sha256 of the file's bytes.")
    records: int = Field(description="Number of records (lines) in the file.")


class DatasetFiles(StrictModel):
    """The data files of a prepared dataset."""

    train: FileEntry = Field(description="The training split.")
    test: FileEntry = Field(description="The held-out split.")


class DatasetManifest(StrictModel):
    """What a prepared dataset folder holds, and a hash that changes exactly when the data does."""

    manifest_version: int = Field(description="Format version of this manifest.")
    created_by: str = Field(description="The package and version that wrote it.")
    source: dict[str, Any] = Field(description="The source settings, as configured.")
    split: SplitInfo = Field(description="How the valid records were split.")
    max_tokens: int = Field(description="The length limit records were validated against.")
    counts: RecordCounts = Field(description="How many records went where.")
    token_lengths: TokenLengths = Field(description="Lengths of the valid conversations.")
    files: DatasetFiles = Field(description="The train and test files with their hashes.")
    dataset_sha256: str = Field(description="sha256 over the train and test files' sha256s.")

    def to_json(self) -> str:
        """The manifest.json text: stable key order, 2-space indent, trailing newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_sha256(train_sha256: str, test_sha256: str) -> str:
    """One hash for the dataset, from the hashes of its two files (labelled, so order matters)."""
    text = f"train {train_sha256}\ntest {test_sha256}\n"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _nearest_rank(sorted_values: list[int], percent: float) -> int:
    """Nearest-rank percentile: an actual value of the data, no interpolation to argue about."""
    rank = max(math.ceil(percent / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def _token_lengths(counts: list[int], estimated: bool) -> TokenLengths:
    values = sorted(counts)
    return TokenLengths(
        min=values[0],
        mean=round(sum(values) / len(values), 2),
        p50=_nearest_rank(values, 50),
        p95=_nearest_rank(values, 95),
        max=values[-1],
        unit="estimated_tokens" if estimated else "tokens",
    )


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace: all or nothing."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # newline="" so "\n" is written as is on every platform: the hashes must not vary.
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _no_records_message(settings: DataSettings) -> str:
    """Why a source gave no records, naming it."""
    source = settings.source
    if not isinstance(source, FileSource):
        return f"the {source.kind} source has no records"
    blank = source.path.suffix.lower() == ".jsonl"
    why = " (it is empty or holds only blank lines)" if blank else ""
    return f"data file {str(source.path)!r} has no records{why}"


def _by_kind(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in counts.items())


def prepare_dataset(
    settings: DataSettings,
    out_dir: Path,
    *,
    count_tokens: TokenCounter | None = None,
    capabilities: ChatCapabilities | None = None,
    progress: Callable[[str], None] | None = None,
    hub_loader: HubLoader | None = None,
) -> DatasetManifest:
    """Load, validate, split and write the dataset described by `settings` into `out_dir`.

    `count_tokens` measures conversations for the length limit and the manifest (an estimate is
    used without it); `capabilities` says what the base model's chat template renders, and
    defaults to the counter's when it is a `ChatTemplateCounter` (what `chat_token_counter`
    returns), so passing that counter is enough to validate for a base model. `progress`
    receives one-line status messages; `hub_loader` replaces `datasets.load_dataset` for a Hub
    source. Raises DataValidationError when the records break the invalid-record policy or
    fewer than two valid records remain, and DataSourceError (DataFileNotFoundError for a
    missing file) when the source cannot be read; all are `UsageError`s, and nothing is written
    then.
    """

    def report(message: str) -> None:
        if progress is not None:
            progress(message)

    if capabilities is None and isinstance(count_tokens, ChatTemplateCounter):
        capabilities = count_tokens.capabilities
    report(f"reading records from the {settings.source.kind} source")
    result = validate_records(
        iter_source(settings.source, hub_loader=hub_loader),
        max_tokens=settings.max_tokens,
        count_tokens=count_tokens,
        capabilities=capabilities,
    )
    invalid = len(result.invalid_refs)
    kinds = f" ({_by_kind(result.counts_by_kind())})" if result.problems else ""
    report(f"validated {result.total} records: {len(result.valid)} valid, {invalid} invalid{kinds}")
    apply_policy(result, settings.invalid)
    if result.total == 0:
        raise DataValidationError(_no_records_message(settings), result)
    if len(result.valid) < 2:
        raise DataValidationError(
            f"only {len(result.valid)} valid record(s) out of {result.total}; "
            "at least 2 are needed to make a train and a test split"
            + (f"\n{problem_summary(result)}" if result.problems else ""),
            result,
        )

    # Split records together with their token counts, so lengths are never measured twice.
    rows = [
        (record, tokens)
        for (_, record), tokens in zip(result.valid, result.token_counts, strict=True)
    ]
    train, test = split_records(rows, settings.test_fraction, settings.seed)
    train_text = _jsonl(record for record, _ in train)
    test_text = _jsonl(record for record, _ in test)
    problems_text = _jsonl(problem.to_dict() for problem in result.problems)
    train_sha = hashlib.sha256(train_text.encode("utf-8")).hexdigest()
    test_sha = hashlib.sha256(test_text.encode("utf-8")).hexdigest()

    manifest = DatasetManifest(
        manifest_version=MANIFEST_VERSION,
        created_by=f"finetune-phi {__version__}",
        source=settings.source.model_dump(mode="json"),
        split=SplitInfo(test_fraction=settings.test_fraction, seed=settings.seed),
        max_tokens=settings.max_tokens,
        counts=RecordCounts(
            input=result.total,
            valid=len(result.valid),
            invalid=invalid,
            train=len(train),
            test=len(test),
            by_kind=result.counts_by_kind(),
        ),
        token_lengths=_token_lengths(result.token_counts, result.tokens_estimated),
        files=DatasetFiles(
            train=FileEntry(path=TRAIN_NAME, sha256=train_sha, records=len(train)),
            test=FileEntry(path=TEST_NAME, sha256=test_sha, records=len(test)),
        ),
        dataset_sha256=dataset_sha256(train_sha, test_sha),
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    # The old manifest goes first: from here until the new one lands, the folder is visibly
    # incomplete rather than a mix of old and new files under an old manifest.
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    _write_atomically(out_dir / TRAIN_NAME, train_text)
    _write_atomically(out_dir / TEST_NAME, test_text)
    _write_atomically(out_dir / PROBLEMS_NAME, problems_text)
    _write_atomically(out_dir / MANIFEST_NAME, manifest.to_json())
    report(
        f"wrote {len(train)} train and {len(test)} test records to {out_dir} "
        f"(dataset {manifest.dataset_sha256[:12]})"
    )
    return manifest


@dataclass(frozen=True)
class StoredDataset:
    """A prepared dataset in its content-addressed folder."""

    directory: Path
    manifest: DatasetManifest
    reused: bool  # True: an earlier preparation already held the same content

    @property
    def train_file(self) -> Path:
        return self.directory / self.manifest.files.train.path

    @property
    def test_file(self) -> Path:
        return self.directory / self.manifest.files.test.path


def prepare_into_store(
    settings: DataSettings,
    datasets_dir: Path,
    *,
    count_tokens: TokenCounter | None = None,
    capabilities: ChatCapabilities | None = None,
    progress: Callable[[str], None] | None = None,
    hub_loader: HubLoader | None = None,
) -> StoredDataset:
    """`prepare_dataset` into `datasets_dir/<sha256[:16]>/`, keeping the folder an earlier
    preparation of the same content made (the one earlier runs point at).

    The data is prepared in a staging folder of its own and renamed into place, so a
    preparation running at the same time (a run and `data inspect`) never sees half a folder;
    the staging folder is gone afterwards, whatever happened. A re-used folder gets this
    preparation's problems.jsonl and manifest.json (its data files are already the same bytes).
    Arguments and errors are those of `prepare_dataset`; nothing is left behind on an error.
    """
    # The staging folder of earlier versions had a fixed name; one a crash left is stale.
    shutil.rmtree(datasets_dir / ".incoming", ignore_errors=True)
    staging = datasets_dir / f".incoming-{uuid.uuid4().hex[:12]}"
    try:
        manifest = prepare_dataset(
            settings,
            staging,
            count_tokens=count_tokens,
            capabilities=capabilities,
            progress=progress,
            hub_loader=hub_loader,
        )
        final = datasets_dir / manifest.dataset_sha256[:16]
        reused = final.is_dir()
        if not reused:
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
                reused = True  # a preparation of the same content landed first
        if reused:
            # The train and test files are the same bytes (same sha256), but the source may
            # not be: a file whose bad records were deleted gives the same dataset. The
            # problems and the manifest say what this preparation found, not an earlier one.
            for name in (PROBLEMS_NAME, MANIFEST_NAME):
                os.replace(staging / name, final / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StoredDataset(final, manifest, reused)


def load_manifest(path: Path) -> DatasetManifest:
    """Read a manifest.json (or the manifest of a dataset folder, when given the folder)."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    return DatasetManifest.model_validate_json(path.read_text(encoding="utf-8"))


def verify_dataset(out_dir: Path) -> DatasetManifest:
    """Load a folder's manifest and check its files still have the recorded hashes.

    Raises FileNotFoundError when the folder is incomplete and ValueError when a file changed.
    """
    manifest = load_manifest(out_dir)
    for entry in (manifest.files.train, manifest.files.test):
        actual = file_sha256(out_dir / entry.path)
        if actual != entry.sha256:
            raise ValueError(
                f"{out_dir / entry.path} does not match its manifest: sha256 {actual}, "
                f"expected {entry.sha256}"
            )
    return manifest
