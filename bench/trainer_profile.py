"""Where a training step's time goes on the CPU: TRL's trainer vs a plain PyTorch loop.

    .venv/bin/python -m bench.trainer_profile [--steps 30] [--repeats 3] [--ops 15]

The default tiny Phi-3 on the project's synthetic data, the local profile's hyperparameters,
measured three ways, each in a fresh process, interleaved, medians over the repeats:

    trl padded        TRL's SFTTrainer, batches padded to their longest conversation
    trl padding-free  the project default: the same batches as one row without pad tokens
    plain padded      the same padded batches through a hand-written loop (forward with
                      labels, backward, clip to 1.0, fused AdamW): what TRL's machinery costs

Per run: median optimizer-step time (a TrainerCallback, or the loop's own clock), real
(non-padding) tokens per second of step time, and the positions computed (real + padding).
Then, with `--ops N`, a torch.profiler table of the padding-free run's N costliest operators
(self CPU time), which says what is left to win.

Figures, not a test: BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("trl padded", "trl padding-free", "plain padded")


def make_trainer(work: Path, steps: int, padding_free: bool, callbacks: list[Any]):
    from finetune_phi.settings import load_profile
    from trainer.config import JobArguments, RunOptions
    from trainer.fine_tune import build_trainer, load_model_and_tokenizer, plan_device

    hp = replace(
        load_profile("local").training,
        max_steps=steps,
        eval_strategy="no",
        padding_free=padding_free,
    )
    plan = plan_device("fp32", cuda=False, bf16_supported=False)
    model, tokenizer = load_model_and_tokenizer(str(work / "tiny-phi3"), hp, plan)
    job = JobArguments(
        train_file=str(work / "train.jsonl"),
        eval_file=str(work / "test.jsonl"),
        model_output_dir=str(work / "out"),
    )
    run = RunOptions(save_steps=100_000, logging_steps=10, eval_before_training=False)
    return build_trainer(
        job,
        run,
        hp,
        plan,
        work / f"checkpoints-{time.monotonic_ns()}",
        model=model,
        tokenizer=tokenizer,
        callbacks=callbacks,
    )


def step_timer():  # -> (TrainerCallback, list of step seconds)
    from transformers import TrainerCallback

    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds.append(time.perf_counter() - self.started)

    return StepTimer(), seconds


def batch_positions(batch: dict[str, Any]) -> tuple[int, int]:
    """(real tokens, positions computed) of one collated batch."""
    ids = batch["input_ids"]
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    return real, ids.numel()


def run_variant(work: Path, variant: str, steps: int, ops: int) -> dict[str, Any]:
    import torch

    timer, seconds = step_timer()
    trainer = make_trainer(work, steps, variant == "trl padding-free", [timer])
    batches = [b for _, b in zip(range(steps), trainer.get_train_dataloader(), strict=False)]
    real, positions = map(sum, zip(*(batch_positions(b) for b in batches), strict=True))
    table = ""
    if variant.startswith("trl"):
        if ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.train()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops)
        else:
            trainer.train()
    else:
        model = trainer.model
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.args.learning_rate, fused=True)
        for batch in batches:
            started = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - started)
    # The first step pays one-off costs (allocator warm-up, lazy initialisation).
    median = statistics.median(seconds[1:])
    return {
        "variant": variant,
        "median_step_ms": 1000 * median,
        "real_tokens_per_step": real / len(batches),
        "positions_per_step": positions / len(batches),
        "real_tokens_per_second": real / len(batches) / median,
        "ops": table,
    }


def prepare(work: Path, conversations: int) -> None:
    from bench.trainer import write_data
    from finetune_phi.tiny_model import build_default_tiny_phi3

    build_default_tiny_phi3(work / "tiny-phi3")
    write_data(work, conversations)


def child(work: Path, variant: str, steps: int, ops: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.trainer_profile", "--child", variant]
    command += ["--work", str(work), "--steps", str(steps), "--ops", str(ops)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--ops", type=int, default=15, help="operators in the profile table")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.work, args.child, args.steps, args.ops)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-trainer-profile-") as tmp:
        work = Path(tmp)
        prepare(work, args.conversations)
        runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
        for repeat in range(args.repeats):
            order = VARIANTS if repeat % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                figures = child(work, variant, args.steps, 0)
                runs[variant].append(figures)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {variant:16s} "
                    f"{figures['median_step_ms']:7.1f} ms/step",
                    flush=True,
                )
        print()
        print(summary(runs))
        if args.ops:
            profiled = child(work, "trl padding-free", args.steps, args.ops)
            print(f"\ntorch.profiler, trl padding-free, {args.steps} steps:\n{profiled['ops']}")
    return 0


def summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    def median(variant: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[variant])

    lines = [
        "| variant | ms/step | real tok/s | real tokens/step | positions/step |",
        "|---|---|---|---|---|",
    ]
    for variant in runs:
        lines.append(
            f"| {variant} | {median(variant, 'median_step_ms'):.1f} | "
            f"{median(variant, 'real_tokens_per_second'):,.0f} | "
            f"{median(variant, 'real_tokens_per_step'):.0f} | "
            f"{median(variant, 'positions_per_step'):.0f} |"
        )
    trl = median("trl padded", "median_step_ms")
    plain = median("plain padded", "median_step_ms")
    free = median("trl padding-free", "median_step_ms")
    lines += [
        "",
        f"TRL's own cost per step (trl padded / plain padded): {trl / plain:.2f}x",
        f"padding-free vs padded (same conversations per step): {trl / free:.2f}x faster",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
