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


@pytest.mark.parametrize("entry", ["finetune_phi", "trainer.fine_tune"])
def test_the_libraries_themselves_see_telemetry_off(entry: str) -> None:
    """A fresh interpreter that imports the project (or only the trainer, as an Azure ML job
    or a user running it by hand does): MLflow's and huggingface_hub's own checks say
    disabled, and Prefect's analytics setting is off."""
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF}
    code = (
        f"import json, {entry}"
        + """
from mlflow.telemetry.utils import is_telemetry_disabled
from huggingface_hub import constants
from prefect.settings import get_current_settings
print(json.dumps({
    "mlflow": is_telemetry_disabled(),
    "hf": constants.HF_HUB_DISABLE_TELEMETRY,
    "prefect_analytics": get_current_settings().server.analytics_enabled,
}))
"""
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"mlflow": True, "hf": True, "prefect_analytics": False}
