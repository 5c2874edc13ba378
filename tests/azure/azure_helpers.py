"""Shared builders for the Azure backend tests: a fake credential, settings, workspaces, jobs,
and for flows on the fake: an Azure profile, the tasks' `open_workspace`, a compute node.

Test modules import these from here, never `from conftest import ...`: several conftest.py
files exist in the suite and which one `import conftest` finds depends on collection order.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_azure import REGION, RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FakeAzureML

from backends.azure.workspace import AzureWorkspace
from finetune_phi.settings import AzureBackendSettings
from finetune_phi.workspace import TrainingJobSpec
from trainer.config import Hyperparameters, RunOptions

BASE_MODEL = "microsoft/Phi-3.5-mini-instruct"


def job_spec(train: str, test: str, name: str = "ft-0123abcd-base-cfg") -> TrainingJobSpec:
    hp = Hyperparameters(num_train_epochs=1.0, learning_rate=1e-4, packing=False)
    return TrainingJobSpec(
        name=name,
        experiment="finetune-phi",
        base_model=BASE_MODEL,
        train_file=train,
        eval_file=test,
        hyperparameters=hp,
        run_options=RunOptions(save_steps=50),
        tags={"dataset_sha256": "d" * 64, "trainer_config_hash": hp.config_hash()},
        display_name="fine-tune test",
    )


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
    sleep: Callable[[float], None] | None = None,
    **overrides: Any,
) -> AzureWorkspace:
    """An AzureWorkspace over `fake` through the real MLClient (fake credential, no sleeping:
    the job poller's waits go to `sleeps`, or to a `sleep` of the test's own)."""
    recorded = sleeps if sleeps is not None else []
    return AzureWorkspace(
        azure_settings(**overrides),
        credential=credential or FakeCredential(),
        client_kwargs=CLIENT_KWARGS,
        sleep=sleep or recorded.append,
        code_staging_dir=tmp_path / "code-staging",
    )


# --------------------------------------------------------------------------- flows on the fake


def azure_profile_file(tmp_path: Path, base_model: Path, **sections: dict[str, Any]) -> Path:
    """tests/profiles.py's small profile (tiny model, small synthetic data, a few steps) with
    the fake's workspace as its Azure backend; `sections` extend or replace sections."""
    from profiles import small_profile_file

    backend = azure_settings().model_dump(mode="json")
    backend.update(sections.pop("backend", {}))
    return small_profile_file(tmp_path, base_model, backend=backend, **sections)


def use_workspace_in_tasks(monkeypatch: pytest.MonkeyPatch, workspace: AzureWorkspace) -> list[str]:
    """Make every task module's `open_workspace` hand out `workspace` (the flow's only way to
    a backend) to profiles naming its workspace; the modules patched, found by looking (a new
    task module cannot be missed), not listed."""
    import backends
    import tasks

    def open_workspace(profile: Any) -> AzureWorkspace:
        assert profile.backend == workspace.settings, profile.backend  # the profile's workspace
        return workspace

    patched = []
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        if getattr(module, "open_workspace", None) is backends.open_workspace:
            monkeypatch.setattr(module, "open_workspace", open_workspace)
            patched.append(module.__name__)
    return patched


def run_job_here(argv: Sequence[str]) -> None:
    """A compute node for `FakeAzureML.job_runner`: the submitted command, run in this process
    (the same interpreter and code the SDK uploaded; the base model is a local folder). Its
    steps (`A && B`) are the trainer and `serving.evaluate`, run in order as a shell would."""
    from model_guard import on_node

    from serving import evaluate
    from trainer.fine_tune import main, parse_arguments

    steps: list[list[str]] = [[]]
    for arg in argv:
        if arg == "&&":
            steps.append([])
        else:
            steps[-1].append(arg)
    for step in steps:
        module = step[2] if step[:2] == ["python", "-m"] else None
        with on_node():  # loading models is what a node does (tests/model_guard.py)
            if module == "trainer.fine_tune":
                main(*parse_arguments(step[3:]))
            elif module == "serving.evaluate":
                evaluate.main(step[3:])
            else:
                raise AssertionError(f"the fake node runs the trainer and serving.evaluate: {step}")
