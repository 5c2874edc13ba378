"""Profiles: the validated configuration a run is made of, loaded once.

A profile is a YAML file (`configs/profiles/<name>.yaml`) validated into frozen, strict
models; environment variables override single keys (`FINETUNE_PHI__TRAINING__LEARNING_RATE=1e-4`
sets `training.learning_rate`). Unknown keys and wrong types are errors that name the key.
Secrets never go here: Azure authenticates with `DefaultAzureCredential`, endpoint keys are
fetched at run time.

This module reads files and the environment, nothing else; it never creates the state folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from finetune_phi.chat_data.config import DataSettings
from finetune_phi.config_base import StrictModel
from trainer.config import Hyperparameters, RunOptions

ENV_PREFIX = "FINETUNE_PHI__"
PROFILE_ENV = "FINETUNE_PHI_PROFILE"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
DEFAULT_PROFILE = "local"

# `model.base` naming the tiny Phi-3 the project builds itself (into the state folder).
TINY_MODEL = "tiny-phi3"


class ConfigError(ValueError):
    """A profile that cannot be used; the message names the file and every bad key."""


class LocalBackendSettings(StrictModel):
    kind: Literal["local"] = Field(description="Everything on this machine: processes, MLflow.")


class AzureBackendSettings(StrictModel):
    kind: Literal["azure"] = Field(description="Azure ML through azure-ai-ml SDK v2.")
    # Left empty in the committed profile: they identify a user's workspace, so they come from
    # the environment (FINETUNE_PHI__BACKEND__SUBSCRIPTION_ID=...). Preflight names any missing.
    subscription_id: str | None = Field(default=None, description="Azure subscription id.")
    resource_group: str | None = Field(default=None, description="Resource group of the workspace.")
    workspace: str | None = Field(default=None, description="Azure ML workspace name.")
    region: str = Field(default="eastus2", description="Region of the workspace and compute.")
    training_compute: str = Field(default="phi3-a100", description="AmlCompute cluster name.")
    training_sku: str = Field(
        default="Standard_NC24ads_A100_v4", description="VM size of the training cluster."
    )
    training_min_nodes: int = Field(default=0, ge=0, description="0 scales to zero when idle.")
    training_max_nodes: int = Field(default=1, ge=1, description="Upper bound of the cluster.")
    idle_seconds_before_scale_down: int = Field(
        default=1800, ge=0, description="Idle time before a node is released."
    )
    inference_sku: str = Field(default="Standard_E4s_v3", description="VM size of deployments.")
    inference_instance_count: int = Field(default=1, ge=1, description="Instances per deployment.")
    user_assigned_identity_id: str | None = Field(
        default=None, description="Resource id of a user-assigned managed identity (optional)."
    )
    training_image: str = Field(
        default="mcr.microsoft.com/azureml/curated/acft-hf-nlp-gpu:59",
        description="Base image of the training environment (the tutorial's curated image).",
    )
    training_environment: str = Field(
        default="finetune-phi-training",
        description="Name of the training environment; its version is a hash of image + spec.",
    )
    training_conda_file: str = Field(
        default="environments/training.conda.yml",
        description="Conda spec of the training environment (relative to the repository).",
    )
    training_instance_count: int = Field(
        default=1, ge=1, description="Nodes per training job; above 1 runs PyTorch distributed."
    )
    processes_per_node: int = Field(
        default=1, ge=1, description="Training processes per node (GPUs per node) when distributed."
    )
    inference_environment: str = Field(
        default="finetune-phi-inference",
        description="Name of the deployments' environment; versioned by content hash.",
    )
    inference_image: str = Field(
        default="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
        description="Base image of the inference environment (serving/score.py runs on it).",
    )
    inference_conda_file: str = Field(
        default="environments/inference.conda.yml",
        description="Conda spec of the inference environment (relative to the repository).",
    )
    request_timeout_ms: int = Field(
        default=90000, ge=1000, le=180000, description="Scoring request timeout of deployments."
    )
    max_concurrent_requests_per_instance: int = Field(
        default=2, ge=1, description="Requests one deployment instance serves at once."
    )
    probe_initial_delay_seconds: int = Field(
        default=600, ge=1, description="Time a deployment may take to load the model."
    )
    job_poll_seconds: float = Field(
        default=30.0, gt=0, description="How often a running job's status and log are read."
    )


BackendSettings = Annotated[
    LocalBackendSettings | AzureBackendSettings, Field(discriminator="kind")
]


class ModelSettings(StrictModel):
    base: str = Field(
        default=TINY_MODEL,
        description=f"Model to fine-tune: '{TINY_MODEL}' (built by the project, no download), a "
        "Hugging Face hub id such as microsoft/Phi-3.5-mini-instruct, or a local folder.",
    )
    registered_name: str = Field(
        default="phi3-chat",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$",
        description="Name of the model in the registry.",
    )


class EndpointSettings(StrictModel):
    name: str = Field(
        default="phi3-chat",
        pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$",
        description="Online endpoint name (Azure's rule: 3-32 chars, letters, digits, dashes).",
    )


class RolloutSettings(StrictModel):
    """How a new model version reaches live traffic (blue-green, see finetune_phi.rollout)."""

    traffic_steps: tuple[int, ...] = Field(
        default=(10, 50, 100),
        min_length=1,
        description="Percent of live traffic on the new deployment at each step; increasing, "
        "ending at 100.",
    )
    mirror_percent: int = Field(
        default=0,
        ge=0,
        le=50,
        description="Before any live traffic, copy this percent of requests to the new "
        "deployment (responses discarded); 0 skips the mirror phase. Azure caps it at 50.",
    )
    mirror_requests: int = Field(
        default=20, ge=1, description="Requests sent through the endpoint during the mirror phase."
    )
    requests_per_step: int = Field(
        default=10, ge=1, description="Probe requests through the endpoint after each step."
    )
    max_error_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Highest share of failed probe requests a step may have before rollback.",
    )
    keep_previous: bool = Field(
        default=False,
        description="Keep the previous deployment (at 0%) after success, for instant rollback.",
    )
    readiness_timeout_seconds: int = Field(
        default=600, ge=1, description="How long a new deployment may take to become ready."
    )

    @field_validator("traffic_steps")
    @classmethod
    def _steps_increase_to_100(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 < step <= 100 for step in steps):
            raise ValueError("each step is a percent between 1 and 100")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("steps must increase")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps


class GateSettings(StrictModel):
    """When a freshly trained model may replace the champion (finetune_phi.evaluation)."""

    loss_tolerance: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Promote if the candidate's held-out loss is at most this much (relative) "
        "above the champion's, measured on the same test set.",
    )
    fact_accuracy_tolerance: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Promote if the candidate's fact accuracy is at most this much (absolute) "
        "below the champion's (synthetic data only: it has fact questions).",
    )
    max_eval_conversations: int = Field(
        default=240, ge=1, description="Test conversations both models are scored on."
    )


class SmokeSettings(StrictModel):
    """The Prompt flow smoke test run during a rollout (promptflow_app/)."""

    enabled: bool = Field(default=True, description="Run it; a failure rolls the rollout back.")
    questions: int = Field(
        default=3,
        ge=1,
        description="How many fact questions to ask (the tutorial's 'Who founded Microsoft?' "
        "first); synthetic data only, other data is asked the Microsoft question alone.",
    )
    min_accuracy: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of answers that must be correct."
    )


class Profile(StrictModel):
    """One validated profile: everything a run of the pipeline needs to know."""

    name: str = Field(description="Profile name, shown in logs and reports.")
    state_dir: Path = Field(
        default=Path("state"),
        description="Folder for the MLflow db, models, datasets and endpoint state; relative "
        "paths are resolved against the working directory. Safe to delete.",
    )
    backend: BackendSettings = Field(description="Where jobs, models and endpoints live.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    training: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Trainer hyperparameters (hashed)."
    )
    training_run: RunOptions = Field(
        default_factory=RunOptions, description="Trainer run options (checkpoints, logging)."
    )
    endpoint: EndpointSettings = Field(default_factory=EndpointSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    smoke: SmokeSettings = Field(default_factory=SmokeSettings)


def profile_path(name_or_path: str) -> Path:
    """A profile name (`local`) maps to configs/profiles/local.yaml; a path is taken as is."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        return candidate
    return PROFILES_DIR / f"{name_or_path}.yaml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def parse_override_value(raw: str) -> Any:
    """An override's text as a typed value: JSON where it parses (`3`, `1e-4`, `true`, `null`,
    `[1, 2]`), the plain string otherwise (`no`, `cpu`, `microsoft/Phi-3.5-mini-instruct`).

    JSON rather than YAML on purpose: YAML 1.1 reads `1e-4` as a string and `no` as False,
    which would make `learning_rate=1e-4` and `eval_strategy=no` impossible to set.
    """
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def set_path(tree: dict[str, Any], path: Sequence[str], value: Any, *, label: str) -> None:
    """Put `value` at `path` in a nested mapping, naming `label` when two overrides collide."""
    if not path or not all(path):
        raise ConfigError(f"{label}: empty path segment")
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{label}: conflicts with another override of {part!r}")
    if isinstance(node.get(path[-1]), dict):
        raise ConfigError(f"{label}: conflicts with another override of {path[-1]!r}")
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested overrides from FINETUNE_PHI__A__B=value variables (see `parse_override_value`)."""
    tree: dict[str, Any] = {}
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        set_path(tree, path, parse_override_value(raw) if raw != "" else None, label=key)
    return tree


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Override wins key by key; a section whose `kind` changes is replaced, not merged.

    Switching `data.source` from synthetic to a file must not keep the synthetic source's keys
    (they would be unknown keys of a file source).
    """
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(current, Mapping)
            and value.get("kind", current.get("kind")) == current.get("kind")
        ):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


# Pydantic's ways of saying "this key is not allowed here": models forbid extras, dataclasses
# (the trainer's Hyperparameters) reject an unexpected keyword argument.
_UNKNOWN_KEY_ERRORS = {"extra_forbidden", "unexpected_keyword_argument"}


def _has_key(node: Any, part: str | int) -> bool:
    if isinstance(node, Mapping):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _key_path(loc: Sequence[str | int], data: Any) -> str:
    """The dotted path of an error as the user wrote it.

    Pydantic puts a tagged union's tag in the location (`backend.local.region`); walking the
    input keeps only parts that are keys (or indexes) of the data at that level.
    """
    parts: list[str] = []
    node = data
    for part in loc:
        if _has_key(node, part):
            node = node[part]
        elif isinstance(node, Mapping) and node.get("kind") == part:
            continue  # the discriminator's tag, not a key in the file
        else:
            node = None  # past the input (a missing key): keep the rest as pydantic says
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def format_validation_error(
    source: str, error: ValidationError, data: Mapping[str, Any] | None = None
) -> str:
    lines = [f"{source}: invalid profile ({error.error_count()} problem(s))"]
    for item in error.errors():
        key = _key_path(item["loc"], data if data is not None else {})
        unknown = item["type"] in _UNKNOWN_KEY_ERRORS
        message = "unknown key" if unknown else item["msg"]
        shown = "" if unknown or item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def validate_profile(data: Mapping[str, Any], *, source: str = "profile") -> Profile:
    """Validate a raw mapping into a Profile (JSON mode: '3' is never the integer 3)."""
    try:
        text = json.dumps(data)
    except TypeError as exc:  # e.g. a YAML date or a set: not a config value
        raise ConfigError(f"{source}: value of an unsupported type: {exc}") from exc
    try:
        return Profile.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, data)) from None


def load_profile(
    name_or_path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Profile:
    """Load a profile: file < FINETUNE_PHI__* environment < explicit overrides.

    The profile is chosen by the argument, else $FINETUNE_PHI_PROFILE, else 'local'. A relative
    state_dir becomes absolute against `cwd` so every later stage sees one folder.
    """
    environ = os.environ if environ is None else environ
    chosen = name_or_path or environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    path = profile_path(chosen)
    if not path.is_file():
        raise ConfigError(
            f"profile {chosen!r} not found at {path}; available: {', '.join(available_profiles())}"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile is a mapping of keys, got {type(raw).__name__}")
    merged = deep_merge(raw, env_overrides(environ))
    if overrides:
        merged = deep_merge(merged, overrides)
    profile = validate_profile(merged, source=str(path))
    if not profile.state_dir.is_absolute():
        base = cwd or Path.cwd()
        profile = profile.model_copy(update={"state_dir": (base / profile.state_dir).resolve()})
    return profile


def profile_json_schema() -> dict[str, Any]:
    """The JSON schema of a profile, for `finetune-phi config schema` and editors."""
    return Profile.model_json_schema()
