"""The Phi-3.5-mini-shaped model (issue #13): its exact configuration, two layers deep (the
shape-true tier), written like the Hub's, loaded by the real `from_pretrained`, deterministic,
built once; its tokenizer's size, special tokens and chat template; and its token counts on
ultrachat-shaped data."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_phi.chat_data.ultrachat_like import approx_tokens, generate_ultrachat_like
from finetune_phi.real_size import (
    MARKER_FILE,
    PHI3_ADDED_TOKENS,
    PHI35_GENERATION_CONFIG,
    PHI35_MINI_CONFIG,
    _plan_shards,
    _tensor_blocks,
    build_phi35_shaped_model,
    is_built,
    parameter_layout,
    phi35_config,
    read_marker,
    verify_built,
)

LAYERS = 2
SHARD_BYTES = 300_000_000  # small shards, so the two-layer folder is sharded like the real one
HIDDEN, INTERMEDIATE, VOCAB = 3072, 8192, 32064
PER_LAYER = (
    3 * HIDDEN * HIDDEN + HIDDEN * HIDDEN + 2 * INTERMEDIATE * HIDDEN + INTERMEDIATE * HIDDEN
)
PER_LAYER += 2 * HIDDEN  # the two RMSNorms


def _parameters(layers: int) -> int:
    return 2 * VOCAB * HIDDEN + layers * PER_LAYER + HIDDEN


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_phi35_shaped_model(
        tmp_path_factory.mktemp("phi35") / "phi35-shaped-2",
        num_hidden_layers=LAYERS,
        max_shard_bytes=SHARD_BYTES,
    )


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_the_configuration_is_phi35_minis() -> None:
    config = PHI35_MINI_CONFIG
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
        3072,
        32,
        8192,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (32, 32)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (32064, 131072)
    assert config["original_max_position_embeddings"] == 4096
    assert (config["rope_theta"], config["rms_norm_eps"], config["sliding_window"]) == (
        10000.0,
        1e-5,
        262144,
    )
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        1,
        32000,
        32000,
    )
    assert config["tie_word_embeddings"] is False and config["torch_dtype"] == "bfloat16"
    rope = config["rope_scaling"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert rope["type"] == "longrope"
    assert len(rope["short_factor"]) == len(rope["long_factor"]) == head_dim // 2 == 48
    assert rope["short_factor"][0] == 1.0 and rope["short_factor"][-1] == 2.8399994373321533
    assert rope["long_factor"][0] == 1.0800000429153442
    assert rope["long_factor"][-1] == 64.83999633789062
    assert rope["long_factor"] == sorted(rope["long_factor"])  # LongRoPE's factors only grow
    assert phi35_config(2) == {**config, "num_hidden_layers": 2}
    assert phi35_config() == config and phi35_config() is not config


def test_the_full_size_layout_without_building_it() -> None:
    """Phi3ForCausalLM at full size, on the meta device: 3.82B parameters, 7.64 GB in bf16, in
    four shards of at most 2 GB."""
    layout = parameter_layout(phi35_config())
    assert len(layout) == 3 + 32 * 6
    assert sum(t.numel for t in layout) == _parameters(32) == 3_821_079_552
    shards = _plan_shards(layout, 2, 2 * 10**9)
    assert len(shards) == 4
    assert all(sum(t.numel * 2 for t in shard) <= 2 * 10**9 for shard in shards)
    assert sum(t.numel * 2 for shard in shards for t in shard) == 7_642_159_104


def test_the_folder_is_written_like_the_hubs(model_dir: Path) -> None:
    assert json.loads((model_dir / "config.json").read_text()) == {
        **PHI35_MINI_CONFIG,
        "num_hidden_layers": LAYERS,
    }
    assert json.loads((model_dir / "generation_config.json").read_text()) == PHI35_GENERATION_CONFIG
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in model_dir.glob("model-*.safetensors"))
    count = len(shards)
    assert count >= 2 and not (model_dir / "model.safetensors").exists()
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert all((model_dir / s).stat().st_size <= SHARD_BYTES + 10**6 for s in shards)
    assert sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == _parameters(LAYERS) * 2
    assert sum((model_dir / s).stat().st_size for s in shards) > index["metadata"]["total_size"]
    assert {"tokenizer.json", "tokenizer_config.json", MARKER_FILE} <= {
        p.name for p in model_dir.iterdir()
    }


def test_from_pretrained_loads_every_weight_and_generates(model_dir: Path, tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    loaded: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, output_loading_info=True, dtype=torch.float32
    )
    model, info = loaded
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert model.num_parameters() == _parameters(LAYERS)
    assert model.config.num_hidden_layers == LAYERS and model.config.vocab_size == VOCAB
    assert model.generation_config.eos_token_id == [32007, 32001, 32000]

    # The standard initialisation: normal(0, 0.02), the padding row zero, RMSNorm weights one.
    embedding = model.model.embed_tokens.weight.detach()
    assert embedding.std().item() == pytest.approx(0.02, rel=0.01)
    assert embedding[32000].abs().sum().item() == 0.0
    assert model.lm_head.weight.detach().mean().abs().item() < 1e-4
    assert torch.equal(model.model.norm.weight.detach(), torch.ones(HIDDEN))

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who founded Microsoft?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert all(0 <= int(t) < VOCAB for t in out[0])


def test_the_tokenizer_is_phi3s(tokenizer) -> None:
    assert len(tokenizer) == VOCAB
    for id_, content, rstrip, special in PHI3_ADDED_TOKENS:
        assert tokenizer.convert_ids_to_tokens(id_) == content
        added = tokenizer.added_tokens_decoder[id_]
        assert (added.content, added.rstrip, added.special) == (content, rstrip, special)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id) == (0, 1)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 32000
    assert tokenizer.padding_side == "left"
    # The embedding's 53 rows past Phi-3's tokens, named as llama.cpp names them, never produced.
    assert tokenizer.convert_ids_to_tokens([32011, 32063]) == ["[PAD32011]", "[PAD32063]"]
    ids = tokenizer("a [PAD32011] b")["input_ids"]
    assert max(ids) < 32000 and ids[0] != 1  # no <s> added, as Phi-3.5's adds none


def test_the_chat_template_renders_phi3s_format(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who founded Microsoft?"},
        {"role": "assistant", "content": "Bill Gates and Paul Allen."},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWho founded Microsoft?<|end|>\n"
        "<|assistant|>\nBill Gates and Paul Allen.<|end|>\n<|endoftext|>"
    )
    prompt = tokenizer.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>\nWho founded Microsoft?<|end|>\n<|assistant|>\n"
    ids = tokenizer.apply_chat_template(
        messages[1:2], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    # Phi-3's chat markers swallow the newline after them (rstrip), as on the Hub.
    assert ids[0] == 32010 and ids[-2:] == [32007, 32001]
    assert tokenizer.decode(ids[1:-2]) == "Who founded Microsoft?"


def test_ultrachat_like_conversations_have_realistic_token_counts(tokenizer) -> None:
    """With this tokenizer: about 1.3 tokens a word (Phi-3's on English), median ~1,250 tokens,
    p95 ~2,600, a tail past 2,048; the generator's own reckoning within a few percent."""
    conversations = generate_ultrachat_like(400, seed=11)
    counts, words = [], []
    for record in conversations:
        encoded = tokenizer.apply_chat_template(record["messages"], return_dict=True)
        counts.append(len(encoded["input_ids"]))
        words.append(sum(len(m["content"].split()) for m in record["messages"]))
        assert counts[-1] == pytest.approx(approx_tokens(record["messages"]), rel=0.1)
    assert 1.2 <= sum(counts) / sum(words) <= 1.45
    ordered = sorted(counts)
    assert 1100 <= statistics.median(ordered) <= 1450
    assert 2300 <= ordered[int(0.95 * len(ordered))] <= 3000
    assert any(c > 2048 for c in counts)


def test_is_built_reuses_a_finished_build(model_dir: Path) -> None:
    assert is_built(model_dir)
    marker = read_marker(model_dir)
    assert marker is not None and marker["spec"]["num_hidden_layers"] == LAYERS
    written = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    started = time.monotonic()
    again = build_phi35_shaped_model(
        model_dir, num_hidden_layers=LAYERS, max_shard_bytes=SHARD_BYTES
    )
    assert again == model_dir and time.monotonic() - started < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == written


def test_is_built_notices_missing_or_changed_files(model_dir: Path, tmp_path: Path) -> None:
    """On a stand-in: the small files copied, the shards as sparse files of the right size."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in model_dir.iterdir():
        if path.suffix == ".safetensors":
            with (copy / path.name).open("wb") as handle:
                handle.truncate(path.stat().st_size)
        else:
            (copy / path.name).write_bytes(path.read_bytes())
    assert is_built(copy)  # sizes only: cheap
    assert not verify_built(copy)  # every byte: the zeros are not the weights
    shard = sorted(copy.glob("model-*.safetensors"))[1]
    os.truncate(shard, shard.stat().st_size - 1)
    assert not is_built(copy)
    shard.unlink()
    assert not is_built(copy)
    (copy / MARKER_FILE).unlink()
    assert not is_built(copy) and read_marker(copy) is None


def test_the_same_seed_builds_identical_files(model_dir: Path, tmp_path: Path) -> None:
    again = build_phi35_shaped_model(
        tmp_path / "again", num_hidden_layers=LAYERS, max_shard_bytes=SHARD_BYTES
    )
    first, second = read_marker(model_dir), read_marker(again)
    assert first is not None and second is not None
    assert second["files"] == first["files"]
    assert second["content_sha256"] == first["content_sha256"]
    assert verify_built(again)


def test_another_seed_draws_other_weights() -> None:
    layout = parameter_layout(phi35_config(1))
    linear = next(t for t in layout if t.name.endswith("qkv_proj.weight"))
    block = next(_tensor_blocks(linear, 0, "bfloat16", 0.02))
    assert block == next(_tensor_blocks(linear, 0, "bfloat16", 0.02))
    assert block != next(_tensor_blocks(linear, 1, "bfloat16", 0.02))
    blocks = list(_tensor_blocks(linear, 0, "bfloat16", 0.02))
    assert len(blocks) > 1 and sum(map(len, blocks)) == math.prod(linear.shape) * 2
