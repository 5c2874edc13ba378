"""Helpers for the reliability tests: the live endpoint they talk to, answer checks, and the
hypothesis strategies of the fuzz tests (request bodies: valid-ish shapes with random types and
values, and raw bytes). Imported by conftest.py and the test modules (never `from conftest`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from endpoint_cleanup import cleanup_endpoints
from hypothesis import strategies as st

from backends.local.endpoint.control import LocalEndpoints
from finetune_phi.workspace import DEPLOYMENT_HEADER

ENDPOINT = "reliability"
DEPLOYMENT = "blue"
# Generation happens only on a request that passes validation: keep those tiny.
GOOD_REQUEST: dict[str, Any] = {
    "input_data": ["Who founded Microsoft?"],
    "params": {"max_new_tokens": 2},
}


@dataclass
class LiveEndpoint:
    """A real front and one real deployment server process (`python -m serving.server`) with
    the tiny model, started by the project's control plane."""

    control: LocalEndpoints
    front_url: str  # .../score on the front
    key: str
    direct_url: str  # http://127.0.0.1:<deployment port>
    client: httpx.Client

    def url(self, target: str, path: str = "/score") -> str:
        if target == "front":
            return self.front_url.rsplit("/score", 1)[0] + path
        return self.direct_url + path

    def auth(self, target: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if target == "front" else {}

    def assert_healthy(self, target: str) -> None:
        """The deployment is ready and a good request is still answered, on `target`."""
        readiness = self.client.get(self.direct_url + "/readiness")
        assert readiness.status_code == 200, readiness.text
        if target == "front":
            health = self.client.get(self.url("front", "/health"))
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        good = self.client.post(self.url(target), json=GOOD_REQUEST, headers=self.auth(target))
        assert good.status_code == 200, good.text
        assert_good_answer(good.json())
        if target == "front":
            assert good.headers[DEPLOYMENT_HEADER] == DEPLOYMENT


def assert_good_answer(answer: Any) -> None:
    """The shapes a 200 may have: a list of strings (texts) or one assistant message (chat)."""
    if isinstance(answer, list):
        assert answer and all(isinstance(text, str) for text in answer), answer
    else:
        assert isinstance(answer, dict) and answer.get("role") == "assistant", answer
        assert isinstance(answer.get("content"), str), answer


def assert_error_body(response: Any) -> str:
    """A 4xx answer is JSON `{"error": "<non-empty message>"}`; the message."""
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.headers,
        response.text[:300],
    )
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    return str(body["error"])


def cleanup(control: LocalEndpoints) -> None:
    """Stop every endpoint of this control plane and anything it started (see endpoint_cleanup)."""
    cleanup_endpoints(control)


# --------------------------------------------------------------------------- fuzzing

# Any JSON value, small. Floats without NaN/inf: JSON has none (those are sent as raw bytes).
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
# Anything but null where null would mean "the default" (128 new tokens: too slow to fuzz).
NOT_NULL = JSON_VALUES.filter(lambda value: value is not None)

# Texts: ordinary, empty, blank, control characters, lone surrogates, invisible marks, long.
ODD_CHARACTERS = st.characters(categories=["L", "N", "P", "Zs", "Cc", "Cf", "Cs", "So"])
TEXTS = st.one_of(
    st.text(max_size=30),
    st.text(ODD_CHARACTERS, max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\n\t",
            "\u202e\u200f",
            "\u200b",
            "a\x00b",
            "\ud800",
            "Who founded Microsoft?",
            "x" * 8001,
            "word " * 1500,
        ]
    ),
)
TEXT_LISTS = st.one_of(
    st.lists(TEXTS, max_size=3),
    st.lists(st.sampled_from(["hi", "ok"]), min_size=16, max_size=17),
    NOT_NULL,
)
ROLES = st.sampled_from(["system", "user", "assistant", "robot", "", "USER"]) | JSON_VALUES
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES, "content": TEXTS | JSON_VALUES},
    optional={"name": JSON_VALUES},
)
MESSAGES = st.one_of(
    st.lists(MESSAGE, max_size=3),
    st.lists(st.just({"role": "user", "content": "hi"}), min_size=64, max_size=65),
    st.lists(JSON_VALUES, max_size=3),
    NOT_NULL,
)
# Numbers at the edges of floats and past them: subnormals, huge, a 400-digit integer.
EXTREMES = st.sampled_from([0, -0.0, 5e-324, 1e-45, 1e-300, 1e300, 10**400, -(10**400)])
PARAMS = st.fixed_dictionaries(
    # Always a small cap, or something that is refused (a request that generates stays fast).
    {"max_new_tokens": st.integers(min_value=1, max_value=3) | NOT_NULL},
    optional={
        "do_sample": st.booleans() | JSON_VALUES,
        "temperature": EXTREMES | st.floats(min_value=-1, max_value=3) | st.floats() | JSON_VALUES,
        "top_p": EXTREMES | st.floats(min_value=-0.5, max_value=1.5) | JSON_VALUES,
        "top_k": EXTREMES | st.integers(min_value=-5, max_value=2000) | JSON_VALUES,
        "repetition_penalty": EXTREMES | st.floats(min_value=-1, max_value=3) | JSON_VALUES,
        "seed": EXTREMES | st.integers(min_value=-10, max_value=2**33) | JSON_VALUES,
        "return_full_text": st.booleans() | JSON_VALUES,
    },
)
# Params that are not an object, or that have an unknown parameter.
PARAMS_OR_JUNK = (
    PARAMS
    | NOT_NULL
    | PARAMS.flatmap(lambda params: JSON_VALUES.map(lambda value: {**params, "max_tokens": value}))
)

# Valid requests with parameters anywhere in their allowed ranges, edges included (the
# smallest temperature and repetition penalty, sampling on): what reaches the model.
VALID_TEXTS = st.text(st.characters(categories=["L", "N", "P", "Zs", "So"]), max_size=30).filter(
    lambda text: any(ch.isalnum() for ch in text)
)
VALID_PARAMS = st.fixed_dictionaries(
    {"max_new_tokens": st.integers(min_value=1, max_value=3)},
    optional={
        "do_sample": st.booleans(),
        "temperature": st.sampled_from([0.01, 2.0]) | st.floats(min_value=0.01, max_value=2),
        "top_p": st.sampled_from([5e-324, 1.0]) | st.floats(min_value=1e-9, max_value=1),
        "top_k": st.integers(min_value=1, max_value=1000),
        "repetition_penalty": st.sampled_from([0.01, 2.0]) | st.floats(min_value=0.01, max_value=2),
        "seed": st.integers(min_value=0, max_value=2**32 - 1),
        "return_full_text": st.booleans(),
    },
)
VALID_MESSAGES = st.tuples(
    st.lists(
        st.fixed_dictionaries({"role": st.just("system"), "content": VALID_TEXTS}), max_size=1
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"]), "content": VALID_TEXTS}
        ),
        max_size=3,
    ),
    VALID_TEXTS,
).map(lambda parts: [*parts[0], *parts[1], {"role": "user", "content": parts[2]}])
VALID_BODIES = st.one_of(
    st.fixed_dictionaries(
        {"input_data": st.lists(VALID_TEXTS, min_size=1, max_size=3), "params": VALID_PARAMS}
    ),
    st.fixed_dictionaries({"messages": VALID_MESSAGES, "params": VALID_PARAMS}),
    st.fixed_dictionaries(
        {"input_data": st.fixed_dictionaries({"messages": VALID_MESSAGES}), "params": VALID_PARAMS}
    ),
    st.fixed_dictionaries(
        {
            "input_data": st.fixed_dictionaries(
                {
                    "input_string": st.lists(VALID_TEXTS, min_size=1, max_size=3),
                    "parameters": VALID_PARAMS,
                }
            )
        }
    ),
)

# A valid request with exactly one thing wrong: one parameter (sampling on or off), or one text.
ONE_BAD_PARAM = st.tuples(
    VALID_PARAMS,
    st.sampled_from(["do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed"]),
    EXTREMES | NOT_NULL,
    st.booleans(),
).map(lambda t: {**t[0], "do_sample": t[3], t[1]: t[2]})
ONE_BAD_BODIES = st.one_of(
    st.fixed_dictionaries(
        {"input_data": st.lists(VALID_TEXTS, min_size=1, max_size=2), "params": ONE_BAD_PARAM}
    ),
    st.fixed_dictionaries({"messages": VALID_MESSAGES, "params": ONE_BAD_PARAM}),
    st.tuples(st.lists(VALID_TEXTS, max_size=2), TEXTS, VALID_PARAMS).map(
        lambda t: {"input_data": [*t[0], t[1]], "params": t[2]}
    ),
    st.tuples(VALID_MESSAGES, TEXTS, VALID_PARAMS).map(
        lambda t: {"messages": [*t[0][:-1], {"role": "user", "content": t[1]}], "params": t[2]}
    ),
    st.tuples(VALID_MESSAGES, ROLES, VALID_PARAMS).map(
        lambda t: {"messages": [{"role": t[1], "content": "hi"}, *t[0]], "params": t[2]}
    ),
)

# Valid-ish shapes with random types and values everywhere.
JUNK_BODIES = [
    st.fixed_dictionaries({"input_data": TEXT_LISTS, "params": PARAMS_OR_JUNK}),
    st.fixed_dictionaries({"input_data": st.fixed_dictionaries({"messages": MESSAGES})}).flatmap(
        lambda body: PARAMS_OR_JUNK.map(lambda params: {**body, "params": params})
    ),
    st.fixed_dictionaries({"messages": MESSAGES, "params": PARAMS_OR_JUNK}),
    st.fixed_dictionaries(
        {
            "input_data": st.fixed_dictionaries(
                {"input_string": TEXT_LISTS, "parameters": PARAMS_OR_JUNK}
            )
        }
    ),
    # Right keys, wrong everything else; and a stray key next to a good request.
    st.dictionaries(
        st.sampled_from(["input_data", "messages", "params", "parameters", "input_string"]),
        NOT_NULL,
        max_size=3,
    ),
    st.fixed_dictionaries({"input_data": st.just(["hi"]), "params": PARAMS}).flatmap(
        lambda body: st.dictionaries(st.text(max_size=8), JSON_VALUES, min_size=1, max_size=2).map(
            lambda extra: {**extra, **body} if set(extra) <= set(body) else {**body, **extra}
        )
    ),
    JSON_VALUES,
]
# Weighted (one_of would treat a repeated strategy as one branch): 3 valid : 5 one-bad : 7 junk.
BODIES = st.sampled_from([VALID_BODIES] * 3 + [ONE_BAD_BODIES] * 5 + JUNK_BODIES).flatmap(
    lambda family: family
)

_SEEDS = [
    json.dumps(GOOD_REQUEST).encode(),
    b'{"messages": [{"role": "user", "content": "hi"}], "params": {"max_new_tokens": 1}}',
    b'{"input_data": {"input_string": ["a"], "parameters": {"max_new_tokens": 1}}}',
]


def _mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`seed` with each (position, bytes to delete, bytes to insert) applied in turn."""
    data = bytearray(seed)
    for position, delete, insert in edits:
        at = position % (len(data) + 1)
        data[at : at + delete] = insert
    return bytes(data)


RAW_BODIES = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _mutate,
        st.sampled_from(_SEEDS),
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=200),
                st.integers(min_value=0, max_value=3),
                st.binary(max_size=3) | st.sampled_from([b"[", b"{", b'"', b"\\u", b"NaN", b"\\"]),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    st.sampled_from([b"[" * 5000, b'{"a":' * 3000, b"1" * 5000, b"\xef\xbb\xbf{}", b"\x00"]),
)


def encode(body: Any) -> bytes:
    """A generated body as JSON bytes; lone surrogates go as `\\ud800` escapes, as JSON allows."""
    return json.dumps(body).encode()
