"""The fine-tuning pipeline as a Prefect flow: wiring only, no logic.

    base model -> dataset -> plan (up to date?) -> environment, compute -> train -> register
      -> quality gate (champion vs candidate) -> blue-green rollout with Prompt flow smoke test
      -> run report

Three endings, none of them a crash: "promoted" (the candidate serves all traffic),
"not promoted" (the gate kept the champion; traffic untouched), "up to date" (the champion was
trained on exactly these inputs; nothing trained or deployed). Failures (a failed job, a
rolled-back rollout) fail the run with their reason.

Run it with `finetune-phi demo`, or as a Prefect deployment (prefect.yaml).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from finetune_phi.results import PipelineResult
from finetune_phi.settings import deep_merge, load_profile
from tasks.base_model import ensure_base_model
from tasks.dataset import prepare_dataset_task
from tasks.gate import quality_gate
from tasks.infrastructure import ensure_compute, ensure_environment
from tasks.plan import plan_run_task
from tasks.registry import register_model
from tasks.report import publish_report
from tasks.rollout import endpoint_traffic, rollout_model
from tasks.training import train_model


def run_overrides(
    *,
    data_source: dict[str, Any] | None = None,
    test_fraction: float | None = None,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    traffic_steps: list[int] | None = None,
    gate_tolerance: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pure: the flow's parameters as profile overrides (validated with the profile)."""
    tree: dict[str, Any] = {}
    if data_source is not None:
        tree.setdefault("data", {})["source"] = data_source
    if test_fraction is not None:
        tree.setdefault("data", {})["test_fraction"] = test_fraction
    if base_model is not None:
        tree["model"] = {"base": base_model}
    if training:
        tree["training"] = dict(training)
    if traffic_steps is not None:
        tree["rollout"] = {"traffic_steps": list(traffic_steps)}
    if gate_tolerance is not None:
        tree["gate"] = {"loss_tolerance": gate_tolerance}
    return deep_merge(tree, overrides or {})


@flow(name="finetune-phi", log_prints=True)
def finetune_pipeline(
    profile: str = "local",
    data_source: dict[str, Any] | None = None,
    test_fraction: float | None = None,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    traffic_steps: list[int] | None = None,
    gate_tolerance: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineResult:
    """Fine-tune, gate, deploy and smoke-test a Phi-3 model as the profile describes.

    Args:
        profile: profile name (configs/profiles/<name>.yaml) or path to a profile file.
        data_source: replaces `data.source`, e.g. {"kind": "hub", "name":
            "HuggingFaceH4/ultrachat_200k", "split": "train_sft[:1%]"}.
        test_fraction: held-out share of the data (the tutorial's 0.2).
        base_model: hub id or folder, e.g. "microsoft/Phi-3.5-mini-instruct".
        training: trainer hyperparameters to override, e.g. {"num_train_epochs": 1.0}.
        traffic_steps: the rollout's traffic percentages, e.g. [10, 50, 100].
        gate_tolerance: how much worse (relative held-out loss) a candidate may be and still
            replace the champion.
        overrides: any other profile keys, nested, e.g. {"smoke": {"enabled": False}}.
    """
    settings = load_profile(
        profile,
        overrides=run_overrides(
            data_source=data_source,
            test_fraction=test_fraction,
            base_model=base_model,
            training=training,
            traffic_steps=traffic_steps,
            gate_tolerance=gate_tolerance,
            overrides=overrides,
        ),
    )
    base = ensure_base_model(settings)
    dataset = prepare_dataset_task(settings, base)
    plan = plan_run_task(settings, base, dataset)
    if plan.up_to_date and plan.champion is not None:
        # Nothing to train; the rollout makes sure the champion is what serves (a no-op when
        # it already has all traffic, a redeploy when the endpoint lost it).
        champion = plan.champion
        rollout = rollout_model(settings, champion)
        result = PipelineResult(
            settings,
            "up to date",
            dataset,
            champion,
            rollout=rollout,
            traffic_before=dict(rollout.plan.previous),
            traffic_after=dict(rollout.final_traffic),
        )
        return publish_report(result)

    assert plan.job is not None  # a prepared dataset always has its sha256
    environment = ensure_environment(settings)
    compute = ensure_compute(settings)
    trained = train_model(settings, plan.job, environment, compute)
    registration = register_model(settings, dataset, trained)
    decision = quality_gate(settings, dataset, registration.model, trained, environment, compute)
    if not decision.promote:
        traffic = endpoint_traffic(settings)  # untouched: the champion keeps serving
        result = PipelineResult(
            settings,
            "not promoted",
            dataset,
            registration.model,
            trained,
            registration,
            decision,
            traffic_before=traffic,
            traffic_after=traffic,
        )
        return publish_report(result)

    rollout = rollout_model(settings, registration.model)
    result = PipelineResult(
        settings,
        "promoted",
        dataset,
        registration.model,
        trained,
        registration,
        decision,
        rollout,
        dict(rollout.plan.previous),
        dict(rollout.final_traffic),
    )
    return publish_report(result)
