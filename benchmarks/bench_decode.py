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
        return mm.generate(x, max_new_tokens=new, do_sample=False, eos_token_id=None)

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

    base = "transformers Llama generate"
    fns = {"minimind_ref generate": ours, base: hf, "upstream-style greedy loop": upstream}
    print(f"  greedy decoding, {prompt_len} + {new} tokens, batch 1 (tokens identical)", flush=True)
    cmp = interleaved(fns, rounds=3 if quick else 7)
    rows = [
        cmp.row("decode", "minimind_ref generate", base, TARGET_VS_LLAMA,
                note=f"{cmp.median('minimind_ref generate') / new * 1e3:.1f} ms/token"),
        cmp.row("decode", "upstream-style greedy loop", base,
                note=f"{cmp.median('upstream-style greedy loop') / new * 1e3:.1f} ms/token"),
        cmp.row("decode", base, note=f"{cmp.median(base) / new * 1e3:.1f} ms/token"),
    ]
    return rows, info
