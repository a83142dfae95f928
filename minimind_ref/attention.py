"""Grouped-query attention with RoPE, causal and padding masks and a KV cache (chapter 3).

Two paths compute the same thing:
* the fused path, ``F.scaled_dot_product_attention`` (SDPA), used whenever ``config.flash_attn``;
* the explicit path the book derives: scores -> mask -> softmax in float32 -> dropout -> values.

Masks. A query may attend to a key when the key is not in its future and is not padding. The
model builds that rule once per forward as a boolean tensor (``make_attention_mask``) and passes
``None`` when plain causality is enough. Two traps are handled there, not here:
* SDPA's ``is_causal=True`` aligns the triangle top-left, so a single new query decoding against
  a cache would see only the first key; with a cache the mask must be offset by the cache length.
* A left-padded row has pad *queries* whose every key is masked; softmax over all -inf is NaN,
  and the NaN would reach real tokens through the next layer. Every query may therefore always
  attend to itself: a pad position's output is finite garbage that no real token ever reads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import MiniMindConfig
from .norm import RMSNorm
from .rope import apply_rotary_pos_emb

# SDPA learned native GQA (no materialised K/V copies) in torch 2.5
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, seq, kv_heads, head_dim) -> (batch, seq, kv_heads * n_rep, head_dim).

    Query head h reads KV head h // n_rep. The reshape of the expanded tensor materialises a copy.
    """
    if n_rep == 1:
        return x
    bsz, seq_len, n_kv, head_dim = x.shape
    return x[:, :, :, None, :].expand(bsz, seq_len, n_kv, n_rep, head_dim).reshape(bsz, seq_len, n_kv * n_rep, head_dim)


class KVCache:
    """Pre-allocated keys and values of every layer, shape (batch, kv_heads, capacity, head_dim) each.

    Writing a new token is a copy into a slot, not a concatenation of the whole history; the
    capacity doubles when it runs out (amortised O(1) per token). ``length`` counts the filled
    positions and is advanced by the model once all layers have written.
    """

    def __init__(self, config: MiniMindConfig, batch_size: int, capacity: int = 0):
        self.signature = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
        self.max_capacity = config.max_position_embeddings
        self.batch_size = batch_size
        self.capacity = capacity
        self.length = 0
        # allocated on a layer's first write, with the device and dtype of its keys
        self.keys: list[torch.Tensor | None] = [None] * config.num_hidden_layers
        self.values: list[torch.Tensor | None] = [None] * config.num_hidden_layers

    def reserve(self, n_new: int) -> None:
        """Make room for ``n_new`` more positions, doubling the capacity if needed."""
        need = self.length + n_new
        if need <= self.capacity:
            return
        self.capacity = max(need, min(2 * self.capacity, self.max_capacity))
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                if old is not None:
                    new = old.new_zeros(old.shape[0], old.shape[1], self.capacity, old.shape[3])
                    new[:, :, : self.length] = old[:, :, : self.length]
                    store[i] = new

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v of shape (batch, kv_heads, T, head_dim) after the cached ones; return all of them."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(
                f"KVCache: {end} positions exceed the reserved capacity {self.capacity}; call reserve() first"
            )
        if self.keys[layer_idx] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys[layer_idx], self.values[layer_idx] = k.new_zeros(shape), v.new_zeros(shape)
        self.keys[layer_idx][:, :, start:end] = k
        self.values[layer_idx][:, :, start:end] = v
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]


def make_attention_mask(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> torch.Tensor | None:
    """The boolean mask (batch or 1, 1, q_len, past_len + q_len), True where a query may attend.

    Returns None when the attention modules can do without one: no padding and either a single
    query (it may see every cached key) or no cache (plain causal, SDPA's ``is_causal``).
    ``attention_mask`` is (batch, past_len + q_len) of 1 for a real token and 0 for padding.
    """
    if attention_mask is None and (q_len == 1 or past_len == 0):
        return None
    q_pos = torch.arange(past_len, past_len + q_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(past_len + q_len, device=device)[None, :]  # (1, S)
    allowed = k_pos <= q_pos  # causal, offset by the cache: (T, S)
    if attention_mask is not None:
        real_key = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
        allowed = allowed & (real_key | (k_pos == q_pos))  # a pad query still sees itself: no empty row
    else:
        allowed = allowed[None, None]
    return allowed


class Attention(nn.Module):
    def __init__(self, config: MiniMindConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache this layer writes
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        # MiniMind-3's QK-norm: each head's query and key are RMS-normalised before RoPE, which bounds the
        # attention logits; None (no parameters, no state-dict keys) for MiniMind2
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention weights (explicit path)
        self.resid_dropout = nn.Dropout(config.dropout)  # on the output, before the residual add
        self.flash = config.flash_attn

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (batch, T, hidden); position_embeddings: cos, sin of shape (T, head_dim) for these T
        positions; attn_mask: from ``make_attention_mask`` (None means causal when T > 1)."""
        bsz, seq_len, _ = x.shape
        q = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # over head_dim, per head and position
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)  # rotate before caching: the cache holds rotated keys

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or H_kv, T, hd)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, past + T, hd)
        if self.flash:
            out = self._sdpa(q, k, v, attn_mask)
        else:
            out = self._explicit(q, k, v, attn_mask)
        out = out.transpose(1, 2).reshape(bsz, seq_len, self.n_heads * self.head_dim)
        return self.resid_dropout(self.o_proj(out))

    def _sdpa(self, q, k, v, attn_mask):
        is_causal = attn_mask is None and q.shape[2] > 1
        dropout_p = self.dropout if self.training else 0.0
        bsz, n_heads, q_len, head_dim = q.shape
        if q_len == 1 and self.n_rep > 1:
            # decoding, one query per head: the n_rep query heads that share a KV head become n_rep queries
            # of that KV head, so each cached key and value is read once per KV head, not once per query head
            out = F.scaled_dot_product_attention(
                q.view(bsz, self.n_kv_heads, self.n_rep, head_dim), k, v, attn_mask=attn_mask, dropout_p=dropout_p
            )  # mask (B|1, 1, 1, S)
            return out.view(bsz, n_heads, 1, head_dim)
        if _SDPA_GQA and self.n_rep > 1:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=True
            )
        k = repeat_kv(k.transpose(1, 2), self.n_rep).transpose(1, 2)
        v = repeat_kv(v.transpose(1, 2), self.n_rep).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)

    def _explicit(self, q, k, v, attn_mask):
        seq_len, total_len = q.shape[2], k.shape[2]
        k = repeat_kv(k.transpose(1, 2), self.n_rep).transpose(1, 2)  # (B, H, S, hd)
        v = repeat_kv(v.transpose(1, 2), self.n_rep).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        if attn_mask is None and seq_len > 1:
            attn_mask = torch.ones(seq_len, total_len, dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        # softmax in (at least) float32: a bf16/fp16 sum over thousands of keys loses mass
        weights = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).type_as(q)
        weights = self.attn_dropout(weights)
        return weights @ v  # (B, H, T, hd)
