"""Stage: plan the run: read what the workspace has (the champion) and decide, with the pure
`finetune_phi.run_plan.plan_run`, whether anything must be trained and which job it is.

`finetune-phi run --dry-run` prints the same plan without running anything.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.results import PreparedDataset
from finetune_phi.run_plan import DatasetFacts, RunPlan, observe, plan_run
from finetune_phi.settings import Profile
from tasks.retry import retry_if_transient


def dataset_facts(dataset: PreparedDataset) -> DatasetFacts:
    counts = dataset.manifest.counts
    return DatasetFacts(
        dataset.sha256,
        dataset.train_file,
        dataset.test_file,
        how=f"prepared in {dataset.directory}",
        train_count=counts.train,
        test_count=counts.test,
        invalid_count=counts.invalid,
        problems=dict(counts.by_kind),
    )


@task(
    name="plan-run",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=300,
)
def plan_run_task(profile: Profile, base_model: str, dataset: PreparedDataset) -> RunPlan:
    """The plan for this run; `plan.up_to_date` when the champion was trained on exactly
    these inputs (then nothing is trained or deployed)."""
    plan = plan_run(
        profile, base_model, dataset_facts(dataset), observe(profile, open_workspace(profile))
    )
    logger = get_run_logger()
    champion = plan.champion
    if plan.up_to_date and champion is not None:
        logger.info(
            "up to date: champion %s:%s was trained on dataset %s with this config",
            champion.name,
            champion.version,
            dataset.sha256[:12],
        )
    elif plan.job is not None:
        logger.info("plan: train %s", plan.job.name)
    return plan
