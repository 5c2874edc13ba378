"""The serving plan follows the model's size and the SKU: dtype, speed, load time and every
timeout a rollout waits on; the profile can set any of them instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_phi.rollout import PARAMETERS_TAG, parameters_of
from finetune_phi.serving_plan import (
    AZURE_MAX_REQUEST_TIMEOUT_MS,
    SKUS,
    ServingPlanError,
    phi3_parameters,
    plan_serving,
    profile_serving_plan,
    serving_dtype,
)
from finetune_phi.settings import load_profile
from finetune_phi.workspace import ModelVersion

PHI35_MINI = {
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
}
PHI35_PARAMETERS = 3_821_079_552  # the published 3.8B, to the parameter


def test_phi3_parameters_counts_phi35_mini() -> None:
    assert phi3_parameters(PHI35_MINI) == PHI35_PARAMETERS


def test_phi3_parameters_agrees_with_a_real_model(tiny_model_dir: Path) -> None:
    import json

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert phi3_parameters(config) == sum(p.numel() for p in model.parameters())


def test_a_38b_model_on_the_tutorials_cpu_vm() -> None:
    plan = plan_serving(PHI35_PARAMETERS, SKUS["Standard_E4s_v3"])
    assert plan.dtype == "float32" and round(plan.weights_gb, 1) == 15.3
    assert 0.5 < plan.seconds_per_token < 2  # about a second a token
    assert plan.request_timeout_ms == AZURE_MAX_REQUEST_TIMEOUT_MS  # the cap limits answers
    assert 100 < plan.longest_answer_tokens < 512
    assert plan.max_concurrent_requests_per_instance == 1
    # a 64-token smoke answer takes about a minute: three of them must fit, with room
    assert plan.smoke_timeout_seconds > 3 * 64 * plan.seconds_per_token
    assert plan.probe_initial_delay_seconds > plan.load_seconds
    assert plan.readiness_timeout_seconds > plan.probe_initial_delay_seconds


def test_the_same_model_on_an_a100_is_bf16_and_quick() -> None:
    cpu = plan_serving(PHI35_PARAMETERS, SKUS["Standard_E4s_v3"])
    gpu = plan_serving(PHI35_PARAMETERS, SKUS["Standard_NC24ads_A100_v4"])
    assert gpu.dtype == "bfloat16" and round(gpu.weights_gb, 1) == 7.6
    assert gpu.seconds_per_token < cpu.seconds_per_token / 50
    assert gpu.request_timeout_ms < cpu.request_timeout_ms  # a hung GPU is noticed sooner
    assert gpu.longest_answer_tokens == 512
    assert gpu.max_concurrent_requests_per_instance > 1
    assert plan_serving(PHI35_PARAMETERS, SKUS["Standard_NC4as_T4_v3"]).dtype == "float16"


def test_a_model_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ServingPlanError, match="more than the 16 GB GPU memory"):
        plan_serving(14_000_000_000, SKUS["Standard_NC4as_T4_v3"])


def test_dtype_rules() -> None:
    assert serving_dtype(SKUS["Standard_E4s_v3"]) == "float32"
    with pytest.raises(ServingPlanError, match="emulated"):
        serving_dtype(SKUS["Standard_E4s_v3"], "bfloat16")
    with pytest.raises(ServingPlanError, match="no bf16"):
        serving_dtype(SKUS["Standard_NC4as_T4_v3"], "bfloat16")


def test_the_profile_wins_over_the_estimates(tmp_path: Path) -> None:
    profile = load_profile(
        "azure",
        environ={},
        overrides={
            "serving": {"seconds_per_token": 2.0, "load_seconds": 300},
            "backend": {"request_timeout_ms": 120000, "max_concurrent_requests_per_instance": 2},
            "rollout": {"readiness_timeout_seconds": 900},
        },
    )
    plan = profile_serving_plan(profile, PHI35_PARAMETERS)
    assert plan.sku == "Standard_E4s_v3"
    assert (plan.seconds_per_token, plan.load_seconds) == (2.0, 300)
    assert plan.request_timeout_ms == 120000 and plan.max_concurrent_requests_per_instance == 2
    assert plan.readiness_timeout_seconds == 900
    assert plan.probe_initial_delay_seconds == 600  # twice the load time the profile gave


def test_an_unknown_sku_needs_its_figures(tmp_path: Path) -> None:
    odd = {"backend": {"inference_sku": "Standard_D2_v9"}}
    with pytest.raises(ServingPlanError, match="unknown serving SKU 'Standard_D2_v9'"):
        profile_serving_plan(load_profile("azure", environ={}, overrides=odd), PHI35_PARAMETERS)
    given = {**odd, "serving": {"seconds_per_token": 1.5, "load_seconds": 200}}
    plan = profile_serving_plan(load_profile("azure", environ={}, overrides=given), 1000)
    assert plan.seconds_per_token == 1.5


def test_the_models_size_comes_from_the_profile_its_tag_or_its_config(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from backends.local.registry import LocalRegistry
    from finetune_phi.state import StateLayout

    registry = LocalRegistry(StateLayout(tmp_path / "state"))
    local = load_profile("local", environ={}, overrides={"state_dir": str(tmp_path / "state")})
    version = registry.register_model("m", str(tiny_model_dir), tags={})
    import json

    counted = phi3_parameters(json.loads((tiny_model_dir / "config.json").read_text()))
    assert parameters_of(version, registry, local, tmp_path / "dl") == counted

    tagged = ModelVersion("m", "9", "azureml://somewhere", {PARAMETERS_TAG: "123"})
    assert parameters_of(tagged, registry, local, tmp_path / "dl") == 123
    pinned = local.model_copy(
        update={"serving": local.serving.model_copy(update={"model_parameters": 7})}
    )
    assert parameters_of(tagged, registry, pinned, tmp_path / "dl") == 7

    remote = ModelVersion("m", "9", "azureml://somewhere", {})
    with pytest.raises(ServingPlanError, match="set serving.model_parameters"):
        parameters_of(remote, registry, local, tmp_path / "dl")


def test_the_azure_deployment_carries_the_plan(tmp_path: Path) -> None:
    from backends.azure import entities
    from finetune_phi.workspace import DeploymentSpec, EnvironmentRef
    from serving.score import DTYPE_ENV

    profile = load_profile("azure", environ={})
    plan = profile_serving_plan(profile, PHI35_PARAMETERS)
    version = ModelVersion("phi3-chat", "3", "azureml://x")
    built = entities.build_deployment(
        DeploymentSpec("phi3-chat", "green", version, serving=plan),
        environment=EnvironmentRef("finetune-phi-inference", "abc"),
        code=entities.stage_code(["serving"], staging_root=tmp_path / "stage"),
        settings=profile.backend,  # type: ignore[arg-type]
    )
    assert built.request_settings.request_timeout_ms == plan.request_timeout_ms == 180000
    assert built.request_settings.max_concurrent_requests_per_instance == 1
    assert built.liveness_probe.initial_delay == plan.probe_initial_delay_seconds
    assert built.readiness_probe.initial_delay == plan.probe_initial_delay_seconds
    assert built.environment_variables[DTYPE_ENV] == "float32"
