"""Timings as ratios, measured with ``torch.utils.benchmark`` on the device the chapter runs on.

Absolute times depend on the machine (and, on a shared 2-core CPU, on the neighbours); ratios of
functions timed side by side in one process mean more. :func:`compare` times several zero-argument
callables, reports medians and ratios to a baseline, and prints the device. It never asserts on a
time: a slow machine must not fail a chapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Timing", "compare", "bandwidth"]


@dataclass
class Timing:
    """Median seconds per call for each named function, and their ratios to ``baseline``."""

    medians: dict[str, float]
    iqrs: dict[str, float]
    baseline: str
    device: str
    label: str = ""
    measurements: dict[str, Any] = field(default_factory=dict, repr=False)

    def ratio(self, name: str, to: str | None = None) -> float:
        """time(name) / time(to): above 1 means ``name`` is slower (``to`` defaults to the baseline)."""
        return self.medians[name] / self.medians[to or self.baseline]

    def ratios(self) -> dict[str, float]:
        return {k: self.ratio(k) for k in self.medians}

    def __str__(self) -> str:
        lines = [f"{self.label or 'timing'} on {self.device}: median, ratio to {self.baseline}"]
        width = max(len(k) for k in self.medians)
        for k, t in self.medians.items():
            iqr = self.iqrs[k] * 1e6
            lines.append(f"  {k:<{width}} {t * 1e6:9.1f} us (IQR {iqr:6.1f})  x{self.ratio(k):.2f}")
        return "\n".join(lines)


def compare(fns: Mapping[str, Callable[[], Any]], *, baseline: str | None = None, min_run_time: float = 0.2,
            adaptive: bool = False, label: str = "", sub_label: str = "", verbose: bool = True,
            warmup: int = 2) -> Timing:
    """Time each zero-argument callable with ``torch.utils.benchmark.Timer``; return a :class:`Timing`.

    ``blocked_autorange`` by default (it runs for ``min_run_time`` seconds per function);
    ``adaptive=True`` uses ``adaptive_autorange`` (stops when the IQR is small). The timer
    synchronises CUDA itself. Each function runs ``warmup`` times first (lazy initialisation,
    compilation) outside the measurement. Gradients are disabled.
    """
    from torch.utils import benchmark

    from . import device_name

    if not fns:
        raise ValueError("nothing to time")
    baseline = baseline or next(iter(fns))
    if baseline not in fns:
        raise KeyError(f"baseline {baseline!r} is not one of {list(fns)}")
    medians, iqrs, meas = {}, {}, {}
    with torch.no_grad():
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, label=label, sub_label=sub_label,
                                    description=name, num_threads=torch.get_num_threads())
            m = timer.adaptive_autorange(min_run_time=min_run_time) if adaptive else \
                timer.blocked_autorange(min_run_time=min_run_time)
            medians[name], iqrs[name], meas[name] = m.median, m.iqr, m
    result = Timing(medians=medians, iqrs=iqrs, baseline=baseline, device=device_name(), label=label,
                    measurements=meas)
    if verbose:
        print(result)
    return result


def bandwidth(n_bytes: int = 256 * 2**20, *, device: str | torch.device = "cpu", min_run_time: float = 0.2) -> float:
    """Measured copy bandwidth in bytes/second: a tensor of ``n_bytes`` read and written once.

    This is the speed limit of a memory-bound kernel: it moves ``2 * n_bytes`` per copy.
    """
    from torch.utils import benchmark

    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = benchmark.Timer(stmt="dst.copy_(src)", globals={"src": src, "dst": dst},
                        num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time)
    return 2 * src.numel() * 4 / t.median
