"""Rotary position embedding (RoPE) with optional YaRN scaling (chapter 2).

Layout: the "half-split" convention of GPT-NeoX / Hugging Face Llama. Dimension j of a head is
paired with dimension j + head_dim/2 and both rotate with frequency theta_j, so the tables hold
each frequency twice: cos = [cos(m*theta), cos(m*theta)].
"""

from __future__ import annotations

import math

import torch


def yarn_ramp(dim: int, rope_base: float, original_max: int, beta_fast: float, beta_slow: float) -> torch.Tensor:
    """gamma_i in [0, 1] for each of the dim/2 frequencies: 0 where a frequency completes more than
    ``beta_fast`` turns in the original context (left alone), 1 where it completes fewer than
    ``beta_slow`` (interpolated by the full factor), linear in dimension index in between."""

    def dim_of(turns: float) -> float:
        # the (fractional) pair index i whose wavelength 2*pi*base^(2i/dim) fits `turns` times into original_max
        return dim * math.log(original_max / (turns * 2 * math.pi)) / (2 * math.log(rope_base))

    low = max(math.floor(dim_of(beta_fast)), 0)
    high = min(math.ceil(dim_of(beta_slow)), dim // 2 - 1)
    i = torch.arange(dim // 2, dtype=torch.float32)
    return torch.clamp((i - low) / max(high - low, 1e-3), 0.0, 1.0)


def precompute_freqs_cis(
    dim: int, end: int, rope_base: float = 1e6, rope_scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (end, dim) for positions 0..end-1.

    With ``rope_scaling`` (YaRN) and ``end`` beyond the original context, each frequency f_i becomes
    f_i * ((1 - gamma_i) + gamma_i / factor) and both tables are multiplied by ``attention_factor``.
    """
    if dim % 2:
        raise ValueError(f"precompute_freqs_cis: dim must be even, got {dim}")
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # (dim/2,) theta_i
    attn_factor = 1.0
    if rope_scaling is not None:
        orig_max = rope_scaling.get("original_max_position_embeddings", 2048)
        factor = rope_scaling.get("factor", 16.0)
        attn_factor = rope_scaling.get("attention_factor", 1.0)
        if end / orig_max > 1.0:
            gamma = yarn_ramp(
                dim, rope_base, orig_max, rope_scaling.get("beta_fast", 32.0), rope_scaling.get("beta_slow", 1.0)
            )
            freqs = freqs * ((1 - gamma) + gamma / factor)
    t = torch.arange(end, dtype=torch.float32)
    angles = torch.outer(t, freqs)  # (end, dim/2): m * theta_i
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1) * attn_factor
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1) * attn_factor
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k of shape (batch, seq, heads, head_dim) by the angles of their positions.

    ``cos``/``sin`` are (seq, head_dim) slices of the tables (or (batch, seq, head_dim)).
    """
    cos = cos.unsqueeze(-2).to(q.dtype)  # (seq, 1, head_dim): broadcast over heads
    sin = sin.unsqueeze(-2).to(q.dtype)
    q_rot = q * cos + rotate_half(q) * sin
    k_rot = k * cos + rotate_half(k) * sin
    return q_rot, k_rot
