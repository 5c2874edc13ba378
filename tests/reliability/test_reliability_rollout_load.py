"""Rollout under load, smaller: bench/rollout_load.py's own code with the session's tiny model.

The real front and deployment server processes, the project's plan_rollout/execute_rollout,
8 concurrent clients through the front: a full blue -> green rollout, then a rollout that is
rolled back after its new deployment had all the traffic (its smoke check through the endpoint
fails). No request may fail, and answers must come from the expected deployments: both colours
while a rollout runs, only the one left live once it returned. The full run (2,000 requests a
phase) is `python -m bench.rollout_load`; its figures are in RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.rollout_load import describe, run

pytestmark = pytest.mark.slow


def test_no_request_fails_across_a_rollout_and_a_rollback(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    results = run(
        tmp_path / "state",
        tiny_model_dir,
        phases=("rollout", "rollback-smoke"),
        requests=300,
        concurrency=8,
        max_new_tokens=4,
        max_seconds=300,
        log=lambda _: None,
    )
    print("\n" + "\n".join(line for result in results for line in describe(result)))

    rollout, rollback = results
    for result in results:
        assert len(result.samples) >= 300
        assert result.failures == [], result.failures[:3]
        assert result.problems == [], result.problems

    assert rollout.outcome == "succeeded"
    assert set(rollout.answered_by(after=False)) == {"blue", "green"}
    assert set(rollout.answered_by(after=True)) == {"green"}
    assert rollout.final_traffic == {"green": 100}

    assert rollback.outcome.startswith("rolled back: ")
    assert "failed at smoke test (endpoint)" in rollback.outcome
    # The new deployment (blue again) served live traffic before the rollback took it away.
    assert set(rollback.answered_by(after=False)) == {"green", "blue"}
    assert set(rollback.answered_by(after=True)) == {"green"}
    assert rollback.final_traffic == {"green": 100}
