"""The run report: one source for the Prefect artifacts and the summary `make demo` prints.

Pure functions of the pipeline's result: `report_markdown` (the markdown artifact),
`report_rows` (the table artifact) and `summary_lines` (the terminal). Publishing them is
`tasks.report`'s job.

Pictures: the trainer draws the loss curves (`loss_curves.png` in the job's output folder, and
an artifact of its MLflow run); the report links them (`loss_curves_location`).
`write_gate_chart` draws the quality gate's comparison (candidate vs champion held-out loss and
fact accuracy); `publish_gate_chart` writes it beside the loss curves and logs it to the
candidate's MLflow run (local backend), for `finetune-phi run` to print.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_phi.evaluation import GateDecision
    from finetune_phi.results import PipelineResult
    from finetune_phi.rollout import RolloutReport

SAMPLE_QUESTIONS = 3
GATE_CHART_FILE = "gate.png"
TRAFFIC_CHART_FILE = "traffic.png"


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


def loss_curves_location(result: PipelineResult) -> str | None:
    """Where the trainer's loss-curve picture is: the file in the job's output folder when it
    is on this disk, else its MLflow artifact URI; None when the run trained nothing."""
    if result.training is None:
        return None
    metrics = result.training.metrics
    name = metrics.get("loss_curves")
    if name:
        local = Path(result.training.model_dir).parent / str(name)
        if "://" not in result.training.model_dir and local.is_file():
            return str(local)
    uri = metrics.get("loss_curves_artifact_uri")
    return str(uri) if uri else None


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
            ("loss curves", loss_curves_location(result) or "n/a"),
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


def report_markdown(
    result: PipelineResult, *, gate_chart: str | None = None, traffic_chart: str | None = None
) -> str:
    """The markdown artifact; `gate_chart` and `traffic_chart` link the pictures when drawn."""
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
        curves = loss_curves_location(result)
        if curves:
            lines.append(f"- loss curves: [{Path(curves).name}]({_link(curves)}) (`{curves}`)")
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
        if gate_chart:
            lines.append(
                f"- comparison: [{Path(gate_chart).name}]({_link(gate_chart)}) (`{gate_chart}`)"
            )
    lines += ["", "## Lineage"]
    lines += [f"- {key}: `{value}`" for key, value in sorted(model.tags.items()) if value]
    lines += [
        "",
        "## Endpoint",
        f"- traffic before: `{result.traffic_before or {}}`",
        f"- traffic after: `{result.traffic_after or result.traffic_before or {}}`",
    ]
    if traffic_chart:
        lines.append(
            f"- traffic over the rollout: [{Path(traffic_chart).name}]({_link(traffic_chart)}) "
            f"(`{traffic_chart}`)"
        )
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


def _link(location: str) -> str:
    """A markdown link target: URIs as they are, paths as file:// URIs."""
    return location if "://" in location else Path(location).resolve().as_uri()


def summary_lines(
    result: PipelineResult,
    answers: list[tuple[str, str, bool]],
    pictures: Mapping[str, str] | None = None,
) -> list[str]:
    """Pure: the terminal summary, from the result, sample (question, answer, correct) and
    the pictures drawn (label -> path or URI)."""
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
    shown = dict(pictures or {})
    curves = loss_curves_location(result)
    if curves and "loss curves" not in shown:
        shown = {"loss curves": curves, **shown}
    for label, location in shown.items():
        lines.append(f"  picture   {label}: {location}")
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


# --------------------------------------------------------------------------- pictures


def write_gate_chart(gate: GateDecision, destination: Path) -> Path | None:
    """The gate's comparison as a PNG: held-out loss (with the limit the candidate had to stay
    under) and, when measured, fact accuracy, candidate next to champion. None without
    matplotlib. Drawn on matplotlib's Agg canvas: no display, no global pyplot state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    evaluations = [("candidate", gate.candidate)]
    if gate.champion is not None:
        evaluations.append(("champion", gate.champion))
    labels = [f"{who}\n{evaluation.model}" for who, evaluation in evaluations]
    colours = ["tab:green" if gate.promote else "tab:red", "tab:gray"][: len(evaluations)]
    accuracies = [evaluation.fact_accuracy for _, evaluation in evaluations]
    with_facts = all(value is not None for value in accuracies)

    figure = Figure(figsize=(8.0 if with_facts else 5.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, *rest = figure.subplots(1, 2 if with_facts else 1, squeeze=False)[0]
    losses = [evaluation.eval_loss for _, evaluation in evaluations]
    bars = loss_axes.bar(labels, losses, color=colours)
    loss_axes.bar_label(bars, fmt="%.4f")
    limit = gate.details.get("loss_limit")
    if limit is not None:
        loss_axes.axhline(
            limit, color="black", linestyle="--", linewidth=1, label=f"limit {limit:.4f}"
        )
        loss_axes.legend(loc="lower right")
    loss_axes.set_ylim(0, max([*losses, limit or 0.0]) * 1.15)
    loss_axes.set_ylabel("held-out loss (lower is better)")
    loss_axes.set_title("held-out loss")
    if with_facts and rest:
        fact_axes = rest[0]
        values = [float(value or 0.0) for value in accuracies]
        bars = fact_axes.bar(labels, values, color=colours)
        fact_axes.bar_label(bars, labels=[f"{v:.0%}" for v in values])
        fact_axes.set_ylim(0, 1.1)
        fact_axes.set_title("fact accuracy (higher is better)")
    reason = gate.reason if len(gate.reason) <= 150 else gate.reason[:147] + "..."
    figure.suptitle(textwrap.fill(f"quality gate: {reason}", 70 if with_facts else 45))
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(destination.name + ".partial")
    figure.savefig(staging, format="png")
    staging.replace(destination)
    return destination


def gate_chart_destination(result: PipelineResult) -> Path:
    return chart_destination(result, GATE_CHART_FILE)


def chart_destination(result: PipelineResult, file_name: str) -> Path:
    """Beside the loss curves in the job's output folder when that is on this disk, else in
    the state folder's reports/ (e.g. an "up to date" run, which trained nothing)."""
    if result.training is not None and "://" not in result.training.model_dir:
        output = Path(result.training.model_dir).parent
        if output.is_dir():
            return output / file_name
    model = result.model
    return result.settings.state_dir / "reports" / f"{model.name}-{model.version}-{file_name}"


def traffic_stages(rollout: RolloutReport) -> list[tuple[str, dict[str, int]]]:
    """Pure: the endpoint's live traffic at each stage of a finished rollout (before, after each
    planned step, and as read back at the end)."""
    stages = [("before", dict(rollout.plan.previous))]
    stages += [(f"step {i}", dict(step)) for i, step in enumerate(rollout.plan.traffic_steps, 1)]
    stages.append(("after", dict(rollout.final_traffic)))
    return stages


def write_traffic_chart(rollout: RolloutReport, destination: Path) -> Path | None:
    """Live traffic per deployment over the rollout as stacked bars (PNG, Agg canvas); None
    without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    stages = traffic_stages(rollout)
    names = sorted({name for _, traffic in stages for name in traffic})
    colours = {"blue": "tab:blue", "green": "tab:green"}
    figure = Figure(figsize=(1.6 + 1.1 * len(stages), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    labels = [label for label, _ in stages]
    bottom = [0.0] * len(stages)
    for name in names:
        shares = [float(traffic.get(name, 0)) for _, traffic in stages]
        bars = axes.bar(labels, shares, bottom=bottom, label=name, color=colours.get(name))
        axes.bar_label(bars, labels=[f"{s:.0f}%" if s else "" for s in shares], label_type="center")
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    axes.set_ylim(0, 105)
    axes.set_ylabel("live traffic (%)")
    if names:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    new = rollout.plan.new_deployment or "no new deployment"
    axes.set_title(f"rollout of {rollout.plan.model} ({new}) in {rollout.seconds:.0f} s")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(destination.name + ".partial")
    figure.savefig(staging, format="png")
    staging.replace(destination)
    return destination


def publish_traffic_chart(result: PipelineResult) -> str | None:
    """Draw the rollout's traffic for a run that rolled out; where it is, or None. Never fails
    the caller."""
    if result.rollout is None or not result.rollout.plan.traffic_steps:
        return None  # nothing moved (e.g. up to date and already serving)
    try:
        path = write_traffic_chart(result.rollout, chart_destination(result, TRAFFIC_CHART_FILE))
    except Exception:  # a picture must not turn a finished run into a failed command
        return None
    return str(path) if path is not None else None


def publish_gate_chart(result: PipelineResult) -> str | None:
    """Draw the gate's comparison for a run that had a gate, and (local backend) log it to the
    candidate's MLflow training run; where it is, or None. Never fails the caller: a picture
    that cannot be drawn is skipped."""
    if result.gate is None:
        return None
    try:
        path = write_gate_chart(result.gate, gate_chart_destination(result))
    except Exception:  # a picture must not turn a finished run into a failed command
        return None
    if path is None:
        return None
    run_id = (result.training.metrics.get("mlflow_run_id") if result.training else None) or None
    if run_id and result.settings.backend.kind == "local":
        try:
            from finetune_phi.state import StateLayout
            from finetune_phi.tracking import client

            client(StateLayout(result.settings.state_dir)).log_artifact(str(run_id), str(path))
        except Exception:
            pass  # the file is still there; MLflow just does not list it
    return str(path)
