"""The models being compared, all with the same weights.

``llama_twin`` builds the Hugging Face ``LlamaForCausalLM`` that is the dense MiniMind (same config,
same state-dict keys: it loads MiniMind's state dict with ``strict=True``, nothing dropped), and
``upstream_twin`` the upstream-style MiniMind of ``minimind_ref.lab.upstream``.
"""

from __future__ import annotations

import warnings

import torch

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.lab.upstream import UpstreamMiniMindForCausalLM


def llama_config(cfg: MiniMindConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=False,
        mlp_bias=False, hidden_act=cfg.hidden_act, max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=0,
    )


def llama_twin(model: MiniMindForCausalLM):
    """``LlamaForCausalLM`` (SDPA attention) holding a copy of ``model``'s weights."""
    from transformers import LlamaForCausalLM

    cfg = model.config
    if cfg.use_moe:
        raise ValueError("a MoE MiniMind has no Llama twin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llama = LlamaForCausalLM._from_config(llama_config(cfg), attn_implementation="sdpa")
    state = model.state_dict()
    own = llama.state_dict()
    if set(state) != set(own):  # the claim "the same weights, nothing dropped" is checked, not assumed
        raise RuntimeError(f"state-dict keys differ: only MiniMind {sorted(set(state) - set(own))}, "
                           f"only Llama {sorted(set(own) - set(state))}")
    llama.load_state_dict(state, strict=True)
    if cfg.tie_word_embeddings and llama.lm_head.weight.data_ptr() != llama.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("Llama's lm_head is not tied to its embedding")
    return llama.to(next(model.parameters()).device)


def upstream_twin(model: MiniMindForCausalLM) -> UpstreamMiniMindForCausalLM:
    """The upstream-style MiniMind with a copy of ``model``'s weights."""
    up = UpstreamMiniMindForCausalLM(model.config.to_dict())
    up.load_state_dict(model.state_dict(), strict=True)
    return up.to(next(model.parameters()).device)


def build(cfg: MiniMindConfig, device: torch.device, seed: int = 0) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    return MiniMindForCausalLM(cfg).to(device)
