"""Timing side by side: interleaved rounds of ``torch.utils.benchmark`` measurements, medians, ratios.

On a shared machine the load drifts over seconds. So the candidates of one comparison are timed in
*rounds*: in every round each candidate is measured once (``Timer.timeit``), one after the other, and
the ratio of two candidates is the median over rounds of their per-round ratio. Neighbours that slow
the machine down for a while then slow both sides of a ratio alike.

When the machine is oversubscribed (more runnable jobs than cores), wall time mostly measures how long the
scheduler kept a process waiting. With one torch thread, the process's CPU time (``time.process_time``)
measures the work itself: ``use_cpu_time()`` (``python -m benchmarks --threads 1 --cpu-time``) makes every
timer use it. Memory and cache contention from the neighbours still shows in it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils import benchmark


@dataclass
class Row:
    """One line of the results table."""

    bench: str  # which benchmark (train, decode, moe, context, kernels, compile)
    name: str  # the candidate
    seconds: float  # median seconds per call
    baseline: str | None = None  # what the ratio is taken against
    ratio: float | None = None  # median over rounds of seconds / baseline seconds
    target: str | None = None  # e.g. "<= 0.95"
    met: bool | None = None
    iqr: float | None = None  # interquartile range of the per-round seconds
    note: str = ""
    rounds: list[float] = field(default_factory=list)  # the per-round seconds (JSON only)
    ratio_rounds: list[float] = field(default_factory=list)  # the same-round ratios to the baseline (JSON only)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """Per-round seconds of each candidate."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def iqr(self, name: str) -> float:
        t = sorted(self.times[name])
        if len(t) < 4:
            return t[-1] - t[0]
        q = statistics.quantiles(t, n=4)
        return q[2] - q[0]

    def ratios(self, name: str, baseline: str) -> list[float]:
        """time(name) / time(baseline) in each round."""
        return [a / b for a, b in zip(self.times[name], self.times[baseline], strict=True)]

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of time(name) / time(baseline) in the same round."""
        return statistics.median(self.ratios(name, baseline))

    def saving(self, name: str, baseline: str) -> float:
        """Median over rounds of time(baseline) - time(name) in the same round (seconds)."""
        return statistics.median(b - a for a, b in zip(self.times[name], self.times[baseline], strict=True))

    def row(self, bench: str, name: str, baseline: str | None = None, target: float | None = None,
            note: str = "") -> Row:
        ratio = self.ratio(name, baseline) if baseline else None
        met = None if target is None or ratio is None else ratio <= target
        return Row(bench=bench, name=name, seconds=self.median(name), baseline=baseline, ratio=ratio,
                   target=None if target is None else f"<= {target:g}", met=met, iqr=self.iqr(name), note=note,
                   rounds=list(self.times[name]), ratio_rounds=self.ratios(name, baseline) if baseline else [])


CLOCK: dict[str, Any] = {"name": "wall time", "timer": time.perf_counter}  # what every Timer reads


def use_cpu_time() -> None:
    """Time every candidate by the CPU time of this process (only meaningful with one torch thread)."""
    if torch.get_num_threads() != 1:
        raise ValueError(f"CPU time adds up the time of all {torch.get_num_threads()} threads: use --threads 1")
    CLOCK.update(name="process CPU time", timer=time.process_time)


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int, number: int = 1, warmup: int = 1,
                verbose: bool = True) -> Comparison:
    """Time each zero-argument callable ``number`` times per round, all of them in every round."""
    timers = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        timers[name] = benchmark.Timer(stmt="fn()", globals={"fn": fn}, description=name,
                                       num_threads=torch.get_num_threads(), timer=CLOCK["timer"])
    result = Comparison({name: [] for name in fns})
    names = list(timers)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order: no candidate always goes first
            result.times[name].append(timers[name].timeit(number).median)
    if verbose:
        for name in fns:
            print(f"    {name:<40s} {result.median(name) * 1e3:10.3f} ms  (IQR {result.iqr(name) * 1e3:.3f} ms)",
                  flush=True)
    return result


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on."""
    import transformers

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "clock": CLOCK["name"],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        env["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return env
