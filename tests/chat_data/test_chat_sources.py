"""Source readers: refs, unparsable lines, file checks, and the Hub call (without a network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_phi.chat_data.config import FileSource, HubSource, SyntheticSource
from finetune_phi.chat_data.sources import iter_source, load_hub_records
from finetune_phi.chat_data.validation import UnparsableRecord

RECORD = {
    "prompt": "Hi",
    "prompt_id": "p1",
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
}


def test_jsonl_refs_are_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(RECORD).encode() + b"\n\n  \n{oops\n" + b'"\xff"\n' + b"[1, 2]\n")
    pairs = list(iter_source(FileSource(kind="file", path=path)))
    assert [ref for ref, _ in pairs] == ["line 1", "line 4", "line 5", "line 6"]
    assert pairs[0][1] == RECORD
    assert isinstance(pairs[1][1], UnparsableRecord)
    assert "column 2" in pairs[1][1].error
    assert isinstance(pairs[2][1], UnparsableRecord)
    assert "not UTF-8" in pairs[2][1].error
    assert pairs[3][1] == [1, 2]  # parsed; validation will say it is not an object


def test_parquet_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    other = {**RECORD, "prompt_id": "p2"}
    pq.write_table(pa.Table.from_pylist([RECORD, other]), path)
    pairs = list(iter_source(FileSource(kind="file", path=path)))
    assert pairs == [("row 0", RECORD), ("row 1", other)]


def test_unknown_suffix_names_path_and_supported_suffixes(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt\n")
    with pytest.raises(ValueError, match=r"data\.csv.*\.jsonl, \.parquet"):
        iter_source(FileSource(kind="file", path=path))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(FileNotFoundError, match=r"absent\.jsonl"):
        iter_source(FileSource(kind="file", path=path))


def test_synthetic_refs() -> None:
    pairs = list(iter_source(SyntheticSource(kind="synthetic", conversations=3, seed=0)))
    assert [ref for ref, _ in pairs] == ["record 0", "record 1", "record 2"]


def test_hub_loader_gets_the_configured_arguments() -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def loader(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((args, kwargs))
        return [RECORD, RECORD]

    source = HubSource(kind="hub", split="train_sft[:10]", revision="abc123")
    pairs = list(load_hub_records(source, loader=loader))
    assert calls == [
        (
            ("HuggingFaceH4/ultrachat_200k", "default"),
            {"split": "train_sft[:10]", "revision": "abc123"},
        )
    ]
    assert pairs == [("row 0", RECORD), ("row 1", RECORD)]


def test_iter_source_passes_the_hub_loader_on() -> None:
    def loader(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [RECORD]

    source = HubSource(kind="hub", name="someone/chats", config=None)
    assert list(iter_source(source, hub_loader=loader)) == [("row 0", RECORD)]


def test_a_file_that_is_not_parquet_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("prompt,messages\nHi,[]\n")  # a CSV, named .parquet
    with pytest.raises(ValueError) as caught:
        list(iter_source(FileSource(kind="file", path=path)))
    message = str(caught.value)
    assert message.startswith(f"data file {str(path)!r} cannot be read as Parquet")
    assert message.count(str(path)) == 1  # pyarrow's own mention of the path is left out


def test_a_folder_is_not_a_data_file(tmp_path: Path) -> None:
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"data\.jsonl' is not a file \(a folder\?\)$"):
        iter_source(FileSource(kind="file", path=folder))
