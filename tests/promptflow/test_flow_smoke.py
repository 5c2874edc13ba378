"""The whole flow with its Prompt flow smoke test, under the Prefect test harness.

The base model is the tiny Phi-3 already taught three facts (the session's `trained_model`),
so a short fine-tune keeps them and the smoke test can really check answers: first a fresh
endpoint gets a promoted model whose smoke answers are right; then a candidate that passes
the gate but is asked a question it cannot answer fails its smoke test, and the rollout is
undone: traffic exactly as before, the new deployment gone, the champion unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pf_helpers import TrainedModel
from profiles import small_profile_file

from backends.local.workspace import LocalWorkspace
from finetune_phi.rollout import RolloutFailed
from finetune_phi.workspace import CHAMPION

pytestmark = pytest.mark.slow

ENDPOINT = "phi3-chat-local"


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[LocalWorkspace]:
    ws = LocalWorkspace(tmp_path / "state")
    try:
        yield ws
    finally:
        for name in ws.endpoints.list_endpoints():
            ws.endpoints.delete_endpoint(name)


def test_smoke_test_passes_then_a_failing_one_rolls_back(
    prefect_harness: None,
    workspace: LocalWorkspace,
    tmp_path: Path,
    trained_model: TrainedModel,
) -> None:
    from flows.finetune import finetune_pipeline

    # A gentle fine-tune: the facts the base model knows survive it.
    profile = str(
        small_profile_file(
            tmp_path,
            trained_model.hf_path,
            training={"learning_rate": 1e-5},
            smoke={"enabled": True, "questions": 2, "min_accuracy": 1.0},
        )
    )

    first = finetune_pipeline(profile=profile)
    assert first.status == "promoted"
    assert first.traffic_after == {"blue": 100}
    smoke = first.rollout.smoke
    assert set(smoke) == {"deployment blue", "endpoint"}
    for result in smoke.values():
        assert result.passed, result.summary
        assert [a.question for a in result.answers] == [
            "Who founded Microsoft?",
            "What is the capital of France?",
        ]
        assert "Bill Gates" in result.answers[0].answer
        assert all(a.latency_ms > 0 for a in result.answers)

    # Same model lineage but a new seed (a new candidate the gate lets through), and a smoke
    # test that also asks a fact the model never learnt: it must fail and be undone.
    with pytest.raises(RolloutFailed, match="smoke test \\(direct\\)"):
        finetune_pipeline(
            profile=profile,
            training={"seed": 1},
            gate_tolerance=1.0,
            overrides={"smoke": {"questions": 3}},
        )
    assert workspace.endpoints.get_traffic(ENDPOINT).traffic == {"blue": 100}
    assert [d.name for d in workspace.endpoints.list_deployments(ENDPOINT)] == ["blue"]
    assert (
        workspace.registry.get_model_by_alias("phi3-chat", CHAMPION).version == first.model.version
    )
    answer = workspace.endpoints.invoke(
        ENDPOINT,
        {"messages": [{"role": "user", "content": "Who founded Microsoft?"}], "params": {}},
    )
    assert "Bill Gates" in answer["content"]  # live traffic never noticed
