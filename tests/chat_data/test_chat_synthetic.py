"""The synthetic chat generator: exact size, distinct, deterministic, varied, learnable facts."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_phi.chat_data.synthetic import (
    FACTS,
    QUESTIONS_PER_FACT,
    FactProbe,
    answer_matches,
    fact_probes,
    generate_conversations,
    max_conversations,
)
from finetune_phi.chat_data.validation import validate_records

REPO = Path(__file__).resolve().parents[2]


def _digest(records: list[dict[str, Any]]) -> str:
    text = "\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return generate_conversations(1200, seed=0)


@pytest.mark.parametrize("n", [1, 7, 1200])
def test_makes_exactly_n_conversations(n: int) -> None:
    assert len(generate_conversations(n, seed=3)) == n


def test_conversations_are_distinct(records: list[dict[str, Any]]) -> None:
    keys = {json.dumps(r["messages"], sort_keys=True) for r in records}
    assert len(keys) == len(records)


def test_large_requests_stay_distinct() -> None:
    many = generate_conversations(20_000, seed=1)
    assert len({json.dumps(r["messages"]) for r in many}) == 20_000


def test_records_pass_validation(records: list[dict[str, Any]]) -> None:
    result = validate_records(((f"record {i}", r) for i, r in enumerate(records)), max_tokens=2048)
    assert result.problems == []


def test_same_seed_same_records_and_other_seed_differs() -> None:
    first = generate_conversations(300, seed=5)
    assert generate_conversations(300, seed=5) == first
    assert generate_conversations(300, seed=6) != first


def test_identical_in_another_process_with_another_hash_seed(
    records: list[dict[str, Any]],
) -> None:
    code = (
        "import hashlib, json\n"
        "from finetune_phi.chat_data.synthetic import generate_conversations\n"
        "rs = generate_conversations(1200, seed=0)\n"
        "text = '\\n'.join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rs)\n"
        "print(hashlib.sha256(text.encode('utf-8')).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == _digest(records)


def test_schema_prompt_and_prompt_id(records: list[dict[str, Any]]) -> None:
    for r in records:
        assert list(r) == ["prompt", "prompt_id", "messages"]
        first_user = next(m["content"] for m in r["messages"] if m["role"] == "user")
        assert r["prompt"] == first_user
        assert r["prompt_id"] == hashlib.sha256(first_user.encode("utf-8")).hexdigest()


def test_mix_of_single_multi_turn_and_system(records: list[dict[str, Any]]) -> None:
    exchanges = [sum(m["role"] == "user" for m in r["messages"]) for r in records]
    multi = sum(count > 1 for count in exchanges) / len(records)
    assert 0.2 <= multi <= 0.3
    assert set(exchanges) == {1, 2, 3}
    systems = {r["messages"][0]["content"] for r in records if r["messages"][0]["role"] == "system"}
    assert len(systems) >= 3
    assert sum(r["messages"][0]["role"] == "system" for r in records) > 0.1 * len(records)


def test_conversations_are_short(records: list[dict[str, Any]]) -> None:
    words = max(sum(len(m["content"].split()) for m in r["messages"]) for r in records)
    assert words < 200


def test_microsoft_question_is_asked(records: list[dict[str, Any]]) -> None:
    answers = {m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"}
    assert "Microsoft was founded by Bill Gates and Paul Allen in 1975." in answers
    assert any("Who founded Microsoft?" in r["prompt"] for r in records)


def test_fact_answers_are_canonical_and_every_fact_is_taught(
    records: list[dict[str, Any]],
) -> None:
    answer_by_question = {q: f.answer for f in FACTS for q in f.questions}
    taught: set[str] = set()
    for r in records:
        messages = r["messages"]
        for user, assistant in itertools.pairwise(messages):
            if user["role"] != "user":
                continue
            asked = [q for q in answer_by_question if q in user["content"]]
            if asked:
                assert assistant["content"] == answer_by_question[asked[0]]
                taught.add(asked[0])
    assert {f.answer for f in FACTS} <= {answer_by_question[q] for q in taught}


def test_fact_table_shape() -> None:
    assert 30 <= len(FACTS) <= 40
    assert FACTS[0].questions[0] == "Who founded Microsoft?"
    assert FACTS[0].answer == "Microsoft was founded by Bill Gates and Paul Allen in 1975."
    for fact in FACTS:
        assert 5 <= len(fact.questions) == QUESTIONS_PER_FACT <= 8
        lowered = fact.answer.lower()
        assert all(keyword.lower() in lowered for keyword in fact.keywords), fact.id


def test_probes_one_per_fact_microsoft_first() -> None:
    probes = fact_probes()
    assert [p.fact_id for p in probes] == [f.id for f in FACTS]
    assert probes[0] == FactProbe(
        fact_id="microsoft_founders",
        question="Who founded Microsoft?",
        expected_keywords=("Bill Gates", "Paul Allen"),
    )
    for probe, fact in zip(probes, FACTS, strict=True):
        assert answer_matches(probe, fact.answer)


def test_answer_matches_needs_every_keyword_ignoring_case() -> None:
    probe = fact_probes()[0]
    assert answer_matches(probe, "It was BILL GATES with paul allen.")
    assert not answer_matches(probe, "Bill Gates founded it.")
    assert not answer_matches(probe, "")


def test_capacity_is_large_and_enforced() -> None:
    assert max_conversations() >= 20_000
    with pytest.raises(ValueError, match=r"cannot generate \d+ distinct conversations"):
        generate_conversations(max_conversations() + 1)
    with pytest.raises(ValueError, match="at least 1"):
        generate_conversations(0)
