"""Stage: prepare the dataset (load, validate, split) into a content-addressed folder.

A thin Prefect wrapper: the work is `finetune_phi.chat_data.prepare_into_store`, validating for
the base model with its `chat_token_counter` (the counter training's template implies, which
also says whether the template has a system turn). The output folder is named after the
dataset's sha256, so an unchanged source maps to the same folder and later stages can tell from
the manifest whether the data changed.
"""

from __future__ import annotations

from prefect import get_run_logger, task

# chat_token_counter is re-exported: tests and bench/data.py import it from here.
from finetune_phi.chat_data import chat_token_counter, prepare_into_store
from finetune_phi.results import PreparedDataset
from finetune_phi.settings import Profile
from finetune_phi.state import StateLayout
from tasks.retry import retry_if_transient

__all__ = ["PreparedDataset", "chat_token_counter", "prepare_dataset_task"]


@task(
    name="prepare-dataset",
    retries=3,
    retry_delay_seconds=[10, 30, 60],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=3600,
)
def prepare_dataset_task(profile: Profile, tokenizer_source: str) -> PreparedDataset:
    logger = get_run_logger()
    stored = prepare_into_store(
        profile.data,
        StateLayout(profile.state_dir).datasets_dir,
        count_tokens=chat_token_counter(tokenizer_source),
        progress=logger.info,
    )
    manifest = stored.manifest
    counts = manifest.counts
    logger.info(
        "dataset %s: %d train / %d test (%d invalid dropped) in %s%s",
        manifest.dataset_sha256[:12],
        counts.train,
        counts.test,
        counts.invalid,
        stored.directory,
        " (re-used: same content as an earlier preparation)" if stored.reused else "",
    )
    return PreparedDataset(
        directory=str(stored.directory),
        train_file=str(stored.train_file),
        test_file=str(stored.test_file),
        manifest=manifest,
    )
