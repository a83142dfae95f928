"""Mixture of experts: a softmax router, top-k routing, load balancing, shared experts (chapter 5).

MiniMind-3 (``moe_variant="minimind3"``) uses the same layer with top-1 routing, no shared experts,
its own expert width, a top-1 weight renormalised to 1 and the balancing count taken per token.

Both modes group the (token, slot) pairs by expert with one sort and run each expert once on a
contiguous block of its tokens, then scatter-add the weighted outputs back to their tokens:
* training: every expert is called, even on an empty block, so each expert's parameters stay in
  the autograd graph (they receive a zero gradient rather than none, which DDP's unused-parameter
  check and optimisers with state expect); the router weights are differentiable;
* inference: experts without tokens are skipped, under ``torch.no_grad`` semantics of the caller.
The arithmetic of the two modes is identical, so they give identical outputs on the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import MiniMindConfig
from .ffn import FeedForward


def load_balancing_loss(
    scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, alpha: float, seq_aux: bool, per_token: bool = False
) -> torch.Tensor:
    """alpha * N * sum_i f_i * P_i, averaged over sequences (``seq_aux``) or over the whole batch.

    scores: (B, L, N) router probabilities; topk_idx: (B, L, K) chosen experts.
    f_i is the fraction of the L*K selections that went to expert i (a count: no gradient);
    P_i is the mean router probability of expert i, through which the gradient flows.
    Perfectly balanced routing gives exactly alpha. ``per_token`` (MiniMind-3) counts expert i's
    selections per token instead, count_i / L: K times larger, the same for top-1 routing.
    """
    bsz, seq_len, k = topk_idx.shape
    if seq_aux:
        counts = torch.zeros(bsz, n_experts, device=scores.device, dtype=scores.dtype)
        counts.scatter_add_(
            1, topk_idx.reshape(bsz, -1), torch.ones_like(topk_idx.reshape(bsz, -1), dtype=scores.dtype)
        )
        f = counts / (seq_len * (1 if per_token else k))  # (B, N), rows sum to 1 (or to K)
        P = scores.mean(dim=1)  # (B, N)
        return alpha * n_experts * (f * P).sum(dim=1).mean()
    f = F.one_hot(topk_idx.reshape(-1), n_experts).to(scores.dtype).mean(0)  # (N,)
    if per_token:
        f = f * k
    P = scores.reshape(-1, n_experts).mean(0)  # (N,)
    return alpha * n_experts * (f * P).sum()


class MoEGate(nn.Module):
    """The router: softmax over experts, top-k, optional renormalisation, balancing loss."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.norm_topk_prob = config.norm_topk_prob
        self.minimind3 = config.moe_variant == "minimind3"  # renormalise a top-1 weight too; count per token
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default initialisation

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden_states (B, L, d) -> topk_idx (B*L, K), topk_weight (B*L, K), aux_loss (scalar)."""
        bsz, seq_len, hidden = hidden_states.shape
        logits = F.linear(hidden_states.reshape(-1, hidden), self.weight)  # (B*L, N)
        scores = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))  # route in >= fp32
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.norm_topk_prob and (self.top_k > 1 or self.minimind3):
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        if self.training and self.alpha > 0.0:
            aux_loss = load_balancing_loss(
                scores.view(bsz, seq_len, -1),
                topk_idx.view(bsz, seq_len, -1),
                self.n_routed_experts,
                self.alpha,
                self.seq_aux,
                per_token=self.minimind3,
            )
        else:
            aux_loss = scores.new_zeros(())
        return topk_idx, topk_weight.to(hidden_states.dtype), aux_loss


class MoEFeedForward(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        width = config.moe_intermediate_size  # None: the dense FFN's width
        self.experts = nn.ModuleList([FeedForward(config, width) for _ in range(config.n_routed_experts)])
        self.gate = MoEGate(config)
        self.shared_experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_shared_experts)])
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq_len, hidden = x.shape
        topk_idx, topk_weight, aux_loss = self.gate(x)
        tokens = x.reshape(-1, hidden)  # (B*L, d)
        if torch.compiler.is_compiling():  # torch.compile: shapes must not depend on the routing
            y = self.dense_dispatch(tokens, topk_idx, topk_weight).view(bsz, seq_len, hidden)
        else:
            y = self.dispatch(tokens, topk_idx, topk_weight, run_all=self.training).view(bsz, seq_len, hidden)
        for expert in self.shared_experts:  # always-on experts see every token
            y = y + expert(x)
        self.aux_loss = aux_loss
        return y

    def dispatch(
        self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, run_all: bool
    ) -> torch.Tensor:
        """sum_k weight[t, k] * expert[idx[t, k]](tokens[t]) for every token t, grouped by expert."""
        flat_idx = topk_idx.reshape(-1)  # (T*K,) expert of each (token, slot) pair
        order = flat_idx.argsort(stable=True)  # pairs sorted by expert
        token_of = order // self.top_k  # (T*K,) which token each sorted pair belongs to
        counts = torch.bincount(flat_idx, minlength=len(self.experts)).tolist()  # one host sync per layer
        grouped = tokens[token_of]  # (T*K, d): expert e's tokens are one contiguous block
        outputs = []
        for expert, block, n in zip(self.experts, grouped.split(counts), counts, strict=True):
            if n or run_all:  # an empty call keeps the expert in the graph
                outputs.append(expert(block))
        weighted = torch.cat(outputs) * topk_weight.reshape(-1)[order, None]  # (T*K, d)
        return torch.zeros_like(tokens).index_add_(0, token_of, weighted)

    def dense_dispatch(self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """The same sum with static shapes, for ``torch.compile(fullgraph=True)``: every expert runs on every
        token and a (T, N) weight matrix, zero where a token did not choose the expert, combines them.
        No host sync and no data-dependent split, at N/K times the routed FLOPs."""
        combine = torch.zeros(tokens.shape[0], len(self.experts), dtype=topk_weight.dtype, device=tokens.device)
        combine = combine.scatter(1, topk_idx, topk_weight)  # (T, N)
        y = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            y = y + combine[:, e, None] * expert(tokens)
        return y
