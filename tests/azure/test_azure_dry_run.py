"""The Azure dry run says where it would run and what quota it holds, and what it writes is
what `az ml <group> create -f` takes: each file loads with the SDK's loaders (the code `az
ml` runs), names no temporary folder, no `<next>` version and no local file as an asset, and
creating them all through the real MLClient works on the fake service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fake_azure import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE
from test_azure_entities import LOADERS as LOADERS_BY_KIND

from backends.azure.dry_run import AZ_ML_GROUPS, build_dry_run
from finetune_phi.run_plan import DatasetFacts, Observed, plan_run
from finetune_phi.settings import load_profile

# The SDK's loader of each `az ml` group's YAML.
LOADERS = {AZ_ML_GROUPS[kind]: load for kind, load in LOADERS_BY_KIND.items()}
TARGET = {
    "FINETUNE_PHI__BACKEND__SUBSCRIPTION_ID": SUBSCRIPTION,
    "FINETUNE_PHI__BACKEND__RESOURCE_GROUP": RESOURCE_GROUP,
    "FINETUNE_PHI__BACKEND__WORKSPACE": WORKSPACE,
}


def _dry_run(tmp_path, environ=TARGET, dataset=None, **backend):
    overrides = {"backend": backend} if backend else None
    profile = load_profile("azure", environ=dict(environ), overrides=overrides)
    plan = plan_run(
        profile, profile.model.base, dataset or DatasetFacts(None), Observed(registry_read=False)
    )
    return build_dry_run(plan, staging_dir=tmp_path / "stage")


def _group(path: Path) -> str:
    """The `az ml` group of a written file (`03-job-<name>.yml` -> job)."""
    return next(g for g in sorted(LOADERS, key=len, reverse=True) if path.name[3:].startswith(g))


def _data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    record = json.dumps({"messages": turns}) + "\n"
    for name in ("train.jsonl", "test.jsonl"):
        (folder / name).write_text(record)
    return DatasetFacts("d" * 64, str(folder / "train.jsonl"), str(folder / "test.jsonl"))


def test_the_dry_run_names_its_target_or_warns_that_it_is_unset(tmp_path):
    text = _dry_run(tmp_path).render()
    assert (
        f"# target: subscription {SUBSCRIPTION} / resource group {RESOURCE_GROUP} / "
        f"workspace {WORKSPACE} / region eastus2" in text
    )
    flags = (
        f"--subscription {SUBSCRIPTION} --resource-group {RESOURCE_GROUP} "
        f"--workspace-name {WORKSPACE}"
    )
    assert "az ml job create -f 03-job-" in text and text.count(flags) == 7
    assert "WARNING" not in text

    unset = _dry_run(tmp_path, environ={}).render()
    assert "subscription <not set> / resource group <not set> / workspace <not set>" in unset
    warning = next(line for line in unset.splitlines() if "WARNING" in line)
    for variable in TARGET:
        assert variable in warning
    assert "--resource-group <resource group>" in unset


def test_the_dry_run_gives_the_quota_of_both_colours_with_the_20_percent(tmp_path):
    text = _dry_run(tmp_path).render()
    # Two E4s_v3 deployments of one instance: 2 x ceil(1.2 x 1) x 4.
    assert "16 vCPUs of standardESv3Family" in text
    assert "24 vCPUs of standardNCADSA100v4Family" in text
    more = _dry_run(tmp_path, inference_instance_count=3).render()
    assert "32 vCPUs of standardESv3Family" in more  # 2 x ceil(3.6) x 4
    # An A100 size is exempt from the 20% (the SKU list's "Skip 20% Reservation"); sharing
    # the cluster's family, the two add up: 24 + 2 x 1 x 24.
    shared = _dry_run(tmp_path, inference_sku="Standard_NC24ads_A100_v4").render()
    assert "72 vCPUs of standardNCADSA100v4Family" in shared
    refused = _dry_run(tmp_path, inference_sku="Standard_D4_v2").render()
    assert "Standard_D4_v2 is not on the managed online endpoints SKU list" in refused


def test_written_files_are_what_az_ml_create_takes(tmp_path):
    run = _dry_run(tmp_path, dataset=_data(tmp_path))
    folder = tmp_path / "plan"
    files = run.write(folder)
    assert [_group(f) for f in files] == [
        "environment",
        "compute",
        "job",
        "model",
        "online-endpoint",
        "environment",
        "online-deployment",
    ]
    staged = str((tmp_path / "stage").resolve())  # where the code is staged for upload
    for path in files:
        text = path.read_text()
        loaded = LOADERS[_group(path)](source=path)  # what `az ml <group> create -f` parses
        assert loaded.name, path
        assert "<next>" not in text and staged not in text, path
    job_file = next(f for f in files if "-job-" in f.name)
    job = yaml.safe_load(job_file.read_text())
    assert job["code"] == "code/training"
    assert (folder / "code/training/trainer/fine_tune.py").is_file()
    assert (folder / "code/training/serving/evaluate.py").is_file()  # the job's second step
    for name in ("train_file", "eval_file"):
        path = job["inputs"][name]["path"]
        assert not path.startswith("azureml:") and Path(path).is_file(), path
    deployment = yaml.safe_load(next(f for f in files if "online-deployment" in f.name).read_text())
    assert deployment["model"] == "azureml:phi3-chat@latest"
    assert deployment["code_configuration"]["code"] == "code/serving"
    assert (folder / "code/serving/score.py").is_file()
    model = yaml.safe_load(next(f for f in files if "-model-" in f.name).read_text())
    assert "version" not in model  # the service numbers it
    plan = (folder / "plan.yaml").read_text()
    assert all(f"-f {f.name}" in plan for f in files)
    assert [d for d in yaml.safe_load_all(plan) if d]  # one YAML stream


def test_the_written_files_create_everything_through_the_sdk(tmp_path, azure_workspace, azure_fake):
    """`az ml` is the SDK: load each file as it does, create it as it does, on the fake."""
    run = _dry_run(tmp_path, dataset=_data(tmp_path))
    ml = azure_workspace.connection.ml_client
    created = {}
    for path in run.write(tmp_path / "plan"):
        group = _group(path)
        entity = LOADERS[group](source=path)
        if group == "environment":
            created[path.name] = ml.environments.create_or_update(entity)
        elif group == "compute":
            created[path.name] = ml.compute.begin_create_or_update(entity).result()
        elif group == "job":
            job = ml.jobs.create_or_update(entity)
            while ml.jobs.get(job.name).status != "Completed":
                pass  # the fake moves a job one state per read
            created[path.name] = job
        elif group == "model":
            created[path.name] = ml.models.create_or_update(entity)
        elif group == "online-endpoint":
            created[path.name] = ml.online_endpoints.begin_create_or_update(entity).result()
        else:
            created[path.name] = ml.online_deployments.begin_create_or_update(entity).result()
    model = next(v for k, v in created.items() if "-model-" in k)
    deployment = ml.online_deployments.get("blue", "phi3-chat")
    assert deployment.model.rsplit("/", 1)[-1] == model.version == "1"  # @latest resolved
    assert azure_fake.count("PUT", r"/codes/") >= 2  # the job's code and the deployment's


@pytest.mark.parametrize("arguments", [["--output-dir"], ["--output"]])
def test_cli_writes_the_folder_or_the_single_file(tmp_path, capsys, arguments):
    import argparse

    from cli.azure_ml import add_azure_parser, run_azure_command

    parser = argparse.ArgumentParser()
    add_azure_parser(parser.add_subparsers(dest="command"), lambda sub: sub, lambda args: 0)
    where = tmp_path / "out"
    args = parser.parse_args(["azure", "dry-run", *arguments, str(where)])
    assert run_azure_command(args, load_profile("azure", environ=TARGET)) == 0
    plan = (where / "plan.yaml") if arguments == ["--output-dir"] else where
    assert f"workspace {WORKSPACE}" in plan.read_text()
    assert "written to" in capsys.readouterr().err
