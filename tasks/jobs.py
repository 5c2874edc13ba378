"""Following a backend job from a task: its log into the Prefect UI, and the job stopped with
the flow run (shared by the training and the gate stages)."""

from __future__ import annotations

from logging import Logger, LoggerAdapter
from typing import Any

from finetune_phi.workspace import JobRecord, TrainingJobs

# Lines of a job's output worth showing in the Prefect UI; the job log has everything.
SHOWN_PREFIXES = (
    "step ",
    "eval loss",
    "fine-tuning",
    "resuming",
    "done",
    "evaluat",
    "Traceback",
    "Error",
)


def follow_job(
    jobs: TrainingJobs, job: JobRecord, logger: Logger | LoggerAdapter[Any]
) -> JobRecord:
    """Wait for `job` to end, logging its telling lines; its final record.

    A dropped connection while following is raised (the task's retry re-attaches to the job
    of the same name). When the flow run is cancelled or the worker told to stop, the job is
    cancelled with it (a crash of the worker itself leaves the job running for the next run).
    """
    if job.status.is_terminal:
        return job
    try:
        for line in jobs.stream_job_logs(job.name, follow=True):
            if line.startswith(SHOWN_PREFIXES):
                logger.info("%s", line)
    except Exception:
        raise
    except BaseException:
        logger.warning("cancelling job %s", job.name)
        jobs.cancel_job(job.name)
        raise
    return jobs.get_job(job.name)
