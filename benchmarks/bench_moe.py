"""Benchmark 3: the MoE layer (8 routed experts, top-2, 1 shared; 8 x 256 tokens), inference and training."""

from __future__ import annotations

import torch

from minimind_ref import MiniMindConfig
from minimind_ref.lab.upstream import MOEFeedForward as UpstreamMoE
from minimind_ref.lab.upstream import UpstreamConfig
from minimind_ref.moe import MoEFeedForward

from .common import Row, interleaved
from .naive_moe import group_by_expert, grouped_floor, per_token_moe

TARGET_INFER = 1.15
TARGET_TRAIN = 1.25


def _backward(outs, grads):
    torch.autograd.backward(outs, grads)


COMPILED = "minimind_ref MoE, torch.compile (dense_dispatch)"


def run(device: torch.device, quick: bool = False, compiled: bool = True) -> tuple[list[Row], dict]:
    cfg = MiniMindConfig(use_moe=True, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1)
    torch.manual_seed(0)
    moe = MoEFeedForward(cfg).to(device)
    up = UpstreamMoE(UpstreamConfig.from_config(cfg.to_dict())).to(device)
    up.load_state_dict(moe.state_dict(), strict=True)
    bsz, seq_len = 8, 256
    x = torch.randn(bsz, seq_len, cfg.hidden_size, device=device)
    x1 = x[:1]
    blocks = group_by_expert(moe, x)
    counts = [b.shape[0] for b in blocks]
    info = {"moe_shape": [bsz, seq_len, cfg.hidden_size], "moe_tokens_per_expert": counts,
            "moe_experts": [cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts]}
    rows: list[Row] = []

    # ---------------------------------------------------------------- inference
    moe.eval(), up.eval()
    with torch.inference_mode():
        y = moe(x)
        torch.testing.assert_close(up(x), y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(per_token_moe(moe, x), y, rtol=1e-4, atol=1e-5)
    fns = {
        "minimind_ref MoE": lambda: moe(x),
        "compute floor (pre-grouped expert matmuls)": lambda: grouped_floor(moe, blocks, x),
        "upstream moe_infer": lambda: up(x),
    }
    if compiled:  # under torch.compile the layer runs every expert on every token (static shapes)
        torch._dynamo.reset()
        compiled_moe = torch.compile(moe, fullgraph=True)
        with torch.inference_mode():
            torch.testing.assert_close(compiled_moe(x), y, rtol=1e-4, atol=1e-5)
        fns[COMPILED] = lambda: compiled_moe(x)
    print(f"  MoE inference, {bsz} x {seq_len} tokens, tokens per expert {counts}", flush=True)
    with torch.inference_mode():
        cmp = interleaved(fns, rounds=5 if quick else 7, number=3)
        # the per-token loop is too slow for 2048 tokens: one sequence of 256, against ours on the same tokens
        loop = interleaved({"per-token loop": lambda: per_token_moe(moe, x1), "minimind_ref MoE": lambda: moe(x1)},
                           rounds=2 if quick else 3)
    floor = "compute floor (pre-grouped expert matmuls)"
    rows += [cmp.row("moe-infer", "minimind_ref MoE", floor, TARGET_INFER),
             cmp.row("moe-infer", "upstream moe_infer", floor),
             cmp.row("moe-infer", floor)]
    if compiled:
        rows.append(cmp.row("moe-infer", COMPILED, "minimind_ref MoE",
                            note=f"{cfg.n_routed_experts} experts on every token instead of "
                                 f"{cfg.num_experts_per_tok}: {cfg.n_routed_experts // cfg.num_experts_per_tok} x "
                                 "the routed FLOPs"))
    rows.append(loop.row("moe-infer", "per-token loop", "minimind_ref MoE",
                         note=f"on 1 x {seq_len} tokens, minimind_ref {loop.median('minimind_ref MoE') * 1e3:.1f} ms"))

    # ---------------------------------------------------------------- training
    moe.train(), up.train()
    g = torch.randn_like(x)
    xs = x.detach().requires_grad_(True)
    gblocks = [b.detach().requires_grad_(True) for b in blocks]
    grads_floor = [torch.randn_like(b) for b in blocks] + [torch.randn(x.numel() // x.shape[-1], x.shape[-1],
                                                                       device=device)]

    def train_ours():
        moe.zero_grad(set_to_none=True)
        y = moe(xs)
        (y * g).sum().add(moe.aux_loss).backward()

    def train_up():
        up.zero_grad(set_to_none=True)
        y = up(xs)
        (y * g).sum().add(up.aux_loss).backward()

    def train_loop():
        moe.zero_grad(set_to_none=True)
        y = per_token_moe(moe, xs[:1])
        (y * g[:1]).sum().add(moe.aux_loss).backward()

    def train_ours_1():
        moe.zero_grad(set_to_none=True)
        y = moe(xs[:1])
        (y * g[:1]).sum().add(moe.aux_loss).backward()

    def train_floor():
        moe.zero_grad(set_to_none=True)
        _backward(grouped_floor(moe, gblocks, xs), grads_floor)

    # the training paths compute the same outputs and gradients
    train_ours()
    ref = {k: p.grad.clone() for k, p in moe.named_parameters()}
    train_up()
    for k, p in up.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], rtol=1e-4, atol=1e-5)
    fns = {"minimind_ref MoE": train_ours, floor: train_floor, "upstream mask-per-expert (repeat_interleave)": train_up}
    print("  MoE training (forward + backward)", flush=True)
    cmp = interleaved(fns, rounds=5 if quick else 7)
    loop = interleaved({"per-token loop": train_loop, "minimind_ref MoE": train_ours_1}, rounds=1 if quick else 2)
    rows += [cmp.row("moe-train", "minimind_ref MoE", floor, TARGET_TRAIN),
             cmp.row("moe-train", "upstream mask-per-expert (repeat_interleave)", floor),
             cmp.row("moe-train", floor)]
    rows.append(loop.row("moe-train", "per-token loop", "minimind_ref MoE",
                         note=f"on 1 x {seq_len} tokens, minimind_ref {loop.median('minimind_ref MoE') * 1e3:.1f} ms"))
    return rows, info
