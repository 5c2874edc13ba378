"""Screenshots of what a person sees after a run: the Prefect UI and the MLflow UI.

    .venv/bin/python tools/screenshots.py [--out DIR] [--keep-state]
    .venv/bin/python tools/screenshots.py --reuse /tmp/finetune-phi-screenshots-XXXX  # no new run

Runs the real pipeline once (`finetune-phi run`, the trainer as a child process, MLflow on
sqlite, the local endpoint, the Prompt flow smoke test) on a small, fast profile (the local one
shrunk as the tests shrink it: a small tiny Phi-3, 120 synthetic conversations, 6 training
steps) into a throwaway state folder, against a real Prefect server this script starts on a
free loopback port (its own PREFECT_HOME in a temp folder). Then it starts `mlflow ui` on the
run's sqlite store and has headless Chromium (.venv-browser, playwright, the system's
/usr/bin/chromium; tools/screenshot_pages.py) save full-page PNGs into DIR (default
tests/artifacts/screenshots/):

    prefect-flow-run.png         the finished flow run page
    prefect-flow-run-artifacts.png  its Artifacts tab
    prefect-report-artifact.png  the run report (markdown artifact) rendered
    mlflow-run-loss-curves.png   the training run in MLflow, loss_curves.png shown
    mlflow-model-registry.png    the registered models page
    mlflow-registered-model.png  the phi3-chat versions, aliases and tags

Every server it started (Prefect, MLflow, the endpoint the run left serving) is stopped at the
end, whatever happens (an error, Ctrl-C, SIGTERM). Nothing leaves the machine. Exit status 0
when every page showed what it should, 1 otherwise (the pictures are still saved: they show
what went wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends.local.endpoint.control import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
BROWSER_PYTHON = ROOT / ".venv-browser" / "bin" / "python"
DEFAULT_OUT = ROOT / "tests" / "artifacts" / "screenshots"
# Offline: no analytics or telemetry calls at start-up (as finetune_phi/cli_run.py sets them).
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# MLflow's UI opens a "new model registry UI" dialog and an assistant side panel over the page.
MLFLOW_DISMISS = ["Try it now", "Close"]


def log(message: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_http(url: str, what: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} at start-up")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


class Servers:
    """Processes started here, each in its own session; all stopped by `stop_all`."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log_file: Path
    ) -> subprocess.Popen[bytes]:
        handle = log_file.open("wb")
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle.close()
        self.started.append((name, process))
        log(f"started {name} (pid {process.pid}, log {log_file})")
        return process

    def stop_all(self) -> None:
        for name, process in reversed(self.started):
            if process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log(f"stopped {name} (pid {process.pid})")


def write_profile(scratch: Path) -> Path:
    """The small profile (tests/profiles.py) on a small tiny Phi-3 built here."""
    sys.path.insert(0, str(ROOT / "tests"))
    from profiles import small_profile_file

    from finetune_phi.chat_data.synthetic import generate_conversations
    from finetune_phi.tiny_model import SMALL_SPEC, build_tiny_phi3

    base = build_tiny_phi3(scratch / "tiny-phi3", generate_conversations(160, seed=0), SMALL_SPEC)
    # The smoke test runs for real through Prompt flow; 6 steps teach no facts, so it is asked
    # to run and report, not to pass (a failed smoke test would roll the rollout back).
    return small_profile_file(
        scratch, base, smoke={"enabled": True, "questions": 2, "min_accuracy": 0.0}
    )


def stop_endpoints(state_dir: Path) -> None:
    """The run leaves its endpoint serving (that is the point of a run); stop it here."""
    if not state_dir.is_dir():
        return
    from backends.local.endpoint.control import LocalEndpoints

    endpoints = LocalEndpoints(state_dir)
    for name in endpoints.list_endpoints():
        try:
            endpoints.delete_endpoint(name)
            log(f"deleted local endpoint {name}")
        except Exception as exc:  # keep stopping the rest
            log(f"could not delete endpoint {name}: {exc}")


def latest_flow_run(api: str) -> dict[str, Any]:
    runs = http_json(f"{api}/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    if not runs:
        raise RuntimeError("the Prefect server has no flow run")
    return dict(runs[0])


def report_artifact(api: str, flow_run_id: str) -> dict[str, Any]:
    artifacts = http_json(
        f"{api}/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "type": {"any_": ["markdown"]}}},
    )
    if not artifacts:
        raise RuntimeError(f"flow run {flow_run_id} published no markdown artifact")
    return dict(artifacts[0])


def mlflow_pages(state_dir: Path) -> tuple[str, str, str]:
    """(experiment id, run id) of the run that logged loss_curves.png, and the model's name."""
    from mlflow.tracking import MlflowClient

    from finetune_phi.state import StateLayout

    tracking = MlflowClient(tracking_uri=StateLayout(state_dir).mlflow_tracking_uri)
    for experiment in tracking.search_experiments():
        for run in tracking.search_runs([experiment.experiment_id]):
            names = [a.path for a in tracking.list_artifacts(run.info.run_id)]
            if "loss_curves.png" in names:
                models = tracking.search_registered_models()
                model = models[0].name if models else ""
                return experiment.experiment_id, run.info.run_id, model
    raise RuntimeError("no MLflow run in the state folder logged loss_curves.png")


@contextlib.contextmanager
def scratch_folder(keep: bool, reuse: Path | None) -> Iterator[Path]:
    if reuse is not None:
        yield reuse.resolve()
        return
    if keep:
        yield Path(tempfile.mkdtemp(prefix="finetune-phi-screenshots-"))
        return
    with tempfile.TemporaryDirectory(prefix="finetune-phi-screenshots-") as folder:
        yield Path(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the temp folder (state, logs) afterwards"
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="a folder kept by --keep-state: no new run, only the servers and the screenshots",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not BROWSER_PYTHON.is_file():
        print(f"screenshots: {BROWSER_PYTHON} is missing: `make install-browser`", file=sys.stderr)
        return 2
    started = time.monotonic()
    servers = Servers()
    # SIGTERM unwinds like Ctrl-C does, so the servers below are stopped either way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with scratch_folder(args.keep_state, args.reuse) as scratch:
        state_dir = scratch / "state"
        logs = scratch / "logs"
        logs.mkdir(exist_ok=True)
        try:
            return run(args, out, scratch, state_dir, logs, servers)
        finally:
            stop_endpoints(state_dir)
            servers.stop_all()
            kept = f"logs in {logs}" if args.keep_state or args.reuse else "temp folder removed"
            log(f"done in {time.monotonic() - started:.0f} s; {kept}")


def run(
    args: argparse.Namespace,
    out: Path,
    scratch: Path,
    state_dir: Path,
    logs: Path,
    servers: Servers,
) -> int:
    prefect_home = scratch / "prefect-home"
    prefect_port = free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(prefect_port),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
    }
    # The profile file decides everything: no profile choice or override from the caller's env.
    env = {key: value for key, value in env.items() if not key.startswith("FINETUNE_PHI")}
    prefect = servers.start(
        "prefect server",
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(prefect_port)],
        env,
        logs / "prefect-server.log",
    )
    if args.reuse is None:
        log("building the small tiny Phi-3 and the profile")
        profile = write_profile(scratch)
    wait_http(f"{api}/health", "prefect server", prefect, timeout=240)
    log(f"prefect server up at {api}")

    pipeline_status = 0
    if args.reuse is None:
        log("running the pipeline: finetune-phi run")
        with (logs / "finetune-phi-run.log").open("wb") as handle:
            pipeline_status = subprocess.run(
                [str(VENV_BIN / "finetune-phi"), "run", "--profile", str(profile)],
                env=env,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=1200,
                check=False,
            ).returncode
        tail = (logs / "finetune-phi-run.log").read_text(errors="replace").splitlines()[-15:]
        print("\n".join(f"    {line}" for line in tail))
        if pipeline_status != 0:
            log(f"the pipeline exited with status {pipeline_status}; screenshots still taken")

    flow_run = latest_flow_run(api)
    artifact = report_artifact(api, flow_run["id"])
    log(f"flow run {flow_run['name']} ({flow_run['id']}): {flow_run['state_name']}")
    experiment_id, run_id, model_name = mlflow_pages(state_dir)

    mlflow_port = free_port()
    mlflow = servers.start(
        "mlflow ui",
        [str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{state_dir}/mlflow.db"]
        + ["--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        env,
        logs / "mlflow-ui.log",
    )
    ui = f"http://127.0.0.1:{mlflow_port}"
    wait_http(f"{ui}/health", "mlflow ui", mlflow, timeout=180)
    log(f"mlflow ui up at {ui}")

    prefect_ui = f"http://127.0.0.1:{prefect_port}"
    flow_name = flow_run["name"]
    shots = [
        {
            "url": f"{prefect_ui}/runs/flow-run/{flow_run['id']}",
            "path": str(out / "prefect-flow-run.png"),
            "wait_text": [flow_name, "Completed"],
            "settle_ms": 3000,
        },
        {
            "url": f"{prefect_ui}/runs/flow-run/{flow_run['id']}",
            "path": str(out / "prefect-flow-run-artifacts.png"),
            "wait_text": [flow_name],
            "click": "Artifacts",
            "then_wait_text": ["run metrics"],  # the table artifact's card, on that tab only
            "settle_ms": 2000,
        },
        {
            "url": f"{prefect_ui}/artifacts/artifact/{artifact['id']}",
            "path": str(out / "prefect-report-artifact.png"),
            "wait_text": ["Quality gate"],
            "settle_ms": 2000,
        },
        {
            "url": f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/loss_curves.png",
            "path": str(out / "mlflow-run-loss-curves.png"),
            "wait_text": ["loss_curves.png"],
            "wait_selector": "img[src*='loss_curves.png'], img[src^='blob:']",
            "dismiss": MLFLOW_DISMISS,
            "settle_ms": 2500,
        },
        {
            "url": f"{ui}/#/models",
            "path": str(out / "mlflow-model-registry.png"),
            "wait_text": [model_name],
            "dismiss": MLFLOW_DISMISS,
            "settle_ms": 2000,
        },
        {
            "url": f"{ui}/#/models/{model_name}",
            "path": str(out / "mlflow-registered-model.png"),
            "wait_text": ["Version 1"],
            "dismiss": MLFLOW_DISMISS,
            "settle_ms": 2000,
        },
    ]
    shots_file = scratch / "shots.json"
    shots_file.write_text(json.dumps(shots, indent=2))
    log("taking the screenshots in headless Chromium")
    browser = subprocess.run(
        [str(BROWSER_PYTHON), str(ROOT / "tools" / "screenshot_pages.py"), str(shots_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if browser.stderr.strip():
        print(browser.stderr.strip()[-3000:], file=sys.stderr)
    lines = browser.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {"shots": [], "blocked": []}
    for shot in report["shots"]:
        mark = "ok " if shot["ok"] else "BAD"
        log(f"{mark} {shot['path']}  ({shot.get('title', '')}) {shot.get('error', '')}")
    if report["blocked"]:
        log(
            f"blocked {len(report['blocked'])} non-loopback request(s), e.g. {report['blocked'][0]}"
        )
    complete = len(report["shots"]) == len(shots)
    good = browser.returncode == 0 and pipeline_status == 0 and complete
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
