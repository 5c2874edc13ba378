"""The chat-data configuration models, validated in JSON mode as profiles are."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from finetune_phi.chat_data.config import (
    DataSettings,
    FileSource,
    HubSource,
    InvalidRecordPolicy,
    SyntheticSource,
)


def test_defaults_use_the_synthetic_source() -> None:
    settings = DataSettings.model_validate_json("{}")
    assert settings.source == SyntheticSource(kind="synthetic", conversations=1200, seed=0)
    assert settings.test_fraction == 0.2
    assert settings.max_tokens == 2048
    assert settings.invalid == InvalidRecordPolicy(action="drop", max_invalid_fraction=0.05)


@pytest.mark.parametrize(
    ("source_json", "expected_type"),
    [
        ('{"kind": "hub"}', HubSource),
        ('{"kind": "file", "path": "data/train.jsonl"}', FileSource),
        ('{"kind": "synthetic", "conversations": 50}', SyntheticSource),
    ],
)
def test_kind_chooses_the_source(source_json: str, expected_type: type) -> None:
    settings = DataSettings.model_validate_json(f'{{"source": {source_json}}}')
    assert type(settings.source) is expected_type


def test_hub_defaults_follow_the_tutorial() -> None:
    source = DataSettings.model_validate_json('{"source": {"kind": "hub"}}').source
    assert source == HubSource(
        kind="hub",
        name="HuggingFaceH4/ultrachat_200k",
        config="default",
        split="train_sft[:1%]",
        revision=None,
    )


def test_file_path_string_becomes_a_path() -> None:
    settings = DataSettings.model_validate_json(
        '{"source": {"kind": "file", "path": "data/x.parquet"}}'
    )
    assert isinstance(settings.source, FileSource)
    assert settings.source.path == Path("data/x.parquet")


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValidationError, match="test_fractoin"):
        DataSettings.model_validate_json('{"test_fractoin": 0.3}')


def test_unknown_key_inside_a_source_is_named() -> None:
    with pytest.raises(ValidationError, match="revison"):
        DataSettings.model_validate_json('{"source": {"kind": "hub", "revison": "main"}}')


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValidationError, match="kind"):
        DataSettings.model_validate_json('{"source": {"kind": "s3"}}')


@pytest.mark.parametrize(
    "settings_json",
    [
        '{"test_fraction": "0.2"}',
        '{"max_tokens": "2048"}',
        '{"seed": 1.5}',
        '{"source": {"kind": "synthetic", "conversations": "10"}}',
    ],
)
def test_wrong_types_are_not_coerced(settings_json: str) -> None:
    with pytest.raises(ValidationError):
        DataSettings.model_validate_json(settings_json)


@pytest.mark.parametrize(
    "settings_json",
    [
        '{"test_fraction": 0}',
        '{"test_fraction": 1}',
        '{"max_tokens": 4}',
        '{"invalid": {"max_invalid_fraction": 1.5}}',
        '{"invalid": {"action": "ignore"}}',
        '{"source": {"kind": "synthetic", "conversations": 0}}',
    ],
)
def test_out_of_range_values_are_rejected(settings_json: str) -> None:
    with pytest.raises(ValidationError):
        DataSettings.model_validate_json(settings_json)


def test_settings_are_frozen() -> None:
    settings = DataSettings()
    with pytest.raises(ValidationError):
        settings.seed = 3


def test_every_field_is_described() -> None:
    for model in (DataSettings, HubSource, FileSource, SyntheticSource, InvalidRecordPolicy):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
