"""The assembled model (chapter 6): keys, loss, cache, generation, checkpoints, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.attention import KVCache

from .conftest import tiny_config


def make(cfg=None, **kw):
    torch.manual_seed(0)
    return MiniMindForCausalLM(cfg or tiny_config(**kw)).eval()


def ids(b=2, t=10, vocab=97, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- structure


def count(cfg):
    with torch.device("meta"):
        return sum(p.numel() for p in MiniMindForCausalLM(cfg).parameters())


def test_parameter_counts_of_the_published_sizes():
    assert count(MiniMindConfig()) == 25_829_888  # 25.83 M
    assert count(MiniMindConfig(use_moe=True)) == 95_052_288  # 95.05 M
    assert round(count(MiniMindConfig(hidden_size=640, use_moe=True)) / 1e6, 1) == 145.0  # "MoE 145M"


def test_state_dict_keys_are_upstreams():
    dense = set(make().state_dict())
    layer0 = {k for k in dense if k.startswith("model.layers.0.")}
    assert layer0 == {
        f"model.layers.0.{k}.weight"
        for k in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "input_layernorm",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    }
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= dense
    assert not any("freqs" in k for k in dense)  # RoPE tables are derived, not stored
    moe = set(make(use_moe=True, n_routed_experts=3, n_shared_experts=2).state_dict())
    assert "model.layers.1.mlp.gate.weight" in moe
    assert "model.layers.1.mlp.experts.2.down_proj.weight" in moe
    assert "model.layers.1.mlp.shared_experts.1.up_proj.weight" in moe
    assert not any(k.startswith("model.layers.0.mlp.gate_proj") for k in moe)


def test_embedding_is_tied_unless_asked_otherwise():
    m = make()
    assert m.lm_head.weight is m.model.embed_tokens.weight
    untied = make(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


# ----------------------------------------------------------------------------- forward


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    m = make()
    x = ids()
    labels = x.clone()
    labels[0, :4] = -100
    out = m(x, labels=labels)
    logits = out.logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(out.loss, expected)
    manual = []
    for b in range(2):
        for t in range(9):
            if labels[b, t + 1] != -100:
                manual.append(-logits[b, t].log_softmax(-1)[labels[b, t + 1]])
    assert_close(out.loss, torch.stack(manual).mean())


def test_aux_loss_dense_zero_and_moe_sum_of_layers():
    out = make()(ids())
    assert out.aux_loss.shape == () and out.aux_loss.item() == 0.0
    m = make(use_moe=True, aux_loss_alpha=0.1).train()
    out = m(ids(), labels=ids())
    layers = [layer.mlp.aux_loss for layer in m.model.layers]
    assert_close(out.aux_loss, sum(layers))
    assert out.aux_loss > 0
    (out.loss + out.aux_loss).backward()
    assert m.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def test_logits_to_keep():
    m = make()
    x = ids()
    full = m(x).logits
    assert_close(m(x, logits_to_keep=1).logits, full[:, -1:])
    assert_close(m(x, logits_to_keep=3).logits, full[:, -3:])
    assert_close(m(x, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])


@pytest.mark.parametrize(
    "kw",
    [{}, dict(flash_attn=False), dict(use_moe=True), dict(inference_rope_scaling=True, max_position_embeddings=4096)],
)
def test_incremental_decoding_with_cache_equals_full_forward(kw):
    m = make(**kw)
    x = ids(t=12)
    full = m(x).logits
    out = m(x[:, :5], use_cache=True)
    pieces, cache = [out.logits], out.past_key_values
    assert isinstance(cache, KVCache) and cache.length == 5
    for t in range(5, 12):
        out = m(x[:, t : t + 1], past_key_values=cache, use_cache=True)
        pieces.append(out.logits)
        cache = out.past_key_values
    assert cache.length == 12
    assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_matches_rows_run_alone():
    m = make()
    a, b = ids(1, 7, seed=2), ids(1, 4, seed=3)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    for flash in (True, False):
        m2 = make(flash_attn=flash)
        out = m2(batch, attention_mask=mask).logits
        assert torch.isfinite(out).all()
        assert_close(out[0], m(a).logits[0], atol=1e-5, rtol=1e-5)
        assert_close(out[1, 3:], m(b).logits[0], atol=1e-5, rtol=1e-5)


def test_all_ones_mask_equals_no_mask():
    m = make()
    x = ids()
    assert_close(m(x, attention_mask=torch.ones_like(x)).logits, m(x).logits)


def test_bfloat16_forward_finite_and_close_to_float32():
    m = make()
    x = ids()
    ref = m(x).logits
    low = make().to(torch.bfloat16)(x).logits
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert_close(low.float(), ref, atol=0.1, rtol=0.05)
    mm = make(use_moe=True).to(torch.bfloat16)
    assert torch.isfinite(mm(x).logits).all()


def test_dropout_only_in_training():
    m = make(dropout=0.3)
    x = ids()
    assert torch.equal(m(x).logits, m(x).logits)
    m.train()
    assert not torch.equal(m(x).logits, m(x).logits)


# ----------------------------------------------------------------------------- generation


def naive_greedy(m, x, n):
    for _ in range(n):
        nxt = m(x).logits[:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], 1)
    return x


@pytest.mark.parametrize("kw", [{}, dict(use_moe=True), dict(flash_attn=False)])
def test_greedy_generate_equals_full_recomputation(kw):
    m = make(**kw)
    x = ids(2, 6)
    out = m.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=[])
    assert out.shape == (2, 14)
    assert torch.equal(out, naive_greedy(m, x, 8))


def test_eos_stops_each_row_and_pads_it():
    m = make()
    for seed in range(20):  # find a prompt pair where some token ends row 0 and never appears in row 1
        x = ids(2, 6, seed=seed)
        free = m.generate(x, max_new_tokens=6, do_sample=False, eos_token_id=[])
        new0, new1 = free[0, 6:].tolist(), free[1, 6:].tolist()
        stops = [j for j in range(1, 5) if new0[j] not in new0[:j] and new0[j] not in new1]
        if stops:
            break
    j = stops[0]
    eos = new0[j]
    out = m.generate(x, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    assert torch.equal(out[1], free[1])  # the other row runs to the end
    assert torch.equal(out[0, : 7 + j], free[0, : 7 + j]) and (out[0, 7 + j :] == eos).all()
    one = m.generate(x[:1], max_new_tokens=6, do_sample=False, eos_token_id=eos)
    assert one.shape == (1, 7 + j)  # a batch whose every row has finished stops early


def test_generate_left_padded_batch_equals_rows_alone():
    m = make()
    a, b = ids(1, 7, seed=4), ids(1, 3, seed=5)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])
    out = m.generate(batch, max_new_tokens=6, do_sample=False, attention_mask=mask, eos_token_id=[])
    assert torch.equal(out[0, 7:], m.generate(a, 6, do_sample=False, eos_token_id=[])[0, 7:])
    assert torch.equal(out[1, 7:], m.generate(b, 6, do_sample=False, eos_token_id=[])[0, 3:])


def test_streamer_sees_every_new_column():
    m = make()
    seen = []
    out = m.generate(ids(2, 4), max_new_tokens=5, do_sample=False, eos_token_id=[], streamer=seen.append)
    assert torch.equal(torch.stack(seen, 1), out[:, 4:])


def test_sampling_controls():
    m = make()
    x = ids(2, 5)
    greedy = m.generate(x, 6, do_sample=False, eos_token_id=[])
    assert torch.equal(m.generate(x, 6, eos_token_id=[]), greedy)  # greedy by default, as in Hugging Face
    assert torch.equal(m.generate(x, 6, do_sample=True, top_k=1, eos_token_id=[]), greedy)
    assert torch.equal(m.generate(x, 6, do_sample=True, top_p=1e-6, eos_token_id=[]), greedy)
    s1 = m.generate(x, 6, do_sample=True, temperature=1.5, generator=torch.Generator().manual_seed(3), eos_token_id=[])
    s2 = m.generate(x, 6, do_sample=True, temperature=1.5, generator=torch.Generator().manual_seed(3), eos_token_id=[])
    assert torch.equal(s1, s2)
    samples = {
        tuple(m.generate(x[:1], 4, do_sample=True, temperature=5.0, eos_token_id=[])[0, 5:].tolist()) for _ in range(5)
    }
    assert len(samples) > 1  # a hot temperature really samples
    # top-k keeps only the k best tokens
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    for _ in range(20):
        assert MiniMindForCausalLM._pick(logits, True, 1.0, 2, None, None).item() in (1, 3)
        # top-p 0.7 keeps the smallest set holding 70 % of the mass: tokens 1 and 3 here
        assert MiniMindForCausalLM._pick(logits, True, 1.0, None, 0.7, None).item() in (1, 3)


# ----------------------------------------------------------------------------- bad input


def test_clear_errors_for_bad_input():
    m = make()
    x = ids()
    with pytest.raises(ValueError, match="outside .*vocab_size=97"):
        m(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="outside"):
        m(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match="integer tensor"):
        m(x.float())
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, seq_len\)"):
        m(x[0])
    with pytest.raises(ValueError, match="exceeds the RoPE table"):
        m(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        m(x, attention_mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match="labels has shape"):
        m(x, labels=x[:, :5])
    with pytest.raises(ValueError, match="logits_to_keep"):
        m(x, labels=x, logits_to_keep=1)
    cache = m(x, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="exceeds the RoPE table"):
        m(torch.zeros(2, 247, dtype=torch.long), past_key_values=cache)
    with pytest.raises(ValueError, match="attention_mask has shape"):  # must cover cached + new tokens
        m(x[:, :1], attention_mask=torch.ones(2, 1), past_key_values=cache)
    with pytest.raises(ValueError, match="batch size 2"):
        m(x[:1, :1], past_key_values=cache)
    other = make(num_key_value_heads=4)(x, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="another config"):
        m(x[:, :1], past_key_values=other)
    with pytest.raises(ValueError, match="KVCache"):
        m(x[:, :1], past_key_values=[(torch.zeros(1), torch.zeros(1))])
    with pytest.raises(ValueError, match="temperature"):
        m.generate(x, 2, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        m.generate(x, 2, top_p=1.5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.generate(x, 300)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("safe", [True, False])
def test_save_and_load_round_trip(tmp_path, safe):
    m = make(use_moe=True, inference_rope_scaling=True, max_position_embeddings=4096)
    m.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / "config.json").exists()
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path)
    assert loaded.config == m.config
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    x = ids()
    assert_close(loaded(x).logits, m(x).logits, atol=0, rtol=0)


def test_plain_pth_state_dict_with_both_tied_keys_and_half_precision(tmp_path):
    m = make()
    state = {k: v.half() for k, v in m.state_dict().items()}  # how upstream's trainer saves
    assert "lm_head.weight" in state and "model.embed_tokens.weight" in state
    torch.save(state, tmp_path / "full_sft_64.pth")
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path / "full_sft_64.pth", config=m.config)
    assert_close(loaded(ids()).logits, m(ids()).logits, atol=2e-2, rtol=2e-2)
    strict = make()
    strict.load_state_dict(m.state_dict(), strict=True)


def test_mismatched_checkpoints_list_what_is_wrong(tmp_path):
    m = make()
    state = m.state_dict()
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.layers.9.mlp.up_proj.weight"] = torch.zeros(1)
    state["model.norm.weight"] = torch.ones(32)
    with pytest.raises(ValueError) as err:
        make().load_checkpoint(state)
    msg = str(err.value)
    assert "missing keys (1): ['model.layers.1.mlp.up_proj.weight']" in msg
    assert "unexpected keys (1): ['model.layers.9.mlp.up_proj.weight']" in msg
    assert "model.norm.weight: checkpoint (32,) vs model (64,)" in msg
    bad = m.state_dict()
    bad["lm_head.weight"] = bad["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        make().load_checkpoint(bad)
    torch.save(m.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"config=MiniMindConfig\(\.\.\.\)"):  # no config.json beside it
        MiniMindForCausalLM.from_pretrained(tmp_path / "w.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        MiniMindForCausalLM.from_pretrained(tmp_path / "w.pth", config=tiny_config(hidden_size=128))
