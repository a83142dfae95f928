"""The MiniMind configuration: every hyper-parameter of the model in one validated dataclass.

Chapter 6 walks through these fields; each component chapter explains the ones it uses. The defaults
are MiniMind2's, the architecture the book teaches; ``MiniMindConfig.minimind3()`` gives upstream's
2026 generation, MiniMind-3 (QK-norm, a wider FFN, top-1 MoE without shared experts). ``from_dict``
also reads the config.json dialects of upstream's and Hugging Face's exports (``checkpoint.translate_config``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import translate_config

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
MOE_VARIANTS = ("minimind2", "minimind3")
#: The RoPE tables are precomputed for every position: 2**20 positions of a 128-dim head are 1 GiB.
MAX_POSITIONS = 1 << 20

_INT_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
    "num_experts_per_tok",
    "n_routed_experts",
    "n_shared_experts",
    "moe_intermediate_size",
)
_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta", "dropout", "aux_loss_alpha")
_DERIVED = ("head_dim", "intermediate_size", "moe_intermediate_size")  # None: derived from other fields
_BOOL_FIELDS = (
    "inference_rope_scaling",
    "flash_attn",
    "tie_word_embeddings",
    "use_moe",
    "seq_aux",
    "norm_topk_prob",
    "qk_norm",
)


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"MiniMindConfig.{name}: {rule} (got {value!r})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class MiniMindConfig:
    # --- size of the model -------------------------------------------------
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 2  # GQA: each KV head serves num_attention_heads // this query heads; None = MHA
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads; sets the q/k/v/o widths and RoPE
    vocab_size: int = 6400
    intermediate_size: int | None = None  # None -> 64 * ceil(hidden_size * 8/3 / 64), the SwiGLU width
    # --- normalisation and position ------------------------------------------
    max_position_embeddings: int = 32768  # length of the precomputed RoPE table
    rms_norm_eps: float = 1e-5
    qk_norm: bool = False  # MiniMind-3: RMSNorm over head_dim on each query and key head, before RoPE
    rope_theta: float = 1e6
    inference_rope_scaling: bool = False  # True -> YaRN with DEFAULT_YARN unless rope_scaling is given
    rope_scaling: dict | None = None
    # --- other switches ------------------------------------------------------
    dropout: float = 0.0
    flash_attn: bool = True  # use F.scaled_dot_product_attention where it is valid
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True  # lm_head shares the embedding matrix
    # --- mixture of experts (chapter 5) ---------------------------------------
    use_moe: bool = False
    num_experts_per_tok: int = 2
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    moe_intermediate_size: int | None = None  # width of each routed expert; None -> intermediate_size
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.01
    seq_aux: bool = True  # balance per sequence (True) or over the whole batch (False)
    norm_topk_prob: bool = True  # renormalise the top-k router weights to sum to 1
    # "minimind2": renormalise only when top-k > 1, balance on the share of the T*K selections;
    # "minimind3": renormalise always (a top-1 weight becomes 1), balance on selections per token
    moe_variant: str = "minimind2"
    # anything else found in a config.json (e.g. upstream's "model_type"), kept for the round trip
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:  # upstream's convention for plain multi-head attention
            self.num_key_value_heads = self.num_attention_heads
        self._check_types()
        self._derived = {}  # field -> (value, the fields it came from): a later change of those is caught
        if self.head_dim is None and self.num_attention_heads > 0:  # (validate() names a non-positive count)
            _require(
                self.hidden_size % self.num_attention_heads == 0,
                "hidden_size",
                f"must be divisible by num_attention_heads={self.num_attention_heads} (or give head_dim)",
                self.hidden_size,
            )
            self.head_dim = self.hidden_size // self.num_attention_heads
            _require(
                self.head_dim % 2 == 0,
                "num_attention_heads",
                "must give an even head_dim = hidden_size // num_attention_heads (RoPE rotates pairs)",
                f"{self.num_attention_heads} -> head_dim {self.head_dim}",
            )
            self._derived["head_dim"] = (self.head_dim, (self.hidden_size, self.num_attention_heads))
        if self.intermediate_size is None:
            # 8/3 keeps a 3-matrix SwiGLU at the parameter count of a 4x ReLU FFN; 64 aligns it for matmul tiles
            self.intermediate_size = 64 * math.ceil(self.hidden_size * 8 / 3 / 64)
            self._derived["intermediate_size"] = (self.intermediate_size, (self.hidden_size, self.num_attention_heads))
        if self.rope_scaling is None and self.inference_rope_scaling:
            self.rope_scaling = dict(DEFAULT_YARN)
        elif isinstance(self.rope_scaling, dict):
            self._check_rope_scaling()
            given = {k: v for k, v in self.rope_scaling.items() if k != "rope_type"}  # HF's spelling of "type"
            self.rope_scaling = {**DEFAULT_YARN, **given, "type": "yarn"}
        self.validate()

    @classmethod
    def minimind3(cls, use_moe: bool = False, **overrides: Any) -> MiniMindConfig:
        """Upstream's MiniMind-3 (2026-03): 768 wide, 8 layers, 8 query and 4 KV heads, QK-norm, eps 1e-6,
        FFN width 64 * ceil(hidden_size * pi / 64) (2432); with ``use_moe``: 4 experts, top-1, no shared
        expert, aux loss coefficient 5e-4 counted per token over the batch. ``overrides`` change any field."""
        hidden = overrides.get("hidden_size", 768)
        preset = dict(
            hidden_size=768, num_key_value_heads=4, rms_norm_eps=1e-6, qk_norm=True, use_moe=use_moe,
            intermediate_size=64 * math.ceil(hidden * math.pi / 64) if _is_int(hidden) else None,
            n_routed_experts=4, num_experts_per_tok=1, n_shared_experts=0, aux_loss_alpha=5e-4, seq_aux=False,
            moe_variant="minimind3",
        )  # fmt: skip
        return cls(**{**preset, **overrides})

    # --- validation --------------------------------------------------------------
    def _check_types(self) -> None:
        """TypeError naming the field for a value of the wrong type (a string for a number, a string for a bool)."""

        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                v = getattr(self, name)
                raise TypeError(f"MiniMindConfig.{name}: must be {what} (got {v!r} of type {type(v).__name__})")

        for name in _INT_FIELDS:
            v = getattr(self, name)
            check(name, _is_int(v) or (v is None and name in _DERIVED), "an integer")
        for name in _FLOAT_FIELDS:
            check(name, _is_number(getattr(self, name)), "a number")
        for name in _BOOL_FIELDS:
            check(name, isinstance(getattr(self, name), bool), "True or False")
        for name in ("hidden_act", "scoring_func", "moe_variant"):
            check(name, isinstance(getattr(self, name), str), "a string")
        for name in ("bos_token_id", "eos_token_id"):
            check(name, getattr(self, name) is None or _is_int(getattr(self, name)), "an integer or None")
        check("rope_scaling", self.rope_scaling is None or isinstance(self.rope_scaling, dict), "a dict or None")
        check("extra", isinstance(self.extra, dict), "a dict")

    def _check_rope_scaling(self) -> None:
        rs = self.rope_scaling
        kinds = {rs[k] for k in ("type", "rope_type") if k in rs}
        _require(
            kinds == {"yarn"},
            "rope_scaling",
            "must be a YaRN dict with 'type' (or HF's 'rope_type') 'yarn'; minimind_ref implements no other scaling",
            rs,
        )
        unknown = sorted(set(rs) - set(DEFAULT_YARN) - {"rope_type"})
        _require(not unknown, "rope_scaling", f"unknown keys {unknown}; YaRN takes {sorted(DEFAULT_YARN)}", rs)
        full = {**DEFAULT_YARN, **rs}
        for key in ("factor", "beta_fast", "beta_slow", "attention_factor"):
            if not _is_number(full[key]):
                raise TypeError(f"MiniMindConfig.rope_scaling: {key} must be a number (got {full[key]!r})")
            _require(math.isfinite(full[key]), "rope_scaling", f"{key} must be finite", full[key])
        if not _is_int(full["original_max_position_embeddings"]):
            raise TypeError(
                "MiniMindConfig.rope_scaling: original_max_position_embeddings must be an integer "
                f"(got {full['original_max_position_embeddings']!r})"
            )
        _require(full["factor"] >= 1, "rope_scaling", "factor must be >= 1", full["factor"])
        _require(
            full["original_max_position_embeddings"] > 0,
            "rope_scaling",
            "original_max_position_embeddings must be > 0",
            full["original_max_position_embeddings"],
        )
        _require(
            full["beta_fast"] > full["beta_slow"] > 0,
            "rope_scaling",
            "needs beta_fast > beta_slow > 0",
            (full["beta_fast"], full["beta_slow"]),
        )
        _require(full["attention_factor"] > 0, "rope_scaling", "attention_factor must be > 0", full["attention_factor"])

    def validate(self) -> None:
        """Raise ``TypeError`` (wrong type) or ``ValueError`` (impossible value) naming the field and the rule.

        The model calls it again when it is built, so a field changed after construction is checked too."""
        self._check_types()
        for name in _INT_FIELDS[:8]:  # the sizes (the MoE ones are checked below, when use_moe)
            v = getattr(self, name)
            _require(v is not None and v > 0, name, "must be a positive integer", v)
        _require(
            self.head_dim is not None and self.head_dim % 2 == 0,
            "head_dim",
            "must be even (RoPE rotates pairs)",
            self.head_dim,
        )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            f"must divide num_attention_heads={self.num_attention_heads}",
            self.num_key_value_heads,
        )
        _require(
            self.max_position_embeddings <= MAX_POSITIONS,
            "max_position_embeddings",
            f"must be <= {MAX_POSITIONS} (the RoPE tables hold every position)",
            self.max_position_embeddings,
        )
        for name in _FLOAT_FIELDS:
            _require(math.isfinite(getattr(self, name)), name, "must be finite", getattr(self, name))
        _require(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0", self.rms_norm_eps)
        _require(self.rope_theta > 1, "rope_theta", "must be > 1", self.rope_theta)
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)", self.dropout)
        _require(self.hidden_act in ACTIVATIONS, "hidden_act", f"must be one of {ACTIVATIONS}", self.hidden_act)
        for name in ("bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            _require(v is None or 0 <= v < self.vocab_size, name, f"must be in [0, vocab_size={self.vocab_size})", v)
        if self.rope_scaling is not None:
            self._check_rope_scaling()
        _require(
            self.rope_scaling is not None or not self.inference_rope_scaling,
            "inference_rope_scaling",
            "is True but rope_scaling is None (changed after construction? build a new MiniMindConfig)",
            self.inference_rope_scaling,
        )
        for name, (value, sources) in getattr(self, "_derived", {}).items():
            _require(
                getattr(self, name) != value or sources == (self.hidden_size, self.num_attention_heads),
                name,
                "was derived from hidden_size and num_attention_heads, which changed after construction; "
                "build a new MiniMindConfig (or set this field too)",
                value,
            )
        if self.use_moe:
            _require(self.n_routed_experts > 0, "n_routed_experts", "must be a positive integer", self.n_routed_experts)
            _require(
                0 < self.num_experts_per_tok <= self.n_routed_experts,
                "num_experts_per_tok",
                f"must be in [1, n_routed_experts={self.n_routed_experts}]",
                self.num_experts_per_tok,
            )
            _require(self.n_shared_experts >= 0, "n_shared_experts", "must be >= 0", self.n_shared_experts)
            _require(
                self.scoring_func in SCORING_FUNCS, "scoring_func", f"must be one of {SCORING_FUNCS}", self.scoring_func
            )
            _require(self.aux_loss_alpha >= 0, "aux_loss_alpha", "must be >= 0", self.aux_loss_alpha)
            width = self.moe_intermediate_size
            _require(width is None or width > 0, "moe_intermediate_size", "must be a positive integer or None", width)
            _require(self.moe_variant in MOE_VARIANTS, "moe_variant", f"must be in {MOE_VARIANTS}", self.moe_variant)

    # --- round trip ------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling)
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict) -> MiniMindConfig:
        """Build from a dict of fields: this class's own, or a config.json written by upstream MiniMind2,
        upstream MiniMind-3 (``save_pretrained``) or Hugging Face's Qwen3 / Qwen3-MoE export. Unknown keys
        go to ``extra``."""
        if not isinstance(d, dict):
            raise TypeError(f"MiniMindConfig.from_dict: expected a dict of config fields, got {type(d).__name__}")
        d, preset = translate_config(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls.minimind3(**known, extra=extra) if preset == "minimind3" else cls(**known, extra=extra)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> MiniMindConfig:
        """Read JSON text (a string starting with ``{``) or a file such as ``config.json``."""
        if isinstance(text_or_path, str) and text_or_path.lstrip().startswith(("{", "[")):
            source, text = "JSON text", text_or_path
        else:
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"MiniMindConfig.from_json: {path} does not exist (or is not a file)")
            source, text = str(path), path.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"MiniMindConfig.from_json: {source} is not valid JSON ({err})") from err
        if not isinstance(d, dict):
            raise ValueError(f"MiniMindConfig.from_json: {source} must hold a JSON object, not a {type(d).__name__}")
        return cls.from_dict(d)
