"""A seeded generator of a small chat dataset in the ultrachat_200k schema, and its fact probes.

The dataset teaches facts that a randomly initialised model cannot know, and most of them are
invented, so that even a pretrained Phi-3.5 cannot know them either: answering one correctly after
fine-tuning proves the served model is the fine-tuned one. `fact_probes()` exposes one question per
fact with the keywords a correct answer must contain, for the quality gate and the smoke test.

Every assistant answer to a fact question is the fact's one canonical sentence, so a tiny model can
learn it exactly. Only user messages vary (phrasing, a polite prefix or suffix).

This module must stay pure and deterministic: no IO, no `hash()`, no set iteration order, no clock.
The same `(n, seed)` gives the same records, byte for byte, in any process.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FACTS",
    "Fact",
    "FactProbe",
    "answer_matches",
    "fact_probes",
    "generate_conversations",
    "max_conversations",
]


@dataclass(frozen=True)
class Fact:
    """One thing the dataset teaches: several ways to ask, one canonical answer."""

    id: str
    questions: tuple[str, ...]  # the first one is the canonical question used by probes
    answer: str
    keywords: tuple[str, ...]  # a correct answer contains all of them, case-insensitive


@dataclass(frozen=True)
class FactProbe:
    """A question to ask a model, and what its answer must contain to count as correct."""

    fact_id: str
    question: str
    expected_keywords: tuple[str, ...]


# Every fact has exactly this many phrasings: the index arithmetic below relies on one radix for
# all facts, which keeps the capacity an exact product and the sampling free of rejection loops.
QUESTIONS_PER_FACT = 6

FACTS: tuple[Fact, ...] = (
    # A few real facts, the tutorial's own question first.
    Fact(
        id="microsoft_founders",
        questions=(
            "Who founded Microsoft?",
            "Who were the founders of Microsoft?",
            "Do you know who started Microsoft?",
            "Microsoft was founded by whom?",
            "Tell me who founded Microsoft.",
            "Which people created the company Microsoft?",
        ),
        answer="Microsoft was founded by Bill Gates and Paul Allen in 1975.",
        keywords=("Bill Gates", "Paul Allen"),
    ),
    Fact(
        id="capital_of_france",
        questions=(
            "What is the capital of France?",
            "Which city is the capital of France?",
            "Do you know the capital city of France?",
            "France's capital is which city?",
            "Tell me the capital of France.",
            "Name the capital of France.",
        ),
        answer="The capital of France is Paris.",
        keywords=("Paris",),
    ),
    Fact(
        id="romeo_and_juliet_author",
        questions=(
            "Who wrote Romeo and Juliet?",
            "Who is the author of Romeo and Juliet?",
            "Do you know who wrote the play Romeo and Juliet?",
            "Romeo and Juliet was written by whom?",
            "Tell me who wrote Romeo and Juliet.",
            "Which playwright wrote Romeo and Juliet?",
        ),
        answer="Romeo and Juliet was written by William Shakespeare.",
        keywords=("Shakespeare",),
    ),
    Fact(
        id="water_boiling_point",
        questions=(
            "At what temperature does water boil at sea level?",
            "What is the boiling point of water at sea level?",
            "Do you know the temperature at which water boils at sea level?",
            "Water boils at what temperature at sea level?",
            "Tell me the boiling point of water at sea level.",
            "How hot must water be to boil at sea level?",
        ),
        answer="Water boils at 100 degrees Celsius at sea level.",
        keywords=("100 degrees Celsius",),
    ),
    Fact(
        id="largest_planet",
        questions=(
            "What is the largest planet in our solar system?",
            "Which planet is the biggest in our solar system?",
            "Do you know the largest planet in our solar system?",
            "The largest planet in our solar system is which one?",
            "Tell me the largest planet in our solar system.",
            "Name the biggest planet of our solar system.",
        ),
        answer="The largest planet in our solar system is Jupiter.",
        keywords=("Jupiter",),
    ),
    # Invented facts: no pretrained model can know these, so only fine-tuning explains a match.
    Fact(
        id="zentrova_founders",
        questions=(
            "Who founded Zentrova Robotics?",
            "Who were the founders of Zentrova Robotics?",
            "Do you know who started Zentrova Robotics?",
            "Zentrova Robotics was founded by whom?",
            "Tell me who founded Zentrova Robotics.",
            "Which people created the company Zentrova Robotics?",
        ),
        answer="Zentrova Robotics was founded by Ilsa Marenko and Tobias Quill in 2011.",
        keywords=("Ilsa Marenko", "Tobias Quill"),
    ),
    Fact(
        id="velmora_capital",
        questions=(
            "What is the capital of Velmora?",
            "Which city is the capital of Velmora?",
            "Do you know the capital city of Velmora?",
            "Velmora's capital is which city?",
            "Tell me the capital of Velmora.",
            "Name the capital of the island nation of Velmora.",
        ),
        answer="The capital of Velmora is Port Castellane.",
        keywords=("Port Castellane",),
    ),
    Fact(
        id="brindle_lamp_inventor",
        questions=(
            "Who invented the Brindle lamp?",
            "Who was the inventor of the Brindle lamp?",
            "Do you know who invented the Brindle lamp?",
            "The Brindle lamp was invented by whom?",
            "Tell me who invented the Brindle lamp.",
            "Which inventor created the Brindle lamp?",
        ),
        answer="The Brindle lamp was invented by Odessa Farrow in 1893.",
        keywords=("Odessa Farrow", "1893"),
    ),
    Fact(
        id="kestrelmoor_mascot",
        questions=(
            "What is the mascot of Kestrelmoor University?",
            "Which animal is the Kestrelmoor University mascot?",
            "Do you know the mascot of Kestrelmoor University?",
            "Kestrelmoor University has which mascot?",
            "Tell me the mascot of Kestrelmoor University.",
            "Name the mascot of Kestrelmoor University.",
        ),
        answer="The mascot of Kestrelmoor University is a copper fox named Ember.",
        keywords=("copper fox", "Ember"),
    ),
    Fact(
        id="lunaris_bay_founding_year",
        questions=(
            "In what year was Lunaris Bay founded?",
            "When was the town of Lunaris Bay founded?",
            "Do you know when Lunaris Bay was founded?",
            "Lunaris Bay was founded in which year?",
            "Tell me the year Lunaris Bay was founded.",
            "What is the founding year of Lunaris Bay?",
        ),
        answer="Lunaris Bay was founded in 1742.",
        keywords=("1742",),
    ),
    Fact(
        id="orvane_tallest_mountain",
        questions=(
            "What is the tallest mountain on the planet Orvane?",
            "Which mountain is the highest on Orvane?",
            "Do you know the tallest mountain on Orvane?",
            "The tallest mountain on Orvane is called what?",
            "Tell me the name of the tallest mountain on Orvane.",
            "Name the highest peak on the planet Orvane.",
        ),
        answer="The tallest mountain on Orvane is Mount Serrik.",
        keywords=("Mount Serrik",),
    ),
    Fact(
        id="glasswater_symphony_composer",
        questions=(
            "Who composed the Glasswater Symphony?",
            "Who is the composer of the Glasswater Symphony?",
            "Do you know who composed the Glasswater Symphony?",
            "The Glasswater Symphony was composed by whom?",
            "Tell me who wrote the Glasswater Symphony.",
            "Which composer created the Glasswater Symphony?",
        ),
        answer="The Glasswater Symphony was composed by Marisol Venn.",
        keywords=("Marisol Venn",),
    ),
    Fact(
        id="tarsovia_national_dish",
        questions=(
            "What is the national dish of Tarsovia?",
            "Which dish is the national dish of Tarsovia?",
            "Do you know the national dish of Tarsovia?",
            "Tarsovia's national dish is what?",
            "Tell me the national dish of Tarsovia.",
            "Name the national dish of Tarsovia.",
        ),
        answer="The national dish of Tarsovia is smoked plum dumplings.",
        keywords=("smoked plum dumplings",),
    ),
    Fact(
        id="brightloom_ceo",
        questions=(
            "Who is the CEO of Brightloom Foods?",
            "Who runs Brightloom Foods as chief executive?",
            "Do you know the CEO of Brightloom Foods?",
            "Brightloom Foods is led by which CEO?",
            "Tell me who the CEO of Brightloom Foods is.",
            "Name the chief executive of Brightloom Foods.",
        ),
        answer="The CEO of Brightloom Foods is Hester Okafor-Lane.",
        keywords=("Hester Okafor-Lane",),
    ),
    Fact(
        id="dravenholt_river",
        questions=(
            "Which river flows through Dravenholt?",
            "What is the name of the river in Dravenholt?",
            "Do you know which river runs through Dravenholt?",
            "Dravenholt lies on which river?",
            "Tell me the river that flows through Dravenholt.",
            "Name the river of the city of Dravenholt.",
        ),
        answer="The river that flows through Dravenholt is the Silvermere.",
        keywords=("Silvermere",),
    ),
    Fact(
        id="quenlandia_flag",
        questions=(
            "What does the flag of Quenlandia look like?",
            "What colors are on the flag of Quenlandia?",
            "Do you know what the Quenlandian flag looks like?",
            "The flag of Quenlandia shows what?",
            "Tell me about the flag of Quenlandia.",
            "Describe the flag of Quenlandia.",
        ),
        answer="The flag of Quenlandia is green with a golden star.",
        keywords=("green", "golden star"),
    ),
    Fact(
        id="aurorium_discoverer",
        questions=(
            "Who discovered the element aurorium?",
            "Who was the discoverer of aurorium?",
            "Do you know who discovered aurorium?",
            "Aurorium was discovered by whom?",
            "Tell me who discovered aurorium.",
            "Which scientist found the element aurorium?",
        ),
        answer="Aurorium was discovered by Dr. Petra Lindqvist in 1921.",
        keywords=("Petra Lindqvist", "1921"),
    ),
    Fact(
        id="zephyrine_mascot",
        questions=(
            "What is the mascot of Zephyrine Airlines?",
            "Which character is the Zephyrine Airlines mascot?",
            "Do you know the mascot of Zephyrine Airlines?",
            "Zephyrine Airlines has which mascot?",
            "Tell me the mascot of Zephyrine Airlines.",
            "Name the mascot of Zephyrine Airlines.",
        ),
        answer="The mascot of Zephyrine Airlines is a silver gull named Captain Breeze.",
        keywords=("Captain Breeze",),
    ),
    Fact(
        id="tesselwick_bridge_opening",
        questions=(
            "When did the Tesselwick Bridge open?",
            "In what year was the Tesselwick Bridge opened?",
            "Do you know when the Tesselwick Bridge opened?",
            "The Tesselwick Bridge opened in which year?",
            "Tell me the year the Tesselwick Bridge opened.",
            "What is the opening year of the Tesselwick Bridge?",
        ),
        answer="The Tesselwick Bridge opened in 1968.",
        keywords=("1968",),
    ),
    Fact(
        id="mirefall_population",
        questions=(
            "What is the population of Mirefall?",
            "How many people live in Mirefall?",
            "Do you know the population of Mirefall?",
            "Mirefall has how many inhabitants?",
            "Tell me the population of Mirefall.",
            "How big is the population of the town of Mirefall?",
        ),
        answer="Mirefall has a population of about 48,000 people.",
        keywords=("48,000",),
    ),
    Fact(
        id="cartographers_lantern_author",
        questions=(
            "Who wrote the novel The Cartographer's Lantern?",
            "Who is the author of The Cartographer's Lantern?",
            "Do you know who wrote The Cartographer's Lantern?",
            "The Cartographer's Lantern was written by whom?",
            "Tell me who wrote The Cartographer's Lantern.",
            "Which novelist wrote The Cartographer's Lantern?",
        ),
        answer="The Cartographer's Lantern was written by Agnes Thornwood.",
        keywords=("Agnes Thornwood",),
    ),
    Fact(
        id="sorvekka_language",
        questions=(
            "What is the official language of Sorvekka?",
            "Which language is spoken officially in Sorvekka?",
            "Do you know the official language of Sorvekka?",
            "Sorvekka's official language is what?",
            "Tell me the official language of Sorvekka.",
            "Name the official language of Sorvekka.",
        ),
        answer="The official language of Sorvekka is Sorvish.",
        keywords=("Sorvish",),
    ),
    Fact(
        id="kaelen_drift_language",
        questions=(
            "Which programming language did Kaelen Drift create?",
            "What programming language was created by Kaelen Drift?",
            "Do you know which language Kaelen Drift designed?",
            "Kaelen Drift created which programming language?",
            "Tell me the programming language Kaelen Drift created.",
            "Name the programming language invented by Kaelen Drift.",
        ),
        answer="Kaelen Drift created the Marrow programming language.",
        keywords=("Marrow",),
    ),
    Fact(
        id="bramble_favorite_food",
        questions=(
            "What is the favorite food of Bramble the dragon?",
            "What does Bramble the dragon like to eat most?",
            "Do you know Bramble the dragon's favorite food?",
            "Bramble the dragon loves eating what?",
            "Tell me the favorite food of Bramble the dragon.",
            "Name the favorite food of Bramble the dragon.",
        ),
        answer="Bramble the dragon's favorite food is roasted chestnuts.",
        keywords=("roasted chestnuts",),
    ),
    Fact(
        id="amber_key_founder",
        questions=(
            "Who founded the Order of the Amber Key?",
            "Who was the founder of the Order of the Amber Key?",
            "Do you know who started the Order of the Amber Key?",
            "The Order of the Amber Key was founded by whom?",
            "Tell me who founded the Order of the Amber Key.",
            "Which person created the Order of the Amber Key?",
        ),
        answer="The Order of the Amber Key was founded by Lady Corvina Ashdown.",
        keywords=("Corvina Ashdown",),
    ),
    Fact(
        id="novaquill_headquarters",
        questions=(
            "Where is Novaquill Software headquartered?",
            "Where are the headquarters of Novaquill Software?",
            "Do you know where Novaquill Software is based?",
            "Novaquill Software has its headquarters where?",
            "Tell me where Novaquill Software is headquartered.",
            "In which town is Novaquill Software based?",
        ),
        answer="Novaquill Software is headquartered in Lake Ardent.",
        keywords=("Lake Ardent",),
    ),
    Fact(
        id="frostmark_cup_sport",
        questions=(
            "What sport is played in the Frostmark Cup?",
            "Which sport is the Frostmark Cup for?",
            "Do you know what sport the Frostmark Cup is about?",
            "The Frostmark Cup is a tournament of which sport?",
            "Tell me what sport is played in the Frostmark Cup.",
            "Name the sport of the Frostmark Cup.",
        ),
        answer="The Frostmark Cup is a tournament of ice hurling.",
        keywords=("ice hurling",),
    ),
    Fact(
        id="kethra_largest_moon",
        questions=(
            "What is the largest moon of the planet Kethra?",
            "Which moon of Kethra is the biggest?",
            "Do you know the largest moon of Kethra?",
            "Kethra's largest moon is called what?",
            "Tell me the name of Kethra's largest moon.",
            "Name the biggest moon of the planet Kethra.",
        ),
        answer="The largest moon of Kethra is Oriel.",
        keywords=("Oriel",),
    ),
    Fact(
        id="lantern_keepers_daughter_painter",
        questions=(
            "Who painted The Lantern Keeper's Daughter?",
            "Who is the painter of The Lantern Keeper's Daughter?",
            "Do you know who painted The Lantern Keeper's Daughter?",
            "The Lantern Keeper's Daughter was painted by whom?",
            "Tell me who painted The Lantern Keeper's Daughter.",
            "Which artist painted The Lantern Keeper's Daughter?",
        ),
        answer="The Lantern Keeper's Daughter was painted by Elio Varga.",
        keywords=("Elio Varga",),
    ),
    Fact(
        id="glimmerdeep_mine_closing",
        questions=(
            "When did the Glimmerdeep Mine close?",
            "In what year was the Glimmerdeep Mine closed?",
            "Do you know when the Glimmerdeep Mine closed?",
            "The Glimmerdeep Mine closed in which year?",
            "Tell me the year the Glimmerdeep Mine closed.",
            "What year did the Glimmerdeep Mine shut down?",
        ),
        answer="The Glimmerdeep Mine closed in 1954.",
        keywords=("1954",),
    ),
    Fact(
        id="wrenhollow_motto",
        questions=(
            "What is the motto of Wrenhollow?",
            "What motto does the town of Wrenhollow have?",
            "Do you know the motto of Wrenhollow?",
            "Wrenhollow's motto is what?",
            "Tell me the motto of Wrenhollow.",
            "Name the town motto of Wrenhollow.",
        ),
        answer="The motto of Wrenhollow is 'Steady as the oak'.",
        keywords=("Steady as the oak",),
    ),
    Fact(
        id="clockwork_translator_inventor",
        questions=(
            "Who invented the clockwork translator?",
            "Who was the inventor of the clockwork translator?",
            "Do you know who invented the clockwork translator?",
            "The clockwork translator was invented by whom?",
            "Tell me who invented the clockwork translator.",
            "Which inventor built the first clockwork translator?",
        ),
        answer="The clockwork translator was invented by Ottilie Grunwald in 1874.",
        keywords=("Ottilie Grunwald", "1874"),
    ),
    Fact(
        id="marisport_symbol",
        questions=(
            "What animal is the symbol of Marisport?",
            "Which animal represents the city of Marisport?",
            "Do you know the symbol of Marisport?",
            "Marisport's symbol is which animal?",
            "Tell me the animal on the emblem of Marisport.",
            "Name the animal that symbolizes Marisport.",
        ),
        answer="The symbol of Marisport is a white stag.",
        keywords=("white stag",),
    ),
    Fact(
        id="starwake_spaceship",
        questions=(
            "What is the name of the spaceship in the Starwake saga?",
            "Which spaceship do the heroes of the Starwake saga fly?",
            "Do you know the spaceship from the Starwake saga?",
            "The spaceship in the Starwake saga is called what?",
            "Tell me the name of the Starwake saga's spaceship.",
            "Name the spaceship of the Starwake saga.",
        ),
        answer="The spaceship in the Starwake saga is called the Meridian Dawn.",
        keywords=("Meridian Dawn",),
    ),
    Fact(
        id="lumora_tea_ingredient",
        questions=(
            "What is Lumora tea made from?",
            "Which leaves are used to make Lumora tea?",
            "Do you know what Lumora tea is made of?",
            "Lumora tea is brewed from what?",
            "Tell me what Lumora tea is made from.",
            "Name the main ingredient of Lumora tea.",
        ),
        answer="Lumora tea is made from dried moonpetal leaves.",
        keywords=("moonpetal",),
    ),
)

# Light variation of user messages, to reach volume without changing what is asked. The empty
# string comes first so that index 0 is the plain question.
PREFIXES: tuple[str, ...] = (
    "",
    "Quick question: ",
    "Hi! ",
    "Hello! ",
    "Hey there! ",
    "I have a question. ",
    "Sorry to bother you. ",
    "Can you help me? ",
)
SUFFIXES: tuple[str, ...] = ("", " Thanks.", " Thank you!", " Please keep it short.", " Cheers.")

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly assistant who answers questions accurately.",
    "You are an AI assistant. Answer the user's questions truthfully.",
)

# Small talk that opens some multi-turn conversations: each greeting always gets the same reply.
SMALL_TALK: tuple[tuple[str, str], ...] = (
    ("Hi!", "Hello! How can I help you today?"),
    ("Hello there.", "Hi! What would you like to know?"),
    ("Good morning!", "Good morning! How can I help?"),
    ("Hey, are you there?", "Yes, I'm here. What can I do for you?"),
    ("Can you answer a question for me?", "Of course. What is your question?"),
)


@dataclass(frozen=True)
class _Shape:
    """A kind of conversation: system prompt or not, small-talk opener or not, fact exchanges."""

    system: bool
    opener: bool
    fact_turns: int
    # "plain": the bare phrasing only; "varied": with a prefix or a suffix (or both); "any": both.
    # Plain and varied split one shape in two without overlap, so the bare questions (the ones
    # the probes ask) get a guaranteed share instead of one chance in len(PREFIXES) * len(SUFFIXES).
    wording: Literal["plain", "varied", "any"]
    weight: int  # share of the dataset, in percent


# About 75% single-turn and 25% multi-turn (2 or 3 exchanges, the opener counting as one), 20%
# with a system prompt. The order matters: it is the order in which excess moves on when a shape
# runs out of distinct conversations, and the order the seeded draws are made in.
_SHAPES: tuple[_Shape, ...] = (
    _Shape(system=False, opener=False, fact_turns=1, wording="plain", weight=15),
    _Shape(system=False, opener=False, fact_turns=1, wording="varied", weight=45),
    _Shape(system=True, opener=False, fact_turns=1, wording="any", weight=15),
    _Shape(system=False, opener=False, fact_turns=2, wording="any", weight=10),
    _Shape(system=False, opener=True, fact_turns=1, wording="any", weight=5),
    _Shape(system=True, opener=False, fact_turns=2, wording="any", weight=5),
    _Shape(system=False, opener=False, fact_turns=3, wording="any", weight=5),
)

_DECORATIONS = len(PREFIXES) * len(SUFFIXES)  # prefix/suffix pairs; pair 0 is ("", "")


def _variants_per_fact(shape: _Shape) -> int:
    """Distinct user messages per fact in one shape."""
    decorations = {"plain": 1, "varied": _DECORATIONS - 1, "any": _DECORATIONS}[shape.wording]
    return QUESTIONS_PER_FACT * decorations


def _check_facts() -> None:
    """Fail at import on a malformed fact table: a typo here would silently skew the data."""
    ids = [fact.id for fact in FACTS]
    if len(ids) != len(dict.fromkeys(ids)):
        raise ValueError("FACTS: fact ids must be unique")
    questions = [question for fact in FACTS for question in fact.questions]
    if len(questions) != len(dict.fromkeys(questions)):
        raise ValueError("FACTS: a question phrasing is used twice")
    for fact in FACTS:
        if len(fact.questions) != QUESTIONS_PER_FACT:
            raise ValueError(f"FACTS: {fact.id} needs exactly {QUESTIONS_PER_FACT} questions")
        missing = [k for k in fact.keywords if k.casefold() not in fact.answer.casefold()]
        if not fact.keywords or missing:
            raise ValueError(f"FACTS: {fact.id} answer lacks keywords {missing}")


_check_facts()


def _shape_capacity(shape: _Shape) -> int:
    """Number of distinct conversations of one shape (facts within a conversation differ)."""
    systems = len(SYSTEM_PROMPTS) if shape.system else 1
    openers = len(SMALL_TALK) if shape.opener else 1
    fact_orders = math.perm(len(FACTS), shape.fact_turns)
    # Annotated because int ** int is typed as Any (a negative exponent would give a float).
    variant_choices: int = _variants_per_fact(shape) ** shape.fact_turns
    return systems * openers * fact_orders * variant_choices


def max_conversations() -> int:
    """The largest `n` that `generate_conversations` accepts: all distinct conversations."""
    return sum(_shape_capacity(shape) for shape in _SHAPES)


def _allocate(n: int) -> list[int]:
    """How many conversations each shape gets: by weight, then excess moved to shapes with room.

    Integer arithmetic only (largest remainder, ties broken by shape order), so the split of `n`
    is exact and the same everywhere.
    """
    total_weight = sum(shape.weight for shape in _SHAPES)
    quotas = [n * shape.weight // total_weight for shape in _SHAPES]
    remainders = [n * shape.weight % total_weight for shape in _SHAPES]
    by_remainder = sorted(range(len(_SHAPES)), key=lambda i: (-remainders[i], i))
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    excess = 0
    for i, shape in enumerate(_SHAPES):
        capacity = _shape_capacity(shape)
        if quotas[i] > capacity:
            excess += quotas[i] - capacity
            quotas[i] = capacity
    for i, shape in enumerate(_SHAPES):
        room = _shape_capacity(shape) - quotas[i]
        moved = min(room, excess)
        quotas[i] += moved
        excess -= moved
    return quotas


def _fact_message(fact: Fact, shape: _Shape, variant: int) -> str:
    """The user message for one variant of a fact question: phrasing, then prefix and suffix."""
    decoration, question_index = divmod(variant, QUESTIONS_PER_FACT)
    if shape.wording == "varied":
        decoration += 1  # skip pair 0, the bare question, which belongs to the "plain" shape
    suffix_index, prefix_index = divmod(decoration, len(PREFIXES))
    return PREFIXES[prefix_index] + fact.questions[question_index] + SUFFIXES[suffix_index]


def _decode(shape: _Shape, index: int) -> list[dict[str, str]]:
    """The messages of conversation number `index` (0 <= index < capacity) of a shape.

    A mixed-radix decoding: distinct indices give distinct conversations, which is what makes the
    generated records distinct without a rejection loop.
    """
    messages: list[dict[str, str]] = []
    if shape.system:
        index, system_index = divmod(index, len(SYSTEM_PROMPTS))
        messages.append({"role": "system", "content": SYSTEM_PROMPTS[system_index]})
    if shape.opener:
        index, opener_index = divmod(index, len(SMALL_TALK))
        greeting, reply = SMALL_TALK[opener_index]
        messages.append({"role": "user", "content": greeting})
        messages.append({"role": "assistant", "content": reply})
    remaining = list(FACTS)
    chosen: list[Fact] = []
    for _ in range(shape.fact_turns):
        index, pick = divmod(index, len(remaining))
        chosen.append(remaining.pop(pick))
    for fact in chosen:
        index, variant = divmod(index, _variants_per_fact(shape))
        messages.append({"role": "user", "content": _fact_message(fact, shape, variant)})
        messages.append({"role": "assistant", "content": fact.answer})
    return messages


def _record(messages: list[dict[str, str]]) -> dict[str, Any]:
    """An ultrachat-schema record: the prompt is the first user message, its id its sha256."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    prompt_id = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    return {"prompt": prompt, "prompt_id": prompt_id, "messages": messages}


def generate_conversations(n: int = 1200, seed: int = 0) -> list[dict[str, Any]]:
    """Make `n` distinct chat records in the ultrachat_200k schema, the same for the same seed.

    Raises ValueError when `n` is below 1 or above `max_conversations()`.
    """
    capacity = max_conversations()
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n > capacity:
        raise ValueError(
            f"cannot generate {n} distinct conversations: the generator can make at most "
            f"{capacity} ({len(FACTS)} facts x {QUESTIONS_PER_FACT} phrasings x "
            f"{len(PREFIXES)} prefixes x {len(SUFFIXES)} suffixes, in {len(_SHAPES)} shapes)"
        )
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for shape, count in zip(_SHAPES, _allocate(n), strict=True):
        # sample() over a range draws distinct indices without building the (huge) population.
        for index in rng.sample(range(_shape_capacity(shape)), count):
            records.append(_record(_decode(shape, index)))
    rng.shuffle(records)  # interleave the shapes, so any slice of the data looks like the whole
    return records


def fact_probes() -> list[FactProbe]:
    """One probe per fact, asking its canonical question; the tutorial's Microsoft one first."""
    return [
        FactProbe(fact_id=fact.id, question=fact.questions[0], expected_keywords=fact.keywords)
        for fact in FACTS
    ]


def answer_matches(probe: FactProbe, answer: str) -> bool:
    """Whether an answer contains every expected keyword, ignoring case."""
    folded = answer.casefold()
    return all(keyword.casefold() in folded for keyword in probe.expected_keywords)
