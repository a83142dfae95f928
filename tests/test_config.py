"""MiniMindConfig: defaults of the contract, derived sizes, validation, round trip."""

import json

import pytest

from minimind_ref import MiniMindConfig
from minimind_ref.config import DEFAULT_YARN


def test_defaults_match_the_contract():
    c = MiniMindConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        512,
        8,
        8,
        2,
        6400,
    )
    assert c.intermediate_size == 1408 and c.head_dim == 64
    assert (c.max_position_embeddings, c.rms_norm_eps, c.rope_theta) == (32768, 1e-5, 1e6)
    assert c.rope_scaling is None and not c.inference_rope_scaling
    assert (c.dropout, c.flash_attn, c.hidden_act, c.bos_token_id, c.eos_token_id, c.tie_word_embeddings) == (
        0.0,
        True,
        "silu",
        1,
        2,
        True,
    )
    assert (c.use_moe, c.num_experts_per_tok, c.n_routed_experts, c.n_shared_experts, c.scoring_func) == (
        False,
        2,
        4,
        1,
        "softmax",
    )
    assert (c.aux_loss_alpha, c.seq_aux, c.norm_topk_prob) == (0.01, True, True)


@pytest.mark.parametrize("hidden,expected", [(512, 1408), (640, 1728), (768, 2048), (64, 192), (96, 256)])
def test_intermediate_size_is_64_aligned_8_thirds(hidden, expected):
    c = MiniMindConfig(
        hidden_size=hidden, num_attention_heads=hidden // 64 if hidden >= 128 else 2, num_key_value_heads=1
    )
    assert c.intermediate_size == expected
    assert c.intermediate_size % 64 == 0 and c.intermediate_size >= hidden * 8 / 3 > c.intermediate_size - 64


def test_yarn_switch_and_explicit_dict():
    c = MiniMindConfig(inference_rope_scaling=True)
    assert c.rope_scaling == DEFAULT_YARN
    assert (
        c.rope_scaling["factor"],
        c.rope_scaling["original_max_position_embeddings"],
        c.rope_scaling["beta_fast"],
        c.rope_scaling["beta_slow"],
        c.rope_scaling["attention_factor"],
    ) == (16, 2048, 32, 1, 1.0)
    c2 = MiniMindConfig(rope_scaling={"type": "yarn", "factor": 4, "beta_fast": 4})
    assert c2.rope_scaling["factor"] == 4 and c2.rope_scaling["original_max_position_embeddings"] == 2048


BAD_CONFIGS = [
    (dict(hidden_size=0), "hidden_size"),
    (dict(hidden_size=-512), "hidden_size"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(hidden_size=500), "hidden_size"),  # not divisible by 8 heads
    (dict(hidden_size=24, num_attention_heads=8, num_key_value_heads=2), "num_attention_heads"),  # head_dim 3 is odd
    (dict(num_key_value_heads=3), "num_key_value_heads"),  # 8 % 3 != 0
    (dict(num_key_value_heads=0), "num_key_value_heads"),
    (dict(intermediate_size=-1), "intermediate_size"),
    (dict(hidden_act="swish2"), "hidden_act"),
    (dict(dropout=1.0), "dropout"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(rope_theta=1.0), "rope_theta"),
    (dict(max_position_embeddings=0), "max_position_embeddings"),
    (dict(eos_token_id=6400), "eos_token_id"),
    (dict(use_moe=True, num_experts_per_tok=5, n_routed_experts=4), "num_experts_per_tok"),
    (dict(use_moe=True, num_experts_per_tok=0), "num_experts_per_tok"),
    (dict(use_moe=True, n_routed_experts=0), "n_routed_experts"),
    (dict(use_moe=True, n_shared_experts=-1), "n_shared_experts"),
    (dict(use_moe=True, scoring_func="sigmoid"), "scoring_func"),
    (dict(use_moe=True, aux_loss_alpha=-0.1), "aux_loss_alpha"),
    (dict(rope_scaling={"factor": 0.5}), "rope_scaling"),
    (dict(rope_scaling={"beta_fast": 1, "beta_slow": 32}), "rope_scaling"),
    (dict(rope_scaling={"type": "linear"}), "rope_scaling"),
]


@pytest.mark.parametrize("kwargs,field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_impossible_configs_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"MiniMindConfig\.{field}\b"):
        MiniMindConfig(**kwargs)


def test_dict_and_json_round_trip(tmp_path):
    c = MiniMindConfig(
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=1,
        use_moe=True,
        inference_rope_scaling=True,
        seq_aux=False,
    )
    assert MiniMindConfig.from_dict(c.to_dict()) == c
    assert MiniMindConfig.from_json(c.to_json()) == c
    path = tmp_path / "config.json"
    c.to_json(path)
    assert MiniMindConfig.from_json(path) == c
    assert json.loads(path.read_text())["intermediate_size"] == c.intermediate_size


def test_unknown_keys_survive_the_round_trip():
    d = MiniMindConfig().to_dict() | {"model_type": "minimind", "architectures": ["MiniMindForCausalLM"]}
    c = MiniMindConfig.from_dict(d)
    assert c.extra == {"model_type": "minimind", "architectures": ["MiniMindForCausalLM"]}
    assert c.to_dict()["model_type"] == "minimind"


def test_no_kv_heads_means_multi_head_attention():
    assert MiniMindConfig(num_key_value_heads=None).num_key_value_heads == 8


def test_config_dialects_of_upstream_exports():
    """MiniMind2 and MiniMind-3 config.json files as upstream's save_pretrained writes them (transformers 5
    moves rope_theta and the YaRN dict into rope_parameters)."""
    v2 = {"model_type": "minimind", "hidden_size": 512, "n_routed_experts": 4, "aux_loss_alpha": 0.01,
          "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}  # fmt: skip
    c2 = MiniMindConfig.from_dict(v2)
    assert (c2.rope_theta, c2.rope_scaling, c2.qk_norm, c2.moe_variant) == (1e4, None, False, "minimind2")
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6, "original_max_position_embeddings": 2048}
    assert MiniMindConfig.from_dict({**v2, "rope_parameters": yarn}).rope_scaling["factor"] == 4.0
    v3 = {"model_type": "minimind", "hidden_size": 768, "use_moe": True, "num_experts": 4, "num_experts_per_tok": 1,
          "moe_intermediate_size": 2432, "router_aux_loss_coef": 5e-4, "head_dim": 96, "rope_scaling": None,
          "inference_rope_scaling": True, "rope_theta": 1e6}  # fmt: skip
    c3 = MiniMindConfig.from_dict(v3)
    assert c3.qk_norm and (c3.n_routed_experts, c3.aux_loss_alpha, c3.n_shared_experts) == (4, 5e-4, 0)
    assert (c3.intermediate_size, c3.num_key_value_heads, c3.rms_norm_eps) == (2432, 4, 1e-6)  # v3's defaults
    assert c3.rope_scaling == DEFAULT_YARN and c3.moe_variant == "minimind3"
    assert MiniMindConfig.from_dict(c3.to_dict()) == c3  # written back in this library's own names
