"""prepare_dataset end to end: real sources, real files, byte-identical reruns, policy failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_phi.chat_data.config import (
    DataSettings,
    FileSource,
    InvalidRecordPolicy,
    SyntheticSource,
)
from finetune_phi.chat_data.prepare import (
    dataset_sha256,
    file_sha256,
    load_manifest,
    prepare_dataset,
    prepare_into_store,
    verify_dataset,
)
from finetune_phi.chat_data.validation import DataValidationError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "chat_data" / "mixed.jsonl"
OUTPUTS = ("train.jsonl", "test.jsonl", "problems.jsonl", "manifest.json")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def synthetic_settings(**changes: Any) -> DataSettings:
    source = SyntheticSource(kind="synthetic", conversations=100, seed=0)
    return DataSettings(source=source, **changes)


def fixture_settings(**policy: Any) -> DataSettings:
    return DataSettings(
        source=FileSource(kind="file", path=FIXTURE),
        test_fraction=0.25,
        invalid=InvalidRecordPolicy(**policy),
    )


def test_synthetic_end_to_end(tmp_path: Path) -> None:
    messages: list[str] = []
    manifest = prepare_dataset(synthetic_settings(), tmp_path / "data", progress=messages.append)
    out = tmp_path / "data"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temp files left
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert (len(train), len(test)) == (80, 20)
    assert all(list(r) == ["prompt", "prompt_id", "messages"] for r in train + test)
    assert (out / "problems.jsonl").read_text() == ""
    counts = manifest.counts
    summary = (counts.input, counts.valid, counts.invalid, counts.train, counts.test)
    assert summary == (100, 100, 0, 80, 20)
    assert counts.by_kind == {}
    assert manifest.token_lengths.unit == "estimated_tokens"
    lengths = manifest.token_lengths
    assert 0 < lengths.min <= lengths.p50 <= lengths.p95 <= lengths.max
    assert manifest.files.train.sha256 == file_sha256(out / "train.jsonl")
    assert manifest.dataset_sha256 == dataset_sha256(
        manifest.files.train.sha256, manifest.files.test.sha256
    )
    assert manifest.source == {"kind": "synthetic", "conversations": 100, "seed": 0}
    assert load_manifest(out / "manifest.json") == manifest
    assert verify_dataset(out) == manifest
    assert "wrote 80 train and 20 test records" in messages[-1]


def test_files_are_plain_utf8_jsonl(tmp_path: Path) -> None:
    prepare_dataset(fixture_settings(max_invalid_fraction=0.2), tmp_path)
    raw = (tmp_path / "train.jsonl").read_bytes() + (tmp_path / "test.jsonl").read_bytes()
    assert b"\r\n" not in raw
    assert raw.endswith(b"\n")
    assert "Où est la tour Eiffel ?".encode() in raw  # ensure_ascii=False


def test_rerun_into_another_folder_is_byte_identical(tmp_path: Path) -> None:
    first = prepare_dataset(fixture_settings(max_invalid_fraction=0.2), tmp_path / "a")
    second = prepare_dataset(fixture_settings(max_invalid_fraction=0.2), tmp_path / "b")
    assert first == second
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_changed_settings_change_the_dataset_hash(tmp_path: Path) -> None:
    first = prepare_dataset(synthetic_settings(), tmp_path / "a")
    second = prepare_dataset(synthetic_settings(seed=1), tmp_path / "b")
    assert first.dataset_sha256 != second.dataset_sha256


def test_jsonl_with_bad_lines_drops_and_reports_them(tmp_path: Path) -> None:
    manifest = prepare_dataset(fixture_settings(max_invalid_fraction=0.2), tmp_path)
    counts = manifest.counts
    assert (counts.input, counts.valid, counts.invalid) == (19, 16, 3)
    assert (counts.train, counts.test) == (12, 4)
    assert counts.by_kind == {"bad_role": 1, "duplicate": 1, "invalid_json": 1}
    problems = read_jsonl(tmp_path / "problems.jsonl")
    assert [(p["kind"], p["ref"]) for p in problems] == [
        ("invalid_json", "line 10"),
        ("bad_role", "line 15"),
        ("duplicate", "line 16"),
    ]
    assert problems[1]["message"] == "message 2: role 'bot' is not one of system, user, assistant"
    assert problems[2]["message"] == "same messages as line 2"
    kept = {r["prompt"] for r in read_jsonl(tmp_path / "train.jsonl")}
    kept |= {r["prompt"] for r in read_jsonl(tmp_path / "test.jsonl")}
    assert "Hello bot" not in kept
    assert len(kept) == 16


def test_drop_policy_over_threshold_raises_with_counts_and_writes_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataValidationError) as caught:
        prepare_dataset(fixture_settings(), tmp_path / "out")
    text = str(caught.value)
    assert "3 of 19 records are invalid (15.8%)" in text
    assert "bad_role=1, duplicate=1, invalid_json=1" in text
    assert "line 10: not valid JSON" in text
    assert not (tmp_path / "out").exists()


def test_fail_policy_raises_on_one_bad_record(tmp_path: Path) -> None:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    one_bad = tmp_path / "one_bad.jsonl"
    one_bad.write_text("\n".join([*lines[:8], lines[14]]) + "\n", encoding="utf-8")
    settings = DataSettings(
        source=FileSource(kind="file", path=one_bad), invalid=InvalidRecordPolicy(action="fail")
    )
    with pytest.raises(DataValidationError, match="1 of 9 records are invalid"):
        prepare_dataset(settings, tmp_path / "out")
    # The same file passes with "drop" only when the share is tolerated.
    drop = settings.model_copy(update={"invalid": InvalidRecordPolicy(max_invalid_fraction=0.2)})
    assert prepare_dataset(drop, tmp_path / "out").counts.valid == 8


def test_token_counter_is_used_for_limit_and_manifest(tmp_path: Path) -> None:
    def count_tokens(messages: list[dict[str, str]]) -> int:
        return 10 * len(messages)

    settings = synthetic_settings(
        max_tokens=30, invalid=InvalidRecordPolicy(max_invalid_fraction=1)
    )
    manifest = prepare_dataset(settings, tmp_path, count_tokens=count_tokens)
    assert manifest.token_lengths.unit == "tokens"
    assert manifest.token_lengths.max <= 30
    assert manifest.counts.by_kind.get("too_long", 0) == manifest.counts.invalid > 0


def test_too_few_valid_records_is_an_error(tmp_path: Path) -> None:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    one = tmp_path / "one.jsonl"
    one.write_text(lines[0] + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="only 1 valid record"):
        prepare_dataset(DataSettings(source=FileSource(kind="file", path=one)), tmp_path / "out")


def test_rerun_replaces_an_older_dataset(tmp_path: Path) -> None:
    prepare_dataset(synthetic_settings(), tmp_path)
    newer = prepare_dataset(synthetic_settings(seed=2), tmp_path)
    assert load_manifest(tmp_path) == newer
    assert verify_dataset(tmp_path) == newer


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    prepare_dataset(synthetic_settings(), tmp_path)
    with (tmp_path / "test.jsonl").open("a", encoding="utf-8") as stream:
        stream.write("{}\n")
    with pytest.raises(ValueError, match="does not match its manifest"):
        verify_dataset(tmp_path)


def test_a_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_dataset(tmp_path)


def test_prepare_into_store_is_content_addressed_and_leaves_no_staging(tmp_path: Path) -> None:
    store = tmp_path / "datasets"
    first = prepare_into_store(synthetic_settings(), store)
    assert (first.directory, first.reused) == (store / first.manifest.dataset_sha256[:16], False)
    assert first.train_file == first.directory / "train.jsonl"
    again = prepare_into_store(synthetic_settings(), store)
    assert (again.directory, again.reused) == (first.directory, True)
    assert [p.name for p in store.iterdir()] == [first.directory.name]
    assert verify_dataset(first.directory) == again.manifest


def test_prepare_into_store_leaves_nothing_when_the_data_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "datasets"
    with pytest.raises(DataValidationError):
        prepare_into_store(fixture_settings(action="fail"), store)
    assert not store.exists() or list(store.iterdir()) == []


def test_a_reused_folder_describes_the_latest_preparation(tmp_path: Path) -> None:
    """The same valid records from a file whose bad lines were since deleted: same dataset, and
    its problems.jsonl and manifest must not keep describing the old file."""
    source = tmp_path / "chats.jsonl"
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = DataSettings(
        source=FileSource(kind="file", path=source),
        test_fraction=0.25,
        invalid=InvalidRecordPolicy(max_invalid_fraction=0.5),
    )
    store = tmp_path / "datasets"
    before = prepare_into_store(settings, store)
    assert before.manifest.counts.invalid > 0
    problems = read_jsonl(before.directory / "problems.jsonl")
    bad = {int(p["ref"].split()[1]) for p in problems}
    kept = [text for number, text in enumerate(lines, start=1) if number not in bad]
    source.write_text("\n".join(kept) + "\n", encoding="utf-8")

    after = prepare_into_store(settings, store)
    assert (after.directory, after.reused) == (before.directory, True)
    assert (after.directory / "problems.jsonl").read_text() == ""
    assert load_manifest(after.directory) == after.manifest
    assert after.manifest.counts.invalid == 0
    assert verify_dataset(after.directory).dataset_sha256 == before.manifest.dataset_sha256
