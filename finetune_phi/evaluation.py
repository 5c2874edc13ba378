"""Evaluate a model on the held-out split, and the champion/challenger quality gate.

    evaluate_model(model_dir, test_file, probes) -> Evaluation     (loads and runs a model)
    gate_decision(candidate, champion, settings) -> GateDecision    (pure)

Both models are measured here, the same way, on the same test file: the token-weighted mean
cross-entropy over every token of each templated conversation (what the trainer's eval loss
measures for chat data), its perplexity, and, when the data has them, greedy answers to the
fact questions checked for their keywords. Numbers recorded at training time are not reused:
the champion was evaluated on the data of its day.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finetune_phi.chat_data.synthetic import FactProbe, answer_matches
from finetune_phi.settings import GateSettings

EVAL_BATCH_SIZE = 16


@dataclass(frozen=True)
class FactAnswer:
    question: str
    answer: str
    correct: bool


@dataclass(frozen=True)
class Evaluation:
    model: str  # "<name>:<version>" or a folder
    eval_loss: float
    perplexity: float
    conversations: int
    tokens: int
    facts: tuple[FactAnswer, ...] = ()
    seconds: float = 0.0

    @property
    def fact_accuracy(self) -> float | None:
        if not self.facts:
            return None
        return sum(f.correct for f in self.facts) / len(self.facts)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate: Evaluation
    champion: Evaluation | None = None
    details: dict[str, float | None] = field(default_factory=dict)


def read_conversations(test_file: str | Path, limit: int) -> list[list[dict[str, str]]]:
    rows = []
    with Path(test_file).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line)["messages"])
            if len(rows) >= limit:
                break
    return rows


def evaluate_model(
    model_dir: str | Path,
    test_file: str | Path,
    probes: Sequence[FactProbe],
    *,
    label: str | None = None,
    max_conversations: int = 240,
) -> Evaluation:
    """Load the MLflow model under `model_dir` (as a deployment would) and measure it."""
    import torch

    from serving.contract import GenerationParams
    from serving.score import Scorer

    started = time.monotonic()
    scorer = Scorer.load(model_dir)
    model, tokenizer = scorer.model, scorer.tokenizer
    conversations = read_conversations(test_file, max_conversations)
    # Right padding for scoring: with left padding, positions shift by the pad count.
    tokenizer.padding_side = "right"
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(conversations), EVAL_BATCH_SIZE):
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False)
            for c in conversations[start : start + EVAL_BATCH_SIZE]
        ]
        batch = tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            truncation=True,
            max_length=model.config.max_position_embeddings,
        ).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.inference_mode():
            logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total_loss += float(losses)
        total_tokens += int((targets != -100).sum())
    eval_loss = total_loss / max(total_tokens, 1)
    greedy = GenerationParams(max_new_tokens=48, do_sample=False)
    facts = tuple(
        FactAnswer(p.question, answer, answer_matches(p, answer))
        for p in probes
        for answer in [scorer.reply([{"role": "user", "content": p.question}], greedy)]
    )
    return Evaluation(
        model=label or str(model_dir),
        eval_loss=eval_loss,
        perplexity=math.exp(min(eval_loss, 50.0)),
        conversations=len(conversations),
        tokens=total_tokens,
        facts=facts,
        seconds=time.monotonic() - started,
    )


def gate_decision(
    candidate: Evaluation, champion: Evaluation | None, settings: GateSettings
) -> GateDecision:
    """Promote when there is no champion, or the candidate is better or within tolerance on
    both the loss (relative) and the fact accuracy (absolute)."""
    if champion is None:
        return GateDecision(True, "no champion yet: the first model is promoted", candidate)
    loss_limit = champion.eval_loss * (1 + settings.loss_tolerance)
    details: dict[str, float | None] = {
        "candidate_eval_loss": candidate.eval_loss,
        "champion_eval_loss": champion.eval_loss,
        "loss_limit": loss_limit,
        "candidate_fact_accuracy": candidate.fact_accuracy,
        "champion_fact_accuracy": champion.fact_accuracy,
    }
    problems = []
    if candidate.eval_loss > loss_limit:
        problems.append(
            f"eval loss {candidate.eval_loss:.4f} > champion's {champion.eval_loss:.4f} "
            f"+ {settings.loss_tolerance:.0%}"
        )
    if candidate.fact_accuracy is not None and champion.fact_accuracy is not None:
        floor = champion.fact_accuracy - settings.fact_accuracy_tolerance
        if candidate.fact_accuracy < floor:
            problems.append(
                f"fact accuracy {candidate.fact_accuracy:.0%} < champion's "
                f"{champion.fact_accuracy:.0%} - {settings.fact_accuracy_tolerance:.0%}"
            )
    if problems:
        return GateDecision(
            False, "not promoted: " + "; ".join(problems), candidate, champion, details
        )
    return GateDecision(
        True,
        f"promoted: eval loss {candidate.eval_loss:.4f} vs champion's {champion.eval_loss:.4f}",
        candidate,
        champion,
        details,
    )


ROLLED_BACK_TAG = "rolled_back"  # set on a version by `finetune-phi endpoint rollback`


def operator_veto(decision: GateDecision, candidate_tags: dict[str, str]) -> GateDecision:
    """Pure: an operator's rollback outranks the numbers. A candidate version tagged
    `rolled_back` is not promoted again by a later run with the same inputs (which would find
    the same job and the same version, and beat the older champion again); deleting the tag
    lifts the veto."""
    why = candidate_tags.get(ROLLED_BACK_TAG)
    if not decision.promote or not why:
        return decision
    return GateDecision(
        False,
        f"not promoted: an operator rolled this version back ({why}); delete its tag "
        f"'{ROLLED_BACK_TAG}' to let the gate consider it again",
        decision.candidate,
        decision.champion,
        decision.details,
    )
