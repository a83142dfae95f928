"""Benchmark 2: greedy decoding of 128 tokens from a 32-token prompt, batch 1, against Llama's ``generate``.

Eager and compiled, on both sides: ``minimind_ref.generate`` and ``generate(compile=True)`` (the single-token
step compiled over a static cache), ``LlamaForCausalLM.generate`` with its default dynamic cache, and with
its static cache and ``torch.compile`` (``cache_implementation="static"``, transformers' own compile config).
Every candidate makes the same 128 tokens (checked). The one-off cost of compiling (the *warm-up*) is not in
the rounds: ``benchmarks.warmup`` measures it in fresh processes, first with an empty Inductor cache (the
first use on a machine) and then with the cache that run filled (a later session), and the break-even
length is that warm-up divided by the time the compiled step saves per token.
"""

from __future__ import annotations

import warnings

import torch

from minimind_ref import MiniMindConfig

from .common import CLOCK, Row, interleaved
from .models import build, llama_twin, upstream_twin

PROMPT, NEW = 32, 128
TARGET_VS_LLAMA = 0.75
TARGET_COMPILED_VS_LLAMA = 0.70

OURS, OURS_COMPILED = "minimind_ref generate", "minimind_ref generate(compile=True)"
HF, HF_COMPILED = "transformers Llama generate", "transformers generate, static cache + compile"
UPSTREAM, FLOOR = "upstream-style greedy loop", "floor: the step's matrix-vector products only"


def candidates(device: torch.device, compiled: bool = True) -> tuple[dict, dict]:
    """The generate calls being compared, on one set of weights: ({name: zero-argument call}, context)."""
    from transformers import CompileConfig, GenerationConfig

    cfg = MiniMindConfig()
    mm = build(cfg, device).eval()
    llama = llama_twin(mm).eval()
    up = upstream_twin(mm).eval()
    torch.manual_seed(1)
    # ids from 3 up: no special token in the prompt; no EOS stop either, so every run makes all NEW tokens
    x = torch.randint(3, cfg.vocab_size, (1, PROMPT), device=device)
    ones = torch.ones_like(x)
    greedy = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0,
                  bos_token_id=cfg.bos_token_id)
    gen_cfg = GenerationConfig(**greedy)
    compile_cfg = CompileConfig()  # transformers' defaults (mode "reduce-overhead": CUDA graphs on a GPU)
    compile_cfg._compile_all_devices = device.type == "cpu"  # transformers compiles on CPU only when asked
    static_cfg = GenerationConfig(**greedy, cache_implementation="static", compile_config=compile_cfg)

    def hf_generate(config):
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return llama.generate(x, attention_mask=ones, generation_config=config)

    fns = {
        OURS: lambda: mm.generate(x, max_new_tokens=NEW, do_sample=False, eos_token_id=[]),  # []: never stop
        HF: lambda: hf_generate(gen_cfg),
        UPSTREAM: lambda: up.generate(x, max_new_tokens=NEW, do_sample=False, eos_token_id=None),
    }
    if compiled:
        fns[OURS_COMPILED] = lambda: mm.generate(x, max_new_tokens=NEW, do_sample=False, eos_token_id=[],
                                                 compile=True)
        fns[HF_COMPILED] = lambda: hf_generate(static_cfg)
    return fns, {"model": mm, "config": cfg}


def run(device: torch.device, quick: bool = False, compiled: bool = True) -> tuple[list[Row], dict]:
    from . import warmup

    warm = warmup.in_fresh_processes(device, torch.get_num_threads()) if compiled else {}
    torch._dynamo.reset()
    fns, ctx = candidates(device, compiled)
    mm = ctx["model"]
    tokens = {name: fn() for name, fn in fns.items()}  # compiles here (in this process: not what is reported)
    differ = [name for name, t in tokens.items() if not torch.equal(t, tokens[OURS])]
    if differ:
        raise AssertionError(f"greedy tokens differ from minimind_ref's: {differ}")
    info = {"decode_prompt": PROMPT, "decode_new_tokens": NEW, "decode_tokens_identical": True}

    # The floor of any implementation at batch 1: every weight matrix read once per token. Timed here as
    # the step's matrix-vector products alone (same weights, same shapes, nothing else), x the NEW steps.
    weights = [lin.weight for layer in mm.model.layers for lin in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)] + [mm.lm_head.weight]
    vecs = {w.shape[1]: torch.randn(1, 1, w.shape[1], device=device) for w in weights}

    def gemvs_of_one_step():
        with torch.inference_mode():
            for w in weights:
                torch.nn.functional.linear(vecs[w.shape[1]], w)

    print(f"  greedy decoding, {PROMPT} + {NEW} tokens, batch 1 (tokens identical)", flush=True)
    cmp = interleaved({**fns, FLOOR: gemvs_of_one_step}, rounds=3 if quick else 5)
    cmp.times[FLOOR] = [t * NEW for t in cmp.times[FLOOR]]  # one token's weight stream -> NEW tokens
    n_bytes = sum(w.numel() * w.element_size() for w in weights)
    info["decode_weight_bytes_per_token"] = n_bytes
    info["decode_gemvs_per_token"] = len(weights)
    info["decode_floor_bandwidth_GBps"] = n_bytes * NEW / cmp.median(FLOOR) / 1e9

    def per_token(name):
        return f"{cmp.median(name) / NEW * 1e3:.1f} ms/token"

    rows = [cmp.row("decode", OURS, HF, TARGET_VS_LLAMA,
                    note=f"{per_token(OURS)}; {cmp.ratio(OURS, FLOOR):.2f} x the floor")]
    if compiled:
        rows += [
            cmp.row("decode", OURS_COMPILED, HF, TARGET_COMPILED_VS_LLAMA,
                    note=f"{per_token(OURS_COMPILED)}; {cmp.ratio(OURS_COMPILED, FLOOR):.2f} x the floor; "
                         "warm-up excluded (see info)"),
            cmp.row("decode", OURS_COMPILED, OURS, note="compiled against eager minimind_ref"),
            cmp.row("decode", HF_COMPILED, HF, note=f"{per_token(HF_COMPILED)}; warm-up excluded"),
        ]
        info["decode_warmup"] = warm
        info["decode_break_even_clock"] = CLOCK["name"]
        for name, eager in ((OURS_COMPILED, OURS), (HF_COMPILED, HF)):
            saving = cmp.saving(name, eager) / NEW  # seconds per token, median of same-round differences
            info.setdefault("decode_saving_per_token_s", {})[name] = saving
            for cache, w in warm.items():
                # the warm-up on the clock of the rounds: CPU time when they were timed by CPU time
                seconds = w[name]["warmup_cpu_s" if CLOCK["name"] == "process CPU time" else "warmup_s"]
                info.setdefault("decode_break_even_tokens", {}).setdefault(name, {})[cache] = (
                    seconds / saving if saving > 0 else None)  # None: compiling never pays
    rows += [
        cmp.row("decode", UPSTREAM, HF, note=per_token(UPSTREAM)),
        cmp.row("decode", HF, note=per_token(HF)),
        cmp.row("decode", FLOOR, HF,
                note=f"{len(weights)} GEMVs, {n_bytes / 1e6:.0f} MB of weights per token at "
                     f"{info['decode_floor_bandwidth_GBps']:.1f} GB/s: {cmp.median(FLOOR) / NEW * 1e3:.1f} ms/token"),
    ]
    return rows, info
