"""What the gate measures and how jobs are named for it (pure parts of finetune_phi.evaluation)."""

from __future__ import annotations

import re

from finetune_phi.chat_data.synthetic import fact_probes
from finetune_phi.evaluation import (
    answers,
    evaluation_from_output,
    evaluation_job_name,
    evaluation_job_spec,
    evaluation_spec,
)
from finetune_phi.settings import load_profile
from finetune_phi.workspace import ModelVersion

SHA = "ab" * 32


def test_the_key_names_the_data_the_settings_and_the_questions() -> None:
    local = load_profile("local", environ={})
    base = evaluation_spec(local, SHA, "test.jsonl")
    assert base.questions == tuple(p.question for p in fact_probes())
    assert base.key == evaluation_spec(local, SHA, "elsewhere/test.jsonl").key  # not the path
    assert base.key != evaluation_spec(local, "cd" * 32, "test.jsonl").key
    fewer = load_profile("local", environ={}, overrides={"gate": {"max_eval_conversations": 10}})
    assert evaluation_spec(fewer, SHA, "test.jsonl").key != base.key
    # Hub data has no fact questions: loss only, another key.
    azure = load_profile("azure", environ={})
    hub = evaluation_spec(azure, SHA, "test.jsonl")
    assert hub.questions == () and hub.key != base.key


def test_evaluation_job_names_are_stable_and_azure_safe() -> None:
    spec = evaluation_spec(load_profile("local", environ={}), SHA, "t.jsonl")
    model = ModelVersion("Phi3.Chat model", "12", "src")
    name = evaluation_job_name(model, spec)
    assert name == f"eval-phi3-chat-model-v12-{spec.key}"
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name) and len(name) < 255
    job = evaluation_job_spec(model, "azureml:Phi3.Chat model:12", spec, compute="gpu")
    assert job.name == name and job.compute == "gpu" and job.evaluation == spec
    assert job.tags["evaluation_key"] == spec.key and job.tags["model"] == "Phi3.Chat model:12"


def test_reading_a_jobs_evaluation_judges_known_questions_only() -> None:
    probe = fact_probes()[0]
    spec = evaluation_spec(load_profile("local", environ={}), SHA, "t.jsonl")
    output = {
        "key": spec.key,
        "eval_loss": 1.25,
        "perplexity": 3.49,
        "conversations": 4,
        "tokens": 100,
        "answers": [
            {"question": probe.question, "answer": "I do not know."},
            {"question": "a question of another data set", "answer": "x"},
        ],
        "seconds": 2.5,
    }
    judged = evaluation_from_output(output, "m:3", fact_probes(), job="eval-m-v3")
    assert (judged.model, judged.eval_loss, judged.tokens, judged.job) == (
        "m:3",
        1.25,
        100,
        "eval-m-v3",
    )
    assert [(f.question, f.correct) for f in judged.facts] == [(probe.question, False)]
    assert judged.fact_accuracy == 0.0
    assert answers(output, spec) and not answers({**output, "key": "other"}, spec)
    assert not answers(None, spec)
