"""The chat-data stage: chat records in the ultrachat_200k schema, checked, split and described.

`prepare_dataset(settings, out_dir)` is the entry point (`prepare_into_store` for the state
folder's content-addressed datasets), validating for a base model when given its
`chat_token_counter`; the modules underneath are pure except `sources` (reading), `template`
(the base model's tokenizer) and `prepare` (writing). Nothing here imports Prefect, and the heavy
libraries (`datasets`, `pyarrow`, `transformers`) load only when they are used.
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
    StoredDataset,
    load_manifest,
    prepare_dataset,
    prepare_into_store,
    verify_dataset,
)
from finetune_phi.chat_data.sources import DataFileNotFoundError, DataSourceError, iter_source
from finetune_phi.chat_data.split import split_records
from finetune_phi.chat_data.synthetic import (
    FACTS,
    Fact,
    FactProbe,
    answer_matches,
    fact_probes,
    generate_conversations,
)
from finetune_phi.chat_data.template import (
    ChatTemplateCounter,
    ChatTemplateError,
    chat_token_counter,
)
from finetune_phi.chat_data.validation import (
    ChatCapabilities,
    ConversationNotRenderable,
    DataValidationError,
    Problem,
    ProblemKind,
    TokenCounter,
    ValidationResult,
    apply_policy,
    estimate_tokens,
    validate_record,
    validate_records,
)

__all__ = [
    "FACTS",
    "ChatCapabilities",
    "ChatTemplateCounter",
    "ChatTemplateError",
    "ConversationNotRenderable",
    "DataFileNotFoundError",
    "DataSettings",
    "DataSource",
    "DataSourceError",
    "DataValidationError",
    "DatasetManifest",
    "Fact",
    "FactProbe",
    "FileSource",
    "HubSource",
    "InvalidRecordPolicy",
    "Problem",
    "ProblemKind",
    "StoredDataset",
    "SyntheticSource",
    "TokenCounter",
    "ValidationResult",
    "answer_matches",
    "apply_policy",
    "chat_token_counter",
    "estimate_tokens",
    "fact_probes",
    "generate_conversations",
    "iter_source",
    "load_manifest",
    "prepare_dataset",
    "prepare_into_store",
    "split_records",
    "validate_record",
    "validate_records",
    "verify_dataset",
]
