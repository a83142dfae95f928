"""Grouped-query attention (chapter 3): repeat_kv, both computation paths, masks, KV cache."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.testing import assert_close

from minimind_ref.attention import Attention, KVCache, make_attention_mask, repeat_kv
from minimind_ref.rope import precompute_freqs_cis

from .conftest import tiny_config


def test_repeat_kv_equals_repeat_interleave_and_copies():
    x = torch.randn(2, 5, 3, 4)
    y = repeat_kv(x, 4)
    assert y.shape == (2, 5, 12, 4)
    assert_close(y, torch.repeat_interleave(x, 4, dim=2))
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # not a view: a real copy
    for h in range(12):  # query head h reads KV head h // n_rep
        assert torch.equal(y[:, :, h], x[:, :, h // 4])
    assert repeat_kv(x, 1) is x


def _attn(cfg, flash, dtype=torch.float64):
    torch.manual_seed(1)
    a = Attention(cfg.__class__(**{**cfg.to_dict(), "flash_attn": flash})).to(dtype).eval()
    return a


def _pos(cfg, start, n, dtype=torch.float64):
    cos, sin = precompute_freqs_cis(cfg.head_dim, 64, cfg.rope_theta)
    return cos[start : start + n].to(dtype), sin[start : start + n].to(dtype)


def _pair(cfg):
    fast, slow = _attn(cfg, True), _attn(cfg, False)
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def test_gqa_with_as_many_kv_heads_equals_plain_mha():
    cfg = tiny_config(num_key_value_heads=4)
    a = _attn(cfg, False)
    x = torch.randn(2, 7, cfg.hidden_size, dtype=torch.float64)
    cos, sin = _pos(cfg, 0, 7)
    from minimind_ref.rope import apply_rotary_pos_emb

    q = a.q_proj(x).view(2, 7, 4, 16)
    k = a.k_proj(x).view(2, 7, 4, 16)
    v = a.v_proj(x).view(2, 7, 4, 16).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    # the textbook formula, head by head: softmax(Q K^T / sqrt(d) + causal mask) V
    scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / 4.0
    scores = scores + torch.full((7, 7), float("-inf"), dtype=torch.float64).triu(1)
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 64)
    assert_close(a(x, (cos, sin)), a.o_proj(ref))


def test_gqa_shares_each_kv_head_across_its_group():
    """With kv heads duplicated into an MHA layer's weights, GQA and MHA agree exactly."""
    gqa_cfg, mha_cfg = tiny_config(), tiny_config(num_key_value_heads=4)
    gqa, mha = _attn(gqa_cfg, True), _attn(mha_cfg, True)
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, 16, 64)  # (kv heads, head_dim, hidden)
            getattr(mha, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(64, 64))
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    assert_close(gqa(x, _pos(gqa_cfg, 0, 6)), mha(x, _pos(mha_cfg, 0, 6)))


@pytest.mark.parametrize("flash", [True, False])
def test_attention_gradcheck_float64(flash):
    cfg = tiny_config(hidden_size=16, num_attention_heads=4, num_key_value_heads=2)
    a = _attn(cfg, flash)
    x = torch.randn(1, 4, 16, dtype=torch.float64, requires_grad=True)
    mask = make_attention_mask(torch.tensor([[0, 1, 1, 1]]), 4, 0, x.device)
    assert gradcheck(lambda x: a(x, _pos(cfg, 0, 4)), (x,))
    assert gradcheck(lambda x: a(x, _pos(cfg, 0, 4), attn_mask=mask)[:, 1:], (x,))


def test_sdpa_path_equals_explicit_path_causal_and_padding():
    cfg = tiny_config()
    fast, slow = _pair(cfg)
    x = torch.randn(3, 9, 64, dtype=torch.float64)
    pos = _pos(cfg, 0, 9)
    assert_close(fast(x, pos), slow(x, pos))
    pad = torch.ones(3, 9, dtype=torch.long)
    pad[0, :4] = 0  # left padding
    pad[2, :8] = 0  # a row with a single real token
    mask = make_attention_mask(pad, 9, 0, x.device)
    out_fast, out_slow = fast(x, pos, mask), slow(x, pos, mask)
    assert torch.isfinite(out_fast).all() and torch.isfinite(out_slow).all()
    assert_close(out_fast, out_slow)


def test_padding_does_not_change_real_positions():
    cfg = tiny_config()
    for a in _pair(cfg):
        x = torch.randn(1, 6, 64, dtype=torch.float64)
        padded = torch.cat([torch.randn(1, 3, 64, dtype=torch.float64), x], dim=1)
        mask = make_attention_mask(torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]]), 9, 0, x.device)
        # RoPE is relative, so shifting every real position by 3 leaves the scores unchanged
        assert_close(a(padded, _pos(cfg, 0, 9), mask)[:, 3:], a(x, _pos(cfg, 0, 6)))


def test_fully_masked_pad_row_is_not_nan_in_either_path():
    cfg = tiny_config()
    mask = make_attention_mask(torch.tensor([[0, 0, 1, 1]]), 4, 0, torch.device("cpu"))
    assert mask.any(-1).all()  # no query row is empty
    for a in _pair(cfg):
        out = a(torch.randn(1, 4, 64, dtype=torch.float64), _pos(cfg, 0, 4), mask)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("flash", [True, False])
def test_cache_decoding_equals_full_forward(flash):
    cfg = tiny_config()
    a = _attn(cfg, flash)
    x = torch.randn(2, 10, 64, dtype=torch.float64)
    full = a(x, _pos(cfg, 0, 10))
    cache = KVCache(tiny_config(num_hidden_layers=1), batch_size=2, capacity=4)  # forces two doublings
    outs = []
    for start, n in [(0, 4), (4, 1), (5, 3), (8, 1), (9, 1)]:  # prefill, decode, chunked prefill, decode...
        cache.reserve(n)
        mask = make_attention_mask(None, n, start, x.device)
        outs.append(a(x[:, start : start + n], _pos(cfg, start, n), mask, cache))
        cache.length += n
    assert cache.capacity >= 10
    assert_close(torch.cat(outs, dim=1), full)


def test_is_causal_with_a_single_query_would_be_wrong():
    """Why the cached single-query step must not use is_causal=True: SDPA aligns the triangle top-left."""
    q, k, v = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    wrong = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(wrong, v[:, :, :1])  # sees only the first key
    assert make_attention_mask(None, 1, 4, torch.device("cpu")) is None  # so the model passes no mask at all
    right = F.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(wrong, right)


def test_offset_mask_for_chunked_prefill():
    m = make_attention_mask(None, 2, 3, torch.device("cpu"))[0, 0]
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_attention_follows_input_dtype():
    cfg = tiny_config()
    for dtype in (torch.bfloat16, torch.float16):
        a = _attn(cfg, True, dtype)
        out = a(torch.randn(2, 5, 64, dtype=dtype), _pos(cfg, 0, 5, dtype))
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_dropout_in_training_only():
    cfg = tiny_config(dropout=0.5)
    for flash in (True, False):
        a = Attention(tiny_config(dropout=0.5, flash_attn=flash))
        x = torch.randn(2, 5, 64)
        pos = tuple(t.float() for t in _pos(cfg, 0, 5))
        a.eval()
        assert torch.equal(a(x, pos), a(x, pos))
        a.train()
        assert not torch.equal(a(x, pos), a(x, pos))
