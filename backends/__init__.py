"""Backends: the `Workspace` protocol (workspace.py) and its implementations (local/, azure/).

`open_workspace(profile)` is the one place that picks the implementation from the profile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetune_phi.settings import Profile
    from finetune_phi.workspace import Workspace


def open_workspace(profile: Profile) -> Workspace:
    """The backend the validated profile names (`backend.kind`)."""
    if profile.backend.kind == "local":
        from backends.local.workspace import LocalWorkspace

        return LocalWorkspace(profile.state_dir)
    from backends.azure.workspace import AzureWorkspace

    return AzureWorkspace(profile.backend)
