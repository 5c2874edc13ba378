"""ultrachat_200k-shaped data (issue #13): the schema, the project's validation, the shape
(turns, length distribution) and the real `datasets.load_dataset` with `train_sft[:1%]`."""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path
from typing import Any

import pytest

from finetune_phi.chat_data.config import HubSource
from finetune_phi.chat_data.sources import load_hub_records
from finetune_phi.chat_data.ultrachat_like import (
    LENGTH_MEDIAN_TOKENS,
    MAX_TOKENS,
    ROUNDS_DISTRIBUTION,
    approx_tokens,
    generate_ultrachat_like,
    write_ultrachat_like,
)
from finetune_phi.chat_data.validation import validate_records


@pytest.fixture(scope="module")
def conversations() -> list[dict]:
    return generate_ultrachat_like(2000, seed=5)


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_records_have_ultrachats_schema(conversations: list[dict]) -> None:
    for record in conversations:
        assert set(record) == {"prompt", "prompt_id", "messages"}
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(
            set(m) == {"role", "content"} and m["content"].strip() for m in record["messages"]
        )
        assert record["prompt"] == record["messages"][0]["content"]
        assert record["prompt_id"] == hashlib.sha256(record["prompt"].encode()).hexdigest()


def test_the_projects_validation_accepts_every_record(conversations: list[dict]) -> None:
    result = validate_records(
        ((f"record {i}", r) for i, r in enumerate(conversations)),
        max_tokens=MAX_TOKENS + 64,
        count_tokens=approx_tokens,
    )
    assert result.problems == []
    assert len(result.valid) == len(conversations)


def test_deterministic_and_each_conversation_depends_on_its_index_only() -> None:
    assert generate_ultrachat_like(30, seed=1) == generate_ultrachat_like(30, seed=1)
    assert generate_ultrachat_like(5, seed=1) == generate_ultrachat_like(30, seed=1)[:5]
    assert generate_ultrachat_like(5, seed=1) != generate_ultrachat_like(5, seed=2)


def test_turn_counts_follow_ultrachat(conversations: list[dict]) -> None:
    rounds = [len(r["messages"]) // 2 for r in conversations]
    assert min(rounds) == 1 and max(rounds) == len(ROUNDS_DISTRIBUTION)
    assert 3.65 <= statistics.mean(rounds) <= 4.05  # ultrachat: 3.85 rounds per dialogue


def test_lengths_follow_ultrachat(conversations: list[dict]) -> None:
    """In the generator's own reckoning (words x tokens per word + template tokens); the real
    tokenizer's counts are checked in tests/test_real_size.py. Targets: median 1,250, p95
    2,620, 14% past 2,048 (the module's notes say where they come from)."""
    tokens = [approx_tokens(r["messages"]) for r in conversations]
    assert 1150 <= _quantile(tokens, 0.5) <= 1350
    assert 2350 <= _quantile(tokens, 0.95) <= 2900
    assert 1300 <= statistics.mean(tokens) <= 1500  # ultrachat: 1,467 on average
    assert 0.09 <= sum(t > 2048 for t in tokens) / len(tokens) <= 0.20  # the long tail
    assert max(tokens) <= MAX_TOKENS * 1.05
    assert _quantile(tokens, 0.5) == pytest.approx(LENGTH_MEDIAN_TOKENS, rel=0.08)
    # Assistants write most of it, as in ultrachat.
    user = sum(len(m["content"]) for r in conversations for m in r["messages"][::2])
    assistant = sum(len(m["content"]) for r in conversations for m in r["messages"][1::2])
    assert 2.5 <= assistant / user <= 6


def test_the_text_looks_like_chat(conversations: list[dict]) -> None:
    replies = [m["content"] for r in conversations[:200] for m in r["messages"][1::2]]
    assert any("\n\n" in reply for reply in replies)  # paragraphs
    assert any("\n1. " in reply for reply in replies)  # numbered lists
    words = [w for reply in replies for w in reply.split()]
    assert 3 <= statistics.mean(len(w) for w in words) <= 9
    assert len(set(words)) > 5000


@pytest.fixture
def offline_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and no writes to the user's cache: datasets' cache lives in tmp_path."""
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.mark.usefixtures("offline_datasets")
def test_the_hub_layout_loads_with_the_tutorials_split(tmp_path: Path) -> None:
    import datasets

    folder = write_ultrachat_like(
        tmp_path / "ultrachat_200k",
        train_sft=400,
        test_sft=50,
        train_gen=30,
        test_gen=20,
        seed=3,
        shards=3,
    )
    names = sorted(p.name for p in (folder / "data").iterdir())
    assert names[:3] == [
        "test_gen-00000-of-00003.parquet",
        "test_gen-00001-of-00003.parquet",
        "test_gen-00002-of-00003.parquet",
    ]
    assert len(names) == 12

    # The call the tutorial makes, through the real datasets library ...
    first_percent: Any = datasets.load_dataset(str(folder), "default", split="train_sft[:1%]")
    assert first_percent.num_rows == 4
    assert first_percent.column_names == ["prompt", "prompt_id", "messages"]
    # ... and through the project's hub source, which a profile's data.source uses.
    rows: list[Any] = [
        row
        for _, row in load_hub_records(
            HubSource(kind="hub", name=str(folder), split="train_sft[:1%]")
        )
    ]
    assert [row["prompt_id"] for row in rows] == first_percent["prompt_id"]
    assert rows[0]["messages"] == first_percent[0]["messages"]
    assert len(rows[0]["messages"]) % 2 == 0 and rows[0]["messages"][-1]["role"] == "assistant"

    splits = datasets.load_dataset(str(folder), "default")
    assert {name: split.num_rows for name, split in splits.items()} == {
        "train_sft": 400,
        "test_sft": 50,
        "train_gen": 30,
        "test_gen": 20,
    }
    ids = [set(split["prompt_id"]) for split in splits.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 500  # no conversation in two splits
