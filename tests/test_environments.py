"""The Azure environments (environments/*.conda.yml) install what the tests ran.

Fast: every pin agrees with requirements.lock, except the documented differences (a
dependency of Azure's own packages caps it). Slow: pip resolves each list (a dry run against
the package index: no download of what it would install), so a node can build it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENTS = {
    "training": REPO / "environments" / "training.conda.yml",
    "inference": REPO / "environments" / "inference.conda.yml",
}
# (environment, package) -> the pin it has instead of the lock's version, and why.
DIFFERENCES = {
    ("training", "mlflow-skinny"): "==3.15.0",  # azureml-mlflow 1.62.0.post6: <=3.15.0
    ("inference", "pydantic"): "~=2.12.0",  # azureml-inference-server-http 1.5.1: ~=2.12.0
}


def pip_requirements(environment: str) -> list[str]:
    data = yaml.safe_load(ENVIRONMENTS[environment].read_text())
    (pip,) = [d["pip"] for d in data["dependencies"] if isinstance(d, dict)]
    return [str(r) for r in pip]


def locked_versions() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text()
    return {
        name.lower(): version.split("+")[0]
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", text, re.MULTILINE)
    }


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_every_pin_is_what_the_tests_ran(environment: str) -> None:
    locked = locked_versions()
    checked = 0
    for requirement in pip_requirements(environment):
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement).groups()  # type: ignore[union-attr]
        assert spec, f"{environment}: {name} is not pinned"
        if (environment, name) in DIFFERENCES:
            assert spec == DIFFERENCES[(environment, name)], (environment, name, spec)
            continue
        if name.lower() in locked:
            assert spec == f"=={locked[name.lower()]}", (environment, name, spec, locked[name])
            checked += 1
    assert checked >= 5  # the stack itself (torch, transformers, ...) is in the lock


@pytest.mark.slow
@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_pip_resolves_the_environment(environment: str, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(pip_requirements(environment)) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        + ["-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    problems = [line for line in done.stderr.splitlines() if not line.startswith("WARNING")]
    assert done.returncode == 0, "\n".join(problems[-20:])
