"""Benchmark the trainer on CPU: the project's default configuration vs the tutorial's.

    .venv/bin/python -m bench.trainer [--repeats 3] [--conversations 1200] [--epochs 1]

Both configurations fine-tune the default tiny Phi-3 on the same synthetic data (80/20 split),
for the same number of epochs, with the same learning rate and schedule, so their final eval
losses are comparable; they differ only in what the tutorial chose for speed and memory:

    tutorial   eager attention, gradient checkpointing, packing (max length 2048), batch 4,
               TRL defaults otherwise (the tutorial's SFTTrainer set-up)
    project    the local profile's training section (SDPA, no recomputation, padded batches
               of 16 short conversations, max length 512)

Every run is a fresh `python -m trainer.fine_tune` process (no warm caches shared between
runs), the configurations interleaved and their order alternated per repeat, so both see the
same machine load. Per run it records, from the child's own resource usage (`os.wait4`):
CPU seconds (user + system) and peak RSS; from the trainer's metrics.json: train-phase wall
time and final eval loss. Real (non-padding) tokens are counted here, once, from the data:
the chat-templated token count of every training conversation times the epochs (both configs
see exactly these tokens; none is truncated at these max lengths). The trainer's own count is
TRL's `num_tokens` at its last logging step, which undercounts a run of a few big steps. The
figure that
matters is real tokens per CPU-second (CPU time is far less sensitive than wall time to other
work on the machine); medians over the repeats, and the ratio project / tutorial.

Figures, not a test: nothing here asserts a speed. BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from finetune_phi.chat_data.split import split_records
from finetune_phi.chat_data.synthetic import generate_conversations
from finetune_phi.settings import load_profile
from finetune_phi.tiny_model import build_default_tiny_phi3
from trainer.config import Hyperparameters

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunFigures:
    config: str
    cpu_seconds: float  # the whole child process: start-up, training, final eval, save
    peak_rss_mb: float
    wall_seconds: float
    train_seconds: float  # the training loop alone, as the trainer measured it
    real_tokens: float
    eval_loss: float
    steps: int

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.real_tokens / self.cpu_seconds

    @property
    def tokens_per_train_second(self) -> float:
        return self.real_tokens / self.train_seconds


def configurations(epochs: float) -> dict[str, Hyperparameters]:
    """The two configurations, identical in everything that is not a speed/memory choice."""
    project = replace(load_profile("local").training, num_train_epochs=epochs, eval_strategy="no")
    tutorial = replace(
        project,
        attn_implementation="eager",
        gradient_checkpointing=True,
        packing=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_length=2048,
    )
    return {"tutorial": tutorial, "project": project}


def real_tokens_per_epoch(model: Path, train: Path) -> int:
    """Non-padding tokens of one pass over `train`, as the trainer tokenizes it (the model's
    chat template over each conversation's messages)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    total = 0
    for line in train.read_text().splitlines():
        messages = json.loads(line)["messages"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        total += len(ids)
    return total


def write_data(folder: Path, conversations: int) -> tuple[Path, Path]:
    records = generate_conversations(conversations, seed=0)
    train, test = split_records(records, 0.2, seed=0)
    paths = []
    for name, rows in (("train", train), ("test", test)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        paths.append(path)
    return paths[0], paths[1]


def run_once(
    name: str,
    hp: Hyperparameters,
    model: Path,
    train: Path,
    test: Path,
    work: Path,
    real_tokens: float,
) -> RunFigures:
    """One fresh trainer process; its CPU time and peak memory from the kernel."""
    out = work / f"{name}-{time.monotonic_ns()}"
    config = {
        **asdict(hp),
        "train_file": str(train),
        "eval_file": str(test),
        "model_output_dir": str(out),
        "base_model": str(model),
        "eval_before_training": False,
        "save_steps": 100_000,  # no mid-run checkpoints: they would be I/O, not training
        "logging_steps": 10,
    }
    config_file = work / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)  # no tracking run: metrics.json has what we need
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.fine_tune", "--config", str(config_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert child.stderr is not None
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if child.returncode != 0:
        raise SystemExit(f"{name}: trainer failed ({child.returncode}):\n{stderr.decode()[-3000:]}")
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return RunFigures(
        config=name,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        wall_seconds=wall,
        train_seconds=float(metrics["train_seconds"]),
        real_tokens=real_tokens,
        eval_loss=float(metrics["eval_loss"]),
        steps=int(metrics["global_step"]),
    )


def median_of(runs: list[RunFigures], attribute: str) -> float:
    return statistics.median(float(getattr(run, attribute)) for run in runs)


def summary(results: dict[str, list[RunFigures]]) -> str:
    columns = (
        ("tokens_per_cpu_second", "real tok/CPU-s", "{:,.0f}"),
        ("tokens_per_train_second", "real tok/s (train)", "{:,.0f}"),
        ("cpu_seconds", "CPU s", "{:.1f}"),
        ("wall_seconds", "wall s", "{:.1f}"),
        ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
        ("eval_loss", "eval loss", "{:.4f}"),
        ("steps", "steps", "{:.0f}"),
        ("real_tokens", "real tokens", "{:,.0f}"),
    )
    lines = ["| config | " + " | ".join(title for _, title, _ in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, runs in results.items():
        cells = [fmt.format(median_of(runs, attr)) for attr, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base, ours = results["tutorial"], results["project"]
    ratio = median_of(ours, "tokens_per_cpu_second") / median_of(base, "tokens_per_cpu_second")
    loss_change = median_of(ours, "eval_loss") / median_of(base, "eval_loss") - 1
    memory = median_of(ours, "peak_rss_mb") / median_of(base, "peak_rss_mb")
    lines += [
        "",
        f"project / tutorial: {ratio:.2f}x real tokens per CPU-second "
        f"(target >= 3x), eval loss {loss_change:+.1%} (target <= +2%), "
        f"peak memory {memory:.2f}x",
        f"medians of {len(base)} interleaved runs each; per run (config, tok/CPU-s, eval loss):",
    ]
    for run in sorted((*base, *ours), key=lambda r: r.config):
        lines.append(f"  {run.config:9s} {run.tokens_per_cpu_second:8,.0f} {run.eval_loss:.4f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=1200)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        work = Path(tmp)
        model = build_default_tiny_phi3(work / "tiny-phi3")
        train, test = write_data(work, args.conversations)
        configs = configurations(args.epochs)
        tokens = real_tokens_per_epoch(model, train) * args.epochs
        print(f"{tokens:,.0f} real tokens to train on per run", flush=True)
        results: dict[str, list[RunFigures]] = {name: [] for name in configs}
        for repeat in range(args.repeats):
            order = list(configs) if repeat % 2 == 0 else list(reversed(configs))
            for name in order:
                figures = run_once(name, configs[name], model, train, test, work, tokens)
                results[name].append(figures)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {name:9s}: "
                    f"{figures.tokens_per_cpu_second:,.0f} real tok/CPU-s, "
                    f"{figures.cpu_seconds:.1f} CPU s, eval loss {figures.eval_loss:.4f}",
                    flush=True,
                )
        print()
        print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
