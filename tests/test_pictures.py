"""Pictures: the trainer's loss curves (file + MLflow artifact), linked from the run report,
and the quality gate's comparison chart.

The loss curves come from a real tiny fine-tune (a few steps of the small tiny Phi-3 on CPU),
so what is checked is what a run produces, not a drawing of made-up numbers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from profiles import FAST_TRAINING

from trainer.config import JobArguments, RunOptions
from trainer.fine_tune import LOSS_CURVES_FILE, METRICS_FILE, loss_points, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_loss_points_put_the_eval_before_training_at_step_0() -> None:
    history: list[dict[str, Any]] = [
        {"loss": 5.0, "step": 1},
        {"loss": 4.0, "step": 2},
        {"eval_loss": 4.2, "step": 2},
        {"train_runtime": 1.0, "train_loss": 4.5, "step": 2},
        {"eval_loss": 4.1, "step": 2},  # the final evaluate() at the same step wins
    ]
    train, evals = loss_points(history, eval_before=6.0)
    assert train == [(1, 5.0), (2, 4.0)]
    assert evals == [(0, 6.0), (2, 4.1)]
    assert loss_points([], None) == ([], [])


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, chat_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], str]:
    """A real tiny fine-tune with MLflow tracking on sqlite in a temporary folder."""
    root = tmp_path_factory.mktemp("pictures")
    out = root / "job" / "output"
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    hp = replace(FAST_TRAINING, max_steps=6, eval_strategy="steps", eval_steps=3)
    job = JobArguments(
        train_file=str(chat_files["train"]),
        eval_file=str(chat_files["test"]),
        model_output_dir=str(out),
        base_model=str(tiny_model_dir),
        mlflow_tracking_uri=tracking,
        run_name="pictures-test",
    )
    metrics = main(job, RunOptions(save_steps=1000, logging_steps=1), hp)
    return out, metrics, tracking


@pytest.mark.slow
def test_fine_tune_writes_loss_curves_and_logs_them_to_mlflow(
    trained: tuple[Path, dict[str, Any], str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    out, metrics, tracking = trained
    picture = out / LOSS_CURVES_FILE
    assert is_png(picture)
    assert metrics["loss_curves"] == LOSS_CURVES_FILE
    assert json.loads((out / METRICS_FILE).read_text())["loss_curves"] == LOSS_CURVES_FILE

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    artifacts = [a.path for a in client.list_artifacts(metrics["mlflow_run_id"])]
    assert LOSS_CURVES_FILE in artifacts
    uri = metrics["loss_curves_artifact_uri"]
    assert uri.endswith(LOSS_CURVES_FILE)
    # Beside the database (the state folder's layout), not in ./mlruns of the working dir.
    db_folder = Path(tracking.removeprefix("sqlite:///")).parent
    stored = Path(uri.removeprefix("file://"))
    assert stored.is_file() and db_folder in stored.parents
    assert stored.read_bytes() == picture.read_bytes()


@pytest.mark.slow
def test_run_report_links_the_loss_curves_and_the_gate_chart(
    trained: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    from finetune_phi.chat_data import prepare_dataset
    from finetune_phi.evaluation import Evaluation, gate_decision
    from finetune_phi.report import (
        publish_gate_chart,
        report_markdown,
        report_rows,
        summary_lines,
    )
    from finetune_phi.settings import load_profile
    from finetune_phi.workspace import ModelVersion
    from flows.finetune import PipelineResult
    from tasks.dataset import PreparedDataset
    from tasks.training import TrainingResult

    out, metrics, _ = trained
    profile = load_profile(
        "local",
        environ={},
        overrides={
            "state_dir": str(tmp_path / "state"),
            "data": {"source": {"kind": "synthetic", "conversations": 20}},
        },
    )
    manifest = prepare_dataset(profile.data, tmp_path / "data")
    dataset = PreparedDataset(
        str(tmp_path / "data"),
        str(tmp_path / "data/train.jsonl"),
        str(tmp_path / "data/test.jsonl"),
        manifest,
    )
    candidate = Evaluation("phi3-chat:2", 2.10, 8.17, 24, 2000)
    champion = Evaluation("phi3-chat:1", 2.30, 9.97, 24, 2000)
    result = PipelineResult(
        settings=profile,
        status="promoted",
        dataset=dataset,
        model=ModelVersion("phi3-chat", "2", "file:///nowhere"),
        training=TrainingResult("ft-test", str(out.parent), str(out / "mlflow_model"), metrics),
        gate=gate_decision(candidate, champion, profile.gate),
    )

    chart = publish_gate_chart(result)
    assert chart == str(out / "gate.png") and is_png(Path(chart))
    markdown = report_markdown(result, gate_chart=chart)
    assert f"[loss_curves.png]({(out / LOSS_CURVES_FILE).as_uri()})" in markdown
    assert f"[gate.png]({Path(chart).as_uri()})" in markdown
    rows = {row["metric"]: row["value"] for row in report_rows(result)}
    assert rows["loss curves"] == str(out / LOSS_CURVES_FILE)
    summary = "\n".join(summary_lines(result, [], {"gate comparison": chart}))
    assert f"picture   loss curves: {out / LOSS_CURVES_FILE}" in summary
    assert f"picture   gate comparison: {chart}" in summary


def test_gate_chart_without_a_champion_or_facts(tmp_path: Path) -> None:
    from finetune_phi.evaluation import Evaluation, FactAnswer, gate_decision
    from finetune_phi.report import write_gate_chart
    from finetune_phi.settings import GateSettings

    facts = (FactAnswer("Who founded Microsoft?", "Bill Gates", True),)
    first = gate_decision(Evaluation("m:1", 2.0, 7.4, 10, 100, facts), None, GateSettings())
    assert is_png(write_gate_chart(first, tmp_path / "first.png") or Path("missing"))
    worse = gate_decision(
        Evaluation("m:3", 3.0, 20.1, 10, 100), Evaluation("m:2", 2.0, 7.4, 10, 100), GateSettings()
    )
    assert not worse.promote
    assert is_png(write_gate_chart(worse, tmp_path / "nested" / "worse.png") or Path("missing"))


def test_traffic_chart_follows_the_planned_steps(tmp_path: Path) -> None:
    from finetune_phi.report import traffic_stages, write_traffic_chart
    from finetune_phi.rollout import RolloutReport, plan_rollout
    from finetune_phi.settings import RolloutSettings
    from finetune_phi.workspace import TrafficState

    plan = plan_rollout(
        TrafficState({"blue": 100}),
        {"blue": "phi3-chat:1"},
        "phi3-chat:2",
        RolloutSettings(traffic_steps=(10, 50, 100)),
    )
    rollout = RolloutReport(plan, seconds=12.0, final_traffic={"green": 100})
    assert traffic_stages(rollout) == [
        ("before", {"blue": 100}),
        ("step 1", {"green": 10, "blue": 90}),
        ("step 2", {"green": 50, "blue": 50}),
        ("step 3", {"green": 100, "blue": 0}),
        ("after", {"green": 100}),
    ]
    chart = write_traffic_chart(rollout, tmp_path / "reports" / "traffic.png")
    assert chart is not None and is_png(chart)
