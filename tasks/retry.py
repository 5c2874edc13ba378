"""Retry policy shared by every task: retry transient failures only.

A timeout, a throttled or unavailable service, a dropped connection: retrying may help. A bad
request, a missing resource, a failed training job, a rejected rollout: retrying repeats the
failure and hides it. The classification itself is `finetune_phi.workspace.is_transient`, the
same one the backends use.
"""

from __future__ import annotations

from typing import Any

from finetune_phi.workspace import is_transient


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only when the task failed with a transient error."""
    try:
        outcome = state.result(raise_on_failure=False)
    except Exception as exc:  # reading the result can itself fail: judge that error
        outcome = exc
    return isinstance(outcome, BaseException) and is_transient(outcome)
