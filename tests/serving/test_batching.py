"""Dynamic batching on the real tiny model (no mocks): same answers, really batched.

The scorer generates prompts that share generation parameters in one left-padded
`model.generate` call; greedy answers must not change with what else is in the batch. The
server collects concurrent requests into one `run_many` call and counts the batches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from finetune_phi.chat_data.synthetic import fact_probes
from serving import score
from serving.contract import BadRequest, parse_request
from serving.server import ServerConfig, create_app

# Prompts of different lengths, so a batch of them is padded.
QUESTIONS = [probe.question for probe in fact_probes()[:6]]


def text_request(question: str, max_new_tokens: int = 12, **params: Any) -> dict[str, Any]:
    return {
        "input_data": [question],
        "params": {"max_new_tokens": max_new_tokens, "do_sample": False, **params},
    }


@pytest.fixture(scope="module")
def scorer(azureml_model_dir: Path) -> score.Scorer:
    return score.Scorer.load(azureml_model_dir)


def test_batched_greedy_answers_equal_unbatched_ones(scorer: score.Scorer) -> None:
    requests = [parse_request(text_request(q)) for q in QUESTIONS]
    prompts = [
        scorer.prompt_ids([{"role": "user", "content": q}], r.params)
        for q, r in zip(QUESTIONS, requests, strict=True)
    ]
    assert len({len(ids) for ids in prompts}) > 1  # the batch really needs padding
    alone = [scorer.score(r) for r in requests]
    scorer.batch_sizes.clear()
    together = scorer.score_many(requests, max_batch_size=len(requests))
    assert together == alone
    assert scorer.batch_sizes == {len(requests): 1}  # one generate call for all of them
    # a multi-text request and a chat request ride in the same batch, answers unchanged
    mixed = [
        parse_request({"input_data": QUESTIONS[:3], "params": {"max_new_tokens": 12}}),
        parse_request(
            {
                "messages": [{"role": "user", "content": QUESTIONS[3]}],
                "params": {"max_new_tokens": 12},
            }
        ),
    ]
    scorer.batch_sizes.clear()
    assert scorer.score_many(mixed, max_batch_size=8) == [scorer.score(r) for r in mixed]
    assert scorer.batch_sizes[4] == 1


def test_different_params_never_share_a_batch_and_errors_stay_per_request(
    scorer: score.Scorer,
) -> None:
    too_long = " ".join(["Microsoft", "founded", "Seattle", "1975"] * 2000)[:7990]
    requests = [
        parse_request(text_request(QUESTIONS[0], 12)),
        parse_request(text_request(QUESTIONS[1], 12, return_full_text=False)),  # same batch
        parse_request(text_request(QUESTIONS[2], 5)),
        parse_request(text_request(too_long, 512)),  # too long: its own 400
        parse_request(text_request(QUESTIONS[3], 12, do_sample=True, seed=7)),
        parse_request(text_request(QUESTIONS[4], 12, do_sample=True, seed=7)),
    ]
    scorer.batch_sizes.clear()
    outcomes = scorer.score_many(requests, max_batch_size=8)
    assert isinstance(outcomes[3], BadRequest)
    # 12 tokens greedy (2 prompts), 5 tokens greedy, and each seeded request alone
    assert scorer.batch_sizes == {2: 1, 1: 3}
    for index in (0, 1, 2, 4):  # seeded sampling repeats as alone
        assert outcomes[index] == scorer.score(requests[index])
    assert outcomes[5] == scorer.score(requests[5])
    # the batch cap splits one group into several calls
    many = [parse_request(text_request(q, 4)) for q in QUESTIONS[:5]]
    alone = [scorer.score(r) for r in many]
    scorer.batch_sizes.clear()
    assert scorer.score_many(many, max_batch_size=2) == alone
    assert scorer.batch_sizes == {2: 2, 1: 1}


@pytest.fixture
def served(
    azureml_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The deployment app in process around the real scoring module (restored after)."""
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(azureml_model_dir))  # restored at teardown
    monkeypatch.setattr(score, "_scorer", None)
    config = ServerConfig(model_dir=azureml_model_dir, scorer=score, batch_window_ms=50)
    with TestClient(create_app(config)) as client:
        deadline = 120
        for _ in range(deadline * 10):
            if config.state.status != "loading":
                break
            threading.Event().wait(0.1)
        assert config.state.ready, config.state
        yield client


def test_concurrent_requests_are_batched_and_each_gets_its_answer(served: TestClient) -> None:
    expected = {q: served.post("/score", json=text_request(q, 16)).json() for q in QUESTIONS}
    before = served.get("/metrics").json()
    assert before["batching"] is True and before["max_batch_size"] == 8
    answers: dict[str, Any] = {}
    start = threading.Barrier(len(QUESTIONS))  # all at once, as concurrent clients

    def ask(question: str) -> None:
        start.wait(30)
        response = served.post("/score", json=text_request(question, 16))
        answers[question] = (response.status_code, response.json())

    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert answers == {q: (200, expected[q]) for q in QUESTIONS}
    after = served.get("/metrics").json()
    new = {
        int(size): count - before["request_batches"].get(size, 0)
        for size, count in after["request_batches"].items()
    }
    assert sum(size * count for size, count in new.items()) == len(QUESTIONS)
    assert max(size for size, count in new.items() if count) > 1  # really batched
    assert max(int(size) for size in after["generate_batches"]) > 1
    # a bad request in a batch is its own 400, as without batching
    response = served.post("/score", content=json.dumps({"input_data": []}))
    assert response.status_code == 400 and "error" in response.json()
