"""The scoring script: Azure ML's `init()` / `run(raw_data)` around a fine-tuned Phi-3.

The same file runs in three places, unchanged:

- on an Azure ML managed online deployment (`code_configuration: code=serving/,
  scoring_script=score.py`), under Azure's inference server (azmlinfsrv), which loads this file
  by path and calls `init()` once, then `run(body)` with each request body as a string;
- in a local deployment process (`python -m serving.server`), which imports it as
  `serving.score`;
- in tests, directly.

`init()` finds the MLflow model under `$AZUREML_MODEL_DIR` (on Azure the registered model's
files sit there, often one folder down) by its `MLmodel` file, and loads it with
`mlflow.transformers.load_model(..., return_type="components")`. `run()` validates the request
with `contract.py` (shapes and caps are documented there) and generates.

`run_many(bodies)` answers several bodies at once, generating the prompts that share generation
parameters together in left-padded `model.generate` calls; the local server uses it for dynamic
batching (`serving/server.py`). Greedy answers are the same as `run`'s (padding is masked out;
tests/serving/test_batching.py checks it on the tiny model); seeded sampling is never batched.

Bad requests: under azmlinfsrv, `run()` returns an `AMLResponse` with status 400 and
`{"error": "..."}` (raising would become a 500 there); elsewhere it raises
`contract.BadRequest`, which `serving.server` maps to the same 400 answer.

Keep this file self-contained (only the standard library, `contract.py` with pydantic, and the
model's own stack, imported lazily): what is deployed to Azure is this folder, nothing else of
the project.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any


def _load_sibling(name: str) -> ModuleType:
    """Load `<name>.py` from this file's folder by path, registered as `serving_<name>`.

    For when this file is itself loaded by path (azmlinfsrv runs it as "entry_module", no
    package): no sys.path change, so nothing else in this folder (server.py...) can shadow
    another module, and no other module named `contract` can be picked up by mistake.
    """
    module_name = f"serving_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name}.py beside {__file__}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


if __package__:  # imported as serving.score (the local server, tests)
    from . import contract
else:  # loaded by path on Azure, from a folder that holds contract.py beside it
    contract = _load_sibling("contract")

LOGGER = logging.getLogger("serving.score")

MODEL_DIR_ENV = "AZUREML_MODEL_DIR"
# The weights' dtype when serving (the serving plan's choice, set on the deployment): float32,
# bfloat16 or float16; unset: as trained on a GPU, float32 on a CPU.
DTYPE_ENV = "FINETUNE_PHI_SERVING_DTYPE"
MLMODEL_FILE = "MLmodel"
# How deep under AZUREML_MODEL_DIR to look for MLmodel: Azure puts a registered folder one
# level down (<dir>/<folder name>/MLmodel); two more levels tolerate a folder registered with
# its parent.
MAX_SEARCH_DEPTH = 3


class ModelNotLoaded(RuntimeError):
    """`run()` was called before `init()` succeeded."""


def find_mlflow_model(root: str | Path) -> Path:
    """The one MLflow model folder under `root` (root itself, or up to MAX_SEARCH_DEPTH down).

    The shallowest wins; two candidates at that depth are an error rather than a guess, since
    serving the wrong model is worse than not starting.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist")
    level = [root]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        found = sorted(folder for folder in level if (folder / MLMODEL_FILE).is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise RuntimeError(
                f"several MLflow models under {root}: "
                + ", ".join(str(path.relative_to(root)) for path in found)
            )
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
        if not level:
            break
    raise FileNotFoundError(f"no MLflow model (a folder with an {MLMODEL_FILE} file) under {root}")


class Scorer:
    """A loaded model and tokenizer that answer parsed requests.

    Generation is serialized by a lock: one model instance, and seeding touches torch's global
    random state (forked, so one seeded request does not make the next ones predictable).

    A plain class, not a dataclass: azmlinfsrv executes this file without registering it in
    sys.modules, and @dataclass then fails on the postponed annotations (found running it).
    """

    def __init__(
        self, model: Any, tokenizer: Any, model_path: Path, load_seconds: float = 0.0
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.load_seconds = load_seconds
        self._lock = threading.Lock()
        # how many model.generate calls had each batch size (prompts per call)
        self.batch_sizes: dict[int, int] = {}

    @classmethod
    def load(cls, model_dir: str | Path) -> Scorer:
        """Load the MLflow transformers model found under `model_dir`."""
        started = time.monotonic()
        path = find_mlflow_model(model_dir)
        import mlflow
        import torch

        components = mlflow.transformers.load_model(str(path), return_type="components")
        model = components["model"].eval()
        tokenizer = components["tokenizer"]
        wanted = os.environ.get(DTYPE_ENV, "")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if wanted and wanted not in dtypes:
            raise ValueError(f"{DTYPE_ENV}={wanted!r}: expected one of {', '.join(dtypes)}")
        if torch.cuda.is_available():
            model = model.to("cuda", dtype=dtypes[wanted]) if wanted else model.to("cuda")
        elif model.dtype in (torch.bfloat16, torch.float16) or wanted:
            # A CPU: half precision is emulated, ~50x slower; the serving plan never asks it.
            model = model.float()
        model.generation_config.use_cache = True  # training turns the KV cache off
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        scorer = cls(model, tokenizer, path, time.monotonic() - started)
        LOGGER.info("loaded %s in %.1f s", path, scorer.load_seconds)
        return scorer

    def score(self, request: contract.ScoringRequest) -> list[str] | dict[str, str]:
        """Answer a validated request in its form's response shape (see contract.py)."""
        if isinstance(request, contract.ChatRequest):
            return contract.chat_response(self.reply(request.conversation(), request.params))
        # One text at a time here (Azure's run() path); the local server batches through
        # score_many, whose greedy answers are the same (checked in tests/serving).
        replies = [self.reply(chat, request.params) for chat in request.conversations()]
        return contract.text_response(request, replies)

    def reply(self, messages: list[dict[str, str]], params: contract.GenerationParams) -> str:
        """The model's next assistant message for a chat, through its chat template."""
        return self.generate([self.prompt_ids(messages, params)], params)[0]

    def prompt_ids(
        self, messages: list[dict[str, str]], params: contract.GenerationParams
    ) -> list[int]:
        """A chat's prompt tokens (its chat template, generation prompt added); `BadRequest` if
        the prompt and `max_new_tokens` do not fit the model's context."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        prompt_tokens = len(ids)
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and prompt_tokens + params.max_new_tokens > context:
            raise contract.BadRequest(
                f"input is {prompt_tokens} tokens; with max_new_tokens {params.max_new_tokens} "
                f"that exceeds the model's context of {context} tokens"
            )
        return [int(token) for token in ids]

    def generate(
        self, prompts: Sequence[list[int]], params: contract.GenerationParams
    ) -> list[str]:
        """The replies to several prompts, generated together in one `model.generate` call.

        Prompts of different lengths are padded on the left (a decoder-only model continues
        the last position of each row) and masked out. One prompt is not padded at all.
        """
        import torch

        longest = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in prompts])
        attention_mask = torch.tensor(
            [[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts]
        )
        with self._lock, self._seeded(params), torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                **params.generate_kwargs(),
                pad_token_id=pad,
            )
            self.batch_sizes[len(prompts)] = self.batch_sizes.get(len(prompts), 0) + 1
        stops = self._stop_tokens()
        replies = []
        for row in output[:, longest:].tolist():
            # A row that ended early is filled up with padding: cut it at its end token, as
            # generating it alone would have stopped there.
            end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            replies.append(str(self.tokenizer.decode(row[:end], skip_special_tokens=True)).strip())
        return replies

    def score_many(
        self, requests: Sequence[contract.ScoringRequest], max_batch_size: int = 8
    ) -> list[Any]:
        """Answer several validated requests; each gets `score(request)`'s answer, or the
        exception it raised (a `BadRequest` for a prompt too long), in order.

        Texts and chats of all the requests are generated in batches of at most
        `max_batch_size` prompts that share the same generation parameters (requests with
        different ones never share a batch). Seeded sampling is never batched: a seed promises
        the same answer as the request alone. Greedy answers are the same as unbatched ones:
        left padding is masked out and positions start at each prompt's first token, so only
        float rounding differs, and it never flipped a token in what was checked
        (tests/serving/test_batching.py on the test model, every fact probe on the default
        tiny model in bench/serving.py). What is tested is the same text, not bitwise logits.
        """
        outcomes: list[Any] = [None] * len(requests)
        replies: list[list[str | None]] = []
        # (params) -> [(request index, position in the request, prompt ids)]
        groups: dict[tuple[Any, ...], list[tuple[int, int, list[int]]]] = {}
        for index, request in enumerate(requests):
            chats = (
                [request.conversation()]
                if isinstance(request, contract.ChatRequest)
                else request.conversations()
            )
            replies.append([None] * len(chats))
            try:
                prompts = [self.prompt_ids(chat, request.params) for chat in chats]
            except Exception as exc:
                outcomes[index] = exc
                continue
            key = _batch_key(request.params, index)
            groups.setdefault(key, []).extend(
                (index, position, ids) for position, ids in enumerate(prompts)
            )
        for items in groups.values():
            params = requests[items[0][0]].params
            for start in range(0, len(items), max(1, max_batch_size)):
                chunk = items[start : start + max(1, max_batch_size)]
                try:
                    answers = self.generate([ids for _, _, ids in chunk], params)
                except Exception as exc:
                    for index, _, _ in chunk:
                        outcomes[index] = exc
                    continue
                for (index, position, _), answer in zip(chunk, answers, strict=True):
                    replies[index][position] = answer
        for index, request in enumerate(requests):
            if outcomes[index] is not None:
                continue
            done = [reply for reply in replies[index] if reply is not None]
            if isinstance(request, contract.ChatRequest):
                outcomes[index] = contract.chat_response(done[0])
            else:
                outcomes[index] = contract.text_response(request, done)
        return outcomes

    def _stop_tokens(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @contextmanager
    def _seeded(self, params: contract.GenerationParams) -> Iterator[None]:
        """Seed sampling when asked to (do_sample with a seed); greedy needs no randomness."""
        if not (params.do_sample and params.seed is not None):
            yield
            return
        import torch

        devices = [self.model.device.index or 0] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.seed)
            yield


def _batch_key(params: contract.GenerationParams, index: int) -> tuple[Any, ...]:
    """Which requests may share a `model.generate` call: those with the same generation
    parameters (`return_full_text` only shapes the answer). A seeded sampling request is a
    group of its own."""
    if params.do_sample and params.seed is not None:
        return ("alone", index)
    return ("shared", dataclasses.replace(params, return_full_text=True))


_scorer: Scorer | None = None


def init() -> None:
    """Azure ML's start-up hook: load the model found under $AZUREML_MODEL_DIR."""
    global _scorer
    model_dir = os.environ.get(MODEL_DIR_ENV)
    if not model_dir:
        raise RuntimeError(f"{MODEL_DIR_ENV} is not set: it must name the model's folder")
    _scorer = Scorer.load(model_dir)


def run(raw_data: str | bytes | Mapping[str, Any]) -> Any:
    """Azure ML's per-request hook: the JSON-serializable answer to one request body.

    A bad request is answered with a 400 under azmlinfsrv and raised as `BadRequest` elsewhere
    (see the module docstring); anything else that goes wrong propagates (a 500).
    """
    try:
        request = contract.parse_request(raw_data)
        if _scorer is None:
            raise ModelNotLoaded("the model is not loaded: init() has not completed")
        return _scorer.score(request)
    except contract.BadRequest as exc:
        aml_response = _aml_response_class()
        if aml_response is None:
            raise
        return aml_response(contract.error_body(str(exc)), 400, json_str=True)


def run_many(
    raw_data: Sequence[str | bytes | Mapping[str, Any]], max_batch_size: int = 8
) -> list[Any]:
    """Several request bodies at once (the local server's dynamic batching; azmlinfsrv only
    ever calls `run`): for each body, in order, what `run` would answer, or the exception it
    would raise (`BadRequest` for a bad request, never an AMLResponse). Prompts with the same
    generation parameters are generated together, `max_batch_size` at most per call.
    """
    outcomes: list[Any] = [None] * len(raw_data)
    parsed: list[tuple[int, contract.ScoringRequest]] = []
    for index, body in enumerate(raw_data):
        try:
            parsed.append((index, contract.parse_request(body)))
        except contract.BadRequest as exc:
            outcomes[index] = exc
    if parsed:
        if _scorer is None:
            error = ModelNotLoaded("the model is not loaded: init() has not completed")
            for index, _ in parsed:
                outcomes[index] = error
        else:
            answers = _scorer.score_many([request for _, request in parsed], max_batch_size)
            for (index, _), answer in zip(parsed, answers, strict=True):
                outcomes[index] = answer
    return outcomes


def _aml_response_class() -> Any:
    """azmlinfsrv's AMLResponse when running under it (it registers the module), else None."""
    try:
        from azureml.contrib.services.aml_response import AMLResponse
    except ImportError:
        return None
    return AMLResponse


def metrics() -> dict[str, Any]:
    """Counters for the server's /metrics: `model.generate` calls by batch size (prompts)."""
    return {"generate_batches": dict(_scorer.batch_sizes) if _scorer is not None else {}}
