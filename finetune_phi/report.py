"""The run report: one source for the Prefect artifacts and the summary `make demo` prints.

Pure functions of the pipeline's result: `report_markdown` (the markdown artifact),
`report_rows` (the table artifact) and `summary_lines` (the terminal). Publishing them is
`tasks.report`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_phi.settings import Profile
    from flows.finetune import PipelineResult

SAMPLE_QUESTIONS = 3


def _num(value: Any, spec: str = "{:.4f}") -> str:
    return "n/a" if value is None or value == "" else spec.format(float(value))


def smoke_rows(result: PipelineResult) -> list[dict[str, Any]]:
    """(where, question, answer, correct, latency) of every smoke test answer of the run."""
    rows: list[dict[str, Any]] = []
    if result.rollout is None:
        return rows
    for where, smoke in result.rollout.smoke.items():
        for answer in getattr(smoke, "answers", []):
            rows.append(
                {
                    "where": where,
                    "question": answer.question,
                    "answer": answer.answer,
                    "correct": bool(answer.correct),
                    "latency_ms": round(float(answer.latency_ms), 1),
                }
            )
    return rows


def report_rows(result: PipelineResult) -> list[dict[str, str]]:
    """The table artifact: one metric per row, every value a string."""
    counts = result.dataset.manifest.counts
    rows = [
        ("status", result.status),
        ("dataset sha256", result.dataset.sha256[:16]),
        ("train / test / invalid", f"{counts.train} / {counts.test} / {counts.invalid}"),
        ("model", f"{result.model.name}:{result.model.version}"),
    ]
    if result.training is not None:
        metrics = result.training.metrics
        rows += [
            ("train loss", _num(metrics.get("train_loss"))),
            (
                "eval loss before -> after",
                f"{_num(metrics.get('eval_loss_before'))} -> {_num(metrics.get('eval_loss'))}",
            ),
            ("training seconds", _num(metrics.get("train_seconds"), "{:.0f}")),
            ("real tokens/s", _num(metrics.get("real_tokens_per_second"), "{:.0f}")),
        ]
    if result.gate is not None:
        gate = result.gate
        rows += [
            ("gate", "promoted" if gate.promote else "rejected"),
            ("candidate held-out loss", _num(gate.candidate.eval_loss)),
            (
                "champion held-out loss",
                _num(gate.champion.eval_loss) if gate.champion else "no champion",
            ),
            ("candidate fact accuracy", _num(gate.candidate.fact_accuracy, "{:.0%}")),
            (
                "champion fact accuracy",
                _num(gate.champion.fact_accuracy, "{:.0%}") if gate.champion else "n/a",
            ),
        ]
    rows += [
        ("traffic before", str(result.traffic_before or {})),
        ("traffic after", str(result.traffic_after or result.traffic_before or {})),
    ]
    return [{"metric": key, "value": value} for key, value in rows]


def report_markdown(result: PipelineResult) -> str:
    settings = result.settings
    model = result.model
    manifest = result.dataset.manifest
    lines = [
        f"# finetune-phi: {result.status}",
        "",
        f"Profile `{settings.name}` ({settings.backend.kind} backend), model "
        f"`{model.name}:{model.version}`, endpoint `{settings.endpoint.name}`.",
        "",
        "## Data",
        f"- source: `{manifest.source}`",
        f"- {manifest.counts.train} train / {manifest.counts.test} test conversations, "
        f"{manifest.counts.invalid} invalid left out"
        + (f" ({manifest.counts.by_kind})" if manifest.counts.by_kind else ""),
        f"- token lengths: p50 {manifest.token_lengths.p50}, p95 {manifest.token_lengths.p95}, "
        f"max {manifest.token_lengths.max} {manifest.token_lengths.unit}",
        f"- dataset sha256 `{manifest.dataset_sha256}`",
    ]
    if result.training is not None:
        metrics = result.training.metrics
        lines += [
            "",
            "## Training",
            f"- job `{result.training.job_name}` ({result.training.job_dir})",
            f"- eval loss {_num(metrics.get('eval_loss_before'))} -> "
            f"{_num(metrics.get('eval_loss'))}, train loss {_num(metrics.get('train_loss'))}",
            f"- {_num(metrics.get('train_seconds'), '{:.0f}')} s, "
            f"{_num(metrics.get('real_tokens_per_second'), '{:,.0f}')} real tokens/s, "
            f"{metrics.get('precision')} on {metrics.get('device')}",
            f"- MLflow run `{metrics.get('mlflow_run_id')}`"
            + (
                f" (`mlflow ui --backend-store-uri sqlite:///{settings.state_dir}/mlflow.db`)"
                if settings.backend.kind == "local"
                else ""
            ),
        ]
    if result.gate is not None:
        gate = result.gate
        lines += ["", "## Quality gate", f"- {gate.reason}"]
        for label, evaluation in (("candidate", gate.candidate), ("champion", gate.champion)):
            if evaluation is not None:
                lines.append(
                    f"- {label} `{evaluation.model}`: held-out loss {evaluation.eval_loss:.4f} "
                    f"(perplexity {evaluation.perplexity:.2f}), fact accuracy "
                    f"{_num(evaluation.fact_accuracy, '{:.0%}')}"
                )
    lines += ["", "## Lineage"]
    lines += [f"- {key}: `{value}`" for key, value in sorted(model.tags.items()) if value]
    lines += [
        "",
        "## Endpoint",
        f"- traffic before: `{result.traffic_before or {}}`",
        f"- traffic after: `{result.traffic_after or result.traffic_before or {}}`",
    ]
    if result.rollout is not None:
        lines += [f"- {event}" for event in result.rollout.events]
    smoke = smoke_rows(result)
    if smoke:
        lines += [
            "",
            "## Prompt flow smoke test",
            "",
            "| where | question | answer | ok | ms |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['where']} | {r['question']} | {r['answer']} | "
            f"{'yes' if r['correct'] else 'no'} | {r['latency_ms']:.0f} |"
            for r in smoke
        ]
    return "\n".join(lines) + "\n"


def summary_lines(result: PipelineResult, answers: list[tuple[str, str, bool]]) -> list[str]:
    """Pure: the terminal summary, from the result and sample (question, answer, correct)."""
    manifest = result.dataset.manifest
    counts = manifest.counts
    model = result.model
    endpoint = result.settings.endpoint.name
    lines = [
        f"finetune-phi: {result.status} (profile {result.settings.name})",
        f"  data      {counts.train} train / {counts.test} test conversations "
        f"({counts.invalid} invalid dropped), sha256 {manifest.dataset_sha256[:12]}",
    ]
    if result.training is not None:
        metrics = result.training.metrics
        lines.append(
            f"  training  {metrics.get('base_model')}: "
            f"eval loss {_num(metrics.get('eval_loss_before'))}"
            f" -> {_num(metrics.get('eval_loss'))} in "
            f"{_num(metrics.get('train_seconds'), '{:.0f}')} s"
            f" ({_num(metrics.get('real_tokens_per_second'), '{:,.0f}')} tokens/s, "
            f"{metrics.get('precision')} on {metrics.get('device')})"
        )
    if result.gate is not None:
        lines.append(f"  gate      {result.gate.reason}")
    created = result.registration is None or result.registration.created
    lines.append(
        f"  model     {model.name} version {model.version}"
        + ("" if created else " (already registered)")
    )
    if result.training is not None:
        lines.append(f"  job       {result.training.job_dir}")
    lines.append(
        f"  endpoint  {endpoint}: traffic {result.traffic_before or {}} -> "
        f"{result.traffic_after or result.traffic_before or {}}"
        + (
            f", rolled out in {result.rollout.seconds:.0f} s"
            if result.rollout is not None and result.rollout.seconds
            else ""
        )
    )
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
    """The demo's last words: the summary, with answers from whatever serves live traffic."""
    serving = bool(result.traffic_after or result.traffic_before)
    answers = sample_answers(endpoint_asker(result.settings)) if serving else []
    print("\n".join(summary_lines(result, answers)))
