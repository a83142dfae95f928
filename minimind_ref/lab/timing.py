"""Timings as ratios, measured with ``torch.utils.benchmark`` on the device the chapter runs on.

Absolute times depend on the machine (and, on a shared 2-core CPU, on the neighbours); ratios of
functions timed side by side in one process mean more. :func:`compare` times several zero-argument
callables in interleaved *rounds*: in every round each callable is measured once, one after the
other (the order alternating from round to round), and the ratio of two callables is the median over
rounds of their same-round ratio, so a neighbour that slows the machine down for a while slows both
sides of a ratio alike. On a CPU with one PyTorch thread, where all the work runs in the calling
thread, the clock is that thread's CPU time (``time.thread_time``): the time it spends waiting while
other programs run is not counted, which is what makes timings on a shared machine repeatable.
Elsewhere (CUDA, several threads) it is the wall clock. It prints the device and the clock and never
asserts on a time: a slow machine must not fail a chapter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["Timing", "compare", "bandwidth", "clock"]


def clock() -> tuple[str, Callable[[], float]]:
    """``("thread CPU time", time.thread_time)`` when PyTorch runs on the CPU with one thread (all the
    work happens in the calling thread), else ``("wall clock", time.perf_counter)``."""
    if not torch.cuda.is_available() and torch.get_num_threads() == 1:
        return "thread CPU time", time.thread_time
    return "wall clock", time.perf_counter


@dataclass
class Timing:
    """Per-round seconds per call of each named function; medians and same-round ratios."""

    rounds: dict[str, list[float]]
    baseline: str
    device: str
    label: str = ""
    clock: str = "wall clock"
    medians: dict[str, float] = field(init=False)
    iqrs: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.medians = {k: statistics.median(v) for k, v in self.rounds.items()}
        self.iqrs = {k: _iqr(v) for k, v in self.rounds.items()}

    def ratio(self, name: str, to: str | None = None) -> float:
        """Median over rounds of time(name) / time(to) in the same round: above 1 means ``name`` is
        slower (``to`` defaults to the baseline)."""
        to = to or self.baseline
        return statistics.median(a / b for a, b in zip(self.rounds[name], self.rounds[to], strict=True))

    def ratios(self) -> dict[str, float]:
        return {k: self.ratio(k) for k in self.rounds}

    def __str__(self) -> str:
        n = len(next(iter(self.rounds.values())))
        lines = [f"{self.label or 'timing'} on {self.device}",
                 f"{self.clock}, {n} interleaved rounds: median, ratio to {self.baseline}"]
        width = max(len(k) for k in self.rounds)
        for k, t in self.medians.items():
            iqr = self.iqrs[k] * 1e6
            lines.append(f"  {k:<{width}} {t * 1e6:9.1f} us (IQR {iqr:6.1f})  x{self.ratio(k):.2f}")
        return "\n".join(lines)


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values)
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def compare(fns: Mapping[str, Callable[[], object]], *, baseline: str | None = None, min_run_time: float = 0.2,
            rounds: int = 9, label: str = "", verbose: bool = True, warmup: int = 2) -> Timing:
    """Time each zero-argument callable in ``rounds`` interleaved rounds; return a :class:`Timing`.

    Each callable runs ``warmup`` times first (lazy initialisation, compilation) outside the
    measurement; then a number of calls per measurement is chosen so that one measurement takes about
    ``min_run_time / rounds`` seconds, and every round measures every callable once
    (``torch.utils.benchmark.Timer.timeit``, which synchronises CUDA) with the clock of :func:`clock`.
    Gradients are disabled.
    """
    from torch.utils import benchmark

    from . import device_name

    if not fns:
        raise ValueError("nothing to time")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    baseline = baseline or next(iter(fns))
    if baseline not in fns:
        raise KeyError(f"baseline {baseline!r} is not one of {list(fns)}")
    target = min_run_time / rounds
    clock_name, timer_fn = clock()
    timers, numbers = {}, {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            timers[name] = benchmark.Timer(stmt="fn()", globals={"fn": fn}, description=name, timer=timer_fn,
                                           num_threads=torch.get_num_threads())
            once = timers[name].timeit(1).median
            numbers[name] = max(1, int(target / max(once, 1e-9)))
        names = list(fns)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:  # no callable always goes first
                times[name].append(timers[name].timeit(numbers[name]).median)
    result = Timing(rounds=times, baseline=baseline, device=device_name(), label=label, clock=clock_name)
    if verbose:
        print(result)
    return result


def bandwidth(n_bytes: int = 256 * 2**20, *, device: str | torch.device = "cpu", min_run_time: float = 0.2) -> float:
    """Measured copy bandwidth in bytes/second: a tensor of ``n_bytes`` read and written once.

    This is the speed limit of a memory-bound kernel: it moves ``2 * n_bytes`` per copy. Timed with
    the clock of :func:`clock`.
    """
    from torch.utils import benchmark

    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = benchmark.Timer(stmt="dst.copy_(src)", globals={"src": src, "dst": dst}, timer=clock()[1],
                        num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time)
    return 2 * src.numel() * 4 / t.median
