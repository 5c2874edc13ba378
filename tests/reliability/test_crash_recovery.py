"""Crash recovery, for real: SIGKILL the training job, a deployment server and the rollout.

- Training: the job's whole process group is SIGKILLed mid-run, after its first checkpoint;
  submitting the job again resumes from the last complete checkpoint, so at most one save
  interval of steps is done twice (`resumed_from_step` in the trainer's metrics).
- Serving: a deployment server is SIGKILLed; the front marks it unhealthy, sends live requests
  to the healthy deployment with traffic (or answers a 503 JSON error when there is none), and
  the front's supervisor restarts the server from its persisted spec, a bounded number of times.
- Rollout: the process running `execute_rollout` is SIGKILLed after the new deployment is
  created, after the first traffic step, and after the last one; the next run of the same
  rollout converges: live traffic sums to 100, exactly one deployment serves the champion's
  model and it has all the traffic, and every running server process is one the endpoint's
  persisted state knows (no orphans).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from profiles import FAST_TRAINING
from recovery_helpers import (
    GOOD_REQUEST,
    KILL_ME,
    REPO_ROOT,
    alive,
    kill_servers,
    persisted_server_pids,
    port_refuses,
    roll_out,
    rollout_command,
    server_processes,
    stop_endpoints,
    tiny_mlflow_model,
    wait_for,
)

from backends.local.endpoint.control import LocalEndpoints
from backends.local.jobs import LocalJobs
from backends.local.workspace import LocalWorkspace
from finetune_phi.state import StateLayout
from finetune_phi.workspace import (
    CHALLENGER,
    CHAMPION,
    DEPLOYMENT_HEADER,
    DeploymentSpec,
    JobStatus,
    ModelVersion,
    TrafficState,
    TrainingJobSpec,
)
from trainer.config import RunOptions

pytestmark = pytest.mark.slow

SAVE_STEPS = 2
MAX_STEPS = 12

# --------------------------------------------------------------------------- training


def job_spec(chat_files: dict[str, Path], base: Path, max_steps: int) -> TrainingJobSpec:
    return TrainingJobSpec(
        name="ft-killed",
        experiment="crash-recovery",
        base_model=str(base),
        train_file=str(chat_files["train"]),
        eval_file=str(chat_files["test"]),
        hyperparameters=replace(FAST_TRAINING, max_steps=max_steps),
        run_options=RunOptions(
            save_steps=SAVE_STEPS, save_total_limit=3, logging_steps=1, eval_before_training=False
        ),
        tags={"purpose": "crash-recovery"},
    )


def logged_steps(log: Path) -> list[int]:
    return [int(m) for m in re.findall(r"^step (\d+)/", log.read_text(), re.MULTILINE)]


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the checkpoints whose trainer_state.json is written (the Trainer's last file)."""
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in folder.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )


def wait_terminal(jobs: LocalJobs, name: str, timeout: float = 240) -> JobStatus:
    def ended() -> JobStatus | None:
        status = jobs.get_job(name).status
        return status if status.is_terminal else None

    status: JobStatus = wait_for(ended, timeout, f"job {name} to end", interval=0.3)
    return status


def test_killed_training_resumes_from_its_last_checkpoint(
    tmp_path: Path, chat_files: dict[str, Path], tiny_model_dir: Path
) -> None:
    jobs = LocalJobs(StateLayout(tmp_path))
    spec = job_spec(chat_files, tiny_model_dir, max_steps=MAX_STEPS)
    job_dir = tmp_path / "jobs" / spec.name
    checkpoints = job_dir / "output" / "checkpoints"

    jobs.submit_job(spec)
    launcher = psutil.Process(json.loads((job_dir / "job.json").read_text())["pid"])
    # Mid-run, after the first checkpoint is complete and training went on past it.
    wait_for(
        lambda: (
            complete_checkpoints(checkpoints)
            and max(logged_steps(job_dir / "train.log"), default=0) > SAVE_STEPS
        ),
        120,
        "the first checkpoint and a step after it",
        interval=0.05,
    )
    group = [launcher, *launcher.children(recursive=True)]
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher leads the job's process group
    psutil.wait_procs(group, timeout=10)
    done_before_kill = max(logged_steps(job_dir / "train.log"))
    saved = complete_checkpoints(checkpoints)
    assert 0 < done_before_kill < MAX_STEPS, "killed mid-run"
    assert all(not alive(p.pid) for p in group)

    killed = jobs.get_job(spec.name)
    assert killed.status is JobStatus.FAILED
    assert killed.error and "ended without an exit status (killed?)" in killed.error

    # What a kill while saving leaves: a checkpoint folder without its trainer_state.json.
    torn = checkpoints / f"checkpoint-{saved[-1] + SAVE_STEPS}"
    if not torn.exists():
        torn.mkdir()
        (torn / "model.safetensors").write_bytes(b"\0" * 100)

    jobs.submit_job(spec)  # the flow's retry: the same job again
    status = wait_terminal(jobs, spec.name)
    log = (job_dir / "train.log").read_text()
    assert status is JobStatus.COMPLETED, log[-3000:]
    metrics = jobs.get_job(spec.name).metrics
    assert metrics["global_step"] == MAX_STEPS
    resumed = metrics["resumed_from_step"]
    assert resumed == saved[-1], (resumed, saved)
    redone = done_before_kill - resumed
    assert 0 <= redone <= SAVE_STEPS, f"{redone} steps done twice"
    assert "--- attempt 2" in log
    assert f"resuming from {checkpoints / f'checkpoint-{resumed}'}" in log
    assert f"discarding incomplete {torn.name}" in log
    print(
        f"\ntraining killed after step {done_before_kill} (checkpoints {saved}); resumed from "
        f"step {resumed}: {redone} step(s) done twice (save interval {SAVE_STEPS})"
    )


# --------------------------------------------------------------------------- serving

ENDPOINT = "crashes"


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict]:
    """An endpoint with two real deployments of the tiny model, blue and green."""
    model_dir = tiny_mlflow_model(tiny_model_dir)
    control = LocalEndpoints(tmp_path_factory.mktemp("crashes") / "state", grace_seconds=3.0)
    client = httpx.Client(timeout=60, trust_env=False)
    try:
        info = control.get_or_create_endpoint(ENDPOINT)
        model = ModelVersion("tiny", "1", source=model_dir.as_uri())
        for name in ("blue", "green"):
            control.create_or_update_deployment(DeploymentSpec(ENDPOINT, name, model))
        yield {"control": control, "url": info.scoring_uri, "client": client}
    finally:
        client.close()
        stop_endpoints(control)


def _post(serving: dict, **headers: str) -> httpx.Response:
    key = serving["control"].get_endpoint_keys(ENDPOINT).primary
    return serving["client"].post(
        serving["url"], json=GOOD_REQUEST, headers={"Authorization": f"Bearer {key}", **headers}
    )


def _health(serving: dict) -> dict:
    return serving["client"].get(serving["url"].replace("/score", "/health")).json()


def _deployment(serving: dict, name: str) -> dict:
    return serving["control"].status(ENDPOINT)["deployments"][name]


def _kill(serving: dict, name: str) -> int:
    """SIGKILL the deployment's server (its process group, as the OOM killer would take a
    container); its pid."""
    dep = _deployment(serving, name)
    os.killpg(dep["pid"], signal.SIGKILL)
    # Dead means its port refuses connections: a many-threaded process shows as a zombie a
    # moment before its last thread, and with it the listening socket, is gone.
    wait_for(lambda: port_refuses(dep["port"]), 10, f"{name}'s server to die", interval=0.01)
    return int(dep["pid"])


def _restarted(serving: dict, name: str, old_pid: int) -> dict:
    def back() -> dict | None:
        dep = _deployment(serving, name)
        return dep if dep["pid"] not in (None, old_pid) and dep["ready"] else None

    return wait_for(back, 120, f"{name} restarted", interval=0.3)


def test_killed_deployment_fails_over_then_is_restarted(serving: dict) -> None:
    control: LocalEndpoints = serving["control"]
    control.set_traffic(ENDPOINT, TrafficState({"blue": 50, "green": 50}, {}))
    assert {_post(serving).headers[DEPLOYMENT_HEADER] for _ in range(12)} == {"blue", "green"}

    port = _deployment(serving, "blue")["port"]
    old = _kill(serving, "blue")
    killed_at = time.monotonic()
    # Live requests right after the kill: every one answered, by the healthy deployment.
    answers = [_post(serving) for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
    assert {r.headers[DEPLOYMENT_HEADER] for r in answers} == {"green"}
    assert wait_for(lambda: _health(serving)["unhealthy"] == ["blue"], 5, "blue unhealthy")
    # A request that names the dead deployment still goes to it: 502, as before.
    direct = _post(serving, **{DEPLOYMENT_HEADER: "blue"})
    assert direct.status_code in (502, 503) and "blue" in direct.json()["error"]

    back = _restarted(serving, "blue", old)
    restart_seconds = time.monotonic() - killed_at
    assert back["port"] == port  # restarted from its persisted spec: same port, same model
    wait_for(lambda: _health(serving)["unhealthy"] == [], 10, "blue healthy again")
    assert "blue" in {_post(serving).headers[DEPLOYMENT_HEADER] for _ in range(20)}
    record = control._store(ENDPOINT).read().deployments["blue"]
    assert record.restarts == 1 and record.provisioning_state == "Succeeded"
    front_log = control._store(ENDPOINT).path("front.log").read_text()
    assert re.search(rf"the server of deployment blue \(pid {old}\) died; restart 1 of", front_log)
    print(
        f"\nblue SIGKILLed: 10/10 live requests answered by green; blue restarted and ready "
        f"{restart_seconds:.1f} s after the kill"
    )


def test_killed_deployment_without_a_healthy_peer_is_a_clear_503(serving: dict) -> None:
    control: LocalEndpoints = serving["control"]
    control.set_traffic(ENDPOINT, TrafficState({"blue": 100}, {}))
    old = _kill(serving, "blue")
    refused = _post(serving)
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/json")
    message = refused.json()["error"]
    assert "'blue'" in message and "not answering" in message, message
    later = _post(serving)  # now known unhealthy: answered without trying it
    assert later.status_code == 503 and "no healthy deployment has traffic" in later.json()["error"]

    _restarted(serving, "blue", old)
    wait_for(lambda: _post(serving).status_code == 200, 15, "blue answering again")


def test_restarts_are_bounded(serving: dict) -> None:
    """A server that keeps dying is given up on (Failed, with the reason), as Azure leaves a
    crash-looping deployment; requests then get the 503."""
    control: LocalEndpoints = serving["control"]
    control.set_traffic(ENDPOINT, TrafficState({"blue": 100}, {}))
    restarts = control._store(ENDPOINT).read().deployments["blue"].restarts
    assert restarts >= 1
    _kill(serving, "blue")
    # The supervisor would wait 2**restarts s before restarting; this pass comes first, with
    # a bound already reached.
    assert control.restart_crashed(ENDPOINT, ["blue"], max_restarts=restarts) == []
    record = control._store(ENDPOINT).read().deployments["blue"]
    assert record.provisioning_state == "Failed" and record.pid is None and not record.serving
    assert record.error and "not restarted again" in record.error
    time.sleep(3)  # the supervisor's turn: it must leave a Failed deployment alone
    assert control._store(ENDPOINT).read().deployments["blue"].pid is None
    assert _post(serving).status_code == 503
    # An update (what a person does after fixing the cause) brings it back, count reset.
    model = ModelVersion("tiny", "1", source=Path(record.model_dir).as_uri())
    control.create_or_update_deployment(DeploymentSpec(ENDPOINT, "blue", model))
    assert control._store(ENDPOINT).read().deployments["blue"].restarts == 0
    assert _post(serving).status_code == 200


# --------------------------------------------------------------------------- rollout

ROLLOUT_ENDPOINT = "killed-rollout"
MODEL = "phi3-crash"


@pytest.fixture(scope="module")
def rollout_state(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[Path, Path]]:
    """A local workspace whose registry holds versions 1-4 of the tiny model, and the
    endpoint after a first rollout of version 1 (blue, all traffic, champion)."""
    state = tmp_path_factory.mktemp("killed-rollout") / "state"
    workspace = LocalWorkspace(state)
    source = tiny_mlflow_model(tiny_model_dir)
    for n in range(1, 5):
        version = workspace.registry.register_model(
            MODEL, str(source), tags={}, job_name=f"job-{n}"
        )
        assert version.version == str(n)
    marker = str(state)  # the registry's copies live in the state folder: servers name them
    try:
        roll_out(state, ROLLOUT_ENDPOINT, MODEL, "1", log=lambda _: None)
        yield state, Path(marker)
    finally:
        stop_endpoints(workspace.endpoints)
        kill_servers(marker)


def _kill_rollout_at(state: Path, version: str, trigger: str) -> list[str]:
    """Run the rollout of `version` in a child process and SIGKILL it when it logs `trigger`;
    the events it logged."""
    child = subprocess.Popen(
        rollout_command(state, ROLLOUT_ENDPOINT, MODEL, version, trigger),
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    events: list[str] = []
    assert child.stdout is not None
    deadline = time.monotonic() + 180
    for line in child.stdout:
        if line.strip() == KILL_ME:
            os.kill(child.pid, signal.SIGKILL)
            break
        events.append(line.strip())
        assert time.monotonic() < deadline, events
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, (child.returncode, events)
    return events


def _assert_converged(state: Path, version: str) -> dict[str, int]:
    workspace = LocalWorkspace(state)
    traffic = workspace.endpoints.get_traffic(ROLLOUT_ENDPOINT)
    live = traffic.live
    assert sum(live.values()) == 100 and traffic.mirror_traffic == {}
    champion = workspace.registry.get_model_by_alias(MODEL, CHAMPION)
    assert champion is not None and champion.version == version
    assert workspace.registry.get_model_by_alias(MODEL, CHALLENGER) is None
    deployments = workspace.endpoints.list_deployments(ROLLOUT_ENDPOINT)
    holders = [d.name for d in deployments if d.model == f"{MODEL}:{version}"]
    assert len(holders) == 1 and live == {holders[0]: 100}, (holders, live)
    assert [d.name for d in deployments] == holders  # the previous colour was retired
    assert all(d.provisioning_state == "Succeeded" and d.ready for d in deployments)
    # No orphans: the running servers are exactly those the persisted state knows.
    running = set(server_processes(str(state)))
    assert running == persisted_server_pids(state, ROLLOUT_ENDPOINT), running
    answer = workspace.endpoints.invoke(ROLLOUT_ENDPOINT, GOOD_REQUEST)
    assert isinstance(answer, list) and isinstance(answer[0], str)
    return dict(live)


@pytest.mark.parametrize(
    ("version", "trigger", "left"),
    [
        ("2", "is ready and answers directly", {"blue": 100}),
        ("3", "rollout: traffic {", {"blue": 10, "green": 90}),
        ("4", "rollout: traffic {'green': 100", {"green": 100}),
    ],
    ids=["after_create", "after_first_traffic_step", "after_last_traffic_step"],
)
def test_killed_rollout_converges_on_the_next_run(
    rollout_state: tuple[Path, Path], version: str, trigger: str, left: dict[str, int]
) -> None:
    state, _ = rollout_state
    before = LocalWorkspace(state).registry.get_model_by_alias(MODEL, CHAMPION)
    assert before is not None
    events = _kill_rollout_at(state, version, trigger)
    workspace = LocalWorkspace(state)
    assert workspace.endpoints.get_traffic(ROLLOUT_ENDPOINT).live == left, events
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == before.version  # type: ignore[union-attr]

    events = []
    report = roll_out(state, ROLLOUT_ENDPOINT, MODEL, version, log=events.append)
    live = _assert_converged(state, version)
    assert dict(report.final_traffic) == live
    print(f"\nkilled {trigger!r} with traffic {left}; next run: {events}")
