"""Measure a saved model on held-out conversations, where the model is: a job's step.

    python -m serving.evaluate --model_dir DIR --test_file FILE --output_dir OUT \
        [--questions_file QUESTIONS.json] [--max_conversations N] [--key KEY]

The quality gate's numbers are measured here, in the training job (a second step after the
trainer, on the training compute) and in evaluation jobs (a registered champion measured on
new data), never in the Prefect worker: at Phi-3.5-mini's size a model is 7.6 GB of bf16
weights (15 GB in fp32 on a CPU) and scoring 240 conversations of 1,000-2,000 tokens takes
minutes on a GPU and hours on a worker's CPU.

The model is loaded exactly as a deployment loads it (`Scorer.load` of the MLflow model), so a
candidate and a champion are measured the same way. What is measured:

- the token-weighted mean cross-entropy over every token of each templated conversation (the
  first `max_conversations` of the file), and its perplexity;
- greedy answers (48 new tokens) to the questions in `questions_file` (a JSON list of strings),
  when given. Judging an answer is not done here: the gate (in the core) checks them.

The result is `OUT/evaluation.json`, written atomically, carrying `key` (what was asked: the
dataset, the settings; the caller's hash) so that a resumed job whose output already holds an
evaluation with the same key does not measure again. With several processes (a distributed
job: `RANK` set), only rank 0 measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.contract import GenerationParams
from serving.score import Scorer

EVALUATION_FILE = "evaluation.json"
# Conversations per forward pass: at most this many, and at most TOKENS_PER_BATCH padded
# tokens (the logits alone are tokens x 32,064 x 4 bytes: 1 GB for 8,192 tokens).
MAX_BATCH_CONVERSATIONS = 16
TOKENS_PER_BATCH = 8192
CPU_TOKENS_PER_BATCH = 2048
LOSS_CHUNK_POSITIONS = 1024  # logits computed for this many positions of a batch at a time
ANSWER_TOKENS = 48


def read_conversations(test_file: str | Path, limit: int) -> list[list[dict[str, str]]]:
    """The `messages` of the first `limit` rows of a JSONL file in ultrachat's schema."""
    rows: list[list[dict[str, str]]] = []
    with Path(test_file).open(encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line)["messages"])
    return rows


def token_batches(lengths: Sequence[int], budget: int = TOKENS_PER_BATCH) -> list[list[int]]:
    """Indices grouped in order into batches of at most MAX_BATCH_CONVERSATIONS rows whose
    padded size (rows x longest) stays within `budget` tokens; a longer row goes alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index, length in enumerate(lengths):
        widest = max(longest, length)
        if current and (
            len(current) >= MAX_BATCH_CONVERSATIONS or widest * (len(current) + 1) > budget
        ):
            batches.append(current)
            current, widest = [], length
        current.append(index)
        longest = widest
    if current:
        batches.append(current)
    return batches


def held_out_loss(scorer: Any, conversations: Sequence[list[dict[str, str]]]) -> tuple[float, int]:
    """(summed cross-entropy, scored tokens) over the templated conversations."""
    import torch

    model, tokenizer = scorer.model, scorer.tokenizer
    context = model.config.max_position_embeddings
    encoded = [
        tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"][:context]
        for c in conversations
    ]
    device = model.device
    total_loss, total_tokens = 0.0, 0
    # On a CPU, padding is compute thrown away and attention's memory grows with the padded
    # width: conversations of ultrachat's length go one at a time there.
    budget = TOKENS_PER_BATCH if device.type == "cuda" else CPU_TOKENS_PER_BATCH
    for batch in token_batches([len(ids) for ids in encoded], budget):
        rows = [encoded[i] for i in batch]
        width = max(len(ids) for ids in rows)
        # Right padding, masked out: with left padding, positions would shift by the pad count.
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in rows])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows])
        labels = input_ids.masked_fill(mask == 0, -100)
        with torch.inference_mode():
            # The decoder's hidden states, then the vocabulary projection and the loss a slice
            # of positions at a time: the whole batch's logits (tokens x 32,064 floats, and
            # the copies the loss makes) were 2-3 GB at ultrachat lengths in the rehearsal.
            hidden = model.get_decoder()(
                input_ids=input_ids.to(device), attention_mask=mask.to(device)
            ).last_hidden_state[:, :-1]
            targets = labels[:, 1:].to(device)
            head = model.get_output_embeddings()
            for start in range(0, hidden.shape[1], LOSS_CHUNK_POSITIONS):
                end = start + LOSS_CHUNK_POSITIONS
                logits = head(hidden[:, start:end]).float()
                total_loss += float(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]),
                        targets[:, start:end].reshape(-1),
                        ignore_index=-100,
                        reduction="sum",
                    )
                )
        total_tokens += int((targets != -100).sum())
    return total_loss, total_tokens


def measure(
    model_dir: str | Path,
    test_file: str | Path,
    questions: Sequence[str] = (),
    *,
    max_conversations: int = 240,
    key: str = "",
) -> dict[str, Any]:
    """Load the MLflow model under `model_dir` as a deployment would, and measure it."""
    started = time.monotonic()
    scorer = Scorer.load(model_dir)
    conversations = read_conversations(test_file, max_conversations)
    loss, tokens = held_out_loss(scorer, conversations)
    eval_loss = loss / max(tokens, 1)
    greedy = GenerationParams(max_new_tokens=ANSWER_TOKENS, do_sample=False)
    answers = [
        {"question": q, "answer": scorer.reply([{"role": "user", "content": q}], greedy)}
        for q in questions
    ]
    return {
        "key": key,
        "model_dir": str(scorer.model_path),
        "eval_loss": eval_loss,
        "perplexity": math.exp(min(eval_loss, 50.0)),
        "conversations": len(conversations),
        "tokens": tokens,
        "answers": answers,
        "dtype": str(scorer.model.dtype).removeprefix("torch."),
        "device": str(scorer.model.device),
        "load_seconds": round(scorer.load_seconds, 3),
        "seconds": round(time.monotonic() - started, 3),
    }


def already_measured(output_dir: Path, key: str) -> dict[str, Any] | None:
    path = output_dir / EVALUATION_FILE
    if not key or not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data if data.get("key") == key else None


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    staging.replace(path)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving.evaluate",
        description="Measure a saved MLflow model on held-out conversations (held-out loss, "
        "greedy answers to questions); writes OUTPUT_DIR/evaluation.json.",
    )
    parser.add_argument("--model_dir", required=True, help="the MLflow model (or a folder above)")
    parser.add_argument("--test_file", required=True, help="JSONL in ultrachat's schema")
    parser.add_argument("--output_dir", required=True, help=f"where {EVALUATION_FILE} goes")
    parser.add_argument("--questions_file", help="a JSON list of questions to answer greedily")
    parser.add_argument(
        "--max_conversations", type=int, default=240, help="conversations scored (the first N)"
    )
    parser.add_argument(
        "--key",
        default="",
        help="what was asked (the caller's hash): an output with the same "
        "key is kept and nothing is measured",
    )
    args = parser.parse_args(list(argv))
    if args.max_conversations < 1:
        parser.error("--max_conversations must be at least 1")
    return args


def main(argv: Sequence[str]) -> dict[str, Any] | None:
    args = parse_arguments(argv)
    if int(os.environ.get("RANK", "0")) != 0:
        print("evaluation: rank 0 measures; nothing to do on this rank", flush=True)
        return None
    output_dir = Path(args.output_dir)
    done = already_measured(output_dir, args.key)
    if done is not None:
        print(f"evaluation: {output_dir / EVALUATION_FILE} already answers key {args.key}")
        return done
    questions: list[str] = []
    if args.questions_file:
        questions = [str(q) for q in json.loads(Path(args.questions_file).read_text())]
    print(f"evaluating {args.model_dir} on {args.test_file}", flush=True)
    result = measure(
        args.model_dir,
        args.test_file,
        questions,
        max_conversations=args.max_conversations,
        key=args.key,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(output_dir / EVALUATION_FILE, result)
    print(
        f"evaluation done in {result['seconds']:.1f} s: eval loss {result['eval_loss']:.4f} "
        f"over {result['tokens']:,} tokens of {result['conversations']} conversations, "
        f"{len(questions)} questions answered",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
