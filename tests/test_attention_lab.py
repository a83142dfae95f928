"""minimind_ref.lab.attention: chapter 3's cache sizes, FLOP counts, attention maps, KV-head conversion,
kernel and memory probes, and the explorers' data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.attention import repeat_kv
from minimind_ref.lab import attention as la

from .conftest import tiny_config

# ---------------------------------------------------------------------------- the KV cache


def test_kv_cache_bytes_formula_and_the_documents_example():
    # 2 (K and V) * layers * kv_heads * head_dim * tokens * batch * bytes
    assert la.kv_cache_bytes(8, 2, 64, 1) == 4096  # MiniMind: 4 KiB per token in fp16
    assert la.kv_cache_bytes(8, 2, 64, 32768) == 128 * 2**20
    assert la.kv_cache_bytes(8, 8, 64, 32768) == 512 * 2**20
    assert la.kv_cache_bytes(40, 32, 128, 2048) == 1_342_177_280  # not the document's 2.1 GB
    assert la.kv_cache_bytes(40, 8, 128, 2048) == 335_544_320
    assert la.kv_cache_bytes(40, 1, 128, 2048) == 41_943_040
    assert la.kv_cache_bytes(2, 3, 4, 5, batch=6, bytes_per_value=4) == 2 * 2 * 3 * 4 * 5 * 6 * 4
    with pytest.raises(ValueError, match="kv_heads"):
        la.kv_cache_bytes(8, 0, 64, 1)
    with pytest.raises(ValueError):
        la.kv_cache_bytes(8, 2, 64, -1)


def test_cache_nbytes_measures_what_the_model_returns():
    cfg = tiny_config()
    model = MiniMindForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    expected = la.kv_cache_bytes(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, 10, 2, 4)
    assert la.cache_nbytes(cache) == expected
    cache.reserve(30)  # more capacity, same filled positions
    assert la.cache_nbytes(cache) == expected < la.cache_nbytes(cache, filled=False)


def test_kv_cache_rows_gives_mha_gqa_mqa_in_gib():
    (row,) = la.kv_cache_rows(layers=8, heads=8, kv_heads=2, head_dim=64, bytes_per_value=2, context=32768)
    assert row == pytest.approx({"MHA": 0.5, "GQA": 0.125, "MQA": 0.0625})
    with pytest.raises(ValueError, match="divide"):
        la.kv_cache_rows(heads=8, kv_heads=3)


def test_kv_explorer_axis_holds_every_setting_of_the_chapter():
    import itertools

    grid = dict(layers=[8, 32, 80], heads=[8, 32, 64], kv_heads=[1, 2, 4, 8], head_dim=[64, 128],
                bytes_per_value=[1, 2, 4], context=[2048, 8192, 32768, 131072], batch=[1, 16])
    sizes = [v for combo in itertools.product(*grid.values())
             for v in la.kv_cache_rows(**dict(zip(grid, combo, strict=True)))[0].values()]
    lo, hi = la.KV_EXPLORER_GIB
    assert lo < min(sizes) and max(sizes) < hi
    assert max(sizes) == 10240 and min(sizes) == pytest.approx(2 / 1024)


# ---------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("n", [1, 5, 17])
def test_step_flops_equal_flop_counter_on_the_explicit_path(n):
    cfg = tiny_config(flash_attn=False)  # the counter has no formula for every fused kernel
    model = MiniMindForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, n))
    assert la.measured_flops(lambda: model(ids, logits_to_keep=1)) == la.step_flops(cfg, n, cached=False)
    if n > 1:
        with torch.no_grad():
            cache = model(ids[:, :-1], use_cache=True).past_key_values
        got = la.measured_flops(lambda: model(ids[:, -1:], past_key_values=cache, use_cache=True))
        assert got == la.step_flops(cfg, n, cached=True)


def test_recomputing_costs_n_cached_steps_apart_from_the_head():
    cfg = MiniMindConfig()
    head = 2 * cfg.hidden_size * cfg.vocab_size
    for n in (1, 7, 300):
        assert la.step_flops(cfg, n, False) - head == n * (la.step_flops(cfg, n, True) - head)
    with pytest.raises(ValueError):
        la.step_flops(cfg, 0, True)
    with pytest.raises(ValueError, match="dense"):
        la.projection_flops_per_token(MiniMindConfig(use_moe=True))


# ---------------------------------------------------------------------------- attention maps


def test_attention_maps_rebuild_the_modules_output():
    cfg = tiny_config()
    model = MiniMindForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    seen = []
    hooks = [
        blk.self_attn.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
        for blk in model.model.layers
    ]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    maps = la.attention_maps(model, ids)  # (layers, B, H, T, T)
    assert maps.shape == (cfg.num_hidden_layers, 2, cfg.num_attention_heads, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    assert torch.all(maps.triu(1) == 0)  # causal: nothing above the diagonal
    with torch.no_grad():
        for layer_maps, (attn, x, out) in zip(maps, seen, strict=True):
            v = repeat_kv(attn.v_proj(x).view(2, 9, attn.n_kv_heads, attn.head_dim), attn.n_rep)
            heads = layer_maps @ v.transpose(1, 2)  # (B, H, T, hd)
            rebuilt = attn.o_proj(heads.transpose(1, 2).reshape(2, 9, -1))
            torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-4)


def test_attention_maps_with_padding_and_without_mask():
    cfg = tiny_config()
    model = MiniMindForCausalLM(cfg).eval()
    ids = torch.randint(1, cfg.vocab_size, (1, 6))
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    plain = la.attention_maps(model, ids)[:, 0]
    pad = la.attention_maps(model, padded, attention_mask=mask)[:, 0]
    torch.testing.assert_close(pad[..., 2:, 2:], plain, atol=1e-5, rtol=1e-4)  # real tokens unchanged
    assert torch.all(pad[..., 2:, :2] == 0)  # no real query reads a pad
    torch.testing.assert_close(pad[..., 0, 0], torch.ones_like(pad[..., 0, 0]))  # a pad reads itself
    unmasked = la.attention_maps(model, ids, masked=False)
    assert torch.all(unmasked > 0)  # every key gets weight without the mask


def test_attention_scores_are_bounded_by_qk_norm():
    cfg = MiniMindConfig.minimind3(hidden_size=128, num_attention_heads=4, num_key_value_heads=2)
    attn_mod = MiniMindForCausalLM(cfg).model.layers[0].self_attn
    from minimind_ref.rope import precompute_freqs_cis

    pos = precompute_freqs_cis(cfg.head_dim, 16, cfg.rope_theta)
    x = 100 * torch.randn(1, 16, cfg.hidden_size)  # large activations
    with torch.no_grad():
        s = la.attention_scores(attn_mod, x, pos, masked=False)
    assert float(s.abs().max()) <= math.sqrt(cfg.head_dim) + 1e-4


def test_heatmap_rows_select_one_head_and_drop_small_weights():
    maps = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    views = {"a": maps, "b": (maps * 0 + 0.25, ["w", "x", "y", "z"])}
    rows = la.heatmap_rows(views, ["p", "q", "r", "s"], layer=1, head=2, view="a")
    assert len(rows) == 16 and rows[5]["weight"] == pytest.approx(float(maps[1, 2, 1, 1]))
    assert rows[0]["q_label"] == "00 p" and rows[-1]["k_label"] == "03 s"
    assert la.heatmap_rows(views, ["p"] * 4, view="b", min_weight=0.3) == []
    assert la.heatmap_rows(views, ["p"] * 4, view="b")[0]["k_label"] == "00 w"  # the view's own tokens


# ---------------------------------------------------------------------------- MHA -> GQA -> MQA


def test_convert_kv_heads_is_lossless_only_for_identical_heads():
    cfg = tiny_config(num_attention_heads=4, num_key_value_heads=4)
    model = MiniMindForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    same = la.convert_kv_heads(model, 4)  # nothing to pool
    torch.testing.assert_close(same(ids).logits, model(ids).logits)
    hd = cfg.head_dim
    with torch.no_grad():
        for blk in model.model.layers:
            for proj in (blk.self_attn.k_proj, blk.self_attn.v_proj):
                proj.weight[hd : 2 * hd] = proj.weight[:hd]  # heads 0 and 1 equal
                proj.weight[3 * hd :] = proj.weight[2 * hd : 3 * hd]  # heads 2 and 3 equal
        gqa = la.convert_kv_heads(model, 2, "mean")
        torch.testing.assert_close(gqa(ids).logits, model(ids).logits)
        assert gqa.config.num_key_value_heads == 2
        assert gqa.model.layers[0].self_attn.k_proj.weight.shape == (2 * hd, cfg.hidden_size)
        first = la.convert_kv_heads(model, 2, "first")
        torch.testing.assert_close(first(ids).logits, model(ids).logits)
        rand = la.convert_kv_heads(model, 1, "random", seed=3)
        assert (rand(ids).logits - model(ids).logits).abs().max() > 1e-3
    assert model.config.num_key_value_heads == 4  # the original is untouched
    with pytest.raises(ValueError, match="divide"):
        la.convert_kv_heads(model, 3)
    with pytest.raises(ValueError, match="method"):
        la.convert_kv_heads(model, 2, "median")


# ---------------------------------------------------------------------------- kernels and memory


def test_sdpa_kernels_names_the_dispatched_operator():
    q = torch.randn(1, 2, 8, 16)
    names = la.sdpa_kernels(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert names and names[0] == "aten::scaled_dot_product_attention"


def test_allocated_peak_sees_temporaries_and_releases():
    def temporary():
        big = torch.ones(2**18)  # 1 MiB, released before returning
        return big.sum()

    assert la.allocated_peak(temporary) >= 2**20
    assert la.allocated_peak(lambda: None) == 0
    small = la.allocated_peak(lambda: torch.empty(1000))
    assert 4000 <= small < 2**16


# ---------------------------------------------------------------------------- small mathematics


def test_softmax_jacobian_matches_autograd():
    z = torch.randn(5, dtype=torch.float64)
    p = torch.softmax(z, 0)
    auto = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, 0), z)
    torch.testing.assert_close(la.softmax_jacobian(p), auto)
    ones = torch.ones(5, dtype=torch.float64)
    torch.testing.assert_close(la.softmax_jacobian(p) @ ones, torch.zeros_like(ones))  # shift invariance


def test_dot_product_logits_variance():
    for d in (4, 64):
        assert abs(float(la.dot_product_logits(d, scaled=False).var()) / d - 1) < 0.05
        assert abs(float(la.dot_product_logits(d, scaled=True).var()) - 1) < 0.05


def test_expect_zero_mean():
    import sympy as sp

    a, b, c = sp.symbols("a b c")
    s2 = sp.Symbol("s", positive=True) ** 2
    moments = {a: s2, b: 2, c: 3}
    assert la.expect_zero_mean(a * b, moments) == 0
    assert la.expect_zero_mean((a * b + c) ** 2, moments) == 2 * s2 + 3
    assert la.expect_zero_mean(a**3 * b, moments) == 0  # odd moments vanish
    with pytest.raises(ValueError, match="moment"):
        la.expect_zero_mean(a**4, moments)


# ---------------------------------------------------------------------------- figures and explorers


def test_matplotlib_drawings():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2)
    la.draw_head_groups(ax1, 8, 2, "GQA")
    assert ax1.get_title() == "GQA" and "n_rep = 4" in ax1.get_xlabel()
    la.draw_mask(ax2, torch.ones(4, 4, dtype=torch.bool).tril(), "causal")
    assert ax2.get_title() == "causal" and ax2.get_xlabel() and ax2.get_ylabel()
    with pytest.raises(ValueError):
        la.draw_head_groups(ax1, 8, 3, "bad")
    plt.close(fig)


def test_explorers_build_with_the_chapters_draw_functions():
    pytest.importorskip("altair")
    from minimind_ref.lab.explorer import explorer

    kv = explorer(
        la.kv_cache_rows,
        {"layers": [8, 32], "heads": [8, 32], "kv_heads": [1, 2, 8], "head_dim": [64, 128]},
        la.draw_kv_cache,
        title="kv",
        show=False,
    )
    spec = kv.chart.to_dict()
    assert len(kv.rows) == 2 * 2 * 3 * 2 and "MHA" in kv.rows[0]
    assert any(t.get("fold") == ["MHA", "GQA", "MQA"] for layer in spec["layer"] for t in layer.get("transform", []))
    maps = {"causal": torch.softmax(torch.randn(2, 2, 3, 3), -1)}
    from functools import partial

    hm = explorer(
        partial(la.heatmap_rows, maps, ["a", "b", "c"]),
        {"layer": [0, 1], "head": [0, 1], "view": ["causal"]},
        la.draw_attention_heatmap,
        title="heat",
        show=False,
    )
    assert len(hm.rows) == 2 * 2 * 9
    assert hm.chart.to_dict()["mark"]["type"] == "rect"


def test_count_aten_ops_counts_dispatched_operators():
    x = torch.ones(3)
    assert la.count_aten_ops(lambda: (x + 1) * 2) == 2
    assert la.count_aten_ops(lambda: None) == 0


def test_source_fits_the_column_and_keeps_the_code():
    import ast
    import inspect
    import re
    import textwrap

    from minimind_ref.attention import Attention, make_attention_mask

    def code_only(src):  # the AST without docstrings
        tree = ast.parse(textwrap.dedent(src))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                body.pop(0)
        return ast.dump(tree)

    for obj in (make_attention_mask, Attention.forward, Attention.__init__, Attention._sdpa, la.convert_kv_heads):
        original, fitted = inspect.getsource(obj), la.source(obj)
        assert max(len(line) for line in fitted.splitlines()) <= 88
        assert code_only(fitted) == code_only(original)
        words = [sorted(re.findall(r"\w+", t)) for t in (fitted, original)]
        assert words[0] == words[1]  # the same words, comments and docstrings included
