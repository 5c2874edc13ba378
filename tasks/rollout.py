"""Stage: roll the model out to the online endpoint, blue-green, smoke-tested, with rollback.

The plan and its execution live in `finetune_phi.rollout`; this task gathers the endpoint's
state, logs the plan, and runs it with the Prompt flow smoke test as its check (first against
the new deployment directly, then through the endpoint). No retries: a failed rollout has
already restored the endpoint, and repeating it blindly would not change the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.chat_data.synthetic import FactProbe, fact_probes
from finetune_phi.errors import FinetunePhiError
from finetune_phi.rollout import RolloutReport, execute_rollout, parameters_of, plan_rollout
from finetune_phi.serving_plan import profile_serving_plan
from finetune_phi.settings import Profile
from finetune_phi.state import StateLayout
from finetune_phi.workspace import ModelVersion, NotFound
from tasks.retry import retry_if_transient

if TYPE_CHECKING:
    from finetune_phi.promptflow_bridge import SmokeResult


class SmokeTestFailed(FinetunePhiError, RuntimeError):
    """The Prompt flow's answers were not good enough; the rollout is rolled back."""


def smoke_probes(profile: Profile) -> list[FactProbe]:
    """The fact questions to ask: the tutorial's Microsoft one first (see SmokeSettings)."""
    probes = fact_probes()
    count = profile.smoke.questions if profile.data.source.kind == "synthetic" else 1
    return probes[:count]


def smoke_check(
    profile: Profile, scoring_uri: str, key: str, *, timeout: float = 300
) -> Callable[[str | None], SmokeResult]:
    """The rollout's check: run the Prompt flow against a deployment (or the endpoint), within
    `timeout` seconds (the serving plan's: a 3.8B model on a CPU needs minutes)."""
    from finetune_phi.promptflow_bridge import smoke_test

    probes = smoke_probes(profile)

    def check(deployment: str | None) -> SmokeResult:
        result = smoke_test(scoring_uri, key, probes, deployment=deployment, timeout=timeout)
        accuracy = sum(a.correct for a in result.answers) / max(len(result.answers), 1)
        if result.error or accuracy < profile.smoke.min_accuracy:
            raise SmokeTestFailed(result.summary)
        return result

    return check


@task(name="blue-green-rollout", retries=0, timeout_seconds=3600)
def rollout_model(profile: Profile, model: ModelVersion) -> RolloutReport:
    logger = get_run_logger()
    workspace = open_workspace(profile)
    endpoint = profile.endpoint.name
    info = workspace.endpoints.get_or_create_endpoint(endpoint)
    logger.info("endpoint %s at %s", endpoint, info.scoring_uri)
    deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(endpoint)}
    plan = plan_rollout(
        workspace.endpoints.get_traffic(endpoint),
        deployments,
        f"{model.name}:{model.version}",
        profile.rollout,
    )
    for line in plan.describe():
        logger.info("plan: %s", line)
    scratch = StateLayout(profile.state_dir).root / "downloads"
    serving = profile_serving_plan(
        profile, parameters_of(model, workspace.registry, profile, scratch)
    )
    logger.info("serving: %s", serving.describe())
    smoke = None
    if profile.smoke.enabled:
        key = workspace.endpoints.get_endpoint_keys(endpoint).primary
        smoke = smoke_check(profile, info.scoring_uri, key, timeout=serving.smoke_timeout_seconds)
    return execute_rollout(
        workspace,
        endpoint,
        model,
        plan,
        profile.rollout,
        smoke_test=smoke,
        serving=serving,
        log=logger.info,
    )


@task(
    name="read-traffic",
    retries=3,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=120,
)
def endpoint_traffic(profile: Profile) -> dict[str, int]:
    """The endpoint's live traffic now (empty when it does not exist yet), for the report."""
    workspace = open_workspace(profile)
    try:
        return dict(workspace.endpoints.get_traffic(profile.endpoint.name).traffic)
    except NotFound:
        return {}
