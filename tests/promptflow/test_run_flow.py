"""The flow run for real in promptflow's venv: what it sends, what it answers, what it never
leaks, and the smoke test's verdicts on a real endpoint serving a fine-tuned and an untrained
tiny Phi-3."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from pf_helpers import (
    TRAINED,
    UNTRAINED,
    LiveEndpoint,
    StandInEndpoint,
    TrainedModel,
    trained_probes,
)

from backends.local.endpoint.control import free_port
from finetune_phi.chat_data.synthetic import answer_matches, fact_probes
from finetune_phi.promptflow_bridge import (
    FLOW_DIR,
    KEY_ENV,
    RUNNER,
    SMOKE_PARAMS,
    PromptflowError,
    child_environment,
    run_chat_flow,
    smoke_test,
)

pytestmark = pytest.mark.slow

MICROSOFT = fact_probes()[0]
TUTORIAL_PARAMS = {
    "temperature": 0.7,
    "max_new_tokens": 128,
    "do_sample": True,
    "return_full_text": True,
}


def assert_no_outside_connections(guard_log: Path) -> None:
    attempts = guard_log.read_text()
    assert attempts == "", f"promptflow tried to reach beyond this machine:\n{attempts}"


def test_promptflow_runs_with_telemetry_and_tracing_off(pf_python: Path, network_guard: Path):
    """promptflow's own view, in the set-up every entry point uses (pf_runtime.prepare_home),
    and the network guard really refuses an outside lookup in that interpreter."""
    script = (
        "import pf_runtime, socket\n"
        "home = pf_runtime.prepare_home()\n"
        "from promptflow._sdk._telemetry.telemetry import is_telemetry_enabled\n"
        "from promptflow._sdk._tracing import is_trace_feature_disabled\n"
        "from promptflow._sdk._configuration import Configuration\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 443)\n"
        "    guarded = False\n"
        "except OSError:\n"
        "    guarded = True\n"
        "print(is_telemetry_enabled(), is_trace_feature_disabled(), guarded,\n"
        "      Configuration.get_instance().CONFIG_PATH.parent == home)\n"
    )
    done = subprocess.run(
        [str(pf_python), "-c", script],
        capture_output=True,
        text=True,
        cwd=FLOW_DIR,
        env=child_environment("unused"),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True"]
    assert "example.com" in network_guard.read_text()  # the guard saw and refused it


def test_the_tool_sends_the_tutorials_request(stand_in: StandInEndpoint, network_guard: Path):
    (answer,) = run_chat_flow(stand_in.url, stand_in.key, ["Who founded Microsoft?"])

    (request,) = stand_in.requests
    assert request["body"] == {"input_data": ["Who founded Microsoft?"], "params": TUTORIAL_PARAMS}
    assert request["headers"]["Authorization"] == f"Bearer {stand_in.key}"
    assert "azureml-model-deployment" not in {h.lower() for h in request["headers"]}
    # return_full_text echoes the question; the flow answers with the reply alone.
    assert answer.ok and answer.answer == "answer 1" and answer.latency_ms > 0
    assert_no_outside_connections(network_guard)


def test_deployment_header_history_and_params(stand_in: StandInEndpoint) -> None:
    history = [
        {"inputs": {"question": "Who founded Microsoft?"}, "outputs": {"answer": "Bill Gates."}}
    ]
    answers = run_chat_flow(
        stand_in.url,
        stand_in.key,
        ["And when?", "Where?"],
        deployment="green",
        chat_history=history,
        params={"do_sample": False, "max_new_tokens": 16},
    )

    assert [a.answer for a in answers] == ["answer 1", "answer 2"]
    first, second = stand_in.requests
    assert first["headers"]["azureml-model-deployment"] == "green"
    # With history: the chat-messages form, each turn with its role (see call_endpoint.py).
    assert first["body"] == {
        "input_data": {
            "messages": [
                {"role": "user", "content": "Who founded Microsoft?"},
                {"role": "assistant", "content": "Bill Gates."},
                {"role": "user", "content": "And when?"},
            ]
        },
        "params": {"temperature": 0.7, "max_new_tokens": 16, "do_sample": False},
    }
    assert second["body"]["input_data"]["messages"][-1] == {"role": "user", "content": "Where?"}


def test_failures_are_answers_with_errors_and_never_show_the_key(
    stand_in: StandInEndpoint,
) -> None:
    stand_in.status = 503
    (failed,) = run_chat_flow(stand_in.url, stand_in.key, ["Who founded Microsoft?"])
    assert not failed.ok and failed.answer == ""
    assert "HTTP 503" in failed.error and "told to fail" in failed.error
    stand_in.status = 200
    (refused,) = run_chat_flow(stand_in.url, "wrong-key-0b7d", ["Who founded Microsoft?"])
    assert "HTTP 401" in refused.error and "wrong-key-0b7d" not in refused.error
    # The flow cannot even start: the error carries the runner's stderr, without the key.
    with pytest.raises(PromptflowError) as raised:
        run_chat_flow("ftp://nowhere/score", stand_in.key, ["Who founded Microsoft?"])
    assert "endpoint_url" in str(raised.value) and stand_in.key not in str(raised.value)


def test_the_runner_takes_the_key_only_from_its_environment(pf_python: Path) -> None:
    job = json.dumps({"endpoint_url": "http://127.0.0.1:9/score", "questions": ["Hi?"]})
    env = {k: v for k, v in child_environment("x").items() if k != KEY_ENV}
    done = subprocess.run(
        [str(pf_python), str(RUNNER)], input=job, capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and KEY_ENV in done.stderr and done.stdout == ""


def test_flow_answers_from_a_deployment_directly_and_through_the_endpoint(
    live_endpoint: LiveEndpoint, network_guard: Path, trained_model: TrainedModel
) -> None:
    url, key = live_endpoint.url, live_endpoint.key
    question = [MICROSOFT.question]

    (direct,) = run_chat_flow(url, key, question, deployment=TRAINED, params=SMOKE_PARAMS)
    (through,) = run_chat_flow(url, key, question, params=SMOKE_PARAMS)
    (other,) = run_chat_flow(url, key, question, deployment=UNTRAINED, params=SMOKE_PARAMS)

    assert answer_matches(MICROSOFT, direct.answer), direct
    assert answer_matches(MICROSOFT, through.answer), through  # all traffic is on TRAINED
    assert other.ok and not answer_matches(MICROSOFT, other.answer)  # the header routes
    assert_no_outside_connections(network_guard)
    print(
        f"\n[promptflow tests] one flow run per question: {direct.latency_ms:.0f} ms direct, "
        f"{through.latency_ms:.0f} ms through the endpoint; fine-tune fixture "
        f"{trained_model.train_seconds:.1f} s (+ save: {trained_model.fixture_seconds:.1f} s)"
    )


def test_smoke_test_passes_on_the_fine_tuned_model_and_fails_on_an_untrained_one(
    live_endpoint: LiveEndpoint, network_guard: Path
) -> None:
    url, key = live_endpoint.url, live_endpoint.key
    probes = trained_probes()

    direct = smoke_test(url, key, probes, deployment=TRAINED)
    through = smoke_test(url, key, probes)
    untrained = smoke_test(url, key, probes, deployment=UNTRAINED)

    assert direct.passed, direct.summary
    assert through.passed, through.summary
    assert [a.question for a in direct.answers][0] == "Who founded Microsoft?"
    assert not untrained.passed and untrained.error is None  # a verdict, not a crash
    assert untrained.correct == 0 and "FAILED, 0/3 correct" in untrained.summary
    for result in (direct, through, untrained):
        assert key not in result.summary
        assert all(answer.latency_ms > 0 for answer in result.answers)
    print(f"\n{direct.summary}\n{untrained.summary.splitlines()[0]}")
    assert_no_outside_connections(network_guard)


def test_an_unreachable_endpoint_fails_the_smoke_test_without_crashing() -> None:
    url = f"http://127.0.0.1:{free_port()}/score"  # nothing listens there
    result = smoke_test(url, "k-unreachable-42", fact_probes()[:2])
    assert not result.passed and result.error is None
    assert all(not a.correct and a.error for a in result.answers)
    assert "k-unreachable-42" not in result.summary


def test_the_key_is_not_on_any_command_line(live_endpoint: LiveEndpoint) -> None:
    """While a flow runs, no process's argv holds the key (it travels in the environment)."""
    import threading

    import psutil

    key, seen, leaks = live_endpoint.key, set(), []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for process in psutil.process_iter(["pid", "cmdline"]):
                cmdline = process.info["cmdline"] or []
                seen.add(" ".join(cmdline[:2]))
                if any(key in part for part in cmdline):
                    leaks.append(cmdline)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        (answer,) = run_chat_flow(live_endpoint.url, key, [MICROSOFT.question])
    finally:
        done.set()
        watcher.join(timeout=10)
    assert answer.ok
    assert any(str(RUNNER) in line for line in seen)  # the watcher did see the runner
    assert leaks == []
