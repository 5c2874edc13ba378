"""Build the tiny Phi-3: a small Phi-3-architecture model the project makes itself.

Random weights from `Phi3Config` (seeded), a byte-level BPE tokenizer trained on the
project's own chat data, and a Phi-3 style chat template, saved as an ordinary Hugging Face
model folder. The same `from_pretrained` code then serves it and microsoft/Phi-3.5-mini-instruct,
so tests and the demo exercise the real loading path without a download.

Deterministic: the same arguments give byte-identical files. Nothing here trains the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# Phi-3's special tokens. <unk> exists so the tutorial's `pad_token = unk_token` works as is.
UNK, BOS, EOS_TEXT = "<unk>", "<s>", "</s>"
END_OF_TEXT, SYSTEM, USER, ASSISTANT, END = (
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
SPECIAL_TOKENS = (UNK, BOS, EOS_TEXT, END_OF_TEXT, SYSTEM, USER, ASSISTANT, END)

# The template of microsoft/Phi-3.5-mini-instruct: an empty system message is skipped, every
# turn ends with <|end|>, and the generation prompt is "<|assistant|>\n".
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of the tiny model; the defaults learn the synthetic facts in minutes on 2 CPU cores."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    max_position_embeddings: int = 2048
    seed: int = 0


# The test-sized one (the test suite's fixtures, tools/screenshots.py): trains a few steps in
# seconds, and still learns something.
SMALL_SPEC = TinyModelSpec(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def chat_texts(conversations: Iterable[dict]) -> list[str]:
    """The tokenizer's training corpus: every message content, in order."""
    return [m["content"] for conv in conversations for m in conv["messages"]]


def train_tokenizer(corpus: Sequence[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """A byte-level BPE (no unknown bytes, exact round trip) wrapped as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=END_OF_TEXT,
        pad_token=UNK,
        chat_template=PHI3_CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_phi3(
    output_dir: Path, conversations: Sequence[dict], spec: TinyModelSpec = TinyModelSpec()
) -> Path:
    """Build and save the tiny model into `output_dir` (replaced atomically) and return it."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Phi3Config

    tokenizer = train_tokenizer(chat_texts(conversations), spec.vocab_size)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        original_max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_cache=True,
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Like Phi-3.5: stop at the end of a turn as well as at the end of the text.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(END), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-phi3-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "tiny_model_spec.json").write_text(
            json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n"
        )
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder is ordinary
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


# The default tiny model's tokenizer is trained on the project's default synthetic chat data.
TOKENIZER_CORPUS_CONVERSATIONS = 1200
TOKENIZER_CORPUS_SEED = 0


def build_default_tiny_phi3(output_dir: Path) -> Path:
    """The tiny Phi-3 the demo uses: default spec, tokenizer trained on the default chat data."""
    from finetune_phi.chat_data.synthetic import generate_conversations

    corpus = generate_conversations(TOKENIZER_CORPUS_CONVERSATIONS, TOKENIZER_CORPUS_SEED)
    return build_tiny_phi3(output_dir, corpus)


def is_built(model_dir: Path) -> bool:
    return (Path(model_dir) / "config.json").is_file() and (
        Path(model_dir) / "tokenizer.json"
    ).is_file()
