"""Stage: the fine-tuning job: submit it to the workspace, follow its log, collect its result.

The job itself (its name, inputs, hyperparameters, lineage tags) is decided by the run plan
(`finetune_phi.run_plan.training_job_spec`); its name is a function of its inputs, and
submitting a name that is running or finished re-attaches to it, so a retried or restarted flow
converges on one job instead of starting another. A failed job submitted again resumes from
its checkpoint.
"""

from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.errors import FinetunePhiError
from finetune_phi.results import TrainingResult
from finetune_phi.settings import Profile
from finetune_phi.workspace import (
    ComputeRef,
    EnvironmentRef,
    JobRecord,
    JobStatus,
    TrainingJobSpec,
)
from tasks.jobs import follow_job
from tasks.retry import retry_if_transient


class TrainingJobFailed(FinetunePhiError, RuntimeError):
    """The job ended Failed or Canceled; the message carries the backend's reason."""


def result_of(job: JobRecord) -> TrainingResult:
    if job.status is not JobStatus.COMPLETED or job.model_uri is None:
        raise TrainingJobFailed(f"training job {job.name} ended {job.status}: {job.error}")
    return TrainingResult(
        job.name,
        job.studio_url or "",
        job.model_uri,
        dict(job.metrics),
        dict(job.evaluation) if job.evaluation is not None else None,
    )


# Retried only for transient errors (submitting, polling): a retry re-attaches to the job of
# the same name, so it never trains twice. A failed job is not retried here; the next flow
# run resubmits it and the trainer resumes from its last checkpoint.
@task(
    name="train-model",
    retries=3,
    retry_delay_seconds=[10, 30, 60],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=24 * 3600,
)
def train_model(
    profile: Profile,
    job_spec: TrainingJobSpec,
    environment: EnvironmentRef | None = None,
    compute: ComputeRef | None = None,
) -> TrainingResult:
    logger = get_run_logger()
    jobs = open_workspace(profile).jobs
    spec = dataclasses.replace(
        job_spec,
        environment=environment or job_spec.environment,
        compute=compute.name if compute is not None else job_spec.compute,
    )
    job = jobs.submit_job(spec)
    logger.info("training job %s: %s (%s)", job.name, job.status, job.studio_url)
    return result_of(follow_job(jobs, job, logger))
