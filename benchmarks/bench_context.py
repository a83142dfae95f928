"""Benchmark 4: the cost of one decoding step against the context length (64 -> 2048), with and without a cache.

With a cache, a step runs the new token through the model and attends to the S cached keys; without
one, it recomputes the whole S + 1 tokens. All candidates are timed in the same rounds, so the ratio of
a step at 2048 to a step at 64 is a median of same-round ratios. The calls are the public forwards with
``logits_to_keep=1`` (what a decoding loop calls); the cache is reset to S positions between calls.

The compiled step (``generate(compile=True)``'s) attends over a static cache of ``capacity_for(S + 1)`` slots,
what ``generate`` allocates for a sequence that ends there; its first capacity compiles with static shapes,
the next one recompiles once with the capacity dynamic (torch.compile's automatic dynamic shapes), and the
others reuse that graph.
"""

from __future__ import annotations

import warnings

import torch

from minimind_ref import MiniMindConfig
from minimind_ref.decoding import CompiledDecodeStep, capacity_for

from .common import Row, interleaved
from .models import build, llama_twin, upstream_twin

TARGET_RATIO = 1.7


def run(device: torch.device, quick: bool = False, compiled: bool = True) -> tuple[list[Row], dict]:
    from torch._dynamo.utils import counters
    from transformers import DynamicCache

    cfg = MiniMindConfig()
    contexts = [64, 2048] if quick else [64, 256, 512, 1024, 2048]
    mm = build(cfg, device).eval()
    llama = llama_twin(mm).eval()
    up = upstream_twin(mm).eval()
    torch.manual_seed(2)
    ids = torch.randint(3, cfg.vocab_size, (1, max(contexts) + 1), device=device)

    fns, checks, capacities = {}, [], {}
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for S in contexts:
            prefix, tok = ids[:, :S], ids[:, S:S + 1]
            ref = mm(ids[:, :S + 1], logits_to_keep=1).logits  # the no-cache answer

            out = mm(prefix, use_cache=True)
            cache = out.past_key_values

            def ours(cache=cache, S=S, tok=tok):
                cache.length = S  # forget the token written by the previous call
                return mm(tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits

            past = up(prefix, use_cache=True).past_key_values

            def upstream(past=past, tok=tok):
                return up(tok, past_key_values=past, use_cache=True, logits_to_keep=1).logits

            hf_cache = DynamicCache(config=llama.config)
            llama(prefix, past_key_values=hf_cache, use_cache=True)

            def hf(hf_cache=hf_cache, tok=tok):
                out = llama(tok, past_key_values=hf_cache, use_cache=True, logits_to_keep=1).logits
                hf_cache.crop(-1)  # drop the token this call appended
                return out

            def nocache(S=S):
                return mm(ids[:, :S + 1], logits_to_keep=1).logits

            tested = [ours, upstream, hf]
            fns[f"minimind_ref cached @{S}"] = ours
            if compiled:
                capacities[S] = capacity_for(S + 1, cfg.max_position_embeddings)
                step = CompiledDecodeStep(mm, 1, capacities[S], device, mm.lm_head.weight.dtype)
                mm(prefix, past_key_values=step.start(), use_cache=True)

                def ours_compiled(step=step, S=S, tok=tok):
                    return step(tok, S)[:, None]  # writes slot S again at every call

                tested.append(ours_compiled)
                fns[f"minimind_ref compiled @{S}"] = ours_compiled
            for fn in tested:
                checks.append(float((fn()[:, -1] - ref[:, -1]).abs().max()))
            fns[f"upstream-style cached @{S}"] = upstream
            fns[f"transformers Llama cached @{S}"] = hf
            fns[f"minimind_ref no cache @{S}"] = nocache
        worst = max(checks)
        assert worst < 1e-3, f"a cached step disagrees with the full forward by {worst}"
        print(f"  decoding step vs context {contexts} (cached steps agree with the full forward to {worst:.1e})",
              flush=True)
        cached = {k: v for k, v in fns.items() if "no cache" not in k}
        cmp = interleaved(cached, rounds=3 if quick else 7, number=5)
        full = interleaved({k: v for k, v in fns.items() if "no cache" in k}, rounds=3, number=1)
    cmp.times.update(full.times)

    rows = []
    lo, hi = contexts[0], contexts[-1]
    impls = ["minimind_ref cached", "upstream-style cached", "transformers Llama cached", "minimind_ref no cache"]
    if compiled:
        impls.insert(1, "minimind_ref compiled")
    for impl in impls:
        for S in contexts:
            note = f"static cache of {capacities[S]} slots" if impl == "minimind_ref compiled" else ""
            rows.append(cmp.row("context", f"{impl} @{S}", f"{impl} @{lo}" if S != lo else None, note=note))
        last = rows[-1]
        last.target = f"<= {TARGET_RATIO:g}" if impl == "minimind_ref cached" else None
        last.met = (last.ratio <= TARGET_RATIO) if impl == "minimind_ref cached" else None
        last.note = f"per-token cost at {hi} / at {lo}"
    info = {"context_lengths": contexts, "context_max_abs_diff_vs_full_forward": worst}
    if compiled:
        info["context_compiled_capacities"] = capacities
        info["context_compiled_graphs"] = counters["stats"]["unique_graphs"] - graphs_before
    return rows, info
