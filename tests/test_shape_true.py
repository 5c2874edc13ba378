"""The shape-true tier (issue #13 B): the real-size rehearsal's configuration with
Phi-3.5-mini-instruct's exact shape two layers deep, through the whole flow as `make
rehearsal` runs it (`python -m bench.rehearsal --layers 2`): the Hub loader's real call on a
folder in the Hub's layout, LoRA training on truncated rows, a cancelled job resumed from its
checkpoint, registration, the gate, the blue-green rollout with the Prompt flow smoke test,
an answer through the endpoint. About four minutes; the facts below are read back from the
state folder the run left, not only from the driver's report.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backends.local.endpoint.control import LocalEndpoints
from backends.local.workspace import LocalWorkspace
from finetune_phi.real_size import PHI35_MINI_CONFIG, parameter_layout, phi35_config
from finetune_phi.rollout import PARAMETERS_TAG
from finetune_phi.settings import load_profile

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
LAYERS = 2
DATASET_ROWS = 2000  # train_sft; the flow reads its first 1%: 20 conversations
LAST_LINE = re.compile(
    r"^rehearsal: (?P<ending>[a-z ]+), peak RSS \d+\.\d GB, disk \d+\.\d GB, wall \d+ s$"
)
PARAMETERS = sum(t.numel for t in parameter_layout(phi35_config(LAYERS)))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from endpoint_cleanup import cleanup_endpoints

    root = tmp_path_factory.mktemp("rehearsal")
    state_dir = root / "state"
    command = [sys.executable, "-m", "bench.rehearsal", "--layers", str(LAYERS)]
    command += ["--dataset-rows", str(DATASET_ROWS), "--inputs-dir", str(root / "inputs")]
    command += ["--state-dir", str(state_dir), "--report", str(root / "report.json")]
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False
        )
    finally:
        if state_dir.is_dir():  # the driver stops its endpoint; a crash must not leave it
            cleanup_endpoints(LocalEndpoints(state_dir), delete=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    report = json.loads((root / "report.json").read_text())
    profile = load_profile("rehearsal", overrides={"state_dir": str(state_dir)})
    return {
        "stdout": done.stdout,
        "report": report,
        "run": report["attempts"][1]["facts"],
        "state_dir": state_dir,
        "inputs": root / "inputs",
        "profile": profile,
    }


def test_the_last_line_says_how_it_ended_and_what_it_cost(rehearsal: dict[str, Any]) -> None:
    last = rehearsal["stdout"].strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match and match["ending"] == "promoted", last
    totals = rehearsal["report"]["totals"]
    # The deployment alone holds the fp32 weights; the peak is over every process of the run.
    assert totals["peak_rss_gb"] > PARAMETERS * 4 / 1e9
    assert totals["disk_gb"] > totals["state_disk_peak_gb"] > 0
    assert rehearsal["report"]["problems"] == []
    names = [stage["name"] for stage in rehearsal["report"]["stages"]]
    assert "1: train-model / trainer.fine_tune" in names
    assert {"2: train-model / serving.evaluate", "2: blue-green-rollout / serving.server"} <= set(
        names
    )


def test_the_base_model_has_phi35_minis_exact_shape_two_layers_deep(
    rehearsal: dict[str, Any],
) -> None:
    base = Path(rehearsal["run"]["model"]["tags"]["base_model"])
    assert base.parent == rehearsal["inputs"] / "models"
    assert json.loads((base / "config.json").read_text()) == {
        **PHI35_MINI_CONFIG,
        "num_hidden_layers": LAYERS,
    }
    index = json.loads((base / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == PARAMETERS * 2  # bf16, sharded as on the Hub
    assert len(set(index["weight_map"].values())) > 1


def test_the_hub_loader_read_the_tutorials_split_of_a_hub_layout_folder(
    rehearsal: dict[str, Any],
) -> None:
    dataset = rehearsal["run"]["dataset"]
    source = dataset["source"]
    assert source["kind"] == "hub" and source["split"] == "train_sft[:1%]"
    assert (
        Path(source["name"])
        == rehearsal["inputs"] / "hub" / f"ultrachat_200k-like-{DATASET_ROWS}-rows"
    )
    assert dataset["counts"]["input"] == DATASET_ROWS // 100
    # The data path kept the conversations at their full length (ultrachat's median ~1,250
    # tokens, counted with the model's own tokenizer and chat template).
    lengths = dataset["token_lengths"]
    assert lengths["unit"] == "tokens"
    assert lengths["p50"] > rehearsal["profile"].training.max_length
    assert lengths["max"] <= rehearsal["profile"].data.max_tokens


def test_training_truncated_rows_and_resumed_from_the_checkpoint(rehearsal: dict[str, Any]) -> None:
    profile = rehearsal["profile"]
    training = rehearsal["run"]["training"]
    metrics = training["metrics"]
    assert metrics["hyperparameters"] == json.loads(json.dumps(profile.model_dump()["training"]))
    assert (metrics["device"], metrics["precision"]) == ("cpu", "fp32")
    first = rehearsal["report"]["attempts"][0]
    assert first["checkpoint"] == "checkpoint-1"
    assert "TrainingJobFailed" in first["facts"]["error"] and "canceled" in first["facts"]["error"]
    assert metrics["global_step"] == profile.training.max_steps == 3
    assert metrics["resumed_from_step"] == 1
    log = (Path(training["job_dir"]) / "train.log").read_text()
    assert log.count("--- attempt") == 2 and "resuming from" in log
    # The resumed process trained 2 rows of conversations that are ~1,250 tokens long: each
    # was cut to max_length (512) tokens.
    steps = metrics["global_step"] - metrics["resumed_from_step"]
    assert profile.training.max_length < metrics["train_tokens"] <= steps * 512
    assert metrics["model_parameters"] == PARAMETERS


def test_the_version_is_registered_with_its_size_and_the_gate_decided(
    rehearsal: dict[str, Any],
) -> None:
    run = rehearsal["run"]
    registry = LocalWorkspace(rehearsal["state_dir"]).registry
    version = registry.get_model(run["model"]["name"], run["model"]["version"])
    assert version.tags[PARAMETERS_TAG] == str(PARAMETERS)
    assert version.tags["gate"] == "promoted" and version.tags["gate_reason"]
    assert "champion" in version.aliases
    folder = Path(registry.model_location(version.name, version.version))
    (config_file,) = folder.rglob("config.json")
    config = json.loads(config_file.read_text())
    expected = phi35_config(LAYERS)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        assert config[key] == expected[key], key
    assert config["num_hidden_layers"] == LAYERS
    (index_file,) = folder.rglob("model.safetensors.index.json")
    total_size = json.loads(index_file.read_text())["metadata"]["total_size"]
    assert total_size == PARAMETERS * 4  # the LoRA adapters merged in: fp32, the same size

    gate = run["gate"]
    assert gate["promote"] is True and gate["champion"] is None
    candidate = gate["candidate"]
    assert math.isfinite(candidate["eval_loss"]) and candidate["tokens"] > 0
    assert 1 <= candidate["conversations"] <= rehearsal["profile"].gate.max_eval_conversations


def test_the_endpoint_answered(rehearsal: dict[str, Any]) -> None:
    assert isinstance(rehearsal["report"]["answer"], str) and rehearsal["report"]["answer"].strip()
    smoke = rehearsal["run"]["rollout"]["smoke"]
    assert set(smoke) == {"deployment blue", "endpoint"}
    for result in smoke.values():
        assert result["error"] is None
        (answer,) = result["answers"]
        assert answer["error"] is None and answer["answer"].strip()
    assert rehearsal["run"]["traffic_after"] == {"blue": 100}
