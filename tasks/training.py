"""Stage: the fine-tuning job: submit it to the workspace, follow its log, collect its result.

The job's name is a function of its inputs (see `finetune_phi.lineage`), and submitting a name
that is running or finished re-attaches to it, so a retried or restarted flow converges on one
job instead of starting another. A failed job submitted again resumes from its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task

from backends import open_workspace
from finetune_phi.lineage import training_job_name
from finetune_phi.settings import Profile
from finetune_phi.workspace import ComputeRef, EnvironmentRef, JobRecord, JobStatus, TrainingJobSpec
from tasks.dataset import PreparedDataset
from tasks.retry import retry_if_transient

EXPERIMENT = "finetune-phi"
# Lines of the trainer's output worth showing in the Prefect UI; the job log has everything.
SHOWN_PREFIXES = ("step ", "eval loss", "fine-tuning", "resuming", "done", "Traceback", "Error")


class TrainingJobFailed(RuntimeError):
    """The job ended Failed or Canceled; the message carries the backend's reason."""


@dataclass(frozen=True)
class TrainingResult:
    job_name: str
    job_dir: str  # where to look: the job folder locally, the studio URL on Azure
    model_dir: str  # the MLflow model the job wrote
    metrics: dict[str, Any]


def training_job_spec(
    profile: Profile,
    base_model: str,
    dataset: PreparedDataset,
    environment: EnvironmentRef | None = None,
    compute: ComputeRef | None = None,
) -> TrainingJobSpec:
    """Pure: the job the profile and the prepared data describe."""
    name = training_job_name(dataset.sha256, base_model, profile.training)
    return TrainingJobSpec(
        name=name,
        experiment=EXPERIMENT,
        base_model=base_model,
        train_file=dataset.train_file,
        eval_file=dataset.test_file,
        hyperparameters=profile.training,
        run_options=profile.training_run,
        tags={
            "dataset_sha256": dataset.sha256,
            "base_model": profile.model.base,
            "trainer_config_hash": profile.training.config_hash(),
            "profile": profile.name,
        },
        display_name=f"fine-tune {profile.model.base} on {dataset.sha256[:12]}",
        environment=environment,
        compute=compute.name if compute is not None else None,
    )


def result_of(job: JobRecord) -> TrainingResult:
    if job.status is not JobStatus.COMPLETED or job.model_uri is None:
        raise TrainingJobFailed(f"training job {job.name} ended {job.status}: {job.error}")
    return TrainingResult(job.name, job.studio_url or "", job.model_uri, dict(job.metrics))


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
    base_model: str,
    dataset: PreparedDataset,
    environment: EnvironmentRef | None = None,
    compute: ComputeRef | None = None,
) -> TrainingResult:
    logger = get_run_logger()
    workspace = open_workspace(profile)
    spec = training_job_spec(profile, base_model, dataset, environment, compute)
    job = workspace.jobs.submit_job(spec)
    logger.info("training job %s: %s (%s)", job.name, job.status, job.studio_url)
    if not job.status.is_terminal:
        try:
            for line in workspace.jobs.stream_job_logs(job.name, follow=True):
                if line.startswith(SHOWN_PREFIXES):
                    logger.info("%s", line)
        except Exception:
            raise  # e.g. a dropped connection while following: the retry re-attaches
        except BaseException:
            # The flow run was cancelled or the worker told to stop: the job goes with it.
            # (A crash of the worker itself leaves the job running for the next run.)
            logger.warning("cancelling training job %s", job.name)
            workspace.jobs.cancel_job(job.name)
            raise
        job = workspace.jobs.get_job(job.name)
    return result_of(job)
