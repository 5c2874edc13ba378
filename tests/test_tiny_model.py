"""The tiny Phi-3 the project builds itself: deterministic, loadable, and Phi-3 shaped.

The model is built once per module at a very small size (a couple of seconds on a CPU) and read
back through the ordinary `from_pretrained` path, so these tests exercise what the trainer and
the endpoint use. Nothing here may touch the network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_phi.chat_data.synthetic import generate_conversations
from finetune_phi.tiny_model import (
    PHI3_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TinyModelSpec,
    build_tiny_phi3,
    chat_texts,
    is_built,
    train_tokenizer,
)

SPEC = TinyModelSpec(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=512,
)
CONVERSATIONS = 200
PHI3_SPECIAL_TOKENS = (
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|endoftext|>",
    "<unk>",
)


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No Hub access: the variable for subprocesses, the constant for the imported hub."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def conversations() -> list[dict[str, Any]]:
    return generate_conversations(CONVERSATIONS, seed=0)


@pytest.fixture(scope="module")
def model_dir(
    offline: None, tmp_path_factory: pytest.TempPathFactory, conversations: list[dict[str, Any]]
) -> Path:
    return build_tiny_phi3(tmp_path_factory.mktemp("first") / "tiny-phi3", conversations, SPEC)


@pytest.fixture(scope="module")
def rebuilt_dir(
    offline: None, tmp_path_factory: pytest.TempPathFactory, conversations: list[dict[str, Any]]
) -> Path:
    """A second build of the same arguments, into a folder that already holds a stale file."""
    target = tmp_path_factory.mktemp("second") / "tiny-phi3"
    target.mkdir()
    (target / "stale.txt").write_text("left over from an older build\n")
    return build_tiny_phi3(target, conversations, SPEC)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_dir)


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- the folder -------------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files(model_dir: Path, rebuilt_dir: Path) -> None:
    first, second = file_hashes(model_dir), file_hashes(rebuilt_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(first)
    assert first == second


def test_building_replaces_the_folder_and_leaves_no_staging_behind(rebuilt_dir: Path) -> None:
    assert not (rebuilt_dir / "stale.txt").exists()
    assert sorted(p.name for p in rebuilt_dir.parent.iterdir()) == ["tiny-phi3"]


def test_the_spec_is_recorded_next_to_the_model(model_dir: Path) -> None:
    recorded = json.loads((model_dir / "tiny_model_spec.json").read_text())
    assert recorded == asdict(SPEC)


def test_different_seed_gives_different_weights_and_the_same_tokenizer(
    model_dir: Path, tmp_path: Path, conversations: list[dict[str, Any]]
) -> None:
    other = build_tiny_phi3(tmp_path / "seed-1", conversations, replace(SPEC, seed=1))

    first, second = file_hashes(model_dir), file_hashes(other)
    assert first["model.safetensors"] != second["model.safetensors"]
    assert first["tokenizer.json"] == second["tokenizer.json"]


def test_is_built_after_a_build_and_not_for_an_empty_or_missing_folder(
    model_dir: Path, tmp_path: Path
) -> None:
    assert is_built(model_dir)
    assert not is_built(tmp_path)
    assert not is_built(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    assert not is_built(tmp_path)  # a config alone is no model


# --- loading through from_pretrained ----------------------------------------------------------


def test_folder_loads_as_a_phi3_causal_lm(model: Any, tokenizer: Any) -> None:
    config = model.config
    assert config.model_type == "phi3"
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert config.hidden_size == SPEC.hidden_size
    assert config.intermediate_size == SPEC.intermediate_size
    assert config.num_hidden_layers == SPEC.num_hidden_layers
    assert config.num_attention_heads == SPEC.num_attention_heads
    assert config.vocab_size == len(tokenizer) <= SPEC.vocab_size
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), SPEC.hidden_size)
    assert next(model.parameters()).dtype == torch.float32


def test_generation_config_stops_at_the_end_of_a_turn(model: Any, tokenizer: Any) -> None:
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    assert tokenizer.convert_tokens_to_ids("<|end|>") in eos_ids
    assert tokenizer.eos_token_id in eos_ids
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_model_generates(model: Any, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Who founded Microsoft?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_length = prompt["input_ids"].shape[1]

    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=5, do_sample=False)

    new_tokens = output[0, prompt_length:].tolist()
    assert 1 <= len(new_tokens) <= 5
    assert torch.equal(output[0, :prompt_length], prompt["input_ids"][0])
    if len(new_tokens) < 5:
        assert new_tokens[-1] in model.generation_config.eos_token_id


# --- the tokenizer and the chat template ------------------------------------------------------


def test_chat_template_renders_phi3_turns(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi<|end|>\n"
        "<|assistant|>\nHello<|end|>\n<|endoftext|>"
    )


def test_chat_template_skips_an_empty_system_message(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\nHi<|end|>\n<|endoftext|>"


def test_generation_prompt_opens_an_assistant_turn(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_saved_tokenizer_carries_the_projects_template(tokenizer: Any) -> None:
    assert tokenizer.chat_template == PHI3_CHAT_TEMPLATE


@pytest.mark.parametrize("token", PHI3_SPECIAL_TOKENS)
def test_special_tokens_are_single_tokens(tokenizer: Any, token: str) -> None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1
    assert tokenizer.convert_ids_to_tokens(ids) == [token]
    # Also inside text: the chat markers must never be split into pieces.
    in_text = tokenizer.encode(f"Hi{token}there", add_special_tokens=False)
    assert ids[0] in in_text


def test_pad_token_is_unk_as_the_tutorial_sets_it(tokenizer: Any) -> None:
    assert tokenizer.pad_token == "<unk>"
    assert tokenizer.pad_token_id == tokenizer.unk_token_id
    assert tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "text",
    [
        "Who founded Microsoft?",
        "Hello, world! (a+b)=c; \"quoted\" 'single' -- 3.5%",
        "  leading and trailing spaces  \n\ttabs and newlines\n",
        "café, naïve, Ærøskøbing, 東京, emoji 🙂",
        "<|user|>\nHi<|end|>\n<|assistant|>\n",
    ],
)
def test_tokenizer_round_trips_text_exactly(tokenizer: Any, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_learns_the_corpus(conversations: list[dict[str, Any]]) -> None:
    tokenizer = train_tokenizer(chat_texts(conversations), SPEC.vocab_size)

    assert len(tokenizer) <= SPEC.vocab_size
    assert tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == list(SPECIAL_TOKENS)

    # Merges come from the corpus: a word it repeats takes fewer tokens than an unseen one.
    def length(word: str) -> int:
        return len(tokenizer.encode(word, add_special_tokens=False))

    assert length("Microsoft") < length("Qzxjvkwpq")
