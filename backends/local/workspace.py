"""`LocalWorkspace`: the workspace protocols on one machine.

Jobs are processes (`jobs.py`), the registry is MLflow on sqlite (`registry.py`), the online
endpoint is a front process on loopback routing to one server process per deployment
(`endpoint/`). Everything lives under the profile's state folder, so deleting it resets all.
Each part implements its protocol itself; this class only puts them together.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from backends.local.jobs import LocalJobs
from backends.local.registry import LocalRegistry
from finetune_phi.state import StateLayout

if TYPE_CHECKING:
    from backends.local.endpoint.control import LocalEndpoints


class LocalWorkspace:
    kind = "local"

    def __init__(self, state_dir: Path) -> None:
        self.layout = StateLayout(Path(state_dir))
        self.jobs = LocalJobs(self.layout)
        self.registry = LocalRegistry(self.layout)

    @cached_property
    def endpoints(self) -> LocalEndpoints:
        # Imported on first use: the endpoint's control code is not needed to train.
        from backends.local.endpoint.control import LocalEndpoints

        return LocalEndpoints(self.layout.root)
