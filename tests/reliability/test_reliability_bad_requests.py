"""The bad request catalogue: each kind of bad request, over real HTTP, straight to a deployment
server process and through the endpoint's front with a valid key.

Every one must be answered with a 4xx JSON `{"error": ...}` whose message names the problem,
and must leave the server healthy: ready, and still answering a good request. RELIABILITY.md
lists the same table (kind -> status -> message): with `-s`, each case prints its row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from reliability_helpers import DEPLOYMENT, LiveEndpoint, assert_error_body

from finetune_phi.workspace import DEPLOYMENT_HEADER

JSON = {"content-type": "application/json"}
CONTEXT = r"input is \d+ tokens; with max_new_tokens \d+ that exceeds the model's context of 2048"


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def text_request(*texts: Any, **params: Any) -> bytes:
    return body({"input_data": list(texts), "params": {"max_new_tokens": 2, **params}})


def chat_request(*messages: dict[str, Any]) -> bytes:
    return body({"messages": list(messages), "params": {"max_new_tokens": 2}})


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


@dataclass(frozen=True)
class Bad:
    kind: str
    content: bytes
    status: int
    message: str  # a regular expression the error message must match (re.search)
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    method: str = "POST"
    path: str = "/score"
    targets: tuple[str, ...] = ("direct", "front")
    # The front answers this one itself rather than passing it to the deployment.
    front_answers: bool = False


CATALOGUE = [
    # ---- the body is not a JSON object
    Bad("invalid JSON", b'{"input_data": ["hi"', 400, "request body is not valid JSON"),
    Bad("empty body", b"", 400, "request body is empty; expected a JSON object"),
    Bad("not UTF-8", b'\xff\xfe{"input_data": []}', 400, "request body is not UTF-8"),
    Bad(
        "wrong content type (text/plain, JSON body)",
        text_request("hi"),
        415,
        "Content-Type must be application/json, got 'text/plain'",
        headers={"content-type": "text/plain"},
    ),
    Bad(
        "wrong content type (form)",
        b"input_data=hi",
        415,
        "Content-Type must be application/json, got 'application/x-www-form-urlencoded'",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Bad(
        "JSON, but not an object",
        body(["hi"]),
        400,
        "expected a JSON object with 'input_data' or 'messages', got a list",
    ),
    Bad(
        "NaN literal", b'{"input_data": ["hi"], "params": {"temperature": NaN}}', 400, "NaN is not"
    ),
    Bad(
        "number of 5000 digits",
        b'{"input_data": ["hi"], "params": {"seed": ' + b"7" * 5000 + b"}}",
        400,
        "a number has more than 4300 digits",
    ),
    Bad(
        "deeply nested JSON",
        b'{"input_data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "nested too deeply: at most 32 levels",
    ),
    Bad(
        "oversized body (over 1 MiB)",
        body({"input_data": ["x" * (1 << 20)]}),
        413,
        "request body over 1048576 bytes",
        front_answers=True,  # the front enforces the deployment's cap before forwarding
    ),
    # ---- shapes and types
    Bad(
        "missing input_data",
        body({"inputs": ["hi"]}),
        400,
        r"missing 'input_data' \(or 'messages' for the chat form\); got keys \"inputs\"",
    ),
    Bad(
        "unknown top-level key",
        body({"input_data": ["hi"], "stream": True}),
        400,
        r"request: unknown key \"stream\"",
    ),
    Bad(
        "input_data of the wrong type",
        body({"input_data": "hi"}),
        400,
        r"input_data: expected a list of texts.*got a string",
    ),
    Bad("a text that is a number", text_request(42), 400, r"input_data\[0\]: expected a string"),
    Bad(
        "params of the wrong type",
        body({"input_data": ["hi"], "params": [2]}),
        400,
        "params: expected an object, got a list",
    ),
    Bad(
        "max_new_tokens as a string",
        text_request("hi", max_new_tokens="16"),
        400,
        r'params.max_new_tokens: must be an integer between 1 and 512, got "16"',
    ),
    Bad(
        "do_sample as a string",
        text_request("hi", do_sample="yes"),
        400,
        r'params.do_sample: must be true or false, got "yes"',
    ),
    Bad(
        "unknown parameter",
        text_request("hi", max_tokens=5),
        400,
        r"params: unknown parameter \"max_tokens\"",
    ),
    Bad(
        "legacy shape with params outside",
        body({"input_data": {"input_string": ["hi"]}, "params": {"max_new_tokens": 2}}),
        400,
        "the legacy form takes its parameters in input_data.parameters",
    ),
    # ---- empty
    Bad("no texts", body({"input_data": []}), 400, "expected at least one text, got an empty list"),
    Bad(
        "empty messages",
        body({"messages": []}),
        400,
        "messages: expected at least one message, got an empty list",
    ),
    Bad("empty string input", text_request(""), 400, r"input_data\[0\]: must be a non-empty"),
    Bad("blank input", text_request(" \n\t "), 400, r"input_data\[0\]: must be a non-empty"),
    Bad(
        "empty message content",
        chat_request(user("")),
        400,
        r"messages\[0\].content: must be a non-empty string",
    ),
    # ---- too big
    Bad(
        "text over 8000 characters",
        text_request("x" * 8001),
        400,
        r"input_data\[0\]: at most 8000 characters, got 8001",
    ),
    Bad("prompt beyond the context window", text_request("word " * 1500), 400, CONTEXT),
    Bad(
        "chat beyond the context window",
        chat_request(user("word " * 1500), {"role": "assistant", "content": "ok"}, user("go")),
        400,
        CONTEXT,
    ),
    Bad(
        "huge max_new_tokens",
        text_request("hi", max_new_tokens=100_000),
        400,
        "params.max_new_tokens: must be an integer between 1 and 512, got 100000",
    ),
    Bad(
        "zero max_new_tokens",
        text_request("hi", max_new_tokens=0),
        400,
        "params.max_new_tokens: must be an integer between 1 and 512, got 0",
    ),
    Bad(
        "too many inputs",
        text_request(*["hi"] * 17),
        400,
        "input_data: at most 16 texts per request, got 17",
    ),
    Bad(
        "too many messages",
        chat_request(*[user("hi")] * 65),
        400,
        "messages: at most 64 messages, got 65",
    ),
    # ---- numbers out of range
    Bad(
        "negative temperature",
        text_request("hi", do_sample=True, temperature=-0.5),
        400,
        "params.temperature: must be a number greater than 0 and at most 2 .*got -0.5",
    ),
    Bad(
        "zero temperature",
        text_request("hi", do_sample=True, temperature=0),
        400,
        "params.temperature: must be a number greater than 0 and at most 2 .*got 0",
    ),
    Bad(
        "temperature too small to sample with",
        text_request("hi", do_sample=True, temperature=1e-45),
        400,
        "params.temperature: must be at least 0.01, as smaller values overflow sampling",
    ),
    Bad(
        "temperature as a 400-digit integer",
        text_request("hi", do_sample=True, temperature=10**400),
        400,
        "params.temperature: must be a number greater than 0 and at most 2",
    ),
    Bad(
        "repetition penalty too small",
        text_request("hi", do_sample=True, repetition_penalty=1e-40),
        400,
        "params.repetition_penalty: must be at least 0.01",
    ),
    Bad(
        "top_p above 1",
        text_request("hi", do_sample=True, top_p=1.5),
        400,
        "params.top_p: must be a number greater than 0 and at most 1, got 1.5",
    ),
    Bad(
        "top_p zero",
        text_request("hi", do_sample=True, top_p=0),
        400,
        "params.top_p: must be a number greater than 0 and at most 1, got 0",
    ),
    Bad(
        "negative seed",
        text_request("hi", do_sample=True, seed=-1),
        400,
        "params.seed: must be an integer between 0 and 4294967295, got -1",
    ),
    # ---- odd unicode
    Bad(
        "lone surrogate (escaped in JSON)",
        b'{"input_data": ["\\ud83d"], "params": {"max_new_tokens": 2}}',
        400,
        r"input_data\[0\]: not valid Unicode: lone surrogate U\+D83D at index 0",
    ),
    Bad(
        "lone surrogate as a role",
        b'{"messages": [{"role": "\\udfff", "content": "hi"}]}',
        400,
        r"messages\[0\].role: must be one of system, user, assistant, got \"\\udfff\"",
    ),
    Bad(
        "NUL in a text",
        text_request("Who\x00founded"),
        400,
        r"input_data\[0\]: control character U\+0000 at index 3",
    ),
    Bad(
        "only right-to-left marks",
        text_request("\u202e\u200f"),
        400,
        r"input_data\[0\]: no visible characters.*U\+202E",
    ),
    Bad(
        "only zero-width spaces",
        chat_request(user("\u200b\u200b")),
        400,
        r"messages\[0\].content: no visible characters",
    ),
    # ---- chat rules
    Bad(
        "unknown role",
        chat_request({"role": "robot", "content": "hi"}),
        400,
        r"messages\[0\].role: must be one of system, user, assistant, got \"robot\"",
    ),
    Bad(
        "system message not first",
        chat_request(user("hi"), {"role": "system", "content": "be brief"}, user("hi")),
        400,
        r"messages\[1\].role: a system message may only be the first message",
    ),
    Bad(
        "last message not the user's",
        chat_request(user("hi"), {"role": "assistant", "content": "hello"}),
        400,
        r"the last message must be from the user, got \"assistant\"",
    ),
    Bad(
        "message without content",
        chat_request({"role": "user"}),
        400,
        r"messages\[0\]: missing 'content'",
    ),
    # ---- routing and HTTP
    Bad(
        "unknown deployment in azureml-model-deployment",
        text_request("hi"),
        404,
        "no deployment named 'purple' on this endpoint",
        headers={**JSON, DEPLOYMENT_HEADER: "purple"},
        targets=("front",),
    ),
    Bad("wrong method (GET /score)", b"", 405, "GET is not allowed on /score", method="GET"),
    Bad(
        "wrong method (PUT /score)",
        text_request("hi"),
        405,
        "PUT is not allowed on /score",
        method="PUT",
    ),
    Bad("wrong path", text_request("hi"), 404, "no route /scoring", path="/scoring"),
]

CASES = [
    pytest.param(bad, target, id=f"{target}: {bad.kind}")
    for bad in CATALOGUE
    for target in bad.targets
]


def test_the_catalogue_has_every_kind_the_issue_asks_for() -> None:
    kinds = {bad.kind for bad in CATALOGUE}
    assert len(kinds) == len(CATALOGUE) >= 15


@pytest.mark.parametrize(("bad", "target"), CASES)
def test_bad_request_is_a_4xx_that_names_the_problem(
    live_endpoint: LiveEndpoint, bad: Bad, target: str
) -> None:
    response = live_endpoint.client.request(
        bad.method,
        live_endpoint.url(target, bad.path),
        content=bad.content,
        headers={**bad.headers, **live_endpoint.auth(target)},
    )

    assert response.status_code == bad.status, response.text[:500]
    message = assert_error_body(response)
    assert re.search(bad.message, message), message
    shown = message if len(message) <= 150 else message[:147] + "..."
    print(f"\n| {bad.kind} | {target} | {response.status_code} | `{shown}` |")  # RELIABILITY.md
    if target == "front" and bad.front_answers:
        assert DEPLOYMENT_HEADER not in response.headers
    elif target == "front" and bad.status != 404 and bad.path == "/score" and bad.method == "POST":
        assert response.headers[DEPLOYMENT_HEADER] == DEPLOYMENT  # the deployment answered it
    live_endpoint.assert_healthy(target)
