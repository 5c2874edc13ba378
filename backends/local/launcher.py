"""Runs one local job's command and records how it ended.

    python -m backends.local.launcher JOB_DIR -- COMMAND...

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


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m backends.local.launcher JOB_DIR -- COMMAND...", file=sys.stderr)
        return 2
    job_dir, command = Path(argv[0]), argv[2:]
    started = time.time()
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    returncode = child.wait()
    staging = job_dir / (EXIT_FILE + ".partial")
    staging.write_text(
        json.dumps({"returncode": returncode, "started": started, "ended": time.time()}) + "\n"
    )
    staging.replace(job_dir / EXIT_FILE)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
