"""The docs are checked like code: the configuration reference is generated (and must be what
the generator writes now), every command they show exists and parses, every path they name is
in the repository.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import make_parser
from cli.options import parse_assignments
from finetune_phi import docgen
from finetune_phi.settings import load_profile

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "docs" / name for name in ("architecture.md", "configuration.md", "runbook.md")]
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")


def shell_commands(path: Path) -> list[list[str]]:
    """Commands of the bash blocks (continuations joined, comments and VAR=value prefixes
    dropped) and inline code that starts with `finetune-phi `."""
    text = path.read_text()
    commands: list[list[str]] = []
    for language, body in FENCE.findall(text):
        if language not in ("bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words = words[1:]
            if words:
                commands.append(words)
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        if span.startswith("finetune-phi "):
            commands.append(shlex.split(span))
    return commands


def all_commands() -> list[tuple[str, list[str]]]:
    return [(path.name, words) for path in DOCS for words in shell_commands(path)]


def program(words: list[str]) -> str:
    return Path(words[0]).name


def test_configuration_reference_is_what_the_generator_writes() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == docgen.render(), "stale: run `python -m finetune_phi.docgen`"
    assert docgen.main(["--check"]) == 0


def test_configuration_reference_names_every_key_of_both_profiles() -> None:
    text = docgen.render()
    for key in (
        "training.learning_rate",
        "rollout.keep_previous",
        "backend.subscription_id",
        "data.source.split",
        "data.source.conversations",
        "smoke.min_accuracy",
        "training_run.save_steps",
    ):
        assert f"| `{key}` |" in text, key
    assert "## `backend` (kind: azure)" in text and "## `data.source` (kind: file)" in text


def test_docs_show_the_commands_they_talk_about() -> None:
    shown = {" ".join(words[:3]) for _, words in all_commands() if program(words) == "finetune-phi"}
    for command in (
        "finetune-phi endpoint rollback",
        "finetune-phi endpoint keys",
        "finetune-phi run --profile",
        "finetune-phi azure preflight",
        "finetune-phi models",
    ):
        assert any(s.startswith(command) for s in shown), command


@pytest.mark.parametrize(
    ("doc", "words"),
    [c for c in all_commands() if program(c[1]) == "finetune-phi"],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_every_documented_finetune_phi_command_parses(doc: str, words: list[str]) -> None:
    try:
        args = make_parser().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{' '.join(words)}` does not parse (exit {exc.code})")
    if getattr(args, "set", None):  # the keys it sets are keys of the profile
        load_profile(args.profile, environ={}, overrides=parse_assignments(args.set))


def test_documented_make_targets_and_python_modules_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    for doc, words in all_commands():
        if program(words) == "make":
            assert words[1] in targets, f"{doc}: make {words[1]}"
        if program(words) in ("python", "python3") and words[1] == "-m":
            assert importlib.util.find_spec(words[2]) is not None, f"{doc}: {words[2]}"


@pytest.mark.slow
def test_documented_prefect_commands_exist() -> None:
    """`prefect <command...> --help` for each documented command, with its options."""
    prefect = Path(sys.executable).parent / "prefect"
    seen: dict[tuple[str, ...], set[str]] = {}
    for _, words in all_commands():
        if program(words) != "prefect":
            continue
        path = []
        for word in words[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            path.append(word)
        options = {w.split("=")[0] for w in words if w.startswith("--")}
        seen.setdefault(tuple(path), set()).update(options)
    assert seen, "the runbook shows prefect commands"
    for path, options in seen.items():
        result = subprocess.run(
            [str(prefect), *path, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PATH": ""},
        )
        assert result.returncode == 0, f"prefect {' '.join(path)}: {result.stderr[-500:]}"
        for option in options:
            assert option in result.stdout, f"prefect {' '.join(path)} has no {option}"


def test_paths_named_in_the_docs_exist() -> None:
    for doc in DOCS:
        for span in INLINE.findall(FENCE.sub("", doc.read_text())):
            for token in span.replace(",", " ").split():
                if re.fullmatch(r"[a-z_]+(/[A-Za-z0-9_.*-]+)+/?", token) and not token.startswith(
                    ("state/", "docs/configuration")
                ):
                    matches = list(REPO.glob(token.rstrip("/")))
                    assert matches, f"{doc.name} names {token}, which does not exist"


def test_architecture_has_the_flow_and_both_backends_as_mermaid() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    diagrams = [body for language, body in FENCE.findall(text) if language == "mermaid"]
    assert len(diagrams) >= 2
    joined = "\n".join(diagrams)
    for stage in (
        "prepare-dataset",
        "plan-run",
        "train-model",
        "register-model",
        "quality-gate",
        "blue-green-rollout",
        "publish-report",
    ):
        assert stage in joined, stage
    assert "LocalWorkspace" in joined and "AzureWorkspace" in joined
