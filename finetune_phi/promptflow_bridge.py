"""The boundary to Prompt flow: run the chat flow (`promptflow_app/`) from the core venv.

promptflow cannot be imported here: it conflicts with current Prefect and lives in its own venv,
`.venv-promptflow` (see promptflow_app/README.md). So this module never imports it; it starts
`promptflow_app/run_flow.py` with that venv's interpreter and talks JSON over stdin/stdout:

- `run_chat_flow(url, key, questions)` runs the flow for real, once per question, and returns
  the answers with their latency (the flow's python tool calls the online endpoint);
- `smoke_test(url, key, probes)` asks fact questions and checks the answers
  (`answer_matches`): what the rollout runs against a new deployment directly
  (`deployment=`, sent as the `azureml-model-deployment` header), then through the endpoint;
- `ChatSession` keeps one runner alive for a conversation (`finetune-phi chat`), so each turn
  costs the endpoint's latency, not promptflow's ~2 s start-up.

The endpoint key travels in the child's environment (`FINETUNE_PHI_ENDPOINT_KEY`), never on a
command line (`ps` shows those) nor in a file; it is masked out of every error this module
raises or returns. The smoke test decodes greedily (`do_sample: false`): the same model must
give the same verdict every time, and a sampled unlucky token must never roll a rollout back.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_phi.chat_data.synthetic import FactProbe, answer_matches
from finetune_phi.errors import FinetunePhiError

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOW_DIR = REPO_ROOT / "promptflow_app"
RUNNER = FLOW_DIR / "run_flow.py"
SERVER = FLOW_DIR / "serve.py"
VENV_DIR = REPO_ROOT / ".venv-promptflow"
# Where promptflow's interpreter is, when not in the default venv (e.g. a venv built elsewhere).
PYTHON_ENV = "FINETUNE_PHI_PROMPTFLOW_PYTHON"
KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"  # what promptflow_app/pf_runtime.py reads
URL_ENV = "FINETUNE_PHI_ENDPOINT_URL"
STDERR_TAIL_CHARS = 3000
# Greedy and short: a smoke test checks facts, it is no place for creativity or long answers.
SMOKE_PARAMS: Mapping[str, Any] = {"do_sample": False, "max_new_tokens": 64}


class PromptflowError(FinetunePhiError, RuntimeError):
    """The flow could not run at all (no promptflow venv, a bad job, a crash, a timeout). A
    question the endpoint failed to answer is not this: it is a `FlowAnswer` with an error."""


@dataclass(frozen=True)
class FlowAnswer:
    """One question asked through the flow: its answer, or why there is none."""

    question: str
    answer: str
    latency_ms: float  # the flow run, endpoint call included, as the runner measured it
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SmokeAnswer:
    """A fact probe's answer and whether it is correct (contains every expected keyword)."""

    probe: FactProbe
    answer: str
    latency_ms: float
    correct: bool
    error: str | None = None

    @property
    def question(self) -> str:
        return self.probe.question


@dataclass(frozen=True)
class SmokeResult:
    """The smoke test's verdict: `passed` only if every probe was answered correctly."""

    target: str  # "deployment 'green' of http://..." or "endpoint http://..."
    answers: tuple[SmokeAnswer, ...] = ()
    error: str | None = None  # the flow could not run at all (then there are no answers)
    seconds: float = 0.0  # wall time, promptflow's start-up included

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.answers) and all(a.correct for a in self.answers)

    @property
    def correct(self) -> int:
        return sum(answer.correct for answer in self.answers)

    @property
    def summary(self) -> str:
        """One line for logs and the rollout's events, then one line per probe."""
        if self.error is not None:
            return f"smoke test of {self.target}: FAILED, the flow did not run: {self.error}"
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"smoke test of {self.target}: {verdict}, {self.correct}/{len(self.answers)} "
            f"correct ({self.seconds:.1f} s)"
        ]
        for answer in self.answers:
            mark = "ok " if answer.correct else "BAD"
            said = answer.answer if answer.error is None else f"error: {answer.error}"
            lines.append(
                f"  {mark} {answer.question!r} -> {_clip(said)!r} ({answer.latency_ms:.0f} ms)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary


def promptflow_python() -> Path:
    """The interpreter of promptflow's venv; PromptflowError saying how to make it if missing."""
    override = os.environ.get(PYTHON_ENV)
    python = Path(override) if override else VENV_DIR / "bin" / "python"
    if not python.is_file() or not os.access(python, os.X_OK):
        where = f"${PYTHON_ENV}={override}" if override else str(VENV_DIR)
        raise PromptflowError(
            f"promptflow's venv is missing ({where} has no python): run `make install`, which "
            "builds .venv-promptflow from promptflow_app/requirements.txt"
        )
    return python


def child_environment(key: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a promptflow child: ours, minus what would make it load the core
    venv's packages, plus the key."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    }
    env.update(extra or {})
    env[KEY_ENV] = key
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _mask(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(text: str, key: str) -> str:
    return _mask(text, key)[-STDERR_TAIL_CHARS:].strip()


def _job(
    endpoint_url: str,
    questions: Sequence[str],
    deployment: str | None,
    chat_history: Sequence[Mapping[str, Any]] | None,
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if isinstance(questions, str) or not questions:
        raise ValueError("questions: expected a non-empty list of strings")
    job: dict[str, Any] = {"endpoint_url": endpoint_url, "questions": list(questions)}
    if deployment:
        job["deployment"] = deployment
    if chat_history:
        job["chat_history"] = list(chat_history)
    if params:
        job["params"] = dict(params)
    return job


def _answers(rows: Any, key: str) -> list[FlowAnswer]:
    if not isinstance(rows, list):
        raise PromptflowError(f"the flow runner answered {str(rows)[:200]!r}, not a list")
    return [
        FlowAnswer(
            question=str(row["question"]),
            answer=str(row.get("answer") or ""),
            latency_ms=float(row.get("latency_ms") or 0.0),
            error=_mask(str(row["error"]), key) if row.get("error") else None,
        )
        for row in rows
    ]


def run_chat_flow(
    endpoint_url: str,
    key: str,
    questions: list[str],
    *,
    deployment: str | None = None,
    timeout: float = 300,
    chat_history: Sequence[Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[FlowAnswer]:
    """Run the Prompt flow for real, once per question, against the endpoint at `endpoint_url`.

    `deployment` targets one deployment directly (the `azureml-model-deployment` header);
    `chat_history` (promptflow's `[{"inputs": {"question"}, "outputs": {"answer"}}]`) is given
    to every question; `params` overrides the flow's generation inputs (`temperature`,
    `max_new_tokens`, `do_sample`; the tutorial's by default). A question the endpoint fails
    is a FlowAnswer with `error`; PromptflowError means the flow itself could not run.
    """
    job = _job(endpoint_url, questions, deployment, chat_history, params)
    command = [str(promptflow_python()), str(RUNNER)]
    try:
        done = subprocess.run(
            command,
            input=json.dumps(job),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env=child_environment(key),
            cwd=FLOW_DIR,
        )
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr or ""
        stderr = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        raise PromptflowError(
            f"the flow did not finish {len(questions)} question(s) within {timeout:.0f} s; "
            f"its last output:\n{_tail(stderr, key)}"
        ) from None
    if done.returncode != 0:
        raise PromptflowError(
            f"the flow runner exited with status {done.returncode}:\n{_tail(done.stderr, key)}"
        )
    try:
        rows = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise PromptflowError(
            f"the flow runner wrote no JSON result; stdout {_mask(done.stdout, key)[:300]!r}; "
            f"stderr:\n{_tail(done.stderr, key)}"
        ) from None
    return _answers(rows, key)


def smoke_test(
    endpoint_url: str,
    key: str,
    probes: list[FactProbe],
    *,
    deployment: str | None = None,
    timeout: float = 300,
) -> SmokeResult:
    """Ask `probes` through the Prompt flow and check each answer with `answer_matches`.

    Never raises for a bad model or an unreachable endpoint: the result's `passed` is False
    and its `summary` says why (the rollout rolls back on it). Greedy decoding (SMOKE_PARAMS).
    """
    target = (
        f"deployment {deployment!r} of {endpoint_url}" if deployment else f"endpoint {endpoint_url}"
    )
    if not probes:
        return SmokeResult(target, error="no probes to ask")
    started = time.monotonic()
    try:
        flow_answers = run_chat_flow(
            endpoint_url,
            key,
            [probe.question for probe in probes],
            deployment=deployment,
            timeout=timeout,
            params=SMOKE_PARAMS,
        )
    except PromptflowError as exc:
        return SmokeResult(target, error=str(exc), seconds=time.monotonic() - started)
    answers = tuple(
        SmokeAnswer(
            probe=probe,
            answer=flow.answer,
            latency_ms=flow.latency_ms,
            correct=flow.ok and answer_matches(probe, flow.answer),
            error=flow.error,
        )
        for probe, flow in zip(probes, flow_answers, strict=True)
    )
    return SmokeResult(target, answers, seconds=time.monotonic() - started)


@dataclass
class ChatSession:
    """A conversation through the Prompt flow, with history; one runner process for all turns.

    `ask(question)` sends the question with the turns so far (promptflow's chat-history form,
    which the flow sends to the endpoint as chat messages) and records the new turn when it
    was answered; `reset()` forgets them. Close it (or use `with`) to stop the runner.
    """

    endpoint_url: str
    key: str
    deployment: str | None = None
    params: Mapping[str, Any] | None = None
    timeout: float = 300
    history: list[dict[str, Any]] = field(default_factory=list)
    _process: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    # The runner's stderr goes to a file, not a pipe: nobody reads it turn by turn, and a full
    # pipe would block the runner. Its tail explains a runner that died.
    _stderr: Any = field(default=None, init=False, repr=False)

    def __enter__(self) -> ChatSession:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        python = promptflow_python()
        if self._stderr is None:
            # Closed in close(); a `with` cannot span the session's turns.
            self._stderr = tempfile.TemporaryFile(  # noqa: SIM115
                mode="w+", encoding="utf-8", errors="replace"
            )
        self._process = subprocess.Popen(
            [str(python), str(RUNNER), "--lines"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=child_environment(self.key),
            cwd=FLOW_DIR,
        )

    def ask(self, question: str) -> FlowAnswer:
        """One turn; the answer (or its error). History grows only on an answered turn."""
        self.start()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        job = _job(self.endpoint_url, [question], self.deployment, self.history, self.params)
        try:
            process.stdin.write(json.dumps(job) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        line = _readline(process, self.timeout)
        if line is None:
            raise self._died()
        result = json.loads(line)
        if isinstance(result, dict):  # the runner refused the job
            raise PromptflowError(_mask(str(result.get("error")), self.key))
        (answer,) = _answers(result, self.key)
        if answer.ok:
            self.history.append(
                {"inputs": {"question": question}, "outputs": {"answer": answer.answer}}
            )
        return answer

    def reset(self) -> None:
        self.history.clear()

    def close(self) -> None:
        process, self._process = self._process, None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # the runner ends when its stdin does
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def _died(self) -> PromptflowError:
        process = self._process
        stderr = ""
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=5)
        if self._stderr is not None:
            self._stderr.flush()
            self._stderr.seek(0)
            stderr = self._stderr.read()
        self._process = None
        return PromptflowError(
            f"the flow runner stopped or did not answer within {self.timeout:.0f} s:\n"
            f"{_tail(stderr, self.key)}"
        )


def _readline(process: subprocess.Popen[str], timeout: float) -> str | None:
    """The runner's next line, or None if it ended or stayed silent for `timeout` seconds
    (a thread, because a pipe's readline cannot time out portably)."""
    stdout = process.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive() or not result or not result[0]:
        return None
    return result[0]


@dataclass
class ChatServer:
    """promptflow's serving app with its chat page (`promptflow_app/serve.py`), running."""

    url: str  # the chat page
    process: subprocess.Popen[bytes]
    log_file: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, key: str = "") -> str:
        try:
            return _tail(self.log_file.read_text(encoding="utf-8", errors="replace"), key)
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (the server then removes its temporary folders), SIGKILL after `grace`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_chat_server(
    endpoint_url: str,
    key: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    deployment: str | None = None,
    params: Mapping[str, Any] | None = None,
    log_file: Path | None = None,
    ready_timeout: float = 120.0,
) -> ChatServer:
    """Start the browser chat (the flow behind promptflow's own chat page) and wait until it
    answers /health. `deployment` and `params` fix those flow inputs for every chat turn (the
    page sends only the question and the history). Stop it with `ChatServer.stop()`."""
    import urllib.error
    import urllib.request

    python = promptflow_python()
    command = [str(python), str(SERVER), "--host", host, "--port", str(port)]
    for name, value in {**(params or {}), "deployment": deployment or ""}.items():
        command += ["--set", f"{name}={json.dumps(value)}"]
    if log_file is None:
        handle, name = tempfile.mkstemp(prefix="finetune-phi-chat-", suffix=".log")
        os.close(handle)
        log_file = Path(name)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_environment(key, {URL_ENV: endpoint_url}),
            cwd=FLOW_DIR,
        )
    server = ChatServer(f"http://{host}:{port}/", process, log_file)
    # Loopback, so no proxy: urllib would otherwise honour $http_proxy for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PromptflowError(
                f"the chat server exited with status {process.returncode}:\n{server.log_tail(key)}"
            )
        try:
            with opener.open(f"http://{host}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    server.stop()
    raise PromptflowError(
        f"the chat server did not answer /health within {ready_timeout:.0f} s:\n"
        f"{server.log_tail(key)}"
    )


__all__ = [
    "ChatServer",
    "ChatSession",
    "FlowAnswer",
    "PromptflowError",
    "SmokeAnswer",
    "SmokeResult",
    "promptflow_python",
    "run_chat_flow",
    "smoke_test",
    "start_chat_server",
]
