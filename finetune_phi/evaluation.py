"""The champion/challenger quality gate: what it measures, where, and how it decides.

    evaluation_spec(profile, dataset_sha256, test_file) -> EvaluationSpec   (pure: what to measure)
    evaluation_job_spec(model, location, spec, ...) -> EvaluationJobSpec   (pure: the job)
    evaluation_from_output(output, label, probes) -> Evaluation            (pure: judged numbers)
    gate_decision(candidate, champion, settings) -> GateDecision           (pure)

The measuring itself (`serving.evaluate`: load the MLflow model as a deployment would, score
the held-out conversations, answer the fact questions greedily) runs in jobs, on the training
compute, never in the flow's process: the candidate in its training job, as a second step
after the trainer, and a registered model (the champion) in an evaluation job whose name is a
function of the version and of `EvaluationSpec.key`, so each version is measured once per
dataset and settings and found again afterwards. Both are measured the same way, on the same
test file: the token-weighted mean cross-entropy over every token of each templated
conversation (what the trainer's eval loss measures for chat data), its perplexity, and, when
the data has them, greedy answers to the fact questions, judged here by their keywords.
Numbers recorded at training time are not reused for the champion: it was evaluated on the
data of its day.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_phi.chat_data.synthetic import FactProbe, answer_matches, fact_probes
from finetune_phi.settings import GateSettings, Profile
from finetune_phi.workspace import (
    EnvironmentRef,
    EvaluationJobSpec,
    EvaluationSpec,
    ModelVersion,
)

# Bump when what `serving.evaluate` measures changes: earlier evaluations are then not reused.
EVALUATION_FORMAT = 1
EVALUATION_EXPERIMENT = "finetune-phi-evaluation"


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
    job: str = ""  # the job that measured it

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


def gate_probes(profile: Profile) -> list[FactProbe]:
    """Fact questions exist only in the project's synthetic data; other data: loss only."""
    return fact_probes() if profile.data.source.kind == "synthetic" else []


def evaluation_key(dataset_sha256: str, max_conversations: int, questions: Sequence[str]) -> str:
    """Names what is asked of a model: the same data, settings and questions, the same key."""
    asked = json.dumps(
        [EVALUATION_FORMAT, dataset_sha256, max_conversations, list(questions)],
        separators=(",", ":"),
    )
    return hashlib.sha256(asked.encode()).hexdigest()[:16]


def evaluation_spec(profile: Profile, dataset_sha256: str, test_file: str) -> EvaluationSpec:
    """What the gate measures every model on for this dataset and profile (pure)."""
    questions = tuple(p.question for p in gate_probes(profile))
    limit = profile.gate.max_eval_conversations
    return EvaluationSpec(
        test_file=test_file,
        dataset_sha256=dataset_sha256,
        max_conversations=limit,
        key=evaluation_key(dataset_sha256, limit, questions),
        questions=questions,
    )


def evaluation_job_name(model: ModelVersion, spec: EvaluationSpec) -> str:
    """`eval-<model>-v<version>-<key>`: Azure's job-name characters only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", model.name).strip("-").lower()
    version = re.sub(r"[^A-Za-z0-9_-]+", "-", model.version)
    return f"eval-{name}-v{version}-{spec.key}"


def evaluation_job_spec(
    model: ModelVersion,
    location: str,
    spec: EvaluationSpec,
    *,
    environment: EnvironmentRef | None = None,
    compute: str | None = None,
) -> EvaluationJobSpec:
    return EvaluationJobSpec(
        name=evaluation_job_name(model, spec),
        experiment=EVALUATION_EXPERIMENT,
        model=model,
        model_location=location,
        evaluation=spec,
        environment=environment,
        compute=compute,
        tags={
            "model": f"{model.name}:{model.version}",
            "dataset_sha256": spec.dataset_sha256,
            "evaluation_key": spec.key,
        },
    )


def answers(output: Mapping[str, Any] | None, spec: EvaluationSpec) -> bool:
    """Whether a job's evaluation.json measured what `spec` asks (the same key)."""
    return output is not None and output.get("key") == spec.key


def evaluation_from_output(
    output: Mapping[str, Any], label: str, probes: Sequence[FactProbe], *, job: str = ""
) -> Evaluation:
    """The judged evaluation from a job's evaluation.json: each answer is checked against
    its question's keywords (answers to questions the probes do not know are ignored)."""
    by_question = {p.question: p for p in probes}
    facts = tuple(
        FactAnswer(
            a["question"], a["answer"], answer_matches(by_question[a["question"]], a["answer"])
        )
        for a in output.get("answers", [])
        if a["question"] in by_question
    )
    return Evaluation(
        model=label,
        eval_loss=float(output["eval_loss"]),
        perplexity=float(output["perplexity"]),
        conversations=int(output["conversations"]),
        tokens=int(output["tokens"]),
        facts=facts,
        seconds=float(output.get("seconds", 0.0)),
        job=job,
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
