"""The scoring script on the real tiny Phi-3: init() from AZUREML_MODEL_DIR, run() per request.

Also loaded the way azmlinfsrv loads it (by path, from a folder holding only score.py and
contract.py, not registered in sys.modules): that is how it runs on Azure.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import contract, score
from serving.contract import BadRequest

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Who founded Microsoft?"


def greedy(text: str = QUESTION, **params: Any) -> str:
    return json.dumps(
        {"input_data": [text], "params": {"max_new_tokens": 16, "do_sample": False, **params}}
    )


# --------------------------------------------------------------------------- finding the model


def mlmodel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    return folder


def test_model_found_in_the_folder_itself_or_below(tmp_path: Path) -> None:
    assert score.find_mlflow_model(mlmodel(tmp_path / "a")) == tmp_path / "a"
    assert score.find_mlflow_model(tmp_path) == tmp_path / "a"
    mlmodel(tmp_path / "b" / "c" / "d")  # deeper: the shallowest wins
    assert score.find_mlflow_model(tmp_path) == tmp_path / "a"


def test_two_models_at_the_same_depth_are_an_error_not_a_guess(tmp_path: Path) -> None:
    mlmodel(tmp_path / "a")
    mlmodel(tmp_path / "b")
    with pytest.raises(RuntimeError, match="several MLflow models under .*: a, b"):
        score.find_mlflow_model(tmp_path)


def test_no_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no MLflow model .*MLmodel file.* under"):
        score.find_mlflow_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score.find_mlflow_model(tmp_path / "missing")


def test_init_needs_azureml_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR is not set"):
        score.init()


def test_run_before_init_fails_but_still_rejects_bad_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(score, "_scorer", None)
    with pytest.raises(score.ModelNotLoaded):
        score.run(greedy())
    with pytest.raises(BadRequest, match="not valid JSON"):
        score.run("{")


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="session")
def scored(azureml_model_dir: Path, served_deployment: Any) -> Iterator[types.ModuleType]:
    """serving.score after a real init() on the tiny model.

    Depends on the served deployment only to start that process first: it loads its copy of
    the model on the other core while this one loads here.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("AZUREML_MODEL_DIR", str(azureml_model_dir))
    score.init()
    try:
        yield score
    finally:
        mp.setattr(score, "_scorer", None)
        mp.undo()


@pytest.mark.slow
def test_init_loads_the_mlflow_model_one_folder_down(
    scored: types.ModuleType, azureml_model_dir: Path
) -> None:
    assert scored._scorer is not None
    assert scored._scorer.model_path.parent == azureml_model_dir  # one folder down
    assert (scored._scorer.model_path / "MLmodel").is_file()
    assert not scored._scorer.model.training


@pytest.mark.slow
def test_tutorial_request_answers_one_string_per_text_starting_with_it(
    scored: types.ModuleType,
) -> None:
    body = {
        "input_data": [QUESTION, "What is Prompt flow?"],
        "params": {"temperature": 0.7, "max_new_tokens": 8, "do_sample": True},
    }
    answers = scored.run(json.dumps(body))
    assert isinstance(answers, list) and len(answers) == 2
    assert answers[0].startswith(QUESTION + "\n")
    assert answers[1].startswith("What is Prompt flow?\n")


@pytest.mark.slow
def test_greedy_is_deterministic_and_the_forms_agree(scored: types.ModuleType) -> None:
    """Same text, same greedy answer: in every form, and whatever else the request held."""
    (full,) = scored.run(greedy())
    (reply,) = scored.run(greedy(return_full_text=False))
    assert full == contract.full_text(QUESTION, reply)
    assert scored.run(greedy(return_full_text=False)) == [reply]
    legacy = {
        "input_data": {
            "input_string": ["Something else entirely", QUESTION],
            "parameters": {"max_new_tokens": 16, "return_full_text": False},
        }
    }
    assert scored.run(json.dumps(legacy))[1] == reply
    chat = {"messages": [{"role": "user", "content": QUESTION}], "params": {"max_new_tokens": 16}}
    assert scored.run(json.dumps(chat)) == {"role": "assistant", "content": reply}


@pytest.mark.slow
def test_chat_form_goes_through_the_chat_template(scored: types.ModuleType) -> None:
    """A system message changes the prompt, hence (greedy, same question) the tokens fed."""
    tokenizer = scored._scorer.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\n")
    assert prompt.endswith("<|assistant|>\n")
    answer = scored.run({"input_data": {"messages": messages}, "params": {"max_new_tokens": 4}})
    assert set(answer) == {"role", "content"} and answer["role"] == "assistant"


@pytest.mark.slow
def test_seeded_sampling_repeats_and_leaves_global_randomness_alone(
    scored: types.ModuleType,
) -> None:
    import torch

    body = greedy(do_sample=True, temperature=1.5, seed=1234, max_new_tokens=12)
    before = torch.random.get_rng_state()
    first, second = scored.run(body), scored.run(body)
    assert first == second
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.slow
def test_a_prompt_too_long_for_the_context_is_a_bad_request(scored: types.ModuleType) -> None:
    context = scored._scorer.model.config.max_position_embeddings
    words = " ".join(["Microsoft", "founded", "Seattle", "1975"] * 2000)[:7990]
    messages = [
        {"role": "user", "content": words},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": QUESTION},
    ]
    body = {"messages": messages, "params": {"max_new_tokens": 512}}
    with pytest.raises(BadRequest, match=f"exceeds the model's context of {context} tokens"):
        scored.run(json.dumps(body))


@pytest.mark.slow
def test_bad_request_becomes_aml_response_400_under_azmlinfsrv(
    scored: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azmlinfsrv registers azureml.contrib.services.aml_response before loading the script;
    a module of the same name and constructor stands in for it here."""

    class AMLResponse:
        def __init__(self, message: Any, status_code: int, json_str: bool = False) -> None:
            self.message, self.status_code, self.json_str = message, status_code, json_str

    fake = types.ModuleType("azureml.contrib.services.aml_response")
    fake.AMLResponse = AMLResponse  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azureml.contrib.services.aml_response", fake)
    response = scored.run(greedy(max_new_tokens=0))
    assert isinstance(response, AMLResponse)
    assert response.status_code == 400 and response.json_str
    assert response.message == {
        "error": "params.max_new_tokens: must be an integer between 1 and 512, got 0"
    }
    assert scored.run(greedy(max_new_tokens=2))  # good requests are unaffected


@pytest.mark.slow
def test_loaded_by_path_like_azmlinfsrv_from_its_own_folder(
    scored: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure gets serving/ alone and execs score.py as "entry_module", unregistered."""
    app = tmp_path / "azureml-app" / "serving"
    app.mkdir(parents=True)
    for name in ("score.py", "contract.py"):
        shutil.copy(REPO / "serving" / name, app / name)
    path_before = list(sys.path)
    monkeypatch.delitem(sys.modules, "serving_contract", raising=False)
    spec = importlib.util.spec_from_file_location("entry_module", app / "score.py")
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)  # its attributes come from the file
    spec.loader.exec_module(module)
    try:
        assert module.contract.__file__ == str(app / "contract.py")
        loaded = scored._scorer
        module._scorer = module.Scorer(loaded.model, loaded.tokenizer, loaded.model_path)
        assert module.run(greedy()) == scored.run(greedy())
        with pytest.raises(module.contract.BadRequest, match="params.top_p"):
            module.run(greedy(top_p=7))
    finally:
        sys.modules.pop("serving_contract", None)
    assert sys.path == path_before  # nothing in that folder may shadow other modules
