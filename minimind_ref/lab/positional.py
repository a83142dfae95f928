"""Chapter 2's experiments as functions: rotations, frequencies, pairings, YaRN variants, extrapolation.

The chapter's figures and explorers call these (tested) functions, so what a slider shows is what
``tests/test_positional.py`` checks. Conventions:

* ``theta_i = base ** (-2i / d)`` for the pair index ``i = 0 .. d/2 - 1`` (radians per token);
* "interleaved" is RoFormer's pairing (2i, 2i+1); "half-split" is the pairing (i, i + d/2) that
  ``minimind_ref.rope`` uses, and :func:`half_split_permutation` maps one onto the other;
* a "ratio" is theta'_i / theta_i, what a context-extension method multiplies each frequency by.
"""

from __future__ import annotations

import copy
import math

import torch

from minimind_ref.rope import precompute_freqs_cis, yarn_ramp

__all__ = [
    "inv_freqs",
    "wavelengths",
    "frequency_rows",
    "rotation",
    "rope_interleaved",
    "rope_complex",
    "complex_table",
    "half_split_permutation",
    "permute_heads",
    "sinusoidal_pe",
    "roformer_decay_bound",
    "mean_cos",
    "yarn_paper_ratio",
    "yarn_minimind_ratio",
    "yarn_documents_ratio",
    "ntk_ratio",
    "pi_ratio",
    "yarn_mscale",
    "table_ratio",
    "tables_from_freqs",
    "rotation_rows",
    "yarn_ratio_rows",
    "lag_copy_batch",
    "oracle_losses",
    "tiny_config",
    "train_tiny",
    "METHODS",
    "method_tables",
    "with_tables",
    "position_losses",
    "sequence_losses",
    "far_attention_share",
    "extrapolation_experiment",
    "held_out_stretches",
]


# ----------------------------------------------------------------------------- frequencies


def inv_freqs(dim: int, base: float = 1e6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """theta_i = base^(-2i/dim) for i = 0 .. dim/2 - 1, in radians per token."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    i = torch.arange(dim // 2, dtype=dtype)
    return torch.as_tensor(base, dtype=dtype) ** (-2 * i / dim)


def wavelengths(dim: int, base: float = 1e6) -> torch.Tensor:
    """lambda_i = 2 pi / theta_i: the tokens pair i needs for one full turn."""
    return 2 * math.pi / inv_freqs(dim, base)


def frequency_rows(dims=(64, 128), bases=(1e4, 1e6), position: int = 32_000) -> list[dict]:
    """One row per (dim, base): the fastest and slowest frequency, their wavelengths and the
    angle the slowest pair has turned through at ``position``."""
    rows = []
    for dim in dims:
        for base in bases:
            theta = inv_freqs(dim, base)
            rows.append(
                {
                    "dim": dim,
                    "base": base,
                    "theta_first": float(theta[0]),
                    "theta_last": float(theta[-1]),
                    "wavelength_first": float(2 * math.pi / theta[0]),
                    "wavelength_last": float(2 * math.pi / theta[-1]),
                    "angle_last": float(position * theta[-1]),
                }
            )
    return rows


# ----------------------------------------------------------------------------- rotations and pairings


def rotation(angle: float) -> torch.Tensor:
    """The 2x2 rotation matrix by ``angle`` radians (float64)."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, base: float = 1e6) -> torch.Tensor:
    """RoPE as RoFormer writes it: each adjacent pair (x_2i, x_2i+1) turned by m * theta_i.

    ``x`` is (..., T, d) or (..., T, heads, d) with ``positions`` of shape (T,); written with
    named tensors for reading, not for speed.
    """
    d = x.shape[-1]
    theta = inv_freqs(d, base, dtype=torch.float64)
    angles = positions.to(torch.float64)[:, None] * theta  # (T, d/2)
    if x.dim() >= 3 and x.shape[-3] == positions.shape[0]:  # (..., T, heads, d): broadcast over heads
        angles = angles[:, None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)  # (..., d/2, 2)
    return out.flatten(-2)


def complex_table(dim: int, end: int, base: float = 1e6) -> torch.Tensor:
    """e^{i m theta_i} for m < end: the complex (end, dim/2) table of Meta's LLaMA code."""
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freqs(dim, base, torch.float32))
    return torch.polar(torch.ones_like(angles), angles)


def rope_complex(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """RoPE as a complex multiplication: x (B, T, H, d), interleaved pairs read as complex numbers,
    times ``table[:T]`` (T, d/2). The same function as :func:`rope_interleaved`."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, H, d/2)
    out = torch.view_as_real(xc * table[: x.shape[1], None, :]).flatten(-2)
    return out.type_as(x)


def half_split_permutation(dim: int) -> torch.Tensor:
    """perm with x_half = x_interleaved[perm]: the interleaved pair (2i, 2i+1) moves to (i, i + d/2).

    Then ``rope_half_split(x[perm]) == rope_interleaved(x)[perm]`` for every x.
    """
    return torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])


def permute_heads(weight: torch.Tensor, n_heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the output rows of a q or k projection head by head: row j of each head becomes
    row perm[j]. (n_heads * head_dim, in) -> same shape."""
    out_features, in_features = weight.shape
    head_dim = out_features // n_heads
    return weight.view(n_heads, head_dim, in_features)[:, perm].reshape(out_features, in_features)


def sinusoidal_pe(n_pos: int, dim: int, base: float = 1e4) -> torch.Tensor:
    """The Transformer's absolute code: PE[pos, 2i] = sin(pos w_i), PE[pos, 2i+1] = cos(pos w_i),
    w_i = base^(-2i/dim). Shape (n_pos, dim), float64."""
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freqs(dim, base)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- long-term decay


def roformer_decay_bound(dim: int, base: float, distances: torch.Tensor) -> torch.Tensor:
    """RoFormer's decay curve: (1/(d/2)) sum_{j=1}^{d/2} |S_j| with S_j = sum_{k<j} e^{i Delta theta_k},
    for each relative distance Delta. The relative score is at most max|h_{k+1} - h_k| times the
    sum (not the mean) of the |S_j|."""
    theta = inv_freqs(dim, base)
    phases = torch.polar(torch.ones(1, dtype=torch.float64), torch.outer(distances.to(torch.float64), theta))
    partial = torch.cumsum(phases, dim=-1)  # (n, d/2): S_1 .. S_{d/2}
    return partial.abs().mean(-1)


def mean_cos(dim: int, base: float, distances: torch.Tensor) -> torch.Tensor:
    """(2/d) sum_i cos(Delta theta_i): the expected score of a vector with a rotated copy of itself
    Delta tokens away, when every pair carries the same energy (normalised to 1 at Delta = 0)."""
    theta = inv_freqs(dim, base)
    return torch.cos(torch.outer(distances.to(torch.float64), theta)).mean(-1)


# ----------------------------------------------------------------------------- context extension


def _r(dim: int, base: float, original_max: int) -> torch.Tensor:
    """r_i = L / lambda_i: how many full turns pair i makes in the original context L."""
    return original_max / wavelengths(dim, base)


def yarn_paper_ratio(
    dim: int,
    base: float,
    original_max: int,
    factor: float,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> torch.Tensor:
    """theta'_i / theta_i of the YaRN paper (Peng et al., eq. 17-20): gamma ramps linearly in
    r = L / lambda from 0 at r = alpha (= beta_slow) to 1 at r = beta (= beta_fast), and
    theta' = (1 - gamma) theta / s + gamma theta (gamma = 1: untouched)."""
    r = _r(dim, base, original_max)
    gamma = ((r - beta_slow) / (beta_fast - beta_slow)).clamp(0.0, 1.0)
    return (1 - gamma) / factor + gamma


def yarn_minimind_ratio(
    dim: int,
    base: float,
    original_max: int,
    factor: float,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> torch.Tensor:
    """theta'_i / theta_i of ``minimind_ref.rope`` (upstream MiniMind2, Hugging Face and the YaRN
    authors' code): its ramp g (0 = untouched, 1 = divided by s; the paper's 1 - gamma) is linear
    in the pair index between floor(i at beta_fast turns) and ceil(i at beta_slow turns)."""
    g = yarn_ramp(dim, base, original_max, beta_fast, beta_slow).to(torch.float64)
    return (1 - g) + g / factor


def yarn_documents_ratio(
    dim: int,
    base: float,
    original_max: int,
    factor: float = 4.0,
    beta_fast: float = 4.0,
    beta_slow: float = 1.0,
) -> torch.Tensor:
    """The scale of the YaRN branch in the documents' code version (upstream 4e35fb9, replaced in
    151fdf7): (beta factor - beta + 1) / (beta factor) below corr_dim, 1/factor from it on, with
    beta linear in i / (d/2 - 1) from beta_slow to beta_fast. History, not minimind_ref."""
    theta = inv_freqs(dim, base)
    half = dim // 2
    longer = (2 * math.pi / theta > original_max).nonzero()
    corr_dim = int(longer[0]) if len(longer) else half
    power = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
    beta = beta_slow + (beta_fast - beta_slow) * power
    lam = (beta * factor - beta + 1) / (beta * factor)
    return torch.where(torch.arange(half) < corr_dim, lam, torch.full_like(lam, 1 / factor))


def ntk_ratio(dim: int, factor: float) -> torch.Tensor:
    """The "NTK-aware" scaling: base' = base * s^(d/(d-2)), so theta'_i / theta_i = s^(-2i/(d-2))
    (1 for the fastest pair, exactly 1/s for the slowest)."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    return torch.as_tensor(float(factor), dtype=torch.float64) ** (-2 * i / (dim - 2))


def pi_ratio(dim: int, factor: float) -> torch.Tensor:
    """Position interpolation (Chen et al.): every frequency divided by s."""
    return torch.full((dim // 2,), 1.0 / factor, dtype=torch.float64)


def yarn_mscale(factor: float) -> float:
    """The YaRN paper's sqrt(1/t) = 0.1 ln s + 1 (eq. 22); 1 for s <= 1."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def table_ratio(cos: torch.Tensor, sin: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """theta'_i / theta_i read back from a (cos, sin) table: the angle of position 1 over theta_i."""
    half = dim // 2
    angle = torch.atan2(sin[1, :half].double(), cos[1, :half].double())
    return angle / inv_freqs(dim, base)


def tables_from_freqs(freqs: torch.Tensor, end: int, attention_factor: float = 1.0):
    """(cos, sin) of shape (end, 2 * len(freqs)) in minimind_ref's half-split layout, from any
    frequencies (float32, as ``precompute_freqs_cis`` computes them)."""
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs.to(torch.float32))
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1) * attention_factor
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1) * attention_factor
    return cos, sin


# ----------------------------------------------------------------------------- explorer data

#: The three pairs the rotation explorer draws: frequencies in radians per token.
ROTATION_THETAS = (1.0, 0.35, 0.12)
_Q = ((1.0, 0.0), (0.6, 0.8), (0.0, 1.0))  # one 2-D query pair per frequency
_K = ((0.8, 0.6), (1.0, 0.0), (-0.6, 0.8))  # one 2-D key pair per frequency
_SPACING = 2.6  # x-distance between the centres of the three circles


def _rot2(v, angle):
    c, s = math.cos(angle), math.sin(angle)
    return (c * v[0] - s * v[1], s * v[0] + c * v[1])


def _scores(offset: int, shift: int) -> tuple[list[float], float]:
    """Per-pair RoPE scores and the additive-sinusoid score for key at ``shift``, query ``offset`` later."""
    m, n = shift + offset, shift
    per_pair, absolute = [], 0.0
    for theta, q, k in zip(ROTATION_THETAS, _Q, _K, strict=True):
        qm, kn = _rot2(q, m * theta), _rot2(k, n * theta)
        per_pair.append(qm[0] * kn[0] + qm[1] * kn[1])
        pm = (math.sin(m * theta), math.cos(m * theta))  # sinusoidal code added to the pair
        pn = (math.sin(n * theta), math.cos(n * theta))
        absolute += (q[0] + pm[0]) * (k[0] + pn[0]) + (q[1] + pm[1]) * (k[1] + pn[1])
    return per_pair, absolute


def rotation_rows(offset: int = 3, shift: int = 0, max_shift: int = 24) -> list[dict]:
    """Explorer rows: three 2-D pairs (frequencies ROTATION_THETAS) of a query at position
    shift + offset and a key at position shift, and the total score against the common shift,
    for RoPE and for an additive sinusoidal code. Column ``kind`` tells the layers apart."""
    rows: list[dict] = []
    m, n = shift + offset, shift
    per_pair, _ = _scores(offset, shift)
    for p, (theta, q, k) in enumerate(zip(ROTATION_THETAS, _Q, _K, strict=True)):
        cx = p * _SPACING
        for name, v, pos in (("q", q, m), ("k", k, n)):
            tip = _rot2(v, pos * theta)
            rows.append({"kind": "vector", "vector": name, "x": cx, "y": 0.0, "x2": cx + tip[0], "y2": tip[1]})
        rows.append(
            {
                "kind": "label",
                "x": cx,
                "y": 1.35,
                "text": f"θ={theta:g}: {per_pair[p]:+.3f}",
            }
        )
    for s in range(max_shift + 1):
        pairs, absolute = _scores(offset, s)
        rows.append({"kind": "curve", "code": "rope", "n": s, "score": sum(pairs)})
        rows.append({"kind": "curve", "code": "abs", "n": s, "score": absolute})
    pairs, absolute = _scores(offset, shift)
    rows.append({"kind": "marker", "code": "rope", "n": shift, "score": sum(pairs)})
    rows.append({"kind": "marker", "code": "abs", "n": shift, "score": absolute})
    return rows


def _shared(base):
    """(data, make): the explorer's rows once, and a data-less chart with the explorer's setting
    filter for each layer. Layers made from ``base`` itself would each store every row again."""
    import altair as alt

    def make(kind_filter: str | None = None):
        chart = alt.Chart()
        setting = base.transform if isinstance(base.transform, list) else []  # none in a live redraw
        for t in setting:
            chart = chart.transform_filter(t.filter)
        return chart.transform_filter(kind_filter) if kind_filter else chart

    return base.data, make


def _circle_rows() -> list[dict]:
    """The three unit circles the pairs turn on (the same for every setting: not in the rows)."""
    rows = []
    for p in range(len(ROTATION_THETAS)):
        for j in range(41):
            a = 2 * math.pi * j / 40
            rows.append({"pair": p, "x": p * _SPACING + math.cos(a), "y": math.sin(a), "order": j})
    return rows


def draw_rotation(base):
    """Explorer ``draw``: the three rotating pairs (top) and the score against the shift (bottom)."""
    import altair as alt

    data, make = _shared(base)
    xs = alt.Scale(domain=[-1.3, 2 * _SPACING + 1.3])
    ys = alt.Scale(domain=[-1.3, 1.6])
    vec_colors = alt.Scale(domain=["q", "k"], range=["#D55E00", "#0072B2"])
    vec_legend = alt.Legend(
        orient="bottom",
        title=None,
        labelLimit=400,
        labelExpr="datum.label == 'q' ? 'query pair, at position m = n + offset' : 'key pair, at position n'",
    )
    circle = (
        alt.Chart(alt.Data(values=_circle_rows()))
        .mark_line(color="#bbbbbb", strokeWidth=1)
        .encode(
            x=alt.X("x:Q", scale=xs, title="first component of each pair"),
            y=alt.Y("y:Q", scale=ys, title="second component"),
            detail="pair:N",
            order="order:Q",
        )
    )
    vectors = (
        make("datum.kind == 'vector'")
        .mark_rule(strokeWidth=3)
        .encode(
            x=alt.X("x:Q", scale=xs),
            y=alt.Y("y:Q", scale=ys),
            x2="x2:Q",
            y2="y2:Q",
            color=alt.Color("vector:N", scale=vec_colors, legend=vec_legend),
        )
    )
    tips = (
        make("datum.kind == 'vector'")
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("x2:Q", scale=xs),
            y=alt.Y("y2:Q", scale=ys),
            color=alt.Color("vector:N", scale=vec_colors, legend=vec_legend),
        )
    )
    labels = (
        make("datum.kind == 'label'")
        .mark_text(fontSize=12)
        .encode(x=alt.X("x:Q", scale=xs), y=alt.Y("y:Q", scale=ys), text="text:N")
    )
    top = alt.layer(circle, vectors, tips, labels).properties(width=520, height=200)
    code_colors = alt.Scale(domain=["rope", "abs"], range=["#009E73", "#7f7f7f"])
    code_legend = alt.Legend(
        orient="bottom",
        title=None,
        labelLimit=400,
        labelExpr="datum.label == 'rope' ? 'RoPE: rotate q and k' : 'absolute: add sinusoids to q and k'",
    )
    curve = (
        make("datum.kind == 'curve'")
        .mark_line()
        .encode(
            x=alt.X("n:Q", title="common shift: key position n (query at n + offset)"),
            y=alt.Y("score:Q", title="total score q·k (3 pairs)"),
            color=alt.Color("code:N", scale=code_colors, legend=code_legend),
        )
    )
    marker = (
        make("datum.kind == 'marker'")
        .mark_point(filled=True, size=90)
        .encode(x="n:Q", y="score:Q", color=alt.Color("code:N", scale=code_colors))
    )
    bottom = alt.layer(curve, marker).properties(width=520, height=150)
    return alt.vconcat(top, bottom, data=data).resolve_scale(color="independent")


METHOD_LABELS = {
    "paper": "YaRN paper (ramp linear in r)",
    "minimind": "minimind_ref (ramp linear in pair index)",
    "ntk": "NTK-aware (base × s^(d/(d−2)))",
}


def yarn_ratio_rows(
    factor: float = 16.0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    original_max: int = 2048,
    dim: int = 64,
    base: float = 1e6,
) -> list[dict]:
    """Explorer rows: theta'_i / theta_i per pair for the paper's YaRN, minimind_ref's YaRN, PI and
    NTK-aware scaling, as {pair, ratio, method} (method: a key of METHOD_LABELS), PI's constant
    ratio 1/s as {pi}, and the fractional pair indices where r = L / lambda equals beta_fast and
    beta_slow, as {pair, boundary}."""
    ratios = {
        "paper": yarn_paper_ratio(dim, base, original_max, factor, beta_fast, beta_slow),
        "minimind": yarn_minimind_ratio(dim, base, original_max, factor, beta_fast, beta_slow),
        "ntk": ntk_ratio(dim, factor),
    }
    rows = [{"pi": 1.0 / factor}]  # PI divides every frequency by s: drawn as one horizontal rule
    # four significant digits: every row is stored in the page, and a plot needs no more
    rows += [
        {"pair": i, "ratio": float(f"{float(v[i]):.4g}"), "method": k}
        for k, v in ratios.items()
        for i in range(dim // 2)
    ]
    for name, turns in (("r = β_fast", beta_fast), ("r = β_slow", beta_slow)):
        i_star = dim * math.log(original_max / (turns * 2 * math.pi)) / (2 * math.log(base))
        if 0 <= i_star <= dim // 2 - 1:
            rows.append({"pair": i_star, "ratio": None, "method": None, "boundary": name})
    return rows


def draw_yarn_ratios(base):
    """Explorer ``draw``: theta'/theta against the pair index (log y), with the two boundaries."""
    import altair as alt

    data, make = _shared(base)
    xs = alt.Scale(domain=[0, 31], nice=False)
    ys = alt.Scale(type="log", domain=[0.02, 1.1], nice=False)
    order = list(METHOD_LABELS.values())
    label_of = " : ".join(f"datum.method == '{k}' ? '{v}'" for k, v in METHOD_LABELS.items()) + " : ''"
    lines = (
        make("isValid(datum.method)")
        .transform_calculate(label=label_of)
        .mark_line(point=True, clip=True)
        .encode(
            x=alt.X("pair:Q", title="pair index i (0 = fastest frequency)", scale=xs),
            y=alt.Y(
                "ratio:Q",
                scale=ys,
                title="θ′ᵢ / θᵢ (log scale)",
            ),
            color=alt.Color(
                "label:N",
                sort=order,
                scale=alt.Scale(domain=order, range=["#D55E00", "#0072B2", "#009E73"]),
                legend=alt.Legend(orient="bottom", title=None, columns=2, labelLimit=400),
            ),
            tooltip=["label:N", "pair:Q", alt.Tooltip("ratio:Q", format=".4f")],
        )
    )
    rules = (
        make("isValid(datum.boundary)")
        .mark_rule(strokeDash=[5, 4], color="#444444")
        .encode(x=alt.X("pair:Q", scale=xs), tooltip=["boundary:N", alt.Tooltip("pair:Q", format=".2f")])
    )
    text = (
        make("isValid(datum.boundary)")
        .mark_text(align="left", dx=3, y=8, fontSize=11, color="#444444")
        .encode(x=alt.X("pair:Q", scale=xs), text="boundary:N")
    )
    pi = (
        make("isValid(datum.pi)")
        .mark_rule(color="#7f7f7f", strokeWidth=2)
        .encode(y=alt.Y("pi:Q", scale=ys), tooltip=[alt.Tooltip("pi:Q", title="PI: 1/s", format=".4f")])
    )
    pi_text = (
        make("isValid(datum.pi)")
        .mark_text(align="right", x=515, dy=-7, fontSize=11, color="#555555")
        .encode(y=alt.Y("pi:Q", scale=ys), text=alt.value("PI: every frequency ÷ s"))
    )
    return alt.layer(lines, pi, pi_text, rules, text, data=data)


# ----------------------------------------------------------------------------- extrapolation


def lag_copy_batch(
    batch: int,
    seq_len: int,
    generator: torch.Generator,
    vocab: int = 32,
    p_copy: float = 0.7,
    max_lag: int = 16,
) -> torch.Tensor:
    """(batch, seq_len) token ids: each token is, with probability ``p_copy``, a copy of the token
    ``k`` places back (k uniform in 1..max_lag, where that place exists), otherwise uniform. The
    process is the same at every position, so a loss that grows with position is the model's doing."""
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    lag = torch.randint(1, max_lag + 1, (batch, seq_len), generator=generator)
    copy_it = torch.rand(batch, seq_len, generator=generator) < p_copy
    for t in range(1, seq_len):
        src = t - lag[:, t]
        ok = copy_it[:, t] & (src >= 0)
        copied = ids.gather(1, src.clamp(min=0)[:, None]).squeeze(1)
        ids[:, t] = torch.where(ok, copied, ids[:, t])
    return ids


def oracle_losses(ids: torch.Tensor, vocab: int = 32, p_copy: float = 0.7, max_lag: int = 16) -> torch.Tensor:
    """Per-position loss of the best possible predictor of :func:`lag_copy_batch` data, which knows
    the process: p(v) = p_copy * (share of the max_lag lags whose token is v) + (the chance of a
    uniform draw) / vocab,
    averaged over the batch, (seq_len - 1,) float64. Its flatness shows the data are stationary."""
    batch, seq_len = ids.shape
    out = torch.empty(seq_len - 1, dtype=torch.float64)
    for t in range(seq_len - 1):
        lags = min(max_lag, t + 1)  # the token at t + 1 can copy from t + 1 - k, k = 1 .. lags
        window = ids[:, t + 1 - lags : t + 1]  # (batch, lags)
        share = (window == ids[:, t + 1 : t + 2]).double().sum(-1) / max_lag
        # uniform unless a copy was drawn with a lag that exists: probability 1 - p_copy * lags / max_lag
        prob = p_copy * share + (1 - p_copy * lags / max_lag) / vocab
        out[t] = -prob.log().mean()
    return out


def tiny_config(seq_len: int = 64, base: float = 1e4, vocab: int = 32, **overrides):
    """The extrapolation experiment's model: one MiniMind block, hidden 64, two heads of 32."""
    from minimind_ref import MiniMindConfig

    cfg = dict(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=seq_len,
        rope_theta=base,
    )
    return MiniMindConfig(**{**cfg, **overrides})


def train_tiny(
    seed: int = 0,
    seq_len: int = 64,
    steps: int = 150,
    base: float = 1e4,
    batch: int = 32,
    lr: float = 1e-2,
    vocab: int = 32,
):
    """Train a tiny MiniMind on :func:`lag_copy_batch` data of ``seq_len`` tokens; -> (model, losses)."""
    from minimind_ref import MiniMindForCausalLM

    torch.manual_seed(seed)
    model = MiniMindForCausalLM(tiny_config(seq_len, base, vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    losses = []
    for _ in range(steps):
        ids = lag_copy_batch(batch, seq_len, gen, vocab)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


#: The position codes the extrapolation experiment compares, in the order it plots them.
METHODS = ("plain RoPE", "PI", "NTK-aware", "YaRN (minimind_ref)", "YaRN + temperature")


def method_tables(method: str, head_dim: int, end: int, base: float, train_len: int):
    """(cos, sin) tables of ``end`` positions for a model trained at ``train_len`` with ``base``,
    extended by s = end / train_len with ``method`` (one of METHODS)."""
    s = end / train_len
    if method == "plain RoPE":
        return precompute_freqs_cis(head_dim, end, base)
    if method == "PI":
        return tables_from_freqs(inv_freqs(head_dim, base, torch.float32) / s, end)
    if method == "NTK-aware":
        return precompute_freqs_cis(head_dim, end, base * s ** (head_dim / (head_dim - 2)))
    yarn = {"factor": s, "original_max_position_embeddings": train_len, "beta_fast": 32.0, "beta_slow": 1.0}
    if method == "YaRN (minimind_ref)":
        return precompute_freqs_cis(head_dim, end, base, {**yarn, "attention_factor": 1.0})
    if method == "YaRN + temperature":
        return precompute_freqs_cis(head_dim, end, base, {**yarn, "attention_factor": yarn_mscale(s)})
    raise ValueError(f"unknown method {method!r}; one of {METHODS}")


def with_tables(model, cos: torch.Tensor, sin: torch.Tensor):
    """A copy of ``model`` whose RoPE tables are (cos, sin), and whose length limit is theirs."""
    other = copy.deepcopy(model)
    other.model.freqs_cos, other.model.freqs_sin = cos, sin
    other.config.max_position_embeddings = cos.shape[0]
    return other


@torch.no_grad()
def position_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy at each position (averaged over the batch): (seq_len - 1,) float64.
    Entry t is the loss of predicting token t + 1 from tokens 0..t."""
    logits = model(ids).logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    return loss.view(ids.shape[0], -1).mean(0).double()


@torch.no_grad()
def sequence_losses(model, ids: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Next-token cross-entropy of each sequence at each position: (n, seq_len - 1) float64, computed
    ``chunk`` sequences at a time (a large vocabulary makes the logits of a whole batch heavy)."""
    rows = []
    for part in ids.split(chunk):
        logits = model(part).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), part[:, 1:].reshape(-1), reduction="none"
        )
        rows.append(loss.view(part.shape[0], -1).double())
    return torch.cat(rows)


@torch.no_grad()
def far_attention_share(model, ids: torch.Tensor, max_lag: int = 16) -> torch.Tensor:
    """Share of each query's attention weight on keys more than ``max_lag`` tokens back, averaged over
    the batch, the heads and the layers: (seq_len,) float64. Entry t is that share for the query at
    position t (0 while t <= max_lag). The weights are read from the explicit attention path of a copy
    of ``model`` (a hook on its attention dropout, the identity in eval mode)."""
    other = copy.deepcopy(model).eval()
    captured = []
    for layer in other.model.layers:
        layer.self_attn.flash = False
        layer.self_attn.attn_dropout.register_forward_hook(lambda _m, _i, out: captured.append(out.float()))
    other(ids)
    seq_len = ids.shape[1]
    far = torch.ones(seq_len, seq_len, dtype=torch.bool).tril(-(max_lag + 1))
    shares = [(w * far).sum(-1).mean((0, 1)) for w in captured]  # each (seq_len,)
    return torch.stack(shares).mean(0).double()


def extrapolation_experiment(
    seeds=(0, 1, 2),
    train_len: int = 64,
    factor: int = 8,
    steps: int = 150,
    base: float = 1e4,
    eval_batch: int = 32,
    methods=METHODS,
) -> dict:
    """Train one tiny model per seed at ``train_len`` tokens, then measure its loss at every position
    of sequences ``factor`` times longer, once per position code of ``methods``.

    Returns {"losses": {method: (n_seeds, factor * train_len - 1) tensor}, "far_share": {method:
    (n_seeds, factor * train_len) tensor, the :func:`far_attention_share` beyond the 16 lags the data
    copy from}, "train_losses": [per-seed loss curves], "settings": {...}}. The evaluation data are the same
    for every seed and method (one generator seed), so the methods are compared on identical tokens."""
    end = factor * train_len
    eval_ids = lag_copy_batch(eval_batch, end, torch.Generator().manual_seed(12345))
    out = {m: [] for m in methods}
    far = {m: [] for m in methods}
    train_curves = []
    head_dim = None
    for seed in seeds:
        model, curve = train_tiny(seed, train_len, steps, base)
        train_curves.append(curve)
        head_dim = model.config.head_dim
        for m in methods:
            cos, sin = method_tables(m, head_dim, end, base, train_len)
            extended = with_tables(model, cos, sin)
            out[m].append(position_losses(extended, eval_ids))
            far[m].append(far_attention_share(extended, eval_ids))
    settings = dict(
        seeds=tuple(seeds),
        train_len=train_len,
        factor=factor,
        steps=steps,
        base=base,
        eval_batch=eval_batch,
        head_dim=head_dim,
    )
    return {
        "losses": {m: torch.stack(v) for m, v in out.items()},
        "far_share": {m: torch.stack(v) for m, v in far.items()},
        "train_losses": train_curves,
        "settings": settings,
    }


def held_out_stretches(tokenizer, length: int, sources=None) -> torch.Tensor:
    """(n, length) token ids: the first ``length`` tokens (bos, then the text) of every validation
    document of the book's corpus that has that many, one stretch per document, so that no stretch
    crosses a document boundary. The documents are the docstrings of the validation files (the split
    is by source file, :func:`minimind_ref.data.is_validation`) of the libraries installed here, read
    without the corpus's cross-file de-duplication (which needs every file)."""
    from minimind_ref import data

    rows = []
    for name in sources or data.BOOK_SOURCES:
        root = data.source_root(name)
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            rel = path.relative_to(root)
            if data.SKIP_DIRS & set(rel.parts[:-1]) or not data.is_validation(f"{name}:{rel.as_posix()}"):
                continue
            docs = data.file_docstrings(path)
            ids = [tokenizer.bos_token_id] + list(tokenizer.encode("\n\n".join(docs))) if docs else []
            if len(ids) >= length:
                rows.append(torch.tensor(ids[:length]))
    if not rows:
        raise ValueError(f"no validation document has {length} tokens")
    return torch.stack(rows)
