"""The scoring contract: parse and validate a request body, shape the response. Pure Python.

This module decides what the endpoint accepts and what it answers; it must not import torch,
transformers or anything else heavy, so it is cheap to test and to reuse in clients. The
scoring script (`serving/score.py`) turns a parsed request into generation calls.

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

Temperature and repetition penalty divide the logits: tiny values overflow float32 into
inf/NaN, which sampling cannot draw from (1e-45 did: a 500, not an answer); 0.01 leaves a wide
margin.

Texts and message contents must be valid Unicode (no lone surrogates, which JSON's `\ud800`
escapes can produce), hold no control characters other than tab, newline and carriage return
(NUL and the like are never text), and have at least one visible character (whitespace and
invisible format characters such as right-to-left marks alone are as empty as ""). Such
characters inside ordinary text are fine. A body may nest arrays and objects at most
MAX_JSON_DEPTH deep.

Every problem raises `BadRequest` with a message that names the field, says what is allowed
and shows what was sent, e.g.
`params.max_new_tokens: must be an integer between 1 and 512, got 100000`.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

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

ROLES: Final = ("system", "user", "assistant")
# Between the input text and the reply when return_full_text is true. The reply follows the
# chat template's "<|assistant|>\n", so a newline keeps question and answer apart as the model
# saw them (plain concatenation, the pipeline's way, would glue "Microsoft?Bill").
FULL_TEXT_SEPARATOR: Final = "\n"


class BadRequest(ValueError):
    """The request is malformed or out of bounds; the message says what and where.

    Servers answer it with HTTP 400 and `{"error": str(exc)}`; it never means the model failed.
    """


@dataclass(frozen=True)
class GenerationParams:
    """Validated generation parameters (see the module docstring for ranges and defaults)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    return_full_text: bool = True

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


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        """The shape chat templates take."""
        return {"role": self.role, "content": self.content}


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

# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"request body: {name} is not a valid JSON number")


def parse_json(raw: str | bytes | bytearray) -> Any:
    """Decode a request body. Python's json accepts NaN and Infinity; JSON does not, nor do we.
    Nor do we take what would crash the decoder or what follows it: nesting past
    MAX_JSON_DEPTH, integers of more digits than Python converts."""
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
    if not isinstance(data, Mapping):
        raise BadRequest(
            f"request body: expected a JSON object with 'input_data' or 'messages', "
            f"got {_json_type(data)}"
        )
    if "messages" in data:
        _check_keys(data, {"messages", "params"}, "request")
        messages = parse_messages(data["messages"], "messages")
        return ChatRequest(messages, parse_params(data.get("params"), "params"))
    if "input_data" not in data:
        raise BadRequest(
            "request: missing 'input_data' (or 'messages' for the chat form); "
            f"got keys {_key_list(data)}"
        )
    _check_keys(data, {"input_data", "params"}, "request")
    input_data = data["input_data"]
    if isinstance(input_data, list):
        texts = parse_texts(input_data, "input_data")
        return TextRequest(texts, parse_params(data.get("params"), "params"), "text")
    if isinstance(input_data, Mapping):
        if "messages" in input_data:
            _check_keys(input_data, {"messages"}, "input_data")
            messages = parse_messages(input_data["messages"], "input_data.messages")
            return ChatRequest(messages, parse_params(data.get("params"), "params"))
        if "input_string" in input_data:
            _check_keys(input_data, {"input_string", "parameters"}, "input_data")
            if "params" in data:
                raise BadRequest(
                    "params: the legacy form takes its parameters in input_data.parameters; "
                    "give them there only"
                )
            texts = parse_texts(input_data["input_string"], "input_data.input_string")
            params = parse_params(input_data.get("parameters"), "input_data.parameters")
            return TextRequest(texts, params, "legacy")
        raise BadRequest(
            "input_data: expected a list of texts, {'messages': [...]} or "
            f"{{'input_string': [...]}}; got an object with keys {_key_list(input_data)}"
        )
    raise BadRequest(
        "input_data: expected a list of texts, {'messages': [...]} or {'input_string': [...]}; "
        f"got {_json_type(input_data)}"
    )


def parse_texts(value: Any, where: str) -> tuple[str, ...]:
    """A non-empty list of at most MAX_INPUTS non-blank strings of at most MAX_INPUT_CHARS."""
    if not isinstance(value, list):
        raise BadRequest(f"{where}: expected a list of strings, got {_json_type(value)}")
    if not value:
        raise BadRequest(f"{where}: expected at least one text, got an empty list")
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"{where}: at most {MAX_INPUTS} texts per request, got {len(value)}")
    for index, text in enumerate(value):
        if isinstance(text, Mapping):
            raise BadRequest(
                f"{where}[{index}]: expected a string, got an object; for chat messages use "
                "{'input_data': {'messages': [...]}}"
            )
        _check_text(text, f"{where}[{index}]", MAX_INPUT_CHARS)
    return tuple(value)


def parse_messages(value: Any, where: str) -> tuple[ChatMessage, ...]:
    """A chat: roles from ROLES, non-blank contents, system first only, the user's last."""
    if not isinstance(value, list):
        raise BadRequest(f"{where}: expected a list of messages, got {_json_type(value)}")
    if not value:
        raise BadRequest(f"{where}: expected at least one message, got an empty list")
    if len(value) > MAX_MESSAGES:
        raise BadRequest(f"{where}: at most {MAX_MESSAGES} messages, got {len(value)}")
    messages: list[ChatMessage] = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise BadRequest(
                f"{at}: expected an object with 'role' and 'content', got {_json_type(item)}"
            )
        _check_keys(item, {"role", "content"}, at)
        for key in ("role", "content"):
            if key not in item:
                raise BadRequest(f"{at}: missing '{key}'")
        role = item["role"]
        if role not in ROLES:
            raise BadRequest(f"{at}.role: must be one of {', '.join(ROLES)}, got {_show(role)}")
        if role == "system" and index > 0:
            raise BadRequest(f"{at}.role: a system message may only be the first message")
        _check_text(item["content"], f"{at}.content", MAX_CHAT_CHARS)
        messages.append(ChatMessage(role, item["content"]))
    total = sum(len(message.content) for message in messages)
    if total > MAX_CHAT_CHARS:
        raise BadRequest(
            f"{where}: at most {MAX_CHAT_CHARS} characters over all messages, got {total}"
        )
    if messages[-1].role != "user":
        raise BadRequest(
            f"{where}: the last message must be from the user, got {_show(messages[-1].role)}"
        )
    return tuple(messages)


def parse_params(value: Any, where: str) -> GenerationParams:
    """Validate generation parameters; absent or null means all defaults."""
    if value is None:
        return GenerationParams()
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}: expected an object, got {_json_type(value)}")
    unknown = sorted(set(value) - set(_PARAM_RULES))
    if unknown:
        raise BadRequest(
            f"{where}: unknown parameter {_show(unknown[0])}"
            + (f" (and {', '.join(map(_show, unknown[1:]))})" if len(unknown) > 1 else "")
            + f"; known: {', '.join(sorted(_PARAM_RULES))}"
        )
    checked: dict[str, Any] = {}
    for name, raw in value.items():
        if raw is None:
            continue  # null means "the default", as clients often send
        checked[name] = _PARAM_RULES[name](raw, f"{where}.{name}")
    return GenerationParams(**checked)


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


# --------------------------------------------------------------------------- rules


def _integer(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, where: str) -> int:
        # bool is a subclass of int in Python; `true` is not a token count.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadRequest(
                f"{where}: must be an integer between {low} and {high}, got {_show(value)}"
            )
        return value

    return check


def _number(high: float, hint: str = "", low: float | None = None) -> Callable[[Any, str], float]:
    """A number in (0, high]: zero is excluded for every number parameter we take; with `low`,
    in [low, high] (the message for 0 and below stays the general one)."""

    def check(value: Any, where: str) -> float:
        # Comparisons only: int/float comparisons are exact for any size (math.isfinite would
        # overflow on a 400-digit integer), and NaN and infinities fail them.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
            raise BadRequest(
                f"{where}: must be a number greater than 0 and at most {high:g}{hint}, "
                f"got {_show(value)}"
            )
        if low is not None and value < low:
            raise BadRequest(
                f"{where}: must be at least {low:g}, as smaller values overflow sampling{hint}, "
                f"got {_show(value)}"
            )
        return float(value)

    return check


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: must be true or false, got {_show(value)}")
    return value


_PARAM_RULES: Final[dict[str, Callable[[Any, str], Any]]] = {
    "max_new_tokens": _integer(1, MAX_NEW_TOKENS),
    "do_sample": _boolean,
    "temperature": _number(
        MAX_TEMPERATURE, " (for greedy decoding set do_sample to false)", MIN_LOGIT_DIVISOR
    ),
    "top_p": _number(1.0),
    "top_k": _integer(1, MAX_TOP_K),
    "repetition_penalty": _number(MAX_REPETITION_PENALTY, low=MIN_LOGIT_DIVISOR),
    "seed": _integer(0, MAX_SEED),
    "return_full_text": _boolean,
}


def _check_text(value: Any, where: str, max_chars: int) -> None:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string, got {_json_type(value)}")
    if not value.strip():
        raise BadRequest(f"{where}: must be a non-empty string")
    if len(value) > max_chars:
        raise BadRequest(f"{where}: at most {max_chars} characters, got {len(value)}")
    bad = _SURROGATE.search(value)
    if bad:
        raise BadRequest(
            f"{where}: not valid Unicode: lone surrogate U+{ord(bad.group()):04X} at index "
            f"{bad.start()}"
        )
    bad = _CONTROL.search(value)
    if bad:
        raise BadRequest(
            f"{where}: control character U+{ord(bad.group()):04X} at index {bad.start()}; only "
            "tab, newline and carriage return are allowed"
        )
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in value):
        raise BadRequest(
            f"{where}: no visible characters, only whitespace and invisible format characters "
            f"(such as U+{ord(next(ch for ch in value if not ch.isspace())):04X})"
        )


_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# C0 and C1 control characters and DEL, except \t \n \r.
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise BadRequest(
            f"{where}: unknown key {_show(unknown[0])}"
            + (f" (and {', '.join(map(_show, unknown[1:]))})" if len(unknown) > 1 else "")
            + f"; allowed: {', '.join(sorted(allowed))}"
        )


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
