"""The `finetune-phi` command: what a user types, what they see, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.main import main
from cli.options import parse_assignments
from finetune_phi.settings import ConfigError


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_set_values_are_typed_like_environment_overrides() -> None:
    assert parse_assignments(
        [
            "training.learning_rate=1e-4",
            "training.eval_strategy=no",
            "training.seed=3",
            "model.base=microsoft/Phi-3.5-mini-instruct",
            "training.packing=true",
        ]
    ) == {
        "training": {"learning_rate": 1e-4, "eval_strategy": "no", "seed": 3, "packing": True},
        "model": {"base": "microsoft/Phi-3.5-mini-instruct"},
    }


@pytest.mark.parametrize("item", ["training.seed", "=3", "a..b=1"])
def test_malformed_set_is_a_config_error(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_assignments([item])


def test_config_show_prints_the_merged_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "config", "show", "--profile", "local", "--set", "training.num_train_epochs=2"
    )
    shown = yaml.safe_load(out)

    assert code == 0
    assert shown["name"] == "local"
    assert shown["training"]["num_train_epochs"] == 2.0
    assert Path(shown["state_dir"]).is_absolute()


def test_config_validate_names_a_bad_key_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "config", "validate", "--set", "training.bogus_rate=1")

    assert code == 2 and out == ""
    assert "training.bogus_rate: unknown key" in err


def test_config_validate_accepts_both_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("local", "azure"):
        code, out, _ = run(capsys, "config", "validate", "--profile", name)
        assert (code, out.strip()) == (0, f"profile {name}: valid")


def test_config_schema_is_json_schema_naming_the_sections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "config", "schema")
    schema = json.loads(out)

    assert code == 0
    assert {"backend", "model", "data", "training", "endpoint"} <= set(schema["properties"])


def test_unknown_profile_lists_the_available_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "config", "show", "--profile", "nope")
    assert code == 2
    assert "profile 'nope' not found" in err and "azure, local" in err


def test_generate_data_writes_ultrachat_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "chats.jsonl"
    code, out, _ = run(capsys, "generate-data", str(output), "-n", "40", "--seed", "1")
    records = [json.loads(line) for line in output.read_text().splitlines()]

    assert code == 0 and "40 conversations" in out
    assert len(records) == 40
    assert all(set(r) == {"prompt", "prompt_id", "messages"} for r in records)


def test_prepare_data_rejects_a_missing_file_cleanly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jsonl"
    code, _, err = run(
        capsys,
        "prepare-data",
        "--output",
        str(tmp_path / "out"),
        "--set",
        f'data.source={{"kind": "file", "path": "{missing}"}}',
    )
    assert code == 2
    assert str(missing) in err


def test_help_is_reachable_from_the_installed_entry_point() -> None:
    script = Path(sys.executable).parent / "finetune-phi"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)

    assert result.returncode == 0
    for command in ("demo", "config", "build-tiny-model", "generate-data", "prepare-data"):
        assert command in result.stdout
