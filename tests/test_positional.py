"""Chapter 2's lab functions (minimind_ref.lab.positional): what the chapter's figures and explorers show."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.attention import Attention
from minimind_ref.lab import positional as pos
from minimind_ref.rope import apply_rotary_pos_emb, precompute_freqs_cis


def test_frequency_rows_match_the_corrected_numbers():
    rows = {(r["dim"], r["base"]): r for r in pos.frequency_rows(position=32_000)}
    assert rows[(128, 1e4)]["theta_last"] == pytest.approx(1.155e-4, rel=1e-3)
    assert rows[(128, 1e4)]["wavelength_last"] == pytest.approx(54_410, rel=1e-4)
    assert rows[(128, 1e6)]["wavelength_last"] == pytest.approx(5.063e6, rel=1e-3)  # not 628,318
    assert rows[(128, 1e6)]["angle_last"] == pytest.approx(0.0397, rel=1e-2)  # not 0.32 rad
    assert rows[(64, 1e6)]["wavelength_last"] == pytest.approx(4.08e6, rel=1e-3)
    assert rows[(64, 1e4)]["wavelength_last"] == pytest.approx(47_117, rel=1e-4)


def test_interleaved_half_split_and_complex_forms_agree_up_to_the_permutation():
    d, T = 16, 9
    x = torch.randn(2, T, 3, d, dtype=torch.float64)
    perm = pos.half_split_permutation(d)
    cos, sin = precompute_freqs_cis(d, T, 1e4)
    half, _ = apply_rotary_pos_emb(x[..., perm], x[..., perm], cos.double(), sin.double())
    inter = pos.rope_interleaved(x, torch.arange(T), 1e4)
    assert_close(half, inter[..., perm], atol=1e-6, rtol=1e-6)  # float32 tables
    assert_close(pos.rope_complex(x.float(), pos.complex_table(d, T, 1e4)), inter.float(), atol=1e-5, rtol=1e-5)
    # a different permutation does not work: the pairing is the point
    wrong, _ = apply_rotary_pos_emb(x, x, cos.double(), sin.double())
    assert not torch.allclose(wrong, inter, atol=1e-3)


def test_permuting_qk_rows_turns_an_interleaved_layer_into_minimind_refs():
    torch.manual_seed(0)
    cfg = MiniMindConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=16)
    attn = Attention(cfg).double().eval()
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    cos, sin = precompute_freqs_cis(cfg.head_dim, 7, cfg.rope_theta)
    want = attn(x, (cos.double(), sin.double()))
    inverse = torch.argsort(pos.half_split_permutation(cfg.head_dim))
    wq = pos.permute_heads(attn.q_proj.weight, 4, inverse)  # an "interleaved checkpoint"
    wk = pos.permute_heads(attn.k_proj.weight, 2, inverse)
    perm = pos.half_split_permutation(cfg.head_dim)
    assert_close(pos.permute_heads(wq, 4, perm), attn.q_proj.weight)
    assert_close(pos.permute_heads(wk, 2, perm), attn.k_proj.weight)
    # the interleaved layer, written out: same output as minimind_ref's half-split layer
    q = (x @ wq.T).view(2, 7, 4, 16)
    k = (x @ wk.T).view(2, 7, 2, 16)
    v = attn.v_proj(x).view(2, 7, 2, 16)
    q, k = (
        pos.rope_interleaved(q, torch.arange(7), cfg.rope_theta),
        pos.rope_interleaved(k, torch.arange(7), cfg.rope_theta),
    )
    k, v = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / 4.0
    scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(2, 7, 64)
    assert_close(attn.o_proj(out), want, atol=1e-6, rtol=1e-6)


def test_sinusoidal_shift_is_a_rotation():
    pe = pos.sinusoidal_pe(50, 8)
    k = 7
    for i, w in enumerate(pos.inv_freqs(8, 1e4).tolist()):
        m = torch.tensor([[math.cos(k * w), math.sin(k * w)], [-math.sin(k * w), math.cos(k * w)]], dtype=torch.float64)
        assert_close(pe[k:, 2 * i : 2 * i + 2], pe[:-k, 2 * i : 2 * i + 2] @ m.T)


def test_decay_bound_is_a_bound_and_decays():
    d, base = 32, 1e4
    dist = torch.arange(0, 200)
    bound = pos.roformer_decay_bound(d, base, dist)
    assert bound[0] == pytest.approx((d // 2 + 1) / 2)  # |S_j| = j at distance 0
    assert bound[150:].mean() < 0.5 * bound[:5].mean()
    theta = pos.inv_freqs(d, base)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(d // 2, dtype=torch.complex128, generator=g)
    for delta in (0, 3, 40, 199):
        score = (h * torch.polar(torch.ones(d // 2, dtype=torch.float64), delta * theta)).sum().abs()
        diffs = torch.cat([h[1:] - h[:-1], -h[-1:]]).abs().max()
        assert score <= diffs * bound[delta] * (d // 2) + 1e-9
    assert pos.mean_cos(d, base, dist)[0] == pytest.approx(1.0)


def test_yarn_ratios_at_minimind_defaults_and_the_papers_ramp():
    mm = pos.yarn_minimind_ratio(64, 1e6, 2048, 16)
    expected = [1.0] * 6 + [0.896, 0.792, 0.688, 0.583, 0.479, 0.375, 0.271, 0.167] + [0.0625] * 18
    assert_close(mm, torch.tensor(expected, dtype=torch.float64), atol=1e-3, rtol=0)
    cos, sin = precompute_freqs_cis(64, 4096, 1e6, {"factor": 16, "original_max_position_embeddings": 2048})
    assert_close(pos.table_ratio(cos, sin, 64, 1e6), mm, atol=1e-5, rtol=1e-5)
    paper = pos.yarn_paper_ratio(64, 1e6, 2048, 4)
    assert_close(paper[:6], torch.ones(6, dtype=torch.float64))
    assert paper[6] == pytest.approx(0.817, abs=1e-3) and paper[8] == pytest.approx(0.475, abs=1e-3)
    assert_close(paper[14:], torch.full((18,), 0.25, dtype=torch.float64))
    assert pos.yarn_minimind_ratio(64, 1e6, 2048, 4)[8] == pytest.approx(0.75)
    doc = pos.yarn_documents_ratio(64, 1e6, 2048, 4, 4, 1)
    assert doc[13] == pytest.approx(0.8607, abs=1e-4) and doc[14] == pytest.approx(0.25)  # the jump


def test_ntk_pi_and_mscale():
    r = pos.ntk_ratio(64, 16)
    assert r[0] == 1 and r[-1] == pytest.approx(1 / 16)
    assert_close(pos.pi_ratio(8, 4), torch.full((4,), 0.25, dtype=torch.float64))
    assert pos.yarn_mscale(16) == pytest.approx(1.27726, abs=1e-5) and pos.yarn_mscale(1) == 1.0
    cos, sin = pos.method_tables("NTK-aware", 32, 128, 1e4, 32)
    assert_close(pos.table_ratio(cos, sin, 32, 1e4), pos.ntk_ratio(32, 4), atol=1e-5, rtol=1e-4)


def test_tables_from_freqs_matches_precompute():
    for base in (1e4, 1e6):
        want = precompute_freqs_cis(32, 100, base)
        got = pos.tables_from_freqs(pos.inv_freqs(32, base, torch.float32), 100)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])


@pytest.mark.parametrize("method", pos.METHODS)
def test_method_tables_have_the_shape_and_keep_short_range_plain_for_plain(method):
    cos, sin = pos.method_tables(method, 32, 256, 1e4, 64)
    assert cos.shape == sin.shape == (256, 32)
    if method == "plain RoPE":
        assert_close(cos, precompute_freqs_cis(32, 256, 1e4)[0])
    with pytest.raises(ValueError):
        pos.method_tables("nope", 32, 256, 1e4, 64)


def test_rotation_rows_rope_score_is_shift_invariant_and_absolute_is_not():
    rows = pos.rotation_rows(offset=3, shift=0)
    rope = [r["score"] for r in rows if r["kind"] == "curve" and r["code"] == "rope"]
    absolute = [r["score"] for r in rows if r["kind"] == "curve" and r["code"] == "abs"]
    assert max(rope) - min(rope) < 1e-12
    assert max(absolute) - min(absolute) > 0.5
    assert {r["kind"] for r in rows} == {"vector", "label", "curve", "marker"}
    assert pos.rotation_rows(3, 4) != pos.rotation_rows(3, 6)  # the vectors turn


def test_yarn_ratio_rows_and_explorers_build():
    from minimind_ref.lab.explorer import explorer

    rows = pos.yarn_ratio_rows(16, 32, 1, 2048)
    methods = {r.get("method") for r in rows}
    assert methods == {None, "paper", "minimind", "ntk"}
    bounds = {r["boundary"]: r["pair"] for r in rows if "boundary" in r}
    assert bounds["r = β_fast"] == pytest.approx(5.376, abs=1e-3)
    assert bounds["r = β_slow"] == pytest.approx(13.403, abs=1e-3)
    e = explorer(pos.rotation_rows, {"offset": [0, 3], "shift": [0, 2]}, pos.draw_rotation, title="t", show=False,
                 width=None, height=None)  # fmt: skip
    e.chart.to_dict()
    e = explorer(pos.yarn_ratio_rows, {"factor": [4, 16]}, pos.draw_yarn_ratios, title="t", show=False)
    e.chart.to_dict()


def test_lag_copy_data_copies_at_the_stated_rate():
    ids = pos.lag_copy_batch(64, 200, torch.Generator().manual_seed(0), vocab=32, p_copy=0.7, max_lag=16)
    assert ids.shape == (64, 200) and int(ids.min()) >= 0 and int(ids.max()) < 32
    # a token equals one of the 16 before it far more often than chance (1 - (31/32)^16 = 0.40)
    hits = torch.stack([(ids[:, 20:] == ids[:, 20 - k : 200 - k]) for k in range(1, 17)]).any(0).float().mean()
    assert hits > 0.7


def test_extrapolation_experiment_small():
    out = pos.extrapolation_experiment(seeds=(0,), train_len=16, factor=2, steps=3, eval_batch=2)
    assert set(out["losses"]) == set(pos.METHODS)
    for v in out["losses"].values():
        assert v.shape == (1, 31) and torch.isfinite(v).all()
    for v in out["far_share"].values():
        assert v.shape == (1, 32) and float(v.min()) >= 0 and float(v.max()) <= 1 + 1e-6
    assert out["settings"]["head_dim"] == 32


def test_far_attention_share_is_the_weight_beyond_the_lag():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(pos.tiny_config(48)).eval()
    ids = torch.randint(0, 32, (2, 48))
    share = pos.far_attention_share(model, ids, max_lag=16)
    assert share.shape == (48,) and bool((share[:17] == 0).all())  # no key is that far back yet
    # a model whose attention ignores q and k attends uniformly: share (t - 16) / (t + 1)
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            torch.nn.init.zeros_(proj.weight)
    uniform = pos.far_attention_share(model, ids, max_lag=16)
    t = torch.arange(48, dtype=torch.float64)
    assert_close(uniform, ((t - 16) / (t + 1)).clamp(min=0), atol=1e-6, rtol=1e-6)
    assert model.model.layers[0].self_attn.flash == MiniMindConfig().flash_attn  # the original is untouched


def test_sequence_losses_match_the_model_loss():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(pos.tiny_config(40)).eval()
    ids = torch.randint(0, 32, (5, 40))
    per = pos.sequence_losses(model, ids, chunk=2)
    assert per.shape == (5, 39)
    with torch.no_grad():
        assert float(per.mean()) == pytest.approx(float(model(ids, labels=ids).loss), rel=1e-5)
    assert_close(per.mean(0), pos.position_losses(model, ids))


def test_held_out_stretches_are_validation_documents():
    from minimind_ref.lab import book_model

    _, tok = book_model("dense")
    st = pos.held_out_stretches(tok, 64, sources=("stdlib",))
    assert st.ndim == 2 and st.shape[1] == 64 and st.shape[0] >= 3
    assert bool((st[:, 0] == tok.bos_token_id).all())
    assert not bool((st[:, 1:] == tok.bos_token_id).any())  # one document per stretch


def test_with_tables_leaves_the_original_alone():
    model = MiniMindForCausalLM(pos.tiny_config(16))
    cos, sin = precompute_freqs_cis(32, 64, 1e4)
    longer = pos.with_tables(model, cos, sin)
    ids = torch.randint(0, 32, (1, 40))
    assert pos.position_losses(longer, ids).shape == (39,)
    assert model.model.freqs_cos.shape[0] == 16
    with pytest.raises(ValueError):
        model(ids)


def test_oracle_loss_is_flat_and_below_uniform():
    ids = pos.lag_copy_batch(256, 120, torch.Generator().manual_seed(1))
    oracle = pos.oracle_losses(ids)
    assert oracle.shape == (119,)
    assert oracle[20:].max() < math.log(32) - 0.5  # far better than ignoring the context
    assert abs(float(oracle[20:60].mean() - oracle[60:].mean())) < 0.05  # stationary
    # a wrong model of the process (no copying) scores ln 32 exactly
    assert pos.oracle_losses(ids, p_copy=0.0)[5] == pytest.approx(math.log(32))


def test_draws_work_on_a_plain_chart_as_the_live_sliders_call_them():
    import altair as alt

    for rows, draw in ((pos.rotation_rows(2, 4), pos.draw_rotation), (pos.yarn_ratio_rows(), pos.draw_yarn_ratios)):
        draw(alt.Chart(alt.Data(values=rows))).to_dict()


def test_device_name_counts_threads_in_english():
    from minimind_ref.lab import device_name

    if torch.cuda.is_available():
        pytest.skip("the thread count is only in the CPU name")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert device_name().endswith(", 1 thread)")
        torch.set_num_threads(2)
        assert device_name().endswith(", 2 threads)")
    finally:
        torch.set_num_threads(before)
