"""Measure what a run costs the machine: peak memory over every process of the run, CPU
seconds, and disk, sampled from outside the processes (psutil), so the trainer, the
deployment servers and the flow itself are all counted, whoever started them.

A process belongs to the run when it descends from the measuring process or its command line
names the run's marker (the state folder: the local endpoint's servers are started in their
own sessions and outlive the command that started them, so they are not always descendants).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class Usage:
    """What the sampler saw. `peak_rss` is the largest sum of resident memory over the run's
    processes at one moment; `cpu_seconds` the user + system time of every process seen.

    `peak_anon` is the same for anonymous memory alone (resident, not backed by a file): RSS
    also counts the pages of files a process maps, such as a model's safetensors while
    `from_pretrained` reads them, which the kernel drops when memory runs short; anonymous
    memory it cannot drop (there is no swap here)."""

    peak_rss: int = 0
    peak_rss_by_name: dict[str, int] = field(default_factory=dict)
    peak_anon: int = 0
    cpu_seconds: float = 0.0
    samples: int = 0
    wall_seconds: float = 0.0

    @property
    def peak_rss_gb(self) -> float:
        return self.peak_rss / 1e9


@dataclass(frozen=True)
class Snapshot:
    """One sample: the run's resident memory at that moment (in all, and by process kind) and
    the CPU seconds of every process seen so far. A caller that keeps them (`on_sample`) can
    tell what each stage of a run cost from the moments it started and ended."""

    at: float  # time.time()
    rss: int
    rss_by_name: dict[str, int]
    cpu_seconds: float
    cpu_seconds_by_name: dict[str, float] = field(default_factory=dict)
    anon: int = 0  # resident memory not backed by a file (see `Usage`)
    anon_by_name: dict[str, int] = field(default_factory=dict)


def _kind(process: psutil.Process) -> str:
    """A short name for a process of the run: the module it runs, else its executable."""
    try:
        cmdline = process.cmdline()
    except (psutil.Error, OSError):
        return "?"
    if "-m" in cmdline:
        index = cmdline.index("-m")
        if index + 1 < len(cmdline):
            return cmdline[index + 1]
    return Path(cmdline[0]).name if cmdline else process.name()


class ResourceMeter:
    """Samples the run's processes every `interval` seconds on a thread, from `start()` to
    `stop()`; `usage` holds the figures so far. `on_sample` is called with each `Snapshot`
    (on the sampling thread)."""

    def __init__(
        self,
        marker: str | None = None,
        interval: float = 0.5,
        on_sample: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.marker = marker
        self.interval = interval
        self.on_sample = on_sample
        self.usage = Usage()
        self._root = psutil.Process(os.getpid())
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds
        self._names: dict[tuple[int, float], str] = {}  # (pid, create_time) -> its kind
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def processes(self) -> list[psutil.Process]:
        found = {self._root.pid: self._root}
        try:
            for child in self._root.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
        if self.marker:
            for process in psutil.process_iter(["pid", "cmdline"]):
                cmdline = process.info.get("cmdline") or []
                if any(self.marker in part for part in cmdline):
                    found.setdefault(process.pid, process)
        return list(found.values())

    def sample(self) -> Snapshot:
        total, by_name = 0, dict[str, int]()
        anon, anon_by_name = 0, dict[str, int]()
        for process in self.processes():
            try:
                with process.oneshot():
                    memory = process.memory_info()
                    times = process.cpu_times()
                    key = (process.pid, process.create_time())
            except (psutil.Error, OSError):
                continue
            rss = memory.rss
            # Linux: `shared` is the resident pages backed by a file (or shared memory).
            private = max(0, rss - getattr(memory, "shared", 0))
            total += rss
            anon += private
            name = _kind(process)
            by_name[name] = by_name.get(name, 0) + rss
            anon_by_name[name] = anon_by_name.get(name, 0) + private
            self._cpu[key] = times.user + times.system
            if name != "?" or key not in self._names:  # an exiting process reads as "?"
                self._names[key] = name
        usage = self.usage
        usage.samples += 1
        usage.peak_rss = max(usage.peak_rss, total)
        usage.peak_anon = max(usage.peak_anon, anon)
        for name, rss in by_name.items():
            usage.peak_rss_by_name[name] = max(usage.peak_rss_by_name.get(name, 0), rss)
        usage.cpu_seconds = sum(self._cpu.values())
        usage.wall_seconds = time.monotonic() - self._started
        cpu_by_name: dict[str, float] = {}
        for key, seconds in self._cpu.items():
            cpu_by_name[self._names[key]] = cpu_by_name.get(self._names[key], 0.0) + seconds
        snapshot = Snapshot(
            time.time(), total, by_name, usage.cpu_seconds, cpu_by_name, anon, anon_by_name
        )
        if self.on_sample is not None:
            self.on_sample(snapshot)
        return snapshot

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> ResourceMeter:
        self._started = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="resource-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.usage


@contextmanager
def metered(
    marker: str | None = None,
    interval: float = 0.5,
    on_sample: Callable[[Snapshot], None] | None = None,
) -> Iterator[ResourceMeter]:
    meter = ResourceMeter(marker, interval, on_sample).start()
    try:
        yield meter
    finally:
        meter.stop()


def disk_usage(folder: Path) -> int:
    """Bytes of the files under `folder` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            key = (stat.st_dev, stat.st_ino)
            if key not in seen:
                seen.add(key)
                total += stat.st_blocks * 512
    return total
