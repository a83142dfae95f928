"""Benchmark 2: greedy decoding of 128 tokens from a 32-token prompt, batch 1, against Llama's ``generate``."""

from __future__ import annotations

import warnings

import torch

from minimind_ref import MiniMindConfig

from .common import Row, interleaved
from .models import build, llama_twin, upstream_twin

TARGET_VS_LLAMA = 0.75


def run(device: torch.device, quick: bool = False) -> tuple[list[Row], dict]:
    from transformers import GenerationConfig

    cfg = MiniMindConfig()
    prompt_len, new = 32, 128
    mm = build(cfg, device).eval()
    llama = llama_twin(mm).eval()
    up = upstream_twin(mm).eval()
    torch.manual_seed(1)
    # ids from 3 up: no special token in the prompt; no EOS stop either, so every run makes all 128 tokens
    x = torch.randint(3, cfg.vocab_size, (1, prompt_len), device=device)
    ones = torch.ones_like(x)
    gen_cfg = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                               pad_token_id=0, bos_token_id=cfg.bos_token_id)

    def ours():
        return mm.generate(x, max_new_tokens=new, do_sample=False, eos_token_id=[])

    def hf():
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return llama.generate(x, attention_mask=ones, generation_config=gen_cfg)

    def upstream():
        return up.generate(x, max_new_tokens=new, do_sample=False, eos_token_id=None)

    a, b, c = ours(), hf(), upstream()
    same_hf, same_up = torch.equal(a, b), torch.equal(a, c)
    if not (same_hf and same_up):
        raise AssertionError(f"greedy tokens differ: vs Llama {same_hf}, vs upstream {same_up}")
    info = {"decode_prompt": prompt_len, "decode_new_tokens": new, "decode_tokens_identical": True}

    # The floor of any implementation at batch 1: every weight matrix read once per token. Timed here as
    # the step's matrix-vector products alone (same weights, same shapes, nothing else), x the 128 steps.
    weights = [lin.weight for layer in mm.model.layers for lin in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)] + [mm.lm_head.weight]
    vecs = {w.shape[1]: torch.randn(1, 1, w.shape[1], device=device) for w in weights}

    def gemvs_of_one_step():
        with torch.inference_mode():
            for w in weights:
                torch.nn.functional.linear(vecs[w.shape[1]], w)

    floor = "floor: the step's matrix-vector products only"
    base = "transformers Llama generate"
    fns = {"minimind_ref generate": ours, base: hf, "upstream-style greedy loop": upstream}
    print(f"  greedy decoding, {prompt_len} + {new} tokens, batch 1 (tokens identical)", flush=True)
    cmp = interleaved({**fns, floor: gemvs_of_one_step}, rounds=3 if quick else 5)
    cmp.times[floor] = [t * new for t in cmp.times[floor]]  # one token's weight stream -> 128 tokens
    n_bytes = sum(w.numel() * w.element_size() for w in weights)
    info["decode_weight_bytes_per_token"] = n_bytes
    info["decode_floor_bandwidth_GBps"] = n_bytes * new / cmp.median(floor) / 1e9
    rows = [
        cmp.row("decode", "minimind_ref generate", base, TARGET_VS_LLAMA,
                note=f"{cmp.median('minimind_ref generate') / new * 1e3:.1f} ms/token"),
        cmp.row("decode", "upstream-style greedy loop", base,
                note=f"{cmp.median('upstream-style greedy loop') / new * 1e3:.1f} ms/token"),
        cmp.row("decode", base, note=f"{cmp.median(base) / new * 1e3:.1f} ms/token"),
        cmp.row("decode", floor, base,
                note=f"{len(weights)} GEMVs, {n_bytes / 1e6:.0f} MB of weights per token at "
                     f"{info['decode_floor_bandwidth_GBps']:.1f} GB/s: {cmp.median(floor) / new * 1e3:.1f} ms/token"),
    ]
    rows[0].note += f"; {cmp.ratio('minimind_ref generate', floor):.2f} x the floor"
    return rows, info
