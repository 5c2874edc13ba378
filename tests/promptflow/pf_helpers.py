"""Helpers for the Prompt flow tests: a quickly fine-tuned tiny Phi-3, a real local endpoint,
and a guard that records any connection a child process tries to make off this machine.

The fine-tune is a plain PyTorch loop over a few facts' question/answer pairs (loss on the
answer tokens only), not the project's TRL trainer: the trainer is tested on its own
(tests/test_trainer.py), and here only the result matters: a model that answers "Who founded
Microsoft?" correctly, in seconds. One torch thread: on 2 cores shared with the endpoint's
processes, two threads measured ~10x slower per step (oversubscription), one ~25 ms.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from endpoint_cleanup import cleanup_endpoints

from backends.local.endpoint.control import LocalEndpoints
from finetune_phi.chat_data.synthetic import FACTS, Fact, FactProbe, fact_probes
from finetune_phi.workspace import DeploymentSpec, ModelVersion, TrafficState

ENDPOINT = "pf-test"
TRAINED, UNTRAINED = "blue", "green"  # deployment names: the trained one has all the traffic
# The tutorial's question first; two invented facts prove the answers come from fine-tuning.
TRAINED_FACT_IDS = ("microsoft_founders", "capital_of_france", "zentrova_founders")
TRAIN_STEPS = 150
LEARNING_RATE = 3e-3


def trained_facts() -> list[Fact]:
    by_id = {fact.id: fact for fact in FACTS}
    return [by_id[fact_id] for fact_id in TRAINED_FACT_IDS]


def trained_probes() -> list[FactProbe]:
    """The probes of the facts the fixture model learnt (the Microsoft one first)."""
    wanted = set(TRAINED_FACT_IDS)
    return [probe for probe in fact_probes() if probe.fact_id in wanted]


def fine_tune_facts(
    base_dir: Path, output: Path, facts: Sequence[Fact], hf_output: Path | None = None
) -> tuple[Path, float]:
    """Fine-tune the model in `base_dir` on every phrasing of `facts`; save it as an MLflow
    model (what deployments serve) to `output`, and as a plain Hugging Face folder (a base
    model for the flow) to `hf_output` when given. Returns the folder and training seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    end = tokenizer.convert_tokens_to_ids("<|end|>")

    def encode(history: list[dict[str, str]], answer: str) -> tuple[list[int], list[int]]:
        prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return prompt_ids, tokenizer(answer, add_special_tokens=False)["input_ids"] + [end]

    pairs: list[tuple[list[int], list[int]]] = []
    for fact in facts:
        for question in fact.questions:
            pairs.append(encode([{"role": "user", "content": question}], fact.answer))
    # Second turns: the answer to the LAST question, whatever came before (chats keep history).
    for first in facts:
        for second in facts:
            if first is not second:
                turns = [
                    {"role": "user", "content": first.questions[0]},
                    {"role": "assistant", "content": first.answer},
                    {"role": "user", "content": second.questions[1]},
                ]
                pairs.append(encode(turns, second.answer))
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    labels = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (prompt_ids, answer_ids) in enumerate(pairs):
        full = prompt_ids + answer_ids
        ids[row, : len(full)] = torch.tensor(full)
        labels[row, len(prompt_ids) : len(full)] = torch.tensor(answer_ids)
        mask[row, : len(full)] = 1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    started = time.monotonic()
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        model.train()
        for _ in range(TRAIN_STEPS):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    seconds = time.monotonic() - started
    model.eval()
    save_mlflow_model(model, tokenizer, output)
    if hf_output is not None:
        model.save_pretrained(hf_output)
        tokenizer.save_pretrained(hf_output)
    return output, seconds


def save_untrained(base_dir: Path, output: Path) -> Path:
    """The base model as it is (random weights), saved as an MLflow model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    save_mlflow_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        AutoTokenizer.from_pretrained(base_dir),
        output,
    )
    return output


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    hf_path: Path  # the same weights as a Hugging Face folder
    train_seconds: float  # the fine-tune alone
    fixture_seconds: float  # fine-tune + saving the MLflow model


@dataclass
class LiveEndpoint:
    """A local online endpoint on loopback: `trained` has all the traffic, `untrained` none."""

    control: LocalEndpoints
    name: str
    url: str
    key: str
    state_dir: Path


def start_endpoint(state_dir: Path, name: str, models: dict[str, Path]) -> LiveEndpoint:
    """Start the endpoint and one deployment per model (real `serving.server` processes); all
    traffic to the first. The caller must `stop_endpoint` it, whatever happens."""
    control = LocalEndpoints(state_dir, grace_seconds=2.0)
    info = control.get_or_create_endpoint(name)
    try:
        for deployment, folder in models.items():
            model = ModelVersion(name=f"pf-test-{deployment}", version="1", source=str(folder))
            control.create_or_update_deployment(DeploymentSpec(name, deployment, model))
        control.set_traffic(name, TrafficState({next(iter(models)): 100}, {}))
    except BaseException:
        stop_endpoint(control)
        raise
    key = control.get_endpoint_keys(name).primary
    return LiveEndpoint(control, name, info.scoring_uri, key, state_dir)


def stop_endpoint(control: LocalEndpoints) -> None:
    """Delete every endpoint of this control plane and anything it started."""
    cleanup_endpoints(control, delete=True)


# A sitecustomize for child processes: refuses (and records) every connection or name lookup
# that is not loopback, so a test can prove promptflow sent nothing anywhere (telemetry off).
NETWORK_GUARD = """
import ipaddress, os, socket

_LOG = os.environ["FINETUNE_PHI_NET_GUARD_LOG"]
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_local(host):
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOCAL_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what, host):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {what} {host}\\n")
    raise OSError(f"network guard: no connections off this machine ({what} {host})")


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _refuse("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        _refuse("connect", address[0])


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
"""


def install_network_guard(folder: Path) -> tuple[Path, Path]:
    """Write the guard as `sitecustomize.py` in `folder`; returns (folder, log file). Put the
    folder on PYTHONPATH and the log in FINETUNE_PHI_NET_GUARD_LOG for the child."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = folder / "attempts.log"
    log.write_text("")
    return folder, log


# --------------------------------------------------------------------------- stand-in endpoint


@dataclass
class StandInEndpoint:
    """An HTTP server on loopback that answers like the scoring contract and records every
    request (headers and body), to check exactly what the flow's tool sends."""

    url: str
    key: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200  # set to make it fail


def stand_in_handler(endpoint: StandInEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            endpoint.requests.append({"headers": dict(self.headers), "body": body})
            if self.headers.get("Authorization") != f"Bearer {endpoint.key}":
                self._reply(401, {"error": "invalid key"})
            elif endpoint.status != 200:
                self._reply(endpoint.status, {"error": "the stand-in was told to fail"})
            elif isinstance(body.get("input_data"), list):  # the tutorial's form
                texts = body["input_data"]
                self._reply(200, [f"{text}\nanswer {len(endpoint.requests)}" for text in texts])
            else:  # the chat form
                self._reply(
                    200, {"role": "assistant", "content": f"answer {len(endpoint.requests)}"}
                )

        def _reply(self, status: int, data: Any) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler
