"""Every YAML file in the repository is code: it must parse, and each kind is validated.

The walk is recursive, so a new YAML file anywhere is picked up. A file that is none of the
recognised kinds below fails `test_every_yaml_file_is_of_a_known_kind`: teach this module what
the new file is (and how to check it) rather than leaving it unchecked.

Recognised kinds:
  configs/profiles/*.yaml        profiles, validated by `load_profile`
  prefect.yaml                   Prefect deployments
  promptflow_app/flow.dag.yaml   the Prompt flow
  environments/*.yml, *.yaml     training and inference environments
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from finetune_phi.settings import load_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
YAML_SUFFIXES = (".yaml", ".yml")
# Not the repository's own files: virtual environments, the state folder, VCS and tool caches.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        "state",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "build",
        "dist",
    }
)

PREFECT_YAML = PurePosixPath("prefect.yaml")
FLOW_DAG_YAML = PurePosixPath("promptflow_app/flow.dag.yaml")
PROFILES_DIR = PurePosixPath("configs/profiles")
ENVIRONMENTS_DIR = PurePosixPath("environments")


def is_skipped_dir(name: str) -> bool:
    return name in SKIPPED_DIRS or name.startswith(".venv") or name.endswith(".egg-info")


def repo_yaml_files() -> list[PurePosixPath]:
    """Every YAML file of the repository, relative to its root, in a stable order."""
    found: list[PurePosixPath] = []
    for folder, subdirs, files in os.walk(REPO_ROOT):
        subdirs[:] = sorted(d for d in subdirs if not is_skipped_dir(d))
        relative_folder = PurePosixPath(Path(folder).relative_to(REPO_ROOT).as_posix())
        found += [relative_folder / f for f in sorted(files) if f.endswith(YAML_SUFFIXES)]
    return found


def yaml_kind(relative: PurePosixPath) -> str | None:
    """Which recognised kind a YAML file is, by its location; None for an unknown file."""
    if relative.parent == PROFILES_DIR and relative.suffix == ".yaml":
        return "profile"
    if relative == PREFECT_YAML:
        return "prefect"
    if relative == FLOW_DAG_YAML:
        return "promptflow"
    if relative.parent == ENVIRONMENTS_DIR:
        return "environment"
    return None


def load(relative: PurePosixPath) -> Any:
    return yaml.safe_load((REPO_ROOT / relative).read_text())


def files_of_kind(kind: str) -> list[PurePosixPath]:
    return [f for f in ALL_YAML if yaml_kind(f) == kind]


def load_if_present(relative: PurePosixPath) -> dict[str, Any]:
    if not (REPO_ROOT / relative).is_file():
        pytest.skip(f"{relative} does not exist yet")
    data = load(relative)
    assert isinstance(data, dict), f"{relative}: the top level must be a mapping"
    return data


ALL_YAML = repo_yaml_files()


def test_the_walk_finds_the_committed_profiles() -> None:
    # Guards the walk itself: if it found nothing, every test below would pass vacuously.
    assert PROFILES_DIR / "local.yaml" in ALL_YAML
    assert PROFILES_DIR / "azure.yaml" in ALL_YAML
    assert not [f for f in ALL_YAML if any(is_skipped_dir(part) for part in f.parts)]


@pytest.mark.parametrize("relative", ALL_YAML, ids=str)
def test_every_yaml_file_parses(relative: PurePosixPath) -> None:
    try:
        load(relative)
    except yaml.YAMLError as exc:
        pytest.fail(f"{relative} is not valid YAML: {exc}")


def test_every_yaml_file_is_of_a_known_kind() -> None:
    unknown = [str(f) for f in ALL_YAML if yaml_kind(f) is None]
    assert not unknown, (
        f"YAML files this test does not know how to validate: {unknown}; "
        "add their kind to tests/test_yaml_files.py"
    )


@pytest.mark.parametrize("relative", files_of_kind("profile"), ids=str)
def test_profile_files_validate(relative: PurePosixPath, tmp_path: Path) -> None:
    profile = load_profile(str(REPO_ROOT / relative), environ={}, cwd=tmp_path)
    # `--profile NAME` finds configs/profiles/NAME.yaml; the name inside must agree.
    assert profile.name == relative.stem


def test_prefect_yaml_declares_named_deployments() -> None:
    data = load_if_present(PREFECT_YAML)

    deployments = data.get("deployments")
    assert isinstance(deployments, list) and deployments, "prefect.yaml: no deployments list"
    names = [d.get("name") if isinstance(d, dict) else None for d in deployments]
    assert all(isinstance(n, str) and n for n in names), f"unnamed deployment in {names}"
    assert len(set(names)) == len(names), f"duplicate deployment names: {names}"
    for deployment in deployments:
        entrypoint = deployment.get("entrypoint")
        if entrypoint is None:
            continue
        assert isinstance(entrypoint, str), f"{deployment['name']}: entrypoint is not a string"
        file_part, _, function = entrypoint.rpartition(":")
        assert file_part and function, f"{deployment['name']}: entrypoint is not FILE:FUNCTION"
        assert (REPO_ROOT / file_part).is_file(), f"{deployment['name']}: {file_part} not found"


def test_promptflow_flow_declares_inputs_outputs_and_nodes() -> None:
    data = load_if_present(FLOW_DAG_YAML)

    assert isinstance(data.get("inputs"), dict), "flow.dag.yaml: `inputs` must be a mapping"
    assert isinstance(data.get("outputs"), dict), "flow.dag.yaml: `outputs` must be a mapping"
    nodes = data.get("nodes")
    assert isinstance(nodes, list) and nodes, "flow.dag.yaml: `nodes` must be a non-empty list"
    assert all(isinstance(n, dict) and n.get("name") and n.get("type") for n in nodes)
    names = [n["name"] for n in nodes]
    assert len(set(names)) == len(names), f"duplicate node names: {names}"

    # Every ${inputs.X} names a declared input and every ${node.output} an existing node.
    references = re.findall(r"\$\{([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)", yaml.safe_dump(data))
    for source, attribute in references:
        if source == "inputs":
            assert attribute in data["inputs"], f"${{inputs.{attribute}}} is not declared"
        else:
            assert source in names, f"${{{source}.{attribute}}} names no node"

    flow_dir = (REPO_ROOT / FLOW_DAG_YAML).parent
    for node in nodes:
        source = node.get("source")
        if isinstance(source, dict) and source.get("type") == "code":
            assert (flow_dir / source["path"]).is_file(), f"{node['name']}: code file missing"


@pytest.mark.parametrize("relative", files_of_kind("environment"), ids=str)
def test_environment_files_are_conda_or_image_specs(relative: PurePosixPath) -> None:
    data = load_if_present(relative)

    if "dependencies" in data:  # a conda specification
        dependencies = data["dependencies"]
        assert isinstance(dependencies, list) and dependencies, f"{relative}: empty dependencies"
        for item in dependencies:
            # A conda package spec, or {pip: [...]}.
            assert isinstance(item, str) or (
                isinstance(item, dict) and isinstance(item.get("pip"), list)
            ), f"{relative}: unexpected dependency entry {item!r}"
    else:  # an Azure ML environment: a base image, optionally with a conda file
        assert isinstance(data.get("image"), str), f"{relative}: neither dependencies nor image"
        conda_file = data.get("conda_file")
        if conda_file is not None:
            assert (REPO_ROOT / relative.parent / conda_file).is_file(), f"{relative}: conda_file"


@pytest.mark.parametrize(
    ("relative", "kind"),
    [
        ("configs/profiles/local.yaml", "profile"),
        ("configs/profiles/local.yml", None),  # `--profile NAME` only finds NAME.yaml
        ("configs/profiles/nested/x.yaml", None),
        ("prefect.yaml", "prefect"),
        ("flows/prefect.yaml", None),
        ("promptflow_app/flow.dag.yaml", "promptflow"),
        ("environments/train.yml", "environment"),
        (".github/workflows/ci.yml", None),
    ],
)
def test_kind_is_decided_by_location(relative: str, kind: str | None) -> None:
    assert yaml_kind(PurePosixPath(relative)) == kind
