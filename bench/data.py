"""Benchmark the dataset stage: validation + split of ultrachat-shaped files, 2k to 200k rows.

    .venv/bin/python -m bench.data [--sizes 2000,20000,200000]

For each size it writes a JSONL file in ultrachat_200k's schema (the project's synthetic
conversations, each made unique by its index so none is dropped as a duplicate; generated
here, never committed), then runs the real dataset stage on it in a fresh child process:
`prepare_dataset` with a file source and the token counter the flow uses (the tiny Phi-3's
chat template + tokenizer), which validates every record, counts its tokens, splits 80/20
with a seed and writes train/test JSONL and the manifest. Per size: wall time of the stage
and the child's peak RSS (from the kernel, `os.wait4`). Target (issue "Benchmarks"): 200k
rows in at most 60 s on 2 cores with at most 2 GB peak memory. Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finetune_phi.chat_data.synthetic import generate_conversations


def write_rows(path: Path, rows: int) -> int:
    """`rows` unique ultrachat-shaped records; returns the file's size in bytes."""
    base = generate_conversations(1200, seed=0)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(rows):
            record = base[index % len(base)]
            messages = [dict(message) for message in record["messages"]]
            messages[0]["content"] = f"{messages[0]['content']} (request {index})"
            prompt = messages[0]["content"]
            handle.write(
                json.dumps({"prompt": prompt, "prompt_id": f"bench-{index}", "messages": messages})
                + "\n"
            )
    return path.stat().st_size


def child(source: Path, out: Path, tokenizer: Path) -> None:
    """Runs in the measured process: the flow's dataset stage, nothing else."""
    from finetune_phi.chat_data import prepare_dataset
    from finetune_phi.chat_data.config import DataSettings
    from tasks.dataset import chat_token_counter

    settings = DataSettings.model_validate({"source": {"kind": "file", "path": source}})
    started = time.perf_counter()
    manifest = prepare_dataset(settings, out, count_tokens=chat_token_counter(str(tokenizer)))
    seconds = time.perf_counter() - started
    counts = manifest.counts
    figures = {"seconds": seconds, "train": counts.train, "test": counts.test}
    print(json.dumps({**figures, "invalid": counts.invalid}))


def measure(source: Path, out: Path, tokenizer: Path) -> dict[str, float]:
    """One fresh child process; its own CPU time and peak memory from `os.wait4`."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.data", "--child", str(source), str(out), str(tokenizer)],
            stdout=subprocess.PIPE,
            stderr=errors,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert process.stdout is not None
        output = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"the dataset stage failed on {source}:\n{tail}")
    figures = json.loads(output.strip().splitlines()[-1])
    figures["peak_rss_mb"] = usage.ru_maxrss / 1024
    figures["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000,200000")
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "OUT", "TOKENIZER"))
    args = parser.parse_args()
    if args.child:
        child(*(Path(value) for value in args.child))
        return 0
    from finetune_phi.tiny_model import build_default_tiny_phi3

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        tokenizer = build_default_tiny_phi3(work / "tiny-phi3")
        print("| rows | file MB | stage s | rows/s | CPU s | peak RSS MB | train / test |")
        print("|---|---|---|---|---|---|---|")
        for rows in (int(size) for size in args.sizes.split(",")):
            source = work / f"rows-{rows}.jsonl"
            size = write_rows(source, rows)
            figures = measure(source, work / f"out-{rows}", tokenizer)
            print(
                f"| {rows:,} | {size / 2**20:.1f} | {figures['seconds']:.1f} | "
                f"{rows / figures['seconds']:,.0f} | {figures['cpu_seconds']:.1f} | "
                f"{figures['peak_rss_mb']:,.0f} | {figures['train']:,} / {figures['test']:,} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
