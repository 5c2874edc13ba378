"""The resource meter counts memory over every process of a run, children included."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_phi.resources import Snapshot, disk_usage, metered

HOLD = "import time; x = bytearray({size}); time.sleep({seconds})"


def test_a_child_processes_memory_counts(tmp_path: Path) -> None:
    size = 300_000_000
    with metered(interval=0.05) as meter:
        alone = meter.usage.peak_rss
        child = subprocess.Popen([sys.executable, "-c", HOLD.format(size=size, seconds=2)])
        time.sleep(1.5)
        child.wait()
    usage = meter.usage
    assert usage.peak_rss >= alone + size * 0.9  # the child's 300 MB were seen
    assert usage.samples > 5 and usage.cpu_seconds > 0
    assert any(name.startswith("python") or name == "-c" for name in usage.peak_rss_by_name)


def test_a_process_named_by_the_marker_counts_though_not_a_child(tmp_path: Path) -> None:
    marker = str(tmp_path / "state")
    code = HOLD.format(size=200_000_000, seconds=3) + f"  # {marker}"
    # start_new_session + a double fork would hide it from children(); the marker finds it
    stranger = subprocess.Popen([sys.executable, "-c", code, marker], start_new_session=True)
    try:
        time.sleep(1.0)
        with metered(marker=marker, interval=0.05) as meter:
            time.sleep(0.5)
        assert meter.usage.peak_rss > 200_000_000
    finally:
        stranger.kill()
        stranger.wait()


def test_disk_usage_counts_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    assert 100_000 <= disk_usage(tmp_path) < 200_000


def test_each_sample_is_handed_over_with_memory_and_cpu_by_process_kind() -> None:
    seen: list[Snapshot] = []
    size = 200_000_000
    with metered(interval=0.05, on_sample=seen.append) as meter:
        child = subprocess.Popen([sys.executable, "-c", HOLD.format(size=size, seconds=1)])
        child.wait()
    usage = meter.usage
    assert len(seen) == usage.samples > 5
    assert [s.at for s in seen] == sorted(s.at for s in seen)
    assert max(s.rss for s in seen) == usage.peak_rss
    assert max(s.anon for s in seen) == usage.peak_anon
    # The child's bytearray is anonymous memory; RSS also counts mapped files (libraries).
    assert all(0 < s.anon <= s.rss for s in seen)
    assert usage.peak_anon >= size
    last = seen[-1]
    assert last.cpu_seconds == usage.cpu_seconds
    assert sum(last.cpu_seconds_by_name.values()) == pytest.approx(last.cpu_seconds)
    # The child shows up under its own kind while it holds its memory.
    child_kinds = {name for s in seen for name in s.rss_by_name if name.startswith("python")}
    assert any(s.rss_by_name.get(kind, 0) >= size * 0.9 for s in seen for kind in child_kinds)
