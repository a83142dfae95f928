"""Upstream checkpoints load into minimind_ref and compute the same numbers.

The oracle is ``minimind_ref.lab.upstream``: an independent, deliberately naive re-implementation
of upstream MiniMind (concatenating KV cache, materialised ``repeat_kv``, the ``repeat_interleave``
MoE training path and ``moe_infer``). A state dict saved from it with ``torch.save`` is exactly what
upstream's trainers write (both tied keys, optionally in float16); minimind_ref must load it with
``strict=True`` and agree on logits, loss, auxiliary loss, gradients, cached decoding and YaRN.
"""

import ast
import json
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.lab import upstream
from minimind_ref.lab.upstream import UpstreamConfig, UpstreamMiniMindForCausalLM, upstream_state_dict
from minimind_ref.moe import MoEFeedForward
from minimind_ref.rope import precompute_freqs_cis

from .conftest import tiny_config

TOL = dict(atol=1e-5, rtol=0)  # float32, max abs diff

VARIANTS = {
    "dense": dict(),
    "dense-explicit-attention": dict(flash_attn=False),
    "dense-mha": dict(num_key_value_heads=4),
    "moe-seq-aux": dict(use_moe=True, seq_aux=True),
    "moe-batch-aux": dict(use_moe=True, seq_aux=False),
    "moe-no-shared-top1": dict(use_moe=True, n_shared_experts=0, num_experts_per_tok=1, n_routed_experts=3),
    "moe-2-shared-no-renorm": dict(use_moe=True, n_shared_experts=2, norm_topk_prob=False, aux_loss_alpha=0.1),
}


def _pair(cfg: MiniMindConfig, seed: int = 0):
    """An upstream-style model with random weights, and minimind_ref loaded from its state dict."""
    torch.manual_seed(seed)
    up = UpstreamMiniMindForCausalLM(cfg)
    ours = MiniMindForCausalLM(cfg)
    ours.load_state_dict(upstream_state_dict(up), strict=True)
    return up, ours


def _ids(cfg, batch=3, seq=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


# ------------------------------------------------------------------------------- the oracle itself
def test_oracle_is_independent_and_torch_only():
    """The oracle must not reuse the code under test, nor pull in the book's heavy dependencies."""
    tree = ast.parse(open(upstream.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"__future__", "math", "dataclasses", "typing", "torch"}, imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(tree))  # no relative imports
    code = ("import sys, minimind_ref.lab.upstream; "
            "bad = [m for m in ('sympy', 'matplotlib', 'ipywidgets', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------- keys and config
@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_keys_and_shapes_are_upstreams(name):
    cfg = tiny_config(**VARIANTS[name])
    up, ours = UpstreamMiniMindForCausalLM(cfg), MiniMindForCausalLM(cfg)
    up_sd, our_sd = up.state_dict(), ours.state_dict()
    assert set(up_sd) == set(our_sd)
    assert {k: v.shape for k, v in up_sd.items()} == {k: v.shape for k, v in our_sd.items()}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(up_sd)  # both tied keys are saved
    assert not any("freqs" in k for k in our_sd)  # RoPE tables are non-persistent buffers
    if cfg.use_moe:
        assert "model.layers.0.mlp.gate.weight" in our_sd
        assert f"model.layers.1.mlp.experts.{cfg.n_routed_experts - 1}.down_proj.weight" in our_sd
        assert any(".shared_experts." in k for k in our_sd) == (cfg.n_shared_experts > 0)


def test_upstream_ffn_width_rule_equals_minimind_ref():
    """Upstream rounds int(h*8/3) up to a multiple of 64 inside FeedForward; minimind_ref's config
    rounds h*8/3 up: the same width for every hidden size (built on the meta device: no memory)."""
    with torch.device("meta"):
        for hidden in range(8, 4097, 8):
            ucfg = UpstreamConfig(hidden_size=hidden, num_attention_heads=1, num_key_value_heads=1)
            width = upstream.FeedForward(ucfg).up_proj.out_features
            assert ucfg.intermediate_size == width  # written back into the config, as upstream does
            ours = MiniMindConfig(hidden_size=hidden, num_attention_heads=1, num_key_value_heads=1)
            assert ours.intermediate_size == width, hidden
    assert MiniMindConfig().intermediate_size == 1408


def test_config_adapter_copies_every_field():
    cfg = tiny_config(use_moe=True, seq_aux=False, n_shared_experts=2, inference_rope_scaling=True,
                      max_position_embeddings=4096, rope_theta=1e4, aux_loss_alpha=0.05)
    ucfg = UpstreamConfig.from_config(cfg)
    for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
              "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
              "use_moe", "seq_aux", "n_shared_experts", "aux_loss_alpha", "num_experts_per_tok", "n_routed_experts"):
        assert getattr(ucfg, f) == getattr(cfg, f), f
    assert UpstreamConfig.from_config(cfg.to_dict()) == ucfg  # a config.json dict works too


# ---------------------------------------------------------------------- checkpoints, .pth files
@pytest.mark.parametrize("name", VARIANTS)
def test_pth_checkpoint_same_logits_loss_and_aux_loss(name, tmp_path):
    cfg = tiny_config(**VARIANTS[name])
    torch.manual_seed(0)
    up = UpstreamMiniMindForCausalLM(cfg)
    path = tmp_path / "pretrain_64.pth"
    torch.save(upstream_state_dict(up), path)  # what upstream's trainer writes (fp32 here)

    # 1) plain load_state_dict(strict=True) of the torch.load-ed dict
    ours = MiniMindForCausalLM(cfg)
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    # 2) from_pretrained on the single .pth file with a config
    loaded = MiniMindForCausalLM.from_pretrained(path, config=cfg)
    assert loaded.model.embed_tokens.weight is loaded.lm_head.weight  # still tied after loading

    ids = _ids(cfg)
    labels = ids.clone()
    labels[0, :5] = -100  # ignored positions
    for mode in ("eval", "train"):
        for m in (up, ours, loaded):
            m.train(mode == "train")
        ref = up(ids, labels=labels)
        for model in (ours, loaded):
            out = model(ids, labels=labels)
            assert_close(out.logits, ref.logits, **TOL)
            assert_close(out.loss, ref.loss, **TOL)
            assert_close(out.aux_loss.reshape(()), ref.aux_loss.reshape(()).float(), **TOL)
        if cfg.use_moe and mode == "train":
            assert ref.aux_loss.item() > 0  # the auxiliary loss is really computed and compared
        else:
            assert ref.aux_loss.item() == 0


def test_moe_seq_and_batch_aux_losses_differ_and_each_matches():
    """The two balancing variants give different numbers on the same weights, each equal to upstream's."""
    values = {}
    for seq_aux in (True, False):
        cfg = tiny_config(use_moe=True, seq_aux=seq_aux, aux_loss_alpha=0.1)
        up, ours = _pair(cfg)
        up.train(), ours.train()
        ids = _ids(cfg, batch=4, seq=16)
        a, b = up(ids).aux_loss, ours(ids).aux_loss
        assert_close(b, a, **TOL)
        values[seq_aux] = b.item()
    assert abs(values[True] - values[False]) > 1e-4
    assert all(v > 0 for v in values.values())


def test_half_precision_checkpoint_as_upstream_trainer_saves(tmp_path):
    """Upstream's trainer saves ``{k: v.half()}``: loading it gives fp32 weights equal to the fp16 values."""
    cfg = tiny_config(use_moe=True)
    torch.manual_seed(0)
    up = UpstreamMiniMindForCausalLM(cfg)
    half = upstream_state_dict(up, half=True)
    assert all(v.dtype == torch.float16 for v in half.values())
    path = tmp_path / "full_sft_64_moe.pth"
    torch.save(half, path)

    ours = MiniMindForCausalLM.from_pretrained(path, config=cfg)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, half[k].float()), k
    up.load_state_dict(torch.load(path, weights_only=True), strict=True)  # the oracle reads the same file
    up.eval()
    ids = _ids(cfg)
    assert_close(ours(ids, labels=ids).logits, up(ids).logits, **TOL)
    assert_close(ours(ids, labels=ids).loss, up(ids, labels=ids).loss, **TOL)


def test_hf_style_folder_with_upstream_config_json(tmp_path):
    """An upstream export folder: config.json with upstream's (and Hugging Face's) keys, safetensors
    without the tied ``lm_head.weight`` (as ``save_pretrained`` drops it)."""
    from safetensors.torch import save_file

    cfg = tiny_config(use_moe=True, seq_aux=False)
    torch.manual_seed(0)
    up = UpstreamMiniMindForCausalLM(cfg).eval()
    conf = {f: getattr(up.config, f) for f in UpstreamConfig.__dataclass_fields__}
    conf.update(model_type="minimind", architectures=["MiniMindForCausalLM"], torch_dtype="float32",
                transformers_version="4.57.1", use_cache=True)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    state = upstream_state_dict(up)
    state.pop("lm_head.weight")
    save_file(state, str(tmp_path / "model.safetensors"))

    ours = MiniMindForCausalLM.from_pretrained(tmp_path)
    assert ours.config.use_moe and not ours.config.seq_aux
    assert ours.config.extra["model_type"] == "minimind"
    ids = _ids(cfg)
    assert_close(ours(ids).logits, up(ids).logits, **TOL)


def test_moe_checkpoint_into_dense_config_is_refused_with_the_keys(tmp_path):
    cfg = tiny_config(use_moe=True)
    up = UpstreamMiniMindForCausalLM(cfg)
    path = tmp_path / "moe.pth"
    torch.save(upstream_state_dict(up), path)
    with pytest.raises(ValueError, match=r"mlp\.gate\.weight"):
        MiniMindForCausalLM.from_pretrained(path, config=tiny_config())


def test_default_size_dense_checkpoint(tmp_path):
    """The 26 M default config, through a .pth file, gives upstream's logits and loss."""
    cfg = MiniMindConfig()
    torch.manual_seed(0)
    up = UpstreamMiniMindForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in up.parameters())
    assert 25.8e6 < n_params < 25.9e6  # 25.83 M, tied embedding counted once
    path = tmp_path / "pretrain_512.pth"
    torch.save(upstream_state_dict(up), path)
    ours = MiniMindForCausalLM.from_pretrained(path, config=cfg)
    ids = _ids(cfg, batch=2, seq=48)
    with torch.no_grad():
        ref, out = up(ids, labels=ids), ours(ids, labels=ids)
    assert_close(out.logits, ref.logits, **TOL)
    assert_close(out.loss, ref.loss, **TOL)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", ["dense", "moe-seq-aux", "moe-batch-aux"])
def test_training_gradients_equal(name):
    """loss + aux_loss backpropagated through both models gives the same gradient on every parameter."""
    cfg = tiny_config(**VARIANTS[name], aux_loss_alpha=0.1)
    up, ours = _pair(cfg)
    up.train(), ours.train()
    ids = _ids(cfg, batch=2, seq=16)
    for m in (up, ours):
        out = m(ids, labels=ids)
        (out.loss + out.aux_loss).backward()
    our_params = dict(ours.named_parameters())
    for name_, p in up.named_parameters():
        assert p.grad is not None, name_
        assert our_params[name_].grad is not None, name_
        assert_close(our_params[name_].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name_)


# ------------------------------------------------------------------------- KV cache and padding
@pytest.mark.parametrize("name", ["dense", "dense-explicit-attention", "moe-seq-aux"])
def test_incremental_decoding_matches_upstream_tuple_cache_and_full_forward(name):
    cfg = tiny_config(**VARIANTS[name])
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    ids = _ids(cfg, batch=2, seq=14)
    prefill = 6
    with torch.no_grad():
        full = up(ids).logits
        a = up(ids[:, :prefill], use_cache=True)
        b = ours(ids[:, :prefill], use_cache=True)
        assert_close(b.logits, a.logits, **TOL)
        assert_close(b.logits, full[:, :prefill], **TOL)
        for t in range(prefill, ids.shape[1]):
            a = up(ids[:, t:t + 1], past_key_values=a.past_key_values, use_cache=True)
            b = ours(ids[:, t:t + 1], past_key_values=b.past_key_values, use_cache=True)
            assert_close(b.logits[:, -1], a.logits[:, -1], **TOL)
            assert_close(b.logits[:, -1], full[:, t], **TOL)
    assert a.past_key_values[0][0].shape == (2, ids.shape[1], cfg.num_key_value_heads, cfg.head_dim)


@pytest.mark.parametrize("name", ["dense", "moe-batch-aux"])
def test_left_padded_batch_real_positions_match(name):
    """Upstream takes its manual path with the additive -1e9 mask; real tokens must agree."""
    cfg = tiny_config(**VARIANTS[name])
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    ids = _ids(cfg, batch=3, seq=12)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    with torch.no_grad():
        a = up(ids, attention_mask=mask).logits
        b = ours(ids, attention_mask=mask).logits
    assert torch.isfinite(b).all()
    real = mask.bool()
    assert_close(b[real], a[real], **TOL)
    # and the unpadded row equals a forward of that row alone
    with torch.no_grad():
        assert_close(b[0], ours(ids[:1]).logits[0], **TOL)


@pytest.mark.parametrize("name", ["dense", "moe-seq-aux"])
def test_greedy_generate_same_tokens(name):
    cfg = tiny_config(**VARIANTS[name])
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    prompt = _ids(cfg, batch=1, seq=5)
    a = up.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    b = ours.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=[])
    assert b.shape == (1, 25)
    assert torch.equal(a, b)
    # a left-padded batch: the padded row decodes the same tokens as that prompt alone
    batch = torch.cat([_ids(cfg, batch=1, seq=8, seed=7), torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    a = up.generate(batch, max_new_tokens=12, do_sample=False, eos_token_id=None, attention_mask=mask)
    b = ours.generate(batch, max_new_tokens=12, do_sample=False, eos_token_id=[], attention_mask=mask)
    assert torch.equal(a, b)
    assert torch.equal(b[1, 3:], ours.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=[])[0])


# ------------------------------------------------------------------------------------ RoPE, YaRN
@pytest.mark.parametrize("dim,end,base,scaling", [
    (64, 32768, 1e6, None),
    (64, 32768, 1e6, "default-yarn"),  # DESIGN's YaRN: factor 16, beta_fast 32, beta_slow 1
    (128, 8192, 1e4, "default-yarn"),
    (64, 16384, 1e6, {"type": "yarn", "factor": 4, "original_max_position_embeddings": 2048, "beta_fast": 4,
                      "beta_slow": 1, "attention_factor": 1.0}),
    (16, 4096, 1e6, {"type": "yarn", "factor": 8, "original_max_position_embeddings": 512, "beta_fast": 32,
                     "beta_slow": 1, "attention_factor": 1.2}),
    (64, 2048, 1e6, "default-yarn"),  # not longer than the original context: YaRN stays off
])
def test_rope_tables_equal_upstream(dim, end, base, scaling):
    rs = dict(upstream.UPSTREAM_YARN) if scaling == "default-yarn" else scaling
    cos_u, sin_u = upstream.precompute_freqs_cis(dim, end, base, rs)
    cos, sin = precompute_freqs_cis(dim, end, base, rs)
    assert cos.shape == sin.shape == (end, dim)
    assert_close(cos, cos_u, atol=1e-6, rtol=0)
    assert_close(sin, sin_u, atol=1e-6, rtol=0)
    plain_cos, _ = upstream.precompute_freqs_cis(dim, end, base, None)
    yarn_on = rs is not None and end > rs["original_max_position_embeddings"]
    assert (not torch.allclose(cos, plain_cos)) == yarn_on  # the scaled case really differs


def test_model_rope_buffers_equal_upstream_with_yarn():
    cfg = MiniMindConfig(inference_rope_scaling=True)
    assert cfg.rope_scaling["factor"] == 16 and cfg.rope_scaling["beta_fast"] == 32
    up_cos, up_sin = upstream.precompute_freqs_cis(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                                   UpstreamConfig.from_config(cfg).rope_scaling)
    assert UpstreamConfig(inference_rope_scaling=True).rope_scaling == UpstreamConfig.from_config(cfg).rope_scaling
    cos, sin = precompute_freqs_cis(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
    assert_close(cos, up_cos, atol=1e-6, rtol=0)
    assert_close(sin, up_sin, atol=1e-6, rtol=0)


def test_yarn_model_beyond_original_context():
    """inference_rope_scaling=True, a sequence longer than original_max_position_embeddings=2048:
    full forward and cached decoding across the boundary agree with upstream."""
    cfg = tiny_config(inference_rope_scaling=True, max_position_embeddings=4096, num_hidden_layers=1)
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    assert_close(ours.model.freqs_cos, up.model.freqs_cos, atol=1e-6, rtol=0)
    ids = _ids(cfg, batch=1, seq=2056)
    with torch.no_grad():
        full_up = up(ids).logits
        full = ours(ids).logits
        assert_close(full, full_up, **TOL)
        a = up(ids[:, :2044], use_cache=True)
        b = ours(ids[:, :2044], use_cache=True)
        for t in range(2044, 2056):  # crosses position 2048
            a = up(ids[:, t:t + 1], past_key_values=a.past_key_values, use_cache=True)
            b = ours(ids[:, t:t + 1], past_key_values=b.past_key_values, use_cache=True)
            assert_close(b.logits[:, -1], a.logits[:, -1], **TOL)
            assert_close(b.logits[:, -1], full_up[:, t], **TOL)


# ------------------------------------------------------------------------------ the MoE layer alone
@pytest.mark.parametrize("kw", [dict(), dict(num_experts_per_tok=1), dict(n_routed_experts=6, num_experts_per_tok=3),
                                dict(norm_topk_prob=False, n_shared_experts=0)])
def test_moe_layer_training_path_and_moe_infer(kw):
    """minimind_ref's MoE layer equals upstream's repeat_interleave training path (outputs and
    gradients), and upstream's moe_infer in eval mode; upstream's two paths agree with each other."""
    cfg = tiny_config(use_moe=True, aux_loss_alpha=0.1, **kw)
    torch.manual_seed(0)
    up = upstream.MOEFeedForward(UpstreamConfig.from_config(cfg))
    ours = MoEFeedForward(cfg)
    ours.load_state_dict(up.state_dict(), strict=True)
    x = torch.randn(3, 10, cfg.hidden_size)

    up.train(), ours.train()
    xu, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yu, yo = up(xu), ours(xo)
    assert_close(yo, yu, **TOL)
    assert_close(ours.aux_loss, up.aux_loss, **TOL)
    w = torch.randn_like(yu)
    ((yu * w).sum() + up.aux_loss).backward()
    ((yo * w).sum() + ours.aux_loss).backward()
    assert_close(xo.grad, xu.grad, atol=1e-5, rtol=1e-4)
    our_params = dict(ours.named_parameters())
    for name, p in up.named_parameters():
        assert_close(our_params[name].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    train_out = yu.detach()

    up.eval(), ours.eval()
    with torch.no_grad():
        yu_inf, yo_inf = up(x), ours(x)
    assert_close(yo_inf, yu_inf, **TOL)
    assert_close(yu_inf, train_out, **TOL)  # upstream: moe_infer == training path on the same weights


def test_moe_expert_without_tokens_gets_zero_gradient_in_both():
    """Route every token away from expert 0: both training paths still give it a (zero) gradient."""
    cfg = tiny_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    up = upstream.MOEFeedForward(UpstreamConfig.from_config(cfg))
    with torch.no_grad():
        up.gate.weight[0] = -10 * up.gate.weight[1:].abs().sum(0)  # expert 0 loses every top-k race
    ours = MoEFeedForward(cfg)
    ours.load_state_dict(up.state_dict(), strict=True)
    x = torch.randn(2, 8, cfg.hidden_size).abs()
    for m in (up, ours):
        m.train()
        m(x).sum().backward()
        g = m.experts[0].gate_proj.weight.grad
        assert g is not None and torch.count_nonzero(g) == 0
        assert torch.count_nonzero(m.experts[1].gate_proj.weight.grad) > 0


# ------------------------------------------------------------------------ dropout, logits_to_keep
@pytest.mark.parametrize("name", ["dense", "dense-explicit-attention", "moe-seq-aux"])
def test_dropout_in_the_same_places_as_upstream(name):
    """With dropout > 0 in training, the same seed gives the same logits: both models draw their
    dropout masks in the same places (embedding, attention weights, attention output, FFN output)
    and order. A refactor that only reorders random draws would break this test without being
    wrong; one that drops or moves a dropout would be wrong."""
    cfg = tiny_config(**VARIANTS[name], dropout=0.2)
    up, ours = _pair(cfg)
    up.train(), ours.train()
    ids = _ids(cfg, batch=2, seq=16)
    torch.manual_seed(5)
    a = up(ids).logits
    torch.manual_seed(5)
    b = ours(ids).logits
    torch.manual_seed(6)
    c = ours(ids).logits
    assert_close(b, a, **TOL)
    assert (b - c).abs().max() > 1e-3  # dropout really acts


@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep(keep):
    cfg = tiny_config(use_moe=True)
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    ids = _ids(cfg)
    a, b = up(ids, logits_to_keep=keep).logits, ours(ids, logits_to_keep=keep).logits
    assert b.shape == (3, keep, cfg.vocab_size)
    assert_close(b, a, **TOL)


@pytest.mark.parametrize("name", ["dense", "dense-explicit-attention", "moe-seq-aux"])
def test_chunked_prefill_with_padding_equals_upstream_full_forward(name):
    """minimind_ref can extend a cache by several tokens at once (upstream cannot: its causal mask is
    (T, T) and SDPA's is_causal is top-left aligned); chunks of a left-padded batch must reproduce
    upstream's single full forward on the real tokens."""
    cfg = tiny_config(**VARIANTS[name])
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    ids = _ids(cfg, batch=2, seq=20)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        full = up(ids, attention_mask=mask).logits
        out = None
        for start, end in [(0, 7), (7, 12), (12, 13), (13, 20)]:
            out = ours(ids[:, start:end], attention_mask=mask[:, :end], use_cache=True,
                       past_key_values=None if out is None else out.past_key_values)
            real = mask[:, start:end].bool()
            assert_close(out.logits[real], full[:, start:end][real], **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["dense", "dense-explicit-attention"])
def test_dense_low_precision_matches_upstream(name, dtype):
    """Cast to bf16/fp16, the dense models compute the same thing in the same dtype (measured:
    bitwise equal on CPU), far closer to each other than either is to float32. (MoE is left out:
    minimind_ref routes in float32, upstream in the activations' dtype, by design.)"""
    cfg = tiny_config(**VARIANTS[name])
    up, ours = _pair(cfg)
    up.eval(), ours.eval()
    ids = _ids(cfg, batch=2, seq=32)
    with torch.no_grad():
        ref = up(ids).logits
        a, b = up.to(dtype)(ids).logits, ours.to(dtype)(ids).logits
    assert a.dtype == b.dtype == dtype
    precision_loss = (a.float() - ref).abs().max().item()
    assert precision_loss > 1e-3  # the cast really happened
    assert (a.float() - b.float()).abs().max().item() <= precision_loss / 10
