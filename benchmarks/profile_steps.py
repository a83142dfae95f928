"""Where the time of a step goes: ``python -m benchmarks.profile_steps [--device cpu] [--out DIR]``.

Writes ``<device>-profile.json`` next to the benchmark results (the Performance appendix draws its stacked bars
from it). Under ``torch.profiler``, for
* one training step (forward + backward, batch 4 x 256, the default config) of ``minimind_ref`` and of the
  Llama with the same weights, and
* one decoding step (batch 1, 32 cached tokens) of ``minimind_ref``, eager and compiled
  (``generate(compile=True)``'s step, with Inductor's kernels recorded as profiler events),
the self time of every operator is summed into four parts: matrix products (``aten::mm``/``addmm``/``bmm``),
the attention kernel (SDPA, forward and backward), Inductor's fused kernels (compiled step only), other ATen
operators; and "outside operators" is the rest of the wall time (Python, the autograd engine, dispatch; the
profiler itself adds to it). The operator calls counted are those of the four parts. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from minimind_ref import MiniMindConfig
from minimind_ref.decoding import CompiledDecodeStep, capacity_for

from .common import environment
from .models import build, llama_twin

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
PARTS = ("matrix products", "attention kernel", "fused kernels (Inductor)", "other operators", "outside operators")


def category(name: str) -> str | None:
    """The part of a step an event's self time counts towards; None for what is not an operator or a kernel
    (profiler ranges such as "Torch-Compiled Region", whose self time is Python and dispatch)."""
    if name in MATMUL:
        return "matrix products"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention kernel"
    if "cpp_fused" in name or "triton_" in name:
        return "fused kernels (Inductor)"
    if name.startswith("aten::"):
        return "other operators"
    return None


def profile_calls(fn, steps: int) -> dict:
    """Run ``fn`` ``steps`` times under the profiler: milliseconds per step in each part, operator calls per step."""
    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    parts = dict.fromkeys(PARTS, 0.0)
    calls, per_op = 0, Counter()
    for event in prof.key_averages():
        per_op[event.key] += event.self_cpu_time_total / 1e3 / steps  # us -> ms
        part = category(event.key)
        if part is not None:
            parts[part] += event.self_cpu_time_total / 1e3
            calls += event.count
    op_ms = sum(parts.values())
    parts = {k: v / steps for k, v in parts.items()}
    parts["outside operators"] = max(0.0, wall * 1e3 / steps - op_ms / steps)
    # the process's CPU time beside the wall time: on a machine with more runnable jobs than cores, the
    # difference is time spent waiting for a core, which the profile counts as "outside operators"
    return {"steps": steps, "wall_ms_per_step": wall * 1e3 / steps, "cpu_ms_per_step": cpu * 1e3 / steps,
            "parts_ms": parts,
            "operator_calls_per_step": calls / steps,
            "top_ops_ms": [[k, round(v, 4)] for k, v in per_op.most_common(12)]}


def flops(fn) -> dict[str, float]:
    """FLOPs of one call by operator, and their total."""
    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": float(counter.get_total_flops()), "by_op": by_op}


def training(device: torch.device, steps: int) -> dict:
    cfg = MiniMindConfig()
    mm = build(cfg, device).train()
    llama = llama_twin(mm).train()
    x = torch.randint(0, cfg.vocab_size, (4, 256), device=device)

    def step(model):
        model.zero_grad(set_to_none=True)
        model(input_ids=x, labels=x).loss.backward()

    out = {"shape": [4, 256]}
    for name, model in (("minimind_ref", mm), ("transformers Llama (sdpa)", llama)):
        r = profile_calls(lambda model=model: step(model), steps)
        f = flops(lambda model=model: step(model))
        mm_flops = sum(v for k, v in f["by_op"].items() if k.replace(".", "::", 1) in MATMUL)
        r["flops_per_step"] = f["total"]
        r["matmul_gflops_per_s"] = mm_flops / (r["parts_ms"]["matrix products"] / 1e3) / 1e9
        out[name] = r
        print(f"  training step, {name}: {r['wall_ms_per_step']:.0f} ms per step under the profiler", flush=True)
    return out


def decoding(device: torch.device, steps: int, cached: int = 32) -> dict:
    import torch._inductor.config as inductor_config

    cfg = MiniMindConfig()
    mm = build(cfg, device).eval()
    torch.manual_seed(3)
    ids = torch.randint(3, cfg.vocab_size, (1, cached + 1), device=device)
    prefix, tok = ids[:, :cached], ids[:, cached:]
    out = {"cached_tokens": cached}
    with torch.inference_mode():
        cache = mm(prefix, use_cache=True).past_key_values

        def eager():
            cache.length = cached
            return mm(tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits

        torch._dynamo.reset()
        with inductor_config.patch({"cpp.enable_kernel_profile": True}):  # Inductor's kernels as profiler events
            step = CompiledDecodeStep(mm, 1, capacity_for(cached + 1, cfg.max_position_embeddings), device,
                                      mm.lm_head.weight.dtype)
            mm(prefix, past_key_values=step.start(), use_cache=True)
            step(tok, cached)  # compiles

        for name, fn in (("minimind_ref eager step", eager), ("minimind_ref compiled step", lambda: step(tok, cached))):
            r = profile_calls(fn, steps)
            r["flops_per_step"] = flops(eager)["total"]
            out[name] = r
            print(f"  decoding step, {name}: {r['wall_ms_per_step']:.1f} ms, "
                  f"{r['operator_calls_per_step']:.0f} operator calls per step", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_steps", description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    payload = {"date_utc": started, "environment": environment(device),
               "command": " ".join(["python -m benchmarks.profile_steps", *(sys.argv[1:] if argv is None else argv)]),
               "training": training(device, steps=3), "decoding": decoding(device, steps=20)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device.type}-profile.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
