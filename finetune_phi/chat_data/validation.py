"""Validation of chat records in the ultrachat_200k schema, with problems reported by kind.

Every record is checked against the structural rules a chat fine-tune relies on (roles, turn
order, non-empty content, a length limit) and across records for duplicates. Each problem names
the record by a reference the user can find it with ("line 7" for a JSONL file) and says
specifically what is wrong. `apply_policy` then decides whether the run may go on.

What the base model's chat template can render is passed in as `ChatCapabilities` (found by
`finetune_phi.chat_data.template`): a system message is refused when the template has no system
turn, because training would silently drop it (or the template would raise). Only a record with
no structural problem is measured by the token counter, so the counter (a chat template) never
sees a conversation it was not written for; a counter that still cannot render one raises
`ConversationNotRenderable`, which becomes a TEMPLATE_REFUSED problem of that record.

This module must not do IO: sources hand it `(ref, record)` pairs, and it returns data. A record
that could not even be parsed arrives as an `UnparsableRecord` marker.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from finetune_phi.chat_data.config import InvalidRecordPolicy
from finetune_phi.errors import UsageError

__all__ = [
    "ROLES",
    "ChatCapabilities",
    "ConversationNotRenderable",
    "DataValidationError",
    "Problem",
    "ProblemKind",
    "TokenCounter",
    "UnparsableRecord",
    "ValidationResult",
    "apply_policy",
    "canonical_record",
    "estimate_tokens",
    "problem_summary",
    "validate_record",
    "validate_records",
]

ROLES: tuple[str, ...] = ("system", "user", "assistant")
REQUIRED_STRING_FIELDS: tuple[str, ...] = ("prompt", "prompt_id")
SHOWN_PROBLEMS = 5  # how many problems an error message lists before "... and N more"
MISSING_MESSAGES = "field 'messages' is missing"

TokenCounter = Callable[[list[dict[str, str]]], int]
"""Counts the tokens of a conversation (for example with the model's tokenizer and template).

It may raise `ConversationNotRenderable` for a conversation it cannot measure; validation then
reports that record instead of stopping."""


class ProblemKind(StrEnum):
    """What is wrong with a record. Values are stable: they appear in problems.jsonl."""

    INVALID_JSON = "invalid_json"
    INVALID_ENCODING = "invalid_encoding"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    MESSAGES_NOT_A_LIST = "messages_not_a_list"
    MESSAGE_NOT_AN_OBJECT = "message_not_an_object"
    BAD_ROLE = "bad_role"
    EMPTY_CONTENT = "empty_content"
    MISPLACED_SYSTEM = "misplaced_system"
    NOT_STARTING_WITH_USER = "not_starting_with_user"
    NO_USER_TURN = "no_user_turn"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    NOT_ENDING_WITH_ASSISTANT = "not_ending_with_assistant"
    CONSECUTIVE_SAME_ROLE = "consecutive_same_role"
    SYSTEM_MESSAGE_UNSUPPORTED = "system_message_unsupported"
    TEMPLATE_REFUSED = "template_refused"
    TOO_LONG = "too_long"
    DUPLICATE = "duplicate"
    DUPLICATE_ID = "duplicate_id"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record."""

    kind: ProblemKind
    ref: str  # where the record is: "line 7", "row 3", "record 12"
    message: str  # human-readable and specific, without the ref

    def to_dict(self) -> dict[str, str]:
        """The problems.jsonl form."""
        return {"kind": self.kind.value, "ref": self.ref, "message": self.message}


@dataclass(frozen=True)
class UnparsableRecord:
    """Stands in for a record its source could not parse (for example a line that is not JSON).

    `kind` is INVALID_JSON (the text is not JSON) or INVALID_ENCODING (the bytes are not text in
    the file's encoding, UTF-8); only for INVALID_JSON is "not valid JSON: " put before `error`.
    """

    error: str
    kind: ProblemKind = ProblemKind.INVALID_JSON


@dataclass(frozen=True)
class ChatCapabilities:
    """What the base model's chat template can render, as far as validation needs to know.

    Without one (no tokenizer was given) validation accepts what the schema allows.
    """

    model: str  # the base model, as problems name it (a hub id or a folder)
    system_turn: bool  # whether its chat template renders a system message


class ConversationNotRenderable(ValueError):
    """Raised by a token counter for a conversation its chat template cannot render; the
    message says why (validation reports it as a TEMPLATE_REFUSED problem of that record)."""


class DataValidationError(UsageError, ValueError):
    """The records break the invalid-record policy; `result` holds every problem found.

    A `UsageError` (the data is the user's input): the command line prints the message, the
    report by kind included, as one paragraph with exit status 2."""

    def __init__(self, message: str, result: ValidationResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ValidationResult:
    """Valid records (normalised, in input order) and the problems of the others."""

    valid: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    total: int = 0  # records seen, valid or not
    # Token length of each valid record, parallel to `valid`, so a tokenizer runs once per record.
    token_counts: list[int] = field(default_factory=list)
    tokens_estimated: bool = True  # False when a real token counter measured `token_counts`

    @property
    def invalid_refs(self) -> list[str]:
        """Refs of the records with at least one problem, in input order, each once."""
        return list(dict.fromkeys(problem.ref for problem in self.problems))

    def counts_by_kind(self) -> dict[str, int]:
        """Number of problems per kind, keys sorted so the summary is stable."""
        counts = Counter(problem.kind.value for problem in self.problems)
        return {kind: counts[kind] for kind in sorted(counts)}


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A tokenizer-free length estimate: characters of all contents / 4, rounded up.

    Four characters per token is the usual rule of thumb for English with BPE tokenizers. It
    ignores the chat template's special tokens, so pass a real counter where the limit is tight.
    """
    return math.ceil(sum(len(message["content"]) for message in messages) / 4)


def canonical_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record reduced to the schema: prompt, prompt_id, messages of role and content.

    Only call on a record that `validate_record` accepted.
    """
    return {
        "prompt": record["prompt"],
        "prompt_id": record["prompt_id"],
        "messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]],
    }


def _type_name(value: object) -> str:
    """A JSON-flavoured name for a value's type, for messages a data person can read."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_fields(record: dict[str, Any], ref: str) -> list[Problem]:
    problems = []
    for name in REQUIRED_STRING_FIELDS:
        if name not in record:
            problems.append(Problem(ProblemKind.MISSING_FIELD, ref, f"field '{name}' is missing"))
        elif not isinstance(record[name], str):
            problems.append(
                Problem(
                    ProblemKind.MISSING_FIELD,
                    ref,
                    f"field '{name}' must be a string, got {_type_name(record[name])}",
                )
            )
    if "messages" not in record:
        problems.append(Problem(ProblemKind.MISSING_FIELD, ref, MISSING_MESSAGES))
    elif not isinstance(record["messages"], list):
        problems.append(
            Problem(
                ProblemKind.MESSAGES_NOT_A_LIST,
                ref,
                f"field 'messages' must be an array, got {_type_name(record['messages'])}",
            )
        )
    return problems


def _check_message(message: object, number: int, ref: str) -> tuple[list[Problem], str | None]:
    """Problems of one message and its role when the role is valid (number is 1-based)."""
    if not isinstance(message, dict):
        return [
            Problem(
                ProblemKind.MESSAGE_NOT_AN_OBJECT,
                ref,
                f"message {number}: must be an object, got {_type_name(message)}",
            )
        ], None
    problems = []
    role = message.get("role")
    if "role" not in message:
        problems.append(Problem(ProblemKind.BAD_ROLE, ref, f"message {number}: role is missing"))
        role = None
    elif role not in ROLES:
        shown = repr(role) if isinstance(role, str) else _type_name(role)
        problems.append(
            Problem(
                ProblemKind.BAD_ROLE,
                ref,
                f"message {number}: role {shown} is not one of {', '.join(ROLES)}",
            )
        )
        role = None
    content = message.get("content")
    if "content" not in message:
        problem = f"message {number}: content is missing"
    elif not isinstance(content, str):
        problem = f"message {number}: content must be a string, got {_type_name(content)}"
    elif not content.strip():
        problem = f"message {number}: content is empty"
    else:
        problem = ""
    if problem:
        problems.append(Problem(ProblemKind.EMPTY_CONTENT, ref, problem))
    return problems, role if isinstance(role, str) else None


def _check_turns(roles: list[str | None], ref: str) -> list[Problem]:
    """Turn-order rules, over the roles of the messages (None where the role is invalid).

    Rules only compare messages whose roles are known, so one bad message does not also produce
    a cascade of order problems around it.
    """
    problems = []
    for index, role in enumerate(roles):
        if role == "system" and index > 0:
            problems.append(
                Problem(
                    ProblemKind.MISPLACED_SYSTEM,
                    ref,
                    f"message {index + 1}: a system message may only be the first message",
                )
            )
    start = 1 if roles and roles[0] == "system" else 0
    if len(roles) > start and roles[start] == "assistant":
        problems.append(
            Problem(
                ProblemKind.NOT_STARTING_WITH_USER,
                ref,
                f"message {start + 1}: the conversation starts with an assistant turn, "
                "expected a user turn",
            )
        )
    for index in range(start + 1, len(roles)):
        previous, current = roles[index - 1], roles[index]
        if current in ("user", "assistant") and previous == current:
            problems.append(
                Problem(
                    ProblemKind.CONSECUTIVE_SAME_ROLE,
                    ref,
                    f"messages {index} and {index + 1}: two {current} turns in a row",
                )
            )
    # A message with a bad role may well be the missing turn ("bot" for assistant): the presence
    # rules only speak when every role is known, and BAD_ROLE already explains the record.
    roles_known = None not in roles
    empty = "" if roles else " (the messages array is empty)"
    if roles_known and "user" not in roles:
        problems.append(Problem(ProblemKind.NO_USER_TURN, ref, f"no message with role user{empty}"))
    if roles_known and "assistant" not in roles:
        problems.append(
            Problem(ProblemKind.NO_ASSISTANT_TURN, ref, f"no message with role assistant{empty}")
        )
    # Without any assistant turn NO_ASSISTANT_TURN already says it all.
    elif "assistant" in roles and roles[-1] is not None and roles[-1] != "assistant":
        problems.append(
            Problem(
                ProblemKind.NOT_ENDING_WITH_ASSISTANT,
                ref,
                f"the last message ({len(roles)}) has role {roles[-1]}, expected assistant",
            )
        )
    return problems


def _check_system(
    roles: list[str | None], ref: str, capabilities: ChatCapabilities | None
) -> list[Problem]:
    """A system message the base model's template cannot render: one problem per record."""
    if capabilities is None or capabilities.system_turn or "system" not in roles:
        return []
    number = roles.index("system") + 1
    return [
        Problem(
            ProblemKind.SYSTEM_MESSAGE_UNSUPPORTED,
            ref,
            f"message {number}: a system message, but the chat template of {capabilities.model} "
            "has no system turn (training would drop or refuse it); leave it out or put its "
            "text into the first user message",
        )
    ]


def _check_record(
    record: object,
    ref: str,
    max_tokens: int,
    count_tokens: TokenCounter | None,
    capabilities: ChatCapabilities | None = None,
) -> tuple[list[Problem], int | None]:
    """Problems of one record and its token length (None when it was not measured)."""
    if isinstance(record, UnparsableRecord):
        if record.kind is ProblemKind.INVALID_JSON:
            return [Problem(record.kind, ref, f"not valid JSON: {record.error}")], None
        return [Problem(record.kind, ref, record.error)], None
    if not isinstance(record, dict):
        message = f"a record must be a JSON object, got {_type_name(record)}"
        return [Problem(ProblemKind.NOT_AN_OBJECT, ref, message)], None
    problems = _check_fields(record, ref)
    messages = record.get("messages")
    if not isinstance(messages, list):
        return problems, None  # nothing more can be checked without a list of messages
    roles: list[str | None] = []
    for number, message in enumerate(messages, start=1):
        message_problems, role = _check_message(message, number, ref)
        problems.extend(message_problems)
        roles.append(role)
    problems.extend(_check_turns(roles, ref))
    problems.extend(_check_system(roles, ref, capabilities))
    if problems:
        # Measured only when well formed: a chat template may reasonably refuse an empty or
        # disordered conversation (transformers refuses an empty one outright), and the
        # problems above already explain the record.
        return problems, None
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    if count_tokens is None:
        tokens = estimate_tokens(conversation)
    else:
        try:
            tokens = count_tokens(conversation)
        except ConversationNotRenderable as error:
            return [Problem(ProblemKind.TEMPLATE_REFUSED, ref, str(error))], None
    if tokens > max_tokens:
        unit = "tokens" if count_tokens else "tokens (estimated: characters / 4)"
        problems.append(
            Problem(
                ProblemKind.TOO_LONG,
                ref,
                f"conversation has {tokens} {unit}, more than max_tokens {max_tokens}",
            )
        )
    return problems, tokens


def validate_record(
    record: object,
    ref: str,
    *,
    max_tokens: int,
    count_tokens: TokenCounter | None = None,
    capabilities: ChatCapabilities | None = None,
) -> list[Problem]:
    """Every structural problem of one record (empty when it is valid; duplicates not included).

    `count_tokens` measures the conversation for the TOO_LONG rule (only once it has no other
    problem); without it the length is estimated with `estimate_tokens`. `capabilities` says
    what the base model's chat template renders (None: not known, the schema decides alone).
    """
    problems, _ = _check_record(record, ref, max_tokens, count_tokens, capabilities)
    return problems


def _shown_id(prompt_id: str, limit: int = 80) -> str:
    """An id as a message quotes it: repr, cut short when it is long."""
    return repr(prompt_id if len(prompt_id) <= limit else prompt_id[:limit] + "...")


def _messages_key(record: dict[str, Any]) -> str:
    """A canonical JSON of the messages: equal conversations give equal keys, byte for byte."""
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def validate_records(
    items: Iterable[tuple[str, object]],
    *,
    max_tokens: int,
    count_tokens: TokenCounter | None = None,
    capabilities: ChatCapabilities | None = None,
) -> ValidationResult:
    """Validate `(ref, record)` pairs, including the cross-record DUPLICATE and DUPLICATE_ID rules.

    The first occurrence of a conversation is valid; later ones are DUPLICATE problems naming it.
    A `prompt_id` names one prompt (ultrachat's is the prompt's sha256): several conversations
    may share a prompt and its id, but a later record that reuses an id for a different prompt
    is a DUPLICATE_ID problem naming the first. Valid records are returned in `canonical_record`
    form. `count_tokens` and `capabilities` are as for `validate_record`.
    """
    result = ValidationResult(tokens_estimated=count_tokens is None)
    first_ref_by_key: dict[str, str] = {}
    first_by_prompt_id: dict[str, tuple[str, str]] = {}  # prompt_id -> (ref, prompt)
    for ref, record in items:
        result.total += 1
        problems, tokens = _check_record(record, ref, max_tokens, count_tokens, capabilities)
        if problems:
            result.problems.extend(problems)
            continue
        # Guaranteed when there are no problems; the asserts only narrow the types.
        assert isinstance(record, dict)
        assert tokens is not None
        key = _messages_key(record)
        if key in first_ref_by_key:
            result.problems.append(
                Problem(
                    ProblemKind.DUPLICATE,
                    ref,
                    f"same messages as {first_ref_by_key[key]}",
                )
            )
            continue
        first = first_by_prompt_id.setdefault(record["prompt_id"], (ref, record["prompt"]))
        if first[1] != record["prompt"]:
            result.problems.append(
                Problem(
                    ProblemKind.DUPLICATE_ID,
                    ref,
                    f"prompt_id {_shown_id(record['prompt_id'])} is already used by {first[0]} "
                    "for a different prompt",
                )
            )
            continue
        first_ref_by_key[key] = ref
        result.valid.append((ref, canonical_record(record)))
        result.token_counts.append(tokens)
    return result


def _schema_hint(result: ValidationResult) -> str:
    """A last line for data that is not chat data at all: no record has `messages`."""
    lacking = {
        problem.ref
        for problem in result.problems
        if problem.kind is ProblemKind.MISSING_FIELD and problem.message == MISSING_MESSAGES
    }
    if result.total == 0 or len(lacking) < result.total:
        return ""
    return (
        "\nno record has a 'messages' field: the data must be chat records in ultrachat_200k's "
        "schema: prompt, prompt_id, messages (a list of {role, content})"
    )


def problem_summary(result: ValidationResult) -> str:
    """Counts by kind and the first problems, as error messages show them."""
    by_kind = ", ".join(f"{kind}={count}" for kind, count in result.counts_by_kind().items())
    shown = "\n".join(f"  {p.ref}: {p.message}" for p in result.problems[:SHOWN_PROBLEMS])
    more = len(result.problems) - SHOWN_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return f"problems by kind: {by_kind}\nfirst problems:\n{shown}{tail}{_schema_hint(result)}"


def apply_policy(result: ValidationResult, policy: InvalidRecordPolicy) -> None:
    """Raise DataValidationError when the invalid records break the policy; else return.

    With "drop", invalid records are already absent from `result.valid`; the run still fails when
    their share exceeds `max_invalid_fraction`, because that much bad data usually means a wrong
    file or schema rather than a few stray records.
    """
    invalid = len(result.invalid_refs)
    if invalid == 0:
        return
    fraction = invalid / result.total
    if policy.action == "fail":
        raise DataValidationError(
            f"{invalid} of {result.total} records are invalid and the policy action is 'fail'\n"
            + problem_summary(result),
            result,
        )
    if fraction > policy.max_invalid_fraction:
        raise DataValidationError(
            f"{invalid} of {result.total} records are invalid ({fraction:.1%}), more than "
            f"max_invalid_fraction {policy.max_invalid_fraction:.1%} allowed with action 'drop'\n"
            + problem_summary(result),
            result,
        )
