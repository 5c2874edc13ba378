"""Build a model folder shaped exactly like microsoft/Phi-3.5-mini-instruct, with random weights.

For the real-size rehearsal (issue #13): everything a 3.8B fine-tune touches is real (the
configuration, the parameter names and shapes, the sharded safetensors and their index, the
tokenizer's size, special tokens and chat template), only the weights' values and the
tokenizer's merges are made up. `num_hidden_layers=2` gives the same model two layers deep
(the test suite's shape-true tier).

- **Weights** are drawn with the architecture's standard initialisation (transformers'
  `PreTrainedModel._init_weights`: normal(0, initializer_range) for linear and embedding
  weights, the embedding's padding row zeroed, ones for RMSNorm weights), tensor by tensor and
  block by block, and streamed into the shards: the whole model is never in memory (peak a
  few hundred MB at full size). Names and shapes come from `Phi3ForCausalLM` itself, built on
  the `meta` device. Each tensor has its own random stream (numpy's PCG64 seeded from the seed
  and the tensor's name), so the same seed gives byte-identical files.
- **Shards** are written like the Hub's: `model-00001-of-0000N.safetensors` of at most
  `max_shard_bytes` each plus `model.safetensors.index.json` (`weight_map`, `total_size`), or
  one `model.safetensors` when everything fits in one.
- **Tokenizer**: `build_phi35_tokenizer`, see there.
- **Built once**: `build_marker.json` is written last, listing every file with its size and
  sha256 and their combined `content_sha256`; `is_built` checks it, and a build into a folder
  that already holds the same build returns at once.

No Prefect, no CLI, no backends: this is the core floor (torch, numpy, tokenizers and
transformers are imported inside the functions that need them).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER_FILE",
    "PHI35_GENERATION_CONFIG",
    "PHI35_HUB_ID",
    "PHI35_MINI_CONFIG",
    "PHI3_ADDED_TOKENS",
    "BuildSpec",
    "build_phi35_shaped_model",
    "build_phi35_tokenizer",
    "is_built",
    "parameter_layout",
    "phi35_config",
    "read_marker",
    "verify_built",
]

PHI35_HUB_ID = "microsoft/Phi-3.5-mini-instruct"

# microsoft/Phi-3.5-mini-instruct's config.json. Values as quoted, in the Hub file's key order,
# by two independent copies found in public code: the onnx exporter recipe of
# sdpython/experimental-experiment ("get_phi35", citing
# huggingface.co/microsoft/Phi-3.5-mini-instruct/blob/main/config.json), and Lightning
# thunder's benchmark targets ("hf_phi3_rope", the config as re-saved by transformers 4.46.3).
# Both agree on every value below, the 48 + 48 LongRoPE factors included (48 = head_dim 96 / 2),
# and so does a third copy (a JAX model zoo's "phi-3.5-mini-instruct" LongRoPE factors).
# Left out: the Hub file's `auto_map` ({"AutoConfig": "configuration_phi3.Phi3Config",
# "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}), which points at remote-code files
# this folder does not ship (transformers has Phi-3 built in; with auto_map and no such files,
# `trust_remote_code=True` would fail here where it works on the Hub), and
# `transformers_version` (metadata, and the two copies differ).
PHI35_MINI_CONFIG: dict[str, Any] = {
    "_name_or_path": "Phi-3.5-mini-instruct",
    "architectures": ["Phi3ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "embd_pdrop": 0.0,
    "eos_token_id": 32000,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "model_type": "phi3",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "original_max_position_embeddings": 4096,
    "pad_token_id": 32000,
    "resid_pdrop": 0.0,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "long_factor": [
            1.0800000429153442,
            1.1100000143051147,
            1.1399999856948853,
            1.340000033378601,
            1.5899999141693115,
            1.600000023841858,
            1.6200000047683716,
            2.620000123977661,
            3.2300000190734863,
            3.2300000190734863,
            4.789999961853027,
            7.400000095367432,
            7.700000286102295,
            9.09000015258789,
            12.199999809265137,
            17.670000076293945,
            24.46000099182129,
            28.57000160217285,
            30.420001983642578,
            30.840002059936523,
            32.590003967285156,
            32.93000411987305,
            42.320003509521484,
            44.96000289916992,
            50.340003967285156,
            50.45000457763672,
            57.55000305175781,
            57.93000411987305,
            58.21000289916992,
            60.1400032043457,
            62.61000442504883,
            62.62000274658203,
            62.71000289916992,
            63.1400032043457,
            63.1400032043457,
            63.77000427246094,
            63.93000411987305,
            63.96000289916992,
            63.970001220703125,
            64.02999877929688,
            64.06999969482422,
            64.08000183105469,
            64.12000274658203,
            64.41000366210938,
            64.4800033569336,
            64.51000213623047,
            64.52999877929688,
            64.83999633789062,
        ],
        "short_factor": [
            1.0,
            1.0199999809265137,
            1.0299999713897705,
            1.0299999713897705,
            1.0499999523162842,
            1.0499999523162842,
            1.0499999523162842,
            1.0499999523162842,
            1.0499999523162842,
            1.0699999332427979,
            1.0999999046325684,
            1.1099998950958252,
            1.1599998474121094,
            1.1599998474121094,
            1.1699998378753662,
            1.2899998426437378,
            1.339999794960022,
            1.679999828338623,
            1.7899998426437378,
            1.8199998140335083,
            1.8499997854232788,
            1.8799997568130493,
            1.9099997282028198,
            1.9399996995925903,
            1.9899996519088745,
            2.0199997425079346,
            2.0199997425079346,
            2.0199997425079346,
            2.0199997425079346,
            2.0199997425079346,
            2.0199997425079346,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0299997329711914,
            2.0799996852874756,
            2.0899996757507324,
            2.189999580383301,
            2.2199995517730713,
            2.5899994373321533,
            2.729999542236328,
            2.749999523162842,
            2.8399994373321533,
        ],
        "type": "longrope",
    },
    "rope_theta": 10000.0,
    "sliding_window": 262144,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "attention_bias": False,
    "vocab_size": 32064,
}

# generation_config.json: Phi-3.5 stops at <|end|>, <|assistant|> and <|endoftext|> (the ids
# third-party Phi-3.5 generation code passes as eos_token_id too).
PHI35_GENERATION_CONFIG: dict[str, Any] = {
    "_from_model_config": True,
    "bos_token_id": 1,
    "eos_token_id": [32007, 32001, 32000],
    "pad_token_id": 32000,
}

# Phi-3's added tokens as its tokenizer_config.json's `added_tokens_decoder` has them: (id,
# content, rstrip, special). The ids are also torchtune's PHI3_SPECIAL_TOKENS; the flags (the
# chat markers swallow the whitespace after them; `</s>` is not special) are from a copy of
# Phi-3's tokenizer_config.json in public code. Ids 3-31999 are the learned vocabulary.
PHI3_ADDED_TOKENS: tuple[tuple[int, str, bool, bool], ...] = (
    (0, "<unk>", False, True),
    (1, "<s>", False, True),
    (2, "</s>", True, False),
    (32000, "<|endoftext|>", False, True),
    (32001, "<|assistant|>", True, True),
    (32002, "<|placeholder1|>", True, True),
    (32003, "<|placeholder2|>", True, True),
    (32004, "<|placeholder3|>", True, True),
    (32005, "<|placeholder4|>", True, True),
    (32006, "<|system|>", True, True),
    (32007, "<|end|>", True, True),
    (32008, "<|placeholder5|>", True, True),
    (32009, "<|placeholder6|>", True, True),
    (32010, "<|user|>", True, True),
)
LEARNED_VOCAB_SIZE = 32000  # Phi-3's SentencePiece vocabulary: ids 0-31999
VOCAB_SIZE = PHI35_MINI_CONFIG["vocab_size"]  # 32064: the embedding's rows
# Phi-3's own tokenizer stops at 32010 (len 32,011); its embedding has 53 rows more, for
# alignment, that no token maps to. llama.cpp's converter (convert_hf_to_gguf.py,
# Phi3MiniModel.set_vocab) names those rows "[PAD<id>]" with token type UNUSED; so do we, as
# vocabulary entries no merge produces, so that this tokenizer has all 32,064 entries and none
# of the 53 is ever produced by encoding text.
PAD_ENTRY = "[PAD{id}]"

# The tokenizer's BPE is trained on this many ultrachat-like conversations (about 2.1M words,
# enough to learn all 32,000 entries), always the same ones: the tokenizer does not depend on
# the weights' seed, as a real model's tokenizer does not.
TOKENIZER_CORPUS_CONVERSATIONS = 2000
TOKENIZER_CORPUS_SEED = 0

MARKER_FILE = "build_marker.json"
MARKER_FORMAT = 1
DEFAULT_MAX_SHARD_BYTES = 2 * 10**9  # "2GB" as transformers counts it
_BLOCK_ELEMENTS = 1 << 24  # values drawn per block: 64 MB of float32
_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


@dataclass(frozen=True)
class BuildSpec:
    """What a build is made of: two folders with equal specs hold identical files."""

    num_hidden_layers: int
    seed: int
    dtype: str
    max_shard_bytes: int
    tokenizer_corpus_conversations: int = TOKENIZER_CORPUS_CONVERSATIONS
    tokenizer_corpus_seed: int = TOKENIZER_CORPUS_SEED
    builder_version: int = 1


def phi35_config(num_hidden_layers: int | None = None) -> dict[str, Any]:
    """The config.json written: `PHI35_MINI_CONFIG`, `num_hidden_layers` replaced when given."""
    config = json.loads(json.dumps(PHI35_MINI_CONFIG))
    if num_hidden_layers is not None:
        if num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
        config["num_hidden_layers"] = num_hidden_layers
    return config


# --- tokenizer -----------------------------------------------------------------------------


def build_phi35_tokenizer(
    conversations: int = TOKENIZER_CORPUS_CONVERSATIONS, seed: int = TOKENIZER_CORPUS_SEED
):  # -> PreTrainedTokenizerFast
    """A tokenizer with Phi-3.5-mini-instruct's size, special tokens, ids and chat template.

    The tiny model's recipe (a byte-level BPE, `tokenizers`), trained on ultrachat-like text
    (`finetune_phi.chat_data.ultrachat_like`) to exactly Phi-3's 32,000 learned entries:
    `<unk>` 0, `<s>` 1, `</s>` 2, then the 256 byte symbols and 31,741 merges. Then Phi-3's
    eleven added tokens at 32000-32010 (`PHI3_ADDED_TOKENS`, with Phi-3's flags) and
    `[PAD32011]`..`[PAD32063]` (see `PAD_ENTRY`): 32,064 entries, one per embedding row.
    Like Phi-3.5's: no `<s>` is added when encoding, the end-of-text and padding token is
    `<|endoftext|>`, padding is on the left, the chat template is Phi-3.5's.

    Unlike Phi-3's SentencePiece (Llama's), the merges are byte-level BPE learned on made-up
    words; on that text it gives about 1.3 tokens a word, about what Phi-3's gives on English,
    so conversations have realistic token counts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from finetune_phi.chat_data.ultrachat_like import generate_ultrachat_like
    from finetune_phi.tiny_model import PHI3_CHAT_TEMPLATE, chat_texts

    corpus = chat_texts(generate_ultrachat_like(conversations, seed))
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    base.post_processor = processors.ByteLevel(trim_offsets=False)
    learned_specials = [content for id_, content, _, _ in PHI3_ADDED_TOKENS if id_ < 3]
    trainer = trainers.BpeTrainer(
        vocab_size=LEARNED_VOCAB_SIZE,
        special_tokens=learned_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    base.train_from_iterator(corpus, trainer=trainer)
    if base.get_vocab_size() != LEARNED_VOCAB_SIZE:
        raise RuntimeError(
            f"the BPE learned {base.get_vocab_size()} entries from {conversations} "
            f"conversations, not {LEARNED_VOCAB_SIZE}: give it more text"
        )

    spec = json.loads(base.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for id_, content, _, _ in PHI3_ADDED_TOKENS:
        vocab[content] = id_
    for id_ in range(PHI3_ADDED_TOKENS[-1][0] + 1, VOCAB_SIZE):
        vocab[PAD_ENTRY.format(id=id_)] = id_
    if sorted(vocab.values()) != list(range(VOCAB_SIZE)):
        raise RuntimeError("the vocabulary's ids are not exactly 0..32063")
    spec["added_tokens"] = [
        {
            "id": id_,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": rstrip,
            "normalized": False,
            "special": special,
        }
        for id_, content, rstrip, special in PHI3_ADDED_TOKENS
    ]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=PHI3_CHAT_TEMPLATE,
        model_max_length=PHI35_MINI_CONFIG["max_position_embeddings"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} entries, not {VOCAB_SIZE}")
    return tokenizer


# --- weights -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    init: str  # "normal" or "ones"
    zero_row: int | None = None  # the embedding's padding row

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def parameter_layout(config: dict[str, Any]) -> list[_Tensor]:
    """Every tensor of `Phi3ForCausalLM(config)`'s state dict, in its order, with its shape and
    its standard initialisation, learned from the module itself built on the `meta` device
    (no memory): names and shapes are exactly what `from_pretrained` expects."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM, Phi3Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Phi3Config.from_dict(config))
    owners: dict[str, nn.Module] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owners[f"{module_name}.{param_name}" if module_name else param_name] = module
    layout = []
    for name, tensor in model.state_dict().items():
        module = owners.get(name)
        shape = tuple(tensor.shape)
        if isinstance(module, nn.Embedding) and name.endswith(".weight"):
            layout.append(_Tensor(name, shape, "normal", module.padding_idx))
        elif isinstance(module, nn.Linear) and name.endswith(".weight"):
            if module.bias is not None:
                raise RuntimeError(f"{name}: Phi-3 has no biases, this module has one")
            layout.append(_Tensor(name, shape, "normal"))
        elif module is not None and "RMSNorm" in type(module).__name__:
            layout.append(_Tensor(name, shape, "ones"))
        else:
            raise RuntimeError(f"{name}: no standard initialisation known for {type(module)}")
    return layout


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"phi35-shaped:{seed}:{name}".encode()).digest()[:16])


def _encode(values: Any, dtype: str) -> bytes:
    """float32 values (a numpy array) as little-endian bytes of `dtype`; bfloat16 rounds to
    nearest even, as torch's conversion does (it is torch's conversion: 5x numpy's speed)."""
    if dtype == "float32":
        return bytes(values.astype("<f4").tobytes())
    if dtype == "float16":
        return bytes(values.astype("<f2").tobytes())
    import torch

    as_bf16 = torch.from_numpy(values).to(torch.bfloat16)
    return bytes(as_bf16.view(torch.int16).numpy().astype("<i2").tobytes())


def _tensor_blocks(tensor: _Tensor, seed: int, dtype: str, std: float) -> Iterator[bytes]:
    """The tensor's bytes, a block of rows at a time (never the whole tensor in memory)."""
    import numpy as np

    if tensor.init == "ones":
        yield _encode(np.ones(tensor.shape, dtype=np.float32), dtype)
        return
    rows, columns = tensor.shape[0], tensor.numel // tensor.shape[0]
    rng = np.random.default_rng(_tensor_seed(seed, tensor.name))
    step = max(1, _BLOCK_ELEMENTS // columns)
    for start in range(0, rows, step):
        block = rng.standard_normal((min(step, rows - start), columns), dtype=np.float32)
        block *= np.float32(std)
        if tensor.zero_row is not None and start <= tensor.zero_row < start + len(block):
            block[tensor.zero_row - start] = 0.0
        yield _encode(block, dtype)


def _plan_shards(layout: list[_Tensor], itemsize: int, max_bytes: int) -> list[list[_Tensor]]:
    """Tensors in order into shards of at most `max_bytes` (a bigger tensor gets its own)."""
    shards: list[list[_Tensor]] = [[]]
    size = 0
    for tensor in layout:
        nbytes = tensor.numel * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def _write_safetensors(
    path: Path, tensors: list[_Tensor], dtype: str, blocks: Callable[[_Tensor], Iterator[bytes]]
) -> str:
    """Write one safetensors file by streaming each tensor's bytes; returns its sha256.

    The format: an 8-byte little-endian header length, the JSON header (dtype, shape and byte
    range of each tensor, `__metadata__` {"format": "pt"} as transformers writes), padded with
    spaces to a multiple of 8, then the tensors' bytes back to back."""
    code, itemsize = _DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        end = offset + tensor.numel * itemsize
        header[tensor.name] = {
            "dtype": code,
            "shape": list(tensor.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for chunk in (struct.pack("<Q", len(encoded)), encoded):
            out.write(chunk)
            digest.update(chunk)
        for tensor in tensors:
            written = 0
            for chunk in blocks(tensor):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
            if written != tensor.numel * itemsize:
                raise RuntimeError(
                    f"{tensor.name}: wrote {written} bytes, expected {tensor.numel * itemsize}"
                )
    return digest.hexdigest()


def _write_weights(folder: Path, config: dict[str, Any], spec: BuildSpec) -> dict[str, str]:
    """The safetensors files (and index when sharded) into `folder`; returns their sha256s."""
    code, itemsize = _DTYPES[spec.dtype]
    layout = parameter_layout(config)
    std = float(config["initializer_range"])

    def blocks(tensor: _Tensor) -> Iterator[bytes]:
        return _tensor_blocks(tensor, spec.seed, spec.dtype, std)

    shards = _plan_shards(layout, itemsize, spec.max_shard_bytes)
    hashes = {}
    if len(shards) == 1:
        hashes["model.safetensors"] = _write_safetensors(
            folder / "model.safetensors", shards[0], spec.dtype, blocks
        )
        return hashes
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        hashes[name] = _write_safetensors(folder / name, shard, spec.dtype, blocks)
        weight_map.update({tensor.name: name for tensor in shard})
    index = {
        "metadata": {"total_size": sum(t.numel * itemsize for t in layout)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return hashes


# --- the folder ----------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _content_sha256(files: dict[str, dict[str, Any]]) -> str:
    lines = "".join(
        f"{name}\0{entry['size']}\0{entry['sha256']}\n" for name, entry in sorted(files.items())
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's build marker, or None when there is none (or it is unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def is_built(folder: Path) -> bool:
    """Whether `folder` holds a finished build: its marker (written last) is there, consistent,
    and every file it lists is there with its size. Cheap: nothing is hashed (`verify_built`
    re-reads every byte)."""
    marker = read_marker(folder)
    if marker is None:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or marker.get("content_sha256") != _content_sha256(files):
        return False
    for name, entry in files.items():
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
    return True


def verify_built(folder: Path) -> bool:
    """`is_built`, and every file's bytes still hash to what the marker says."""
    if not is_built(folder):
        return False
    files = read_marker(folder)["files"]  # type: ignore[index]
    return all(
        _sha256_file(Path(folder) / name) == entry["sha256"] for name, entry in files.items()
    )


def build_phi35_shaped_model(
    output_dir: Path,
    *,
    num_hidden_layers: int | None = None,
    seed: int = 0,
    dtype: str = "bfloat16",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a model folder the way the Hub stores microsoft/Phi-3.5-mini-instruct, with random
    seeded weights (see the module's notes), into `output_dir`, and return it.

    A folder that already holds this very build (`is_built`, same spec) is returned untouched;
    anything else there is replaced, atomically (built beside it, then renamed). The full
    32-layer bfloat16 build is 7.64 GB on disk."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    config = phi35_config(num_hidden_layers)
    spec = BuildSpec(
        num_hidden_layers=config["num_hidden_layers"],
        seed=seed,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
    )
    config["torch_dtype"] = dtype  # as the Hub's says: what the weights are stored as
    output_dir = Path(output_dir)
    marker = read_marker(output_dir)
    if marker is not None and marker.get("spec") == asdict(spec) and is_built(output_dir):
        return output_dir

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "generation_config.json").write_text(
            json.dumps(PHI35_GENERATION_CONFIG, indent=2) + "\n"
        )
        build_phi35_tokenizer(
            spec.tokenizer_corpus_conversations, spec.tokenizer_corpus_seed
        ).save_pretrained(staging)
        weight_hashes = _write_weights(staging, config, spec)
        files = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            name = path.relative_to(staging).as_posix()
            digest = weight_hashes.get(name) or _sha256_file(path)
            files[name] = {"size": path.stat().st_size, "sha256": digest}
        marker = {
            "format": MARKER_FORMAT,
            "builder": "finetune_phi.real_size.build_phi35_shaped_model",
            "shaped_like": PHI35_HUB_ID,
            "spec": asdict(spec),
            "files": files,
            "content_sha256": _content_sha256(files),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder is ordinary
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
