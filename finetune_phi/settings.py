"""Profiles: the validated configuration a run is made of, loaded once.

A profile is a YAML file (`configs/profiles/<name>.yaml`) validated into frozen, strict
models; environment variables override single keys (`FINETUNE_PHI__TRAINING__LEARNING_RATE=1e-4`
sets `training.learning_rate`), `--set training.seed=1` (the `overrides` of `load_profile`) beats
both. Unknown keys and wrong types are errors that name the key (and the variable, when a
variable set it). pydantic-settings reads the three sources, in the precedence
`_ProfileSources.settings_customise_sources` declares; `load_profile` merges and validates.
Secrets never go here: Azure authenticates with `DefaultAzureCredential`, endpoint keys are
fetched at run time.

This module reads files and the environment, nothing else; it never creates the state folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from finetune_phi.chat_data.config import DataSettings
from finetune_phi.config_base import StrictModel
from finetune_phi.errors import UsageError
from trainer.config import Hyperparameters, RunOptions

ENV_PREFIX = "FINETUNE_PHI__"
ENV_NESTED_DELIMITER = "__"
PROFILE_ENV = "FINETUNE_PHI_PROFILE"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
DEFAULT_PROFILE = "local"

# `model.base` naming the tiny Phi-3 the project builds itself (into the state folder).
TINY_MODEL = "tiny-phi3"


class ConfigError(UsageError, ValueError):
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
    allow_cpu_training: bool = Field(
        default=False,
        description="Let a training job train on a node without a usable CUDA GPU (on its CPU, "
        "in fp32: hours for a 3.8B model). false: the job's trainer gets --require_gpu (see "
        "training_run.require_gpu) and fails within seconds, saying what torch found, when "
        "training_sku has no GPU or the environment's torch has no CUDA.",
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
    # The next three: None derives them from the model's size and inference_sku (the serving
    # plan, finetune_phi/serving_plan.py); a number here wins.
    request_timeout_ms: int | None = Field(
        default=None,
        ge=1000,
        le=180000,
        description="Scoring request timeout of deployments; null: the longest answer the "
        "contract allows at the SKU's speed, capped at Azure's 180000.",
    )
    max_concurrent_requests_per_instance: int | None = Field(
        default=None,
        ge=1,
        description="Requests one deployment instance serves at once; null: 1 on a CPU SKU "
        "(one generation at a time), 4 on a GPU SKU.",
    )
    probe_initial_delay_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Time a deployment may take to load the model before its probes count; "
        "null: twice the load time the serving plan estimates.",
    )
    job_poll_seconds: float = Field(
        default=30.0, gt=0, description="How often a running job's status and log are read."
    )
    not_responding_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="How long a job may stay NotResponding (no heartbeat; the service can "
        "bring it back) before the run stops waiting; the next submission cancels it and "
        "resumes from its checkpoint in a new attempt.",
    )

    @field_validator("training_instance_count")
    @classmethod
    def _instances_fit_the_cluster(cls, count: int, info: ValidationInfo) -> int:
        # A command job asks the cluster for `instance_count` nodes at once; an AmlCompute
        # cluster never grows past its max_instances, so a bigger job could never start.
        # (training_max_nodes is declared above, so it is validated and in `info.data`.)
        max_nodes = info.data.get("training_max_nodes")
        if max_nodes is not None and count > max_nodes:
            raise ValueError(
                f"more than backend.training_max_nodes ({max_nodes}): a job of {count} nodes "
                f"cannot start on a cluster of at most {max_nodes}; raise "
                "backend.training_max_nodes or lower backend.training_instance_count"
            )
        return count


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
    readiness_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="How long a new deployment may take to become ready; null: derived from "
        "the model's size and the serving SKU (the serving plan).",
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
        default=240,
        ge=1,
        description="Test conversations both models are scored on (in jobs on the training "
        "compute; a model is measured once per dataset and value of this setting).",
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


class ServingSettings(StrictModel):
    """How deployments serve the model; what is null is derived from the model's size and the
    SKU (finetune_phi/serving_plan.py: seconds per token, load time, and the timeouts)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights' dtype when serving: auto is bfloat16 on a GPU that has it, "
        "float16 on other GPUs, float32 on a CPU (half precision is emulated there, ~50x slower).",
    )
    seconds_per_token: float | None = Field(
        default=None,
        gt=0,
        description="Measured decode time per generated token; null: weights' bytes / the "
        "SKU's memory bandwidth.",
    )
    load_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Measured time a deployment takes to load the model; null: estimated.",
    )
    model_parameters: int | None = Field(
        default=None,
        ge=1,
        description="The model's size in parameters; null: the registered version's "
        "model_parameters tag (the trainer records it), else counted from its config.json.",
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
    serving: ServingSettings = Field(default_factory=ServingSettings)


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


def _has_path(tree: Mapping[str, Any], path: Sequence[str]) -> bool:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


# --- where a profile's values come from: pydantic-settings sources ----------------------------


class _ProfileFile(YamlConfigSettingsSource):
    """The profile's YAML file (`yaml_file` of the settings class), with the errors a user reads."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file_path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{file_path}: a profile is a mapping of keys, got {type(data).__name__}"
            )
        return data


class _ProfileEnvironment(EnvSettingsSource):
    """FINETUNE_PHI__A__B=value variables as a nested mapping, read from `environ`.

    pydantic-settings matches the prefix, splits the names at `__` and nests them under the
    profile's sections; every value goes through `parse_override_value`, as a `--set` value does.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        # The prefix as written (upper case), sorted: one result whatever the environment's order.
        self.variables = {k: environ[k] for k in sorted(environ) if k.startswith(ENV_PREFIX)}
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The mapping given rather than os.environ (tests and callers pass their own).
        return {name.lower(): value for name, value in self.variables.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        return parse_override_value(value)

    def __call__(self) -> dict[str, Any]:
        tree = super().__call__()
        # Hand-written, because pydantic-settings drops, without a word, the variables it cannot
        # place: a name that is no key of the profile (FINETUNE_PHI__TRANING__X), a key under a
        # value that is not a mapping, a top-level null. Putting each back where its name says
        # lets validation report it as an unknown key or a wrong type (naming the variable, see
        # `load_profile`), or fails here on a conflict or an empty segment, as `--set` does.
        # And an empty variable means null, as before (pydantic-settings keeps "" as text).
        for name, raw in self.variables.items():
            path = self.key_path(name)
            if raw == "" or not all(path) or not _has_path(tree, path):
                set_path(tree, path, None if raw == "" else parse_override_value(raw), label=name)
        return tree

    @staticmethod
    def key_path(name: str) -> tuple[str, ...]:
        """FINETUNE_PHI__TRAINING__SEED -> ("training", "seed")."""
        return tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER))


class _ProfileSources(BaseSettings):
    """The three places a profile's values come from, in the precedence
    `settings_customise_sources` gives them (highest first, pydantic-settings' convention).

    Never instantiated: a profile is validated differently. pydantic-settings validates in
    Python mode, where a strict model rejects "state" for a path and a list for a tuple; a
    profile is `Profile`'s strict validation in JSON mode of the merged values. The fields (one
    per `Profile` field, see `_SOURCES`) are typed `dict[str, dict]` only to steer the
    environment source: it then nests every `__` and decodes every value, at any depth,
    whatever the key's type, as `--set` values are read (pydantic-settings 2.6 and later alike).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        # Keys of the file and of --set are matched as written; the environment source is made
        # case-insensitive on its own (variable names are upper case, keys lower case).
        case_sensitive=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # --set overrides (the init kwargs) > FINETUNE_PHI__* variables > the profile file.
        # No .env file, no secrets folder.
        return init_settings, env_settings, _ProfileFile(settings_cls)


_SOURCES: type[_ProfileSources] = create_model(
    "ProfileSources",
    __base__=_ProfileSources,
    **{name: (dict[str, dict], None) for name in Profile.model_fields},  # type: ignore[call-overload]
)


def _profile_sources(
    path: Path, environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources of one load, highest precedence first."""
    settings_cls = create_model(
        "ProfileSources", __base__=_SOURCES, __cls_kwargs__={"yaml_file": path}
    )
    nothing = InitSettingsSource(settings_cls, {})  # for the .env and secrets slots
    return settings_cls.settings_customise_sources(
        settings_cls,
        init_settings=InitSettingsSource(settings_cls, dict(overrides)),
        env_settings=_ProfileEnvironment(settings_cls, environ),
        dotenv_settings=nothing,
        file_secret_settings=nothing,
    )


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested overrides from FINETUNE_PHI__A__B=value variables (see `parse_override_value`)."""
    return _ProfileEnvironment(_SOURCES, environ)()


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


def _key_parts(loc: Sequence[str | int], data: Any) -> list[str]:
    """The path of an error as the user wrote it.

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
    return parts


def _key_path(loc: Sequence[str | int], data: Any) -> str:
    """The dotted path of an error as the user wrote it (see `_key_parts`)."""
    return ".".join(_key_parts(loc, data)) or "(top level)"


def _related(a: Sequence[str], b: Sequence[str]) -> bool:
    """One path is the other or inside it."""
    return tuple(a[: len(b)]) == tuple(b) or tuple(b[: len(a)]) == tuple(a)


def format_validation_error(
    source: str,
    error: ValidationError,
    data: Mapping[str, Any] | None = None,
    *,
    variables: Mapping[tuple[str, ...], str] | None = None,
) -> str:
    """One line per problem, naming its key; `variables` (key path -> environment variable)
    adds the variable a bad value came from."""
    lines = [f"{source}: invalid profile ({error.error_count()} problem(s))"]
    for item in error.errors():
        parts = _key_parts(item["loc"], data if data is not None else {})
        key = ".".join(parts) or "(top level)"
        unknown = item["type"] in _UNKNOWN_KEY_ERRORS
        message = "unknown key" if unknown else item["msg"]
        shown = "" if unknown or item["type"] == "missing" else f" (got {item.get('input')!r})"
        names = sorted(name for path, name in (variables or {}).items() if _related(path, parts))
        origin = f" (from {', '.join(names)})" if parts and names else ""
        lines.append(f"  {key}: {message}{shown}{origin}")
    return "\n".join(lines)


def validate_profile(
    data: Mapping[str, Any],
    *,
    source: str = "profile",
    variables: Mapping[tuple[str, ...], str] | None = None,
) -> Profile:
    """Validate a raw mapping into a Profile (JSON mode: '3' is never the integer 3)."""
    try:
        text = json.dumps(data)
    except TypeError as exc:  # e.g. a YAML date or a set: not a config value
        raise ConfigError(f"{source}: value of an unsupported type: {exc}") from exc
    try:
        return Profile.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, data, variables=variables)) from None


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            paths.extend(_leaf_paths(value, (*prefix, key)))
        else:
            paths.append((*prefix, key))
    return paths


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
    overrides = overrides or {}
    chosen = name_or_path or environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    path = profile_path(chosen)
    if not path.is_file():
        raise ConfigError(
            f"profile {chosen!r} not found at {path}; available: {', '.join(available_profiles())}"
        )
    sources = _profile_sources(path, environ, overrides)
    # Hand-written: the merge. pydantic-settings merges its sources key by key (deep_update,
    # highest first), which would keep a synthetic data source's keys under `data.source` after
    # an override switches it to `kind: file`; `deep_merge` replaces a section whose kind
    # changes, and that needs the sources below, so it folds from the lowest precedence up.
    merged: dict[str, Any] = {}
    for source in reversed(sources):
        merged = deep_merge(merged, source())
    # An error in a value the environment set names the variable, unless --set set it too.
    env = next(source for source in sources if isinstance(source, _ProfileEnvironment))
    overridden = _leaf_paths(overrides)
    variables: dict[tuple[str, ...], str] = {}
    for name in env.variables:
        key = env.key_path(name)
        if not any(_related(key, other) for other in overridden):
            variables[key] = name
    profile = validate_profile(merged, source=str(path), variables=variables)
    if not profile.state_dir.is_absolute():
        base = cwd or Path.cwd()
        profile = profile.model_copy(update={"state_dir": (base / profile.state_dir).resolve()})
    return profile


def profile_json_schema() -> dict[str, Any]:
    """The JSON schema of a profile, for `finetune-phi config schema` and editors."""
    return Profile.model_json_schema()
