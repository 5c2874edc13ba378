"""An operator's rollback outranks the gate's numbers (finetune_phi.evaluation.operator_veto)."""

from __future__ import annotations

from finetune_phi.evaluation import Evaluation, gate_decision, operator_veto
from finetune_phi.settings import GateSettings

BETTER = Evaluation("phi3-chat:2", 2.0, 7.4, 10, 100)
CHAMPION = Evaluation("phi3-chat:1", 2.5, 12.2, 10, 100)


def test_a_rolled_back_version_is_not_promoted_again() -> None:
    decision = gate_decision(BETTER, CHAMPION, GateSettings())
    assert decision.promote  # on the numbers it would win
    vetoed = operator_veto(decision, {"rolled_back": "2026-12-01: traffic moved to blue"})
    assert not vetoed.promote
    assert "operator rolled this version back (2026-12-01: traffic moved to blue)" in vetoed.reason
    assert vetoed.candidate == decision.candidate and vetoed.details == decision.details


def test_no_tag_or_no_promotion_leaves_the_decision_alone() -> None:
    decision = gate_decision(BETTER, CHAMPION, GateSettings())
    assert operator_veto(decision, {"gate": "promoted"}) is decision
    rejected = gate_decision(CHAMPION, BETTER, GateSettings())
    assert not rejected.promote
    assert operator_veto(rejected, {"rolled_back": "x"}) is rejected
