"""Conversations shaped like HuggingFaceH4/ultrachat_200k, in made-up words, for the real-size
rehearsal (issue #13): ultrachat's schema, turn counts and lengths; none of its text.

What is matched, and where the numbers come from:

- **Schema.** `prompt`, `prompt_id` (the prompt's sha256, as in ultrachat_200k), `messages`:
  user and assistant alternating, starting with the user (whose first message is the prompt)
  and ending with the assistant. No system messages (ultrachat has none).
- **Splits.** ultrachat_200k has `train_sft` 207,865, `test_sft` 23,110, `train_gen` 256,032
  and `test_gen` 28,304 rows (the dataset card's `dataset_info`, and the Hub viewer: 208k /
  23.1k / 256k / 28.3k). `write_ultrachat_like` writes the same four splits, at any size.
- **Turns.** UltraChat averages 3.85 user/assistant rounds per dialogue (Ding et al. 2023,
  "Enhancing Chat Language Models by Scaling High-quality Instructional Conversations",
  arXiv:2305.14233, the statistics table); a public re-packaging of all 1,468,346 UltraChat
  dialogues (huggingface.co/datasets/metythorn/ultrachat) reports 7.7 messages per
  conversation, the same 3.85 rounds. `ROUNDS_DISTRIBUTION` below has mean 3.86, 1-8 rounds.
- **Length.** The same paper gives 1,467.4 tokens per dialogue on average (309.3 per
  utterance; the paper's three figures could not be re-read from a public copy while writing
  this, the others were). The dataset card agrees: `test_sft` is 154,695,659 bytes for 23,110
  rows (`dataset_info` of ucla-cmllab/ultrachat_100k, which keeps ultrachat_200k's test_sft),
  about 6,700 bytes a row; less the `prompt` copy and the ids, roughly 6,000 characters of
  messages, some 1,400-1,500 tokens at the usual ~4 characters per token. The
  issue quotes "roughly 1,000-1,500 tokens, a long tail past 2,048". The paper gives a mean,
  not percentiles, so the spread is a modelling choice: a log-normal with median 1,250 and
  sigma 0.45 has mean 1,383, p95 2,620 and 14% of conversations past 2,048 tokens; it is cut
  at 16 and 8,192 tokens (the longest ultrachat conversations run to several thousand).
  Rounds and length are coupled (a Gaussian copula, correlation 0.5): a long conversation
  tends to have more rounds, while each keeps its distribution exactly.

Lengths are drawn in Phi-3 tokens (the chat template's included) and written as words at
`TOKENS_PER_WORD` tokens a word, the ratio the real-size tokenizer (`finetune_phi.real_size`,
a BPE trained on this very text) measures; `approx_tokens` is the same arithmetic backwards.

The words come from a fixed made-up language (`LEXICON`, Zipf-distributed like any language,
short words frequent), with sentences, paragraphs, numbered lists and numbers, so a BPE
tokenizer learns it the way it learns English. Pure and deterministic: conversation `i` of
seed `s` depends on `(s, i)` only, so `generate_ultrachat_like(10, s)` is the first ten of
`generate_ultrachat_like(1000, s)`. No IO except `write_ultrachat_like`.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

__all__ = [
    "LENGTH_MEDIAN_TOKENS",
    "LENGTH_SIGMA",
    "LEXICON",
    "MAX_TOKENS",
    "ROUNDS_DISTRIBUTION",
    "TOKENS_PER_WORD",
    "approx_tokens",
    "generate_ultrachat_like",
    "write_ultrachat_like",
]

# --- the shape -----------------------------------------------------------------------------

LENGTH_MEDIAN_TOKENS = 1250
LENGTH_SIGMA = 0.45
MIN_TOKENS = 16
MAX_TOKENS = 8192
ROUNDS_LENGTH_CORRELATION = 0.5

# P(rounds = k) for k = 1..8: mean 3.86 (ultrachat: 3.85).
ROUNDS_DISTRIBUTION: tuple[float, ...] = (0.08, 0.16, 0.22, 0.21, 0.15, 0.09, 0.05, 0.04)

# Measured with the real-size tokenizer on this text (1.31; tests/test_real_size.py checks it
# stays so): tokens per word, punctuation and layout included. The usual rule of thumb for
# English in a 32k Llama-style tokenizer such as Phi-3's is about 1.3 as well.
TOKENS_PER_WORD = 1.3
# The chat template's tokens per message (<|user|> or <|assistant|>, which swallow the newline
# after them, and <|end|>, which swallows its own), plus one end-of-text token.
TEMPLATE_TOKENS_PER_MESSAGE = 2
TEMPLATE_TOKENS_PER_CONVERSATION = 1

# Relative length of a user message to an assistant reply (medians; each drawn log-normally).
USER_WEIGHT_MEDIAN, USER_WEIGHT_SIGMA = 0.25, 0.6
ASSISTANT_WEIGHT_MEDIAN, ASSISTANT_WEIGHT_SIGMA = 1.0, 0.35
MIN_WORDS = 3

# --- the made-up language --------------------------------------------------------------------

_SINGLE_ONSETS = "b c d f g h j k l m n p r s t v w z"
_ONSETS = tuple(
    ("", "", *_SINGLE_ONSETS.split(), *_SINGLE_ONSETS.split())
    + ("br", "cr", "dr", "fl", "gr", "pl", "pr", "sk", "sl", "st", "th", "tr", "sh", "ch", "qu")
)
_NUCLEI = tuple(3 * ("a", "e", "i", "o", "u") + ("ai", "ea", "ou", "io", "ie", "y", "ee", "oa"))
_CODAS = tuple(
    8 * ("",) + ("n", "r", "s", "l", "m", "t", "k", "d") + ("nd", "st", "rk", "ng", "x", "th")
)
LEXICON_SIZE = 40_000
ZIPF_EXPONENT = 1.15
ZIPF_OFFSET = 2.7  # Zipf-Mandelbrot: the frequency of rank r is (r + 2.7) ** -1.15, normalised


def _make_lexicon() -> tuple[str, ...]:
    """The made-up language's words, most frequent first; fixed, whatever the data's seed."""
    rng = random.Random("finetune-phi ultrachat-like lexicon v1")
    words: dict[str, None] = {}
    while len(words) < LEXICON_SIZE:
        rank = len(words)
        # Frequent words are short (the top hundred or so have one syllable), rare ones long
        # (up to four).
        spread = max(0.0, math.log10(rank + 1) - 1.5) * 0.6
        syllables = 1 + min(3, int(spread + rng.random() * 0.9))
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(syllables)
        )
        if len(word) > 1:
            words.setdefault(word)
    return tuple(words)


LEXICON: tuple[str, ...] = _make_lexicon()
_CUMULATIVE = tuple(
    itertools.accumulate((r + ZIPF_OFFSET) ** -ZIPF_EXPONENT for r in range(LEXICON_SIZE))
)
_TOTAL_WEIGHT = _CUMULATIVE[-1]
_NORMAL = NormalDist()
_ROUNDS_CUMULATIVE = tuple(itertools.accumulate(ROUNDS_DISTRIBUTION))


def _word(rng: random.Random) -> str:
    return LEXICON[bisect.bisect(_CUMULATIVE, rng.random() * _TOTAL_WEIGHT)]


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(1, 100))
    if kind < 0.7:
        return str(rng.randint(1800, 2030))
    if kind < 0.85:
        return f"{rng.randint(1, 99)}%"
    return f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}"


def _sentence(rng: random.Random, words: int, question: bool) -> str:
    out: list[str] = []
    for index in range(words):
        draw = rng.random()
        token = _number(rng) if draw < 0.02 else _word(rng)
        if draw > 0.985:
            token = token.capitalize()  # a name
        if index == 0:
            token = token.capitalize()
        elif index < words - 1 and rng.random() < 0.07:
            out[-1] += ","
        out.append(token)
    end = "?" if question else ("!" if rng.random() < 0.03 else ".")
    return " ".join(out) + end


def _sentences(rng: random.Random, words: int, question_share: float) -> list[str]:
    """Sentences of 6-28 words (the last one shorter) adding up to `words` words."""
    out = []
    left = words
    while left > 0:
        length = min(left, rng.randint(6, 28))
        if 0 < left - length < MIN_WORDS:
            length = left
        out.append(_sentence(rng, length, rng.random() < question_share))
        left -= length
    return out


def _paragraphs(rng: random.Random, sentences: list[str]) -> list[str]:
    out = []
    while sentences:
        take = rng.randint(2, 6)
        out.append(" ".join(sentences[:take]))
        sentences = sentences[take:]
    return out


def _user_message(rng: random.Random, words: int) -> str:
    sentences = _sentences(rng, words, question_share=0.35)
    if words < 80:
        return " ".join(sentences)
    # A long prompt: material to work on, then the request (ultrachat's third sector).
    return "\n\n".join(_paragraphs(rng, sentences))


def _assistant_message(rng: random.Random, words: int) -> str:
    sentences = _sentences(rng, words, question_share=0.03)
    if words < 60:
        return " ".join(sentences)
    if rng.random() < 0.35 and len(sentences) >= 5:
        # A numbered list between an introduction and a conclusion.
        items = rng.randint(3, min(9, len(sentences) - 2))
        head, listed, tail = sentences[:1], sentences[1 : 1 + items], sentences[1 + items :]
        lines = "\n".join(f"{n}. {s}" for n, s in enumerate(listed, 1))
        return "\n\n".join([*head, lines, *_paragraphs(rng, tail)])
    return "\n\n".join(_paragraphs(rng, sentences))


def _conversation(seed: int, index: int) -> dict[str, Any]:
    rng = random.Random(f"ultrachat-like:{seed}:{index}")
    z_length = rng.gauss(0.0, 1.0)
    z_rounds = ROUNDS_LENGTH_CORRELATION * z_length + math.sqrt(
        1 - ROUNDS_LENGTH_CORRELATION**2
    ) * rng.gauss(0.0, 1.0)
    total = LENGTH_MEDIAN_TOKENS * math.exp(LENGTH_SIGMA * z_length)
    total = min(MAX_TOKENS, max(MIN_TOKENS, total))
    rounds = 1 + bisect.bisect(_ROUNDS_CUMULATIVE, _NORMAL.cdf(z_rounds) * _ROUNDS_CUMULATIVE[-1])
    rounds = min(rounds, len(ROUNDS_DISTRIBUTION))

    weights = []
    for _ in range(rounds):
        weights.append(USER_WEIGHT_MEDIAN * math.exp(USER_WEIGHT_SIGMA * rng.gauss(0.0, 1.0)))
        weights.append(
            ASSISTANT_WEIGHT_MEDIAN * math.exp(ASSISTANT_WEIGHT_SIGMA * rng.gauss(0.0, 1.0))
        )
    text_tokens = (
        total - TEMPLATE_TOKENS_PER_CONVERSATION - TEMPLATE_TOKENS_PER_MESSAGE * 2 * rounds
    )
    scale = max(0.0, text_tokens) / sum(weights) / TOKENS_PER_WORD
    messages = []
    for position, weight in enumerate(weights):
        words = max(MIN_WORDS, round(weight * scale))
        if position % 2 == 0:
            messages.append({"role": "user", "content": _user_message(rng, words)})
        else:
            messages.append({"role": "assistant", "content": _assistant_message(rng, words)})
    prompt = messages[0]["content"]
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "messages": messages,
    }


def generate_ultrachat_like(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` conversations in ultrachat_200k's schema and shape (see the module's notes)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_conversation(seed, index) for index in range(n)]


def approx_tokens(messages: list[dict[str, str]]) -> int:
    """A conversation's length in Phi-3 tokens as this generator reckons it (words times
    `TOKENS_PER_WORD`, plus the chat template's tokens); the real-size tokenizer's count is
    within a few percent of it on this text."""
    words = sum(len(m["content"].split()) for m in messages)
    return round(
        words * TOKENS_PER_WORD
        + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
        + TEMPLATE_TOKENS_PER_CONVERSATION
    )


def _split_seed(seed: int, split: str) -> int:
    """Each split its own stream, so no conversation appears in two splits."""
    digest = hashlib.sha256(f"ultrachat-like:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def write_ultrachat_like(
    folder: Path,
    *,
    train_sft: int,
    test_sft: int,
    train_gen: int = 0,
    test_gen: int = 0,
    seed: int = 0,
    shards: int = 1,
) -> Path:
    """Write an ultrachat_200k-shaped dataset as a folder in the Hub's layout (Parquet shards
    per split under `data/`, a README declaring the `default` configuration), so that
    `datasets.load_dataset(str(folder), "default", split="train_sft[:1%]")` reads it exactly
    as it reads HuggingFaceH4/ultrachat_200k. Splits of size 0 are left out. Returns the folder.
    """
    from finetune_phi.chat_data.hub_layout import write_hub_dataset

    sizes: Mapping[str, int] = {
        "train_sft": train_sft,
        "test_sft": test_sft,
        "train_gen": train_gen,
        "test_gen": test_gen,
    }
    splits = {
        split: generate_ultrachat_like(size, _split_seed(seed, split))
        for split, size in sizes.items()
        if size > 0
    }
    if not splits:
        raise ValueError("write_ultrachat_like: every split is empty")
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    return write_hub_dataset(
        folder,
        splits,
        shards=shards,
        description=(
            "Conversations in ultrachat_200k's schema, turn counts and lengths, in made-up "
            f"words (finetune_phi.chat_data.ultrachat_like, seed {seed}): {counts}."
        ),
    )
