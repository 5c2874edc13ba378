"""Blue-green rollouts for real: the local workspace, the tiny model served by real processes.

One endpoint lives through the module's story in order: the first rollout onto an empty
endpoint, a staged rollout of a new version with a mirror phase, and two rollouts that must
roll back (a model that never becomes ready, and one that loads but cannot answer).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from backends.local.workspace import LocalWorkspace
from finetune_phi.rollout import RolloutFailed, execute_rollout, plan_rollout
from finetune_phi.settings import RolloutSettings
from finetune_phi.workspace import CHALLENGER, CHAMPION, ModelVersion, TrafficState

pytestmark = pytest.mark.slow

ENDPOINT = "phi3-test"
MODEL = "phi3-chat"
TUTORIAL_REQUEST = {
    "input_data": ["Who founded Microsoft?"],
    "params": {
        "temperature": 0.7,
        "max_new_tokens": 16,
        "do_sample": True,
        "return_full_text": True,
    },
}
SETTINGS = RolloutSettings(
    traffic_steps=(10, 50, 100),
    mirror_percent=50,
    mirror_requests=4,
    requests_per_step=3,
    readiness_timeout_seconds=180,
)


def save_mlflow(source: Path, destination: Path, **config_overrides: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fine_tune import save_mlflow_model

    model = AutoModelForCausalLM.from_pretrained(source)
    for key, value in config_overrides.items():
        setattr(model.config, key, value)
    save_mlflow_model(model, AutoTokenizer.from_pretrained(source), destination)
    return destination


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorkspace]:
    ws = LocalWorkspace(tmp_path_factory.mktemp("rollout") / "state")
    try:
        yield ws
    finally:
        ws.endpoints.delete_endpoint(
            ENDPOINT
        ) if ENDPOINT in ws.endpoints.list_endpoints() else None


@pytest.fixture(scope="module")
def versions(
    workspace: LocalWorkspace, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ModelVersion]:
    """v1 and v2: servable; broken: no model files; short: loads, but its context is too small
    for any probe (every request is refused with a 400)."""
    folder = tmp_path_factory.mktemp("models")
    good = save_mlflow(tiny_model_dir, folder / "good")
    short = save_mlflow(tiny_model_dir, folder / "short", max_position_embeddings=8)
    broken = folder / "broken"
    broken.mkdir()
    (broken / "README").write_text("not a model\n")
    sources = {"v1": good, "v2": good, "broken": broken, "short": short}
    return {
        key: workspace.registry.register_model(
            MODEL, str(path), tags={"case": key}, job_name=f"job-{key}"
        )
        for key, path in sources.items()
    }


def roll_out(workspace: LocalWorkspace, model: ModelVersion):
    workspace.endpoints.get_or_create_endpoint(ENDPOINT)
    deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(ENDPOINT)}
    plan = plan_rollout(
        workspace.endpoints.get_traffic(ENDPOINT),
        deployments,
        f"{model.name}:{model.version}",
        SETTINGS,
    )
    return execute_rollout(workspace, ENDPOINT, model, plan, SETTINGS, log=lambda _: None)


def test_1_first_rollout_on_an_empty_endpoint(
    workspace: LocalWorkspace, versions: dict[str, ModelVersion]
) -> None:
    report = roll_out(workspace, versions["v1"])

    assert report.final_traffic == {"blue": 100}
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == versions["v1"].version
    assert workspace.registry.get_model_by_alias(MODEL, CHALLENGER) is None
    answer = workspace.endpoints.invoke(ENDPOINT, TUTORIAL_REQUEST)
    assert isinstance(answer, list) and answer[0].startswith("Who founded Microsoft?")


def test_2_new_version_shifts_traffic_in_steps_and_retires_the_old_colour(
    workspace: LocalWorkspace, versions: dict[str, ModelVersion]
) -> None:
    report = roll_out(workspace, versions["v2"])

    assert report.final_traffic == {"green": 100}
    steps = [e for e in report.events if e.startswith("rollout: traffic")]
    assert [s.rsplit(", ", 1)[0] for s in steps] == [
        "rollout: traffic {'green': 10, 'blue': 90}",
        "rollout: traffic {'green': 50, 'blue': 50}",
        "rollout: traffic {'green': 100, 'blue': 0}",
    ]
    assert any("mirrored 50%" in e for e in report.events)
    assert [d.name for d in workspace.endpoints.list_deployments(ENDPOINT)] == ["green"]
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == versions["v2"].version
    # The front counted the mirrored copies on green while blue answered.
    metrics = workspace.endpoints.status(ENDPOINT)
    assert json.dumps(metrics)  # status is plain data (no keys inside)


@pytest.mark.parametrize(("case", "stage"), [("broken", "create"), ("short", "direct test")])
def test_3_failed_rollout_restores_traffic_and_removes_the_new_deployment(
    workspace: LocalWorkspace, versions: dict[str, ModelVersion], case: str, stage: str
) -> None:
    before = workspace.endpoints.get_traffic(ENDPOINT)
    assert before == TrafficState({"green": 100}, {})

    with pytest.raises(RolloutFailed, match=f"failed at {stage}"):
        roll_out(workspace, versions[case])

    assert workspace.endpoints.get_traffic(ENDPOINT) == before
    assert [d.name for d in workspace.endpoints.list_deployments(ENDPOINT)] == ["green"]
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == versions["v2"].version
    assert workspace.registry.get_model_by_alias(MODEL, CHALLENGER) is None
    answer = workspace.endpoints.invoke(ENDPOINT, TUTORIAL_REQUEST)  # live traffic never noticed
    assert answer[0].startswith("Who founded Microsoft?")


def test_4_endpoint_commands_inspect_and_steer_the_live_endpoint(
    workspace: LocalWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    where = ["--set", f"state_dir={workspace.layout.root}", "--set", f"endpoint.name={ENDPOINT}"]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["endpoint", *argv, *where])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("status")
    status = yaml.safe_load(out)
    assert code == 0 and status["traffic"] == {"green": 100}
    assert status["deployments"]["green"]["ready"] is True

    code, out, _ = run("invoke", "Who", "founded", "Microsoft?")
    assert code == 0 and out.strip() != ""

    code, _, err = run("traffic", "green=60")  # Azure's rule: live traffic sums to 100
    assert code == 1 and "100" in err
    assert workspace.endpoints.get_traffic(ENDPOINT).traffic == {"green": 100}

    old = workspace.endpoints.get_endpoint_keys(ENDPOINT).secondary
    code, out, _ = run("keys", "--rotate", "secondary")
    assert code == 0 and old not in out  # rotating does not print keys
    assert workspace.endpoints.get_endpoint_keys(ENDPOINT).secondary != old
    code, out, _ = run("keys")
    assert workspace.endpoints.get_endpoint_keys(ENDPOINT).primary not in out

    code, out, _ = run("logs", "--deployment", "green", "--lines", "5")
    assert code == 0 and "POST /score 200" in out

    assert run("stop")[0] == 0
    assert not yaml.safe_load(run("status")[1])["front"]["alive"]
    assert run("start")[0] == 0  # comes back serving the same way
    assert workspace.endpoints.get_traffic(ENDPOINT).traffic == {"green": 100}
    assert workspace.endpoints.invoke(ENDPOINT, TUTORIAL_REQUEST)[0].startswith("Who founded")
