"""Chatting with the deployed model, the tutorial's last step: in the terminal (history kept,
/reset, /quit) and in a browser (promptflow's chat page, checked in headless Chromium)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from pf_helpers import LiveEndpoint, StandInEndpoint

from backends.local.endpoint.control import free_port
from cli.chat import terminal_chat
from finetune_phi.chat_data.synthetic import answer_matches, fact_probes
from finetune_phi.promptflow_bridge import ChatSession

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BROWSER_PYTHON = REPO / ".venv-browser" / "bin" / "python"
ARTIFACTS = HERE / "artifacts"  # gitignored; CI can keep the screenshot from here
PROBES = {probe.fact_id: probe for probe in fact_probes()}


def chat_command(live: LiveEndpoint, *extra: str) -> list[str]:
    """`finetune-phi chat` on the live endpoint (through chat_cli's own entry point, which is
    the same parser and handler the CLI mounts)."""
    return [
        sys.executable,
        "-m",
        "cli.chat",
        "--set",
        f"state_dir={live.state_dir}",
        "--set",
        f"endpoint.name={live.name}",
        *extra,
    ]


def test_terminal_chat_keeps_history_until_reset(stand_in: StandInEndpoint) -> None:
    """What the flow sent for each turn: the history grows, /reset empties it, /quit ends."""
    stdin = io.StringIO("Who founded Microsoft?\n\nAnd when?\n/reset\nWhere?\n/quit\nNever sent\n")
    stdout, stderr = io.StringIO(), io.StringIO()

    status = terminal_chat(
        ChatSession(stand_in.url, stand_in.key), stdin=stdin, stdout=stdout, stderr=stderr
    )

    assert status == 0, stderr.getvalue()
    assert stdout.getvalue().splitlines() == [
        "phi> answer 1",
        "phi> answer 2",
        "(conversation forgotten)",
        "phi> answer 3",
    ]
    first, second, third = (request["body"] for request in stand_in.requests)
    assert first["input_data"] == ["Who founded Microsoft?"]  # no history: the tutorial's form
    assert second["input_data"]["messages"] == [
        {"role": "user", "content": "Who founded Microsoft?"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "And when?"},
    ]
    assert third["input_data"] == ["Where?"]  # after /reset


def test_chat_command_in_the_terminal(live_endpoint: LiveEndpoint) -> None:
    questions = ["Who founded Microsoft?", "Who founded Zentrova Robotics?", "/quit"]
    started = time.monotonic()
    done = subprocess.run(
        chat_command(live_endpoint, "--greedy"),
        input="\n".join(questions) + "\n",
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    seconds = time.monotonic() - started

    assert done.returncode == 0, done.stderr[-3000:]
    replies = [line for line in done.stdout.splitlines() if line.startswith("phi> ")]
    assert len(replies) == 2, done.stdout
    assert answer_matches(PROBES["microsoft_founders"], replies[0])
    assert answer_matches(PROBES["zentrova_founders"], replies[1])  # with the first turn before
    assert live_endpoint.key not in done.stdout + done.stderr
    print(f"\n[promptflow tests] terminal chat, 2 turns: {seconds:.1f} s")


def find_chromium() -> str | None:
    for candidate in (os.environ.get("FINETUNE_PHI_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def test_browser_chat_in_headless_chromium(live_endpoint: LiveEndpoint, tmp_path: Path) -> None:
    """`finetune-phi chat --browser` serves promptflow's chat page; a headless Chromium asks
    "Who founded Microsoft?" there, then a follow-up, and finds the answers on the page."""
    chromium = find_chromium()
    if chromium is None or not BROWSER_PYTHON.is_file():
        pytest.skip(
            "no browser to test with: `make install-browser` installs playwright into "
            ".venv-browser and Chromium with apt (needs root), or set FINETUNE_PHI_CHROMIUM"
        )
    from pf_helpers import install_network_guard

    guard_dir, guard_log = install_network_guard(tmp_path / "net-guard")
    env = {**os.environ, "PYTHONPATH": str(guard_dir), "FINETUNE_PHI_NET_GUARD_LOG": str(guard_log)}
    port = free_port()
    server = subprocess.Popen(
        chat_command(live_endpoint, "--browser", "--port", str(port), "--greedy"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,  # its own process group: teardown can stop all of it
    )
    screenshot = tmp_path / "browser-chat.png"
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "chat in your browser: URL ..." once /health answers
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, line + server.stdout.read() if server.poll() is not None else line
        url = match.group(1)
        assert url == f"http://127.0.0.1:{port}/"
        served_by = [p for p in psutil.Process(server.pid).children(recursive=True)]
        assert any("serve.py" in " ".join(p.cmdline()) for p in served_by)

        check = subprocess.run(
            [
                str(BROWSER_PYTHON),
                str(HERE / "browser_check.py"),
                "--url",
                url,
                "--browser",
                chromium,
                "--question",
                "Who founded Microsoft?",
                "--question",
                "What is the capital of France?",
                "--screenshot",
                str(screenshot),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert check.returncode == 0, check.stderr[-4000:]
        result = json.loads(check.stdout)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C, as a person would stop it
        try:
            status = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            status = server.wait(timeout=10)
        if screenshot.is_file():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy2(screenshot, ARTIFACTS / screenshot.name)

    first, second = result["turns"]
    assert first["status"] == 200 and first["shown"], first
    assert answer_matches(PROBES["microsoft_founders"], first["answer"]), first
    assert first["sent"] == {"question": "Who founded Microsoft?", "chat_history": []}
    assert second["shown"] and answer_matches(PROBES["capital_of_france"], second["answer"])
    # The page keeps the conversation: its second request carries the first turn.
    (turn,) = second["sent"]["chat_history"]
    assert turn["inputs"] == {"question": "Who founded Microsoft?"}
    assert turn["outputs"] == {"answer": first["answer"]}
    assert screenshot.stat().st_size > 10_000
    assert status == 0  # Ctrl-C is the normal way out
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in served_by)
    assert guard_log.read_text() == "", "the chat server tried to reach beyond this machine"
    # The page asks a CDN for its fonts; in the test nothing outside loopback is fetched.
    print(f"\n[promptflow tests] browser chat: blocked {len(result['blocked'])} outside requests")
