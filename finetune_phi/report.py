"""The run summary printed at the end of `finetune-phi demo` (and, later, the Prefect artifact)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.finetune import PipelineResult

SAMPLE_QUESTIONS = 3


def _num(value: Any, spec: str = "{:.4f}") -> str:
    return "n/a" if value is None else spec.format(float(value))


def summary_lines(result: PipelineResult, answers: list[tuple[str, str, bool]]) -> list[str]:
    """Pure: the summary as lines, from the pipeline result and sample (question, answer, ok)."""
    manifest = result.dataset.manifest
    counts = manifest.counts
    metrics = result.training.metrics
    lines = [
        f"finetune-phi: profile {result.profile}",
        f"  data      {counts.train} train / {counts.test} test conversations "
        f"({counts.invalid} invalid dropped), sha256 {manifest.dataset_sha256[:12]}",
        f"  training  {metrics.get('base_model')}: "
        f"eval loss {_num(metrics.get('eval_loss_before'))}"
        f" -> {_num(metrics.get('eval_loss'))} in {_num(metrics.get('train_seconds'), '{:.0f}')} s"
        f" ({_num(metrics.get('real_tokens_per_second'), '{:,.0f}')} tokens/s, "
        f"{metrics.get('precision')} on {metrics.get('device')})",
        f"  registry  {result.registration.model.name} version {result.registration.model.version}"
        f"{'' if result.registration.created else ' (already registered)'}",
        f"  job       {result.training.job_dir}",
    ]
    if answers:
        lines.append("  answers   (fine-tuned model, greedy)")
        for question, answer, ok in answers:
            lines.append(f"    [{'ok' if ok else '--'}] {question} -> {answer}")
    return lines


def sample_answers(model_dir: str, count: int = SAMPLE_QUESTIONS) -> list[tuple[str, str, bool]]:
    from finetune_phi.chat import load_chat_model
    from finetune_phi.chat_data.synthetic import answer_matches, fact_probes

    chat = load_chat_model(model_dir)
    answers = []
    for probe in fact_probes()[:count]:
        answer = chat.ask(probe.question)
        answers.append((probe.question, answer, answer_matches(probe, answer)))
    return answers


def print_pipeline_summary(result: PipelineResult) -> None:
    answers = sample_answers(result.training.model_dir)
    print("\n".join(summary_lines(result, answers)))
