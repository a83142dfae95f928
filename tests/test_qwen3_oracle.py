"""MiniMind-3 against its external oracle: in float32 it is exactly Hugging Face's Qwen3 (dense) and
Qwen3-MoE (mixture of experts), for inference.

Each test builds a tiny Qwen3 / Qwen3-MoE in ``transformers`` with random weights (rounded to float16, so
that a float16 ``.pth`` holds them exactly), writes it in one of the formats a reader may hold, loads that
with ``MiniMindForCausalLM.from_pretrained`` (no flag saying which generation or format it is) and compares:
logits (max abs diff < 1e-5), greedy tokens, cached decoding and a left-padded batch. The formats:

* ``qwen-folder``: ``save_pretrained`` of the Qwen3 model (``model_type`` "qwen3" / "qwen3_moe");
  ``qwen-sharded`` the same in several safetensors shards with an index;
* ``qwen-fused``: a Qwen3-MoE state dict as transformers >= 5 holds it in memory (experts stacked into
  ``gate_up_proj`` / ``down_proj``), beside its config.json;
* ``upstream-folder``: what upstream MiniMind-3's ``save_pretrained`` writes (``model_type`` "minimind",
  ``num_experts``, ``router_aux_loss_coef``, ``rope_parameters``; ``pytorch_model.bin``);
* ``pth``: a released ``.pth`` (float16, both tied keys, no config) with ``MiniMindConfig.minimind3(...)``.

The training objective is not HF's: HF pools router statistics over all layers into one loss, MiniMind-3
sums per-layer losses. The aux loss is therefore tested against MiniMind-3's formula.
"""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Qwen3ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no Qwen3ForCausalLM", allow_module_level=True)

from safetensors.torch import load_file  # noqa: E402

from minimind_ref import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from minimind_ref.checkpoint import QWEN3_DEFAULTS, QWEN3_MOE_DEFAULTS  # noqa: E402
from minimind_ref.moe import MoEFeedForward  # noqa: E402

HAS_MOE = hasattr(transformers, "Qwen3MoeForCausalLM")
needs_moe = pytest.mark.skipif(not HAS_MOE, reason="this transformers has no Qwen3MoeForCausalLM")
TOL = dict(atol=1e-5, rtol=0)
CACHE_ARG = (
    "cache" if "cache" in inspect.signature(transformers.Qwen3ForCausalLM.forward).parameters else "past_key_values"
)
SIZES = dict(
    vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256,
)  # fmt: skip


def minimind3(use_moe: bool, **kw) -> MiniMindConfig:
    """The MiniMind-3 preset at toy size: FFN 64 * ceil(64 pi / 64) = 256, head_dim 16."""
    return MiniMindConfig.minimind3(use_moe=use_moe, **{**SIZES, **kw})


def qwen_model(cfg: MiniMindConfig, seed: int = 0):
    """A Qwen3 / Qwen3-MoE with the sizes of ``cfg`` and random weights that float16 holds exactly."""
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, max_position_embeddings=256,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
    )  # fmt: skip
    if cfg.use_moe:
        hc = transformers.Qwen3MoeConfig(
            **common, num_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.num_experts_per_tok,
            moe_intermediate_size=cfg.moe_intermediate_size or cfg.intermediate_size,
            norm_topk_prob=cfg.norm_topk_prob, router_aux_loss_coef=cfg.aux_loss_alpha,
        )  # fmt: skip
        model = transformers.Qwen3MoeForCausalLM(hc)
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm gains, QK-norm included: away from 1 so that they matter
                new = 1 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("mlp.gate.weight"):  # the router (zeros in HF's init): clear top-1 choices
                new = 0.5 * torch.randn(p.shape, generator=g)
            else:
                new = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(new.half().float())
    model.generation_config.eos_token_id = None  # compare whole generations
    model.generation_config.pad_token_id = 0
    return model.eval()


def upstream_keys(hf, tmp_path) -> dict[str, torch.Tensor]:
    """The per-expert state dict upstream MiniMind-3 uses, as HF's own save_pretrained writes it (independent
    of minimind_ref's conversion code)."""
    hf.save_pretrained(tmp_path / "hf-export")
    return load_file(str(tmp_path / "hf-export" / "model.safetensors"))


# ------------------------------------------------------------------------------------------------ writers
def write_qwen_folder(hf, cfg, tmp_path):
    hf.save_pretrained(tmp_path / "qwen")
    return tmp_path / "qwen"


def write_qwen_sharded(hf, cfg, tmp_path):
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    return tmp_path / "sharded"


def write_qwen_fused(hf, cfg, tmp_path):
    state = hf.state_dict()
    if not any(k.endswith("experts.gate_up_proj") for k in state):
        pytest.skip("this transformers keeps Qwen3-MoE experts unfused in memory")
    folder = tmp_path / "fused"
    folder.mkdir()
    (folder / "config.json").write_text(hf.config.to_json_string())
    torch.save({k: v for k, v in state.items() if k != "lm_head.weight"}, folder / "pytorch_model.bin")
    return folder


def write_upstream_folder(hf, cfg, tmp_path):
    """upstream MiniMind-3's save_pretrained under transformers 5 (the fields of its MiniMindConfig)."""
    folder = tmp_path / "minimind-3"
    folder.mkdir()
    conf = dict(
        architectures=["MiniMindForCausalLM"], auto_map={"AutoConfig": "model_minimind.MiniMindConfig"},
        model_type="minimind", dtype="float16", transformers_version="5.2.0", hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers, use_moe=cfg.use_moe, dropout=0.0, vocab_size=cfg.vocab_size,
        bos_token_id=1, eos_token_id=2, flash_attn=True, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, hidden_act="silu",
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-6, tie_word_embeddings=True, inference_rope_scaling=False, rope_scaling=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, num_experts=cfg.n_routed_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.intermediate_size,
        norm_topk_prob=True, router_aux_loss_coef=5e-4, max_seq_len=8192,
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps(conf, indent=2))
    state = upstream_keys(hf, tmp_path)
    state.pop("lm_head.weight", None)
    torch.save(state, folder / "pytorch_model.bin")  # safe_serialization=False, as upstream's script
    return folder


def write_pth(hf, cfg, tmp_path):
    state = upstream_keys(hf, tmp_path)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # upstream's trainer saves both tied keys
    path = tmp_path / f"full_sft_{cfg.hidden_size}{'_moe' if cfg.use_moe else ''}.pth"
    torch.save({k: v.half() for k, v in state.items()}, path)
    return path


WRITERS = {
    "qwen-folder": write_qwen_folder,
    "qwen-sharded": write_qwen_sharded,
    "qwen-fused": write_qwen_fused,
    "upstream-folder": write_upstream_folder,
    "pth": write_pth,
}
CASES = [
    (fmt, moe)
    for moe in (False, True)
    for fmt in WRITERS
    if (moe or fmt != "qwen-fused") and (not moe or fmt != "qwen-sharded")
]


def _ids(cfg, batch, seq, seed=1):
    return torch.randint(3, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _load(fmt, moe, tmp_path, **kw):
    cfg = minimind3(moe, **kw)
    hf = qwen_model(cfg)
    path = WRITERS[fmt](hf, cfg, tmp_path)
    ours = MiniMindForCausalLM.from_pretrained(path, config=cfg if fmt == "pth" else None)
    return ours, hf


# ------------------------------------------------------------------------------------------------ tests
def test_transformers_has_the_oracles():
    assert hasattr(transformers, "Qwen3ForCausalLM")
    assert HAS_MOE, f"transformers {transformers.__version__} lacks Qwen3MoeForCausalLM: the MoE oracle is skipped"


@pytest.mark.parametrize("fmt,moe", CASES, ids=[f"{f}-{'moe' if m else 'dense'}" for f, m in CASES])
def test_every_format_loads_without_a_flag_and_matches_qwen3(fmt, moe, tmp_path):
    if moe and not HAS_MOE:
        pytest.skip("no Qwen3MoeForCausalLM")
    ours, hf = _load(fmt, moe, tmp_path)
    c = ours.config
    assert not ours.training  # from_pretrained returns eval mode
    assert c.qk_norm and c.use_moe == moe and c.head_dim == 16 and c.intermediate_size == 256
    if moe:
        assert (c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_variant) == (4, 1, 0, "minimind3")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    ids = _ids(c, batch=2, seq=24)
    with torch.no_grad():
        a, b = ours(ids).logits, hf(input_ids=ids).logits
    assert_close(a, b, **TOL)
    print(f"{fmt}-{'moe' if moe else 'dense'}: max abs logit diff {(a - b).abs().max().item():.2e}")


@pytest.mark.parametrize("moe", [False, pytest.param(True, marks=needs_moe)], ids=["dense", "moe"])
def test_greedy_tokens_and_cached_decoding_match_qwen3(moe, tmp_path):
    ours, hf = _load("qwen-folder", moe, tmp_path)
    prompt = _ids(ours.config, batch=1, seq=6)
    a = ours.generate(prompt, max_new_tokens=20, eos_token_id=[])  # greedy by default
    b = hf.generate(prompt, max_new_tokens=20, do_sample=False)
    assert a.shape == (1, 26) and torch.equal(a, b)
    ids = _ids(ours.config, batch=2, seq=12)
    with torch.no_grad():
        x = ours(ids[:, :5], use_cache=True)
        y = hf(input_ids=ids[:, :5], use_cache=True)
        assert_close(x.logits, y.logits, **TOL)
        for t in range(5, ids.shape[1]):
            x = ours(ids[:, t : t + 1], past_key_values=x.past_key_values, use_cache=True)
            y = hf(input_ids=ids[:, t : t + 1], use_cache=True, **{CACHE_ARG: getattr(y, CACHE_ARG)})
            assert_close(x.logits[:, -1], y.logits[:, -1], **TOL)


@pytest.mark.parametrize("moe", [False, pytest.param(True, marks=needs_moe)], ids=["dense", "moe"])
def test_left_padded_batch_matches_qwen3(moe, tmp_path):
    """minimind_ref keeps absolute positions (pads occupy some), HF's generate counts from the first real
    token: RoPE scores depend on differences only (QK-norm acts before RoPE), so real tokens agree."""
    ours, hf = _load("upstream-folder", moe, tmp_path)
    ids = _ids(ours.config, batch=3, seq=10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert_close(a[mask.bool()], b[mask.bool()], **TOL)
    out_ours = ours.generate(ids, max_new_tokens=10, eos_token_id=[], attention_mask=mask)
    out_hf = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(out_ours, out_hf)


def test_free_head_dim_matches_qwen3(tmp_path):
    """head_dim is its own field: 4 heads of 32 over a 64-wide model (q_proj 64 -> 128), as Qwen3 allows."""
    ours, hf = _load("qwen-folder", False, tmp_path, head_dim=32)
    assert ours.config.head_dim == 32 and ours.model.layers[0].self_attn.q_proj.weight.shape == (128, 64)
    ids = _ids(ours.config, batch=2, seq=16)
    with torch.no_grad():
        assert_close(ours(ids).logits, hf(input_ids=ids).logits, **TOL)


@needs_moe
def test_loaded_model_round_trips_through_save_pretrained(tmp_path):
    ours, _ = _load("qwen-folder", True, tmp_path)
    ours.save_pretrained(tmp_path / "ours")
    again = MiniMindForCausalLM.from_pretrained(tmp_path / "ours")
    assert again.config == ours.config and again.config.extra["converted_from"] == "qwen3_moe"
    ids = _ids(ours.config, batch=2, seq=8)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ours(ids).logits)


def test_pth_with_the_wrong_generation_says_which_preset(tmp_path):
    cfg = minimind3(False)
    path = write_pth(qwen_model(cfg), cfg, tmp_path)
    with pytest.raises(ValueError, match=r"MiniMindConfig\.minimind3\(use_moe=\.\.\.\)"):
        MiniMindForCausalLM.from_pretrained(path)  # no config at all
    with pytest.raises(ValueError, match=r"(?s)q_norm.*the checkpoint is MiniMind-3"):
        MiniMindForCausalLM.from_pretrained(path, config=MiniMindConfig(**SIZES))  # a MiniMind2 config


# ------------------------------------------------------------------------------------------- the preset
def test_minimind3_preset_is_upstreams_config():
    c = MiniMindConfig.minimind3()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        768, 8, 8, 4, 96,
    )  # fmt: skip
    assert (c.intermediate_size, c.rms_norm_eps, c.vocab_size, c.rope_theta, c.qk_norm) == (2432, 1e-6, 6400, 1e6, True)
    m = MiniMindConfig.minimind3(use_moe=True)
    assert (m.n_routed_experts, m.num_experts_per_tok, m.n_shared_experts, m.aux_loss_alpha) == (4, 1, 0, 5e-4)
    assert m.moe_variant == "minimind3" and m.norm_topk_prob and not m.seq_aux
    assert MiniMindConfig.minimind3(hidden_size=512, num_attention_heads=8).intermediate_size == 1664  # ceil(25.1)*64
    with torch.device("meta"):
        dense, moe = MiniMindForCausalLM(c), MiniMindForCausalLM(m)
    sd = moe.state_dict()
    assert sd["model.layers.0.self_attn.q_norm.weight"].shape == (96,)
    assert sd["model.layers.0.mlp.gate.weight"].shape == (4, 768)
    assert sd["model.layers.7.mlp.experts.3.up_proj.weight"].shape == (2432, 768)
    assert not any("shared_experts" in k for k in sd)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_moe = sum(p.numel() for p in moe.parameters())
    assert (n_dense, n_moe) == (63_912_192, 198_416_640)  # upstream's README: "64M" and "198M-A64M"


def test_minimind2_defaults_unchanged_by_the_new_fields():
    c = MiniMindConfig()
    assert (c.head_dim, c.qk_norm, c.moe_intermediate_size, c.moe_variant) == (64, False, None, "minimind2")
    with torch.device("meta"):
        keys = set(MiniMindForCausalLM(c).state_dict())
    assert not any("norm" in k and "self_attn" in k for k in keys)
    old_json = {k: v for k, v in c.to_dict().items() if k not in ("head_dim", "qk_norm", "moe_intermediate_size",
                                                                    "moe_variant")}  # fmt: skip
    assert MiniMindConfig.from_dict(old_json) == c  # a config.json written before these fields existed


def test_qwen3_defaults_table_is_transformers():
    """What a Qwen3 config.json leaves out takes transformers' defaults, copied in minimind_ref.checkpoint."""
    for table, cls in [(QWEN3_DEFAULTS, "Qwen3Config"), (QWEN3_MOE_DEFAULTS, "Qwen3MoeConfig")]:
        if not hasattr(transformers, cls):
            continue
        hc = getattr(transformers, cls)()
        for key, value in table.items():
            if key == "head_dim" and value is None:
                assert getattr(hc, "head_dim", None) in (None, hc.hidden_size // hc.num_attention_heads)
            else:
                assert getattr(hc, key) == value, (cls, key)


def test_qwen3_config_json_without_optional_fields(tmp_path):
    """A hand-trimmed Qwen3-MoE config.json: HF's defaults fill the gaps (norm_topk_prob False, untied)."""
    d = {"model_type": "qwen3_moe", **SIZES, "num_local_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 32, "head_dim": 16}  # fmt: skip
    c = MiniMindConfig.from_dict(d)
    assert (c.norm_topk_prob, c.tie_word_embeddings, c.rope_theta, c.rms_norm_eps) == (False, False, 10000.0, 1e-6)
    assert (c.n_routed_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (4, 2, 32)
    with pytest.raises(ValueError, match=r"MiniMindConfig\.mlp_only_layers"):
        MiniMindConfig.from_dict({**d, "mlp_only_layers": [0]})
    with pytest.raises(ValueError, match=r"MiniMindConfig\.attention_bias"):
        MiniMindConfig.from_dict({**d, "attention_bias": True})
    with pytest.raises(ValueError, match=r"MiniMindConfig\.rope_scaling"):
        MiniMindConfig.from_dict({**d, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}})


# ------------------------------------------------------------------------------------------- aux loss
def minimind3_aux(x: torch.Tensor, gate_weight: torch.Tensor, k: int, coef: float) -> torch.Tensor:
    """MiniMind-3's per-layer loss, coef * E * sum_e (count_e / T) * mean P_e, counts per token over the batch."""
    scores = F.linear(x.reshape(-1, x.shape[-1]), gate_weight).softmax(-1)  # (T, E)
    n_tokens, n_experts = scores.shape
    counts = torch.bincount(scores.topk(k, dim=-1).indices.reshape(-1), minlength=n_experts).float()
    return coef * n_experts * ((counts / n_tokens) * scores.mean(0)).sum()


@pytest.mark.parametrize("k", [1, 2])
def test_moe_layer_aux_loss_is_minimind3s_formula(k):
    cfg = minimind3(True, num_experts_per_tok=k, aux_loss_alpha=0.1)
    layer = MoEFeedForward(cfg).train()
    x = torch.randn(3, 11, cfg.hidden_size)
    layer(x)
    expected = minimind3_aux(x, layer.gate.weight, k, 0.1)
    assert_close(layer.aux_loss, expected, atol=1e-7, rtol=1e-6)
    v2_cfg = MiniMindConfig(**{**cfg.to_dict(), "moe_variant": "minimind2"})  # batch-level too (seq_aux False)
    v2 = MoEFeedForward(v2_cfg).train()
    v2.load_state_dict(layer.state_dict())
    v2(x)
    assert_close(v2.aux_loss * k, layer.aux_loss)  # MiniMind2 counts shares of the T*K selections


def test_top1_weight_is_renormalised_to_one():
    cfg = minimind3(True)
    idx, weight, _ = MoEFeedForward(cfg).gate(torch.randn(2, 5, cfg.hidden_size))
    assert torch.equal(weight, torch.ones_like(weight))
    v2 = MiniMindConfig(**{**cfg.to_dict(), "moe_variant": "minimind2"})
    _, weight2, _ = MoEFeedForward(v2).gate(torch.randn(2, 5, cfg.hidden_size))
    assert (weight2 < 1).all()  # MiniMind2 renormalises only for top-k > 1


@needs_moe
def test_model_aux_loss_sums_layers_and_differs_from_hfs_pooled_loss():
    """One layer: ours == coef * HF's load_balancing_loss_func. Two layers: ours is the sum of per-layer
    losses, HF pools the counts and probabilities of all layers first; the numbers differ."""
    from transformers.models.qwen3_moe import modeling_qwen3_moe as hf_moe

    for layers in (1, 2):
        cfg = minimind3(True, num_hidden_layers=layers, aux_loss_alpha=0.01)
        hf = qwen_model(cfg)
        ours = MiniMindForCausalLM(cfg)
        ours.load_checkpoint(_state_of(hf))
        ours.train()
        ids = _ids(cfg, batch=2, seq=16)
        inputs: list[torch.Tensor] = []  # what each MoE layer receives
        hook = lambda _, args, record=inputs.append: record(args[0])  # noqa: E731
        hooks = [layer.mlp.register_forward_pre_hook(hook) for layer in ours.model.layers]
        out = ours(ids)
        for h in hooks:
            h.remove()
        pairs = list(zip(inputs, ours.model.layers, strict=True))
        per_layer = [minimind3_aux(x, layer.mlp.gate.weight, 1, 0.01) for x, layer in pairs]
        assert_close(out.aux_loss, sum(per_layer), atol=1e-7, rtol=1e-6)
        logits = tuple(F.linear(x.reshape(-1, cfg.hidden_size), layer.mlp.gate.weight) for x, layer in pairs)
        pooled = 0.01 * hf_moe.load_balancing_loss_func(logits, cfg.n_routed_experts, 1)
        if layers == 1:
            assert_close(out.aux_loss, pooled, atol=1e-7, rtol=1e-6)
        else:
            assert (out.aux_loss - pooled).abs() > 1e-4


def _state_of(hf) -> dict[str, torch.Tensor]:
    """HF's in-memory state dict in minimind_ref's layout (what from_pretrained's conversion does)."""
    from minimind_ref.checkpoint import unfuse_experts

    return unfuse_experts(hf.state_dict())
