"""`--dry-run`: every entity the Azure backend would submit, as YAML `az ml` accepts, and the
ordered list of calls, without calling Azure (no credential, no network).

The entities come from the same builders the backend uses (`entities.py`), so the YAML is what
a real run sends; tests load each document back with the SDK's own loaders. Values that only a
real run knows (the dataset's sha256, the next model version, which colour is live) are shown
as placeholders and said so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backends.azure import entities
from backends.azure.workspace import AzureConnection, AzureEndpoints, AzureJobs
from finetune_phi.rollout import plan_rollout
from finetune_phi.run_plan import RunPlan, training_job_spec
from finetune_phi.settings import REPO_ROOT, AzureBackendSettings
from finetune_phi.workspace import (
    DeploymentSpec,
    EnvironmentRef,
    EnvironmentSpec,
    ModelVersion,
    TrafficState,
)

PLACEHOLDER_SHA256 = "0" * 64

SCHEMAS = {
    "environment": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
    "compute": "https://azuremlschemas.azureedge.net/latest/amlCompute.schema.json",
    "job": "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json",
    "model": "https://azuremlschemas.azureedge.net/latest/model.schema.json",
    "endpoint": "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
    "deployment": (
        "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"
    ),
}


def _without_nulls(value: Any) -> Any:
    """Drop null fields: the SDK dumps e.g. an identity's principal_id as null, and its own
    loader (like `az ml`) then refuses the document."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@dataclass
class DryRun:
    documents: list[tuple[str, str, Any]] = field(default_factory=list)  # (title, kind, entity)
    calls: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def yaml_of(self, entity: Any, kind: str) -> str:
        """The entity as the SDK itself dumps it (what `az ml <kind> create -f` reads)."""
        if hasattr(entity, "_to_job"):  # a command() builder: its standalone-job form
            entity = entity._to_job()
        data = _without_nulls(json.loads(json.dumps(entity._to_dict())))  # plain types
        data.pop("$schema", None)
        return yaml.safe_dump({"$schema": SCHEMAS[kind], **data}, sort_keys=False)

    def render(self) -> str:
        out: list[str] = []
        for title, kind, entity in self.documents:
            out.append(f"# --- {title} (az ml {kind} create -f <file>)")
            out.append(self.yaml_of(entity, kind).rstrip())
            out.append("---")
        out.append("# --- call plan (in order)")
        out += [f"# {n:>2}. {call}" for n, call in enumerate(self.calls, 1)]
        out += [f"# note: {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def build_dry_run(
    plan: RunPlan,
    *,
    repo_root: Path = REPO_ROOT,
    staging_dir: Path | None = None,
) -> DryRun:
    """The run plan as Azure ML entities and calls. A plan whose dataset is not known yet (a
    hub source a dry run does not download) shows its job for `PLACEHOLDER_SHA256`."""
    profile = plan.profile
    settings = profile.backend
    if not isinstance(settings, AzureBackendSettings):
        raise ValueError(f"profile {profile.name!r} is not an azure profile")
    run = DryRun()
    s = settings
    connection = AzureConnection(s, repo_root=repo_root, code_staging_dir=staging_dir)
    jobs, endpoints = AzureJobs(connection), AzureEndpoints(connection)

    def env(spec: EnvironmentSpec) -> EnvironmentRef:
        built = entities.build_environment(
            spec.name, spec.image, Path(spec.conda_file or ""), spec.description
        )
        run.documents.append((f"environment {built.name}:{built.version}", "environment", built))
        return EnvironmentRef(spec.name, str(built.version))

    training_env = env(jobs.training_environment_spec())
    compute_spec = entities.training_compute_spec(s)
    run.documents.append(
        (f"compute {compute_spec.name}", "compute", entities.build_compute(compute_spec, s))
    )

    spec = plan.job or training_job_spec(
        profile,
        plan.base_model,
        PLACEHOLDER_SHA256,
        "state/datasets/<sha256>/train.jsonl",
        "state/datasets/<sha256>/test.jsonl",
    )
    dataset_sha256 = spec.tags["dataset_sha256"]
    name = spec.name
    code = entities.stage_code(
        [entities.TRAINER_PACKAGE], repo_root=repo_root, staging_root=staging_dir
    )
    serving_code = entities.stage_code(
        [entities.SERVING_PACKAGE], repo_root=repo_root, staging_root=staging_dir
    )
    job = entities.build_job(
        spec,
        job_name=name,
        attempt=1,
        environment=training_env,
        compute=compute_spec.name,
        code=code,
        settings=s,
    )
    run.documents.append((f"job {name}", "job", job))

    model_name = profile.model.registered_name
    model = entities.build_model(
        model_name, "<next>", entities.model_uri(name), {"job_name": name, **spec.tags}
    )
    run.documents.append((f"model {model_name} (version: next free number)", "model", model))

    endpoint = entities.build_endpoint(profile.endpoint.name, s)
    run.documents.append((f"endpoint {profile.endpoint.name}", "endpoint", endpoint))
    inference_env = env(endpoints.inference_environment_spec())
    version = ModelVersion(model_name, "<next>", entities.model_uri(name))
    deployment = entities.build_deployment(
        DeploymentSpec(profile.endpoint.name, "blue", version),
        environment=inference_env,
        code=serving_code,
        settings=s,
    )
    run.documents.append(
        ("deployment blue (or green: the colour not live)", "deployment", deployment)
    )

    ml = "ml_client"
    run.calls += [
        f"{ml}.environments.get({training_env.name!r}, {training_env.version!r}); "
        "create_or_update if missing",
        f"{ml}.compute.get({compute_spec.name!r}); begin_create_or_update if missing",
        f"{ml}.jobs.get({name!r}) (re-attach if running/completed; failed -> {name}-r2)",
        f"{ml}.jobs.create_or_update(job {name!r}) (uploads trainer/ and the data files)",
        f"{ml}.jobs.get({name!r}) every <= {s.job_poll_seconds:g} s + read "
        f"ExperimentRun/dcid.{name}/user_logs/std_log.txt until a terminal status",
        f"read {entities.output_folder(name)}/metrics.json from {entities.DATASTORE}",
        f"{ml}.models.list({model_name!r}); models.create_or_update({model_name}:<next>) "
        f"from {entities.model_uri(name)} unless a version has job_name={name}",
        f"{ml}.online_endpoints.get({profile.endpoint.name!r}); begin_create_or_update (key auth) "
        "if missing; never deleted",
        f"{ml}.environments.get({inference_env.name!r}, {inference_env.version!r}); "
        "create_or_update if missing",
    ]
    fresh = plan_rollout(TrafficState(), {}, f"{model_name}:<next>", profile.rollout)
    second = plan_rollout(
        TrafficState({"blue": 100}),
        {"blue": f"{model_name}:<previous>"},
        f"{model_name}:<next>",
        profile.rollout,
    )
    for label, rollout in (("new endpoint", fresh), ("blue live", second)):
        run.calls.append(
            f"rollout ({label}): "
            + "; ".join(rollout.describe())
            + " -- via online_deployments.begin_create_or_update, online_endpoints.invoke "
            "(azureml-model-deployment header), online_endpoints.begin_create_or_update "
            "(traffic + mirror_traffic), models tags alias.challenger/alias.champion, "
            "online_deployments.begin_delete"
        )
    run.notes += [
        f"job name shown for dataset sha256 {dataset_sha256[:12]}...; a real run uses the "
        "prepared dataset's",
        "nothing was sent to Azure; `finetune-phi azure preflight` checks credential, "
        "workspace, SKUs and quota",
    ]
    return run
