"""Tear down a test's local endpoints, whatever the test left behind (shared by every suite
that starts real endpoint processes: tests/endpoint, tests/promptflow, tests/reliability)."""

from __future__ import annotations

import contextlib
import os
import signal

from backends.local.endpoint.control import LocalEndpoints


def cleanup_endpoints(control: LocalEndpoints, *, delete: bool = False) -> None:
    """Stop (or `delete`) every endpoint of this control plane, then SIGKILL the process group
    of anything it started that still lives, and close it."""
    for name in control.list_endpoints():
        with contextlib.suppress(Exception):
            if delete:
                control.delete_endpoint(name)
            else:
                control.stop_endpoint(name)
    for pid, child in list(control._children.items()):
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                child.wait(timeout=5)
    control.close()
