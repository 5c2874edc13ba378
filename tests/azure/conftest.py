"""Fixtures for the Azure backend's offline tests: the real MLClient over `FakeAzureML`.

`azure_fake` is the stateful fake service (see fake_azure.py), installed under `responses`;
`azure_workspace` is a ready `AzureWorkspace` talking to it through the real SDK with a fake
credential. `make_azure_workspace(fake, **settings)` builds more (other settings, other clocks).

For a flow end to end on the fake: use `azure_fake` + `make_azure_workspace`, and make
`backends.open_workspace` return that workspace (monkeypatch `backends.open_workspace` where
the tasks import it: `tasks.training.open_workspace`, `tasks.registry.open_workspace`,
`tasks.rollout.open_workspace`). Scoring: every deployment answers through
`serving.contract` with "Bill Gates and Paul Allen (<deployment>)"; `azure_fake.scorers[name]
= failing_scorer()` makes one fail. Dataset files given as local paths are uploaded to the
fake blob store by the SDK itself, as they would be to Azure.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

sys.path.insert(0, str(Path(__file__).parent))  # fake_azure, beside this file

from fake_azure import REGION, RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FakeAzureML  # noqa: E402

from backends.azure.workspace import AzureWorkspace  # noqa: E402
from finetune_phi.settings import AzureBackendSettings  # noqa: E402


class FakeCredential:
    """A token credential that never talks to Entra ID (azure-core's TokenCredential shape)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.requests = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        self.requests += 1
        if self.fail:
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
        return AccessToken("fake-token", 4_102_444_800)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        self.get_token(*scopes)
        return AccessTokenInfo("fake-token", 4_102_444_800)


# Fast azure-core retries: same policy (Retry-After honoured), no long sleeps.
CLIENT_KWARGS = {"retry_total": 3, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


def azure_settings(**overrides: Any) -> AzureBackendSettings:
    values: dict[str, Any] = {
        "kind": "azure",
        "subscription_id": SUBSCRIPTION,
        "resource_group": RESOURCE_GROUP,
        "workspace": WORKSPACE,
        "region": REGION,
        "job_poll_seconds": 0.01,
    }
    values.update(overrides)
    return AzureBackendSettings.model_validate(values)


def make_azure_workspace(
    fake: FakeAzureML,
    tmp_path: Path,
    *,
    credential: Any = None,
    sleeps: list[float] | None = None,
    **overrides: Any,
) -> AzureWorkspace:
    """An AzureWorkspace over `fake` through the real MLClient (fake credential, no sleeping)."""
    recorded = sleeps if sleeps is not None else []
    return AzureWorkspace(
        azure_settings(**overrides),
        credential=credential or FakeCredential(),
        client_kwargs=CLIENT_KWARGS,
        sleep=recorded.append,
        code_staging_dir=tmp_path / "code-staging",
    )


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
