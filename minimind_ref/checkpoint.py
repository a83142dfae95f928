"""Checkpoint files and the formats a reader may hold (chapter 6).

What ``MiniMindForCausalLM.from_pretrained`` / ``save_pretrained`` and ``MiniMindConfig.from_dict`` need
besides the model: which files of a folder are the weights, how to read them safely, and how the configs
and key layouts of upstream MiniMind2, upstream MiniMind-3 and Hugging Face's Qwen3 / Qwen3-MoE exports
map onto ``MiniMindConfig``. Nothing here builds a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"MiniMindConfig.{name}: {rule} (got {value!r})")


# ------------------------------------------------------------------------------------------ config.json dialects
# Our own files name every field (``qk_norm`` among them); MiniMind2's upstream files
# use our names; MiniMind-3's upstream files say num_experts / router_aux_loss_coef; Qwen3 exports use
# Hugging Face's names and HF's defaults for what they leave out.

#: Hugging Face's defaults (transformers' Qwen3Config / Qwen3MoeConfig) for the fields read here.
QWEN3_DEFAULTS = dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, head_dim=128, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
    tie_word_embeddings=False, attention_bias=False, use_sliding_window=False, bos_token_id=None, eos_token_id=None,
)  # fmt: skip
QWEN3_MOE_DEFAULTS = dict(
    QWEN3_DEFAULTS, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24, num_key_value_heads=4,
    head_dim=None, decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128,
    norm_topk_prob=False, router_aux_loss_coef=0.001, mlp_only_layers=[],
)  # fmt: skip
_QWEN_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
)


def _rope_theta(d: dict, default: float) -> tuple[float, dict | None]:
    """rope_theta and the scaling dict of a config that may use transformers 5's ``rope_parameters``."""
    params = d.get("rope_parameters") or {}
    theta = d.get("rope_theta", params.get("rope_theta", default))
    scaling = d.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return theta, scaling


def translate_config(d: dict) -> tuple[dict, str | None]:
    """A foreign config dict -> (dict with this class's field names, preset to start from or None)."""
    model_type = d.get("model_type")
    if "qk_norm" in d:  # written by minimind_ref itself
        return d, None
    if model_type in ("qwen3", "qwen3_moe"):
        moe = model_type == "qwen3_moe"
        src = {**(QWEN3_MOE_DEFAULTS if moe else QWEN3_DEFAULTS), **d}
        if src.get("num_local_experts") is not None:
            src["num_experts"] = src["num_local_experts"]
        for key in ("attention_bias", "use_sliding_window"):
            _require(not src[key], key, f"must be false: a {model_type} model with it is not a MiniMind-3", src[key])
        if moe:
            _require(src["decoder_sparse_step"] == 1 and not src["mlp_only_layers"], "mlp_only_layers",
                     "must be empty with decoder_sparse_step 1: every MiniMind-3 MoE layer is sparse",
                     (src["mlp_only_layers"], src["decoder_sparse_step"]))  # fmt: skip
        theta, scaling = _rope_theta(src, 10000.0)
        _require(scaling is None, "rope_scaling", f"{model_type}'s scaling is HF's, not MiniMind's YaRN", scaling)
        out = {k: src[k] for k in _QWEN_FIELDS}
        if isinstance(out["eos_token_id"], list):  # HF allows several; MiniMind stops at one
            out["eos_token_id"] = out["eos_token_id"][0] if out["eos_token_id"] else None
        out.update(rope_theta=theta, qk_norm=True, use_moe=moe)
        if moe:
            out.update(n_routed_experts=src["num_experts"], num_experts_per_tok=src["num_experts_per_tok"],
                       moe_intermediate_size=src["moe_intermediate_size"], norm_topk_prob=src["norm_topk_prob"],
                       aux_loss_alpha=src["router_aux_loss_coef"], n_shared_experts=0, seq_aux=False,
                       moe_variant="minimind3")  # fmt: skip
        consumed = {*QWEN3_MOE_DEFAULTS, "num_local_experts", "rope_theta", "rope_scaling", "rope_parameters",
                    "model_type", "architectures"}  # fmt: skip
        extra = {k: v for k, v in d.items() if k not in consumed}
        return {**extra, **out, "converted_from": model_type}, None
    if "router_aux_loss_coef" in d or "num_experts" in d:  # upstream MiniMind-3's save_pretrained
        out = {k: v for k, v in d.items() if k not in ("num_experts", "router_aux_loss_coef", "rope_parameters")}
        out["rope_theta"], out["rope_scaling"] = _rope_theta(d, 1e6)
        if "num_experts" in d:
            out["n_routed_experts"] = d["num_experts"]
        if "router_aux_loss_coef" in d:
            out["aux_loss_alpha"] = d["router_aux_loss_coef"]
        return out, "minimind3"
    if "rope_parameters" in d:  # MiniMind2 saved by transformers 5
        out = {k: v for k, v in d.items() if k != "rope_parameters"}
        out["rope_theta"], out["rope_scaling"] = _rope_theta(d, 1e6)
        return out, None
    return d, None


# ---------------------------------------------------------------------------------------------- weights files
#: Weight files under the names that save_pretrained (ours, upstream's, Hugging Face's) gives them.
STANDARD_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json", "pytorch_model.pth")  # fmt: skip
_NOT_WEIGHTS = ("training_args.bin", "rng_state")  # what HF's Trainer saves beside a checkpoint


def _shards(index: Path) -> list[str]:
    """The file names a sharded checkpoint's ``*.index.json`` maps its tensors to."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"{index} is not a readable weights index ({type(err).__name__}: {err})") from err


def weight_files(folder: Path) -> list[Path]:
    """Every weights file in ``folder`` (shards listed by an index count as the index)."""
    found, shards = [], set()
    for f in sorted(folder.iterdir()):
        if f.name.endswith(".index.json"):
            shards |= set(_shards(f))
            found.append(f)
        elif f.suffix in (".safetensors", ".pth", ".bin") and not f.name.startswith(_NOT_WEIGHTS):
            found.append(f)
    return [f for f in found if f.name not in shards]


def standard_weights(folder: Path) -> list[Path]:
    """The files save_pretrained replaces: the standard names and the shards their indexes list."""
    out = []
    for name in STANDARD_WEIGHTS:
        f = folder / name
        if f.is_file():
            if name.endswith(".index.json"):
                out += [folder / s for s in _shards(f) if (folder / s).is_file()]
            out.append(f)
    return out


def find_weights(folder: Path) -> list[Path]:
    """The weights files of one checkpoint in ``folder``; an error if there are none or several."""
    found = weight_files(folder)
    if not found:
        raise FileNotFoundError(
            f"no weights in {folder}: expected model.safetensors, pytorch_model.bin or one .pth state dict"
        )
    if len(found) > 1:
        raise ValueError(
            f"{folder} holds several weights files {[f.name for f in found]}: which is current is ambiguous; "
            f"keep one, or pass the file itself (from_pretrained('{folder / found[0].name}') reads config.json too)"
        )
    if found[0].name.endswith(".index.json"):  # shards: the files the index maps the tensors to
        return [folder / name for name in _shards(found[0])]
    return found


def unfuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5 keeps a Qwen3-MoE layer's experts as two stacked tensors, ``experts.gate_up_proj``
    (E, 2I, d) and ``experts.down_proj`` (E, d, I); split them into upstream's per-expert Linear weights."""
    state = dict(state)
    for key in [k for k in state if k.endswith(".mlp.experts.gate_up_proj")]:
        prefix = key.removesuffix("gate_up_proj")
        gate, up = state.pop(key).chunk(2, dim=1)  # (E, I, d) each
        down = state.pop(prefix + "down_proj", None)
        for e in range(gate.shape[0]):
            state[f"{prefix}{e}.gate_proj.weight"], state[f"{prefix}{e}.up_proj.weight"] = gate[e], up[e]
            if down is not None:
                state[f"{prefix}{e}.down_proj.weight"] = down[e]
    return state


def resolve_dtype(dtype: torch.dtype | str | None, torch_dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """``dtype`` or its alias ``torch_dtype`` as a floating torch.dtype, "auto" or None."""
    if torch_dtype is not None:
        if dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} (its alias) disagree")
        dtype = torch_dtype
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name)
        dtype = getattr(torch, name, dtype)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a floating torch.dtype, its name or 'auto', got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    return dtype


def load_state_dict_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file or a plain ``torch.save``d state dict (never unpickling arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    kind = "safetensors" if path.suffix == ".safetensors" else "torch.save"
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, empty, not a checkpoint at all: say which file
        raise ValueError(f"{path} is not a readable {kind} state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} does not hold a state dict of tensors (got {keys}); a training checkpoint?")
    return state
