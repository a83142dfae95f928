"""Chapter 6, the whole MiniMind: sizes, FLOPs, memory, sampling, long context, scaling out.

What the chapter measures and draws, as tested functions:

* **released shapes**: ``released_configs()`` gives upstream's MiniMind2 and MiniMind-3 models as
  ``MiniMindConfig``\\ s; ``meta_model(config)`` builds one on the ``meta`` device (shapes, no memory);
* **parameters**: ``parameter_breakdown(model)`` counts real modules by kind (embedding, attention,
  feed-forward, routed experts, router, norms) and the parameters one token uses (``active``);
  ``parameter_expressions()`` is the same count as sympy formulas and ``parameter_formula(config)``
  evaluates them;
* **FLOPs**: ``count_flops(model, input_ids)`` runs a forward (and backward) pass under
  ``torch.utils.flop_counter.FlopCounterMode``, on real or ``meta`` tensors; ``flops_per_token(config, T)``
  is the closed form that the chapter derives and checks against it;
* **memory**: ``saved_activation_bytes(model, input_ids)`` adds up the tensors autograd keeps for the
  backward pass (``saved_tensors_hooks``); ``activation_bytes_formula`` and ``training_memory`` are the
  closed forms; ``memory_rows`` feeds the memory calculator explorer;
* **sampling**: ``sampling_probs`` is the distribution ``MiniMindForCausalLM.generate`` samples from
  (temperature, top-k, top-p), ``sampling_rows`` / ``draw_sampling`` the sampling-knobs explorer;
* **generation**: ``greedy_uncached`` decodes without a KV cache (the baseline of the cache's speed-up);
* **long context**: ``with_rope_scaling`` rebuilds a model with YaRN (or without it) around the same
  weights, ``loss_by_position`` measures its loss at each position;
* **the module diagram**: ``module_flow`` reads the module tree in the order a forward pass calls it
  (forward pre-hooks), ``draw_module_flow`` draws it;
* **scaling out**: a simulated ring all-reduce (``ring_allreduce``); bytes each GPU sends per step under
  data parallelism (``ddp_bytes``), fully sharded
  data parallelism (``fsdp_bytes``) and expert parallelism (``expert_parallel_bytes``);
* **training logs**: ``read_log`` reads a ``train_log.jsonl`` of ``python -m minimind_ref.train``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import MiniMindConfig
from ..model import MiniMindForCausalLM

__all__ = [
    "released_configs",
    "meta_model",
    "CATEGORIES",
    "category",
    "parameter_breakdown",
    "parameter_expressions",
    "config_symbols",
    "parameter_formula",
    "count_flops",
    "flops_per_token",
    "flop_expressions",
    "saved_tensor_bytes",
    "saved_activation_bytes",
    "activation_bytes_formula",
    "training_memory",
    "memory_rows",
    "draw_memory",
    "sampling_probs",
    "sampling_rows",
    "draw_sampling",
    "greedy_uncached",
    "with_rope_scaling",
    "loss_by_position",
    "module_flow",
    "draw_module_flow",
    "ring_allreduce",
    "average_gradients",
    "torchrun_command",
    "ddp_bytes",
    "fsdp_bytes",
    "expert_parallel_bytes",
    "run_showing_progress",
    "Pieces",
    "chat",
    "equations",
    "read_log",
]


# ----------------------------------------------------------------------------- released shapes


def released_configs() -> dict[str, MiniMindConfig]:
    """Upstream MiniMind's released shapes (its README's model table), by upstream's names.

    MiniMind2 (2025): 26 M dense (hidden 512, 8 layers), 104 M dense (768, 16), 145 M MoE (640, 8; four
    routed experts, top-2, one shared). MiniMind-3 (2026): 64 M dense and 198 M MoE (768, 8; QK-norm,
    four routed experts, top-1, no shared expert)."""
    return {
        "minimind2-small": MiniMindConfig(),
        "minimind2": MiniMindConfig(hidden_size=768, num_hidden_layers=16),
        "minimind2-moe": MiniMindConfig(hidden_size=640, use_moe=True),
        "minimind-3": MiniMindConfig.minimind3(),
        "minimind-3-moe": MiniMindConfig.minimind3(use_moe=True),
    }


def meta_model(config: MiniMindConfig) -> MiniMindForCausalLM:
    """The model built on the ``meta`` device: every parameter has its shape, none has memory or values."""
    with torch.device("meta"):
        return MiniMindForCausalLM(config)


# ----------------------------------------------------------------------------- parameters

#: The kinds of parameters, in the order tables and figures list them.
CATEGORIES = ("embedding", "attention", "feed-forward", "routed experts", "router", "norms")


def category(name: str) -> str:
    """The kind of a parameter from its state-dict name (``model.layers.3.self_attn.q_proj.weight`` ...)."""
    if name.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, q_norm, k_norm, model.norm
        return "norms"
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embedding"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp.experts." in name:
        return "routed experts"
    if ".mlp." in name:  # a dense FFN, or an MoE's shared experts
        return "feed-forward"
    raise ValueError(f"parameter {name!r} fits no category")


def parameter_breakdown(model: MiniMindForCausalLM) -> dict[str, int]:
    """Parameters by kind (a tied embedding counted once), ``total``, and ``active``: those one token uses
    (an MoE token runs ``num_experts_per_tok`` of the ``n_routed_experts`` routed experts of each layer)."""
    out = dict.fromkeys(CATEGORIES, 0)
    for name, p in model.named_parameters():  # named_parameters yields a shared tensor once
        out[category(name)] += p.numel()
    out["total"] = sum(out[c] for c in CATEGORIES)
    cfg = model.config
    unused = 0
    if cfg.use_moe:
        for layer in model.model.layers:
            per_expert = sum(p.numel() for p in layer.mlp.experts[0].parameters())
            unused += (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    out["active"] = out["total"] - unused
    return out


@functools.cache
def config_symbols():
    """The sympy symbols of the size formulas, by name (all positive integers; the switches are 0 or 1)."""
    import sympy as sp

    names = {
        "V": "vocabulary size",
        "d": "hidden size",
        "L": "layers",
        "H": "query heads",
        "G": "key/value heads",
        "h": "head dimension",
        "f": "FFN width",
        "f_e": "routed expert width",
        "E": "routed experts",
        "S": "shared experts",
        "K": "experts per token",
        "T": "sequence length",
    }
    syms = {n: sp.Symbol(n, positive=True, integer=True) for n in names}
    for n in ("moe", "qk", "untied"):  # switches: 1 if the model has it, else 0
        syms[n] = sp.Symbol(r"\mathbb{1}_{\mathrm{" + n + "}}", nonnegative=True, integer=True)
    return syms


def parameter_expressions() -> dict[str, Any]:
    """Parameter counts as sympy expressions of ``config_symbols()``, by kind, plus ``total`` and ``active``."""
    return dict(_parameter_expressions())


@functools.cache
def _parameter_expressions() -> dict[str, Any]:
    s = config_symbols()
    V, d, L, H, G, h = s["V"], s["d"], s["L"], s["H"], s["G"], s["h"]
    f, fe, E, S, K = s["f"], s["f_e"], s["E"], s["S"], s["K"]
    moe, qk, untied = s["moe"], s["qk"], s["untied"]
    ffn = 3 * d * f  # gate_proj, up_proj (d -> f) and down_proj (f -> d)
    expr = {
        "embedding": V * d * (1 + untied),  # one matrix when lm_head is tied to it
        "attention": L * (d * H * h + 2 * d * G * h + H * h * d),  # q; k and v; o
        "feed-forward": L * ((1 - moe) * ffn + moe * S * ffn),  # dense FFN, or the shared experts
        "routed experts": L * moe * E * 3 * d * fe,
        "router": L * moe * E * d,
        "norms": L * (2 * d + qk * 2 * h) + d,  # two per block (+ QK-norm over head_dim), the final norm
    }
    expr["total"] = sum(expr[c] for c in CATEGORIES)
    expr["active"] = expr["total"] - L * moe * (E - K) * 3 * d * fe
    return expr


def symbol_values(config: MiniMindConfig, seq_len: int | None = None) -> dict:
    """{symbol: value} for a config (and a sequence length), to substitute into the expressions."""
    s = config_symbols()
    moe = int(config.use_moe)
    values = {
        "V": config.vocab_size,
        "d": config.hidden_size,
        "L": config.num_hidden_layers,
        "H": config.num_attention_heads,
        "G": config.num_key_value_heads,
        "h": config.head_dim,
        "f": config.intermediate_size,
        "f_e": config.moe_intermediate_size or config.intermediate_size,
        "E": config.n_routed_experts if moe else 1,
        "S": config.n_shared_experts if moe else 0,
        "K": config.num_experts_per_tok if moe else 1,
        "moe": moe,
        "qk": int(config.qk_norm),
        "untied": int(not config.tie_word_embeddings),
        "T": seq_len if seq_len is not None else 1,
    }
    return {s[k]: v for k, v in values.items()}


def parameter_formula(config: MiniMindConfig) -> dict[str, int]:
    """``parameter_expressions()`` evaluated for ``config``: the same keys as ``parameter_breakdown``."""
    values = symbol_values(config)
    return {k: int(e.xreplace(values)) for k, e in _parameter_expressions().items()}


# ----------------------------------------------------------------------------- FLOPs


def _lm_loss(model: MiniMindForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (+ the MoE balancing loss) of a batch; works on ``meta`` tensors too.

    ``MiniMindForCausalLM.forward`` checks token values (``min``/``max``), which a meta tensor does not
    have; on meta the same computation runs through ``model.model(..., check=False)``."""
    if not input_ids.is_meta:
        out = model(input_ids, labels=input_ids)
        return out.loss + out.aux_loss
    h, _, aux = model.model(input_ids, check=False)
    logits = model.lm_head(h)
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
    return loss + aux


def count_flops(model: MiniMindForCausalLM, input_ids: torch.Tensor, backward: bool = True) -> dict[str, int]:
    """FLOPs of one forward (and backward) pass over ``input_ids``, counted by ``FlopCounterMode``.

    Returns ``{"total": ..., "<aten op>": ...}``. FlopCounterMode counts matrix products (``mm``, ``bmm``,
    ``addmm``, attention kernels) as 2 FLOPs per multiply-add and ignores elementwise work. On a CPU,
    the fused attention kernel that SDPA picks is not among the operations it counts, so build the model
    with ``flash_attn=False`` (the explicit path: two ``matmul``\\ s) or on the ``meta`` device, where SDPA
    decomposes into counted matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            _lm_loss(model, input_ids).backward()
        else:
            with torch.no_grad():
                _lm_loss(model, input_ids)
    counts = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()), **counts}


def flop_expressions() -> dict[str, Any]:
    """FLOPs per token of a sequence of length T, as sympy expressions: ``matmul_params`` (the active
    parameters that multiply a vector: all but the norms and an untied input embedding),
    ``forward`` = 2 * matmul_params + 4 L H h T (scores and weighted values over the whole T x T square),
    ``training`` = 3 * forward (the backward pass computes two products for each one of the forward)."""
    return dict(_flop_expressions())


@functools.cache
def _flop_expressions() -> dict[str, Any]:
    s = config_symbols()
    p = _parameter_expressions()
    matmul = p["active"] - p["norms"] - s["untied"] * s["V"] * s["d"]
    attention = 4 * s["L"] * s["H"] * s["h"] * s["T"]
    forward = 2 * matmul + attention
    return {"matmul_params": matmul, "attention": attention, "forward": forward, "training": 3 * forward}


def flops_per_token(config: MiniMindConfig, seq_len: int, training: bool = True) -> int:
    """``flop_expressions()['training' or 'forward']`` evaluated for a config and a sequence length."""
    e = _flop_expressions()["training" if training else "forward"]
    return int(e.xreplace(symbol_values(config, seq_len)))


# ----------------------------------------------------------------------------- memory


def saved_tensor_bytes(model: MiniMindForCausalLM, input_ids: torch.Tensor, autocast_dtype=None) -> dict[str, int]:
    """Bytes of the tensors autograd saves for the backward pass of one training forward (loss included),
    split into ``activations`` and ``weight copies`` (a weight cast to another dtype by autocast: a saved
    tensor made by a cast straight from a parameter).

    Every tensor saved is seen by a ``saved_tensors_hooks`` pack hook; tensors that share storage are
    counted once, and the model's own parameters and buffers (the RoPE tables) are not counted.
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under ``torch.autocast``."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, tuple[int, bool]] = {}

    views = ("TBackward0", "ViewBackward0", "TransposeBackward0", "PermuteBackward0", "ExpandBackward0")

    def weight_copy(t: torch.Tensor) -> bool:  # a (view of a) cast made straight from a leaf: a weight
        fn = t.grad_fn
        while type(fn).__name__ in views and len(fn.next_functions) == 1:
            fn = fn.next_functions[0][0]
        return type(fn).__name__ == "ToCopyBackward0" and any(
            type(nxt).__name__ == "AccumulateGrad" for nxt, _ in fn.next_functions if nxt is not None
        )

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in own and ptr not in seen:
            seen[ptr] = (storage.nbytes(), weight_copy(t))
        return t

    ctx = (
        torch.autocast(input_ids.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else torch.autocast(input_ids.device.type, enabled=False)
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        loss = _lm_loss(model, input_ids)
    del loss
    return {
        "activations": sum(n for n, copy in seen.values() if not copy),
        "weight copies": sum(n for n, copy in seen.values() if copy),
    }


def saved_activation_bytes(model: MiniMindForCausalLM, input_ids: torch.Tensor, autocast_dtype=None) -> int:
    """Bytes of the activations autograd saves for one training forward: ``saved_tensor_bytes`` without
    the autocast weight copies (in float32 there are none, and this is every tensor saved)."""
    return saved_tensor_bytes(model, input_ids, autocast_dtype)["activations"]


def activation_bytes_formula(config: MiniMindConfig, batch: int, seq_len: int, bytes_per: int = 4) -> int:
    """Bytes autograd saves for a dense MiniMind in one dtype (float32: 4), with PyTorch's SDPA attention.

    Per token and block: each RMSNorm keeps its input, 1/RMS, the normalised vector and its output
    (3d + 1); attention keeps q, k, v, its output and the log-sum-exp per head (2Hh + 2Gh + H); the SwiGLU
    keeps gate, SiLU(gate), up and their product (4f); MiniMind-3's QK-norm adds, per query and key head,
    its input, 1/RMS and the normalised vector ((2h + 1)(H + G)). After the blocks: the final norm (3d + 1) and the
    float32 log-probabilities over the vocabulary (V) for the loss; the token ids and targets (int64, 16
    bytes per token) and the loss (4 bytes)."""
    if config.use_moe:
        raise ValueError("activation_bytes_formula covers dense models; measure an MoE with saved_activation_bytes")
    d, L, H = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    G, h, f, V = config.num_key_value_heads, config.head_dim, config.intermediate_size, config.vocab_size
    qk = (2 * h + 1) * (H + G) if config.qk_norm else 0  # QK-norm: each head's input, 1/RMS, normalised
    per_block = 2 * (3 * d + 1) + 2 * H * h + 2 * G * h + H + 4 * f + qk
    per_token = bytes_per * (L * per_block + 3 * d + 1) + 4 * V + 16
    return batch * seq_len * per_token + 4


def training_memory(config: MiniMindConfig, batch: int, seq_len: int) -> dict[str, int]:
    """Bytes of one float32 training step of a dense MiniMind with AdamW, by part: weights, gradients, the
    two AdamW moments (4 bytes per parameter each) and the activations autograd saves
    (``activation_bytes_formula``)."""
    n = parameter_formula(config)["total"]
    return {
        "weights": 4 * n,
        "gradients": 4 * n,
        "AdamW first moment": 4 * n,
        "AdamW second moment": 4 * n,
        "activations": activation_bytes_formula(config, batch, seq_len),
    }


def memory_rows(hidden_size: int, layers: int, tokens: int, vocab_size: int = 6400) -> list[dict]:
    """Explorer rows: the float32 training memory (GB) of a dense MiniMind2 of this width and depth (8 query
    heads over 2 KV heads, as every MiniMind2), by part, for a micro-batch of ``tokens`` tokens. Each row's
    ``label`` carries its value, so the chart needs no text marks that a long bar could push off the edge."""
    cfg = MiniMindConfig(hidden_size=hidden_size, num_hidden_layers=layers, vocab_size=vocab_size)
    parts = training_memory(cfg, 1, tokens)  # the activations depend on batch x length only
    n = parameter_formula(cfg)["total"]
    total = sum(parts.values())
    note = f"total {total / 1e9:.2f} GB for {n / 1e6:.1f} M parameters"
    return [
        {"part": part, "label": f"{part}: {b / 1e9:.2f} GB", "GB": b / 1e9, "order": i, "note": note}
        for i, (part, b) in enumerate(parts.items())
    ]


def draw_memory(base):
    """Explorer ``draw``: one horizontal bar per part of the training memory, the total in a corner."""
    import altair as alt

    order = ["weights", "gradients", "AdamW first moment", "AdamW second moment", "activations"]
    colors = ["#0072B2", "#009E73", "#E69F00", "#CC79A7", "#D55E00"]
    bars = base.mark_bar().encode(
        y=alt.Y("label:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelLimit=260)),
        x=alt.X("GB:Q", title="memory of one training step (GB)"),
        color=alt.Color("part:N", sort=order, scale=alt.Scale(domain=order, range=colors), legend=None),
        tooltip=["part:N", alt.Tooltip("GB:Q", format=".3f")],
    )
    note = (
        base.transform_filter("datum.order == 0")
        .mark_text(align="right", baseline="bottom", x="width", y=-6, fontSize=12, color="#333333")
        .encode(text="note:N")
    )
    return bars + note


# ----------------------------------------------------------------------------- sampling


def sampling_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The probabilities ``MiniMindForCausalLM.generate(do_sample=True, ...)`` draws the next token from.

    ``logits`` (vocab,) or (B, vocab). Divide by the temperature; keep the ``top_k`` largest; keep the
    smallest set of most likely tokens whose probability reaches ``top_p`` (a token is dropped when the
    tokens ranked above it already hold ``top_p``); softmax over what is left. Same order of operations
    as ``MiniMindForCausalLM._pick``."""
    squeeze = logits.dim() == 1
    z = logits.double().reshape(-1, logits.shape[-1]) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        p = sorted_z.softmax(-1)
        drop_sorted = (p.cumsum(-1) - p) >= top_p
        z = z.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = z.softmax(-1)
    return probs[0] if squeeze else probs


def sampling_rows(
    logits: torch.Tensor,
    labels: Sequence[str],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[dict]:
    """Explorer rows for the ``len(labels)`` most likely tokens of ``logits`` (sorted by the untouched
    distribution): their probability before and after the knobs, and the entropy (nats) of the result.
    ``top_k=0`` means no top-k."""
    n = len(labels)
    base = sampling_probs(logits)
    after = sampling_probs(logits, temperature, top_k or None, top_p)
    order = torch.argsort(base, descending=True)[:n]
    entropy = float(-(after[after > 0] * after[after > 0].log()).sum())
    kept = int((after > 0).sum())
    rows = []
    for rank, i in enumerate(order.tolist()):
        rows.append({"rank": rank, "token": labels[rank], "which": "model (T = 1)", "p": float(base[i]),
                     "entropy": entropy, "kept": kept})  # fmt: skip
        rows.append({"rank": rank, "token": labels[rank], "which": "after the knobs", "p": float(after[i]),
                     "entropy": entropy, "kept": kept})  # fmt: skip
    return rows


def draw_sampling(base):
    """Explorer ``draw``: the next-token distribution before and after temperature, top-k and top-p."""
    import altair as alt

    order = ["model (T = 1)", "after the knobs"]
    x = alt.X("token:N", sort=alt.SortField("rank"), title="candidate next token (most likely first)",
              axis=alt.Axis(labelAngle=-50))  # fmt: skip
    bars = base.mark_bar().encode(
        x=x,
        xOffset=alt.XOffset("which:N", sort=order),
        y=alt.Y("p:Q", title="probability", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color(
            "which:N",
            sort=order,
            scale=alt.Scale(domain=order, range=["#9a9a9a", "#D55E00"]),
            legend=alt.Legend(orient="bottom", title=None),
        ),  # fmt: skip
        tooltip=["token:N", "which:N", alt.Tooltip("p:Q", format=".3f")],
    )
    note = (
        base.transform_filter("datum.rank == 0 && datum.which == 'after the knobs'")
        .mark_text(align="right", x="width", dx=-4, y=40, fontSize=12, color="#333333")
        .encode(text=alt.Text("label:N"))
        .transform_calculate(
            label="'tokens kept: ' + datum.kept + ',  entropy: ' + format(datum.entropy, '.2f') + ' nats'"
        )
    )
    return bars + note


# ----------------------------------------------------------------------------- generation


@torch.inference_mode()
def greedy_uncached(model: MiniMindForCausalLM, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding without a KV cache: every step runs the whole sequence again (the baseline)."""
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(ids, logits_to_keep=1).logits[:, -1]  # (B, vocab)
        ids = torch.cat([ids, logits.float().argmax(-1, keepdim=True)], dim=1)
    return ids


# ----------------------------------------------------------------------------- long context


def with_rope_scaling(
    model: MiniMindForCausalLM, rope_scaling: dict | None, max_position_embeddings: int
) -> MiniMindForCausalLM:
    """A copy of ``model`` (same weights, shared) whose RoPE tables are recomputed for
    ``max_position_embeddings`` positions, with YaRN settings ``rope_scaling`` (None: plain RoPE)."""
    fields = {**model.config.to_dict(), "max_position_embeddings": max_position_embeddings,
              "rope_scaling": rope_scaling, "inference_rope_scaling": False}  # fmt: skip
    config = MiniMindConfig.from_dict(fields)
    device = model.lm_head.weight.device
    new = MiniMindForCausalLM(config).to(device)
    new.load_checkpoint({k: v for k, v in model.state_dict().items()})
    new.train(model.training)
    return new


@torch.no_grad()
def loss_by_position(model: MiniMindForCausalLM, seqs: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """(T - 1,) mean next-token loss (nats) at each position of ``seqs`` (N, T): position t predicts t + 1."""
    total = torch.zeros(seqs.shape[1] - 1, dtype=torch.float64)
    for start in range(0, len(seqs), batch_size):
        x = seqs[start : start + batch_size].to(model.lm_head.weight.device)
        logits = model(x).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (b, T - 1)
        total += nll.double().sum(0).cpu()
    return total / len(seqs)


# ----------------------------------------------------------------------------- the module diagram


def module_flow(model: MiniMindForCausalLM, input_ids: torch.Tensor) -> list[dict]:
    """The model's modules in the order a forward pass calls them, read from the module tree with hooks.

    Returns rows {name, kind, depth, params, chips, repeat, shape}: the modules down to the sublayers of a block
    (depth 1: ``embed_tokens``, the block, ``norm``, ``lm_head``; depth 2: the block's norms, attention and
    feed-forward), each with ``chips``, its own children in call order (``q_proj`` ...; a ``ModuleList`` of
    experts as one chip). The blocks ``layers.1 ...`` repeat ``layers.0``: they are one row with ``repeat`` =
    the number of layers. ``params`` counts each row's subtree; ``shape`` is the shape of the module's
    output for ``input_ids``."""
    names = dict(model.named_modules())
    order: list[str] = []
    shapes: dict[str, tuple] = {}

    def record_shape(name: str, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(out, torch.Tensor) and name not in shapes:
            shapes[name] = tuple(out.shape)

    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n)) for n, m in names.items() if n]
    hooks += [m.register_forward_hook(lambda _m, _a, o, n=n: record_shape(n, o)) for n, m in names.items() if n]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for hk in hooks:
            hk.remove()
    first_call = {n: i for i, n in reversed(list(enumerate(order)))}  # a module's first call

    def children_in_order(path: str) -> list[tuple[str, torch.nn.Module]]:
        kids = [(f"{path}.{c}" if path else c, m) for c, m in names[path].named_children() if not isinstance(
            m, torch.nn.Dropout)]  # fmt: skip

        # a ModuleList is never called itself: it is first used when its first element is
        def when(item):
            p, m = item
            if isinstance(m, torch.nn.ModuleList):
                return min((first_call.get(f"{p}.{i}", 1 << 30) for i in range(len(m))), default=1 << 30)
            return first_call.get(p, 1 << 30)

        return sorted(kids, key=when)

    def chip(path: str, m: torch.nn.Module) -> str:
        leaf = path.rsplit(".", 1)[-1]
        return f"{leaf} ×{len(m)}" if isinstance(m, torch.nn.ModuleList) else leaf

    def row(path: str, m: torch.nn.Module, depth: int, repeat: int = 1, name: str | None = None) -> dict:
        chips = [] if depth == 1 and isinstance(m, type(model.model.layers[0])) else [
            chip(p, c) for p, c in children_in_order(path)]  # fmt: skip
        return {"name": name or path.rsplit(".", 1)[-1], "kind": type(m).__name__, "depth": depth,
                "params": sum(p.numel() for p in m.parameters()), "chips": chips, "repeat": repeat,
                "shape": shapes.get(path)}  # fmt: skip

    rows = []
    top = [(p, m) for p, m in children_in_order("model")] + [("lm_head", model.lm_head)]
    for path, m in top:
        if isinstance(m, torch.nn.ModuleList):  # the blocks
            n = len(m)
            rows.append(row(f"{path}.0", m[0], 1, repeat=n, name=f"layers[0 … {n - 1}]"))
            rows += [row(p, c, 2) for p, c in children_in_order(f"{path}.0")]
        else:
            rows.append(row(path, m, 1))
    return rows


def _shape_text(shape: tuple | None, batch: int, seq: int) -> str:
    if shape is None:
        return ""
    dims = ["B" if i == 0 and n == batch else "T" if i == 1 and n == seq else str(n) for i, n in enumerate(shape)]
    return "→ (" + ", ".join(dims) + ")"


def draw_module_flow(ax, model: MiniMindForCausalLM, input_ids: torch.Tensor) -> list[dict]:
    """Draw ``module_flow``: one box per module in call order (its children as a line of names, its output
    shape with B = batch and T = sequence length, its parameters), the block's sublayers inside the block's
    frame, the residual stream beside them: it feeds each norm and receives each sublayer's output (+).
    A dashed arc joins ``lm_head`` and ``embed_tokens`` when they share one matrix. Returns the rows drawn."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    rows = module_flow(model, input_ids)
    batch, seq = input_ids.shape
    colours = {"Embedding": "#CC79A7", "RMSNorm": "#56B4E9", "Attention": "#E69F00", "FeedForward": "#009E73",
               "MoEFeedForward": "#009E73", "Linear": "#CC79A7"}  # fmt: skip
    gap, box_h, stream_x, inner_x0, right = 0.3, 0.78, 0.55, 1.0, 8.7
    y = 0.0
    centres: dict[str, float] = {}
    frame = None  # (top, bottom) of the block's frame
    feeds, adds = [], []

    def arrow(p, q, **kw):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=10, color="#333333", linewidth=1.2, **kw))

    ax.text(0.3, y - 0.2, f"input_ids  (B, T) = {tuple(input_ids.shape)}", fontsize=9, va="center", color="#222222")
    y -= 0.55
    for i, r in enumerate(rows):
        if r["depth"] == 1 and r["repeat"] > 1:  # the block's frame opens here
            frame = [y, None]
            y -= 0.55
            continue
        x0 = inner_x0 if r["depth"] == 2 else 0.3
        width = right - x0
        ax.add_patch(FancyBboxPatch((x0, y - box_h), width, box_h, boxstyle="round,pad=0,rounding_size=0.1",
                                    facecolor=colours.get(r["kind"], "#dddddd"), edgecolor="#444444",
                                    linewidth=1.0))  # fmt: skip
        ax.text(x0 + 0.15, y - 0.27, f"{r['name']}  ({r['kind']})", fontsize=9.5, fontweight="bold", va="center",
                color="#111111")  # fmt: skip
        ax.text(x0 + 0.15, y - 0.58, "  ".join(r["chips"]), fontsize=8, va="center", color="#222222",
                family="monospace")  # fmt: skip
        ax.text(x0 + width - 0.12, y - 0.27, f"{r['params']:,} params", fontsize=8.5, ha="right", va="center",
                color="#222222")  # fmt: skip
        ax.text(x0 + width - 0.12, y - 0.58, _shape_text(r["shape"], batch, seq), fontsize=8.5, ha="right",
                va="center", color="#222222", family="monospace")  # fmt: skip
        centres[r["name"]] = y - box_h / 2
        if r["depth"] == 2 and r["kind"] == "RMSNorm":
            feeds.append(y - box_h / 2)  # the stream enters the sublayer through its norm
        if r["depth"] == 2 and r["kind"] in ("Attention", "FeedForward", "MoEFeedForward"):
            adds.append(y - box_h - gap / 2)  # the sublayer's output joins the stream here
        y -= box_h + gap
        last_inner = r["depth"] == 2 and (i + 1 == len(rows) or rows[i + 1]["depth"] == 1)
        if last_inner and frame is not None:
            frame[1] = y - 0.05
            y -= 0.3
    ax.text(0.3, y - 0.05, "logits  (B, T, vocab): the next token's scores at every position", fontsize=9,
            va="center", color="#222222")  # fmt: skip
    if frame is not None:
        top, bottom = frame
        n = next(r["repeat"] for r in rows if r["repeat"] > 1)
        ax.add_patch(
            FancyBboxPatch(
                (0.12, bottom),
                right + 0.06,
                top - bottom,
                boxstyle="round,pad=0,rounding_size=0.15",
                facecolor="none",
                edgecolor="#444444",
                linewidth=1.4,
                linestyle="--",
            )
        )
        ax.text(0.3, top - 0.28, f"MiniMindBlock  × {n} layers (one drawn)", fontsize=10, fontweight="bold",
                va="center", color="#111111")  # fmt: skip
        ax.plot([stream_x, stream_x], [top - 0.5, bottom + 0.1], color="#333333", linewidth=2.2)
        for yf in feeds:
            arrow((stream_x, yf), (inner_x0, yf))
        for ya in adds:
            arrow((inner_x0 + 2.2, ya + 0.14), (stream_x + 0.15, ya))
            ax.text(
                stream_x,
                ya,
                "+",
                fontsize=11,
                ha="center",
                va="center",
                fontweight="bold",
                bbox={"boxstyle": "circle,pad=0.1", "facecolor": "white", "edgecolor": "#333333"},
            )
        ax.text(0.3, (top + bottom) / 2, "residual stream h", fontsize=8.5, rotation=90, ha="center", va="center",
                color="#333333", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip
    if model.lm_head.weight is model.model.embed_tokens.weight and {"embed_tokens", "lm_head"} <= centres.keys():
        ya, yb = centres["embed_tokens"], centres["lm_head"]
        ax.add_patch(
            FancyArrowPatch(
                (right, ya),
                (right, yb),
                connectionstyle="arc3,rad=-0.22",
                arrowstyle="<->",
                mutation_scale=10,
                color="#8a2b6b",
                linewidth=1.3,
                linestyle="--",
            )
        )
        ax.text(right + 1.05, (ya + yb) / 2, "tied:\none\nmatrix", fontsize=8.5, color="#8a2b6b", ha="center",
                va="center")  # fmt: skip
    ax.set_xlim(0, 10.2)
    ax.set_ylim(y - 0.35, 0.15)
    ax.axis("off")
    return rows


# ----------------------------------------------------------------------------- scaling out


def ring_allreduce(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Simulate the ring all-reduce of P equal-sized 1-D tensors, one per process; return every process's
    result (the sum) and the bytes each process sent.

    Each tensor is cut into P chunks. Reduce-scatter: in P - 1 steps, process r sends one chunk to process
    r + 1 (mod P), which adds it to its own; afterwards process r holds the full sum of chunk r + 1. All-gather:
    in P - 1 more steps the summed chunks travel round the ring. Every process sends 2 (P - 1) chunks of
    n / P elements."""
    world = len(tensors)
    chunks = [list(t.clone().tensor_split(world)) for t in tensors]
    sent = [0] * world
    for step in range(world - 1):  # reduce-scatter
        outgoing = [(r, (r - step) % world, chunks[r][(r - step) % world].clone()) for r in range(world)]
        for r, c, data in outgoing:
            chunks[(r + 1) % world][c] += data
            sent[r] += data.numel() * data.element_size()
    for step in range(world - 1):  # all-gather: process r owns the finished chunk (r + 1) % P
        outgoing = [(r, (r + 1 - step) % world, chunks[r][(r + 1 - step) % world].clone()) for r in range(world)]
        for r, c, data in outgoing:
            chunks[(r + 1) % world][c] = data
            sent[r] += data.numel() * data.element_size()
    return [torch.cat(c) for c in chunks], sent


def average_gradients(replicas: Sequence[torch.nn.Module]) -> None:
    """What ``DistributedDataParallel`` does after the backward pass, for replicas in one process: every
    parameter's gradient is summed over the replicas by ``ring_allreduce`` and divided by their number."""
    named = [dict(r.named_parameters()) for r in replicas]
    for name in named[0]:
        grads = [n[name].grad for n in named]
        summed, _ = ring_allreduce([g.flatten() for g in grads])
        for g, total in zip(grads, summed, strict=True):
            g.copy_((total / len(replicas)).view_as(g))


def training_step(model: MiniMindForCausalLM, batch: torch.Tensor, lr: float = 1e-3):
    """A zero-argument callable that runs one training step of ``model`` on ``batch`` (forward, the
    loss plus any MoE balancing loss, backward, an AdamW update), with gradients enabled even when it is
    called under ``torch.no_grad()`` (as :func:`minimind_ref.lab.timing.compare` calls it). It returns
    the loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def step() -> float:
        with torch.enable_grad():
            out = model(batch, labels=batch)
            (out.loss + out.aux_loss).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return out.loss.item()

    return step


def torchrun_command(module: str, args: Sequence[str], nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node=N ... -m <module> <args>`` on one machine, with a
    free port for the processes to meet on."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}"]
    return [*launcher, "--master_addr=127.0.0.1", f"--master_port={port}", "-m", module, *args]


def ddp_bytes(n_params: int, world_size: int, bytes_per: int = 4) -> float:
    """Bytes each process sends per step under data parallelism: a ring all-reduce of the gradients,
    2 (P - 1) / P times their size (a reduce-scatter, then an all-gather)."""
    return 2 * (world_size - 1) / world_size * n_params * bytes_per


def fsdp_bytes(n_params: int, world_size: int, bytes_per: int = 4) -> float:
    """Bytes each process sends per step under fully sharded data parallelism (ZeRO-3): the weights
    all-gathered for the forward and again for the backward, the gradients reduce-scattered: 3 (P - 1) / P."""
    return 3 * (world_size - 1) / world_size * n_params * bytes_per


def expert_parallel_bytes(
    tokens_per_rank: int, hidden_size: int, top_k: int, moe_layers: int, world_size: int, bytes_per: int = 4
) -> float:
    """Bytes each process sends per step for the routed experts under expert parallelism: every MoE
    layer sends each of its tokens' K hidden vectors to the experts' processes and gets the results back
    (two all-to-alls), and the backward pass does the same with the gradients: 4 all-to-alls per layer, a
    fraction (P - 1) / P of them leaving the process when routing is uniform."""
    per_all_to_all = tokens_per_rank * top_k * hidden_size * bytes_per * (world_size - 1) / world_size
    return 4 * moe_layers * per_all_to_all


# ----------------------------------------------------------------------------- running the programs


def run_showing_progress(fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; while the book is being built (where a moving progress bar would be printed
    as every one of its states), stderr is captured and only the last state of each bar is printed."""
    import contextlib
    import io
    import sys

    from .explorer import building_book

    if not building_book():
        return fn(*args, **kwargs)
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        result = fn(*args, **kwargs)
    lines = [line.split("\r")[-1] for line in buffer.getvalue().split("\n")]
    print("\n".join(line for line in lines if line.strip()), file=sys.stderr)
    return result


class Pieces:
    """A file-like object that keeps what is written to it, piece by piece (for ``TextStreamer``)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.pieces.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def chat(folder: str | Path, question: str, max_new_tokens: int = 80) -> str:
    """One greedy answer of a checkpoint folder (config, weights, ``tokenizer.json``) to ``question``.

    The prompt is the folder's own chat template when ``transformers`` can read one there (upstream
    MiniMind's folders have one), else a plain ChatML turn: ``<|im_start|>user ... <|im_end|>`` then
    ``<|im_start|>assistant``."""
    from ..tokenizer import load_tokenizer

    model = MiniMindForCausalLM.from_pretrained(folder)
    tok = load_tokenizer(folder)
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    try:
        from transformers import AutoTokenizer

        messages = [{"role": "user", "content": question}]
        hf = AutoTokenizer.from_pretrained(str(folder))
        prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001  (no transformers, or no template in the folder: plain ChatML)
        pass
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=max_new_tokens)
    return tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def source(obj: Any, width: int = 88) -> str:
    """``inspect.getsource(obj)`` with its comments fitted to ``width`` columns, the code untouched: a
    trailing comment that makes a line too long moves to a line of its own above it, and a comment line
    that is too long is wrapped onto several comment lines (found with ``tokenize``, so a ``#`` inside a
    string is left alone)."""
    import inspect
    import io
    import textwrap
    import tokenize

    text = textwrap.dedent(inspect.getsource(obj))
    comments = {}  # line number -> (column, comment text)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string)
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) <= width or number not in comments:
            out.append(line)
            continue
        column, comment = comments[number]
        code = line[:column].rstrip()
        indent = line[: len(line) - len(line.lstrip())]
        body = comment.lstrip("#").strip()
        wrapped = textwrap.wrap(body, width=max(20, width - len(indent) - 2))
        out.extend(f"{indent}# {piece}" for piece in wrapped)
        if code:
            out.append(code)
    return "\n".join(out) + "\n"


def equations(rows: dict[str, Any]) -> Any:
    """Sympy expressions shown as one aligned block of equations (``name = expression`` per line), so that a
    long formula is read line by line instead of running off the page."""
    import sympy as sp
    from IPython.display import Math

    lines = [f"{name} &= {sp.latex(expr)}" for name, expr in rows.items()]
    return Math(r"\begin{aligned}" + r"\\".join(lines) + r"\end{aligned}")


# ----------------------------------------------------------------------------- training logs


def read_log(path: str | Path) -> dict[str, Any]:
    """A ``train_log.jsonl`` as {"start": header, "steps": [records], "final": final record or None}."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    start = next((r for r in records if r.get("event") == "start"), None)
    final = next((r for r in records if r.get("event") == "final"), None)
    steps = [r for r in records if "loss" in r and r.get("event") is None]
    return {"start": start, "steps": steps, "final": final}


def series(steps: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the records that have it (e.g. ``val_loss`` every few steps)."""
    pairs = [(r["step"], r[key]) for r in steps if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def smooth(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing moving average (the first values average what there is so far)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
