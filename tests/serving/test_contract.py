"""The scoring contract, pure: every request shape, every rule, every error message.

Fast (no model, no torch): these pin down what clients may send and what they are told when
they get it wrong, word for word where the words are the interface.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from serving import contract
from serving.contract import (
    BadRequest,
    ChatMessage,
    ChatRequest,
    GenerationParams,
    TextRequest,
    parse_json,
    parse_request,
)

TUTORIAL_PARAMS: dict[str, Any] = {
    "temperature": 0.7,
    "max_new_tokens": 128,
    "do_sample": True,
    "return_full_text": True,
}
TUTORIAL: dict[str, Any] = {"input_data": ["Who founded Microsoft?"], "params": TUTORIAL_PARAMS}
USER = {"role": "user", "content": "Who founded Microsoft?"}
REPO = Path(__file__).resolve().parents[2]


def error_of(body: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_request(body if isinstance(body, str | bytes) else json.dumps(body))
    return str(caught.value)


# --------------------------------------------------------------------------- the three shapes


def test_tutorial_request_parses_as_text_with_its_params() -> None:
    request = parse_request(json.dumps(TUTORIAL))
    assert request == TextRequest(
        texts=("Who founded Microsoft?",),
        params=GenerationParams(
            max_new_tokens=128, do_sample=True, temperature=0.7, return_full_text=True
        ),
        form="text",
    )
    # Each text goes to the model as one user message.
    assert request.conversations() == [[USER]]


def test_chat_form_wrapped_and_bare_parse_the_same() -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        USER,
    ]
    wrapped = parse_request(
        json.dumps({"input_data": {"messages": messages}, "params": {"max_new_tokens": 5}})
    )
    bare = parse_request(json.dumps({"messages": messages, "params": {"max_new_tokens": 5}}))
    assert wrapped == bare
    assert isinstance(bare, ChatRequest)
    assert bare.messages[0] == ChatMessage("system", "Answer briefly.")
    assert bare.conversation() == messages
    assert bare.params.max_new_tokens == 5


def test_legacy_form_takes_parameters_inside_input_data() -> None:
    request = parse_request(
        {"input_data": {"input_string": ["a", "b"], "parameters": {"top_p": 0.9}}}
    )
    assert request == TextRequest(("a", "b"), GenerationParams(top_p=0.9), form="legacy")


def test_an_already_decoded_body_and_bytes_are_accepted() -> None:
    assert parse_request(TUTORIAL) == parse_request(json.dumps(TUTORIAL).encode())


def test_defaults_are_greedy_128_tokens_with_full_text() -> None:
    request = parse_request({"input_data": ["hi"]})
    assert request.params == GenerationParams()
    assert request.params.max_new_tokens == 128
    assert request.params.do_sample is False
    assert request.params.return_full_text is True
    # null is "the default", as clients often send it
    assert parse_request({"input_data": ["hi"], "params": {"top_p": None}}).params == (
        GenerationParams()
    )
    assert parse_request({"input_data": ["hi"], "params": None}).params == GenerationParams()


# --------------------------------------------------------------------------- responses


def test_text_response_prefixes_the_input_when_return_full_text() -> None:
    full = TextRequest(("Q1", "Q2"), GenerationParams(return_full_text=True))
    assert contract.text_response(full, ["A1", "A2"]) == ["Q1\nA1", "Q2\nA2"]
    bare = TextRequest(("Q1", "Q2"), GenerationParams(return_full_text=False))
    assert contract.text_response(bare, ["A1", "A2"]) == ["A1", "A2"]
    with pytest.raises(ValueError, match="1 replies for 2 texts"):
        contract.text_response(bare, ["A1"])


def test_chat_and_error_bodies() -> None:
    assert contract.chat_response("Bill Gates") == {"role": "assistant", "content": "Bill Gates"}
    assert contract.error_body("nope") == {"error": "nope"}


def test_generate_kwargs_pass_sampling_knobs_only_when_sampling() -> None:
    greedy = GenerationParams(max_new_tokens=7, temperature=1.5, top_p=0.5)
    assert greedy.generate_kwargs() == {
        "max_new_tokens": 7,
        "do_sample": False,
        "repetition_penalty": 1.0,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    sampled = GenerationParams(do_sample=True, temperature=1.5, top_p=0.5, top_k=40)
    assert sampled.generate_kwargs() == {
        "max_new_tokens": 128,
        "do_sample": True,
        "repetition_penalty": 1.0,
        "temperature": 1.5,
        "top_p": 0.5,
        "top_k": 40,
    }
    # no top_k asked for: the filter is off, not the model's default of 50
    assert GenerationParams(do_sample=True).generate_kwargs()["top_k"] == 0


# --------------------------------------------------------------------------- parameter rules


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"max_new_tokens": 100000},
            "params.max_new_tokens: must be an integer between 1 and 512, got 100000",
        ),
        (
            {"max_new_tokens": 0},
            "params.max_new_tokens: must be an integer between 1 and 512, got 0",
        ),
        (
            {"max_new_tokens": True},
            "params.max_new_tokens: must be an integer between 1 and 512, got true",
        ),
        (
            {"max_new_tokens": 12.0},
            "params.max_new_tokens: must be an integer between 1 and 512, got 12.0",
        ),
        (
            {"max_new_tokens": "12"},
            'params.max_new_tokens: must be an integer between 1 and 512, got "12"',
        ),
        (
            {"temperature": 0},
            "params.temperature: must be a number greater than 0 and at most 2 "
            "(for greedy decoding set do_sample to false), got 0",
        ),
        (
            {"temperature": 2.5},
            "params.temperature: must be a number greater than 0 and at most 2 "
            "(for greedy decoding set do_sample to false), got 2.5",
        ),
        (
            {"temperature": False},
            "params.temperature: must be a number greater than 0 and at most 2 "
            "(for greedy decoding set do_sample to false), got false",
        ),
        ({"top_p": 1.5}, "params.top_p: must be a number greater than 0 and at most 1, got 1.5"),
        ({"top_p": 0}, "params.top_p: must be a number greater than 0 and at most 1, got 0"),
        ({"top_k": 0}, "params.top_k: must be an integer between 1 and 1000, got 0"),
        (
            {"repetition_penalty": 3},
            "params.repetition_penalty: must be a number greater than 0 and at most 2, got 3",
        ),
        ({"seed": -1}, "params.seed: must be an integer between 0 and 4294967295, got -1"),
        ({"do_sample": "yes"}, 'params.do_sample: must be true or false, got "yes"'),
        ({"do_sample": 1}, "params.do_sample: must be true or false, got 1"),
        ({"return_full_text": 0}, "params.return_full_text: must be true or false, got 0"),
    ],
)
def test_bad_params_are_named_with_the_rule_and_the_value(
    params: dict[str, Any], message: str
) -> None:
    assert error_of({"input_data": ["hi"], "params": params}) == message


def test_unknown_param_is_named_with_the_known_ones() -> None:
    assert error_of({"input_data": ["hi"], "params": {"max_tokens": 5}}) == (
        'params: unknown parameter "max_tokens"; known: do_sample, max_new_tokens, '
        "repetition_penalty, return_full_text, seed, temperature, top_k, top_p"
    )
    assert error_of({"input_data": ["hi"], "params": {"b": 1, "a": 1}}).startswith(
        'params: unknown parameter "a" (and "b"); known: '
    )


def test_params_must_be_an_object() -> None:
    assert (
        error_of({"input_data": ["hi"], "params": [1]}) == "params: expected an object, got a list"
    )


def test_legacy_parameters_are_validated_under_their_own_name() -> None:
    body: dict[str, Any] = {"input_data": {"input_string": ["hi"], "parameters": {"top_p": 2}}}
    assert error_of(body) == (
        "input_data.parameters.top_p: must be a number greater than 0 and at most 1, got 2"
    )
    body = {"input_data": {"input_string": ["hi"]}, "params": {"top_p": 0.5}}
    assert error_of(body) == (
        "params: the legacy form takes its parameters in input_data.parameters; "
        "give them there only"
    )


def test_sampling_params_are_validated_even_when_greedy() -> None:
    # A bad value is a bad value: ignoring it would hide the client's mistake.
    assert error_of({"input_data": ["hi"], "params": {"do_sample": False, "temperature": 9}})


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input_data": []}, "input_data: expected at least one text, got an empty list"),
        (
            {"input_data": "hi"},
            (
                "input_data: expected a list of texts, {'messages': [...]} or "
                "{'input_string': [...]}; got a string"
            ),
        ),
        ({"input_data": [""]}, "input_data[0]: must be a non-empty string"),
        ({"input_data": ["ok", "  \n"]}, "input_data[1]: must be a non-empty string"),
        ({"input_data": ["ok", 3]}, "input_data[1]: expected a string, got a number"),
        ({"input_data": [None]}, "input_data[0]: expected a string, got null"),
        (
            {"input_data": [USER]},
            (
                "input_data[0]: expected a string, got an object; for chat messages use "
                "{'input_data': {'messages': [...]}}"
            ),
        ),
        ({"input_data": ["x"] * 17}, "input_data: at most 16 texts per request, got 17"),
        ({"input_data": ["x" * 8001]}, "input_data[0]: at most 8000 characters, got 8001"),
        (
            {"input_data": {"input_string": "hi"}},
            "input_data.input_string: expected a list of strings, got a string",
        ),
        (
            {"input_data": {"prompt": "hi"}},
            (
                "input_data: expected a list of texts, {'messages': [...]} or "
                "{'input_string': [...]}; got an object with keys \"prompt\""
            ),
        ),
        (
            {"input_data": {"input_string": ["hi"], "extra": 1}},
            'input_data: unknown key "extra"; allowed: input_string, parameters',
        ),
    ],
)
def test_bad_inputs(body: dict[str, Any], message: str) -> None:
    assert error_of(body) == message


def test_limits_are_inclusive() -> None:
    assert len(parse_request({"input_data": ["x" * 8000] * 16}).texts) == 16  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages: expected at least one message, got an empty list"),
        ({"role": "user"}, "messages: expected a list of messages, got an object"),
        (["hi"], "messages[0]: expected an object with 'role' and 'content', got a string"),
        ([{"role": "user"}], "messages[0]: missing 'content'"),
        ([{"content": "hi"}], "messages[0]: missing 'role'"),
        (
            [{"role": "bot", "content": "hi"}],
            'messages[0].role: must be one of system, user, assistant, got "bot"',
        ),
        ([{"role": "user", "content": ""}], "messages[0].content: must be a non-empty string"),
        (
            [{"role": "user", "content": ["hi"]}],
            "messages[0].content: expected a string, got a list",
        ),
        (
            [{"role": "user", "content": "hi", "name": "x"}],
            'messages[0]: unknown key "name"; allowed: content, role',
        ),
        (
            [USER, {"role": "system", "content": "late"}, USER],
            "messages[1].role: a system message may only be the first message",
        ),
        (
            [USER, {"role": "assistant", "content": "Bill Gates"}],
            'messages: the last message must be from the user, got "assistant"',
        ),
        (
            [{"role": "system", "content": "be brief"}],
            'messages: the last message must be from the user, got "system"',
        ),
        ([USER] * 65, "messages: at most 64 messages, got 65"),
        (
            [{"role": "user", "content": "x" * 9000}, {"role": "user", "content": "y" * 9000}],
            "messages: at most 16000 characters over all messages, got 18000",
        ),
    ],
)
def test_bad_messages(messages: Any, message: str) -> None:
    assert error_of({"messages": messages}) == message
    wrapped = error_of({"input_data": {"messages": messages}})
    assert wrapped == "input_data." + message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "request body is empty; expected a JSON object"),
        ("   ", "request body is empty; expected a JSON object"),
        ('{"input_data": [', "request body is not valid JSON: Expecting value: line 1 column 17"),
        (
            '{"input_data": ["hi"], "params": {"temperature": NaN}}',
            "request body: NaN is not a valid JSON number",
        ),
        (
            '["hi"]',
            "request body: expected a JSON object with 'input_data' or 'messages', got a list",
        ),
        ("{}", "request: missing 'input_data' (or 'messages' for the chat form); got keys none"),
        (
            '{"inputs": ["hi"]}',
            "request: missing 'input_data' (or 'messages' for the chat form); got keys \"inputs\"",
        ),
        (
            '{"input_data": ["hi"], "parameters": {}}',
            'request: unknown key "parameters"; allowed: input_data, params',
        ),
        (
            '{"messages": [], "input_data": ["hi"]}',
            'request: unknown key "input_data"; allowed: messages, params',
        ),
    ],
)
def test_bad_bodies(body: str, message: str) -> None:
    assert error_of(body).startswith(message)


def test_non_utf8_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="request body is not UTF-8"):
        parse_json(b"\xff\xfe{}")


def test_bad_request_is_a_value_error() -> None:
    # Callers that only know ValueError still see a client error, not a crash.
    assert issubclass(BadRequest, ValueError)


def test_long_values_are_shortened_in_messages() -> None:
    message = error_of({"input_data": ["hi"], "params": {"do_sample": "y" * 500}})
    assert message == 'params.do_sample: must be true or false, got "' + "y" * 76 + "..."


# --------------------------------------------------------------------------- the pydantic models


def test_models_forbid_unknown_keys_and_validate_when_built_in_code() -> None:
    # The same models that check requests check code: a typo is an error, not a default.
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationParams(max_tokens=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="name"):
        ChatMessage("user", "hi", name="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        ChatMessage("robot", "hi")  # type: ignore[arg-type]


def test_generation_params_stay_a_frozen_hashable_dataclass() -> None:
    # serving/score.py groups requests by dataclasses.replace(params, ...) as a dict key.
    params = GenerationParams(do_sample=True, seed=7)
    assert dataclasses.is_dataclass(params)
    assert dataclasses.replace(params, seed=8) == GenerationParams(do_sample=True, seed=8)
    assert hash(params) == hash(GenerationParams(do_sample=True, seed=7))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1  # type: ignore[misc]
    # Integers are accepted where numbers are, and stored as floats.
    assert GenerationParams(temperature=1).temperature == 1.0


def test_every_parameter_has_its_message() -> None:
    names = {field.name for field in dataclasses.fields(GenerationParams)}
    assert set(contract._PARAM_RULES) == names


def test_the_request_json_schema_describes_the_three_shapes() -> None:
    schema = contract.request_json_schema()
    json.dumps(schema)  # plain JSON
    shapes = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["oneOf"]}
    assert shapes == {"_TextBody", "_ChatBody", "_WrappedChatBody", "_LegacyBody"}
    defs = schema["$defs"]
    assert all(defs[name]["additionalProperties"] is False for name in shapes)
    params = defs["GenerationParams"]
    assert params["additionalProperties"] is False
    assert params["properties"]["max_new_tokens"]["maximum"] == contract.MAX_NEW_TOKENS
    assert params["properties"]["temperature"]["minimum"] == contract.MIN_LOGIT_DIVISOR
    assert defs["ChatMessage"]["properties"]["role"]["enum"] == list(contract.ROLES)
    assert defs["_TextBody"]["properties"]["input_data"]["maxItems"] == contract.MAX_INPUTS
    assert defs["_LegacyBody"]["properties"]["params"]["not"] == {}


# --------------------------------------------------------------------------- corner cases


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A key that is not valid Unicode is still an unknown key, shown escaped.
        (
            {"input_data": ["hi"], "\udfff": 1},
            'request: unknown key "\\udfff"; allowed: input_data, params',
        ),
        (
            {"input_data": ["hi"], "params": {"\udfff": 1}},
            'params: unknown parameter "\\udfff"; known: do_sample, max_new_tokens, '
            "repetition_penalty, return_full_text, seed, temperature, top_k, top_p",
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "\udfff": 1}]},
            'messages[0]: unknown key "\\udfff"; allowed: content, role',
        ),
        # Decoded bodies can hold what JSON cannot: still a 400 that says why.
        (
            {"input_data": ["hi"], "params": {"top_p": float("nan")}},
            "params.top_p: must be a number greater than 0 and at most 1, got NaN",
        ),
        (
            {"input_data": ["hi"], "params": {"seed": 10**400}},
            "params.seed: must be an integer between 0 and 4294967295, got 1" + "0" * 76 + "...",
        ),
        (
            {"input_data": ["hi"], "params": {"repetition_penalty": 0.001}},
            "params.repetition_penalty: must be at least 0.01, as smaller values overflow "
            "sampling, got 0.001",
        ),
    ],
)
def test_odd_keys_and_values(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(body)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # An object's unknown keys come before anything inside it...
        (
            {"input_data": "hi", "stream": True},
            'request: unknown key "stream"; allowed: input_data, params',
        ),
        (
            {"messages": [{"role": "bot", "content": "", "name": "x"}]},
            'messages[0]: unknown key "name"; allowed: content, role',
        ),
        (
            {"input_data": {"input_string": [""], "x": 1}, "params": {}},
            'input_data: unknown key "x"; allowed: input_string, parameters',
        ),
        # ...then its missing keys, in field order...
        ({"messages": [{}]}, "messages[0]: missing 'role'"),
        ({"messages": [{"role": "bot"}]}, "messages[0]: missing 'content'"),
        # ...then its fields in order, role before content.
        (
            {"messages": [{"content": "", "role": "bot"}]},
            'messages[0].role: must be one of system, user, assistant, got "bot"',
        ),
        (
            {"input_data": {"input_string": [""]}, "params": {}},
            "params: the legacy form takes its parameters in input_data.parameters; "
            "give them there only",
        ),
        (
            {"input_data": ["ok", "", 3]},
            "input_data[1]: must be a non-empty string",
        ),
    ],
)
def test_with_several_problems_the_documented_first_is_reported(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(body)
    assert str(caught.value) == message


def test_any_mapping_is_an_object() -> None:
    body = MappingProxyType(
        {"messages": [MappingProxyType(USER)], "params": MappingProxyType({"top_k": 5})}
    )
    request = parse_request(body)
    assert isinstance(request, ChatRequest)
    assert request.conversation() == [USER]
    assert request.params.top_k == 5


def test_the_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, serving.contract; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"
