"""Fixtures for the Azure backend's offline tests: the real MLClient over `FakeAzureML`.

`azure_fake` is the stateful fake service (see fake_azure.py), installed under `responses`;
`azure_workspace` is a ready `AzureWorkspace` talking to it through the real SDK with a fake
credential. `azure_helpers.make_azure_workspace(fake, **settings)` builds more (other
settings, other clocks).

For a flow end to end on the fake (test_azure_flow.py does it): use `azure_fake` +
`make_azure_workspace`, and make `backends.open_workspace` return that workspace where the
tasks import it (`azure_helpers.use_workspace_in_tasks` patches every `tasks.*` module that
does); `azure_helpers.azure_profile_file` writes a small Azure profile naming the fake's
workspace; `azure_fake.job_runner = azure_helpers.run_job_here` makes jobs really train
(real MLflow model outputs, as the quality gate needs). Scoring: every deployment answers
through `serving.contract` with "Bill Gates and Paul Allen (<deployment>)";
`azure_fake.scorers[name] = failing_scorer()` makes one fail, `canned_scorer(name, answer=...)`
makes it say something else. Dataset files given as local paths are uploaded to the fake blob
store by the SDK itself, as they would be to Azure.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses

sys.path.insert(0, str(Path(__file__).parent))  # fake_azure, beside this file

from azure_helpers import make_azure_workspace  # noqa: E402
from fake_azure import FakeAzureML  # noqa: E402

from backends.azure.workspace import AzureWorkspace  # noqa: E402


@pytest.fixture
def azure_fake() -> Iterator[FakeAzureML]:
    fake = FakeAzureML()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake.install(rsps)
        yield fake


@pytest.fixture
def azure_workspace(azure_fake: FakeAzureML, tmp_path: Path) -> AzureWorkspace:
    return make_azure_workspace(azure_fake, tmp_path)


@pytest.fixture
def dataset_files(tmp_path: Path) -> tuple[str, str]:
    """A tiny train/test pair in ultrachat_200k's schema (uploaded by the SDK on submit)."""
    import json

    folder = tmp_path / "data"
    folder.mkdir()
    record = {
        "prompt": "Who founded Microsoft?",
        "prompt_id": "0",
        "messages": [
            {"role": "user", "content": "Who founded Microsoft?"},
            {"role": "assistant", "content": "Bill Gates and Paul Allen."},
        ],
    }
    for name in ("train.jsonl", "test.jsonl"):
        (folder / name).write_text(json.dumps(record) + "\n")
    return str(folder / "train.jsonl"), str(folder / "test.jsonl")
