"""Restarts crashed deployment servers, as Azure restarts a crashed container.

How Azure does it: each instance of a managed online deployment is a container on a
Kubernetes node. When the scoring process exits (a crash, an out-of-memory kill), the platform
starts the container again from the same deployment spec (restart policy "Always"), with a
delay that doubles between restarts in a row (CrashLoopBackOff), and the instance's readiness
probe keeps it out of routing until it answers again. The endpoint meanwhile sends requests to
the deployments and instances that are healthy; the deployment itself stays as configured.

How this mirrors it locally: the front process runs one `Supervisor` thread. Every `interval`
seconds it asks the control plane (`LocalEndpoints.crashed_deployments`) which deployment
servers died on their own: the deployment became ready, the control plane is not creating,
updating or deleting it, a pid is recorded (`stop_endpoint` clears it) and that process is gone.
Each one is restarted from its persisted spec (`LocalEndpoints.restart_crashed`: the recorded
command, so the same port and model; the deployment's environment variables; a new log file
`deployments/<name>/server-<generation>.log`) once it has been dead for `delay * 2**restarts`
seconds (1, 2, 4 ... s by default: the back-off). After `max_restarts` restarts in a row the
deployment is marked Failed with the reason instead, as Azure leaves a crash-looping
deployment unhealthy until someone updates it; a successful `create_or_update_deployment`
starts the count over, and so does a server that stays up for `control.STABLE_SECONDS`. Every
restart and every give-up is one line in the front's log. Routing around the dead server
meanwhile is the front's part (`front.py`): it stops sending live traffic to a deployment that
refuses connections until that deployment's `/readiness` answers 200 again.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from backends.local.endpoint.control import LocalEndpoints

log = logging.getLogger("backends.local.endpoint.supervisor")

DEFAULT_INTERVAL = 1.0  # seconds between checks
DEFAULT_DELAY = 1.0  # seconds dead before the first restart; doubles per restart in a row
DEFAULT_MAX_RESTARTS = 3


class Supervisor:
    """Watches one endpoint's deployment servers and restarts those that crashed."""

    def __init__(
        self,
        state_dir: Path,
        endpoint: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        delay: float = DEFAULT_DELAY,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        control: LocalEndpoints | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.interval = interval
        self.delay = delay
        self.max_restarts = max_restarts
        self.control = control or LocalEndpoints(state_dir)
        self._dead_since: dict[tuple[str, int], float] = {}  # (deployment, dead pid) -> seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, now: float | None = None) -> list[str]:
        """One pass: restart the crashed servers whose back-off is over; the names restarted
        (and ready again)."""
        now = time.monotonic() if now is None else now
        crashed = self.control.crashed_deployments(self.endpoint)
        seen = {(name, pid) for name, (pid, _) in crashed.items()}
        self._dead_since = {k: v for k, v in self._dead_since.items() if k in seen}
        due = []
        for name, (pid, restarts) in crashed.items():
            since = self._dead_since.setdefault((name, pid), now)
            if now - since >= self.delay * 2 ** min(restarts, 8):
                due.append(name)
        if not due:
            return []
        return self.control.restart_crashed(self.endpoint, due, max_restarts=self.max_restarts)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the supervisor must outlive any one bad pass
                log.exception("supervisor of endpoint %s: check failed", self.endpoint)

    def start(self) -> None:
        """Run `check` every `interval` seconds in a daemon thread until `stop`."""
        self._thread = threading.Thread(
            target=self._run, name=f"supervisor-{self.endpoint}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end; wait up to `timeout` s (a restart in progress keeps its
        recorded pid, so `stop_endpoint` still finds the new server)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.control.close()
