"""Telemetry of Prefect, MLflow and the Hugging Face libraries is off by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from finetune_phi.telemetry import TELEMETRY_OFF, telemetry_off


def test_sets_only_what_the_user_did_not_choose() -> None:
    environ = {"DO_NOT_TRACK": "false"}
    set_now = telemetry_off(environ)
    assert environ["DO_NOT_TRACK"] == "false"  # the user's choice stands
    assert "DO_NOT_TRACK" not in set_now
    assert {k: environ[k] for k in set_now} == {
        k: v for k, v in TELEMETRY_OFF.items() if k != "DO_NOT_TRACK"
    }


# MLflow turns its telemetry off by itself under pytest or in CI (it looks for these, among
# others): the child must not inherit them, or its check would say "disabled" whatever the
# project does.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL")
PROBE = """
import json
from mlflow.telemetry.utils import is_telemetry_disabled
from huggingface_hub import constants
from prefect.settings import get_current_settings
print(json.dumps({
    "mlflow": is_telemetry_disabled(),
    "hf": constants.HF_HUB_DISABLE_TELEMETRY,
    "prefect_analytics": get_current_settings().server.analytics_enabled,
}))
"""


def libraries_see(first_import: str) -> dict[str, bool]:
    """What the libraries' own checks say in a fresh interpreter that imports `first_import`
    first, with none of the telemetry variables set by the user."""
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF and k not in CI_MARKERS}
    done = subprocess.run(
        [sys.executable, "-c", f"import {first_import}\n{PROBE}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("entry", ["finetune_phi", "trainer.fine_tune"])
def test_the_libraries_themselves_see_telemetry_off(entry: str) -> None:
    """A fresh interpreter that imports the project (or only the trainer, as an Azure ML job
    or a user running it by hand does): MLflow's and huggingface_hub's own checks say
    disabled, and Prefect's analytics setting is off."""
    assert libraries_see(entry) == {"mlflow": True, "hf": True, "prefect_analytics": False}


def test_without_the_project_the_libraries_would_send_telemetry() -> None:
    """The control: the same probe without importing the project sees everything on, so the
    test above can fail."""
    assert libraries_see("json") == {"mlflow": False, "hf": False, "prefect_analytics": True}
