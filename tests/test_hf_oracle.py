"""An external oracle: the dense MiniMind is exactly a Hugging Face Llama.

``transformers`` is a test-only dependency. With the equivalent ``LlamaConfig`` and minimind_ref's
own state dict loaded into ``LlamaForCausalLM`` (the key sets are identical, ``strict=True``), the
two models must give the same logits (max abs diff < 1e-5 in float32), the same loss and the same
greedy generations. Llama's RoPE has no MiniMind-style YaRN, so YaRN is checked against the upstream
oracle in ``test_upstream_compat.py`` instead.
"""

import inspect

import pytest
import torch
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")

from minimind_ref import MiniMindConfig, MiniMindForCausalLM  # noqa: E402

from .conftest import tiny_config  # noqa: E402

TOL = dict(atol=1e-5, rtol=0)
# transformers 5.x renamed the forward argument and output field past_key_values -> cache
CACHE_ARG = "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters \
    else "past_key_values"


def llama_config(cfg: MiniMindConfig, attn_implementation: str = "sdpa"):
    lc = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=0,
    )
    lc._attn_implementation = attn_implementation
    return lc


def _pair(cfg: MiniMindConfig, attn_implementation: str = "sdpa", seed: int = 0):
    """minimind_ref with random weights, and a Llama carrying exactly those weights."""
    torch.manual_seed(seed)
    ours = MiniMindForCausalLM(cfg).eval()
    hf = transformers.LlamaForCausalLM(llama_config(cfg, attn_implementation)).eval()
    state = ours.state_dict()
    assert set(state) == set(hf.state_dict())  # the same names, no renaming table needed
    result = hf.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(p.dtype == torch.float32 for p in hf.parameters())
    hf.generation_config.eos_token_id = None  # compare whole generations, no early stop
    hf.generation_config.pad_token_id = 0
    return ours, hf


def _ids(cfg, batch, seq, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


CONFIGS = {
    "default": lambda: MiniMindConfig(),  # 25.83 M parameters
    "small": lambda: tiny_config(),
    "small-mha-untied": lambda: tiny_config(num_key_value_heads=4, tie_word_embeddings=False, num_hidden_layers=3),
    "small-explicit-attention": lambda: tiny_config(flash_attn=False, rope_theta=1e4),
}


def test_llama_config_is_the_equivalent():
    cfg = MiniMindConfig()
    lc = llama_config(cfg)
    assert (lc.hidden_size, lc.intermediate_size, lc.num_hidden_layers) == (512, 1408, 8)
    assert (lc.num_attention_heads, lc.num_key_value_heads, lc.head_dim, lc.vocab_size) == (8, 2, 64, 6400)
    assert lc.rope_parameters["rope_theta"] == 1e6 and lc.rope_parameters["rope_type"] == "default"
    assert lc.tie_word_embeddings and lc.rms_norm_eps == 1e-5 and lc.hidden_act == "silu"


@pytest.mark.parametrize("name", CONFIGS)
def test_same_logits_and_loss_as_llama(name):
    cfg = CONFIGS[name]()
    attn = "eager" if not cfg.flash_attn else "sdpa"
    ours, hf = _pair(cfg, attn)
    if cfg.tie_word_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    seq = 64 if name == "default" else 32
    ids = _ids(cfg, batch=2, seq=seq)
    labels = ids.clone()
    labels[1, :7] = -100
    with torch.no_grad():
        a = ours(ids, labels=labels)
        b = hf(input_ids=ids, labels=labels)
    assert_close(a.logits, b.logits, **TOL)
    assert_close(a.loss, b.loss, **TOL)  # HF shifts the labels inside too


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_small_model_training_gradients_equal_llama(attn):
    cfg = tiny_config()
    ours, hf = _pair(cfg, attn)
    ours.train(), hf.train()
    ids = _ids(cfg, batch=2, seq=16)
    ours(ids, labels=ids).loss.backward()
    hf(input_ids=ids, labels=ids).loss.backward()
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, hf_params[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_incremental_decoding_matches_llama_cache():
    cfg = tiny_config()
    ours, hf = _pair(cfg)
    ids = _ids(cfg, batch=2, seq=12)
    with torch.no_grad():
        a = ours(ids[:, :5], use_cache=True)
        b = hf(input_ids=ids[:, :5], use_cache=True)
        assert_close(a.logits, b.logits, **TOL)
        for t in range(5, ids.shape[1]):
            a = ours(ids[:, t:t + 1], past_key_values=a.past_key_values, use_cache=True)
            b = hf(input_ids=ids[:, t:t + 1], use_cache=True, **{CACHE_ARG: getattr(b, CACHE_ARG)})
            assert_close(a.logits[:, -1], b.logits[:, -1], **TOL)


@pytest.mark.parametrize("name,new_tokens", [("default", 8), ("small", 24)])
def test_greedy_generate_same_tokens_as_llama(name, new_tokens):
    cfg = CONFIGS[name]()
    ours, hf = _pair(cfg)
    prompt = _ids(cfg, batch=1, seq=6)
    a = ours.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=[])
    b = hf.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    assert a.shape == (1, 6 + new_tokens)
    assert torch.equal(a, b)


def test_left_padded_batch_matches_llama():
    """HF's generate gives a left-padded row positions 0.. from its first real token; minimind_ref
    keeps absolute positions (pads occupy positions). RoPE scores depend only on differences, so
    the real tokens' logits agree to rounding, and greedy decoding picks the same tokens."""
    cfg = tiny_config()
    ours, hf = _pair(cfg)
    ids = _ids(cfg, batch=3, seq=10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids = ids.masked_fill(mask == 0, 0)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF's generate uses for left padding
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    assert torch.isfinite(a).all()
    assert_close(a[real], b[real], **TOL)  # measured ~1e-6: positions shifted, scores unchanged

    out_ours = ours.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=[], attention_mask=mask)
    out_hf = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(out_ours, out_hf)
