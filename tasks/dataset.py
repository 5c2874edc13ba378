"""Stage: prepare the dataset (load, validate, split) into a content-addressed folder.

The output folder is named after the dataset's sha256, so an unchanged source maps to the same
folder and later stages can tell from the manifest whether the data changed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task

from finetune_phi.chat_data import DatasetManifest, prepare_dataset
from finetune_phi.chat_data.validation import TokenCounter
from finetune_phi.settings import Profile
from finetune_phi.state import StateLayout
from tasks.retry import retry_if_transient


@dataclass(frozen=True)
class PreparedDataset:
    directory: str
    train_file: str
    test_file: str
    manifest: DatasetManifest

    @property
    def sha256(self) -> str:
        return self.manifest.dataset_sha256


def chat_token_counter(tokenizer_source: str) -> TokenCounter:
    """Counts tokens the way training sees them: the chat template applied, then tokenized."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)

    def count(messages: list[dict[str, str]]) -> int:
        # transformers 5 returns a BatchEncoding here (len() of which is its number of keys),
        # so ask for the dict explicitly and count the ids.
        encoded: Any = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return len(encoded["input_ids"])

    return count


@task(
    name="prepare-dataset",
    retries=3,
    retry_delay_seconds=[10, 30, 60],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=3600,
)
def prepare_dataset_task(profile: Profile, tokenizer_source: str) -> PreparedDataset:
    logger = get_run_logger()
    datasets_dir = StateLayout(profile.state_dir).datasets_dir
    staging = datasets_dir / ".incoming"
    shutil.rmtree(staging, ignore_errors=True)
    manifest = prepare_dataset(
        profile.data,
        staging,
        count_tokens=chat_token_counter(tokenizer_source),
        progress=logger.info,
    )
    final = datasets_dir / manifest.dataset_sha256[:16]
    if final.exists():
        # Same content as an earlier run: keep the folder earlier runs point at.
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    counts = manifest.counts
    logger.info(
        "dataset %s: %d train / %d test (%d invalid dropped) in %s",
        manifest.dataset_sha256[:12],
        counts.train,
        counts.test,
        counts.invalid,
        final,
    )
    return PreparedDataset(
        directory=str(final),
        train_file=str(final / "train.jsonl"),
        test_file=str(final / "test.jsonl"),
        manifest=manifest,
    )
