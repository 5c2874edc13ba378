"""Benchmark full fine-tuning of a Phi-3-mini-sized model on one GPU: tokens/s and MFU.

    .venv/bin/python -m bench.trainer_gpu                      # every configuration, on CUDA
    .venv/bin/python -m bench.trainer_gpu --configs project --steps 30
    .venv/bin/python -m bench.trainer_gpu --size tiny --device cpu --steps 3   # a dry check

The model is built from the real `Phi3Config` of Phi-3-mini (3.8B parameters, 32 layers,
hidden 3072), randomly initialised: no download, and the speed of a step does not depend on
the weights. Batches are random token ids at the full sequence length (2048), which is what
padding-free packing produces: every position is a real token. Rows:

    tutorial  eager attention, gradient checkpointing (the tutorial's choices), bf16
    project   SDPA (FlashAttention-2 when `flash-attn` is installed), no recomputation,
              Liger's fused kernels when `liger-kernel` is installed, bf16
    lora      the project row, LoRA r=16 on all linear layers (peft), base weights frozen

Per row: warm-up steps, then timed steps (forward, backward, AdamW step), synchronised.
Tokens/s counts every position; MFU = model FLOPs per second / the GPU's peak bf16 dense
FLOPs, with model FLOPs per token = 6 x parameters + 12 x layers x hidden x sequence length
(the attention scores and weighted sum, forward and backward; causal masking not discounted,
as in the PaLM paper's accounting). Recomputation is not counted as useful work, so gradient
checkpointing lowers MFU, as it should. For LoRA the same formula is reported (backward
through frozen weights still costs the activation gradients); read its tokens/s first.

Figures, not a test. Peak FLOPs: from `--peak-tflops`, else a table of known GPUs.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

# Dense bf16 peak, TFLOP/s (vendor data sheets, SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

# Phi-3-mini-4k-instruct's architecture (config.json of microsoft/Phi-3-mini-4k-instruct).
MINI: dict[str, Any] = dict(
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)
TINY: dict[str, Any] = dict(
    vocab_size=512,
    pad_token_id=0,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,
)


@dataclass(frozen=True)
class Row:
    name: str
    tokens_per_second: float
    mfu: float | None
    peak_memory_gb: float
    step_seconds: float
    parameters: int
    trainable: int
    notes: str


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def build_model(size: dict[str, Any], attention: str, device: str, dtype: Any) -> Any:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(**size, attn_implementation=attention, use_cache=False)  # type: ignore[call-arg]
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Phi3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def run_row(name: str, args: argparse.Namespace, size: dict[str, Any]) -> Row:
    import torch

    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    notes = []
    if name == "tutorial":
        attention, checkpointing = "eager", True
    else:
        attention = "flash_attention_2" if cuda and installed("flash_attn") else "sdpa"
        checkpointing = args.checkpointing
        if cuda and installed("liger_kernel"):
            from liger_kernel.transformers import apply_liger_kernel_to_phi3

            apply_liger_kernel_to_phi3()
            notes.append("liger")
    notes.append(attention)
    if checkpointing:
        notes.append("grad checkpointing")
    model = build_model(size, attention, args.device, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if name == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        notes.append("LoRA r=16")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=cuda)
    generator = torch.Generator(device=args.device).manual_seed(0)
    shape = (args.batch, args.seq_len)

    def step() -> None:
        ids = torch.randint(0, size["vocab_size"], shape, device=args.device, generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    tokens_per_second = args.batch * args.seq_len / seconds
    flops_per_token = (
        6 * parameters + 12 * size["num_hidden_layers"] * size["hidden_size"] * args.seq_len
    )
    peak = peak_tflops(torch.cuda.get_device_name() if cuda else "cpu", args.peak_tflops)
    mfu = tokens_per_second * flops_per_token / (peak * 1e12) if peak else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return Row(
        name,
        tokens_per_second,
        mfu,
        memory,
        seconds,
        parameters,
        sum(p.numel() for p in trainable),
        ", ".join(notes),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| config | tokens/s | MFU | step s | peak GB | params | trainable | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        lines.append(
            f"| {r.name} | {r.tokens_per_second:,.0f} | {mfu} | {r.step_seconds:.3f} | "
            f"{r.peak_memory_gb:.1f} | {r.parameters / 1e9:.2f}B | {r.trainable / 1e6:,.1f}M | "
            f"{r.notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tutorial,project,lora")
    parser.add_argument("--size", choices=("mini", "tiny"), default="mini")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="project/lora rows: recompute activations too (when memory needs it)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or --device cpu --size tiny", file=sys.stderr)
        return 2
    size = MINI if args.size == "mini" else TINY
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{where}; torch {torch.__version__}; seq {args.seq_len} x batch {args.batch}")
    rows = []
    for name in args.configs.split(","):
        try:
            row = run_row(name.strip(), args, size)
        except torch.cuda.OutOfMemoryError:
            print(f"{name}: out of GPU memory at batch {args.batch}; try a smaller --batch")
            torch.cuda.empty_cache()
            continue
        rows.append(row)
        print(f"{row.name}: {row.tokens_per_second:,.0f} tokens/s", flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the row's model and optimizer are gone with run_row
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
