"""`--dry-run`: every entity the Azure backend would submit, as YAML `az ml` accepts, the
workspace it targets, the quota it holds, and the ordered list of calls, without calling Azure
(no credential, no network).

The entities come from the same builders the backend uses (`entities.py`), so the YAML is what
a real run sends; tests load each document back with the SDK's own loaders, and create them
from the files `write()` leaves. Written for `az ml <group> create -f <file>`:

- local paths are local: the SDK's own dump writes a local input as `azureml:<path>` (which
  `az ml` reads as the name of a registered data asset); here a data file is its path on this
  machine, and the code a job or deployment uploads is a folder beside the YAML
  (`code/training`, `code/serving`: `write()` copies the staged code there) instead of a
  staging folder under the temporary directory;
- values only a real run knows are left to the service where `az ml` allows it: the model
  version is omitted (the service numbers it) and the deployment names the model
  `azureml:<model>@latest`, the version the run has just registered (a real run pins the
  number it got). The dataset's sha256 in the job name stays a placeholder until the data is
  prepared.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backends.azure import entities, quota
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
# The `az ml` command group that creates each kind.
AZ_ML_GROUPS = {
    "environment": "environment",
    "compute": "compute",
    "job": "job",
    "model": "model",
    "endpoint": "online-endpoint",
    "deployment": "online-deployment",
}
# Where write() puts the code each upload takes, relative to the YAML files.
TRAINING_CODE = "code/training"
SERVING_CODE = "code/serving"
QUESTIONS_FILE = "inputs/questions.json"
PLAN_FILE = "plan.yaml"
TARGET_SETTINGS = (
    ("subscription", "subscription_id", "<subscription id>"),
    ("resource group", "resource_group", "<resource group>"),
    ("workspace", "workspace", "<workspace>"),
)


def _without_nulls(value: Any) -> Any:
    """Drop null fields: the SDK dumps e.g. an identity's principal_id as null, and its own
    loader (like `az ml`) then refuses the document."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _is_local(path: str) -> bool:
    """A path on this machine, not an asset reference or a cloud URI."""
    return not path.startswith("azureml:") and "://" not in path


def _local_inputs(entity: Any) -> dict[str, str]:
    """input name -> its local path, for a job's inputs given as local files or folders."""
    found: dict[str, str] = {}
    for name, value in (getattr(entity, "inputs", None) or {}).items():
        path = getattr(value, "path", None)
        if isinstance(path, str) and _is_local(path):
            found[name] = path
    return found


def _key(path: str) -> str:
    """A local path as the SDK's dump may write it (absolute, links resolved)."""
    return str(Path(path).expanduser().resolve())


@dataclass
class DryRun:
    documents: list[tuple[str, str, Any]] = field(default_factory=list)  # (title, kind, entity)
    calls: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)  # target, its warnings, quota
    target_flags: str = ""  # `--subscription ... --resource-group ... --workspace-name ...`
    # path in write()'s folder -> the staged file or folder it copies; the same staged
    # paths are how the YAML names them
    files: dict[str, Path] = field(default_factory=dict)

    def yaml_of(self, entity: Any, kind: str) -> str:
        """The entity as the SDK itself dumps it, local inputs written as local paths."""
        return yaml.safe_dump(self._data(entity, kind, {}), sort_keys=False)

    def _data(self, entity: Any, kind: str, rename: dict[str, str]) -> dict[str, Any]:
        if hasattr(entity, "_to_job"):  # a command() builder: its standalone-job form
            entity = entity._to_job()
        data = _without_nulls(json.loads(json.dumps(entity._to_dict())))  # plain types
        data.pop("$schema", None)
        for name, path in _local_inputs(entity).items():
            data["inputs"][name]["path"] = rename.get(_key(path), path)
        if isinstance(data.get("code"), str):
            data["code"] = rename.get(_key(data["code"]), data["code"])
        configuration = data.get("code_configuration") or {}
        if isinstance(configuration.get("code"), str):
            configuration["code"] = rename.get(_key(configuration["code"]), configuration["code"])
        return {"$schema": SCHEMAS[kind], **data}

    def _rename(self) -> dict[str, str]:
        """staged path -> the path the YAML gives it: beside the YAML for what write() copies,
        else (data files) the absolute path on this machine."""
        rename = {_key(str(source)): target for target, source in self.files.items()}
        for _, _, entity in self.documents:
            job = entity._to_job() if hasattr(entity, "_to_job") else entity
            for path in _local_inputs(job).values():
                rename.setdefault(_key(path), _key(path))
        return rename

    def file_names(self) -> list[str]:
        """The YAML file of each document in write()'s folder, in order."""
        return [
            f"{n:02d}-{AZ_ML_GROUPS[kind]}-{entity.name}.yml"
            for n, (_, kind, entity) in enumerate(self.documents, 1)
        ]

    def render(self) -> str:
        """Everything as one YAML stream: comments, then each document after its command."""
        rename = self._rename()
        out = [f"# {line}" for line in self.header]
        for (title, kind, entity), name in zip(self.documents, self.file_names(), strict=True):
            command = f"az ml {AZ_ML_GROUPS[kind]} create -f {name} {self.target_flags}"
            out.append(f"# --- {title}: {command.rstrip()}")
            data = self._data(entity, kind, rename)
            out.append(yaml.safe_dump(data, sort_keys=False).rstrip())
            out.append("---")
        out.append("# --- call plan (in order)")
        out += [f"# {n:>2}. {call}" for n, call in enumerate(self.calls, 1)]
        out += [f"# note: {note}" for note in self.notes]
        return "\n".join(out) + "\n"

    def write(self, folder: Path) -> list[Path]:
        """Each document as its own file in `folder`, beside the code and files it uploads,
        and the whole dry run as plan.yaml: `az ml <group> create -f <folder>/<file>` runs
        as it is. Returns the YAML files, in order."""
        folder.mkdir(parents=True, exist_ok=True)
        for target, source in self.files.items():
            destination = folder / target
            if destination.exists():
                shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, destination)
            else:
                shutil.copyfile(source, destination)
        rename = self._rename()
        written = []
        for (_, kind, entity), name in zip(self.documents, self.file_names(), strict=True):
            path = folder / name
            path.write_text(yaml.safe_dump(self._data(entity, kind, rename), sort_keys=False))
            written.append(path)
        (folder / PLAN_FILE).write_text(self.render())
        return written


def describe_target(settings: AzureBackendSettings) -> tuple[list[str], str]:
    """Header lines naming the subscription, resource group, workspace and region, with a
    warning for each one unset, and the `az ml` flags that target them."""
    values = {label: getattr(settings, key) or "" for label, key, _ in TARGET_SETTINGS}
    shown = [f"{label} {values[label] or '<not set>'}" for label, _, _ in TARGET_SETTINGS]
    lines = ["target: " + " / ".join(shown) + f" / region {settings.region}"]
    missing = [
        f"FINETUNE_PHI__BACKEND__{key.upper()}"
        for label, key, _ in TARGET_SETTINGS
        if not values[label]
    ]
    if missing:
        lines.append(
            "WARNING: the target is incomplete: set "
            + ", ".join(missing)
            + " (docs/azure.md). A run stops before it starts without them, and `az ml` "
            "without the flags below would use your `az configure --defaults`."
        )
    flags = " ".join(
        f"--{flag} {values[label] or placeholder}"
        for (label, _, placeholder), flag in zip(
            TARGET_SETTINGS, ("subscription", "resource-group", "workspace-name"), strict=True
        )
    )
    return lines, flags


def describe_quota(settings: AzureBackendSettings) -> list[str]:
    """Header lines: the vCPUs of each VM family the run holds at once (quota.py's rule),
    from the managed online endpoints SKU list (the cores and family of a VM size are the same
    for a cluster)."""
    needs: list[quota.QuotaNeed] = []
    unknown: list[str] = []
    training = quota.managed_sku(settings.training_sku)
    if training is None:
        unknown.append(
            f"training: {settings.training_sku} x {settings.training_max_nodes} nodes "
            "(its vCPUs are not known offline; preflight reads them from the region)"
        )
    else:
        needs.append(quota.training_need(settings, training.family, training.cores))
    inference = quota.managed_sku(settings.inference_sku)
    if inference is None:
        unknown.append(
            f"inference: {settings.inference_sku} is not on the managed online endpoints SKU "
            f"list ({quota.SKU_LIST_URL}): a deployment of it is refused"
        )
    else:
        needs.append(quota.inference_need(settings, inference))
    lines = [
        f"quota: vCPUs held at once in {settings.region}, per VM family "
        "(`finetune-phi azure preflight` compares them with what is free):"
    ]
    lines += [f"  {quota.describe(parts)}" for parts in quota.by_family(needs).values()]
    lines += [f"  {line}" for line in unknown]
    lines.append(
        f"  (a managed online deployment reserves ceil(1.2 x instances) x cores: "
        f"{quota.QUOTA_RULE_URL})"
    )
    return lines


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
    target, run.target_flags = describe_target(s)
    run.header += target + describe_quota(s)
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
    # The job's code is what a real run uploads (the trainer, and serving.evaluate for the
    # job's second step): the same packages, staged the same way.
    code = entities.stage_code(
        entities.TRAINING_JOB_PACKAGES, repo_root=repo_root, staging_root=staging_dir
    )
    serving_code = entities.stage_code(
        [entities.SERVING_PACKAGE], repo_root=repo_root, staging_root=staging_dir
    )
    run.files[TRAINING_CODE] = code
    run.files[SERVING_CODE] = serving_code / entities.SERVING_PACKAGE
    questions = None
    if spec.evaluation is not None and spec.evaluation.questions:
        questions = entities.stage_questions(spec.evaluation.questions, staging_root=staging_dir)
        run.files[QUESTIONS_FILE] = questions
    job = entities.build_job(
        spec,
        job_name=name,
        attempt=1,
        environment=training_env,
        compute=compute_spec.name,
        code=code,
        settings=s,
        questions_file=questions,
    )
    run.documents.append((f"job {name}", "job", job))

    model_name = profile.model.registered_name
    model = entities.build_model(
        model_name, None, entities.model_uri(name), {"job_name": name, **spec.tags}
    )
    run.documents.append((f"model {model_name} (the service numbers the version)", "model", model))

    endpoint = entities.build_endpoint(profile.endpoint.name, s)
    run.documents.append((f"endpoint {profile.endpoint.name}", "endpoint", endpoint))
    inference_env = env(endpoints.inference_environment_spec())
    latest = f"{model_name}@latest"
    deployment = entities.build_deployment(
        DeploymentSpec(profile.endpoint.name, "blue", ModelVersion(model_name, "latest", "")),
        environment=inference_env,
        code=serving_code,
        settings=s,
    )
    # The version the run has just registered: the newest (a real run pins its number).
    deployment.model = f"azureml:{latest}"
    deployment.tags = {**(deployment.tags or {}), "model": latest}
    run.documents.append(
        ("deployment blue (or green: the colour not live)", "deployment", deployment)
    )

    ml = "ml_client"
    run.calls += [
        f"{ml}.environments.get({training_env.name!r}, {training_env.version!r}); "
        "create_or_update if missing",
        f"{ml}.compute.get({compute_spec.name!r}); begin_create_or_update if missing",
        f"{ml}.jobs.get({name!r}) (re-attach if running/completed; failed -> {name}-r2)",
        f"{ml}.jobs.create_or_update(job {name!r}) (uploads trainer/ and serving/, and the "
        "data files)",
        f"{ml}.jobs.get({name!r}) every <= {s.job_poll_seconds:g} s + read "
        f"ExperimentRun/dcid.{name}/user_logs/std_log.txt until a terminal status",
        f"read {entities.output_folder(name)}/metrics.json from {entities.DATASTORE}",
        f"{ml}.models.list({model_name!r}); models.create_or_update({model_name}, the service "
        f"numbering it) from {entities.model_uri(name)} unless a version has job_name={name}",
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
        f"the code paths ({TRAINING_CODE}, {SERVING_CODE}) are relative to the YAML files: "
        "`finetune-phi azure dry-run --output-dir DIR` writes each document to DIR with the "
        "code it uploads; data inputs are files of this machine",
        f"the model's version is left to the service; the deployment takes {latest}, the "
        "version just registered (a real run pins the number it got)",
        f"endpoint names are unique per Azure region across all customers: "
        f"{profile.endpoint.name!r} may be someone else's (preflight checks)",
        "nothing was sent to Azure; `finetune-phi azure preflight` checks credential, "
        "workspace, SKUs, quota and the endpoint name",
    ]
    return run
