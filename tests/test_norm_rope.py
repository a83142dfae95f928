"""RMSNorm (chapter 1) and rotary embeddings with YaRN (chapter 2)."""

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.testing import assert_close

from minimind_ref.config import DEFAULT_YARN
from minimind_ref.norm import RMSNorm
from minimind_ref.rope import apply_rotary_pos_emb, precompute_freqs_cis, rotate_half, yarn_ramp

# ----------------------------------------------------------------------------- RMSNorm


def test_rmsnorm_matches_definition_and_torch():
    x = torch.randn(3, 5, 32)
    norm = RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert_close(norm(x), expected)
    ref = torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(norm.weight)
    assert_close(norm(x), ref(x))


def test_rmsnorm_gradcheck_float64():
    norm = RMSNorm(8).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, dtype=torch.float64))
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert gradcheck(norm, (x,))


def test_rmsnorm_scale_invariance_and_unit_rms():
    norm = RMSNorm(64, eps=0.0)
    x = torch.randn(4, 64, dtype=torch.float64)
    norm = norm.double()
    assert_close(norm(7.5 * x), norm(x))
    assert_close(norm(x).pow(2).mean(-1), torch.ones(4, dtype=torch.float64))


def test_rmsnorm_low_precision_statistics_in_float32():
    # 300**2 overflows float16 if squared in float16; the float32 statistics do not
    x = torch.full((2, 16), 300.0)
    norm = RMSNorm(16).half()
    y = norm(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert_close(y.float(), torch.ones(2, 16), atol=1e-3, rtol=1e-3)
    yb = RMSNorm(16).bfloat16()(torch.randn(2, 16).bfloat16())
    assert yb.dtype == torch.bfloat16


def test_rmsnorm_rejects_wrong_width():
    with pytest.raises(ValueError, match="last dimension 16"):
        RMSNorm(16)(torch.randn(2, 8))


# ----------------------------------------------------------------------------- RoPE


def test_tables_shape_and_values():
    cos, sin = precompute_freqs_cis(8, 10, rope_base=1e4)
    assert cos.shape == sin.shape == (10, 8)
    theta = 1e4 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    m = 7
    assert_close(cos[m, :4].double(), torch.cos(m * theta), atol=1e-6, rtol=0)
    assert_close(cos[:, :4], cos[:, 4:])  # half-split: each frequency twice
    assert_close(sin[m, 4:].double(), torch.sin(m * theta), atol=1e-6, rtol=0)


def test_rotate_half_example():
    x = torch.arange(1.0, 9.0)
    assert rotate_half(x).tolist() == [-5, -6, -7, -8, 1, 2, 3, 4]


def _rope(x, pos, cos, sin):
    """Rotate a (heads, head_dim) vector as if at position `pos`."""
    q, _ = apply_rotary_pos_emb(x[None, None], x[None, None], cos[pos : pos + 1], sin[pos : pos + 1])
    return q[0, 0]


def test_rotation_preserves_norm():
    cos, sin = precompute_freqs_cis(64, 4096)
    x = torch.randn(1, 64, dtype=torch.float64)
    for m in (0, 1, 77, 4095):
        assert_close(_rope(x, m, cos.double(), sin.double()).norm(), x.norm())


def test_dot_product_depends_only_on_offset():
    cos, sin = precompute_freqs_cis(64, 512, rope_base=1e4)
    cos, sin = cos.double(), sin.double()
    q, k = torch.randn(1, 64, dtype=torch.float64), torch.randn(1, 64, dtype=torch.float64)
    for offset in (0, 1, 7, 100):
        dots = [(_rope(q, m, cos, sin) * _rope(k, m + offset, cos, sin)).sum() for m in (0, 10, 300)]
        assert_close(torch.stack(dots), dots[0].expand(3), rtol=1e-5, atol=1e-5)  # float32 tables
    # and it is not constant across offsets (the position is really encoded)
    d0 = (_rope(q, 5, cos, sin) * _rope(k, 5, cos, sin)).sum()
    d7 = (_rope(q, 5, cos, sin) * _rope(k, 12, cos, sin)).sum()
    assert not torch.isclose(d0, d7)


def test_half_split_equals_complex_multiplication_on_permuted_dims():
    """RoPE in the half-split layout equals multiplying complex numbers (x_j + i x_{j+d/2}) by e^{i m theta_j}."""
    d, base, m = 16, 1e4, 13
    cos, sin = precompute_freqs_cis(d, 32, rope_base=base)
    x = torch.randn(1, d, dtype=torch.float64)
    rotated = _rope(x, m, cos.double(), sin.double())[0]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[0, : d // 2], x[0, d // 2 :]) * torch.exp(1j * m * theta)
    assert_close(rotated, torch.cat([z.real, z.imag]))
    # the interleaved (RoFormer) layout is the same rotation on permuted dimensions
    perm = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], 1).reshape(-1)  # [0, 8, 1, 9, ...]
    inter = torch.view_as_real(
        torch.view_as_complex(x[0, perm].reshape(-1, 2).contiguous()) * torch.exp(1j * m * theta)
    )
    assert_close(inter.reshape(-1), rotated[perm])


def test_apply_rotary_gradcheck_float64():
    cos, sin = precompute_freqs_cis(8, 5)
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 1, 8, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda q, k: apply_rotary_pos_emb(q, k, cos.double(), sin.double()), (q, k))


YARN = (
    DEFAULT_YARN  # MiniMind's settings (factor 16 from 2048, beta_fast 32, beta_slow 1); values pinned in test_config
)


def _effective_freqs(cos, sin):
    """Recover theta'_i from the tables at position 1: (cos, sin)[1] = (cos, sin)(theta'_i)."""
    half = cos.shape[1] // 2
    return torch.atan2(sin[1, :half].double(), cos[1, :half].double())


def test_yarn_keeps_high_frequencies_and_divides_low_ones():
    dim, end = 64, 4096
    f_plain = _effective_freqs(*precompute_freqs_cis(dim, end, 1e6))
    f_yarn = _effective_freqs(*precompute_freqs_cis(dim, end, 1e6, YARN))
    gamma = yarn_ramp(dim, 1e6, 2048, 32.0, 1.0)
    assert gamma[0] == 0 and gamma[-1] == 1 and (gamma.diff() >= 0).all()
    untouched, interpolated = gamma == 0, gamma == 1
    assert untouched.sum() >= 3 and interpolated.sum() >= 3
    assert_close(f_yarn[untouched], f_plain[untouched], rtol=1e-5, atol=1e-9)
    assert_close(f_yarn[interpolated], f_plain[interpolated] / 16, rtol=1e-3, atol=1e-9)
    # in between, the blend (1 - gamma) + gamma / factor
    assert_close(f_yarn, f_plain * ((1 - gamma.double()) + gamma.double() / 16), rtol=1e-3, atol=1e-9)


def test_yarn_ramp_boundaries_follow_the_rotation_counts():
    """Pair i is untouched iff it turns more than beta_fast times in the original context (up to the floor)."""
    dim, base, L = 64, 1e6, 2048
    gamma = yarn_ramp(dim, base, L, 32.0, 1.0)
    turns = L * base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim) / (2 * math.pi)
    assert (turns[gamma == 0] > 32 / 2).all()  # untouched pairs turn many times
    assert (turns[gamma == 1] < 1 * 2).all()  # fully interpolated pairs turn about once at most


def test_yarn_only_beyond_the_original_context_and_attention_factor():
    short_plain = precompute_freqs_cis(64, 2048, 1e6)
    short_yarn = precompute_freqs_cis(64, 2048, 1e6, YARN)
    assert_close(short_plain, short_yarn)  # end <= original length: unchanged
    c1, s1 = precompute_freqs_cis(64, 4096, 1e6, YARN)
    c2, s2 = precompute_freqs_cis(64, 4096, 1e6, {**YARN, "attention_factor": 1.5})
    assert_close(c2, 1.5 * c1)
    assert_close(s2, 1.5 * s1)


def test_odd_dim_rejected():
    with pytest.raises(ValueError, match="even"):
        precompute_freqs_cis(7, 10)
