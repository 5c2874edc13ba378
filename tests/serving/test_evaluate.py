"""`serving.evaluate`: the gate's measurement, as jobs run it (`python -m serving.evaluate`).

Checked on the session's tiny Phi-3 saved as Azure lays out a registered MLflow model: the
held-out loss is the token-weighted cross-entropy computed independently here with the model
itself; batching by token budget does not change it; a finished measurement with the same key
is kept (a resumed job); only rank 0 measures; the judging of answers is the core's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_phi.chat_data.synthetic import fact_probes
from finetune_phi.evaluation import evaluation_from_output
from serving import evaluate
from serving.evaluate import EVALUATION_FILE, token_batches

REPO = Path(__file__).resolve().parents[2]


def test_token_batches_respect_the_budget_and_keep_the_order() -> None:
    lengths = [100, 5000, 4000, 10, 9000, 20, 30] + [8] * 40
    batches = token_batches(lengths)
    assert [i for batch in batches for i in batch] == list(range(len(lengths)))
    for batch in batches:
        widest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or widest * len(batch) <= evaluate.TOKENS_PER_BATCH
        assert len(batch) <= evaluate.MAX_BATCH_CONVERSATIONS
    assert [4] in batches  # longer than the budget: alone


def _direct_loss(model_dir: Path, test_file: Path, limit: int) -> tuple[float, int]:
    """The same quantity, one conversation at a time through the model's own loss."""
    import torch

    from serving.score import Scorer

    scorer = Scorer.load(model_dir)
    total, tokens = 0.0, 0
    for messages in evaluate.read_conversations(test_file, limit):
        ids = scorer.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        batch = torch.tensor([ids])
        with torch.inference_mode():
            loss = scorer.model(input_ids=batch, labels=batch).loss
        total += float(loss) * (len(ids) - 1)
        tokens += len(ids) - 1
    return total, tokens


def test_measures_the_token_weighted_loss_and_answers_the_questions(
    azureml_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    questions = [p.question for p in fact_probes()[:3]]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    argv = [
        "--model_dir",
        str(azureml_model_dir),
        "--test_file",
        str(chat_files["test"]),
        "--output_dir",
        str(tmp_path / "out"),
        "--questions_file",
        str(tmp_path / "q.json"),
        "--max_conversations",
        "12",
        "--key",
        "k1",
    ]
    result = evaluate.main(argv)
    assert result is not None
    written = json.loads((tmp_path / "out" / EVALUATION_FILE).read_text())
    assert written == result and written["key"] == "k1" and written["conversations"] == 12
    total, tokens = _direct_loss(azureml_model_dir, chat_files["test"], 12)
    assert written["tokens"] == tokens
    assert written["eval_loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert written["perplexity"] == pytest.approx(math.exp(written["eval_loss"]))
    assert [a["question"] for a in written["answers"]] == questions
    assert all(isinstance(a["answer"], str) for a in written["answers"])
    # The core judges the answers against the probes' keywords.
    judged = evaluation_from_output(written, "m:1", fact_probes(), job="j")
    assert [f.question for f in judged.facts] == questions and judged.job == "j"

    # A job resumed after it measured: the same key is kept, nothing is loaded again.
    (tmp_path / "out" / EVALUATION_FILE).write_text(json.dumps({**written, "eval_loss": 9.0}))
    assert evaluate.main(argv)["eval_loss"] == 9.0
    # Another key (other data or settings) measures again.
    again = evaluate.main([*argv[:-1], "k2"])
    assert again["key"] == "k2" and again["eval_loss"] == pytest.approx(written["eval_loss"])


def test_only_rank_zero_measures(
    azureml_model_dir: Path, chat_files: dict[str, Path], tmp_path: Path
) -> None:
    """A distributed job runs the command on every rank: one measurement, one file."""
    args = [
        "--model_dir",
        str(azureml_model_dir),
        "--test_file",
        str(chat_files["test"]),
        "--output_dir",
        str(tmp_path),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "serving.evaluate", *args],
        cwd=REPO,
        env={"RANK": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "rank 0 measures" in done.stdout and not (tmp_path / EVALUATION_FILE).exists()


def test_bad_arguments_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        evaluate.parse_arguments(
            [
                "--model_dir",
                "m",
                "--test_file",
                "t",
                "--output_dir",
                "o",
                "--max_conversations",
                "0",
            ]
        )
    assert exited.value.code == 2
