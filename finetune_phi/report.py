"""The run summary printed at the end of `finetune-phi demo` (and, later, the Prefect artifact)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_phi.settings import Profile
    from flows.finetune import PipelineResult

SAMPLE_QUESTIONS = 3


def _num(value: Any, spec: str = "{:.4f}") -> str:
    return "n/a" if value is None else spec.format(float(value))


def summary_lines(result: PipelineResult, answers: list[tuple[str, str, bool]]) -> list[str]:
    """Pure: the summary as lines, from the pipeline result and sample (question, answer, ok)."""
    manifest = result.dataset.manifest
    counts = manifest.counts
    metrics = result.training.metrics
    model = result.registration.model
    endpoint = result.settings.endpoint.name
    lines = [
        f"finetune-phi: profile {result.settings.name}",
        f"  data      {counts.train} train / {counts.test} test conversations "
        f"({counts.invalid} invalid dropped), sha256 {manifest.dataset_sha256[:12]}",
        f"  training  {metrics.get('base_model')}: "
        f"eval loss {_num(metrics.get('eval_loss_before'))}"
        f" -> {_num(metrics.get('eval_loss'))} in {_num(metrics.get('train_seconds'), '{:.0f}')} s"
        f" ({_num(metrics.get('real_tokens_per_second'), '{:,.0f}')} tokens/s, "
        f"{metrics.get('precision')} on {metrics.get('device')})",
        f"  registry  {model.name} version {model.version}"
        f"{'' if result.registration.created else ' (already registered)'}",
        f"  job       {result.training.job_dir}",
        f"  endpoint  {endpoint}: traffic {dict(result.rollout.final_traffic)}"
        + (f", rolled out in {result.rollout.seconds:.0f} s" if result.rollout.seconds else ""),
    ]
    if answers:
        lines.append(f"  answers   (from the live endpoint {endpoint}, greedy)")
        for question, answer, ok in answers:
            lines.append(f"    [{'ok' if ok else '--'}] {question} -> {answer}")
    return lines


def sample_answers(
    ask: Callable[[str], str], count: int = SAMPLE_QUESTIONS
) -> list[tuple[str, str, bool]]:
    """Ask the first `count` fact probes; (question, answer, whether it is right)."""
    from finetune_phi.chat_data.synthetic import answer_matches, fact_probes

    answers = []
    for probe in fact_probes()[:count]:
        answer = ask(probe.question)
        answers.append((probe.question, answer, answer_matches(probe, answer)))
    return answers


def endpoint_asker(profile: Profile) -> Callable[[str], str]:
    """A question -> answer function that goes through the profile's live endpoint."""
    from backends import open_workspace

    workspace = open_workspace(profile)

    def ask(question: str) -> str:
        request = {
            "messages": [{"role": "user", "content": question}],
            "params": {"max_new_tokens": 48, "do_sample": False},
        }
        return str(workspace.invoke(profile.endpoint.name, request)["content"])

    return ask


def print_pipeline_summary(result: PipelineResult) -> None:
    answers = sample_answers(endpoint_asker(result.settings))
    print("\n".join(summary_lines(result, answers)))
