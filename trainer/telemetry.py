"""Usage telemetry of the stack, off by default.

Prefect, MLflow and the Hugging Face libraries each phone home unless told not to, and each
reads a different variable (MLflow honours `DO_NOT_TRACK` only when it says "true", not "1").
`TELEMETRY_OFF` is the whole list; `telemetry_off()` sets each one that the user has not set
(a user who wants to send usage data sets the variable and keeps their choice).

It lives in the trainer package, standard library only, because the trainer is the one piece
that runs on its own (by hand, or from a code snapshot in an Azure ML job with nothing else of
the project): importing `trainer` calls it, and so does importing `finetune_phi` (the CLI, a
Prefect worker running the flow, the local deployment servers), whose child processes inherit
it. Azure deployments get the variables from the deployment's environment
(`backends/azure/entities.py`). promptflow has its own switch in its config file, set by
promptflow_app/pf_runtime.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

TELEMETRY_OFF: Mapping[str, str] = {
    "DO_NOT_TRACK": "true",  # the convention (donottrack.sh); MLflow and huggingface_hub read it
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def telemetry_off(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set every variable of TELEMETRY_OFF the environment lacks; returns what it set."""
    missing = {name: value for name, value in TELEMETRY_OFF.items() if name not in environ}
    environ.update(missing)
    return missing
