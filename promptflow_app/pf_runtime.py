"""What every entry point of this folder does before promptflow runs (inside .venv-promptflow).

- **A private promptflow home, telemetry off.** promptflow reads `PF_HOME_DIRECTORY` when it is
  first imported and sends usage telemetry unless its config says `telemetry.enabled: false`;
  with no `trace.destination: none` the devkit may also start its local trace service. So each
  process gets a fresh home holding a `pf.yaml` that turns both off (what
  `pf config set telemetry.enabled=false trace.destination=none` writes), set before
  promptflow is imported, and removed when the process ends. Nothing from the user's
  `~/.promptflow` (its connections, its telemetry consent) leaks in, and nothing is left behind.
- **The connection in memory.** The endpoint URL and key become the CustomConnection
  `finetune_phi_endpoint` in this process only: never a file, never promptflow's connection
  store (which needs an OS keyring, absent on headless Linux). The key arrives in an
  environment variable, never on a command line, where `ps` would show it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

FLOW_DIR = Path(__file__).resolve().parent
CONNECTION_NAME = "finetune_phi_endpoint"  # what flow.dag.yaml's node asks for
KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"
URL_ENV = "FINETUNE_PHI_ENDPOINT_URL"

# What `pf config set telemetry.enabled=false trace.destination=none` writes.
PF_CONFIG = "telemetry:\n  enabled: false\ntrace:\n  destination: none\n"


def prepare_home() -> Path:
    """Create this process's promptflow home with telemetry and tracing off; point
    `PF_HOME_DIRECTORY` at it. Must run before the first `import promptflow`."""
    if "promptflow" in sys.modules:
        raise RuntimeError("prepare_home() must run before promptflow is imported")
    home = Path(tempfile.mkdtemp(prefix="finetune-phi-pf-home-"))
    (home / "pf.yaml").write_text(PF_CONFIG, encoding="utf-8")
    os.environ["PF_HOME_DIRECTORY"] = str(home)
    # The executor's own OpenTelemetry tracing: off by default in promptflow; off explicitly,
    # so a PF_DISABLE_TRACING=false inherited from the caller cannot turn it on.
    os.environ["PF_DISABLE_TRACING"] = "true"
    atexit.register(shutil.rmtree, home, True)
    return home


def endpoint_key() -> str:
    """The endpoint key from the environment; a clear error when it is missing."""
    key = os.environ.get(KEY_ENV, "")
    if not key:
        print(
            f"error: the endpoint key must be in the environment variable {KEY_ENV}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return key


def connections(endpoint_url: str, key: str) -> dict[str, Any]:
    """The flow's connections in the form `Flow.invoke(connections=...)` takes."""
    return {CONNECTION_NAME: make_connection(endpoint_url, key)._to_execution_connection_dict()}


def make_connection(endpoint_url: str, key: str) -> Any:
    """The CustomConnection the flow's node uses (config `endpoint`, secret `key`)."""
    from promptflow.connections import CustomConnection

    return CustomConnection(
        name=CONNECTION_NAME, configs={"endpoint": endpoint_url}, secrets={"key": key}
    )


def scrub(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` masked (belt and braces for error messages)."""
    return text.replace(secret, "***") if secret else text
