"""Proof that the flow's own process never loads model weights.

`forbid_model_loading(monkeypatch)` replaces every way the project loads a model (transformers'
`from_pretrained`, MLflow's transformers loader, the scoring script's `Scorer.load`) with a
guard that fails the test when called, except on a compute node: code running under
`on_node()` (the Azure fake's in-process node, `azure_helpers.run_job_here`). Local jobs and
deployments are processes of their own and are not affected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import pytest

_ON_NODE: ContextVar[bool] = ContextVar("finetune_phi_tests_on_node", default=False)


class ModelLoadedInFlowProcess(AssertionError):
    pass


@contextlib.contextmanager
def on_node() -> Iterator[None]:
    """Model loading is what a compute node does: allowed inside."""
    token = _ON_NODE.set(True)
    try:
        yield
    finally:
        _ON_NODE.reset(token)


def _guarded(name: str, original: Callable[..., Any], calls: list[str]) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        if not _ON_NODE.get():
            calls.append(name)
            raise ModelLoadedInFlowProcess(f"{name} was called in the flow's process")
        return original(*args, **kwargs)

    return guard


def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Guard the loaders; the list of guarded calls made outside a node (empty is the goal)."""
    import mlflow.transformers
    from transformers import PreTrainedModel

    from serving.score import Scorer

    calls: list[str] = []
    from_pretrained = PreTrainedModel.__dict__["from_pretrained"].__func__
    monkeypatch.setattr(
        PreTrainedModel,
        "from_pretrained",
        classmethod(_guarded("PreTrainedModel.from_pretrained", from_pretrained, calls)),
    )
    monkeypatch.setattr(
        mlflow.transformers,
        "load_model",
        _guarded("mlflow.transformers.load_model", mlflow.transformers.load_model, calls),
    )
    load = Scorer.__dict__["load"].__func__
    monkeypatch.setattr(Scorer, "load", classmethod(_guarded("Scorer.load", load, calls)))
    return calls
