"""Stage: may the new candidate replace the champion.

`quality_gate` measures the candidate and the champion on the same held-out test set and
records the decision on the candidate's registry entry (tags `gate`, `gate_reason`), promoted
or rejected. (Whether the champion is already up to date is the run plan's decision:
`tasks/plan.py`.)
"""

from __future__ import annotations

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.chat_data.synthetic import fact_probes
from finetune_phi.evaluation import GateDecision, evaluate_model, gate_decision, operator_veto
from finetune_phi.results import PreparedDataset
from finetune_phi.settings import Profile
from finetune_phi.state import StateLayout
from finetune_phi.workspace import CHAMPION, ModelVersion
from tasks.retry import retry_if_transient


@task(
    name="quality-gate",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=3600,
)
def quality_gate(
    profile: Profile, dataset: PreparedDataset, candidate: ModelVersion
) -> GateDecision:
    logger = get_run_logger()
    workspace = open_workspace(profile)
    downloads = StateLayout(profile.state_dir).root / "downloads"
    # Fact questions exist only in the project's synthetic data; other data: loss only.
    probes = fact_probes() if profile.data.source.kind == "synthetic" else []

    def measure(model: ModelVersion):  # -> Evaluation
        folder = workspace.registry.download_model(model.name, model.version, downloads)
        return evaluate_model(
            folder,
            dataset.test_file,
            probes,
            label=f"{model.name}:{model.version}",
            max_conversations=profile.gate.max_eval_conversations,
        )

    champion = workspace.registry.get_model_by_alias(candidate.name, CHAMPION)
    if champion is not None and champion.version == candidate.version:
        champion = None  # the candidate is the champion already (e.g. an earlier promotion)
    candidate_eval = measure(candidate)
    champion_eval = measure(champion) if champion is not None else None
    decision = gate_decision(candidate_eval, champion_eval, profile.gate)
    if champion is not None:  # (a rolled-back version that is champion again was rolled forward)
        # Tags read afresh: an operator may have rolled this version back since it was made.
        current = workspace.registry.get_model(candidate.name, candidate.version)
        decision = operator_veto(decision, dict(current.tags))
    workspace.registry.set_model_tags(
        candidate.name,
        candidate.version,
        {
            "gate": "promoted" if decision.promote else "rejected",
            "gate_reason": decision.reason[:500],
            "gate_eval_loss": f"{candidate_eval.eval_loss:.6g}",
            "gate_champion": f"{champion.name}:{champion.version}" if champion else "",
        },
    )
    logger.info("quality gate: %s", decision.reason)
    return decision
