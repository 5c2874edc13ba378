"""The chat-data stage: chat records in the ultrachat_200k schema, checked, split and described.

`prepare_dataset(settings, out_dir)` is the entry point; the modules underneath are pure except
`sources` (reading) and `prepare` (writing). Nothing here imports Prefect, and the heavy readers
(`datasets`, `pyarrow`) load only when their source is used.
"""

from __future__ import annotations

from finetune_phi.chat_data.config import (
    DataSettings,
    DataSource,
    FileSource,
    HubSource,
    InvalidRecordPolicy,
    SyntheticSource,
)
from finetune_phi.chat_data.prepare import (
    DatasetManifest,
    load_manifest,
    prepare_dataset,
    verify_dataset,
)
from finetune_phi.chat_data.sources import iter_source
from finetune_phi.chat_data.split import split_records
from finetune_phi.chat_data.synthetic import (
    FACTS,
    Fact,
    FactProbe,
    answer_matches,
    fact_probes,
    generate_conversations,
)
from finetune_phi.chat_data.validation import (
    DataValidationError,
    Problem,
    ProblemKind,
    ValidationResult,
    apply_policy,
    validate_record,
    validate_records,
)

__all__ = [
    "FACTS",
    "DataSettings",
    "DataSource",
    "DataValidationError",
    "DatasetManifest",
    "Fact",
    "FactProbe",
    "FileSource",
    "HubSource",
    "InvalidRecordPolicy",
    "Problem",
    "ProblemKind",
    "SyntheticSource",
    "ValidationResult",
    "answer_matches",
    "apply_policy",
    "fact_probes",
    "generate_conversations",
    "iter_source",
    "load_manifest",
    "prepare_dataset",
    "split_records",
    "validate_record",
    "validate_records",
    "verify_dataset",
]
