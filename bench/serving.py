"""Benchmark serving throughput and latency: the local endpoint vs `mlflow models serve`.

    .venv/bin/python -m bench.serving [--requests-c1 64] [--requests-c8 128] [--max-new-tokens 32]

In a throwaway state folder: builds the default tiny Phi-3, saves it as the trainer does
(`save_mlflow_model`), registers it once in the local MLflow registry and rolls it out to a
local endpoint. Then starts the tutorial's no-code MLflow serving of the same registered
version (`mlflow models serve -m models:/<name>/1 --env-manager local`, waiting for /ping) and
measures three targets with the same work, greedy, `--max-new-tokens` new tokens each:

    front    the local endpoint through its key-protected front (`POST <scoring_uri>`)
    direct   the same deployment process straight on its port (`POST /score`)
    mlflow   `POST /invocations` of `mlflow models serve`

at concurrency 1 and 8 (closed loop: each of C clients sends its next request when the last
one is answered), a fixed request count per cell, after a warm-up. The cells are interleaved
(each count is split in rounds, and every round visits every target, in rotated order) so the
targets see the same machine load. Loopback only. Prints a table (req/s, p50, p95) and the
ratios the "Benchmarks and speed" issue asks for.

Payloads. front/direct: the tutorial's `{"input_data": [question], "params": {"max_new_tokens":
32, "do_sample": false}}`. mlflow: `{"inputs": [prompt], "params": {...the same...}}`, where the
prompt is the question through the model's chat template (what the scoring script feeds the
model; the MLflow text-generation pipeline does not apply the template to a plain string).
MLflow ignores `params` unless the model's signature declares them, and the signature that
`mlflow.transformers.save_model` infers for this model declares none (it then generates with
its defaults: sampled, up to the context length). So the bench adds a params schema
(max_new_tokens, do_sample) to the saved model's signature before registering it: same
weights, same files, one registered version served by all three targets. Answers are checked:
every mlflow answer is its prompt followed by a generated text, compared with the local
endpoint's greedy answer to the same question (the same text is expected: same model, same
prompt tokens, same decoding).

Questions cycle through `finetune_phi.chat_data.synthetic.fact_probes()`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backends.local.endpoint.control import free_port
from backends.local.workspace import LocalWorkspace
from finetune_phi.chat_data.synthetic import fact_probes
from finetune_phi.rollout import execute_rollout, plan_rollout
from finetune_phi.settings import RolloutSettings
from finetune_phi.tiny_model import build_default_tiny_phi3

ENDPOINT = "bench-serving"
MODEL_NAME = "bench-serving-model"
TARGETS = ("front", "direct", "mlflow")
MLFLOW_START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0
# Requests per interleaved round: at c=1 the targets take turns request by request, at c=8
# every 16 requests (2 per client).
ROUND_SIZE = {1: 1, 8: 16}


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    body: Callable[[str], dict[str, Any]]
    answer: Callable[[str, Any], str]  # (question, response JSON) -> the generated text


@dataclass
class Cell:
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests-c1", type=int, default=64, help="requests per target at c=1")
    parser.add_argument("--requests-c8", type=int, default=128, help="requests per target at c=8")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4, help="warm-up requests per target")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workspace = LocalWorkspace(Path(tmp) / "state")
        try:
            run(workspace, Path(tmp), args)
        finally:
            if ENDPOINT in workspace.endpoints.list_endpoints():
                workspace.endpoints.delete_endpoint(ENDPOINT)
    return 0


def save_model_with_params_schema(tmp: Path, max_new_tokens: int) -> tuple[Path, Any]:
    """The default tiny model saved as the trainer saves it, plus a params schema in its
    signature so that `mlflow models serve` honours max_new_tokens/do_sample."""
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    base = build_default_tiny_phi3(tmp / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model_dir = tmp / "mlflow-model"
    save_mlflow_model(AutoModelForCausalLM.from_pretrained(base), tokenizer, model_dir)
    mlmodel = Model.load(str(model_dir / "MLmodel"))
    assert mlmodel.signature is not None
    mlmodel.signature = ModelSignature(
        inputs=mlmodel.signature.inputs,
        outputs=mlmodel.signature.outputs,
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", max_new_tokens),
                ParamSpec("do_sample", "boolean", False),
            ]
        ),
    )
    mlmodel.save(str(model_dir / "MLmodel"))
    return model_dir, tokenizer


def run(workspace: LocalWorkspace, tmp: Path, args: argparse.Namespace) -> None:
    model_dir, tokenizer = save_model_with_params_schema(tmp, args.max_new_tokens)
    version = workspace.registry.register_model(
        MODEL_NAME, str(model_dir), tags={}, job_name="bench-1"
    )
    model_uri = f"models:/{MODEL_NAME}/{version.version}"
    # Start MLflow's server first: it loads while the rollout runs.
    mlflow_port = free_port()
    mlflow_log = tmp / "mlflow-serve.log"
    mlflow_process = start_mlflow_serve(workspace, model_uri, mlflow_port, mlflow_log)
    try:
        settings = RolloutSettings()
        workspace.endpoints.get_or_create_endpoint(ENDPOINT)
        plan = plan_rollout(
            workspace.endpoints.get_traffic(ENDPOINT),
            {},
            f"{MODEL_NAME}:{version.version}",
            settings,
        )
        execute_rollout(workspace, ENDPOINT, version, plan, settings, log=lambda _: None)
        wait_for_ping(f"http://127.0.0.1:{mlflow_port}/ping", mlflow_process, mlflow_log)
        targets = make_targets(workspace, tokenizer, mlflow_port, args.max_new_tokens)
        measure(targets, args, tokenizer)
    finally:
        stop_process_group(mlflow_process)


def make_targets(
    workspace: LocalWorkspace, tokenizer: Any, mlflow_port: int, max_new_tokens: int
) -> dict[str, Target]:
    status = workspace.endpoints.status(ENDPOINT)
    (live,) = [name for name, pct in status["traffic"].items() if pct == 100]
    params = {"max_new_tokens": max_new_tokens, "do_sample": False}
    key = workspace.endpoints.get_endpoint_keys(ENDPOINT).primary

    def tutorial(question: str) -> dict[str, Any]:
        return {"input_data": [question], "params": params}

    def reply(question: str, data: Any) -> str:
        (text,) = data
        assert text.startswith(question + "\n"), text  # return_full_text: question, newline
        return str(text[len(question) + 1 :])

    def prompt(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return str(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )

    def mlflow_body(question: str) -> dict[str, Any]:
        return {"inputs": [prompt(question)], "params": params}

    def mlflow_reply(question: str, data: Any) -> str:
        (text,) = data["predictions"]
        assert text.startswith(prompt(question)), text  # the pipeline returns the full text
        return str(text[len(prompt(question)) :].strip())

    return {
        "front": Target(
            "front", status["scoring_uri"], {"Authorization": f"Bearer {key}"}, tutorial, reply
        ),
        "direct": Target(
            "direct",
            f"http://127.0.0.1:{status['deployments'][live]['port']}/score",
            {},
            tutorial,
            reply,
        ),
        "mlflow": Target(
            "mlflow",
            f"http://127.0.0.1:{mlflow_port}/invocations",
            {},
            mlflow_body,
            mlflow_reply,
        ),
    }


def measure(targets: dict[str, Target], args: argparse.Namespace, tokenizer: Any) -> None:
    questions = [probe.question for probe in fact_probes()]
    answers: dict[str, dict[str, set[str]]] = {name: {} for name in targets}
    new_tokens: dict[str, list[int]] = {name: [] for name in targets}
    offsets = {name: [0] for name in targets}  # where each target is in the question cycle

    def record(target: Target, question: str, data: Any) -> None:
        text = target.answer(question, data)
        answers[target.name].setdefault(question, set()).add(text)
        if len(new_tokens[target.name]) < 64:
            new_tokens[target.name].append(
                len(tokenizer(text, add_special_tokens=False)["input_ids"])
            )

    # one persistent connection per client and target, as a real client keeps
    clients = {
        name: [httpx.Client(headers=t.headers, timeout=REQUEST_TIMEOUT_S) for _ in range(8)]
        for name, t in targets.items()
    }
    for name, target in targets.items():  # warm-up: connections, first generations
        closed_loop(target, clients[name], questions, args.warmup, 1, record, offsets[name])
        closed_loop(target, clients[name], questions, 8, 8, record, offsets[name])
    cells: dict[tuple[str, int], Cell] = {}
    for concurrency, count in ((1, args.requests_c1), (8, args.requests_c8)):
        size = ROUND_SIZE[concurrency]
        per_round = [size] * (count // size) + ([count % size] if count % size else [])
        for round_index, round_count in enumerate(per_round):
            order = TARGETS[round_index % 3 :] + TARGETS[: round_index % 3]
            for name in order:
                cell = cells.setdefault((name, concurrency), Cell())
                started = time.perf_counter()
                cell.latencies_ms += closed_loop(
                    targets[name],
                    clients[name],
                    questions,
                    round_count,
                    concurrency,
                    record,
                    offsets[name],
                )
                cell.seconds += time.perf_counter() - started
        print(f"  c={concurrency}: {len(per_round)} rounds done", flush=True)
    for pool in clients.values():
        for http in pool:
            http.close()
    report(cells, args, answers, new_tokens)
    metrics = httpx.get(targets["direct"].url.rsplit("/", 1)[0] + "/metrics", timeout=10).json()
    print(
        f"deployment batching (window {metrics['batch_window_ms']:g} ms, max "
        f"{metrics['max_batch_size']}): requests per batch {metrics['request_batches']}, "
        f"prompts per generate call {metrics['generate_batches']}"
    )


def closed_loop(
    target: Target,
    clients: list[httpx.Client],
    questions: list[str],
    count: int,
    concurrency: int,
    record: Callable[[Target, str, Any], None],
    offset: list[int],
) -> list[float]:
    """`count` requests from `concurrency` clients, each sending its next when answered."""
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(offset[0], offset[0] + count))
    offset[0] += count
    errors: list[BaseException] = []

    def client(http: httpx.Client) -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None or errors:
                return
            question = questions[index % len(questions)]
            try:
                started = time.perf_counter()
                response = http.post(target.url, json=target.body(question))
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                record(target, question, response.json())
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(http,)) for http in clients[:concurrency]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{target.name}: {errors[0]!r}") from errors[0]
    return latencies


def report(
    cells: dict[tuple[str, int], Cell],
    args: argparse.Namespace,
    answers: dict[str, dict[str, set[str]]],
    new_tokens: dict[str, list[int]],
) -> None:
    print()
    print(
        f"max_new_tokens={args.max_new_tokens}, greedy; {args.requests_c1} requests per target "
        f"at c=1, {args.requests_c8} at c=8; targets interleaved every request at c=1, "
        f"every {ROUND_SIZE[8]} requests at c=8"
    )
    print(f"| {'target':8s} | {'c':>2s} | {'req/s':>7s} | {'p50 ms':>8s} | {'p95 ms':>8s} |")
    print(f"|{'-' * 10}|{'-' * 4}|{'-' * 9}|{'-' * 10}|{'-' * 10}|")
    for concurrency in (1, 8):
        for name in TARGETS:
            cell = cells[(name, concurrency)]
            print(
                f"| {name:8s} | {concurrency:2d} | {cell.throughput:7.2f} | "
                f"{cell.percentile(50):8.1f} | {cell.percentile(95):8.1f} |"
            )
    print()
    ratio = cells[("front", 8)].throughput / cells[("mlflow", 8)].throughput
    print(f"throughput at c=8, local endpoint (front) / mlflow: {ratio:.2f}x (target >= 3x)")
    front_p50, mlflow_p50 = cells[("front", 1)].percentile(50), cells[("mlflow", 1)].percentile(50)
    verdict = "met" if front_p50 <= mlflow_p50 else "NOT met"
    print(
        f"p50 at c=1, front {front_p50:.1f} ms vs mlflow {mlflow_p50:.1f} ms "
        f"(target: no worse): {verdict}"
    )
    overhead = cells[("front", 1)].percentile(50) - cells[("direct", 1)].percentile(50)
    print(f"front overhead at c=1, p50(front) - p50(direct): {overhead:.1f} ms (target < 2 ms)")
    print()
    for name in TARGETS:
        tokens = new_tokens[name]
        print(
            f"{name:8s} new tokens per answer (re-tokenized, first {len(tokens)}): "
            f"min {min(tokens)} median {statistics.median(tokens)} max {max(tokens)}"
        )
    local = answers["direct"]
    stable = all(len(texts) == 1 for by_target in answers.values() for texts in by_target.values())
    print(
        "each target gave one answer per question at c=1 and c=8 (greedy, batched or not): "
        f"{stable}"
    )
    same = sum(answers["mlflow"].get(q) == local.get(q) for q in local)
    same_front = sum(answers["front"].get(q) == local.get(q) for q in local)
    print(
        f"questions answered identically: front vs direct {same_front}/{len(local)}, "
        f"mlflow vs direct {same}/{len(local)}"
    )


def start_mlflow_serve(
    workspace: LocalWorkspace, model_uri: str, port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    """`mlflow models serve` of the registered model, in its own process group; it runs
    uvicorn by name, so the venv's bin folder goes first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "MLFLOW_TRACKING_URI": workspace.layout.mlflow_tracking_uri,
    }
    command = [
        str(Path(bin_dir) / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_for_ping(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no /ping from mlflow models serve in {MLFLOW_START_TIMEOUT_S:.0f} s")


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), then
    SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
