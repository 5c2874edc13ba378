"""Pure builders of the azure-ai-ml entities the backend submits (no network, no MLClient).

The backend and the dry run (`dry_run.py`) build every entity here, so what `--dry-run` prints
is exactly what a real run sends; tests round-trip each one through the SDK's own schemas.

Naming and paths (decisions the rest of the backend relies on):
- environments are versioned by a hash of their image and conda spec: an unchanged spec maps
  to an existing version, so nothing is rebuilt;
- a training job writes its model to a fixed datastore folder named after the *logical* job
  name (`finetune-phi/jobs/<name>/model/`), shared by every attempt, so a resubmitted job
  finds the previous attempt's checkpoints and resumes, as the local backend does;
- the registered model points at the job output (`azureml://jobs/<job>/outputs/model/paths/
  mlflow_model`), not at the run's artifacts (the tutorial's fragile path).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from azure.ai.ml import Input, Output, command
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import (
    AmlCompute,
    CodeConfiguration,
    Environment,
    IdentityConfiguration,
    ManagedIdentityConfiguration,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineRequestSettings,
    ProbeSettings,
)
from azure.ai.ml.entities._job.distribution import PyTorchDistribution

from finetune_phi.errors import UsageError
from finetune_phi.settings import REPO_ROOT, AzureBackendSettings
from finetune_phi.telemetry import TELEMETRY_OFF
from finetune_phi.workspace import (
    ComputeSpec,
    DeploymentSpec,
    EnvironmentRef,
    EvaluationJobSpec,
    EvaluationSpec,
    TrainingJobSpec,
)
from serving.evaluate import EVALUATION_FILE as EVALUATION_FILE
from serving.score import DTYPE_ENV
from trainer.config import RunOptions

DATASTORE = "workspaceblobstore"  # the workspace's default blob datastore
MODEL_OUTPUT = "model"  # the job output holding mlflow_model/, metrics.json, checkpoints/
EVALUATION_OUTPUT = "evaluation"  # an evaluation job's output, holding evaluation.json
JOB_KIND_TAG = "job_kind"  # "evaluation" on evaluation jobs (training jobs: absent)
MLFLOW_MODEL_DIR = "mlflow_model"  # trainer.fine_tune.MLFLOW_MODEL_DIR
METRICS_FILE = "metrics.json"  # trainer.fine_tune.METRICS_FILE
JOB_NAME_TAG = "job_name"  # the logical job name, on every attempt and registered version
ATTEMPT_TAG = "attempt"
OUTPUT_ROOT = "finetune-phi/jobs"
TRAINER_PACKAGE = "trainer"
SERVING_PACKAGE = "serving"
# A training job's code: the trainer, then serving.evaluate measuring what it trained.
TRAINING_JOB_PACKAGES = (TRAINER_PACKAGE, SERVING_PACKAGE)
SCORING_SCRIPT = "score.py"
MAX_ATTEMPTS = 20


# --------------------------------------------------------------------------- hashing, code


def content_hash(*parts: str | bytes, length: int = 16) -> str:
    """sha256 over the parts (length-prefixed so ("ab", "c") != ("a", "bc")), shortened."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:length]


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def stage_code(
    packages: Iterable[str], *, repo_root: Path = REPO_ROOT, staging_root: Path | None = None
) -> Path:
    """A folder holding only the named packages' Python files, at a path that depends on their
    content alone: the SDK uploads a code folder by content hash, and a stable folder name
    keeps the snapshot (and the dry run's YAML) identical between runs of unchanged code."""
    files = [
        (path.relative_to(repo_root).as_posix(), path.read_bytes())
        for package in packages
        for path in _python_files(repo_root / package)
    ]
    digest = content_hash(*(part for name, data in files for part in (name, data)))
    root = staging_root or Path(tempfile.gettempdir()) / "finetune-phi-azure-code"
    folder = root / digest / "src"
    if not folder.is_dir():
        partial = root / digest / "src.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for name, data in files:
            target = partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


# --------------------------------------------------------------------------- environment, compute


def environment_version(image: str, conda_text: str) -> str:
    return content_hash(image, conda_text)


def build_environment(
    name: str, image: str, conda_file: Path, description: str = ""
) -> Environment:
    """An environment whose version is the hash of its image and conda spec."""
    conda_text = conda_file.read_text()
    return Environment(
        name=name,
        version=environment_version(image, conda_text),
        image=image,
        conda_file=str(conda_file),
        description=description or f"{image} + {conda_file.name}",
    )


def _identity(settings: AzureBackendSettings) -> IdentityConfiguration | None:
    if not settings.user_assigned_identity_id:
        return None
    return IdentityConfiguration(
        type="user_assigned",
        user_assigned_identities=[
            ManagedIdentityConfiguration(resource_id=settings.user_assigned_identity_id)
        ],
    )


def build_compute(spec: ComputeSpec, settings: AzureBackendSettings) -> AmlCompute:
    """A cluster that scales to `min_instances` (0: nothing billed while idle)."""
    return AmlCompute(
        name=spec.name,
        size=spec.size,
        min_instances=spec.min_instances,
        max_instances=spec.max_instances,
        idle_time_before_scale_down=spec.idle_seconds_before_scale_down,
        tier="dedicated",
        identity=_identity(settings),
    )


def training_compute_spec(settings: AzureBackendSettings) -> ComputeSpec:
    return ComputeSpec(
        name=settings.training_compute,
        size=settings.training_sku,
        min_instances=settings.training_min_nodes,
        max_instances=settings.training_max_nodes,
        idle_seconds_before_scale_down=settings.idle_seconds_before_scale_down,
    )


# --------------------------------------------------------------------------- training job


def attempt_name(name: str, attempt: int) -> str:
    """Azure job names are unique forever: attempt 1 is the logical name, later ones
    `<name>-r<n>` (a failed or canceled job cannot be started again under its own name)."""
    return name if attempt == 1 else f"{name}-r{attempt}"


def output_folder(name: str, output: str = MODEL_OUTPUT) -> str:
    """The datastore folder (relative) every attempt of logical job `name` writes to."""
    return f"{OUTPUT_ROOT}/{name}/{output}"


def output_uri(name: str, datastore: str = DATASTORE, output: str = MODEL_OUTPUT) -> str:
    return f"azureml://datastores/{datastore}/paths/{output_folder(name, output)}/"


def model_uri(job_name: str) -> str:
    """Where the trained MLflow model of (attempt) `job_name` is, as Azure names job outputs."""
    return f"azureml://jobs/{job_name}/outputs/{MODEL_OUTPUT}/paths/{MLFLOW_MODEL_DIR}"


def _flag_value(value: Any) -> str:
    # HfArgumentParser reads booleans as True/False strings; repr keeps floats exact.
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    return str(value)


BASE_MODEL_INPUT = "base_model"


def base_model_input(base_model: str) -> Input | None:
    """A base model in a folder of this machine travels with the job as an uploaded input
    (the node cannot read this disk; the SDK uploads it once, by content); a hub id is passed
    as it is (None). A path that exists nowhere here is an error now, not on the node."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        return Input(type=AssetTypes.URI_FOLDER, path=str(path.resolve()))
    if base_model.startswith(("/", "./", "../", "~")) or path.exists():
        raise UsageError(
            f"model.base {base_model!r}: not a folder on this machine, nor a hub id. On Azure "
            "the base model is a hub id (microsoft/Phi-3.5-mini-instruct) or a local folder "
            "holding the model, which the job uploads"
        )
    return None


def trainer_arguments(spec: TrainingJobSpec, *, base_model_uploaded: bool = False) -> list[str]:
    """The trainer's command line: inputs and output by Azure placeholders, every run option
    and hyperparameter as a flag (the job is self-describing in the studio)."""
    base_model = f"${{{{inputs.{BASE_MODEL_INPUT}}}}}" if base_model_uploaded else spec.base_model
    args = [
        "python",
        "-m",
        "trainer.fine_tune",
        "--train-file",
        "${{inputs.train_file}}",
        "--eval-file",
        "${{inputs.eval_file}}",
        "--model_output_dir",
        "${{outputs.model}}",
        "--base_model",
        base_model,
        "--mlflow_experiment",
        spec.experiment,
        "--run_name",
        spec.name,
    ]
    for key, value in {**asdict(spec.run_options), **asdict(spec.hyperparameters)}.items():
        args += [f"--{key}", _flag_value(value)]
    return args


def evaluation_arguments(spec: EvaluationSpec, model_dir: str, output_dir: str) -> list[str]:
    """`serving.evaluate`'s command line (rank 0 measures; the questions are an input)."""
    args = [
        "python",
        "-m",
        "serving.evaluate",
        "--model_dir",
        model_dir,
        "--test_file",
        "${{inputs.eval_file}}",
        "--output_dir",
        output_dir,
        "--max_conversations",
        str(spec.max_conversations),
        "--key",
        spec.key,
    ]
    if spec.questions:
        args += ["--questions_file", "${{inputs.questions_file}}"]
    return args


def stage_questions(questions: Iterable[str], *, staging_root: Path | None = None) -> Path:
    """The gate's questions as a JSON file the SDK uploads (a job input), at a path named by
    its content (an unchanged list is the same upload)."""
    text = json.dumps(list(questions), indent=1) + "\n"
    root = staging_root or Path(tempfile.gettempdir()) / "finetune-phi-azure-code"
    path = root / "questions" / f"{content_hash(text)}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".partial").write_text(text)
        path.with_suffix(".partial").replace(path)
    return path


def _command_line(*steps: list[str]) -> str:
    """Steps run one after another on the node; the first failure fails the job."""
    return " && ".join(" ".join(_quote(arg) for arg in step) for step in steps)


def _questions_input(spec: EvaluationSpec, questions_file: Path | None) -> dict[str, Input]:
    if not spec.questions:
        return {}
    if questions_file is None:
        raise ValueError("the evaluation has questions: stage them first (stage_questions)")
    return {"questions_file": Input(type=AssetTypes.URI_FILE, path=str(questions_file))}


def job_run_options(run_options: RunOptions, settings: AzureBackendSettings) -> RunOptions:
    """The run options an Azure job gets: the profile's, with the trainer's `require_gpu` on
    unless `backend.allow_cpu_training` lets a node without a usable GPU train on its CPU (in
    fp32, for hours). A profile's own `training_run.require_gpu: true` is kept either way."""
    if settings.allow_cpu_training or run_options.require_gpu:
        return run_options
    return replace(run_options, require_gpu=True)


def _quote(arg: str) -> str:
    return arg if arg.startswith("${{") else shlex.quote(arg)


def build_job(
    spec: TrainingJobSpec,
    *,
    job_name: str,
    attempt: int,
    environment: EnvironmentRef,
    compute: str,
    code: Path,
    settings: AzureBackendSettings,
    questions_file: Path | None = None,
) -> Any:
    """The command job of one attempt of `spec`: a `command()` builder, the form
    `jobs.create_or_update` takes (it refuses a bare CommandJob) and `load_job` returns.
    The trainer gets `--require_gpu True` unless the profile allows CPU training
    (`job_run_options`). With `spec.evaluation`, `serving.evaluate` measures the trained model
    after the trainer, on the same node (`code` holds both packages)."""
    job_spec = replace(spec, run_options=job_run_options(spec.run_options, settings))
    uploaded = base_model_input(spec.base_model)
    steps = [trainer_arguments(job_spec, base_model_uploaded=uploaded is not None)]
    inputs = {
        "train_file": Input(type=AssetTypes.URI_FILE, path=spec.train_file),
        "eval_file": Input(type=AssetTypes.URI_FILE, path=spec.eval_file),
    }
    if uploaded is not None:
        inputs[BASE_MODEL_INPUT] = uploaded
    if spec.evaluation is not None:
        model_dir = f"${{{{outputs.{MODEL_OUTPUT}}}}}/{MLFLOW_MODEL_DIR}"
        steps.append(
            evaluation_arguments(spec.evaluation, model_dir, f"${{{{outputs.{MODEL_OUTPUT}}}}}")
        )
        # the held-out file is the trainer's eval file (`eval_file`): one input for both steps
        inputs.update(_questions_input(spec.evaluation, questions_file))
    distribution = (
        PyTorchDistribution(process_count_per_instance=settings.processes_per_node)
        if settings.training_instance_count > 1 or settings.processes_per_node > 1
        else None
    )
    return command(
        name=job_name,
        display_name=spec.display_name or spec.name,
        experiment_name=spec.experiment,
        description=f"fine-tune {spec.base_model} (finetune-phi job {spec.name})",
        command=_command_line(*steps),
        code=str(code),
        inputs=inputs,
        outputs={
            MODEL_OUTPUT: Output(
                type=AssetTypes.URI_FOLDER, path=output_uri(spec.name), mode="rw_mount"
            )
        },
        environment=f"azureml:{environment.name}:{environment.version}",
        compute=compute,
        instance_count=settings.training_instance_count,
        distribution=distribution,
        environment_variables={
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **TELEMETRY_OFF,  # the trainer sets them itself as well, on import
        },
        tags={**dict(spec.tags), JOB_NAME_TAG: spec.name, ATTEMPT_TAG: str(attempt)},
    )


def build_evaluation_job(
    spec: EvaluationJobSpec,
    *,
    job_name: str,
    attempt: int,
    environment: EnvironmentRef,
    compute: str,
    code: Path,
    questions_file: Path | None = None,
) -> Any:
    """The command job measuring a registered model (`serving.evaluate`): the model version
    mounted read-only as an input, the evaluation written to a fixed datastore folder named
    after the logical job (`output_folder(name, "evaluation")`)."""
    output = f"${{{{outputs.{EVALUATION_OUTPUT}}}}}"
    return command(
        name=job_name,
        display_name=f"evaluate {spec.model.name}:{spec.model.version}",
        experiment_name=spec.experiment,
        description=f"measure {spec.model.name}:{spec.model.version} for the quality gate "
        f"(finetune-phi job {spec.name})",
        command=_command_line(evaluation_arguments(spec.evaluation, "${{inputs.model}}", output)),
        code=str(code),
        inputs={
            "model": Input(type=AssetTypes.MLFLOW_MODEL, path=spec.model_location, mode="ro_mount"),
            "eval_file": Input(type=AssetTypes.URI_FILE, path=spec.evaluation.test_file),
            **_questions_input(spec.evaluation, questions_file),
        },
        outputs={
            EVALUATION_OUTPUT: Output(
                type=AssetTypes.URI_FOLDER,
                path=output_uri(spec.name, output=EVALUATION_OUTPUT),
                mode="rw_mount",
            )
        },
        environment=f"azureml:{environment.name}:{environment.version}",
        compute=compute,
        environment_variables={
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **TELEMETRY_OFF,
        },
        tags={
            **dict(spec.tags),
            JOB_NAME_TAG: spec.name,
            ATTEMPT_TAG: str(attempt),
            JOB_KIND_TAG: "evaluation",
        },
    )


# --------------------------------------------------------------------------- model


def build_model(
    name: str, version: str | None, path: str, tags: Mapping[str, str], description: str = ""
) -> Model:
    """An MLflow model version; `version` None: the service assigns the next number."""
    return Model(
        name=name,
        version=version,
        path=path,
        type=AssetTypes.MLFLOW_MODEL,
        tags=dict(tags),
        description=description or "fine-tuned by finetune-phi",
    )


# --------------------------------------------------------------------------- endpoint


def build_endpoint(name: str, settings: AzureBackendSettings) -> ManagedOnlineEndpoint:
    """Key-authenticated managed online endpoint (keys fetched at run time, never stored)."""
    return ManagedOnlineEndpoint(
        name=name,
        auth_mode="key",
        identity=_identity(settings),
        description="finetune-phi: fine-tuned Phi-3 chat (blue-green deployments)",
        tags={"managed_by": "finetune-phi"},
    )


# Without a serving plan or profile values: what the project used before the plan existed.
LEGACY_REQUEST_TIMEOUT_MS = 90_000
LEGACY_MAX_CONCURRENT = 2
LEGACY_PROBE_INITIAL_DELAY = 600


def build_deployment(
    spec: DeploymentSpec,
    *,
    environment: EnvironmentRef,
    code: Path,
    settings: AzureBackendSettings,
) -> ManagedOnlineDeployment:
    """A deployment running serving/score.py on the inference environment.

    `DeploymentSpec.instance_type` "local" (its default) means "the profile's choice". The
    spec's serving plan (finetune_phi/serving_plan.py, from the model's size and the SKU) sets
    the dtype, the request timeout, the concurrency and how long probes wait for the model to
    load; the profile's numbers win where it sets them. Without a plan (a spec built by
    hand): the profile's numbers, else the LEGACY_* values.
    """
    use_profile = spec.instance_type == "local"
    serving = spec.serving
    dtype = {DTYPE_ENV: serving.dtype} if serving else {}
    request_ms = serving.request_timeout_ms if serving else settings.request_timeout_ms
    concurrent = (
        serving.max_concurrent_requests_per_instance
        if serving
        else settings.max_concurrent_requests_per_instance
    )
    delay = serving.probe_initial_delay_seconds if serving else settings.probe_initial_delay_seconds
    return ManagedOnlineDeployment(
        name=spec.name,
        endpoint_name=spec.endpoint,
        model=f"azureml:{spec.model.name}:{spec.model.version}",
        environment=f"azureml:{environment.name}:{environment.version}",
        code_configuration=CodeConfiguration(
            code=str(code / SERVING_PACKAGE), scoring_script=SCORING_SCRIPT
        ),
        instance_type=settings.inference_sku if use_profile else spec.instance_type,
        instance_count=settings.inference_instance_count if use_profile else spec.instance_count,
        # The serving code snapshot is serving/ alone: the variables are how it gets them.
        environment_variables={**TELEMETRY_OFF, **dtype, **spec.environment_variables},
        request_settings=OnlineRequestSettings(
            request_timeout_ms=request_ms or LEGACY_REQUEST_TIMEOUT_MS,
            max_concurrent_requests_per_instance=concurrent or LEGACY_MAX_CONCURRENT,
            max_queue_wait_ms=60000,
        ),
        liveness_probe=ProbeSettings(
            initial_delay=delay or LEGACY_PROBE_INITIAL_DELAY,
            period=30,
            timeout=10,
            failure_threshold=30,
        ),
        readiness_probe=ProbeSettings(
            initial_delay=delay or LEGACY_PROBE_INITIAL_DELAY,
            period=10,
            timeout=10,
            failure_threshold=30,
        ),
        tags={"model": f"{spec.model.name}:{spec.model.version}"},
    )
