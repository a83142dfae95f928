"""Timings as ratios, measured with ``torch.utils.benchmark`` on the device the chapter runs on.

Absolute times depend on the machine (and, on a shared 2-core CPU, on the neighbours); ratios of
functions timed side by side in one process mean more. :func:`compare` times several zero-argument
callables in interleaved *rounds*: in every round each callable is measured once, one after the
other (the order alternating from round to round), and the ratio of two callables is the median over
rounds of their same-round ratio, so a neighbour that slows the machine down for a while slows both
sides of a ratio alike. :meth:`Timing.ratio_quartiles` gives the spread of those per-round ratios.

On a CPU with one PyTorch thread, where all the work runs in the calling thread, the clock is that
thread's CPU time (``time.thread_time``): the time the thread spends descheduled while other
programs run is not counted. That is all it removes. A thread that runs more slowly because its
neighbours share the memory bus and the caches is still charged for it, and so is the kernel's work
for the thread's page faults; memory-bound kernels such as normalisations suffer from both. The
page faults are the larger effect for eager code on the CPU: every operation writes a fresh output
tensor, the C library returns large freed blocks to the operating system and maps new ones, and
every first touch of a new page is a fault whose cost is charged to the thread. How many faults a
measurement takes depends on the history of the heap, so the same ratio could change several-fold
from one run to the next. ``compare(..., steady_memory=True)`` keeps freed memory in the process
while it times (glibc's ``mallopt``; Linux only, blocks up to 32 MiB), as PyTorch's caching
allocator does on a GPU; the timings then measure the kernels rather than the operating system's
page handling. Elsewhere (CUDA, several threads) the clock is the wall clock. :func:`compare`
prints the device, the clock and the spread, and never asserts on a time: a slow machine must not
fail a chapter, and its ratios are only as good as their spread says.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["Timing", "compare", "bandwidth", "clock", "steady_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # both thresholds' defaults
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit systems


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextlib.contextmanager
def steady_memory() -> Iterator[bool]:
    """Keep freed memory in the process while the block runs; yields whether it could (glibc only).

    glibc hands blocks above its mmap threshold straight to the operating system and returns them
    when freed, and it trims the top of its heap; either way the next tensor of that size lands on
    fresh pages, each first touch a page fault. Raising both thresholds keeps freed blocks (up to
    32 MiB each) for reuse, as a caching allocator would. Afterwards both are set back to glibc's
    defaults (128 KiB; glibc's dynamic adjustment of the mmap threshold stays off)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    try:
        yield ok
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)


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
    steady_memory: bool = False
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

    def per_round(self, name: str, to: str | None = None) -> list[float]:
        """time(name) / time(to) in each round (``to`` defaults to the baseline)."""
        to = to or self.baseline
        return [a / b for a, b in zip(self.rounds[name], self.rounds[to], strict=True)]

    def ratio_quartiles(self, name: str, to: str | None = None) -> tuple[float, float, float]:
        """(lower quartile, median, upper quartile) of the per-round ratios time(name) / time(to): the
        median is :meth:`ratio`, the interquartile range its spread (the whole range below 4 rounds)."""
        r = self.per_round(name, to)
        if len(r) < 4:
            return min(r), statistics.median(r), max(r)
        q1, _, q3 = statistics.quantiles(r, n=4, method="inclusive")
        return q1, statistics.median(r), q3

    def ratios(self) -> dict[str, float]:
        return {k: self.ratio(k) for k in self.rounds}

    def __str__(self) -> str:
        n = len(next(iter(self.rounds.values())))
        memory = ", freed memory kept" if self.steady_memory else ""
        lines = [f"{self.label or 'timing'} on {self.device}",
                 f"{self.clock}{memory}, {n} interleaved rounds",
                 f"  median time per call (IQR); ratio to {self.baseline}: median (IQR)"]
        width = max(len(k) for k in self.rounds)
        for k, t in self.medians.items():
            iqr = self.iqrs[k] * 1e6
            q1, med, q3 = self.ratio_quartiles(k)
            lines.append(f"  {k:<{width}} {t * 1e6:9.1f} us ({iqr:6.1f})  x{med:.2f} ({q1:.2f}-{q3:.2f})")
        return "\n".join(lines)


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values)
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


_steady = steady_memory  # compare's keyword of the same name shadows the function


def compare(fns: Mapping[str, Callable[[], object]], *, baseline: str | None = None, min_run_time: float = 0.2,
            rounds: int = 9, label: str = "", verbose: bool = True, warmup: int = 2,
            steady_memory: bool = False) -> Timing:
    """Time each zero-argument callable in ``rounds`` interleaved rounds; return a :class:`Timing`.

    Each callable runs ``warmup`` times first (lazy initialisation, compilation) outside the
    measurement; then a number of calls per measurement is chosen so that one measurement takes about
    ``min_run_time / rounds`` seconds, and every round measures every callable once
    (``torch.utils.benchmark.Timer.timeit``, which synchronises CUDA) with the clock of :func:`clock`.
    Gradients are disabled. ``steady_memory=True`` times inside :func:`steady_memory` (on the CPU;
    the module docstring says why); the result records whether it took effect.
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
    keep = steady_memory and not torch.cuda.is_available()
    with torch.no_grad(), (_steady() if keep else contextlib.nullcontext(False)) as kept:
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
    result = Timing(rounds=times, baseline=baseline, device=device_name(), label=label, clock=clock_name,
                    steady_memory=bool(kept))
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
