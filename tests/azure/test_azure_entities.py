"""Every entity the backend builds round-trips through the SDK's own schemas; the job's
command line parses with the trainer's own parser; the dry run loads back the same way."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import (
    load_compute,
    load_environment,
    load_job,
    load_model,
    load_online_deployment,
    load_online_endpoint,
)
from azure_helpers import azure_settings, job_spec

from backends.azure import entities
from backends.azure.dry_run import DryRun, build_dry_run
from finetune_phi.run_plan import DatasetFacts, Observed, plan_run, training_job_spec
from finetune_phi.settings import REPO_ROOT, load_profile
from finetune_phi.workspace import DeploymentSpec, EnvironmentRef, ModelVersion
from trainer.config import RunOptions

LOADERS = {
    "environment": load_environment,
    "compute": load_compute,
    "job": load_job,
    "model": load_model,
    "endpoint": load_online_endpoint,
    "deployment": load_online_deployment,
}


def _plain(data):
    return json.loads(json.dumps(data))


def assert_survives(original, loaded, where="entity"):
    """Every field the backend set comes back equal after dump + load; the loader may add
    what it derives (a job's `component`, empty `properties`), nothing else may differ."""
    if isinstance(original, dict):
        assert isinstance(loaded, dict), where
        for key, value in original.items():
            if value in ({}, [], None) and key not in loaded:
                continue  # an empty default the loader leaves out
            assert key in loaded, f"{where}.{key} lost"
            assert_survives(value, loaded[key], f"{where}.{key}")
    else:
        assert original == loaded, f"{where}: {original!r} != {loaded!r}"


def _comparable(entity, loaded, kind):
    """The two dicts to compare. Jobs: the loaded CommandJob keeps its name as an attribute
    (checked) and the SDK's own dump writes a local input path as `azureml:<path>` (an SDK
    quirk: `az ml` reads such a path as an asset name), so inputs compare by type and file."""
    source = entity._to_job() if hasattr(entity, "_to_job") else entity  # command() builder
    original, back = _plain(source._to_dict()), _plain(loaded._to_dict())
    if kind == "job":
        # ... and carries command/code in its `component` (the node form of the same job).
        original = {**original.pop("component", {}), **original}
        back = {**back.pop("component", {}), **back}
        # A loaded job keeps its metadata as attributes rather than in _to_dict()'s top level.
        for key in ("name", "description", "display_name", "experiment_name", "tags", "properties"):
            assert getattr(loaded, key) == getattr(entity, key), key
            original.pop(key, None)
        for key, value in original.pop("inputs").items():
            again = back["inputs"][key]
            assert again["type"] == value["type"]
            assert again["path"].removeprefix("azureml:") == value["path"].removeprefix("azureml:")
    return original, back


def _round_trip(entity, kind, tmp_path):
    # Written as the dry run writes it: ManagedOnlineEndpoint.dump(dest) ignores dest (SDK bug).
    path = tmp_path / f"{kind}.yaml"
    path.write_text(DryRun().yaml_of(entity, kind))
    loaded = LOADERS[kind](source=path)
    assert_survives(*_comparable(entity, loaded, kind), kind)
    assert getattr(loaded, "type", None) == getattr(entity, "type", None)
    return loaded


def _built(tmp_path):
    settings = azure_settings()
    env = entities.build_environment(
        "finetune-phi-training", settings.training_image, REPO_ROOT / settings.training_conda_file
    )
    compute = entities.build_compute(entities.training_compute_spec(settings), settings)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("{}\n")
    test.write_text("{}\n")
    spec = job_spec(str(train), str(test))
    code = entities.stage_code(["trainer"], staging_root=tmp_path / "stage")
    job = entities.build_job(
        spec,
        job_name=spec.name,
        attempt=1,
        environment=EnvironmentRef(env.name, env.version),
        compute="phi3-a100",
        code=code,
        settings=settings,
    )
    model = entities.build_model(
        "phi3-chat", "3", entities.model_uri(spec.name), {"job_name": spec.name}
    )
    endpoint = entities.build_endpoint("phi3-chat", settings)
    deployment = entities.build_deployment(
        DeploymentSpec("phi3-chat", "green", ModelVersion("phi3-chat", "3", "x")),
        environment=EnvironmentRef("finetune-phi-inference", "abc"),
        code=entities.stage_code(["serving"], staging_root=tmp_path / "stage"),
        settings=settings,
    )
    return {
        "environment": env,
        "compute": compute,
        "job": job,
        "model": model,
        "endpoint": endpoint,
        "deployment": deployment,
    }, spec


def test_every_entity_round_trips_through_the_sdk_schema(tmp_path):
    built, _ = _built(tmp_path)
    loaded = {kind: _round_trip(entity, kind, tmp_path) for kind, entity in built.items()}
    # and what Azure gets is what we meant
    compute = loaded["compute"]
    assert (compute.size, compute.min_instances, compute.max_instances) == (
        "Standard_NC24ads_A100_v4",
        0,
        1,
    )
    deployment = loaded["deployment"]
    assert deployment.code_configuration.scoring_script == "score.py"
    assert deployment.request_settings.request_timeout_ms == 90000
    endpoint = loaded["endpoint"]
    assert endpoint.auth_mode == "key"


def test_user_assigned_identity_reaches_endpoint_and_compute():
    """Not round-tripped: the SDK's loader cannot dump back a loaded user-assigned identity."""
    identity = (
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/"
        "userAssignedIdentities/id"
    )
    settings = azure_settings(user_assigned_identity_id=identity)
    rest = entities.build_endpoint("phi3-chat", settings)._to_rest_online_endpoint("eastus2")
    assert list(rest.identity.user_assigned_identities) == [identity]
    compute = entities.build_compute(entities.training_compute_spec(settings), settings)
    assert compute._to_rest_object().identity.type.lower() == "userassigned"


def test_rest_objects_build(tmp_path):
    """_to_rest_object is what the SDK sends; it must not raise for any entity."""
    built, _ = _built(tmp_path)
    built["environment"]._to_rest_object()
    built["compute"]._to_rest_object()
    built["model"]._to_rest_object()
    built["endpoint"]._to_rest_online_endpoint("eastus2")


def test_environment_version_is_a_content_hash(tmp_path):
    conda = tmp_path / "c.yml"
    conda.write_text("dependencies: [python=3.11]\n")
    a = entities.build_environment("e", "img:1", conda)
    assert entities.build_environment("e", "img:1", conda).version == a.version
    assert entities.build_environment("e", "img:2", conda).version != a.version
    conda.write_text("dependencies: [python=3.12]\n")
    assert entities.build_environment("e", "img:1", conda).version != a.version


def test_staged_code_holds_only_the_package_and_is_stable(tmp_path):
    first = entities.stage_code(["trainer"], staging_root=tmp_path)
    assert first == entities.stage_code(["trainer"], staging_root=tmp_path)
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert "trainer/fine_tune.py" in files and all(f.startswith("trainer/") for f in files)
    assert not any("__pycache__" in f for f in files)


def test_job_command_parses_with_the_trainers_own_parser(tmp_path):
    from trainer.fine_tune import parse_arguments

    built, spec = _built(tmp_path)
    args = entities.trainer_arguments(spec)[3:]
    args = [
        {
            "${{inputs.train_file}}": "t.jsonl",
            "${{inputs.eval_file}}": "e.jsonl",
            "${{outputs.model}}": "out",
        }.get(a, a)
        for a in args
    ]
    job, run, hp = parse_arguments(args)
    assert hp == spec.hyperparameters and run == spec.run_options
    assert (job.train_file, job.eval_file, job.model_output_dir) == ("t.jsonl", "e.jsonl", "out")
    assert job.base_model == spec.base_model and job.run_name == spec.name
    assert built["job"].command.startswith("python -m trainer.fine_tune")


def test_distributed_job_when_more_than_one_node(tmp_path):
    settings = azure_settings(training_instance_count=2, training_max_nodes=2, processes_per_node=4)
    _, spec = _built(tmp_path)
    job = entities.build_job(
        spec,
        job_name=spec.name,
        attempt=1,
        environment=EnvironmentRef("e", "1"),
        compute="c",
        code=tmp_path,
        settings=settings,
    )
    assert job.resources.instance_count == 2
    assert job.distribution.process_count_per_instance == 4


def test_dry_run_documents_load_back_and_plan_is_ordered(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_PHI__BACKEND__SUBSCRIPTION_ID", "sub")
    profile = load_profile("azure", environ={})
    plan = plan_run(profile, profile.model.base, DatasetFacts(None), Observed(registry_read=False))
    run = build_dry_run(plan, staging_dir=tmp_path / "stage")
    text = run.render()
    kinds = [kind for _, kind, _ in run.documents]
    assert kinds == [
        "environment",
        "compute",
        "job",
        "model",
        "endpoint",
        "environment",
        "deployment",
    ]
    for index, (_, kind, entity) in enumerate(run.documents):
        path = tmp_path / f"{index}-{kind}.yaml"
        path.write_text(run.yaml_of(entity, kind))
        loaded = LOADERS[kind](source=path)
        assert_survives(*_comparable(entity, loaded, kind), kind)
    assert "call plan" in text and "jobs.create_or_update" in text
    calls = "\n".join(run.calls)
    assert (
        calls.index("environments.get")
        < calls.index("compute.get")
        < calls.index("jobs.create_or_update")
        < calls.index("models.create_or_update")
        < calls.index("online_endpoints.get")
    )
    assert "delete" not in calls.split("online_endpoints.get")[1].split(";")[0]
    yaml.safe_load_all(text.replace("# ---", "#"))  # the whole output is YAML


def test_jobs_and_deployments_carry_telemetry_off(tmp_path):
    """What runs in Azure has none of finetune_phi: the training job and the deployment get
    the telemetry variables in their environment (a deployment's own variables win)."""
    from finetune_phi.telemetry import TELEMETRY_OFF

    built, _ = _built(tmp_path)
    assert TELEMETRY_OFF.items() <= built["job"].environment_variables.items()
    assert built["deployment"].environment_variables == TELEMETRY_OFF
    own = entities.build_deployment(
        DeploymentSpec(
            "phi3-chat",
            "green",
            ModelVersion("phi3-chat", "3", "x"),
            environment_variables={"DO_NOT_TRACK": "false"},
        ),
        environment=EnvironmentRef("finetune-phi-inference", "abc"),
        code=entities.stage_code(["serving"], staging_root=tmp_path / "stage2"),
        settings=azure_settings(),
    )
    assert own.environment_variables == {**TELEMETRY_OFF, "DO_NOT_TRACK": "false"}


def _profile_job(tmp_path, **overrides):
    """The training job an azure profile (with `--set`-style overrides) submits, as built by
    the same builders as a real run (through the dry run)."""
    profile = load_profile("azure", environ={}, overrides=overrides)
    plan = plan_run(profile, profile.model.base, DatasetFacts(None), Observed(registry_read=False))
    run = build_dry_run(plan, staging_dir=tmp_path / "stage")
    (job,) = [entity for _, kind, entity in run.documents if kind == "job"]
    return job


def _trainer_run_options(command: str) -> RunOptions:
    """What the trainer reads from a job's command line, with its own parser."""
    from trainer.fine_tune import parse_arguments

    placeholders = {
        "${{inputs.train_file}}": "t.jsonl",
        "${{inputs.eval_file}}": "e.jsonl",
        "${{outputs.model}}": "out",
    }
    words = shlex.split(command.split(" && ")[0])
    assert words[:3] == ["python", "-m", "trainer.fine_tune"]
    _, run, _ = parse_arguments([placeholders.get(word, word) for word in words[3:]])
    return run


def test_a_training_job_measures_what_it_trained_as_its_second_step(tmp_path):
    """The gate's evaluation runs on the training node after the trainer, on the model the
    trainer wrote, with serving.evaluate's own parser; the questions are an uploaded input."""
    from serving.evaluate import parse_arguments

    profile = load_profile("local", environ={})  # synthetic data: fact questions
    spec = training_job_spec(profile, "tiny", "ab" * 32, "t.jsonl", "e.jsonl")
    assert spec.evaluation is not None and spec.evaluation.questions
    job = entities.build_job(
        spec,
        job_name=spec.name,
        attempt=1,
        environment=EnvironmentRef("env", "1"),
        compute="gpu",
        code=entities.stage_code(entities.TRAINING_JOB_PACKAGES, staging_root=tmp_path),
        settings=azure_settings(),
        questions_file=entities.stage_questions(spec.evaluation.questions, staging_root=tmp_path),
    )
    train, evaluate = job.command.split(" && ")
    assert train.startswith("python -m trainer.fine_tune ")
    words = shlex.split(evaluate)
    assert words[:3] == ["python", "-m", "serving.evaluate"]
    args = parse_arguments(words[3:])
    assert args.model_dir == "${{outputs.model}}/mlflow_model"
    assert args.output_dir == "${{outputs.model}}" and args.key == spec.evaluation.key
    assert args.test_file == "${{inputs.eval_file}}"
    assert args.questions_file == "${{inputs.questions_file}}"
    assert args.max_conversations == profile.gate.max_eval_conversations
    questions = Path(job.inputs["questions_file"].path)
    assert json.loads(questions.read_text()) == list(spec.evaluation.questions)
    code = job.code
    assert (Path(code) / "serving/evaluate.py").is_file()
    assert (Path(code) / "trainer/fine_tune.py").is_file()


def test_azure_training_jobs_require_a_gpu_unless_the_profile_allows_cpu(tmp_path):
    """The precision guard (#13 E): by default the job's trainer gets --require_gpu, so a node
    without a usable GPU fails in seconds instead of training in fp32 on its CPU for hours;
    `backend.allow_cpu_training: true` leaves the flag off and changes nothing else."""
    guarded = _profile_job(tmp_path)
    assert "--require_gpu True" in guarded.command
    assert _trainer_run_options(guarded.command).require_gpu is True

    allowed = _profile_job(tmp_path, backend={"allow_cpu_training": True})
    assert "--require_gpu False" in allowed.command
    assert _trainer_run_options(allowed.command).require_gpu is False
    assert allowed.command == guarded.command.replace("--require_gpu True", "--require_gpu False")
    assert allowed.name == guarded.name  # a run option: not part of the job's identity


def test_job_run_options_keep_a_profiles_own_require_gpu(tmp_path):
    """`training_run.require_gpu: true` is the trainer's option and wins over the backend's
    permission: allowing CPU never turns a requested guard off."""
    allow = azure_settings(allow_cpu_training=True)
    deny = azure_settings()
    asked = RunOptions(save_steps=50, require_gpu=True)
    assert entities.job_run_options(asked, allow) == asked
    assert entities.job_run_options(asked, deny) == asked
    assert entities.job_run_options(RunOptions(save_steps=50), allow) == RunOptions(save_steps=50)
    assert entities.job_run_options(RunOptions(save_steps=50), deny) == asked

    both = _profile_job(
        tmp_path, backend={"allow_cpu_training": True}, training_run={"require_gpu": True}
    )
    assert _trainer_run_options(both.command).require_gpu is True

    # build_job itself (not only the dry run) applies it, and leaves the spec as it was
    _, spec = _built(tmp_path)
    job = entities.build_job(
        spec,
        job_name=spec.name,
        attempt=1,
        environment=EnvironmentRef("e", "1"),
        compute="c",
        code=tmp_path,
        settings=deny,
    )
    assert _trainer_run_options(job.command) == replace(spec.run_options, require_gpu=True)
    assert spec.run_options.require_gpu is False


def test_a_local_base_model_travels_with_the_job_a_hub_id_does_not(tmp_path):
    """The node cannot read the worker's disk: a base model in a local folder becomes an
    uploaded uri_folder input; a hub id stays a flag; a path that exists nowhere is an error
    before anything is submitted."""
    from finetune_phi.errors import UsageError

    _, spec = _built(tmp_path)

    def command_and_inputs(base_model: str) -> tuple[str, dict]:
        job = entities.build_job(
            replace(spec, base_model=base_model),
            job_name=spec.name,
            attempt=1,
            environment=EnvironmentRef("env", "1"),
            compute="gpu",
            code=tmp_path,
            settings=azure_settings(),
        )
        return job.command, job.inputs

    folder = tmp_path / "my-phi"
    folder.mkdir()
    command, inputs = command_and_inputs(str(folder))
    assert "--base_model ${{inputs.base_model}}" in command
    assert inputs["base_model"].type == "uri_folder" and inputs["base_model"].path == str(folder)
    command, inputs = command_and_inputs("microsoft/Phi-3.5-mini-instruct")
    assert "--base_model microsoft/Phi-3.5-mini-instruct" in command
    assert "base_model" not in inputs
    with pytest.raises(UsageError, match="not a folder on this machine"):
        command_and_inputs(str(tmp_path / "missing"))
