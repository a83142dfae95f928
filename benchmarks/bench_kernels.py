"""Benchmark 5: RMSNorm against LayerNorm, and explicit attention against SDPA, at the model's shapes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from minimind_ref import MiniMindConfig
from minimind_ref.attention import Attention
from minimind_ref.norm import RMSNorm

from .common import Row, interleaved


def _fwd_bwd(module, x, g):
    module.zero_grad(set_to_none=True)
    module(x).backward(g)


def run(device: torch.device, quick: bool = False) -> tuple[list[Row], dict]:
    cfg = MiniMindConfig()
    rows: list[Row] = []
    rounds = 5 if quick else 11
    bsz, seq_len, d = 4, 256, cfg.hidden_size
    torch.manual_seed(0)
    x = torch.randn(bsz, seq_len, d, device=device)
    g = torch.randn_like(x)
    norms = {
        "minimind_ref RMSNorm": RMSNorm(d, cfg.rms_norm_eps).to(device),
        "torch nn.RMSNorm": nn.RMSNorm(d, eps=cfg.rms_norm_eps).to(device),
        "torch nn.LayerNorm": nn.LayerNorm(d, eps=cfg.rms_norm_eps).to(device),
    }
    torch.testing.assert_close(norms["minimind_ref RMSNorm"](x), norms["torch nn.RMSNorm"](x))
    print(f"  norms on ({bsz}, {seq_len}, {d})", flush=True)
    with torch.inference_mode():
        cmp = interleaved({k: (lambda m=m: m(x)) for k, m in norms.items()}, rounds=rounds, number=20)
    for k in norms:
        rows.append(cmp.row("norm-forward", k, "torch nn.LayerNorm" if k != "torch nn.LayerNorm" else None))
    xs = x.detach().requires_grad_(True)
    cmp = interleaved({k: (lambda m=m: _fwd_bwd(m, xs, g)) for k, m in norms.items()}, rounds=rounds, number=10)
    for k in norms:
        rows.append(cmp.row("norm-train", k, "torch nn.LayerNorm" if k != "torch nn.LayerNorm" else None))

    # attention: the same weights through SDPA (enable_gqa) and through the explicit path the book derives
    sdpa = Attention(cfg).to(device)
    explicit = copy.deepcopy(sdpa)
    explicit.flash = False
    hd = cfg.head_dim
    info = {"norm_shape": [bsz, seq_len, d], "attention_shapes": []}
    for T in ([256] if quick else [256, 1024]):
        xa = torch.randn(1 if T > 256 else bsz, T, d, device=device)
        pos = (torch.ones(T, hd, device=device), torch.zeros(T, hd, device=device))  # RoPE is not what is timed
        torch.testing.assert_close(sdpa(xa, pos), explicit(xa, pos), rtol=1e-4, atol=1e-5)
        info["attention_shapes"].append(list(xa.shape))
        label = f"({xa.shape[0]}, {T}, {d}) causal"
        print(f"  attention {label}", flush=True)
        rows += _attention_rows(sdpa, explicit, xa, pos, label, rounds)
    return rows, info


def _fwd_bwd_attn(module, x, pos, g):
    module.zero_grad(set_to_none=True)
    module(x, pos).backward(g)


def _attention_rows(sdpa, explicit, xa, pos, label, rounds) -> list[Row]:
    a, b = f"SDPA {label}", f"explicit {label}"
    with torch.inference_mode():
        cmp = interleaved({a: lambda: sdpa(xa, pos), b: lambda: explicit(xa, pos)}, rounds=rounds, number=5)
    rows = [cmp.row("attention-forward", b, a, note="q/k/v/o projections included"), cmp.row("attention-forward", a)]
    xs, ga = xa.detach().requires_grad_(True), torch.randn_like(xa)
    cmp = interleaved({a: lambda: _fwd_bwd_attn(sdpa, xs, pos, ga), b: lambda: _fwd_bwd_attn(explicit, xs, pos, ga)},
                      rounds=rounds, number=3)
    return rows + [cmp.row("attention-train", b, a), cmp.row("attention-train", a)]
