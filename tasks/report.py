"""Stage: publish the run report as Prefect artifacts (markdown + table), keyed by endpoint.

Artifacts are how the Prefect UI shows a run's outcome; the same content is printed by
`make demo` (see finetune_phi.report). Publishing never fails the run: a report that cannot be
written is logged and skipped.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from finetune_phi.report import (
    publish_gate_chart,
    publish_traffic_chart,
    report_markdown,
    report_rows,
)

if TYPE_CHECKING:
    from finetune_phi.results import PipelineResult


def artifact_key(endpoint: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return "finetune-phi-" + re.sub(r"[^a-z0-9-]", "-", endpoint.lower())


@task(name="publish-report", retries=0, timeout_seconds=120)
def publish_report(result: PipelineResult) -> PipelineResult:
    """Draw the run's pictures (once: the CLI prints the same files), publish the report,
    and return the result with the pictures' locations."""
    key = artifact_key(result.settings.endpoint.name)
    # The pictures (the gate's candidate vs champion, traffic over the rollout) are drawn
    # beside the loss curves, so a scheduled run's report links them too.
    gate_chart = publish_gate_chart(result)
    traffic_chart = publish_traffic_chart(result)
    markdown = report_markdown(result, gate_chart=gate_chart, traffic_chart=traffic_chart)
    try:
        create_markdown_artifact(markdown, key=key, description=f"run report: {result.status}")
        create_table_artifact(report_rows(result), key=f"{key}-metrics", description="run metrics")
    except Exception as exc:  # the report must not turn a good run into a failed one
        get_run_logger().warning("could not publish the report artifacts: %s", exc)
    pictures = {"gate comparison": gate_chart, "traffic": traffic_chart}
    return dataclasses.replace(
        result, pictures={label: path for label, path in pictures.items() if path}
    )
