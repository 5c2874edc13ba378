"""The user-facing commands, run as a user runs them: `run` (and `--dry-run`), `data inspect`,
`models`, `endpoint rollback` / `up` / `down`; their output and exit codes.

Fast tests build real state by hand in a temporary state folder (the small tiny Phi-3, small
synthetic or file data, versions registered in the local MLflow registry, an endpoint record
with two colours and no processes). The slow one runs the whole flow through `finetune-phi
run`, rolls a second version out next to the first and rolls the live endpoint back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# Prefect sets up logging (its console handler keeps the sys.stderr of that moment) when
# prefect.main is first imported: do it here, at collection, not first inside a test whose
# captured stream is closed when the test ends (a later flow run would log into it).
import prefect.main  # noqa: F401
import pytest
import yaml
from profiles import small_profile_file

from backends.local.endpoint.state import DeploymentRecord, EndpointStore
from backends.local.workspace import LocalWorkspace
from cli.main import main
from finetune_phi.lineage import training_job_name
from finetune_phi.settings import load_profile
from finetune_phi.workspace import CHAMPION, ModelVersion, TrafficState

MODEL = "phi3-chat"
ENDPOINT = "phi3-chat-local"  # the local profile's endpoint.name


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def row(label: str, text: str) -> str:
    """A line of the dry run's plan, as it prints them."""
    return f"{label:<10} {text}"


def one_line_error(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("finetune-phi: ") and "Traceback" not in err


@pytest.fixture
def profile(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The small profile: state in tmp_path/state, the small tiny Phi-3, 120 conversations."""
    return small_profile_file(tmp_path, tiny_model_dir)


# --------------------------------------------------------------------------- help, usage errors


@pytest.mark.parametrize("command", ["run", "data", "models", "endpoint", "demo"])
def test_every_command_has_help_with_examples(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "Examples:" in out and f"finetune-phi {command}" in out


def test_usage_and_config_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], profile: Path
) -> None:
    code, out, err = cli(capsys, "run", "--dry-run", "--set", "training.bogus_rate=1")
    assert code == 2 and out == "" and "training.bogus_rate: unknown key" in err

    code, _, err = cli(capsys, "run", "--dry-run", "--profile", "nope")
    assert code == 2 and one_line_error(err) and "profile 'nope' not found" in err

    code, _, err = cli(capsys, "data", "inspect", "--profile", str(profile), "--bins", "0")
    assert code == 2 and one_line_error(err)

    with pytest.raises(SystemExit) as exit_info:  # argparse: unknown action
        main(["endpoint", "rollforward"])
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_installed_entry_point_reports_a_missing_data_file_without_traceback(
    tmp_path: Path,
) -> None:
    script = Path(sys.executable).parent / "finetune-phi"
    missing = tmp_path / "missing.jsonl"
    result = subprocess.run(
        [
            str(script),
            "run",
            "--dry-run",
            "--set",
            f"state_dir={tmp_path / 'state'}",
            "--set",
            f'data.source={{"kind": "file", "path": "{missing}"}}',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(missing) in result.stderr
    assert not (tmp_path / "state").exists()


# --------------------------------------------------------------------------- run --dry-run, data


def test_dry_run_on_fresh_state_plans_everything_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], profile: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    code, out, err = cli(capsys, "run", "--dry-run", "--profile", str(profile))
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line and line[0] != " "}
    assert out.startswith("dry run: nothing is built, trained, registered or deployed")
    assert "96 train / 24 test, 0 invalid" in out
    sha = re.search(r"dataset ([0-9a-f]{16}): ", out).group(1)  # type: ignore[union-attr]
    settings = load_profile(str(profile), environ={})
    assert lines["job"].split()[1].startswith(f"ft-{sha[:8]}-")
    assert "(new)" in lines["job"]
    assert "none (no registry in the state folder yet)" in lines["champion"]
    assert f"{ENDPOINT} does not exist yet" in lines["endpoint"]
    assert "deploy phi3-chat:<next> as 'blue' at 0%" in lines["rollout"]
    assert "traffic -> {'blue': 100}" in out
    assert "max_steps" not in out and "6 steps" in lines["training"]
    assert settings.training.config_hash()[:12] in lines["training"]
    assert not (tmp_path / "state").exists()  # no side effects at all


def write_chats_with_problems(path: Path) -> None:
    from finetune_phi.chat_data.synthetic import generate_conversations

    records = generate_conversations(100, seed=3)
    records.append({"prompt": "no messages", "prompt_id": "bad-1"})
    broken = json.loads(json.dumps(records[0]))
    broken["prompt_id"] = "bad-2"
    broken["messages"][0]["role"] = "wizard"
    records.append(broken)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_data_inspect_prepares_then_reuses_and_agrees_with_the_dry_run(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    chats = tmp_path / "chats.jsonl"
    write_chats_with_problems(chats)
    source = ["--set", f'data.source={{"kind": "file", "path": "{chats}"}}']

    code, out, err = cli(capsys, "data", "inspect", "--profile", str(profile), *source)
    assert code == 0, err
    first_line = out.splitlines()[0]
    assert first_line.startswith("dataset ") and first_line.endswith("(prepared)")
    sha = first_line.split()[1]
    assert "102 read, 100 valid, 2 invalid (drop)" in out
    assert "80 train / 20 test" in out
    problems = next(line for line in out.splitlines() if line.strip().startswith("problems"))
    assert "problems.jsonl" in problems and "none" not in problems
    histogram = out.split("histogram of conversation lengths (100 conversations")[1]
    bars = [line for line in histogram.splitlines()[1:] if "|" in line]
    assert 1 < len(bars) <= 10
    assert sum(int(line.rsplit(maxsplit=1)[-1]) for line in bars) == 100
    assert (tmp_path / "state" / "datasets" / sha / "manifest.json").is_file()

    code, out, _ = cli(capsys, "data", "inspect", "--profile", str(profile), *source, "--bins", "4")
    assert code == 0 and out.splitlines()[0].endswith(
        "(re-used: same content as an earlier preparation)"
    )
    assert len([line for line in out.splitlines() if " |" in line]) <= 4

    # The dry run computes the same dataset (and so the same job name) as the flow's stage.
    code, out, _ = cli(capsys, "run", "--dry-run", "--profile", str(profile), *source)
    assert code == 0
    assert f"dataset {sha}: 80 train / 20 test, 2 invalid left out (" in out
    kinds = out.split("2 invalid left out (")[1].split(")")[0]
    assert "missing_field 1" in kinds  # the kinds, as data inspect reports them
    assert "the same folder already exists in the state folder" in out
    settings = load_profile(
        str(profile),
        environ={},
        overrides={"data": {"source": {"kind": "file", "path": str(chats)}}},
    )
    manifest = json.loads((tmp_path / "state/datasets" / sha / "manifest.json").read_text())
    job = training_job_name(manifest["dataset_sha256"], str(tiny_model_dir), settings.training)
    assert row("job", f"{job} (new)") in out


def test_dry_run_of_the_azure_profile_adds_the_azure_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = cli(
        capsys, "run", "--dry-run", "--profile", "azure", "--set", f"state_dir={tmp_path}"
    )
    assert code == 0, err
    assert out.startswith("# dry run: nothing is built")
    assert "# " + row("data", "hub HuggingFaceH4/ultrachat_200k") in out
    assert "dataset sha256 not known" in out
    assert "# --- call plan (in order)" in out
    documents = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["$schema"].rsplit("/", 1)[-1] for d in documents}
    assert "commandJob.schema.json" in kinds and "managedOnlineDeployment.schema.json" in kinds


# --------------------------------------------------------------------------- models, rollback


def register(workspace: LocalWorkspace, folder: Path, number: int, **tags: str) -> ModelVersion:
    model_dir = folder / f"model-{number}"
    model_dir.mkdir(parents=True)
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    lineage = {
        "dataset_sha256": f"{number}" * 64,
        "base_model": "tiny-phi3",
        "trainer_config_hash": "c" * 64,
        "eval_loss": f"{3.0 - number / 10:.6g}",
        "job_id": f"ft-job-{number}",
    }
    return workspace.registry.register_model(
        MODEL, str(model_dir), tags={**lineage, **tags}, job_name=f"ft-job-{number}"
    )


def endpoint_on_disk(state: Path, name: str, colours: dict[str, str], traffic: dict[str, int]):
    """An endpoint record as the control plane writes it, with no process running."""
    store = EndpointStore(state, name)
    with store.lock():
        store.create(port=1)
    now = time.time()
    with store.update() as record:
        for colour, model in colours.items():
            record.deployments[colour] = DeploymentRecord(
                name=colour,
                model=model,
                model_dir=str(state),
                provisioning_state="Succeeded",
                created_at=now,
                updated_at=now,
            )
        record.traffic = dict(traffic)
    return store


@pytest.fixture
def registry_state(
    profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> LocalWorkspace:
    """Two versions (1 promoted then replaced, 2 champion) and an endpoint: blue serves 1 at
    0%, green serves 2 at 100%, as after a rollout with rollout.keep_previous=true."""
    workspace = LocalWorkspace(tmp_path / "state")
    register(workspace, tmp_path / "models", 1, gate="promoted", gate_eval_loss="2.95")
    register(workspace, tmp_path / "models", 2, gate="promoted", gate_eval_loss="2.81")
    register(workspace, tmp_path / "models", 3, gate="rejected", gate_eval_loss="3.5")
    workspace.registry.set_model_alias(MODEL, CHAMPION, "2")
    endpoint_on_disk(
        workspace.layout.root,
        ENDPOINT,
        {"blue": f"{MODEL}:1", "green": f"{MODEL}:2"},
        {"blue": 0, "green": 100},
    )
    capsys.readouterr()  # MLflow's start-up lines are not the commands' output
    return workspace


def test_models_lists_versions_with_aliases_gate_and_lineage(
    capsys: pytest.CaptureFixture[str], profile: Path, registry_state: LocalWorkspace
) -> None:
    code, out, err = cli(capsys, "models", "--profile", str(profile))
    assert code == 0, err
    header, title, dashes, *rows = out.splitlines()
    assert header == f"{MODEL}: 3 version(s), champion 2"
    assert title.split() == [
        "version",
        "aliases",
        "gate",
        "rollout",
        "gate",
        "loss",
        "eval",
        "loss",
        "dataset",
        "base",
        "model",
        "job",
    ]
    assert [row.split()[0] for row in rows] == ["3", "2", "1"]  # newest first
    assert rows[1].split()[:6] == ["2", "champion", "promoted", "serving", "2.8100", "2.8000"]
    assert rows[0].split()[2:4] == ["rejected", "-"]
    assert "2" * 12 in rows[1] and "tiny-phi3" in rows[1] and "ft-job-2" in rows[1]

    code, out, _ = cli(capsys, "models", "--profile", str(profile), "--version", "3")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["version"] == "3" and shown["tags"]["gate"] == "rejected"

    code, _, err = cli(capsys, "models", "--profile", str(profile), "--version", "9")
    assert code == 2 and one_line_error(err) and "versions: 1, 2, 3" in err

    code, out, _ = cli(capsys, "models", "--profile", str(profile), "other-model")
    assert code == 0 and out.strip() == "no versions of other-model registered"


def test_models_on_fresh_state_creates_no_registry(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path
) -> None:
    code, out, _ = cli(capsys, "models", "--profile", str(profile))
    assert code == 0 and "has no registry yet" in out
    assert not (tmp_path / "state").exists()


def test_rollback_moves_traffic_and_champion_to_the_other_colour(
    capsys: pytest.CaptureFixture[str], profile: Path, registry_state: LocalWorkspace
) -> None:
    workspace = registry_state
    where = ["--profile", str(profile)]

    # The processes are down: rolling back onto a deployment that cannot answer is refused.
    code, _, err = cli(capsys, "endpoint", "rollback", *where)
    assert code == 1 and one_line_error(err)
    assert "'blue' is not ready" in err and "endpoint up" in err and "--force" in err
    assert workspace.endpoints.get_traffic(ENDPOINT) == TrafficState({"blue": 0, "green": 100}, {})

    code, out, err = cli(capsys, "endpoint", "rollback", "--force", *where)
    assert code == 0, err
    assert "rolled back endpoint phi3-chat-local: traffic {'blue': 0, 'green': 100} -> " in out
    assert "champion phi3-chat: 2 -> 1" in out
    assert workspace.endpoints.get_traffic(ENDPOINT).live == {"blue": 100}
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == "1"
    assert (
        "traffic moved to blue (phi3-chat:1)"
        in workspace.registry.get_model(MODEL, "2").tags["rolled_back"]
    )

    code, out, _ = cli(capsys, "models", *where)
    rows = {row.split()[0]: row for row in out.splitlines()[3:]}
    assert "champion" in rows["1"] and "promoted (rolled back)" in rows["2"]

    # The dry run now plans against this endpoint: green is free for the next candidate.
    code, out, _ = cli(capsys, "run", "--dry-run", *where)
    assert code == 0
    assert row("champion", "phi3-chat:1 (dataset 111111111111") in out
    assert row("endpoint", "phi3-chat-local: traffic {'blue': 100, 'green': 0}") in out
    assert "deploy phi3-chat:<next> as 'green' at 0%" in out

    # Rolling back again rolls forward; asking for the colour that has everything is a no-op.
    code, out, _ = cli(capsys, "endpoint", "rollback", "--force", *where)
    assert code == 0 and workspace.endpoints.get_traffic(ENDPOINT).live == {"green": 100}
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == "2"
    code, out, _ = cli(capsys, "endpoint", "rollback", "--deployment", "green", *where)
    assert code == 0 and "nothing to do" in out


def test_rollback_says_when_there_is_nothing_to_roll_back_to(
    capsys: pytest.CaptureFixture[str], profile: Path, registry_state: LocalWorkspace
) -> None:
    state = registry_state.layout.root
    endpoint_on_disk(state, "only-green", {"green": f"{MODEL}:2"}, {"green": 100})
    endpoint_on_disk(state, "nothing-live", {"blue": f"{MODEL}:1"}, {})
    where = ["--profile", str(profile)]

    code, _, err = cli(capsys, "endpoint", "rollback", "--endpoint", "only-green", *where)
    assert code == 1 and one_line_error(err)
    assert "nothing to roll back to: 'green' (serving phi3-chat:2) is the only deployment" in err
    assert "rollout.keep_previous=true" in err

    code, _, err = cli(capsys, "endpoint", "rollback", "--endpoint", "nothing-live", *where)
    assert code == 1 and "no deployment has live traffic" in err

    code, _, err = cli(capsys, "endpoint", "rollback", "--endpoint", "no-such-ep", *where)
    assert code == 1 and one_line_error(err) and "no local endpoint named 'no-such-ep'" in err

    code, _, err = cli(capsys, "endpoint", "rollback", "--deployment", "red", *where)
    assert code == 1 and "no deployment 'red'" in err
    assert registry_state.registry.get_model_by_alias(MODEL, CHAMPION).version == "2"  # untouched


def test_rollback_target_of_a_split_is_the_champions_deployment() -> None:
    from finetune_phi.rollout import NothingToRollBack, rollback_target
    from finetune_phi.workspace import DeploymentInfo

    deployments = {
        "blue": DeploymentInfo(ENDPOINT, "blue", f"{MODEL}:1", "Succeeded", True),
        "green": DeploymentInfo(ENDPOINT, "green", f"{MODEL}:2", "Succeeded", True),
    }
    split = TrafficState({"blue": 50, "green": 50})
    assert rollback_target(split, deployments, f"{MODEL}:1") == "blue"
    with pytest.raises(NothingToRollBack, match="choose one with --deployment"):
        rollback_target(split, deployments, None)
    assert rollback_target(TrafficState({"blue": 100}), deployments, None) == "green"


# --------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_run_then_roll_back_the_live_endpoint(
    prefect_harness: None,
    endpoint_cleanup: None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_model_dir: Path,
) -> None:
    # A file source: the gate compares held-out loss only (no fact questions): faster.
    from finetune_phi.chat_data.synthetic import generate_conversations

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in generate_conversations(120, 0)))
    profile = small_profile_file(
        tmp_path,
        tiny_model_dir,
        smoke={"enabled": False},
        rollout={"keep_previous": True},
        gate={"loss_tolerance": 1.0, "max_eval_conversations": 16},
        data={"source": {"kind": "file", "path": str(chats)}},
    )
    where = ["--profile", str(profile)]
    workspace = LocalWorkspace(tmp_path / "state")

    code, out, err = cli(capsys, "run", *where)
    assert code == 0, err[-3000:]
    assert "finetune-phi: promoted" in out
    assert "picture   loss curves: " in out and "loss_curves.png" in out
    assert "picture   gate comparison: " in out

    code, out, _ = cli(capsys, "run", "--dry-run", *where)
    assert code == 0
    assert row("champion", "phi3-chat:1 is up to date") in out
    assert row("rollout", "nothing to do: 'blue' serves it at 100%") in out

    # A second version rolled out next to the first (the rollout itself is tested elsewhere):
    # with rollout.keep_previous, blue stays at 0% for an instant rollback.
    from finetune_phi.rollout import execute_rollout, plan_rollout

    first = workspace.registry.get_model_by_alias(MODEL, CHAMPION)
    files = workspace.registry.download_model(MODEL, first.version, tmp_path / "downloads")
    second = workspace.registry.register_model(
        MODEL, str(files), tags={"case": "v2"}, job_name="v2"
    )
    settings = load_profile(str(profile), environ={}).rollout
    deployments = {d.name: d.model for d in workspace.endpoints.list_deployments(ENDPOINT)}
    plan = plan_rollout(
        workspace.endpoints.get_traffic(ENDPOINT),
        deployments,
        f"{MODEL}:{second.version}",
        settings,
    )
    execute_rollout(workspace, ENDPOINT, second, plan, settings, log=lambda _: None)
    assert workspace.endpoints.get_traffic(ENDPOINT).live == {"green": 100}
    assert {d.name for d in workspace.endpoints.list_deployments(ENDPOINT)} == {"blue", "green"}

    code, out, err = cli(capsys, "endpoint", "rollback", *where)  # blue is up: no --force
    assert code == 0, err
    assert "champion phi3-chat: 2 -> 1" in out
    assert workspace.endpoints.get_traffic(ENDPOINT).live == {"blue": 100}
    assert workspace.registry.get_model_by_alias(MODEL, CHAMPION).version == "1"
    question = {"input_data": ["Who founded Microsoft?"], "params": {"max_new_tokens": 4}}
    assert workspace.endpoints.invoke(ENDPOINT, question)[0].startswith("Who founded Microsoft?")

    assert cli(capsys, "endpoint", "down", *where)[0] == 0
    status = yaml.safe_load(cli(capsys, "endpoint", "status", *where)[1])
    assert not status["front"]["alive"]
    assert cli(capsys, "endpoint", "up", *where)[0] == 0
    assert workspace.endpoints.invoke(ENDPOINT, question)[0].startswith("Who founded Microsoft?")


@pytest.mark.slow
def test_a_rolled_back_rollout_is_one_paragraph_and_shows_in_models(
    endpoint_cleanup: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A model that passes the gate (the first always does) but fails the Prompt flow smoke
    test, run as a user runs it (the installed command, its own temporary Prefect server):
    the rollout is undone, the run fails with the reason said once and no traceback on the
    terminal, and `models` shows what happened to the version."""
    profile = small_profile_file(
        tmp_path,
        tiny_model_dir,
        training={"max_steps": 1},  # one step: it cannot know the facts the smoke test asks
        gate={"max_eval_conversations": 8},
    )
    command = [str(Path(sys.executable).parent / "finetune-phi")]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}

    run = subprocess.run(
        [*command, "run", "--profile", str(profile)],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    err = run.stderr
    assert run.returncode == 1, err[-3000:]
    assert "Finished in state Failed: RolloutFailed" in err  # Prefect's state lines are there...
    assert "Traceback" not in err + run.stdout  # ...but not its tracebacks
    paragraph = err[err.index("finetune-phi: run failed: ") :]
    assert paragraph.startswith("finetune-phi: run failed: rollout of phi3-chat:1 failed at smoke")
    assert "deployment 'blue' removed" in paragraph
    assert err.count("failed at smoke test (direct)") == 1  # said once, not four times

    models = subprocess.run(
        [*command, "models", "--profile", str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    version = next(line for line in models.stdout.splitlines() if line.startswith("1 "))
    assert models.returncode == 0 and "promoted" in version
    assert "failed at smoke test (direct), rolled back" in version


def test_expected_failures_lose_their_traceback_on_the_terminal_only() -> None:
    """The console filter drops Prefect's exception records of a FinetunePhiError and keeps
    a bug's (a plain ValueError) with its traceback."""
    import logging

    from cli.run import ExpectedFailureFilter
    from finetune_phi.rollout import RolloutFailed

    def record(
        error: BaseException, message: str = "Task run failed with exception"
    ) -> logging.LogRecord:
        return logging.LogRecord(
            "prefect.task_runs", logging.ERROR, __file__, 1, message, (), (type(error), error, None)
        )

    quiet = ExpectedFailureFilter()
    assert not quiet.filter(record(RolloutFailed("rolled back")))
    assert quiet.filter(record(ValueError("a bug")))
    state = logging.LogRecord(
        "prefect.task_runs",
        logging.ERROR,
        __file__,
        1,
        "Finished in state Failed('Task run encountered an exception RolloutFailed: %s')",
        ("a\nlong\nreason",),
        None,
    )
    assert quiet.filter(state)
    assert state.getMessage() == (
        "Finished in state Failed: RolloutFailed (the reason follows below)"
    )
    bug = logging.LogRecord(
        "prefect.flow_runs",
        logging.ERROR,
        __file__,
        1,
        "Finished in state Failed('Flow run encountered an exception: KeyError: 1')",
        (),
        None,
    )
    assert quiet.filter(bug) and "KeyError: 1" in bug.getMessage()
