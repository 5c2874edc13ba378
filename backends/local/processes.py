"""Facts about local processes that the job runner and the endpoint control plane share."""

from __future__ import annotations

import time

import psutil

# How long a just-started process may show an empty command line. Right after exec, Linux's
# /proc/PID/cmdline can read empty for a moment; measured 1-2 in 100 fresh launches here.
CMDLINE_SETTLE_SECONDS = 1.0


def read_cmdline(process: psutil.Process, settle: float = CMDLINE_SETTLE_SECONDS) -> list[str]:
    """The process's command line; re-read for up to `settle` seconds while it reads empty.

    Callers compare the command line with what they started to tell their own process from a
    reused pid; an empty read must not make a live, just-started process look dead (a job
    recorded Failed "ended without an exit status", a deployment restarted for nothing).
    Raises psutil.NoSuchProcess / AccessDenied like `Process.cmdline()`.
    """
    deadline = time.monotonic() + settle
    while True:
        cmdline = process.cmdline()
        if cmdline or time.monotonic() >= deadline:
            return cmdline
        time.sleep(0.02)
