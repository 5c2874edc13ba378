"""Stage: may the new candidate replace the champion.

`quality_gate` compares the candidate and the champion measured the same way on the same
held-out test set, and records the decision on the candidate's registry entry (tags `gate`,
`gate_reason`), promoted or rejected. (Whether the champion is already up to date is the run
plan's decision: `tasks/plan.py`.)

No model is loaded here: this task reads numbers. The candidate was measured by its training
job's second step, on the training compute; a model without a matching measurement (the
champion on new data, or a candidate trained before, with other gate settings) is measured by
an evaluation job on the same compute, whose name says which version and which question, so
a champion is measured once per dataset and found again by later runs.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.errors import FinetunePhiError
from finetune_phi.evaluation import (
    Evaluation,
    GateDecision,
    answers,
    evaluation_from_output,
    evaluation_job_spec,
    evaluation_spec,
    gate_decision,
    gate_probes,
    operator_veto,
)
from finetune_phi.results import PreparedDataset, TrainingResult
from finetune_phi.settings import Profile
from finetune_phi.workspace import (
    CHAMPION,
    ComputeRef,
    EnvironmentRef,
    JobStatus,
    ModelVersion,
)
from tasks.jobs import follow_job
from tasks.retry import retry_if_transient


class EvaluationJobFailed(FinetunePhiError, RuntimeError):
    """An evaluation job ended without its evaluation; the message says where to look."""


@task(
    name="quality-gate",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=6 * 3600,
)
def quality_gate(
    profile: Profile,
    dataset: PreparedDataset,
    candidate: ModelVersion,
    trained: TrainingResult | None = None,
    environment: EnvironmentRef | None = None,
    compute: ComputeRef | None = None,
) -> GateDecision:
    logger = get_run_logger()
    workspace = open_workspace(profile)
    jobs, registry = workspace.jobs, workspace.registry
    spec = evaluation_spec(profile, dataset.sha256, dataset.test_file)
    probes = gate_probes(profile)

    def measure(model: ModelVersion) -> Evaluation:
        job_spec = evaluation_job_spec(
            model,
            registry.model_location(model.name, model.version),
            spec,
            environment=environment,
            compute=compute.name if compute is not None else None,
        )
        job = jobs.submit_evaluation_job(job_spec)
        reused = job.status is JobStatus.COMPLETED
        logger.info(
            "evaluation of %s:%s: job %s %s",
            model.name,
            model.version,
            job.name,
            "measured it before: reused" if reused else f"{job.status} ({job.studio_url})",
        )
        job = follow_job(jobs, job, logger)
        if job.status is not JobStatus.COMPLETED or not answers(job.evaluation, spec):
            raise EvaluationJobFailed(
                f"evaluation job {job.name} of {model.name}:{model.version} ended "
                f"{job.status} without its evaluation: {job.error or 'see ' + str(job.studio_url)}"
            )
        assert job.evaluation is not None
        return evaluation_from_output(
            job.evaluation, f"{model.name}:{model.version}", probes, job=job.name
        )

    champion = registry.get_model_by_alias(candidate.name, CHAMPION)
    if champion is not None and champion.version == candidate.version:
        champion = None  # the candidate is the champion already (e.g. an earlier promotion)
    if trained is not None and answers(trained.evaluation, spec):
        assert trained.evaluation is not None
        candidate_eval = evaluation_from_output(
            trained.evaluation,
            f"{candidate.name}:{candidate.version}",
            probes,
            job=trained.job_name,
        )
    else:
        candidate_eval = measure(candidate)
    champion_eval = measure(champion) if champion is not None else None
    decision = gate_decision(candidate_eval, champion_eval, profile.gate)
    if champion is not None:  # (a rolled-back version that is champion again was rolled forward)
        # Tags read afresh: an operator may have rolled this version back since it was made.
        current = registry.get_model(candidate.name, candidate.version)
        decision = operator_veto(decision, dict(current.tags))
    registry.set_model_tags(
        candidate.name,
        candidate.version,
        {
            "gate": "promoted" if decision.promote else "rejected",
            "gate_reason": decision.reason[:500],
            "gate_eval_loss": f"{candidate_eval.eval_loss:.6g}",
            "gate_champion": f"{champion.name}:{champion.version}" if champion else "",
            "gate_evaluation_key": spec.key,
        },
    )
    logger.info("quality gate: %s", decision.reason)
    return decision
