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

Bad requests: under azmlinfsrv, `run()` returns an `AMLResponse` with status 400 and
`{"error": "..."}` (raising would become a 500 there); elsewhere it raises
`contract.BadRequest`, which `serving.server` maps to the same 400 answer.

Keep this file self-contained (only the standard library, `contract.py`, and the model's own
stack, imported lazily): what is deployed to Azure is this folder, nothing else of the project.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
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
        if torch.cuda.is_available():
            model = model.to("cuda")
        elif model.dtype in (torch.bfloat16, torch.float16):
            # A model trained in bf16 on a GPU: half precision on a CPU is emulated, ~50x slower.
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
        # One text at a time: a text's answer does not depend on what else was in the request
        # (batching pads, and padding can nudge greedy decoding), and CPU gains little.
        replies = [self.reply(chat, request.params) for chat in request.conversations()]
        return contract.text_response(request, replies)

    def reply(self, messages: list[dict[str, str]], params: contract.GenerationParams) -> str:
        """The model's next assistant message for a chat, through its chat template."""
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and prompt_tokens + params.max_new_tokens > context:
            raise contract.BadRequest(
                f"input is {prompt_tokens} tokens; with max_new_tokens {params.max_new_tokens} "
                f"that exceeds the model's context of {context} tokens"
            )
        with self._lock, self._seeded(params), torch.inference_mode():
            output = self.model.generate(
                **inputs, **params.generate_kwargs(), pad_token_id=self.tokenizer.pad_token_id
            )
        new_tokens = output[0, prompt_tokens:]
        return str(self.tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()

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


def _aml_response_class() -> Any:
    """azmlinfsrv's AMLResponse when running under it (it registers the module), else None."""
    try:
        from azureml.contrib.services.aml_response import AMLResponse
    except ImportError:
        return None
    return AMLResponse
