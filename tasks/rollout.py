"""Stage: roll the registered model out to the online endpoint, blue-green, with rollback.

The plan and its execution live in `finetune_phi.rollout`; this task only gathers the
endpoint's current state, logs the plan and runs it. No retries: a failed rollout has already
restored the endpoint, and repeating it blindly would not change the outcome (see the module
docstring of finetune_phi.rollout).
"""

from __future__ import annotations

from prefect import get_run_logger, task

from backends import open_workspace
from backends.workspace import ModelVersion
from finetune_phi.rollout import RolloutReport, execute_rollout, plan_rollout
from finetune_phi.settings import Profile


@task(name="blue-green-rollout", retries=0)
def rollout_model(profile: Profile, model: ModelVersion) -> RolloutReport:
    logger = get_run_logger()
    workspace = open_workspace(profile)
    endpoint = profile.endpoint.name
    info = workspace.get_or_create_endpoint(endpoint)
    logger.info("endpoint %s at %s", endpoint, info.scoring_uri)
    deployments = {d.name: d.model for d in workspace.list_deployments(endpoint)}
    plan = plan_rollout(
        workspace.get_traffic(endpoint),
        deployments,
        f"{model.name}:{model.version}",
        profile.rollout,
    )
    for line in plan.describe():
        logger.info("plan: %s", line)
    return execute_rollout(workspace, endpoint, model, plan, profile.rollout, log=logger.info)
