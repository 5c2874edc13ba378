"""Every command README.md and docs/*.md tell a person to type is real, checked without running
the heavy ones.

From each ```bash block (continuations joined), the lines that start (after `VAR=value`
prefixes) with `.venv/bin/finetune-phi`, `finetune-phi`, `.venv/bin/python -m` or `make `:

* `finetune-phi ...` parses with the real parser (`cli.main.make_parser()`), with every
  subcommand and option spelled exactly as it is defined (argparse would accept an
  abbreviation); `--set` keys and `FINETUNE_PHI__*` prefixes are keys of the profile;
* `python -m module` is importable, its `--help` exits 0 and lists each option shown;
* `make target` is a target of the Makefile;
* a command that needs an Azure subscription says so on its line (`# needs Azure`).

`a | b` in a documented line is read as alternatives (`endpoint stop | start | delete`) unless
`b` is a program (`... | jq .`), which is a pipe and dropped; redirections are dropped and
`<placeholders>` stand for one word.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from cli.main import make_parser
from cli.options import parse_assignments
from finetune_phi.settings import load_profile

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
ENV_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
STARTS = (".venv/bin/finetune-phi ", "finetune-phi ", ".venv/bin/python -m ", "make ")
AZURE_MARK = re.compile(r"\bneeds Azure\b", re.IGNORECASE)
SEPARATORS = {"&&", "||", ";", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>>", "&>"}
# After `|`: a program reading the output (a real pipe), not an alternative spelling.
PIPE_PROGRAMS = {"grep", "head", "tail", "jq", "less", "more", "tee", "sort", "wc", "cat", "yq"}


@dataclass(frozen=True)
class Documented:
    doc: str  # file:line
    line: str  # the line as written (continuations joined)
    words: tuple[str, ...]  # one command, environment prefix included
    comment: str

    @property
    def env(self) -> dict[str, str]:
        prefix = {}
        for word in self.words:
            if not ENV_PREFIX.fullmatch(word):
                break
            key, _, value = word.partition("=")
            prefix[key] = value
        return prefix

    @property
    def argv(self) -> list[str]:
        return list(self.words[len(self.env) :])

    @property
    def kind(self) -> str:
        argv = self.argv
        if Path(argv[0]).name == "finetune-phi":
            return "finetune-phi"
        if argv[0] == "make":
            return "make"
        return "python -m"

    def __str__(self) -> str:
        return f"{self.doc}: `{' '.join(self.words)}`"


def split_comment(line: str) -> tuple[str, str]:
    """The code and the comment of a shell line: `#` starting a word, outside quotes."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index], line[index + 1 :].strip()
    return line, ""


def split_line(line: str) -> tuple[list[list[str]], str]:
    """One documented line into its commands (alternatives expanded) and its comment."""
    code, comment = split_comment(line)
    lexer = shlex.shlex(PLACEHOLDER.sub("PLACEHOLDER", code), posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    tokens = list(lexer)
    # The first command of the line: up to `&&`, `;`, `&`; redirections dropped.
    command: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in SEPARATORS:
            break
        elif token in REDIRECTS:
            skip = True  # and its target
        else:
            command.append(token)
    segments: list[list[str]] = [[]]
    for token in command:
        if token == "|":
            segments.append([])
        else:
            segments[-1].append(token)
    first, *rest = segments
    commands = [first]
    for segment in rest:
        if not segment or segment[0] in PIPE_PROGRAMS or "/" in segment[0]:
            break  # a pipe into another program: what follows is not this command
        if segment[0].startswith("-"):  # `keys --show | --rotate secondary`
            options_at = next(i for i, w in enumerate(first) if w.startswith("-"))
            commands.append(first[:options_at] + segment)
        else:  # `endpoint stop | start | delete`
            commands.append(first[:-1] + segment)
    return [c for c in commands if c], comment


def documented_commands() -> list[Documented]:
    found: list[Documented] = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) not in ("bash", "sh", "shell"):
                continue
            first_line = text.count("\n", 0, match.start(2)) + 1
            lines = match.group(2).split("\n")
            number = 0
            while number < len(lines):
                start = number
                line = lines[number]
                while line.rstrip().endswith("\\") and number + 1 < len(lines):
                    number += 1
                    line = line.rstrip()[:-1] + " " + lines[number].strip()
                number += 1
                stripped = line.strip()
                bare = stripped
                while (prefix := ENV_PREFIX.match(bare)) and bare[prefix.end() :].startswith(" "):
                    bare = bare[prefix.end() :].lstrip()
                if not bare.startswith(STARTS):
                    continue
                commands, comment = split_line(stripped)
                where = f"{path.relative_to(REPO)}:{first_line + start}"
                found.extend(Documented(where, stripped, tuple(c), comment) for c in commands)
    return found


COMMANDS = documented_commands()


def of_kind(kind: str) -> list[Documented]:
    return [c for c in COMMANDS if c.kind == kind]


def ids(command: Documented) -> str:
    return f"{command.doc} {' '.join(command.argv)}"


# --------------------------------------------------------------------------- the extraction


def test_the_docs_show_commands_of_every_kind() -> None:
    """A broken extraction must not pass by finding nothing."""
    assert len(of_kind("finetune-phi")) >= 40
    shown = {" ".join(c.argv) for c in COMMANDS}
    assert {"make demo", "make test", "make clean-state"} <= shown
    assert "python" in {Path(c.argv[0]).name for c in of_kind("python -m")}
    assert any(c.argv[:3] == [".venv/bin/finetune-phi", "azure", "preflight"] for c in COMMANDS)
    docs = {c.doc.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/runbook.md", "docs/configuration.md", "docs/azure.md"} <= docs


def test_lines_are_split_into_commands_alternatives_and_comments() -> None:
    assert split_line("finetune-phi endpoint keys --show | --rotate secondary   # or") == (
        [
            ["finetune-phi", "endpoint", "keys", "--show"],
            ["finetune-phi", "endpoint", "keys", "--rotate", "secondary"],
        ],
        "or",
    )
    assert split_line("finetune-phi endpoint stop | start | delete")[0] == [
        ["finetune-phi", "endpoint", "stop"],
        ["finetune-phi", "endpoint", "start"],
        ["finetune-phi", "endpoint", "delete"],
    ]
    assert split_line("finetune-phi config schema | jq . > schema.json")[0] == [
        ["finetune-phi", "config", "schema"]
    ]
    assert split_line("finetune-phi run --profile azure --dry-run > plan.txt # needs Azure") == (
        [["finetune-phi", "run", "--profile", "azure", "--dry-run"]],
        "needs Azure",
    )
    assert split_line("finetune-phi models --version <N> &")[0] == [
        ["finetune-phi", "models", "--version", "PLACEHOLDER"]
    ]


# --------------------------------------------------------------------------- finetune-phi


def subparser_chain(argv: list[str]) -> list[argparse.ArgumentParser]:
    """The parser and the subparser of the documented subcommand (exact name)."""
    parser = make_parser()
    chain = [parser]
    positionals = [w for w in argv if not w.startswith("-")]
    sub_actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if sub_actions and positionals:
        choices = sub_actions[0].choices
        assert positionals[0] in choices, f"no subcommand {positionals[0]!r}"
        chain.append(choices[positionals[0]])
    return chain


@pytest.mark.parametrize("command", of_kind("finetune-phi"), ids=ids)
def test_documented_finetune_phi_command_exists(command: Documented) -> None:
    argv = command.argv[1:]
    chain = subparser_chain(argv)
    known = {
        option for parser in chain for action in parser._actions for option in action.option_strings
    }
    for word in argv:
        if word.startswith("-") and word != "-":
            option = word.split("=", 1)[0]
            assert option in known, f"{command}: no option {option} (options: {sorted(known)})"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = make_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{command} does not parse (exit {exc.code}): {errors.getvalue().strip()}")
    # The keys it sets, from options or the environment, are keys of the profile.
    environ = {k: v for k, v in command.env.items() if k.startswith("FINETUNE_PHI__")}
    if getattr(args, "set", None) or environ:
        load_profile(args.profile, environ=environ, overrides=parse_assignments(args.set))


def needs_azure(argv: list[str]) -> bool:
    """Needs a subscription and a credential: anything on the azure profile or the `azure`
    command, except what only reads files (config, the dry runs)."""
    args = make_parser().parse_args(argv)
    if args.command != "azure" and getattr(args, "profile", None) != "azure":
        return False
    if args.command == "config" or getattr(args, "dry_run", False):
        return False
    return not (args.command == "azure" and args.action == "dry-run")


def test_commands_that_need_azure_say_so() -> None:
    unmarked = [
        str(c)
        for c in of_kind("finetune-phi")
        if needs_azure(c.argv[1:]) and not AZURE_MARK.search(c.comment)
    ]
    assert not unmarked, "add a trailing `# needs Azure` to: " + "; ".join(unmarked)
    marked = [c for c in of_kind("finetune-phi") if AZURE_MARK.search(c.comment)]
    assert marked, "the docs show Azure commands, marked"
    wrongly = [str(c) for c in marked if not needs_azure(c.argv[1:])]
    assert not wrongly, "marked `needs Azure` but runs without it: " + "; ".join(wrongly)


# --------------------------------------------------------------------------- python -m, make


@cache
def module_help(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", of_kind("python -m"), ids=ids)
def test_documented_python_module_exists(command: Documented) -> None:
    argv = command.argv
    assert argv[0] == ".venv/bin/python", f"{command}: run through the project's venv"
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"
    result = module_help(module)  # each is an argparse main: --help is cheap (~1 s)
    assert result.returncode == 0, f"{command}: --help exited {result.returncode}: {result.stderr}"
    for word in argv[3:]:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert option in result.stdout, f"{command}: {module} --help lists no {option}"


@cache
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", text, re.MULTILINE))


@pytest.mark.parametrize("command", of_kind("make"), ids=ids)
def test_documented_make_target_exists(command: Documented) -> None:
    targets = [w for w in command.argv[1:] if not w.startswith("-") and "=" not in w]
    assert targets, f"{command}: names no target"
    for target in targets:
        assert target in make_targets(), f"{command}: the Makefile has no target {target!r}"
