"""The bad data catalogue: each kind of broken dataset input, through the real dataset stage.

Every case is a real file (JSONL or Parquet) read by `prepare_dataset`, the function the
Prefect task `prepare-dataset` calls, with the tiny model's tokenizer counting tokens as the
task does. A file with a few bad records is prepared anyway (policy "drop"): each bad record
must be reported with its line (JSONL, 1-based) or row (Parquet, 0-based) and a specific
message, and counted by kind in the manifest. A file that cannot give a dataset at all (empty,
wrong encoding, wrong schema) must fail with a message that says why and write nothing. In both
cases nothing is lost silently: records kept + records dropped == records read.

RELIABILITY.md lists the same table (kind -> message -> manifest count): with `-s`, each case
prints its row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_phi.chat_data import (
    DataSettings,
    DataValidationError,
    FileSource,
    InvalidRecordPolicy,
    prepare_dataset,
)
from finetune_phi.chat_data.validation import TokenCounter
from tasks.dataset import chat_token_counter

MAX_TOKENS = 128  # templated tokens of the tiny tokenizer; the good records need about 20
OUTPUTS = ("manifest.json", "problems.jsonl", "test.jsonl", "train.jsonl")


def record(index: int, **changes: Any) -> dict[str, Any]:
    """A valid ultrachat record; `changes` replace fields (Ellipsis deletes one)."""
    data: dict[str, Any] = {
        "prompt": f"What is fact number {index}?",
        "prompt_id": f"id-{index}",
        "messages": [
            {"role": "user", "content": f"What is fact number {index}?"},
            {"role": "assistant", "content": f"Fact number {index} is true."},
        ],
    }
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


def turns(*pairs: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in pairs]


def line(data: object) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


GOOD_LINES = [line(record(i)) for i in range(9)]
BAD_LINE = 5  # where `jsonl_with` puts the bad line: after 2 good lines, a blank one, 1 good


def jsonl_with(bad: bytes) -> bytes:
    """Nine good records, a blank line (line 3) and `bad` at line 5."""
    lines = [GOOD_LINES[0], GOOD_LINES[1], b"", GOOD_LINES[2], bad, *GOOD_LINES[3:]]
    return b"\n".join(lines) + b"\n"


def parquet_rows_with(bad: dict[str, Any], at: int = 4) -> list[dict[str, Any]]:
    rows = [record(i) for i in range(9)]
    rows.insert(at, bad)
    return rows


@dataclass(frozen=True)
class Case:
    """One kind of broken input and what the stage must make of it."""

    id: str
    kind: str  # the problem kind counted in the manifest, or the failure's kind
    content: bytes | list[dict[str, Any]]  # JSONL bytes, or Parquet rows
    message: str  # regex the problem's (or the error's) message must match
    ref: str | None = None  # where the problem is; None for a whole-file failure
    counts: dict[str, int] = field(default_factory=dict)  # by_kind, when not {kind: 1}
    fails: type[Exception] | None = None  # the whole file is refused with this error

    @property
    def suffix(self) -> str:
        return ".parquet" if isinstance(self.content, list) else ".jsonl"

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.id}{self.suffix}"
        if isinstance(self.content, list):
            pq.write_table(pa.Table.from_pylist(self.content), path)
        else:
            path.write_bytes(self.content)
        return path


def records_read(path: Path) -> int:
    """Records in the file, counted independently of the project's readers."""
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    lines = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
    return sum(1 for raw in lines if raw.strip())


LONG = "lorem ipsum dolor sit amet " * 120  # ~3200 characters: far over MAX_TOKENS

CASES = [
    # ---------------------------------------------------------------- one bad record, dropped
    Case(
        "not_json",
        "invalid_json",
        jsonl_with(b"this is not JSON"),
        r"^not valid JSON: Expecting value at column 1$",
        "line 5",
    ),
    Case(
        "truncated_line",  # a file cut off mid-write
        "invalid_json",
        jsonl_with(b'{"prompt": "cut", "messages": [{"role": "user", "con'),
        r"^not valid JSON: Unterminated string starting at column \d+$",
        "line 5",
    ),
    Case(
        "not_an_object",
        "not_an_object",
        jsonl_with(b'["user", "assistant"]'),
        r"^a record must be a JSON object, got array$",
        "line 5",
    ),
    Case(
        "missing_messages",
        "missing_field",
        jsonl_with(line(record(50, messages=...))),
        r"^field 'messages' is missing$",
        "line 5",
    ),
    Case(
        "messages_not_a_list",
        "messages_not_a_list",
        jsonl_with(line(record(51, messages="What is fact 51?"))),
        r"^field 'messages' must be an array, got string$",
        "line 5",
    ),
    Case(
        "unknown_role",
        "bad_role",
        jsonl_with(line(record(52, messages=turns(("user", "Hi"), ("bot", "Hello"))))),
        r"^message 2: role 'bot' is not one of system, user, assistant$",
        "line 5",
    ),
    Case(
        "empty_content",
        "empty_content",
        jsonl_with(line(record(53, messages=turns(("user", "  \n"), ("assistant", "Hello"))))),
        r"^message 1: content is empty$",
        "line 5",
    ),
    Case(
        "non_string_content",
        "empty_content",
        jsonl_with(line(record(54, messages=turns(("user", "Hi"), ("assistant", 42))))),
        r"^message 2: content must be a string, got int$",
        "line 5",
    ),
    Case(
        "no_assistant_turn",
        "no_assistant_turn",
        jsonl_with(line(record(55, messages=turns(("user", "Is anyone there?"))))),
        r"^no message with role assistant$",
        "line 5",
    ),
    Case(
        "repeated_roles",
        "consecutive_same_role",
        jsonl_with(
            line(record(56, messages=turns(("user", "Hi"), ("user", "Hi?"), ("assistant", "Yo"))))
        ),
        r"^messages 1 and 2: two user turns in a row$",
        "line 5",
    ),
    Case(
        "starts_with_assistant",
        "not_starting_with_user",
        jsonl_with(line(record(57, messages=turns(("assistant", "Hi"), ("user", "Hi"))))),
        r"^message 1: the conversation starts with an assistant turn, expected a user turn$",
        "line 5",
        # it also ends with the user's turn: both are said, of the same record
        counts={"not_ending_with_assistant": 1, "not_starting_with_user": 1},
    ),
    Case(
        "over_long",
        "too_long",
        jsonl_with(line(record(58, messages=turns(("user", LONG), ("assistant", "Yes."))))),
        rf"^conversation has \d+ tokens, more than max_tokens {MAX_TOKENS}$",
        "line 5",
    ),
    Case(
        "duplicate_record",
        "duplicate",
        jsonl_with(GOOD_LINES[0]),
        r"^same messages as line 1$",
        "line 5",
    ),
    Case(
        "duplicate_id",  # the id of line 2's prompt, reused for another prompt
        "duplicate_id",
        jsonl_with(line(record(59, prompt_id="id-1"))),
        r"^prompt_id 'id-1' is already used by line 2 for a different prompt$",
        "line 5",
    ),
    Case(
        "invalid_utf8",  # Latin-1 bytes in a UTF-8 file
        "invalid_encoding",
        jsonl_with(line(record(60)).replace(b"fact number 60", b"caf\xe9 number 60")),
        r"^not UTF-8 text \(invalid continuation byte at byte \d+ of the line\)$",
        "line 5",
    ),
    Case(
        "bom_mid_file",  # two files concatenated, the second saved with a BOM
        "invalid_encoding",
        jsonl_with(b"\xef\xbb\xbf" + line(record(61))),
        r"^a UTF-8 byte order mark \(BOM\) starts this line; only the first line of a file may "
        r"have one \(were files concatenated\?\)$",
        "line 5",
    ),
    Case(
        "parquet_null_content",
        "empty_content",
        parquet_rows_with(record(62, messages=turns(("user", "Hi"), ("assistant", None)))),
        r"^message 2: content must be a string, got null$",
        "row 4",
    ),
    # ---------------------------------------------------------------- the whole file refused
    Case(
        "empty_file",
        "no_records",
        b"",
        r"data file '.*empty_file\.jsonl' has no records \(it is empty or holds only blank "
        r"lines\)",
        fails=DataValidationError,
    ),
    Case(
        "only_blank_lines",
        "no_records",
        b"\n  \n\r\n",
        r"data file '.*only_blank_lines\.jsonl' has no records",
        fails=DataValidationError,
    ),
    Case(
        "utf16_file",  # what PowerShell's `>` writes
        "wrong_encoding",
        b"\n".join(GOOD_LINES).decode("utf-8").encode("utf-16"),
        r"data file '.*utf16_file\.jsonl' is UTF-16 text \(it starts with a UTF-16 byte order "
        r"mark\); JSONL must be UTF-8",
        fails=ValueError,
    ),
    Case(
        "wrong_schema_jsonl",  # an instruction dataset, not a chat one
        "missing_field",
        b"".join(
            line({"instruction": f"Say {i}", "input": "", "output": f"{i}"}) + b"\n"
            for i in range(6)
        ),
        r"6 of 6 records are invalid \(100\.0%\).*problems by kind: missing_field=18\n"
        r"first problems:\n  line 1: field 'prompt' is missing\n",
        counts={"missing_field": 18},
        fails=DataValidationError,
    ),
    Case(
        "wrong_schema_hub_parquet",  # a Hub-like dataset with other columns
        "missing_field",
        [{"question": f"Q{i}", "answer": f"A{i}", "source": "hub"} for i in range(5)],
        r"5 of 5 records are invalid \(100\.0%\).*missing_field=15.*row 0: field 'prompt' is "
        r"missing",
        counts={"missing_field": 15},
        fails=DataValidationError,
    ),
]


@pytest.fixture(scope="module")
def count_tokens(tiny_model_dir: Path) -> TokenCounter:
    """Tokens as the dataset task counts them: the tiny model's chat template, tokenized."""
    return chat_token_counter(str(tiny_model_dir))


def settings_for(path: Path) -> DataSettings:
    # "drop" with a tolerance that lets one bad record in ten through, as a user would set it
    # for a file known to hold a few bad records.
    return DataSettings(
        source=FileSource(kind="file", path=path),
        test_fraction=0.25,
        max_tokens=MAX_TOKENS,
        invalid=InvalidRecordPolicy(action="drop", max_invalid_fraction=0.2),
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_reported_precisely_and_nothing_is_lost(
    case: Case,
    tmp_path: Path,
    count_tokens: TokenCounter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = case.write(tmp_path)
    read = records_read(source)
    out = tmp_path / "out"

    if case.fails is not None:
        with pytest.raises(case.fails) as caught:
            prepare_dataset(settings_for(source), out, count_tokens=count_tokens)
        message = str(caught.value)
        assert re.search(case.message, message, re.DOTALL), message
        assert not out.exists()  # nothing half-written
        if isinstance(caught.value, DataValidationError):
            result = caught.value.result
            assert result.total == read
            assert len(result.valid) + len(result.invalid_refs) == read
            assert result.counts_by_kind() == case.counts
        with capsys.disabled():
            print(f"\n| {case.id} | refused | {message.splitlines()[0]} | - |")
        return

    manifest = prepare_dataset(settings_for(source), out, count_tokens=count_tokens)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    counts = manifest.counts
    problems = read_jsonl(out / "problems.jsonl")
    dropped = {problem["ref"] for problem in problems}
    kept = len(read_jsonl(out / "train.jsonl")) + len(read_jsonl(out / "test.jsonl"))

    # Nothing lost silently: every record read is either kept or dropped with a problem.
    assert counts.input == read
    assert kept + len(dropped) == read
    assert (counts.valid, counts.invalid) == (kept, len(dropped)) == (read - 1, 1)
    assert dropped == {case.ref}
    # Counted by kind, with a message that names the problem precisely.
    assert counts.by_kind == (case.counts or {case.kind: 1})
    (problem,) = [p for p in problems if p["kind"] == case.kind]
    assert problem["ref"] == case.ref
    assert re.search(case.message, problem["message"]), problem["message"]
    with capsys.disabled():
        print(f"\n| {case.id} | {case.ref} | {problem['message']} | {counts.by_kind} |")


def test_a_utf8_bom_at_the_start_of_the_file_is_not_a_problem(
    tmp_path: Path, count_tokens: TokenCounter
) -> None:
    """What Notepad and Excel write: the BOM is skipped, the first record is kept."""
    source = tmp_path / "bom.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + b"\n".join(GOOD_LINES) + b"\n")
    manifest = prepare_dataset(settings_for(source), tmp_path / "out", count_tokens=count_tokens)
    assert (manifest.counts.input, manifest.counts.valid, manifest.counts.invalid) == (9, 9, 0)
    kept = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out/test.jsonl")
    assert record(0) in kept


def test_several_kinds_in_one_file_are_all_counted(
    tmp_path: Path, count_tokens: TokenCounter
) -> None:
    """One file with every per-record problem of the table: each counted, none lost."""
    per_record = [case for case in CASES if case.fails is None and case.suffix == ".jsonl"]
    bad_lines = [case.content.split(b"\n")[BAD_LINE - 1] for case in per_record]  # type: ignore[union-attr]
    good = [line(record(100 + i)) for i in range(30)]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\n".join([*GOOD_LINES, *bad_lines, *good]) + b"\n")
    settings = settings_for(source).model_copy(
        update={"invalid": InvalidRecordPolicy(max_invalid_fraction=0.5)}
    )
    manifest = prepare_dataset(settings, tmp_path / "out", count_tokens=count_tokens)

    counts = manifest.counts
    assert counts.input == records_read(source) == 9 + len(bad_lines) + 30
    assert counts.invalid == len(bad_lines) and counts.valid == 39
    expected: dict[str, int] = {}
    for case in per_record:
        for kind, n in (case.counts or {case.kind: 1}).items():
            expected[kind] = expected.get(kind, 0) + n
    assert counts.by_kind == dict(sorted(expected.items()))
    problems = read_jsonl(tmp_path / "out" / "problems.jsonl")
    first_bad = len(GOOD_LINES) + 1
    assert {p["ref"] for p in problems} == {f"line {first_bad + i}" for i in range(len(bad_lines))}
