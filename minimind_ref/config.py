"""The MiniMind configuration: every hyper-parameter of the model in one validated dataclass.

Chapter 6 walks through these fields; each component chapter explains the ones it uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The YaRN settings MiniMind switches on with ``inference_rope_scaling=True`` (chapter 2).
DEFAULT_YARN = {
    "type": "yarn",
    "factor": 16.0,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}

ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")
SCORING_FUNCS = ("softmax",)


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"MiniMindConfig.{name}: {rule} (got {value!r})")


@dataclass
class MiniMindConfig:
    # --- size of the model -------------------------------------------------
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 2  # GQA: each KV head serves num_attention_heads // this query heads; None = MHA
    vocab_size: int = 6400
    intermediate_size: int | None = None  # None -> 64 * ceil(hidden_size * 8/3 / 64), the SwiGLU width
    # --- normalisation and position ------------------------------------------
    max_position_embeddings: int = 32768  # length of the precomputed RoPE table
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    inference_rope_scaling: bool = False  # True -> YaRN with DEFAULT_YARN unless rope_scaling is given
    rope_scaling: dict | None = None
    # --- other switches ------------------------------------------------------
    dropout: float = 0.0
    flash_attn: bool = True  # use F.scaled_dot_product_attention where it is valid
    hidden_act: str = "silu"
    bos_token_id: int = 1
    eos_token_id: int = 2
    tie_word_embeddings: bool = True  # lm_head shares the embedding matrix
    # --- mixture of experts (chapter 5) ---------------------------------------
    use_moe: bool = False
    num_experts_per_tok: int = 2
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.01
    seq_aux: bool = True  # balance per sequence (True) or over the whole batch (False)
    norm_topk_prob: bool = True  # renormalise the top-k router weights to sum to 1
    # anything else found in a config.json (e.g. upstream's "model_type"), kept for the round trip
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:  # upstream's convention for plain multi-head attention
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            # 8/3 keeps a 3-matrix SwiGLU at the parameter count of a 4x ReLU FFN; 64 aligns it for matmul tiles
            self.intermediate_size = 64 * math.ceil(self.hidden_size * 8 / 3 / 64)
        if self.rope_scaling is None and self.inference_rope_scaling:
            self.rope_scaling = dict(DEFAULT_YARN)
        elif self.rope_scaling is not None:
            self.rope_scaling = {**DEFAULT_YARN, **self.rope_scaling}
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the rule for any impossible setting."""
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
            "intermediate_size",
            "max_position_embeddings",
        ):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "must be a positive integer", v)
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            f"must be divisible by num_attention_heads={self.num_attention_heads}",
            self.hidden_size,
        )
        _require(
            self.head_dim % 2 == 0,
            "num_attention_heads",
            "must give an even head_dim = hidden_size // num_attention_heads (RoPE rotates pairs)",
            f"{self.num_attention_heads} -> head_dim {self.head_dim}",
        )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            f"must divide num_attention_heads={self.num_attention_heads}",
            self.num_key_value_heads,
        )
        _require(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0", self.rms_norm_eps)
        _require(self.rope_theta > 1, "rope_theta", "must be > 1", self.rope_theta)
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)", self.dropout)
        _require(self.hidden_act in ACTIVATIONS, "hidden_act", f"must be one of {ACTIVATIONS}", self.hidden_act)
        for name in ("bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            _require(v is None or 0 <= v < self.vocab_size, name, f"must be in [0, vocab_size={self.vocab_size})", v)
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            _require(rs.get("type", "yarn") == "yarn", "rope_scaling", "only type 'yarn' is supported", rs.get("type"))
            _require(rs["factor"] >= 1, "rope_scaling", "factor must be >= 1", rs["factor"])
            _require(
                int(rs["original_max_position_embeddings"]) > 0,
                "rope_scaling",
                "original_max_position_embeddings must be > 0",
                rs["original_max_position_embeddings"],
            )
            _require(
                rs["beta_fast"] > rs["beta_slow"] > 0,
                "rope_scaling",
                "needs beta_fast > beta_slow > 0",
                (rs["beta_fast"], rs["beta_slow"]),
            )
            _require(rs["attention_factor"] > 0, "rope_scaling", "attention_factor must be > 0", rs["attention_factor"])
        if self.use_moe:
            _require(
                isinstance(self.n_routed_experts, int) and self.n_routed_experts > 0,
                "n_routed_experts",
                "must be a positive integer",
                self.n_routed_experts,
            )
            _require(
                isinstance(self.num_experts_per_tok, int) and 0 < self.num_experts_per_tok <= self.n_routed_experts,
                "num_experts_per_tok",
                f"must be in [1, n_routed_experts={self.n_routed_experts}]",
                self.num_experts_per_tok,
            )
            _require(
                isinstance(self.n_shared_experts, int) and self.n_shared_experts >= 0,
                "n_shared_experts",
                "must be a non-negative integer",
                self.n_shared_experts,
            )
            _require(
                self.scoring_func in SCORING_FUNCS, "scoring_func", f"must be one of {SCORING_FUNCS}", self.scoring_func
            )
            _require(self.aux_loss_alpha >= 0, "aux_loss_alpha", "must be >= 0", self.aux_loss_alpha)

    # --- round trip ------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling)
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict) -> MiniMindConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> MiniMindConfig:
        p = Path(text_or_path)
        text = p.read_text() if not str(text_or_path).lstrip().startswith("{") and p.exists() else str(text_or_path)
        return cls.from_dict(json.loads(text))
