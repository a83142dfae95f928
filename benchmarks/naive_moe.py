"""The MoE baselines that ``minimind_ref.lab.upstream`` does not already provide.

* ``per_token_moe``: route each token and run its k experts one token at a time (the loop a
  first implementation writes; correct, and as slow as a Python loop over tokens is);
* ``grouped_floor``: the compute floor, the same expert matmuls run on tokens that are already
  grouped by expert (no routing, sorting, gathering, weighting or scattering).
"""

from __future__ import annotations

import torch

from minimind_ref.moe import MoEFeedForward


def per_token_moe(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The same function as ``moe(x)``, one token and one expert call at a time."""
    bsz, seq_len, hidden = x.shape
    topk_idx, topk_weight, aux_loss = moe.gate(x)
    tokens = x.reshape(-1, hidden)
    rows = []
    for t in range(tokens.shape[0]):
        token = tokens[t:t + 1]  # (1, d)
        y = sum(topk_weight[t, k] * moe.experts[int(topk_idx[t, k])](token) for k in range(moe.top_k))
        for expert in moe.shared_experts:
            y = y + expert(token)
        rows.append(y)
    moe.aux_loss = aux_loss
    return torch.cat(rows).view(bsz, seq_len, hidden)


def group_by_expert(moe: MoEFeedForward, x: torch.Tensor) -> list[torch.Tensor]:
    """The (token, slot) pairs of ``x`` as ``moe``'s router assigns them, one contiguous block per expert."""
    with torch.no_grad():
        topk_idx, _, _ = moe.gate(x)
    flat = topk_idx.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=len(moe.experts)).tolist()
    tokens = x.reshape(-1, x.shape[-1])
    return [b.contiguous() for b in tokens[order // moe.top_k].split(counts)]


def grouped_floor(moe: MoEFeedForward, blocks: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Only the expert matmuls: each routed expert on its block, each shared expert on every token."""
    outs = [expert(block) for expert, block in zip(moe.experts, blocks, strict=True)]
    tokens = x.reshape(-1, x.shape[-1])
    outs += [expert(tokens) for expert in moe.shared_experts]
    return outs
