"""The flow's definition and the core-venv side of the boundary, without running promptflow.

Fast: YAML and Python source are read as text/AST (the core venv has no promptflow to import).
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
import yaml

from cli.chat import add_chat_parser, generation_params, main
from finetune_phi import promptflow_bridge
from finetune_phi.chat_data.synthetic import fact_probes
from finetune_phi.promptflow_bridge import (
    PromptflowError,
    SmokeAnswer,
    SmokeResult,
    promptflow_python,
    smoke_test,
)

FLOW_DIR = Path(__file__).resolve().parents[2] / "promptflow_app"
REFERENCE = re.compile(r"^\$\{(\w+)\.(\w+)\}$")


@pytest.fixture(scope="module")
def flow() -> dict:
    return yaml.safe_load((FLOW_DIR / "flow.dag.yaml").read_text())


def tool_function(path: Path) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    tools = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "tool" for d in node.decorator_list)
    ]
    assert len(tools) == 1, f"{path.name}: expected one @tool function"
    return tools[0]


def test_it_is_a_chat_flow(flow: dict) -> None:
    inputs, outputs = flow["inputs"], flow["outputs"]
    assert inputs["question"]["type"] == "string" and inputs["question"]["is_chat_input"]
    assert inputs["chat_history"]["type"] == "list" and inputs["chat_history"]["is_chat_history"]
    assert outputs["answer"]["type"] == "string" and outputs["answer"]["is_chat_output"]
    assert [name for name, spec in inputs.items() if spec.get("is_chat_input")] == ["question"]
    assert inputs["deployment"]["default"] == ""  # no header unless asked for


def test_every_reference_resolves(flow: dict) -> None:
    nodes = {node["name"]: node for node in flow["nodes"]}
    for node in nodes.values():
        source = FLOW_DIR / node["source"]["path"]
        assert node["type"] == "python" and source.is_file()
        params = {arg.arg for arg in tool_function(source).args.args}
        for name, value in node["inputs"].items():
            assert name in params, f"node {node['name']}: the tool has no parameter {name!r}"
            match = REFERENCE.match(str(value))
            if match and match.group(1) == "inputs":
                assert match.group(2) in flow["inputs"], f"{value} is not a flow input"
            elif match:
                assert match.group(1) in nodes, f"{value}: no such node"
    for output in flow["outputs"].values():
        match = REFERENCE.match(output["reference"])
        assert match and match.group(1) in nodes and match.group(2) == "output"


def test_the_tool_takes_a_connection_and_no_secrets_live_in_the_folder(flow: dict) -> None:
    (node,) = flow["nodes"]
    assert node["inputs"]["connection"] == "finetune_phi_endpoint"  # by name, supplied at run
    source = (FLOW_DIR / node["source"]["path"]).read_text()
    tool = tool_function(FLOW_DIR / node["source"]["path"])
    connection = next(arg for arg in tool.args.args if arg.arg == "connection")
    assert ast.unparse(connection.annotation) == "CustomConnection"  # type: ignore[arg-type]
    # promptflow reads annotations at run time: postponed (string) ones pass the name instead.
    tree = ast.parse(source)
    assert not any(
        isinstance(node, ast.ImportFrom) and node.module == "__future__" for node in tree.body
    )
    for path in FLOW_DIR.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".json", ".txt"}:
            text = path.read_text()
            assert "AZURE_ML_API_KEY" not in text and "config.py" not in path.name
            assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)[\w.-]+\.\w+/", text), (
                f"{path.name} names a remote URL"
            )


def test_promptflow_is_pinned_to_its_working_line() -> None:
    requirements = (FLOW_DIR / "requirements.txt").read_text()
    assert "promptflow>=1.18.2,<1.19" in requirements


def test_a_missing_promptflow_venv_says_how_to_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(promptflow_bridge.PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(PromptflowError, match="make install"):
        promptflow_python()
    # The smoke test turns it into a failed verdict the rollout can act on, not a crash.
    result = smoke_test("http://127.0.0.1:9/score", "k-123", fact_probes()[:1])
    assert not result.passed and "make install" in result.summary


def test_smoke_result_summary_reads_well() -> None:
    probe = fact_probes()[0]
    good = SmokeAnswer(probe, "Bill Gates and Paul Allen.", 812.0, True)
    bad = SmokeAnswer(probe, "", 15.0, False, error="the endpoint answered HTTP 503")
    passed = SmokeResult("endpoint http://x/score", (good,), seconds=3.2)
    failed = SmokeResult("deployment 'green' of http://x/score", (good, bad))
    assert passed.passed and passed.correct == 1
    assert passed.summary.splitlines()[0] == (
        "smoke test of endpoint http://x/score: passed, 1/1 correct (3.2 s)"
    )
    assert not failed.passed and "FAILED, 1/2 correct" in failed.summary
    assert "error: the endpoint answered HTTP 503" in failed.summary
    assert not SmokeResult("endpoint x").passed  # no answers is no pass
    assert str(passed) == passed.summary


def test_chat_parser() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    add_chat_parser(commands, lambda sub: sub, lambda args: 0)
    args = parser.parse_args(["chat", "--browser", "--port", "8123", "--greedy"])
    assert args.browser and args.port == 8123 and args.host == "127.0.0.1"
    assert generation_params(args) == {"do_sample": False}
    args = parser.parse_args(["chat", "--temperature", "0.2", "--max-new-tokens", "32"])
    assert not args.browser and args.port == 8080
    assert generation_params(args) == {"temperature": 0.2, "max_new_tokens": 32}


def test_chat_refuses_an_endpoint_with_nothing_deployed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--set", f"state_dir={tmp_path}", "--set", "endpoint.name=nothing-here"])
    assert status == 2
    assert "no deployments" in capsys.readouterr().err
