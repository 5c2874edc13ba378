"""The base model's chat template as the data stage sees it, with real tokenizers: token counts,
and whether a system message is rendered (found by rendering, never by reading the source).

The tokenizers are the small tiny Phi-3's (its template is Phi-3.5-mini-instruct's) and copies
of it carrying other real-world templates: Phi-3-medium's (no system turn: it drops a system
message), one that refuses a system role (as Gemma's does), and one that folds the system text
into the first user turn (as Llama 2's does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_phi.chat_data import (
    ChatTemplateCounter,
    ConversationNotRenderable,
    DataSettings,
    DataValidationError,
    FileSource,
    InvalidRecordPolicy,
    chat_token_counter,
    prepare_dataset,
)
from finetune_phi.chat_data.template import SYSTEM_PROBE, has_system_turn
from finetune_phi.tiny_model import PHI3_CHAT_TEMPLATE

# microsoft/Phi-3.5-mini-instruct's tokenizer_config.json chat_template, as published.
PHI35_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# microsoft/Phi-3-medium-4k-instruct's: user and assistant turns only; a system message vanishes.
PHI3_MEDIUM_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'user') %}"
    "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}"
    "{% endif %}{% endfor %}"
)
REFUSING_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
)
FOLDING_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}"
    "{% endif %}{% for message in turns %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + '</s>' }}{% endif %}{% endfor %}"
)


def tokenizer_with(template: str | None, source: Path, folder: Path) -> Path:
    """A copy of the tiny tokenizer, saved with another chat template (None: none at all)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("templates")
    made = {
        name: tokenizer_with(template, tiny_model_dir, root / name)
        for name, template in (
            ("phi3-medium", PHI3_MEDIUM_TEMPLATE),
            ("refusing", REFUSING_TEMPLATE),
            ("folding", FOLDING_TEMPLATE),
            ("none", None),
        )
    }
    return {"tiny": tiny_model_dir, **made}


SYSTEM_CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Who founded Microsoft?"},
    {"role": "assistant", "content": "Bill Gates and Paul Allen."},
]


def record(index: int, system: bool = False) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": f"What is fact number {index}?"},
        {"role": "assistant", "content": f"Fact number {index} is true."},
    ]
    if system:
        messages.insert(0, {"role": "system", "content": "You are terse."})
    return {"prompt": messages[-2]["content"], "prompt_id": f"id-{index}", "messages": messages}


def test_the_tiny_model_has_phi35_minis_template_with_its_system_turn(
    templates: dict[str, Path],
) -> None:
    """The demo shows the common case: chat data opening with a system message is kept."""
    assert PHI3_CHAT_TEMPLATE == PHI35_MINI_TEMPLATE
    counter = chat_token_counter(str(templates["tiny"]))
    assert counter.capabilities.system_turn is True
    assert counter.capabilities.model == str(templates["tiny"])
    rendered = counter.tokenizer.apply_chat_template(SYSTEM_CHAT, tokenize=False)
    assert "<|system|>\nYou are terse.<|end|>" in rendered


@pytest.mark.parametrize(
    ("name", "system_turn"),
    [
        pytest.param("tiny", True, id="phi-3.5-mini: a system turn"),
        pytest.param("folding", True, id="system text folded into the first user turn"),
        pytest.param("phi3-medium", False, id="phi-3-medium: the system message is dropped"),
        pytest.param("refusing", False, id="the template raises on a system role"),
    ],
)
def test_a_system_turn_is_found_by_rendering(
    templates: dict[str, Path], name: str, system_turn: bool
) -> None:
    counter = chat_token_counter(str(templates[name]))
    assert has_system_turn(counter.tokenizer) is system_turn
    assert counter.capabilities.system_turn is system_turn
    # Every one of them renders a plain conversation: the probe tells the cases apart.
    assert counter(SYSTEM_CHAT[1:]) > 0
    assert SYSTEM_PROBE not in str(templates[name])


def test_a_tokenizer_without_a_chat_template_is_refused_in_one_sentence(
    templates: dict[str, Path],
) -> None:
    with pytest.raises(ValueError, match=r"^the tokenizer of .*none has no chat template"):
        chat_token_counter(str(templates["none"]))


def test_a_conversation_the_template_refuses_is_our_error_naming_the_model(
    templates: dict[str, Path],
) -> None:
    counter = chat_token_counter(str(templates["refusing"]))
    with pytest.raises(ConversationNotRenderable, match="System role not supported") as caught:
        counter(SYSTEM_CHAT)
    assert str(caught.value).startswith(f"the chat template of {templates['refusing']} ")
    with pytest.raises(ConversationNotRenderable, match="empty conversation"):
        counter([])  # transformers' own refusal, in our words around it


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def settings_for(path: Path) -> DataSettings:
    return DataSettings(
        source=FileSource(kind="file", path=path),
        max_tokens=256,
        invalid=InvalidRecordPolicy(action="drop", max_invalid_fraction=0.5),
    )


def test_system_messages_are_kept_for_a_template_with_a_system_turn(
    templates: dict[str, Path], tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [record(i, system=i % 2 == 0) for i in range(10)])
    counter = chat_token_counter(str(templates["tiny"]))
    manifest = prepare_dataset(settings_for(data), tmp_path / "out", count_tokens=counter)
    assert (manifest.counts.valid, manifest.counts.invalid) == (10, 0)


@pytest.mark.parametrize("name", ["phi3-medium", "refusing"])
def test_system_messages_are_refused_for_a_template_without_one(
    templates: dict[str, Path], tmp_path: Path, name: str
) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [record(i, system=i < 3) for i in range(10)])
    counter = chat_token_counter(str(templates[name]))
    assert isinstance(counter, ChatTemplateCounter)
    manifest = prepare_dataset(settings_for(data), tmp_path / "out", count_tokens=counter)
    assert (manifest.counts.valid, manifest.counts.invalid) == (7, 3)
    assert manifest.counts.by_kind == {"system_message_unsupported": 3}
    problems = [
        json.loads(line) for line in (tmp_path / "out/problems.jsonl").read_text().splitlines()
    ]
    assert [p["ref"] for p in problems] == ["line 1", "line 2", "line 3"]
    assert problems[0]["message"].startswith(
        f"message 1: a system message, but the chat template of {templates[name]} has no system "
        "turn"
    )


def test_too_many_refused_system_messages_fail_with_the_reason(
    templates: dict[str, Path], tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [record(i, system=True) for i in range(4)])
    counter = chat_token_counter(str(templates["phi3-medium"]))
    with pytest.raises(DataValidationError) as caught:
        prepare_dataset(settings_for(data), tmp_path / "out", count_tokens=counter)
    assert "system_message_unsupported=4" in str(caught.value)
    assert not (tmp_path / "out").exists()
