"""The warm-up of compiled decoding, measured in a fresh Python process (``python -m benchmarks.warmup``).

warm-up = time of the first ``generate`` call with compilation - time of a later call: tracing, Inductor's
code generation and C++ (or Triton) compilation, CUDA-graph recording, first-run allocations. It depends on
Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``), so ``in_fresh_processes`` runs this module twice with
one new, empty cache directory: "cold" is the first use on a machine, "warm" a later session, whose kernels
Inductor finds on disk (tracing and graph passes still run).

Wall time depends on what else runs on the machine, so the CPU time is recorded too (this process and the
compilers it waited for: Inductor compiles with one thread here, so that no worker pool hides its CPU time).
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

import torch


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    w0, c0 = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - w0, _cpu_seconds() - c0


def measure(device: torch.device) -> dict[str, dict[str, float]]:
    """{candidate: {first_call_s, steady_call_s, warmup_s, and the same in CPU seconds}} for the compiled
    candidates of the decode benchmark."""
    from .bench_decode import HF_COMPILED, OURS_COMPILED, candidates

    fns, _ = candidates(device, compiled=True)
    out = {}
    for name in (OURS_COMPILED, HF_COMPILED):
        first, first_cpu = _timed(fns[name])
        steady, steady_cpu = min(_timed(fns[name]) for _ in range(2))
        out[name] = {"first_call_s": first, "steady_call_s": steady, "warmup_s": first - steady,
                     "first_call_cpu_s": first_cpu, "steady_call_cpu_s": steady_cpu,
                     "warmup_cpu_s": first_cpu - steady_cpu}
    return out


def in_fresh_processes(device: torch.device, threads: int) -> dict[str, dict]:
    """{"cold": measure(...), "warm": measure(...)}, each in a new process, sharing one new Inductor cache."""
    root = Path(__file__).resolve().parent.parent
    results = {}
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache_dir:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        for phase in ("cold", "warm"):
            print(f"  compile warm-up in a fresh process ({phase} Inductor cache)", flush=True)
            done = subprocess.run([sys.executable, "-m", "benchmarks.warmup", "--device", str(device),
                                   "--threads", str(threads)], cwd=root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"benchmarks.warmup failed:\n{done.stderr[-3000:]}")
            results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
            for name, r in results[phase].items():
                print(f"    {name:<48s} warm-up {r['warmup_s']:7.1f} s ({r['warmup_cpu_s']:.1f} s of CPU time)",
                      flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.warmup", description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(torch.device(args.device))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
