"""Validation of chat records: one case per problem kind, with its message, and the policy."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from finetune_phi.chat_data.config import InvalidRecordPolicy
from finetune_phi.chat_data.validation import (
    ChatCapabilities,
    ConversationNotRenderable,
    DataValidationError,
    Problem,
    ProblemKind,
    UnparsableRecord,
    ValidationResult,
    apply_policy,
    estimate_tokens,
    validate_record,
    validate_records,
)

MAX_TOKENS = 2048


def record(*turns: tuple[str, str]) -> dict[str, Any]:
    messages = [{"role": role, "content": content} for role, content in turns]
    return {"prompt": "Hi", "prompt_id": "id-1", "messages": messages}


GOOD = record(("user", "Who founded Microsoft?"), ("assistant", "Bill Gates and Paul Allen."))


def with_changes(base: dict[str, Any], **changes: object) -> dict[str, Any]:
    changed = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            del changed[key]
        else:
            changed[key] = value
    return changed


def test_a_good_record_has_no_problems() -> None:
    assert validate_record(GOOD, "line 1", max_tokens=MAX_TOKENS) == []


def test_a_system_message_first_is_fine() -> None:
    good = record(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))
    assert validate_record(good, "line 1", max_tokens=MAX_TOKENS) == []


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        pytest.param(
            UnparsableRecord("Expecting value at column 1"),
            ProblemKind.INVALID_JSON,
            "not valid JSON: Expecting value at column 1",
            id="invalid_json",
        ),
        pytest.param(
            ["not", "an", "object"],
            ProblemKind.NOT_AN_OBJECT,
            "a record must be a JSON object, got array",
            id="not_an_object",
        ),
        pytest.param(
            with_changes(GOOD, prompt=...),
            ProblemKind.MISSING_FIELD,
            "field 'prompt' is missing",
            id="missing_prompt",
        ),
        pytest.param(
            with_changes(GOOD, prompt_id=7),
            ProblemKind.MISSING_FIELD,
            "field 'prompt_id' must be a string, got int",
            id="prompt_id_wrong_type",
        ),
        pytest.param(
            with_changes(GOOD, messages=...),
            ProblemKind.MISSING_FIELD,
            "field 'messages' is missing",
            id="missing_messages",
        ),
        pytest.param(
            with_changes(GOOD, messages="hello"),
            ProblemKind.MESSAGES_NOT_A_LIST,
            "field 'messages' must be an array, got string",
            id="messages_not_a_list",
        ),
        pytest.param(
            with_changes(GOOD, messages=[GOOD["messages"][0], "hi", GOOD["messages"][1]]),
            ProblemKind.MESSAGE_NOT_AN_OBJECT,
            "message 2: must be an object, got string",
            id="message_not_an_object",
        ),
        pytest.param(
            record(("user", "Hi"), ("bot", "Hello")),
            ProblemKind.BAD_ROLE,
            "message 2: role 'bot' is not one of system, user, assistant",
            id="bad_role",
        ),
        pytest.param(
            with_changes(GOOD, messages=[{"content": "Hi"}, GOOD["messages"][1]]),
            ProblemKind.BAD_ROLE,
            "message 1: role is missing",
            id="missing_role",
        ),
        pytest.param(
            record(("user", "Hi"), ("assistant", "   \n")),
            ProblemKind.EMPTY_CONTENT,
            "message 2: content is empty",
            id="whitespace_content",
        ),
        pytest.param(
            with_changes(GOOD, messages=[{"role": "user", "content": 3}, GOOD["messages"][1]]),
            ProblemKind.EMPTY_CONTENT,
            "message 1: content must be a string, got int",
            id="content_not_a_string",
        ),
        pytest.param(
            with_changes(GOOD, messages=[{"role": "user"}, GOOD["messages"][1]]),
            ProblemKind.EMPTY_CONTENT,
            "message 1: content is missing",
            id="missing_content",
        ),
        pytest.param(
            record(("user", "Hi"), ("system", "Be brief."), ("assistant", "Hello")),
            ProblemKind.MISPLACED_SYSTEM,
            "message 2: a system message may only be the first message",
            id="misplaced_system",
        ),
        pytest.param(
            record(("system", "Be."), ("assistant", "Hello"), ("user", "Hi"), ("assistant", "Yo")),
            ProblemKind.NOT_STARTING_WITH_USER,
            "message 2: the conversation starts with an assistant turn, expected a user turn",
            id="not_starting_with_user",
        ),
        pytest.param(
            record(("system", "Be brief."), ("assistant", "Hello")),
            ProblemKind.NO_USER_TURN,
            "no message with role user",
            id="no_user_turn",
        ),
        pytest.param(
            record(("user", "Hi")),
            ProblemKind.NO_ASSISTANT_TURN,
            "no message with role assistant",
            id="no_assistant_turn",
        ),
        pytest.param(
            record(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")),
            ProblemKind.NOT_ENDING_WITH_ASSISTANT,
            "the last message (3) has role user, expected assistant",
            id="not_ending_with_assistant",
        ),
        pytest.param(
            record(("user", "Hi"), ("user", "Hello?"), ("assistant", "Hello")),
            ProblemKind.CONSECUTIVE_SAME_ROLE,
            "messages 1 and 2: two user turns in a row",
            id="consecutive_same_role",
        ),
        pytest.param(
            record(("user", "x" * 40), ("assistant", "y" * 1)),
            ProblemKind.TOO_LONG,
            "conversation has 11 tokens (estimated: characters / 4), more than max_tokens 10",
            id="too_long_estimated",
        ),
    ],
)
def test_each_rule_reports_its_kind_and_a_specific_message(
    raw: object, kind: ProblemKind, message: str
) -> None:
    max_tokens = 10 if kind is ProblemKind.TOO_LONG else MAX_TOKENS
    problems = validate_record(raw, "line 7", max_tokens=max_tokens)
    assert Problem(kind, "line 7", message) in problems


def test_too_long_uses_the_given_token_counter() -> None:
    def count_tokens(messages: list[dict[str, str]]) -> int:
        return 100 * len(messages)

    problems = validate_record(GOOD, "row 3", max_tokens=150, count_tokens=count_tokens)
    message = "conversation has 200 tokens, more than max_tokens 150"
    assert problems == [Problem(ProblemKind.TOO_LONG, "row 3", message)]


def test_estimate_is_characters_over_four_rounded_up() -> None:
    messages = [{"role": "user", "content": "abcde"}, {"role": "assistant", "content": "abcd"}]
    assert estimate_tokens(messages) == 3  # 9 characters / 4 = 2.25 -> 3


def test_all_problems_of_a_record_are_reported() -> None:
    raw = {
        "prompt_id": 1,
        "messages": [
            {"role": "user", "content": ""},
            {"role": "user", "content": "again"},
            {"role": "system", "content": "late"},
        ],
    }
    kinds = [problem.kind for problem in validate_record(raw, "line 2", max_tokens=MAX_TOKENS)]
    assert kinds == [
        ProblemKind.MISSING_FIELD,  # prompt
        ProblemKind.MISSING_FIELD,  # prompt_id type
        ProblemKind.EMPTY_CONTENT,
        ProblemKind.MISPLACED_SYSTEM,
        ProblemKind.CONSECUTIVE_SAME_ROLE,
        ProblemKind.NO_ASSISTANT_TURN,
    ]


def test_messages_not_a_list_stops_there() -> None:
    raw = {"prompt": "Hi", "prompt_id": "x", "messages": {"role": "user"}}
    problems = validate_record(raw, "line 1", max_tokens=MAX_TOKENS)
    assert [p.kind for p in problems] == [ProblemKind.MESSAGES_NOT_A_LIST]


def test_a_bad_role_does_not_cascade_into_turn_problems() -> None:
    problems = validate_record(
        record(("user", "Hi"), ("bot", "Hello")), "line 1", max_tokens=MAX_TOKENS
    )
    assert [p.kind for p in problems] == [ProblemKind.BAD_ROLE]


def test_an_empty_conversation_lacks_both_turns_only() -> None:
    problems = validate_record(record(), "line 1", max_tokens=MAX_TOKENS)
    assert [p.kind for p in problems] == [ProblemKind.NO_USER_TURN, ProblemKind.NO_ASSISTANT_TURN]


def test_duplicates_name_the_first_occurrence_and_valid_records_are_normalised() -> None:
    extra_keys = with_changes(GOOD, source="web")
    extra_keys["messages"][0]["lang"] = "en"
    other = record(("user", "Hi"), ("assistant", "Hello"))
    result = validate_records(
        [("line 1", GOOD), ("line 2", other), ("line 3", extra_keys), ("line 4", GOOD)],
        max_tokens=MAX_TOKENS,
    )
    assert [ref for ref, _ in result.valid] == ["line 1", "line 2"]
    assert result.problems == [
        Problem(ProblemKind.DUPLICATE, "line 3", "same messages as line 1"),
        Problem(ProblemKind.DUPLICATE, "line 4", "same messages as line 1"),
    ]
    assert result.total == 4
    assert result.invalid_refs == ["line 3", "line 4"]
    assert list(result.valid[0][1]) == ["prompt", "prompt_id", "messages"]


def test_an_invalid_record_never_counts_as_the_first_of_a_duplicate() -> None:
    bad = with_changes(GOOD, prompt_id=5)
    result = validate_records([("line 1", bad), ("line 2", GOOD)], max_tokens=MAX_TOKENS)
    assert [ref for ref, _ in result.valid] == ["line 2"]


def test_counts_by_kind_has_sorted_keys() -> None:
    result = validate_records(
        [
            ("line 1", UnparsableRecord("x")),
            ("line 2", record(("user", "Hi"), ("bot", "Yo"))),
            ("line 3", record(("user", "Hi"), ("robot", "Yo"))),
        ],
        max_tokens=MAX_TOKENS,
    )
    assert result.counts_by_kind() == {"bad_role": 2, "invalid_json": 1}
    assert list(result.counts_by_kind()) == sorted(result.counts_by_kind())


def _result_with(invalid: int, valid: int) -> ValidationResult:
    items: list[tuple[str, object]] = [
        (f"line {i + 1}", record(("user", f"question {i}"), ("assistant", "answer")))
        for i in range(valid)
    ]
    items += [(f"line {valid + i + 1}", UnparsableRecord("bad")) for i in range(invalid)]
    return validate_records(items, max_tokens=MAX_TOKENS)


def test_drop_policy_tolerates_a_small_share_of_invalid_records() -> None:
    apply_policy(_result_with(invalid=1, valid=19), InvalidRecordPolicy(max_invalid_fraction=0.05))


def test_drop_policy_fails_over_the_threshold_with_counts() -> None:
    with pytest.raises(DataValidationError) as caught:
        apply_policy(_result_with(invalid=2, valid=18), InvalidRecordPolicy())
    text = str(caught.value)
    assert "2 of 20 records are invalid (10.0%)" in text
    assert "max_invalid_fraction 5.0%" in text
    assert "invalid_json=2" in text
    assert "line 19: not valid JSON: bad" in text
    assert caught.value.result.total == 20


def test_fail_policy_fails_on_a_single_invalid_record() -> None:
    with pytest.raises(DataValidationError, match="1 of 100 records are invalid"):
        apply_policy(_result_with(invalid=1, valid=99), InvalidRecordPolicy(action="fail"))


def test_error_message_lists_only_the_first_problems() -> None:
    with pytest.raises(DataValidationError) as caught:
        apply_policy(_result_with(invalid=8, valid=0), InvalidRecordPolicy())
    assert "... and 3 more" in str(caught.value)


# --------------------------------------------------------------------------- the base model


SYSTEM_FIRST = record(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))


def test_a_system_message_is_kept_when_the_template_has_a_system_turn() -> None:
    capabilities = ChatCapabilities(model="microsoft/Phi-3.5-mini-instruct", system_turn=True)
    assert validate_record(SYSTEM_FIRST, "line 1", max_tokens=100, capabilities=capabilities) == []


def test_a_system_message_is_refused_naming_the_base_model_without_a_system_turn() -> None:
    capabilities = ChatCapabilities(model="microsoft/Phi-3-medium-4k-instruct", system_turn=False)
    problems = validate_record(SYSTEM_FIRST, "line 3", max_tokens=100, capabilities=capabilities)
    assert problems == [
        Problem(
            ProblemKind.SYSTEM_MESSAGE_UNSUPPORTED,
            "line 3",
            "message 1: a system message, but the chat template of "
            "microsoft/Phi-3-medium-4k-instruct has no system turn (training would drop or "
            "refuse it); leave it out or put its text into the first user message",
        )
    ]
    # Records without a system message are not affected.
    assert validate_record(GOOD, "line 4", max_tokens=100, capabilities=capabilities) == []


def test_the_token_counter_only_sees_records_without_problems() -> None:
    """A chat template may refuse what the schema rules already refuse (transformers refuses
    an empty conversation outright): such records must be reported, not crash the counter."""
    seen: list[list[dict[str, str]]] = []

    def strict_counter(messages: list[dict[str, str]]) -> int:
        if not messages or messages[0]["role"] != "user":
            raise AssertionError(f"the counter was given {messages!r}")
        seen.append(messages)
        return 5

    result = validate_records(
        [
            ("line 1", record()),
            ("line 2", record(("assistant", "Hello"), ("user", "Hi"))),
            ("line 3", with_changes(GOOD, messages=[{"role": "user", "content": 3}])),
            ("line 4", GOOD),
        ],
        max_tokens=100,
        count_tokens=strict_counter,
    )
    assert [ref for ref, _ in result.valid] == ["line 4"]
    assert result.invalid_refs == ["line 1", "line 2", "line 3"]
    assert len(seen) == 1


def test_a_conversation_the_counter_cannot_render_is_a_problem_of_that_record() -> None:
    def refusing_counter(messages: list[dict[str, str]]) -> int:
        if "refuse me" in messages[0]["content"]:
            raise ConversationNotRenderable("the chat template of m cannot render this: no")
        return 5

    refused = record(("user", "refuse me"), ("assistant", "ok"))
    result = validate_records(
        [("row 0", refused), ("row 1", GOOD)], max_tokens=100, count_tokens=refusing_counter
    )
    assert [ref for ref, _ in result.valid] == ["row 1"]
    assert result.problems == [
        Problem(
            ProblemKind.TEMPLATE_REFUSED, "row 0", "the chat template of m cannot render this: no"
        )
    ]


def test_data_with_no_messages_at_all_gets_a_schema_hint() -> None:
    items: list[tuple[str, object]] = [
        (f"row {i}", {"question": "Q", "answer": "A"}) for i in range(3)
    ]
    with pytest.raises(DataValidationError) as caught:
        apply_policy(validate_records(items, max_tokens=MAX_TOKENS), InvalidRecordPolicy())
    assert str(caught.value).endswith(
        "\nno record has a 'messages' field: the data must be chat records in ultrachat_200k's "
        "schema: prompt, prompt_id, messages (a list of {role, content})"
    )
    # One record with messages is enough to drop the hint: the schema is right, records are not.
    items.append(("row 3", GOOD))
    with pytest.raises(DataValidationError) as caught:
        apply_policy(validate_records(items, max_tokens=MAX_TOKENS), InvalidRecordPolicy())
    assert "no record has a 'messages' field" not in str(caught.value)
