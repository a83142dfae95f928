"""Chapter 3's experiments as functions: KV-cache sizes, FLOP counts, attention maps, masks,
KV-head conversion, kernel dispatch and the explorers' data.

The chapter's explorers and figures call these (tested) functions, so what the sliders show is what
``tests/test_attention_lab.py`` checks. Everything is plain PyTorch, written to be read.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch

from .normalization import _stderr_silenced

__all__ = [
    "kv_cache_bytes",
    "cache_nbytes",
    "kv_cache_rows",
    "projection_flops_per_token",
    "step_flops",
    "measured_flops",
    "count_aten_ops",
    "attention_scores",
    "attention_maps",
    "heatmap_rows",
    "convert_kv_heads",
    "sdpa_kernels",
    "allocated_peak",
    "softmax_jacobian",
    "source",
    "dot_product_logits",
    "expect_zero_mean",
    "draw_head_groups",
    "draw_mask",
    "draw_kv_cache",
    "draw_attention_heatmap",
]

#: The KV-cache explorer's y-axis (GiB, log): its settings give 2e-3 GiB at the least (8 layers, MQA,
#: head_dim 64, 2,048 tokens, int8) and 10,240 GiB at the most.
KV_EXPLORER_GIB = (1e-3, 1e5)

#: Bytes per stored value for the dtypes a KV cache is kept in.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


# ---------------------------------------------------------------------------- the KV cache


def kv_cache_bytes(
    layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int = 1, bytes_per_value: int = 2
) -> int:
    """Bytes of a KV cache: keys and values (the 2) of every layer, KV head, position and sequence."""
    for name, v in {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "batch": batch}.items():
        if v <= 0:
            raise ValueError(f"kv_cache_bytes: {name} must be positive, got {v}")
    if tokens < 0 or bytes_per_value <= 0:
        raise ValueError(f"kv_cache_bytes: tokens >= 0 and bytes_per_value > 0 needed, got {tokens}, {bytes_per_value}")
    return 2 * layers * kv_heads * head_dim * tokens * batch * bytes_per_value


def cache_nbytes(cache, filled: bool = True) -> int:
    """Bytes held by a ``minimind_ref.attention.KVCache``: its filled positions (``filled=True``) or
    everything it has allocated (its capacity)."""
    total = 0
    for store in (cache.keys, cache.values):
        for t in store:
            if t is None:
                continue
            part = t[:, :, : cache.length] if filled else t
            total += part.numel() * part.element_size()
    return total


def kv_cache_rows(
    layers: int = 32,
    heads: int = 32,
    kv_heads: int = 8,
    head_dim: int = 128,
    bytes_per_value: int = 2,
    context: int = 4096,
    batch: int = 1,
) -> list[dict]:
    """Explorer rows: one row with the KV cache of MHA (``heads`` KV heads), GQA (``kv_heads``) and MQA
    (one KV head) in GiB, as {MHA, GQA, MQA} (``draw_kv_cache`` unfolds it into three bars)."""
    if kv_heads > heads or heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    sizes = {
        name: kv_cache_bytes(layers, n_kv, head_dim, context, batch, bytes_per_value) / 2**30
        for name, n_kv in (("MHA", heads), ("GQA", kv_heads), ("MQA", 1))
    }
    return [sizes]


# ---------------------------------------------------------------------------- FLOPs


def projection_flops_per_token(config) -> int:
    """Matrix-multiply FLOPs (2 per multiply-add) of one token through one block's projections:
    q, k, v, o and the three SwiGLU matrices of a dense block."""
    d, h, h_kv, hd, f = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.intermediate_size,
    )
    if config.use_moe:
        raise ValueError("projection_flops_per_token counts a dense block; the MoE FFN depends on the routing")
    attn = 2 * d * (h * hd + 2 * h_kv * hd) + 2 * h * hd * d
    ffn = 3 * 2 * d * f
    return attn + ffn


def step_flops(config, context: int, cached: bool) -> int:
    """FLOPs of one decoding step that ends with ``context`` tokens in view, logits for the last only.

    ``cached``: one new token goes through every layer and attends to ``context`` keys.
    Not cached: all ``context`` tokens go through every layer again, and each of the ``context``
    queries is scored against all ``context`` keys, as ``FlopCounterMode`` counts attention (the
    full square, masked half included)."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    P = projection_flops_per_token(config)
    attn_per_query_key = 4 * config.num_attention_heads * config.head_dim  # q.k and weight * v
    head = 2 * config.hidden_size * config.vocab_size
    L = config.num_hidden_layers
    if cached:
        return L * (P + attn_per_query_key * context) + head
    return L * (context * P + attn_per_query_key * context * context) + head


def measured_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs ``torch.utils.flop_counter.FlopCounterMode`` counts while ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops()


def count_aten_ops(fn: Callable[[], object]) -> int:
    """How many ATen operators (the calls PyTorch dispatches to a kernel) ``fn()`` runs: each one has a
    fixed cost in eager mode, whatever its size."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            _Count.n += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _Count():
        fn()
    return _Count.n


def attention_scores(
    attn, x: torch.Tensor, position_embeddings, mask: torch.Tensor | None = None, masked: bool = True
) -> torch.Tensor:
    """The scaled scores q.k / sqrt(head_dim) that ``attn`` (a ``minimind_ref`` Attention) computes for
    input ``x`` (batch, T, hidden), (batch, heads, T, T), float32: queries and keys projected, QK-normed
    if the module has it, rotated; masked with ``mask`` (True = allowed; None = causal) when ``masked``."""
    from minimind_ref.attention import repeat_kv
    from minimind_ref.rope import apply_rotary_pos_emb

    bsz, seq_len, _ = x.shape
    q = attn.q_proj(x).view(bsz, seq_len, attn.n_heads, attn.head_dim)
    k = attn.k_proj(x).view(bsz, seq_len, attn.n_kv_heads, attn.head_dim)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
    k = repeat_kv(k, attn.n_rep)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(attn.head_dim)
    if masked:
        if mask is None:
            mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores


@torch.no_grad()
def attention_maps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, masked: bool = True
) -> torch.Tensor:
    """The attention weights of every layer and head, (layers, batch, heads, T, T), float32.

    Runs the model once and recomputes each layer's weights from the input its attention module
    received (:func:`attention_scores`, then a float32 softmax): masked as in the model (causal and
    padding) when ``masked``, else unmasked (what the softmax would give if nothing were hidden).
    """
    captured = []

    def grab(module, args):
        captured.append((module, *args))

    hooks = [layer.self_attn.register_forward_pre_hook(grab) for layer in model.model.layers]
    try:
        model(input_ids, attention_mask=attention_mask)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for attn, x, pos, *rest in captured:
        mask = rest[0] if rest else None
        maps.append(attention_scores(attn, x, pos, mask, masked).softmax(-1))
    return torch.stack(maps)


def heatmap_rows(
    maps: dict, tokens: Sequence[str], layer: int = 0, head: int = 0, view: str | None = None, min_weight: float = 0.0
) -> list[dict]:
    """Explorer rows of one attention map: {query, key, q_label, k_label, weight}.

    ``maps`` maps each ``view`` name to a (layers, heads, T, T) tensor (or a dict of them with their own
    token lists as ``(tensor, tokens)``); entries with weight <= ``min_weight`` are left out (masked
    positions are exactly 0), which keeps the page small."""
    entry = maps[view if view is not None else next(iter(maps))]
    if isinstance(entry, tuple):
        entry, tokens = entry
    w = entry[layer, head]
    labels = [f"{i:02d} {t}" for i, t in enumerate(tokens)]
    rows = []
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            val = float(w[i, j])
            if val > min_weight:
                rows.append({"query": i, "key": j, "q_label": labels[i], "k_label": labels[j], "weight": val})
    return rows


# ---------------------------------------------------------------------------- MHA -> GQA -> MQA


def convert_kv_heads(model, n_kv: int, method: str = "mean", seed: int = 0):
    """A copy of ``model`` with ``n_kv`` KV heads per layer, its k and v projections
    built from the old ones (every other weight is copied unchanged).

    ``method``: "mean" averages the heads of each group (Ainslie et al.'s conversion),
    "first" keeps the first head of each group, "random" draws new heads (a control,
    at the scale of the old ones).
    """
    from minimind_ref.config import MiniMindConfig

    cfg = model.config
    old = cfg.num_key_value_heads
    if n_kv < 1 or old % n_kv:
        raise ValueError(f"n_kv={n_kv} must divide the model's {old} KV heads")
    if method not in ("mean", "first", "random"):
        raise ValueError(f"method must be 'mean', 'first' or 'random', got {method!r}")
    new_cfg = MiniMindConfig.from_dict({**cfg.to_dict(), "num_key_value_heads": n_kv})
    new = type(model)(new_cfg).to(next(model.parameters()).dtype)
    state = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    group, hd, d = old // n_kv, cfg.head_dim, cfg.hidden_size
    for name in list(state):
        if name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            w = state[name].view(n_kv, group, hd, d)  # (new heads, per group, hd, d)
            if method == "mean":
                w = w.mean(1)
            elif method == "first":
                w = w[:, 0]
            else:
                w = torch.randn(w[:, 0].shape, generator=g, dtype=w.dtype) * w.std()
            state[name] = w.reshape(n_kv * hd, d).contiguous()
    new.load_state_dict(state)
    return new.eval()


# ---------------------------------------------------------------------------- kernels and memory


# the profiler's C++ start/stop lines would land in the page: chapter 1's helper silences them
_quiet_stderr = _stderr_silenced


def sdpa_kernels(fn: Callable[[], object]) -> list[str]:
    """Names of the attention operators that ``fn()`` runs, from the PyTorch profiler (in call order,
    without repeats): what ``scaled_dot_product_attention`` dispatched to on this device."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        fn()
    names = []
    for ev in prof.events():
        if "attention" in ev.name and ev.name not in names:
            names.append(ev.name)
    return names


def allocated_peak(fn: Callable[[], object]) -> int:
    """Peak bytes that tensors allocated while ``fn()`` runs hold at once on the CPU (its result counts
    until it is released), from the allocation and release events the PyTorch profiler records."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        out = fn()
        del out
    # every allocation (+bytes) and release (-bytes), in time order; kineto_results holds them all,
    # including those made inside operators
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return peak


# ---------------------------------------------------------------------------- small mathematics


def source(obj, width: int = 88) -> str:
    """``inspect.getsource(obj)`` fitted to the book's column of ``width`` characters without changing
    the code: a trailing comment that makes a line too long moves onto its own line above it (same
    indentation), a docstring paragraph or comment block with a line too long is re-wrapped at its
    indentation, and ``ruff format`` (where installed) reflows the code, which keeps its syntax tree."""
    import inspect
    import textwrap

    blocks = []  # (kind, indent, lines): kind "code", "doc" (a docstring paragraph) or "comment"
    in_doc = False
    for line in inspect.getsource(obj).splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        stripped = line.strip()
        is_doc = in_doc or stripped.startswith('"""')
        if stripped.count('"""') % 2 == 1:
            in_doc = not in_doc
        if is_doc and stripped and stripped != '"""':
            if blocks and blocks[-1][0] == "doc" and blocks[-1][2][-1].strip():
                blocks[-1][2].append(line)
            else:
                blocks.append(("doc", indent, [line]))
        elif stripped.startswith("#"):
            if blocks and blocks[-1][0] == "comment" and blocks[-1][1] == indent:
                blocks[-1][2].append(line)
            else:
                blocks.append(("comment", indent, [line]))
        elif len(line) > width and "  # " in line and not is_doc:
            code, comment = line.split("  # ", 1)
            blocks.append(("comment", indent, [indent + "# " + comment]))
            blocks.append(("code", indent, [code.rstrip()]))
            blocks.append(("code", indent, []))  # the next comment starts a block of its own
        else:
            blocks.append(("code", indent, [line]))
    out = []
    for kind, indent, lines in blocks:
        if kind == "code" or max(len(line) for line in lines) <= width:
            out.extend(lines)
            continue
        prefix = indent + ("# " if kind == "comment" else "")
        text = " ".join(line.strip().removeprefix("#").strip() if kind == "comment" else line.strip()
                        for line in lines)
        out.extend(textwrap.wrap(text, width, initial_indent=prefix, subsequent_indent=prefix))
    return _ruff_format("\n".join(out) + "\n", width).rstrip("\n")


def _ruff_format(src: str, width: int) -> str:
    """``src`` reflowed by ``ruff format`` at ``width`` columns (the same code: ruff checks that the syntax
    tree is unchanged), or unchanged where ruff is not installed."""
    import shutil
    import subprocess
    import textwrap

    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    if not os.path.exists(ruff):
        return src
    body = textwrap.dedent(src)
    indent = src[: len(src) - len(src.lstrip(" "))]
    done = subprocess.run(
        [ruff, "format", "--quiet", "--line-length", str(width - len(indent)), "--stdin-filename", "source.py", "-"],
        input=body, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        return src
    return textwrap.indent(done.stdout, indent)


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """d softmax / d logits = diag(p) - p p^T for a probability vector p (last dimension)."""
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def dot_product_logits(d_k: int, n: int = 20_000, scaled: bool = True, seed: int = 0) -> torch.Tensor:
    """q . k for n pairs of independent standard-normal vectors of dimension d_k, divided by
    sqrt(d_k) when ``scaled``: variance d_k unscaled, 1 scaled."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(n, d_k, generator=g, dtype=torch.float64)
    s = (q * k).sum(-1)
    return s / math.sqrt(d_k) if scaled else s


def expect_zero_mean(expr, second_moments: dict):
    """E[expr] for a polynomial in independent, zero-mean, symmetric random variables.

    ``second_moments`` maps each variable (a sympy Symbol) to E[x^2]. The expectation of a monomial
    factorises over independent variables; E[x] = 0 and every odd moment vanishes (symmetry);
    E[x^2] is given; higher even moments are not needed here and raise."""
    import sympy as sp

    variables = list(second_moments)
    total = sp.Integer(0)
    for powers, coeff in sp.Poly(sp.expand(expr), *variables).terms():
        term = coeff
        for var, p in zip(variables, powers, strict=True):
            if p % 2:
                term = 0
                break
            if p == 2:
                term *= second_moments[var]
            elif p > 2:
                raise ValueError(f"moment E[{var}^{p}] is not given")
        total += term
    return sp.simplify(total)


# ---------------------------------------------------------------------------- figures


def draw_head_groups(ax, n_heads: int, n_kv: int, title: str) -> None:
    """Query heads (top row) joined to the KV head each one reads (bottom row): h -> h // (n_heads // n_kv)."""
    from matplotlib.patches import Rectangle

    if n_heads % n_kv:
        raise ValueError(f"n_kv={n_kv} must divide n_heads={n_heads}")
    n_rep = n_heads // n_kv
    palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7f7f7f", "#F0E442"]
    width = 0.8
    kv_x = [(g * n_rep + (n_rep - 1) / 2) for g in range(n_kv)]  # each KV head under its group
    for h in range(n_heads):
        g = h // n_rep
        color = palette[g % len(palette)]
        ax.add_patch(Rectangle((h - width / 2, 1.6), width, 0.6, facecolor=color, alpha=0.35, edgecolor=color))
        ax.text(h, 1.9, f"q{h}", ha="center", va="center", fontsize=9)
        ax.plot([h, kv_x[g]], [1.6, 0.6], color=color, linewidth=1.2)
    for g, x in enumerate(kv_x):
        color = palette[g % len(palette)]
        ax.add_patch(Rectangle((x - width / 2, 0.0), width, 0.6, facecolor=color, alpha=0.8, edgecolor=color))
        ax.text(x, 0.3, f"kv{g}", ha="center", va="center", fontsize=9, color="white")
    ax.set_xlim(-0.7, n_heads - 0.3)
    ax.set_ylim(-0.2, 2.4)
    ax.set_yticks([0.3, 1.9], ["KV heads\n(cached)", "query heads"])
    ax.set_xticks([])
    ax.grid(False)
    ax.set_title(title)
    ax.set_xlabel(f"{n_heads} query heads, {n_kv} KV head{'s' if n_kv > 1 else ''}: n_rep = {n_rep}")


def draw_mask(
    ax,
    allowed: torch.Tensor,
    title: str,
    xlabel: str = "key position j",
    ylabel: str = "query position i",
    x_offset: int = 0,
) -> None:
    """A boolean mask (True = may attend) as a grid of dark (allowed) and light (masked) cells."""
    from matplotlib.colors import ListedColormap

    a = allowed.to(torch.float32).numpy()
    ax.imshow(a, cmap=ListedColormap(["#f2f2f2", "#0072B2"]), vmin=0, vmax=1, aspect="equal")
    rows, cols = a.shape
    ax.set_xticks(range(cols), [str(j + x_offset) for j in range(cols)], fontsize=8)
    ax.set_yticks(range(rows), [str(i) for i in range(rows)], fontsize=8)
    ax.set_xticks([x - 0.5 for x in range(1, cols)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, rows)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.grid(which="major", visible=False)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def draw_kv_cache(base):
    """Explorer ``draw``: one bar per attention variant (GiB, log scale) with its size written above it."""
    import altair as alt

    order = ["MHA", "GQA", "MQA"]
    long = base.transform_fold(order, as_=["attention", "gib"]).transform_calculate(
        text="datum.gib >= 1024 ? format(datum.gib / 1024, '.3~r') + ' TiB' : "
        "(datum.gib >= 1 ? format(datum.gib, '.3~r') + ' GiB' : format(datum.gib * 1024, '.3~r') + ' MiB')",
        kv="datum.attention == 'MHA' ? datum.heads : (datum.attention == 'GQA' ? datum.kv_heads : 1)",
    )
    x = alt.X("attention:N", sort=order, title="attention variant", axis=alt.Axis(labelAngle=0))
    lo, hi = KV_EXPLORER_GIB
    y = alt.Y("gib:Q", scale=alt.Scale(type="log", domain=[lo, hi]), title="KV-cache size (GiB, log scale)")
    color = alt.Color(
        "attention:N", sort=order, scale=alt.Scale(domain=order, range=["#0072B2", "#D55E00", "#009E73"]), legend=None
    )
    bars = long.mark_bar().encode(
        x=x,
        y=y,
        y2=alt.datum(lo),  # a log axis has no zero: the bars start at its bottom
        color=color,
        tooltip=["attention:N", alt.Tooltip("kv:Q", title="KV heads"), "text:N"],
    )
    labels = long.mark_text(dy=-8, fontSize=12).encode(x=x, y=y, text="text:N")
    return bars + labels


def draw_attention_heatmap(base):
    """Explorer ``draw``: the weights of one head as a heat map, queries down, keys across."""
    import altair as alt

    return base.mark_rect().encode(
        x=alt.X("k_label:O", sort=alt.EncodingSortField("key"), title="key (position and token)"),
        y=alt.Y("q_label:O", sort=alt.EncodingSortField("query"), title="query (position and token)"),
        color=alt.Color(
            "weight:Q",
            scale=alt.Scale(scheme="blues", domain=[0, 1]),
            legend=alt.Legend(title="weight"),
        ),
        tooltip=["q_label:N", "k_label:N", alt.Tooltip("weight:Q", format=".3f")],
    )
