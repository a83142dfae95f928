"""``python -m benchmarks [--quick] [--only train,decode,moe,context,kernels] [--no-compile] [--out DIR]``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

from . import bench_context, bench_decode, bench_kernels, bench_moe, bench_train, common, report
from .common import environment

BENCHES = {"train": bench_train, "decode": bench_decode, "moe": bench_moe, "context": bench_context,
           "kernels": bench_kernels}
COMPILING = {"train", "decode", "moe", "context"}  # the benchmarks with torch.compile rows (--no-compile)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer rounds and context lengths (about a minute)")
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--no-compile", action="store_true",
                   help="skip every torch.compile row (training step, compiled decoding and its warm-up, MoE)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda; results are written per device")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time by this process's CPU time instead of wall time (with --threads 1; for a machine "
                        "with more runnable jobs than cores)")
    p.add_argument("--merge", action="store_true",
                   help="replace only the re-run benchmarks' rows in the existing results file (e.g. after a burst "
                        "of load from other jobs spoilt one section); the file records which sections were re-run")
    args = p.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        try:
            common.use_cpu_time()
        except ValueError as exc:
            p.error(str(exc))
    device = torch.device(args.device)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    env = environment(device)
    print(f"benchmarks on {env['device_name']} ({env['threads']} threads, {env['clock']}), torch {env['torch']}",
          flush=True)
    t0 = time.perf_counter()
    rows, info = [], {"command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
                      "quick": args.quick}
    for name in chosen:
        print(f"[{name}]", flush=True)
        kw = {"compiled": not args.no_compile} if name in COMPILING else {}
        r, i = BENCHES[name].run(device, quick=args.quick, **kw)
        rows += r
        info.update(i)
    wall = time.perf_counter() - t0
    stem = device.type if not args.quick else f"{device.type}-quick"
    if args.merge:
        rows, env, info, started, wall = report.merge(args.out / f"{stem}.json", rows, env, info, started, wall)
    md = report.write(rows, env, info, started, wall, args.out, stem)
    print(md.read_text())
    print(f"written: {md} and {md.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
