"""Runs one local job's commands and records how it ended.

    python -m backends.local.launcher JOB_DIR -- COMMAND... [--then COMMAND...]...

The commands run one after another (a training job: the trainer, then the gate's evaluation
of what it trained, each a process of its own, so their memory peaks never add up); the
first that fails ends the job with its exit status.

The job runner starts this in a new session (its own process group), so the job outlives the
flow that started it and a restarted flow can re-attach. A job's exit status cannot be read by
a process that is not its parent, so the launcher (the parent) writes it to `exit.json`
atomically when the command ends. Cancelling kills the whole process group, launcher included:
then no exit.json is written and the runner's `cancel_requested` marker tells the story.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

EXIT_FILE = "exit.json"


THEN = "--then"


def split_steps(command: list[str]) -> list[list[str]]:
    """`A... --then B...` -> [[A...], [B...]] (empty steps dropped)."""
    steps: list[list[str]] = [[]]
    for arg in command:
        if arg == THEN:
            steps.append([])
        else:
            steps[-1].append(arg)
    return [step for step in steps if step]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m backends.local.launcher JOB_DIR -- COMMAND...", file=sys.stderr)
        return 2
    job_dir, steps = Path(argv[0]), split_steps(argv[2:])
    started = time.time()
    current: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)  # no further step starts
        if current:
            current[-1].send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    returncode = 0
    for step in steps:
        if stopping:
            returncode = -stopping[0]
            break
        current.append(subprocess.Popen(step))
        returncode = current[-1].wait()
        if returncode != 0:
            break
    staging = job_dir / (EXIT_FILE + ".partial")
    staging.write_text(
        json.dumps({"returncode": returncode, "started": started, "ended": time.time()}) + "\n"
    )
    staging.replace(job_dir / EXIT_FILE)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
