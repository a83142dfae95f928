"""Upstream MiniMind, the straightforward way: an independent oracle and the naive baseline.

This module re-implements the architecture of upstream MiniMind ("MiniMind2": ``MoEGate`` with a
sequence-level auxiliary loss and shared experts) exactly as upstream *computes* it, written from
the chapter specifications rather than copied. It keeps upstream's naive forms on purpose:

* attention concatenates the KV cache (``torch.cat`` of the whole history at every step) and
  materialises ``repeat_kv`` copies; the fused SDPA path runs only for ``seq_len > 1`` with no mask
  or an all-ones mask (``is_causal=True``); otherwise the manual path adds a ``triu(-inf)`` causal
  mask and an additive ``(1 - mask) * -1e9`` padding mask and takes the softmax in float32;
* the MoE training path duplicates every token K times (``repeat_interleave``) and runs each
  expert on a boolean mask; the inference path is ``moe_infer`` (argsort, bincount, cumsum,
  per-expert gather, weight, ``scatter_add_``);
* the KV cache is a list of ``(k, v)`` tuples, and ``generate`` is a plain loop.

Module attribute names are upstream's, so ``state_dict()`` has upstream's keys; a state dict of
this model is what an upstream checkpoint looks like. The book uses it three ways: the MoE chapter
shows it as the "straightforward implementation", ``benchmarks/`` times it as the naive baseline,
and ``tests/test_upstream_compat.py`` checks that ``minimind_ref`` loads its checkpoints and
computes the same numbers.

Only torch is imported. Any object with ``MiniMindConfig``'s field names (a ``MiniMindConfig``
itself, a dict, an ``UpstreamConfig``) configures it, through ``UpstreamConfig.from_config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UpstreamConfig", "RMSNorm", "precompute_freqs_cis", "apply_rotary_pos_emb", "repeat_kv", "Attention",
    "FeedForward", "MoEGate", "MOEFeedForward", "MiniMindBlock", "MiniMindModel", "UpstreamMiniMindForCausalLM",
    "UpstreamOutput", "upstream_state_dict",
]

#: what upstream's config switches on with ``inference_rope_scaling=True``
UPSTREAM_YARN = {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 2048,
                 "attention_factor": 1.0, "type": "yarn"}


# ---------------------------------------------------------------------------------------- config
@dataclass
class UpstreamConfig:
    """Upstream's ``MiniMindConfig`` fields and defaults (no validation, as upstream)."""

    dropout: float = 0.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    hidden_act: str = "silu"
    hidden_size: int = 512
    intermediate_size: int | None = None
    max_position_embeddings: int = 32768
    num_attention_heads: int = 8
    num_hidden_layers: int = 8
    num_key_value_heads: int = 2
    vocab_size: int = 6400
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    inference_rope_scaling: bool = False
    rope_scaling: dict | None = None
    flash_attn: bool = True
    tie_word_embeddings: bool = True
    use_moe: bool = False
    num_experts_per_tok: int = 2
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.01
    seq_aux: bool = True
    norm_topk_prob: bool = True

    def __post_init__(self) -> None:
        if self.rope_scaling is None and self.inference_rope_scaling:
            self.rope_scaling = dict(UPSTREAM_YARN)

    @classmethod
    def from_config(cls, config: Any = None) -> UpstreamConfig:
        """Adapt a ``minimind_ref.MiniMindConfig`` (or a dict, or anything with those attribute names)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        get = config.get if isinstance(config, dict) else lambda name, default: getattr(config, name, default)
        kw = {}
        for f in fields(cls):
            value = get(f.name, None)
            if value is not None:
                kw[f.name] = dict(value) if isinstance(value, dict) else value
        return cls(**kw)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# ------------------------------------------------------------------------------------ components
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.type_as(x)


def precompute_freqs_cis(dim: int, end: int = 32 * 1024, rope_base: float = 1e6,
                         rope_scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's RoPE tables, (end, dim) each, half-split layout, with its YaRN branch."""
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    attn_factor = 1.0
    if rope_scaling is not None:
        orig_max = rope_scaling.get("original_max_position_embeddings", 2048)
        factor = rope_scaling.get("factor", 16)
        beta_fast = rope_scaling.get("beta_fast", 32.0)
        beta_slow = rope_scaling.get("beta_slow", 1.0)
        attn_factor = rope_scaling.get("attention_factor", 1.0)
        if end / orig_max > 1.0:
            # the dimension index at which a frequency turns b times over the original context
            def inv_dim(b: float) -> float:
                return (dim * math.log(orig_max / (b * 2 * math.pi))) / (2 * math.log(rope_base))

            low = max(math.floor(inv_dim(beta_fast)), 0)
            high = min(math.ceil(inv_dim(beta_slow)), dim // 2 - 1)
            ramp = ((torch.arange(dim // 2).float() - low) / max(high - low, 0.001)).clamp(0, 1)
            freqs = freqs * (1 - ramp + ramp / factor)
    t = torch.arange(end, device=freqs.device)
    angles = torch.outer(t, freqs).float()
    freqs_cos = torch.cat([torch.cos(angles), torch.cos(angles)], dim=-1) * attn_factor
    freqs_sin = torch.cat([torch.sin(angles), torch.sin(angles)], dim=-1) * attn_factor
    return freqs_cos, freqs_sin


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim: int = 1):
    """q, k: (B, T, H, hd); cos, sin: (T, hd). ``position_ids`` is unused, as upstream."""

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, S, H_kv, hd) -> (B, S, H_kv * n_rep, hd): expand then reshape, which copies."""
    bs, slen, n_kv, head_dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv, n_rep, head_dim).reshape(bs, slen, n_kv * n_rep, head_dim)


class Attention(nn.Module):
    def __init__(self, args: UpstreamConfig):
        super().__init__()
        self.num_key_value_heads = args.num_attention_heads if args.num_key_value_heads is None \
            else args.num_key_value_heads
        assert args.num_attention_heads % self.num_key_value_heads == 0
        self.n_local_heads = args.num_attention_heads
        self.n_local_kv_heads = self.num_key_value_heads
        self.n_rep = self.n_local_heads // self.n_local_kv_heads
        self.head_dim = args.hidden_size // args.num_attention_heads
        self.q_proj = nn.Linear(args.hidden_size, args.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(args.num_attention_heads * self.head_dim, args.hidden_size, bias=False)
        self.attn_dropout = nn.Dropout(args.dropout)
        self.resid_dropout = nn.Dropout(args.dropout)
        self.dropout = args.dropout
        self.flash = hasattr(F, "scaled_dot_product_attention") and args.flash_attn

    def forward(self, x, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        bsz, seq_len, _ = x.shape
        xq = self.q_proj(x).view(bsz, seq_len, self.n_local_heads, self.head_dim)
        xk = self.k_proj(x).view(bsz, seq_len, self.n_local_kv_heads, self.head_dim)
        xv = self.v_proj(x).view(bsz, seq_len, self.n_local_kv_heads, self.head_dim)
        cos, sin = position_embeddings
        xq, xk = apply_rotary_pos_emb(xq, xk, cos[:seq_len], sin[:seq_len])

        # the cache: concatenate the whole history on the sequence axis (a fresh copy every step)
        if past_key_value is not None:
            xk = torch.cat([past_key_value[0], xk], dim=1)
            xv = torch.cat([past_key_value[1], xv], dim=1)
        past_kv = (xk, xv) if use_cache else None

        xq = xq.transpose(1, 2)  # (B, H, T, hd)
        xk = repeat_kv(xk, self.n_rep).transpose(1, 2)  # (B, H, S, hd), materialised copies
        xv = repeat_kv(xv, self.n_rep).transpose(1, 2)

        if self.flash and seq_len > 1 and (attention_mask is None or torch.all(attention_mask == 1)):
            # is_causal=True aligns the triangle top-left: right only without a cache (and for
            # seq_len == 1 it would hide every cached key but the first, hence seq_len > 1).
            # One upstream revision also passed the all-ones mask as attn_mask, which SDPA rejects
            # together with is_causal=True; an all-ones mask changes nothing, so it is left out here.
            output = F.scaled_dot_product_attention(xq, xk, xv, dropout_p=self.dropout if self.training else 0.0,
                                                    is_causal=True)
        else:
            scores = (xq @ xk.transpose(-2, -1)) / math.sqrt(self.head_dim)
            # (T, T) causal triangle; broadcasts against (T, S) only when T == S or T == 1
            causal = torch.triu(torch.full((seq_len, seq_len), float("-inf"), device=scores.device), diagonal=1)
            scores = scores + causal.unsqueeze(0).unsqueeze(0)
            if attention_mask is not None:
                extended = attention_mask.unsqueeze(1).unsqueeze(2)  # (B, 1, 1, S)
                scores = scores + (1.0 - extended) * -1e9  # additive, so a fully padded row stays finite
            scores = F.softmax(scores.float(), dim=-1).type_as(xq)
            scores = self.attn_dropout(scores)
            output = scores @ xv
        output = output.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(output)), past_kv


_ACT = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu,
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class FeedForward(nn.Module):
    def __init__(self, config: UpstreamConfig):
        super().__init__()
        if config.intermediate_size is None:
            # upstream writes the derived width back into the config, so every expert shares it
            intermediate_size = int(config.hidden_size * 8 / 3)
            config.intermediate_size = 64 * ((intermediate_size + 64 - 1) // 64)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.act_fn = _ACT[config.hidden_act]

    def forward(self, x):
        return self.dropout(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


class MoEGate(nn.Module):
    def __init__(self, config: UpstreamConfig):
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.scoring_func = config.scoring_func
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.norm_topk_prob = config.norm_topk_prob
        self.gating_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty((self.n_routed_experts, self.gating_dim)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, hidden_states):
        bsz, seq_len, h = hidden_states.shape
        hidden_states = hidden_states.view(-1, h)
        logits = F.linear(hidden_states, self.weight, None)  # (B*L, N)
        if self.scoring_func == "softmax":
            scores = logits.softmax(dim=-1)  # in the activations' dtype, as upstream
        else:
            raise NotImplementedError(f"insupportable scoring function for MoE gating: {self.scoring_func}")
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)

        if self.training and self.alpha > 0.0:
            idx_per_seq = topk_idx.view(bsz, -1)  # (B, L*K)
            if self.seq_aux:
                # per sequence: selection counts normalised by L*K/N, times the mean router scores
                seq_scores = scores.view(bsz, seq_len, -1)
                ce = torch.zeros(bsz, self.n_routed_experts, device=hidden_states.device)
                ce.scatter_add_(1, idx_per_seq, torch.ones(bsz, seq_len * self.top_k, device=hidden_states.device))
                ce.div_(seq_len * self.top_k / self.n_routed_experts)
                aux_loss = (ce * seq_scores.mean(dim=1)).sum(dim=1).mean() * self.alpha
            else:
                # over the whole batch: the share of one-hot selections times N, times the mean scores
                mask_ce = F.one_hot(idx_per_seq.view(-1), num_classes=self.n_routed_experts)
                ce = mask_ce.float().mean(0)
                Pi = scores.mean(0)
                fi = ce * self.n_routed_experts
                aux_loss = (Pi * fi).sum() * self.alpha
        else:
            aux_loss = scores.new_zeros(())  # upstream returns the integer 0 here
        return topk_idx, topk_weight, aux_loss


class MOEFeedForward(nn.Module):
    def __init__(self, config: UpstreamConfig):
        super().__init__()
        self.config = config
        self.experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_routed_experts)])
        self.gate = MoEGate(config)
        if config.n_shared_experts > 0:
            self.shared_experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_shared_experts)])
        self.aux_loss = torch.zeros(())

    def forward(self, x):
        identity = x
        orig_shape = x.shape
        topk_idx, topk_weight, aux_loss = self.gate(x)
        x = x.view(-1, x.shape[-1])
        flat_topk_idx = topk_idx.view(-1)
        if self.training:
            y = self.train_path(x, flat_topk_idx, topk_weight).view(*orig_shape)
        else:
            y = self.moe_infer(x, flat_topk_idx, topk_weight.view(-1, 1)).view(*orig_shape)
        if self.config.n_shared_experts > 0:
            for expert in self.shared_experts:
                y = y + expert(identity)
        self.aux_loss = aux_loss
        return y

    def train_path(self, x, flat_topk_idx, topk_weight):
        """Every token duplicated K times, each expert run on a boolean mask of its copies."""
        x = x.repeat_interleave(self.config.num_experts_per_tok, dim=0)  # (T*K, d), aligned with flat_topk_idx
        # upstream hard-codes dtype=torch.float16 for this buffer, so fp32/bf16 training rounds every
        # expert output to fp16 (and overflows above 65504); the buffer here has the activations' dtype
        y = torch.empty_like(x, dtype=x.dtype)
        for i, expert in enumerate(self.experts):
            mask = flat_topk_idx == i
            y[mask] = expert(x[mask]).to(y.dtype)  # an expert without tokens still runs (on 0 rows)
        y = (y.view(*topk_weight.shape, -1) * topk_weight.unsqueeze(-1)).sum(dim=1)  # (T, d)
        return y

    @torch.no_grad()
    def moe_infer(self, x, flat_expert_indices, flat_expert_weights):
        """Sort the (token, slot) pairs by expert, run each expert once on its tokens, scatter-add back."""
        expert_cache = torch.zeros_like(x)
        idxs = flat_expert_indices.argsort()
        # upstream: .bincount().cpu().numpy().cumsum(0); the same host sync per layer, without numpy
        tokens_per_expert = flat_expert_indices.bincount().cpu().cumsum(0).tolist()
        token_idxs = idxs // self.config.num_experts_per_tok
        # e.g. tokens_per_expert = [6, 15, 20, 26]: expert 0 takes sorted pairs 0..5, expert 1 6..14, ...
        for i, end_idx in enumerate(tokens_per_expert):
            start_idx = 0 if i == 0 else tokens_per_expert[i - 1]
            if start_idx == end_idx:
                continue
            expert = self.experts[i]
            exp_token_idx = token_idxs[start_idx:end_idx]
            expert_out = expert(x[exp_token_idx]).to(expert_cache.dtype)
            expert_out.mul_(flat_expert_weights[idxs[start_idx:end_idx]])
            expert_cache.scatter_add_(0, exp_token_idx.view(-1, 1).repeat(1, x.shape[-1]), expert_out)
        return expert_cache


class MiniMindBlock(nn.Module):
    def __init__(self, layer_id: int, config: UpstreamConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.self_attn = Attention(config)
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = FeedForward(config) if not config.use_moe else MOEFeedForward(config)

    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        residual = hidden_states
        hidden_states, present_key_value = self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                                                          past_key_value, use_cache, attention_mask)
        hidden_states = hidden_states + residual
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present_key_value


class MiniMindModel(nn.Module):
    def __init__(self, config: UpstreamConfig):
        super().__init__()
        self.config = config
        self.vocab_size, self.num_hidden_layers = config.vocab_size, config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(self.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        freqs_cos, freqs_sin = precompute_freqs_cis(dim=config.hidden_size // config.num_attention_heads,
                                                    end=config.max_position_embeddings, rope_base=config.rope_theta,
                                                    rope_scaling=config.rope_scaling)
        self.register_buffer("freqs_cos", freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", freqs_sin, persistent=False)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        _, seq_length = input_ids.shape
        past_key_values = past_key_values or [None] * len(self.layers)
        start_pos = past_key_values[0][0].shape[1] if past_key_values[0] is not None else 0
        hidden_states = self.dropout(self.embed_tokens(input_ids))
        position_embeddings = (self.freqs_cos[start_pos:start_pos + seq_length],
                               self.freqs_sin[start_pos:start_pos + seq_length])
        presents = []
        for layer, past_key_value in zip(self.layers, past_key_values, strict=True):
            hidden_states, present = layer(hidden_states, position_embeddings, past_key_value=past_key_value,
                                           use_cache=use_cache, attention_mask=attention_mask)
            presents.append(present)
        hidden_states = self.norm(hidden_states)
        aux_loss = sum((layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MOEFeedForward)),
                       hidden_states.new_zeros((), dtype=torch.float32))
        return hidden_states, presents, aux_loss


@dataclass
class UpstreamOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    past_key_values: list | None = None
    hidden_states: torch.Tensor | None = None


class UpstreamMiniMindForCausalLM(nn.Module):
    """Upstream's ``MiniMindForCausalLM`` without the Hugging Face base classes."""

    def __init__(self, config: Any = None):
        super().__init__()
        self.config = UpstreamConfig.from_config(config)
        self.model = MiniMindModel(self.config)
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        if self.config.tie_word_embeddings:  # upstream ties unconditionally
            self.model.embed_tokens.weight = self.lm_head.weight

    def forward(self, input_ids=None, attention_mask=None, labels=None, past_key_values=None, use_cache=False,
                logits_to_keep=0, **kwargs):
        hidden_states, past_key_values, aux_loss = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                                              past_key_values=past_key_values, use_cache=use_cache)
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                                   ignore_index=-100)
        return UpstreamOutput(logits=logits, loss=loss, aux_loss=aux_loss, past_key_values=past_key_values,
                              hidden_states=hidden_states)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens=32, temperature=1.0, top_k=None, top_p=None, do_sample=True,
                 eos_token_id=-1, attention_mask=None, generator=None):
        """Plain cached decoding: prefill once, then feed one token at a time with the tuple cache.

        Greedy when ``do_sample=False``; rows that produced ``eos_token_id`` (the config's by default,
        None never stops) keep emitting it until every row is done. ``attention_mask`` (1 real, 0 pad)
        supports a left-padded batch and grows by a column of ones per step.
        """
        if eos_token_id == -1:
            eos_token_id = self.config.eos_token_id
        tokens = input_ids
        past, step = None, input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            out = self(step, attention_mask=attention_mask, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            if do_sample:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p is not None and top_p < 1.0:
                    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
                    probs = sorted_logits.softmax(dim=-1)
                    remove = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set reaching top_p
                    logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
                next_tok = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
            else:
                next_tok = logits.argmax(dim=-1)
            if eos_token_id is not None:
                next_tok = torch.where(finished, torch.full_like(next_tok, eos_token_id), next_tok)
                finished = finished | (next_tok == eos_token_id)
            tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
            step = next_tok[:, None]
        return tokens


def upstream_state_dict(model: nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    """The state dict as upstream's trainers write it with ``torch.save``: every key, both tied ones
    included (``model.embed_tokens.weight`` and ``lm_head.weight``), optionally cast to float16."""
    state = model.state_dict()
    return {k: (v.half() if half else v).detach().cpu().clone() for k, v in state.items()}
