"""Stages: the training environment and the compute it runs on (get-or-create, idempotent).

Which environment and which compute is the backend's own business (its settings say): on the
local backend both are this machine and the project's venv, recorded, nothing to provision;
on Azure a versioned Environment built from the profile's image and conda file, and the
profile's AmlCompute cluster.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.settings import Profile
from finetune_phi.workspace import ComputeRef, EnvironmentRef
from tasks.retry import retry_if_transient


@task(
    name="ensure-environment",
    retries=3,
    retry_delay_seconds=[10, 30, 60],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=1800,
)
def ensure_environment(profile: Profile) -> EnvironmentRef:
    ref = open_workspace(profile).jobs.ensure_environment()
    get_run_logger().info("environment %s:%s", ref.name, ref.version)
    return ref


@task(
    name="ensure-compute",
    retries=3,
    retry_delay_seconds=[10, 30, 60],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=1800,
)
def ensure_compute(profile: Profile) -> ComputeRef:
    ref = open_workspace(profile).jobs.ensure_compute()
    get_run_logger().info("compute %s (%s)", ref.name, ref.state)
    return ref
