"""Stages: the training environment and the compute it runs on (get-or-create, idempotent).

On the local backend both are this machine and the project's venv: recorded, nothing to
provision. On Azure they are a versioned Environment and an AmlCompute cluster.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from backends import open_workspace
from backends.workspace import ComputeRef, ComputeSpec, EnvironmentRef, EnvironmentSpec
from finetune_phi.settings import REPO_ROOT, Profile
from tasks.retry import retry_if_transient

TRAINING_ENVIRONMENT = "finetune-phi-training"
CONDA_FILE = REPO_ROOT / "environments" / "training.conda.yml"


def environment_spec(profile: Profile) -> EnvironmentSpec:
    image = getattr(profile.backend, "training_image", "local")
    return EnvironmentSpec(TRAINING_ENVIRONMENT, image, str(CONDA_FILE), "fine-tuning")


def compute_spec(profile: Profile) -> ComputeSpec:
    backend = profile.backend
    if backend.kind == "azure":
        return ComputeSpec(
            backend.training_compute,
            backend.training_sku,
            backend.training_min_nodes,
            backend.training_max_nodes,
            backend.idle_seconds_before_scale_down,
        )
    return ComputeSpec("local", "this machine", 0, 1, 0)


@task(
    name="ensure-environment",
    retries=3,
    retry_delay_seconds=[10, 30, 60],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=1800,
)
def ensure_environment(profile: Profile) -> EnvironmentRef:
    ref = open_workspace(profile).ensure_environment(environment_spec(profile))
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
    ref = open_workspace(profile).ensure_compute(compute_spec(profile))
    get_run_logger().info("compute %s (%s)", ref.name, ref.state)
    return ref
