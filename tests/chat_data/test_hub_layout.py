"""The Hub loader runs for real: `datasets.load_dataset` on a folder in the Hub's layout, with
the tutorial's split syntax, through the same `load_hub_records` a hub profile uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_phi.chat_data import prepare_dataset
from finetune_phi.chat_data.config import DataSettings, HubSource
from finetune_phi.chat_data.hub_layout import shard_names, write_hub_dataset
from finetune_phi.chat_data.sources import DataSourceError, load_hub_records
from finetune_phi.chat_data.synthetic import generate_conversations
from finetune_phi.errors import UsageError


@pytest.fixture(autouse=True)
def offline_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and no writes to the user's cache: datasets' cache lives in tmp_path."""
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture
def ultrachat_like(tmp_path: Path) -> tuple[Path, list[dict]]:
    records = generate_conversations(500, seed=7)
    train, test = records[:400], records[400:]
    folder = write_hub_dataset(
        tmp_path / "ultrachat_200k", {"train_sft": train, "test_sft": test}, shards=3
    )
    return folder, train


def test_the_folder_has_the_hubs_layout(ultrachat_like: tuple[Path, list[dict]]) -> None:
    folder, _ = ultrachat_like
    written = sorted(str(p.relative_to(folder)) for p in (folder / "data").iterdir())
    assert written == sorted(shard_names("train_sft", 3) + shard_names("test_sft", 3))
    assert "config_name: default" in (folder / "README.md").read_text()


def test_the_tutorials_split_expression_reads_the_first_percent(
    ultrachat_like: tuple[Path, list[dict]],
) -> None:
    folder, train = ultrachat_like
    source = HubSource(kind="hub", name=str(folder), split="train_sft[:1%]")

    rows = list(load_hub_records(source))  # the real datasets.load_dataset

    assert [ref for ref, _ in rows] == ["row 0", "row 1", "row 2", "row 3"]  # 1% of 400
    assert [row["prompt_id"] for _, row in rows] == [r["prompt_id"] for r in train[:4]]
    assert rows[0][1]["messages"] == train[0]["messages"]


def test_other_splits_and_slices(ultrachat_like: tuple[Path, list[dict]]) -> None:
    folder, train = ultrachat_like
    test_split = list(load_hub_records(HubSource(kind="hub", name=str(folder), split="test_sft")))
    assert len(test_split) == 100
    window = list(
        load_hub_records(HubSource(kind="hub", name=str(folder), split="train_sft[10:15]"))
    )
    assert [row["prompt_id"] for _, row in window] == [r["prompt_id"] for r in train[10:15]]


def test_a_split_the_dataset_lacks_is_a_clear_error(
    ultrachat_like: tuple[Path, list[dict]],
) -> None:
    folder, _ = ultrachat_like
    with pytest.raises(DataSourceError, match="split 'train_gen'.*cannot be loaded") as caught:
        list(load_hub_records(HubSource(kind="hub", name=str(folder), split="train_gen")))
    assert isinstance(caught.value, UsageError)  # the CLI prints it as one paragraph, exit 2


def test_a_hub_source_prepares_like_any_other(
    ultrachat_like: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    folder, _ = ultrachat_like
    settings = DataSettings.model_validate(
        {"source": {"kind": "hub", "name": str(folder), "split": "train_sft[:25%]"}}
    )
    manifest = prepare_dataset(settings, tmp_path / "prepared")
    assert manifest.counts.input == 100 and manifest.counts.invalid == 0
    assert manifest.counts.train + manifest.counts.test == 100
