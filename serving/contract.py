"""The scoring contract: parse and validate a request body, shape the response. Pure Python.

This module decides what the endpoint accepts and what it answers; it must not import torch,
transformers or anything else heavy, so it is cheap to test and to reuse in clients (its one
dependency is pydantic, which the serving environments have anyway). The scoring script
(`serving/score.py`) turns a parsed request into generation calls.

Three request shapes are accepted (JSON objects; unknown keys anywhere are errors):

1. The tutorial's (what its Prompt flow tool sends)::

       {"input_data": ["Who founded Microsoft?", ...],
        "params": {"temperature": 0.7, "max_new_tokens": 128, "do_sample": true,
                   "return_full_text": true}}

   Answer: a JSON list with one string per input text, in order. Each text is sent to the model
   as ONE USER MESSAGE through the model's chat template (Phi-3 is a chat model: raw text
   without the template makes it ramble on instead of answering). With `return_full_text`
   (the default, as in Hugging Face's text-generation pipeline) the answer is the input text,
   a newline, then the generated reply; with `false` it is the generated reply alone.

2. The chat form, either wrapped or bare::

       {"input_data": {"messages": [{"role": "user", "content": "..."}]}, "params": {...}}
       {"messages": [{"role": "user", "content": "..."}], "params": {...}}

   Answer: one message, `{"role": "assistant", "content": "..."}`. Messages are
   `{"role": "system" | "user" | "assistant", "content": non-empty string}`; a system message
   may only come first and the last message must be the user's. `return_full_text` is accepted
   and ignored here: the answer is always the new assistant message alone.

3. The legacy Azure ML shape::

       {"input_data": {"input_string": ["...", ...], "parameters": {...}}}

   Answer: as the tutorial's, a list of strings (the texts are treated the same way).

Generation parameters (`params`, or `parameters` in the legacy shape), all optional:

    max_new_tokens      integer, 1..512, default 128
    do_sample           boolean, default false (greedy decoding: same request, same answer)
    temperature         number, 0.01 <= t <= 2, default 0.7; used only when do_sample is true
    top_p               number, 0 < p <= 1, default 1.0; used only when do_sample is true
    top_k               integer, 1..1000, default none (no top-k filter); only when sampling
    repetition_penalty  number, 0.01 <= r <= 2, default 1.0 (no penalty)
    seed                integer, 0..2**32-1, default none; with do_sample, makes sampling
                        reproducible
    return_full_text    boolean, default true; texts only (see above)

A parameter given as null takes its default, as does `params: null`. Types are strict: `true`
is not an integer, `12.0` is not a token count, `"12"` is not a number.

Temperature and repetition penalty divide the logits: tiny values overflow float32 into
inf/NaN, which sampling cannot draw from (1e-45 did: a 500, not an answer); 0.01 leaves a wide
margin.

Texts and message contents must be valid Unicode (no lone surrogates, which JSON's `\ud800`
escapes can produce), hold no control characters other than tab, newline and carriage return
(NUL and the like are never text), and have at least one visible character (whitespace and
invisible format characters such as right-to-left marks alone are as empty as ""). Such
characters inside ordinary text are fine. A body may nest arrays and objects at most
MAX_JSON_DEPTH deep.

How: the shapes are pydantic models (`extra="forbid"`, strict field types and constraints, a
discriminator that picks the shape, validators for the text and chat rules);
`request_json_schema()` gives their JSON schema. Decoding the body stays hand-written
(`parse_json`), as do the message texts: pydantic's own messages do not say what the field
allows in the client's terms, so `parse_request` turns its first error into ours.

Every problem raises `BadRequest` with a message that names the field, says what is allowed
and shows what was sent, e.g.
`params.max_new_tokens: must be an integer between 1 and 512, got 100000`. With several
problems one is reported: an object's unknown keys first, then its missing keys, then its
fields in the order listed here (role before content, parameters as in the table), list items
in order; the rules over a whole chat (system first, total length, the user's last) once
every message in it is valid.
"""

from __future__ import annotations

import json
import re
import sys
import typing
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import dataclasses as pydantic_dataclasses
from pydantic_core import ErrorDetails, PydanticCustomError

# Caps: one model on a CPU answers one request at a time, so a request must stay small.
MAX_NEW_TOKENS: Final = 512
DEFAULT_MAX_NEW_TOKENS: Final = 128
MAX_TEMPERATURE: Final = 2.0
DEFAULT_TEMPERATURE: Final = 0.7
MAX_TOP_K: Final = 1000
MAX_REPETITION_PENALTY: Final = 2.0
MAX_SEED: Final = 2**32 - 1
MAX_INPUTS: Final = 16  # texts in one request
MAX_INPUT_CHARS: Final = 8_000  # characters in one text
MAX_MESSAGES: Final = 64  # messages in one chat
MAX_CHAT_CHARS: Final = 16_000  # characters over all messages of one chat
MAX_JSON_DEPTH: Final = 32  # nested arrays/objects in a body; a valid request needs 4
# The smallest temperature / repetition penalty: they divide the logits, and tiny values
# overflow float32 (inf/NaN), which sampling fails on; this one leaves a wide margin.
MIN_LOGIT_DIVISOR: Final = 0.01

Role = Literal["system", "user", "assistant"]
ROLES: Final[tuple[str, ...]] = typing.get_args(Role)
# Between the input text and the reply when return_full_text is true. The reply follows the
# chat template's "<|assistant|>\n", so a newline keeps question and answer apart as the model
# saw them (plain concatenation, the pipeline's way, would glue "Microsoft?Bill").
FULL_TEXT_SEPARATOR: Final = "\n"


class BadRequest(ValueError):
    """The request is malformed or out of bounds; the message says what and where.

    Servers answer it with HTTP 400 and `{"error": str(exc)}`; it never means the model failed.
    """


def _problem(
    message: str, at: str = "", after: tuple[str, ...] | None = None
) -> PydanticCustomError:
    """One of our own rules failed: `message` is the client's text as is, `at` a deeper path
    (`[1].role`) when a rule over a whole list blames one item, `after` an object whose
    unknown keys are to be reported before this problem (see `_first_problem`)."""
    return PydanticCustomError(
        "contract", "{message}", {"message": message, "at": at, "after": after}
    )


# --------------------------------------------------------------------------- texts


def _text_rules(max_chars: int) -> Callable[[str], str]:
    """The rules of one text or message content, after pydantic has checked it is a string.

    Hand-written: they are about Unicode (surrogates, control and format characters), which
    no pydantic constraint expresses; the length is checked here too so a blank text is
    reported as blank whatever its length (as the docstring's order says).
    """

    def check(value: str) -> str:
        if not value.strip():
            raise _problem("must be a non-empty string")
        if len(value) > max_chars:
            raise _problem(f"at most {max_chars} characters, got {len(value)}")
        bad = _SURROGATE.search(value)
        if bad:
            code, index = ord(bad.group()), bad.start()
            raise _problem(f"not valid Unicode: lone surrogate U+{code:04X} at index {index}")
        bad = _CONTROL.search(value)
        if bad:
            raise _problem(
                f"control character U+{ord(bad.group()):04X} at index {bad.start()}; only "
                "tab, newline and carriage return are allowed"
            )
        if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in value):
            raise _problem(
                "no visible characters, only whitespace and invisible format characters "
                f"(such as U+{ord(next(ch for ch in value if not ch.isspace())):04X})"
            )
        return value

    return check


_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# C0 and C1 control characters and DEL, except \t \n \r.
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

InputText = Annotated[str, Strict(), AfterValidator(_text_rules(MAX_INPUT_CHARS))]
MessageContent = Annotated[str, Strict(), AfterValidator(_text_rules(MAX_CHAT_CHARS))]
Texts = Annotated[list[InputText], Strict(), Field(min_length=1, max_length=MAX_INPUTS)]

# --------------------------------------------------------------------------- parameters

# Pydantic dataclasses: validated when built (from a request or in code), and still plain
# frozen dataclasses to their users (`dataclasses.replace`, hashing, equality).
_OBJECT: Final = ConfigDict(extra="forbid")


@pydantic_dataclasses.dataclass(frozen=True, config=_OBJECT)
class GenerationParams:
    """Validated generation parameters (see the module docstring for ranges and defaults)."""

    max_new_tokens: Annotated[int, Strict(), Field(ge=1, le=MAX_NEW_TOKENS)] = (
        DEFAULT_MAX_NEW_TOKENS
    )
    do_sample: Annotated[bool, Strict()] = False
    # Numbers: strict floats take integers too (any size: a 400-digit one is simply out of
    # range) but never booleans, NaN or infinities.
    temperature: Annotated[
        float, Strict(), Field(ge=MIN_LOGIT_DIVISOR, le=MAX_TEMPERATURE, allow_inf_nan=False)
    ] = DEFAULT_TEMPERATURE
    top_p: Annotated[float, Strict(), Field(gt=0, le=1.0, allow_inf_nan=False)] = 1.0
    top_k: Annotated[int, Strict(), Field(ge=1, le=MAX_TOP_K)] | None = None
    repetition_penalty: Annotated[
        float,
        Strict(),
        Field(ge=MIN_LOGIT_DIVISOR, le=MAX_REPETITION_PENALTY, allow_inf_nan=False),
    ] = 1.0
    seed: Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)] | None = None
    return_full_text: Annotated[bool, Strict()] = True

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """`params: null` and `"top_p": null` mean the defaults, as clients often send."""
        if data is None:
            return {}
        if isinstance(data, Mapping):
            # Only known names: an unknown one stays, to be reported as unknown.
            return {k: v for k, v in data.items() if v is not None or k not in _PARAM_RULES}
        return data  # built in code (keyword arguments), or not an object at all

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`.

        Sampling knobs are passed only when sampling: transformers warns (and some versions
        fail) when temperature/top_p come with greedy decoding.
        """
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
            # top_k=0 disables the filter; the model's generation_config default (50) would
            # otherwise apply silently.
            kwargs["top_k"] = self.top_k if self.top_k is not None else 0
        else:
            # Reset the sampling knobs so a generation_config that sets them causes no warning.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


_GREEDY_HINT: Final = " (for greedy decoding set do_sample to false)"
# What each parameter allows, in the client's words (the bounds are the fields' own).
_PARAM_RULES: Final[dict[str, str]] = {
    "max_new_tokens": f"must be an integer between 1 and {MAX_NEW_TOKENS}",
    "do_sample": "must be true or false",
    "temperature": f"must be a number greater than 0 and at most {MAX_TEMPERATURE:g}"
    + _GREEDY_HINT,
    "top_p": "must be a number greater than 0 and at most 1",
    "top_k": f"must be an integer between 1 and {MAX_TOP_K}",
    "repetition_penalty": (
        f"must be a number greater than 0 and at most {MAX_REPETITION_PENALTY:g}"
    ),
    "seed": f"must be an integer between 0 and {MAX_SEED}",
    "return_full_text": "must be true or false",
}
_PARAM_HINTS: Final = {"temperature": _GREEDY_HINT}

# --------------------------------------------------------------------------- chats


@pydantic_dataclasses.dataclass(frozen=True, config=_OBJECT)
class ChatMessage:
    role: Role
    content: MessageContent

    @model_validator(mode="before")
    @classmethod
    def _any_mapping(cls, data: Any) -> Any:
        """Any mapping is an object (pydantic's dataclasses take only dicts)."""
        return dict(data) if isinstance(data, Mapping) and not isinstance(data, dict) else data

    def as_dict(self) -> dict[str, str]:
        """The shape chat templates take."""
        return {"role": self.role, "content": self.content}


def _chat_rules(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The rules over a whole chat, once each message is valid."""
    for index, message in enumerate(messages):
        if message.role == "system" and index > 0:
            raise _problem("a system message may only be the first message", f"[{index}].role")
    total = sum(len(message.content) for message in messages)
    if total > MAX_CHAT_CHARS:
        raise _problem(f"at most {MAX_CHAT_CHARS} characters over all messages, got {total}")
    if messages[-1].role != "user":
        raise _problem(f"the last message must be from the user, got {_show(messages[-1].role)}")
    return messages


Messages = Annotated[
    list[ChatMessage],
    Strict(),
    Field(min_length=1, max_length=MAX_MESSAGES),
    AfterValidator(_chat_rules),
]

# --------------------------------------------------------------------------- parsed requests


@dataclass(frozen=True)
class TextRequest:
    """The tutorial's or the legacy request: each text is answered on its own."""

    texts: tuple[str, ...]
    params: GenerationParams
    form: Literal["text", "legacy"] = "text"

    def conversations(self) -> list[list[dict[str, str]]]:
        """Each text as a one-message chat (see the module docstring for why)."""
        return [[{"role": "user", "content": text}] for text in self.texts]


@dataclass(frozen=True)
class ChatRequest:
    """The chat form: one conversation, answered with one assistant message."""

    messages: tuple[ChatMessage, ...]
    params: GenerationParams
    form: Literal["chat"] = "chat"

    def conversation(self) -> list[dict[str, str]]:
        return [message.as_dict() for message in self.messages]


ScoringRequest = TextRequest | ChatRequest

# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def request(self) -> ScoringRequest:
        raise NotImplementedError


def _params() -> Any:
    return Field(default_factory=GenerationParams, description="generation parameters")


class _TextBody(_Body):
    """The tutorial's request: texts, each answered on its own."""

    model_config = ConfigDict(title="TextBody")
    input_data: Texts
    params: GenerationParams = _params()

    def request(self) -> TextRequest:
        return TextRequest(tuple(self.input_data), self.params, "text")


class _ChatBody(_Body):
    """The chat form, bare."""

    model_config = ConfigDict(title="ChatBody")
    messages: Messages
    params: GenerationParams = _params()

    def request(self) -> ChatRequest:
        return ChatRequest(tuple(self.messages), self.params)


class _MessagesInput(_Body):
    model_config = ConfigDict(title="MessagesInput")
    messages: Messages


class _WrappedChatBody(_Body):
    """The chat form, wrapped in input_data."""

    model_config = ConfigDict(title="WrappedChatBody")
    input_data: _MessagesInput
    params: GenerationParams = _params()

    def request(self) -> ChatRequest:
        return ChatRequest(tuple(self.input_data.messages), self.params)


class _LegacyInput(_Body):
    model_config = ConfigDict(title="LegacyInput")
    input_string: Texts
    parameters: GenerationParams = _params()


class _LegacyBody(_Body):
    """The legacy Azure ML request: texts and parameters inside input_data."""

    model_config = ConfigDict(title="LegacyBody")
    # Declared (so "params" is not an unknown key) only to be refused with a pointer to the
    # right place; first, so that is said before anything about the texts (but after unknown
    # keys in input_data: see `after`).
    params: Any = Field(
        None,
        description="not accepted here: give parameters in input_data.parameters",
        json_schema_extra={"not": {}},  # no value is valid
    )
    input_data: _LegacyInput

    @field_validator("params", mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise _problem(
            "the legacy form takes its parameters in input_data.parameters; give them there only",
            after=("input_data",),
        )

    def request(self) -> TextRequest:
        return TextRequest(
            tuple(self.input_data.input_string), self.input_data.parameters, "legacy"
        )


def _shape(body: Any) -> str | None:
    """Which shape a body is meant to be: the key that names it, as the docstring says.

    None (pydantic's union_tag_not_found) for a body that names none; one with an input_data
    that is neither a list nor a known object is taken as the tutorial's, whose input_data
    must be a list: that is the error it gets.
    """
    if not isinstance(body, Mapping):
        return None
    if "messages" in body:
        return "chat"
    if "input_data" not in body:
        return None
    input_data = body["input_data"]
    if isinstance(input_data, Mapping):
        if "messages" in input_data:
            return "wrapped_chat"
        if "input_string" in input_data:
            return "legacy"
    return "text"


_SHAPES: Final[dict[str, type[_Body]]] = {
    "text": _TextBody,
    "chat": _ChatBody,
    "wrapped_chat": _WrappedChatBody,
    "legacy": _LegacyBody,
}
# Built once: validating is then a call into pydantic-core.
_REQUEST_BODY: Final[TypeAdapter[_Body]] = TypeAdapter(
    Annotated[
        Annotated[_TextBody, Tag("text")]
        | Annotated[_ChatBody, Tag("chat")]
        | Annotated[_WrappedChatBody, Tag("wrapped_chat")]
        | Annotated[_LegacyBody, Tag("legacy")],
        Discriminator(_shape),
    ]
)


def request_json_schema() -> dict[str, Any]:
    """The JSON schema of a request body (the three shapes; the text rules are beyond it)."""
    return _REQUEST_BODY.json_schema()


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"request body: {name} is not a valid JSON number")


def parse_json(raw: str | bytes | bytearray) -> Any:
    """Decode a request body. Python's json accepts NaN and Infinity; JSON does not, nor do we.
    Nor do we take what would crash the decoder or what follows it: nesting past
    MAX_JSON_DEPTH, integers of more digits than Python converts.

    Hand-written rather than pydantic's `validate_json`: the decoder's own words ("Expecting
    value: line 1 column 17") are part of the documented messages, and the depth walk and the
    digit limit guard the decoder itself, before any model sees the data.
    """
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"request body is not UTF-8: {exc}") from None
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except BadRequest:
        raise
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except ValueError:  # an integer longer than Python converts (no other ValueError is left)
        raise BadRequest(
            f"request body: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if _too_deep(data):
        raise BadRequest(_TOO_DEEP)
    return data


_TOO_DEEP: Final = (
    f"request body is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects"
)


def _too_deep(data: Any) -> bool:
    """Whether arrays/objects nest past MAX_JSON_DEPTH (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, list | dict))
    return False


def parse_request(body: str | bytes | bytearray | Mapping[str, Any]) -> ScoringRequest:
    """Parse a request body (raw JSON text, or already decoded) into a validated request."""
    data = parse_json(body) if isinstance(body, str | bytes | bytearray) else body
    try:
        parsed = _REQUEST_BODY.validate_python(data)
    except ValidationError as exc:
        raise BadRequest(_first_problem(exc, data)) from None
    return parsed.request()


# --------------------------------------------------------------------------- responses


def full_text(prompt_text: str, reply: str) -> str:
    """What return_full_text answers: the input text, then the reply (see FULL_TEXT_SEPARATOR)."""
    return f"{prompt_text}{FULL_TEXT_SEPARATOR}{reply}"


def text_response(request: TextRequest, replies: Sequence[str]) -> list[str]:
    """The list-of-strings answer of the tutorial's and the legacy form."""
    if len(replies) != len(request.texts):
        raise ValueError(f"{len(replies)} replies for {len(request.texts)} texts")
    if request.params.return_full_text:
        return [full_text(text, reply) for text, reply in zip(request.texts, replies, strict=True)]
    return list(replies)


def chat_response(reply: str) -> dict[str, str]:
    """The chat form's answer: one assistant message."""
    return {"role": "assistant", "content": reply}


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every error response."""
    return {"error": message}


# --------------------------------------------------------------------------- error messages
#
# Pydantic reports every problem, in field order, depth first, with an object's unknown keys
# after its fields, in its own words ("Input should be a valid integer"). Clients get one
# message in ours: the first problem (an object's unknown keys, then its missing keys, before
# anything else in it), worded by where it is (the path) and what went wrong (the error type).
# Hand-written on purpose: these words are the interface (tests and RELIABILITY.md pin them).

_MISSING: Final = object()


def _first_problem(exc: ValidationError, body: Any) -> str:
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = error["loc"]
    if error["type"] == "union_tag_not_found":  # the body names no shape
        return _no_shape(body)
    model = _SHAPES[str(loc[0])]
    path = loc[1:]
    # An object's unknown keys come first: those of every object on the way to the problem,
    # outermost first, the problem's own place included (a key that is not even valid
    # Unicode makes pydantic fail the whole object there).
    objects = [path[:depth] for depth in range(len(path) + 1)]
    after = (error.get("ctx") or {}).get("after")
    if after:
        objects.append(tuple(after))
    for where in objects:
        unknown = _unknown_keys(model, where, body)
        if unknown:
            return unknown
    # Then its missing keys, before what is wrong with the keys it has.
    for other in errors:
        if other["type"] == "missing" and other["loc"][:-1] == loc[: len(other["loc"]) - 1]:
            return _describe(other, other["loc"][1:])
    return _describe(error, path)


def _describe(error: ErrorDetails, path: tuple[int | str, ...]) -> str:
    kind, value, where = error["type"], error["input"], _where(path)
    names = [part for part in path if isinstance(part, str)]
    last = path[-1] if path else None
    if kind == "contract":  # one of our own rules, worded already
        context = error.get("ctx") or {}
        return f"{where}{context.get('at', '')}: {context['message']}"
    if kind == "missing":
        return f"{_where(path[:-1])}: missing '{last}'"
    if len(names) >= 2 and names[-2] in ("params", "parameters") and last in _PARAM_RULES:
        name = str(last)
        if kind == "greater_than_equal" and _positive(value):  # in (0, ge): only too small
            floor = (error.get("ctx") or {})["ge"]
            return (
                f"{where}: must be at least {floor:g}, as smaller values overflow sampling"
                f"{_PARAM_HINTS.get(name, '')}, got {_show(value)}"
            )
        return f"{where}: {_PARAM_RULES[name]}, got {_show(value)}"
    if last in ("params", "parameters"):
        return f"{where}: expected an object, got {_json_type(value)}"
    if last == "role":
        return f"{where}: must be one of {', '.join(ROLES)}, got {_show(value)}"
    if last == "content":
        return f"{where}: expected a string, got {_json_type(value)}"
    if isinstance(last, int) and names and names[-1] == "messages":
        return f"{where}: expected an object with 'role' and 'content', got {_json_type(value)}"
    if isinstance(last, int):  # a text
        hint = ""
        if isinstance(value, Mapping):
            hint = "; for chat messages use {'input_data': {'messages': [...]}}"
        return f"{where}: expected a string, got {_json_type(value)}{hint}"
    if last in ("messages", "input_data", "input_string"):  # a list of messages or texts
        items = "messages" if last == "messages" else "texts"
        if kind == "too_short":
            return f"{where}: expected at least one {items[:-1]}, got an empty list"
        if kind == "too_long":
            per = " per request" if items == "texts" else ""
            limit = MAX_MESSAGES if items == "messages" else MAX_INPUTS
            return f"{where}: at most {limit} {items}{per}, got {len(value)}"
        if last == "input_data":  # the tutorial's shape, or none the body could have meant
            got = (
                f"an object with keys {_key_list(value)}"
                if isinstance(value, Mapping)
                else _json_type(value)
            )
            return (
                "input_data: expected a list of texts, {'messages': [...]} or "
                f"{{'input_string': [...]}}; got {got}"
            )
        what = "messages" if last == "messages" else "strings"
        return f"{where}: expected a list of {what}, got {_json_type(value)}"
    # Not reached by any body we know of; still a 400 that says where and what.
    return f"{where}: {error['msg']}, got {_show(value)}"


def _no_shape(body: Any) -> str:
    if not isinstance(body, Mapping):
        return (
            "request body: expected a JSON object with 'input_data' or 'messages', "
            f"got {_json_type(body)}"
        )
    return (
        "request: missing 'input_data' (or 'messages' for the chat form); "
        f"got keys {_key_list(body)}"
    )


def _unknown_keys(model: type, path: tuple[int | str, ...], body: Any) -> str | None:
    """The message for the unknown keys of the object at `path`, if it is one and has any."""
    fields = _fields_at(model, path)
    value = _value_at(body, path)
    if fields is None or not isinstance(value, Mapping):
        return None
    unknown = sorted(str(key) for key in value if key not in fields)
    if not unknown:
        return None
    listed = _show(unknown[0]) + (
        f" (and {', '.join(map(_show, unknown[1:]))})" if len(unknown) > 1 else ""
    )
    if path and path[-1] in ("params", "parameters"):
        return f"{_where(path)}: unknown parameter {listed}; known: {', '.join(sorted(fields))}"
    return f"{_where(path)}: unknown key {listed}; allowed: {', '.join(sorted(fields))}"


def _fields_at(model: type, path: tuple[int | str, ...]) -> Mapping[str, Any] | None:
    """The fields of the model or dataclass found at `path` from `model`, None if none is."""
    kind: Any = model
    for part in path:
        if isinstance(part, int):
            args = typing.get_args(kind)
            kind = args[0] if typing.get_origin(kind) is list and args else None
        else:
            fields = _fields_of(kind)
            kind = fields[part].annotation if fields and part in fields else None
        if kind is None:
            return None
    return _fields_of(kind)


def _fields_of(kind: Any) -> Mapping[str, Any] | None:
    """A pydantic model's or dataclass's fields (`model_fields` for models before 2.10)."""
    fields = getattr(kind, "__pydantic_fields__", None) or getattr(kind, "model_fields", None)
    return fields if isinstance(fields, Mapping) else None


def _value_at(body: Any, path: tuple[int | str, ...]) -> Any:
    for part in path:
        try:
            body = body[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return body


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _where(path: tuple[int | str, ...]) -> str:
    """`input_data.messages[0].content`; the body itself is "request"."""
    where = ""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where or "request"


def _key_list(data: Mapping[str, Any]) -> str:
    return ", ".join(_show(str(key)) for key in data) if data else "none"


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, as the client wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    """A sent value as JSON (so `true`, not `True`), shortened: messages must stay readable."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    # A lone surrogate (JSON's "\ud800") cannot be encoded as UTF-8: the error response would
    # fail to render (a 500). Show it escaped, as the client wrote it.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
