"""A chat dataset written as a folder in the Hugging Face Hub's layout.

`HuggingFaceH4/ultrachat_200k` on the Hub is Parquet shards per split under `data/`
(`train_sft`, `test_sft`, `train_gen`, `test_gen`) and a README whose YAML header declares
the `default` configuration and which files make each split. A folder written here has the
same shape, so `datasets.load_dataset(<folder>, "default", split="train_sft[:1%]")` reads it
through the very code path a profile's `data.source: {kind: hub, name: ...}` uses for the Hub:
only the name differs. Tests and the real-size rehearsal use it; nothing here downloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ULTRACHAT_SPLITS = ("train_sft", "test_sft", "train_gen", "test_gen")
DEFAULT_CONFIG = "default"


def shard_names(split: str, shards: int) -> list[str]:
    """The Hub's shard file names: `data/<split>-00000-of-00003.parquet`, ..."""
    return [f"data/{split}-{index:05d}-of-{shards:05d}.parquet" for index in range(shards)]


def readme_header(splits: Sequence[str], config: str = DEFAULT_CONFIG) -> str:
    """The dataset card's YAML header: one configuration, each split's files by pattern."""
    card = {
        "configs": [
            {
                "config_name": config,
                "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits],
            }
        ]
    }
    return "---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n"


def write_hub_dataset(
    folder: Path,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    shards: int = 1,
    config: str = DEFAULT_CONFIG,
    description: str = "A chat dataset in ultrachat_200k's schema and the Hub's layout.",
) -> Path:
    """Write `splits` (split name -> records with prompt, prompt_id, messages) as Parquet
    shards under `folder/data/` plus `folder/README.md`; rows keep their order across shards.
    Returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("prompt_id", pa.string()),
            (
                "messages",
                pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])),
            ),
        ]
    )
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        rows = [
            {
                "prompt": record["prompt"],
                "prompt_id": record["prompt_id"],
                "messages": [
                    {"content": m["content"], "role": m["role"]} for m in record["messages"]
                ],
            }
            for record in records
        ]
        count = max(1, min(shards, len(rows)))
        per_shard = -(-len(rows) // count)  # ceiling: the last shard may be shorter
        for index, name in enumerate(shard_names(split, count)):
            part = rows[index * per_shard : (index + 1) * per_shard]
            pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / name)
    (folder / "README.md").write_text(
        readme_header(list(splits), config) + "\n" + description + "\n"
    )
    return folder
