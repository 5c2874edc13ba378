"""A new user's own data through the commands that read it, as they run them (`cli.main.main`):
`data inspect`, `prepare-data` and `run --dry-run`.

Each malformed input either gives a report (the bad records counted by kind, each named by its
line, the rest prepared) or one clear error: never a traceback, never a library's message on
its own. The token counter is the base model's real chat template (the small tiny Phi-3), which
is what once turned an empty conversation into transformers' "Cannot apply chat template to an
empty conversation".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Prefect configures logging when prefect.main is first imported: do it at collection, not
# inside a test whose captured stream closes when the test ends (as tests/test_cli_commands.py).
import prefect.main  # noqa: F401
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from profiles import small_profile_file

from cli.main import main
from finetune_phi.chat_data.synthetic import generate_conversations

GOOD = [json.dumps(record) for record in generate_conversations(40, seed=5)]
LIBRARY_WORDS = ("Traceback", "Cannot apply chat template", "pyarrow", "jinja", "transformers")


@pytest.fixture
def profile(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return small_profile_file(tmp_path, tiny_model_dir)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def source(path: Path) -> list[str]:
    return ["--set", f'data.source={{"kind": "file", "path": "{path}"}}']


def with_bad_line(path: Path, bad: str) -> Path:
    """The 40 good records, then `bad` as line 41."""
    path.write_text("\n".join([*GOOD, bad]) + "\n", encoding="utf-8")
    return path


def chat(messages: Any, **fields: Any) -> str:
    return json.dumps({"prompt": "Hi", "prompt_id": "bad-1", "messages": messages, **fields})


def no_library_words(text: str) -> bool:
    return not any(word in text for word in LIBRARY_WORDS)


# Each bad line: the kinds reported for line 41, and the first problem's message.
BAD_LINES = [
    pytest.param(
        chat([]),
        "no_assistant_turn 1, no_user_turn 1",
        "no message with role user (the messages array is empty)",
        id="empty_messages",
    ),
    pytest.param(
        json.dumps({"prompt": "Hi", "prompt_id": "bad-1"}),
        "missing_field 1",
        "field 'messages' is missing",
        id="missing_messages_key",
    ),
    pytest.param(
        chat([{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]),
        "not_ending_with_assistant 1, not_starting_with_user 1",
        "message 1: the conversation starts with an assistant turn, expected a user turn",
        id="roles_out_of_order",
    ),
    pytest.param(
        chat([{"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": 42}]),
        "empty_content 2",
        "message 1: content must be a string, got array",
        id="non_string_content",
    ),
    pytest.param(
        '{"prompt": "Hi", "messages": [}',
        "invalid_json 1",
        "not valid JSON: Expecting value at column 31",
        id="invalid_json",
    ),
    pytest.param(
        chat([{"role": "system", "content": "You are terse."}]),
        "no_assistant_turn 1, no_user_turn 1",
        "no message with role user",
        id="system_message_alone",
    ),
]


@pytest.mark.parametrize(("bad", "kinds", "first"), BAD_LINES)
def test_data_inspect_reports_a_bad_record_by_kind_and_prepares_the_rest(
    capsys: pytest.CaptureFixture[str],
    profile: Path,
    tmp_path: Path,
    bad: str,
    kinds: str,
    first: str,
) -> None:
    data = with_bad_line(tmp_path / "chats.jsonl", bad)
    code, out, err = cli(capsys, "data", "inspect", "--profile", str(profile), *source(data))
    assert code == 0, err
    assert err == ""
    assert "41 read, 40 valid, 1 invalid (drop)" in out
    lines = out.splitlines()
    problems = next(i for i, line in enumerate(lines) if line.startswith("  problems  "))
    assert lines[problems].startswith(f"  problems  {kinds} (one line each in ")
    assert lines[problems + 1].strip() == f"line 41: {first}"
    assert "histogram of conversation lengths (40 conversations" in out
    assert no_library_words(out)


def test_prepare_data_and_the_dry_run_report_the_same_file_the_same_way(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path
) -> None:
    """The input that once stopped `data inspect` with transformers' message."""
    data = with_bad_line(tmp_path / "chats.jsonl", chat([]))

    code, out, err = cli(capsys, "prepare-data", "--profile", str(profile), *source(data))
    assert code == 0, err
    assert "validated 41 records: 40 valid, 1 invalid (no_assistant_turn 1, no_user_turn 1)" in out

    code, out, err = cli(capsys, "run", "--dry-run", "--profile", str(profile), *source(data))
    assert code == 0, err
    assert "32 train / 8 test, 1 invalid left out" in out
    assert no_library_words(out + err)


def test_a_blank_line_is_not_a_record(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path
) -> None:
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join([*GOOD[:20], "", "   ", *GOOD[20:]]) + "\n", encoding="utf-8")
    code, out, err = cli(capsys, "data", "inspect", "--profile", str(profile), *source(data))
    assert code == 0, err
    assert "40 read, 40 valid, 0 invalid" in out and "  problems  none" in out


def test_a_reused_dataset_shows_this_files_problems_not_an_earlier_ones(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path
) -> None:
    """Deleting the bad line gives the same dataset; its folder must stop listing the line."""
    data = with_bad_line(tmp_path / "chats.jsonl", chat([]))
    cli(capsys, "data", "inspect", "--profile", str(profile), *source(data))
    data.write_text("\n".join(GOOD) + "\n", encoding="utf-8")

    code, out, err = cli(capsys, "data", "inspect", "--profile", str(profile), *source(data))
    assert code == 0, err
    folder = Path(out.split()[3])
    assert out.splitlines()[0].endswith("(re-used: same content as an earlier preparation)")
    assert "40 read, 40 valid, 0 invalid" in out and "  problems  none" in out
    assert (folder / "problems.jsonl").read_text() == ""
    assert json.loads((folder / "manifest.json").read_text())["counts"]["input"] == 40
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# Inputs that cannot give a dataset: exit status 2 and the reason, nothing else.
def refused_inputs(folder: Path) -> list[tuple[str, Path, str]]:
    (folder / "a-folder.jsonl").mkdir()
    (folder / "not-parquet.parquet").write_text("hello")
    (folder / "empty.jsonl").write_text("")
    return [
        (
            "parquet without a messages column",
            write_parquet(
                folder / "qa.parquet",
                [{"prompt": f"Q{i}", "prompt_id": f"{i}", "answer": "A"} for i in range(3)],
            ),
            "3 of 3 records are invalid (100.0%)",
        ),
        ("missing file", folder / "missing.jsonl", "data file not found: "),
        ("a folder", folder / "a-folder.jsonl", "is not a file (a folder?)"),
        ("not parquet", folder / "not-parquet.parquet", "cannot be read as Parquet"),
        ("empty file", folder / "empty.jsonl", "has no records (it is empty"),
    ]


@pytest.mark.parametrize("command", [["data", "inspect"], ["prepare-data"]])
def test_an_input_that_gives_no_dataset_is_one_clear_error(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path, command: list[str]
) -> None:
    for label, path, reason in refused_inputs(tmp_path):
        code, out, err = cli(capsys, *command, "--profile", str(profile), *source(path))
        assert code == 2, (label, out, err)
        first = err.splitlines()[0]
        assert first.startswith("finetune-phi: ") and reason in first, (label, err)
        assert no_library_words(err), (label, err)
        if label != "parquet without a messages column":
            assert len(err.strip().splitlines()) == 1, (label, err)


def test_data_without_any_messages_field_gets_a_schema_hint(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path
) -> None:
    path = write_parquet(tmp_path / "qa.parquet", [{"question": "Q", "answer": "A"}] * 3)
    code, _, err = cli(capsys, "data", "inspect", "--profile", str(profile), *source(path))
    assert code == 2
    assert "problems by kind: missing_field=9" in err
    assert "row 0: field 'messages' is missing" in err
    assert err.rstrip().endswith(
        "no record has a 'messages' field: the data must be chat records in ultrachat_200k's "
        "schema: prompt, prompt_id, messages (a list of {role, content})"
    )


def test_data_inspect_refuses_system_messages_for_a_base_model_without_a_system_turn(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    # The tiny tokenizer with Phi-3-medium's template, which has no system turn.
    base = tmp_path / "no-system-turn"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if (message['role'] == 'user') %}"
        "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
        "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}"
        "{% endif %}{% endfor %}"
    )
    tokenizer.save_pretrained(base)
    plain = [r for r in generate_conversations(60, seed=5) if r["messages"][0]["role"] != "system"]
    system = {
        "prompt": "Hi",
        "prompt_id": "sys-1",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
    }
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*plain[:40], system]))

    for model, kinds in ((tiny_model_dir, None), (base, "system_message_unsupported 1")):
        profile = small_profile_file(tmp_path, model)
        code, out, err = cli(capsys, "data", "inspect", "--profile", str(profile), *source(data))
        assert code == 0, err
        if kinds is None:
            assert "41 read, 41 valid, 0 invalid" in out
            assert "its chat template has a system turn (system messages are kept)" in out
        else:
            assert "41 read, 40 valid, 1 invalid" in out
            assert f"  problems  {kinds} (one line each in " in out
            assert (
                f"line 41: message 1: a system message, but the chat template of {base} has no "
                "system turn"
            ) in out
            assert "its chat template has no system turn (records with a system message are " in out


def test_every_data_error_is_a_usage_error_the_cli_prints_without_traceback() -> None:
    from finetune_phi.chat_data import (
        ChatTemplateError,
        DataFileNotFoundError,
        DataSourceError,
        DataValidationError,
    )
    from finetune_phi.errors import UsageError

    for error in (DataValidationError, DataSourceError, DataFileNotFoundError, ChatTemplateError):
        assert issubclass(error, UsageError) and issubclass(error, ValueError)
    assert issubclass(DataFileNotFoundError, FileNotFoundError)


@pytest.mark.slow
def test_a_run_on_data_that_gives_no_dataset_ends_with_the_report_and_no_traceback(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The flow's prepare-dataset stage, through the installed command and Prefect's logging."""
    import subprocess
    import sys

    path = write_parquet(tmp_path / "qa.parquet", [{"question": "Q", "answer": "A"}] * 3)
    profile = small_profile_file(tmp_path, tiny_model_dir)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "finetune-phi"), "run", "--profile", str(profile)]
        + source(path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "validated 3 records: 0 valid, 3 invalid (missing_field 9)" in output
    assert "finetune-phi: run failed: 3 of 3 records are invalid (100.0%)" in result.stderr
    assert "no record has a 'messages' field" in result.stderr
