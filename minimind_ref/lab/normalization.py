"""Chapter 1's experiments as functions: normalisers, dtype behaviour, and the explorers' data.

The chapter's explorers call these (tested) functions, so what the sliders show is what
``tests/test_lab.py`` checks. The normalisers are written out plainly (no fused kernels) to be read.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import torch

__all__ = [
    "vector_with_stats",
    "layer_norm",
    "rms_norm",
    "naive_rms_norm",
    "prms_norm",
    "norm_error_vs_scale",
    "norm_vector_rows",
    "dtype_error_rows",
    "batch_norm_tokens",
    "affine_fit_residual",
    "saved_for_backward",
    "aten_ops",
    "iid_baseline",
    "norm_inputs",
    "norm_input_stats",
    "dominant_dimension",
    "PostLNBlock",
    "set_norm_placement",
    "markov_chain",
    "markov_batch",
    "tiny_config",
    "train_tiny",
    "depth_probe",
    "plot_sphere",
]


def vector_with_stats(mu: float, sigma: float, n: int = 16, seed: int = 0) -> torch.Tensor:
    """A float64 vector of n components whose mean is exactly ``mu`` and (population) std ``sigma``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=torch.float64)
    z = (z - z.mean()) / z.std(unbiased=False)
    return mu + sigma * z


def layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the last dimension, no gain or bias."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased (population) variance, as LayerNorm uses
    return (x - mu) / torch.sqrt(var + eps)


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dimension, no gain."""
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def naive_rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm computed entirely in the input's dtype: what happens without the float32 round trip."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def prms_norm(x: torch.Tensor, p: float = 0.0625, eps: float = 1e-5) -> torch.Tensor:
    """Partial RMSNorm (Zhang & Sennrich 2019): the RMS estimated from the first ceil(p*D) components."""
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    k = max(1, math.ceil(p * x.shape[-1]))
    return x / torch.sqrt((x[..., :k] ** 2).mean(-1, keepdim=True) + eps)


def norm_error_vs_scale(
    scales, dtype: torch.dtype, *, upcast: bool, dim: int = 512, eps: float = 1e-5, seed: int = 0
) -> torch.Tensor:
    """Largest |error| of RMSNorm's output in ``dtype`` against float64, per input scale.

    The input is a fixed random vector scaled so that its largest |component| equals each value of
    ``scales`` (float16 overflows when that component's square does, i.e. from 256 on).

    ``upcast=True`` computes as ``minimind_ref.norm.RMSNorm`` does (statistics in float32, result cast
    back); ``upcast=False`` computes everything in ``dtype``. A non-finite output counts as an
    infinite error. The output of RMSNorm has RMS about 1, so this is also a relative error.
    """
    from minimind_ref.norm import RMSNorm

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(dim, generator=g, dtype=torch.float64)
    z = z / z.abs().max()
    norm = RMSNorm(dim, eps=eps)
    errs = []
    for s in torch.as_tensor(scales, dtype=torch.float64).tolist():
        x = (s * z).to(dtype)  # the input as the dtype stores it
        ref = rms_norm(x.to(torch.float64), eps)  # exact normalisation of that stored input
        with torch.no_grad():
            y = norm(x) if upcast else naive_rms_norm(x, eps)
        y = y.to(torch.float64)
        errs.append(float((y - ref).abs().max()) if torch.isfinite(y).all() else math.inf)
    return torch.tensor(errs, dtype=torch.float64)


def norm_vector_rows(mu: float = 0.0, sigma: float = 1.0, eps: float = 1e-5, n: int = 12) -> list[dict]:
    """Explorer rows: the components of a vector (mean ``mu``, std ``sigma``) before and after
    LayerNorm and RMSNorm, as {component, value, series}."""
    x = vector_with_stats(mu, sigma, n)
    series = {"input x": x, "LayerNorm(x)": layer_norm(x, eps), "RMSNorm(x)": rms_norm(x, eps)}
    return [{"component": i, "value": float(v[i]), "series": name} for name, v in series.items() for i in range(n)]


def dtype_error_rows(statistics: str = "float32 (minimind_ref)", eps: float = 1e-5, dim: int = 512) -> list[dict]:
    """Explorer rows: RMSNorm's output error against float64 as the input grows, per dtype, as
    {scale, error, dtype}; ``statistics`` is "float32 (minimind_ref)" (upcast) or "input dtype (naive)".
    A non-finite output (float16 overflow) is shown at the cap of 10."""
    if statistics not in ("float32 (minimind_ref)", "input dtype (naive)"):
        raise ValueError(f"statistics must be 'float32 (minimind_ref)' or 'input dtype (naive)', got {statistics!r}")
    upcast = statistics.startswith("float32")
    scales = torch.logspace(-3, 4, 29, dtype=torch.float64)
    rows = []
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        err = norm_error_vs_scale(scales, dt, upcast=upcast, dim=dim, eps=eps).clamp(min=1e-9, max=10.0)
        name = str(dt).removeprefix("torch.")
        rows += [{"scale": float(s), "error": float(e), "dtype": name} for s, e in zip(scales, err, strict=True)]
    return rows


def draw_norm_vector(base):
    """Explorer ``draw``: grouped bars of input, LayerNorm and RMSNorm per component."""
    import altair as alt

    order = ["input x", "LayerNorm(x)", "RMSNorm(x)"]
    return base.mark_bar().encode(
        x=alt.X("component:O", title="component index i"),
        xOffset=alt.XOffset("series:N", sort=order),
        y=alt.Y("value:Q", title="value (dimensionless)"),
        color=alt.Color(
            "series:N",
            sort=order,
            legend=alt.Legend(orient="bottom", title=None),
            scale=alt.Scale(domain=order, range=["#7f7f7f", "#0072B2", "#D55E00"]),
        ),
        tooltip=["series:N", "component:O", alt.Tooltip("value:Q", format=".4f")],
    )


def draw_dtype_errors(base):
    """Explorer ``draw``: output error against input scale per dtype (log-log), float16's x^2 limit marked."""
    import altair as alt

    order = ["float32", "bfloat16", "float16"]
    x = alt.X("scale:Q", scale=alt.Scale(type="log"), title="largest |x_i| of the input (log scale)")
    curves = base.mark_line(point=True, clip=True).encode(
        x=x,
        y=alt.Y(
            "error:Q",
            scale=alt.Scale(type="log", domain=[1e-9, 20]),
            axis=alt.Axis(format="~e"),
            title="max |error| vs float64 (log)",
        ),
        color=alt.Color(
            "dtype:N",
            sort=order,
            legend=alt.Legend(orient="bottom", title=None),
            scale=alt.Scale(domain=order, range=["#0072B2", "#D55E00", "#009E73"]),
        ),
        tooltip=["dtype:N", alt.Tooltip("scale:Q", format=".3g"), alt.Tooltip("error:Q", format=".2e")],
    )
    limit = alt.Chart(alt.Data(values=[{"scale": 256.0, "note": "256: float16 x² overflows"}]))
    rule = limit.mark_rule(strokeDash=[5, 4], color="#444444").encode(x=x)
    note = limit.mark_text(align="left", dx=4, dy=-90, fontSize=11, color="#444444").encode(x=x, text="note:N")
    return curves + rule + note


# ----------------------------------------------------------------------------- History: BatchNorm


def batch_norm_tokens(h: torch.Tensor) -> torch.Tensor:
    """BatchNorm as a language model would apply it: each feature normalised over all (batch, position)
    pairs of a (B, T, D) tensor, training-mode statistics, no gain or shift."""
    d = h.shape[-1]
    return torch.nn.functional.batch_norm(h.reshape(-1, d), None, None, training=True).reshape(h.shape)


# ----------------------------------------------------------------------------- Core idea


def affine_fit_residual(x: torch.Tensor) -> float:
    """Relative residual ||LN - fit|| / ||LN|| of the best affine map from RMSNorm(x) to LayerNorm(x).

    One matrix A and one vector b, shared by all the tokens (rows) of ``x``, fitted by least squares
    (eps = 0, float64). Zero when every token has the same mean-to-spread ratio; larger as it varies.
    """
    x = x.to(torch.float64)
    r = rms_norm(x, 0.0)
    target = layer_norm(x, 0.0)
    design = torch.cat([r, torch.ones(r.shape[0], 1, dtype=r.dtype)], dim=1)  # [RMSNorm(x), 1]
    coef = torch.linalg.lstsq(design, target).solution
    return float((target - design @ coef).norm() / target.norm())


# ----------------------------------------------------------------------------- Performance


def saved_for_backward(fn, x: torch.Tensor) -> list[tuple[tuple[int, ...], torch.dtype, int, bool]]:
    """What autograd keeps for the backward pass of ``fn(x)``: one entry per distinct storage,
    ``(shape, dtype, bytes, is_x)`` where ``is_x`` marks the input itself (measured with
    ``torch.autograd.graph.saved_tensors_hooks``)."""
    kept: dict[int, tuple[tuple[int, ...], torch.dtype, int, bool]] = {}
    x_ptr = x.untyped_storage().data_ptr()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        kept[storage.data_ptr()] = (tuple(t.shape), t.dtype, storage.nbytes(), storage.data_ptr() == x_ptr)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return list(kept.values())


#: Operators that allocate, reshape or convert, but do not compute on the data.
_BOOKKEEPING = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view", "aten::reshape",
                "aten::to", "aten::_to_copy", "aten::copy_", "aten::result_type", "aten::type_as",
                "aten::promote_types", "aten::fill_", "aten::detach", "aten::alias", "aten::expand",
                "aten::as_strided", "aten::resize_", "aten::contiguous", "aten::unsqueeze", "aten::zeros",
                "aten::zero_", "aten::lift_fresh", "aten::t", "aten::transpose"}


@contextlib.contextmanager
def _stderr_silenced():
    """Silence file descriptor 2 (the profiler's C++ library logs its start and stop there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def aten_ops(fn) -> list[str]:
    """The ATen operators that do arithmetic when ``fn()`` runs (profiled on the CPU), innermost
    first: an operator is listed only if no operator it calls does arithmetic itself. Allocation,
    views and dtype conversions are left out."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm up: lazy initialisation stays out of the profile
    with _stderr_silenced(), torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::") and e.name not in _BOOKKEEPING]
    parents = set()
    for e in events:
        p = e.cpu_parent
        while p is not None:
            parents.add(p.id)
            p = p.cpu_parent
    ordered = sorted((e for e in events if e.id not in parents), key=lambda e: e.time_range.start)
    return [e.name.removeprefix("aten::") for e in ordered]


# ----------------------------------------------------------------------------- In practice


def iid_baseline(dim: int, n: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Medians of |mean| / RMS and of max_i |x_i| / RMS over ``n`` vectors of ``dim`` independent
    N(0, 1) components: what the statistics of :func:`norm_input_stats` are when there is no
    systematic mean and no outlier feature (the first is about 0.6745 / sqrt(dim))."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    rms = z.pow(2).mean(-1).sqrt()
    return float((z.mean(-1).abs() / rms).median()), float((z.abs().amax(-1) / rms).median())


def norm_inputs(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of each RMSNorm of a MiniMind (two per block, named ``"<i>.attn"`` and ``"<i>.mlp"``,
    then ``"final"``) during one forward pass of ``ids``, as float32 (tokens, hidden) tensors, from
    forward pre-hooks."""
    inputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, args):
            h = args[0].detach().float()
            inputs[name] = h.reshape(-1, h.shape[-1])

        return record

    norms = {}
    for i, block in enumerate(model.model.layers):
        norms[f"{i}.attn"] = block.input_layernorm
        norms[f"{i}.mlp"] = block.post_attention_layernorm
    norms["final"] = model.model.norm
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in norms.items()]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return inputs


def norm_input_stats(model, ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each RMSNorm of a MiniMind (two per block, then the final one), per token of its input:
    ``(|mean| / RMS, max_i |x_i| / RMS)`` (see :func:`norm_inputs`)."""
    stats = {}
    for name, h in norm_inputs(model, ids).items():
        rms = h.pow(2).mean(-1).sqrt()
        stats[name] = (h.mean(-1).abs() / rms, h.abs().amax(-1) / rms)
    return stats


def dominant_dimension(h: torch.Tensor) -> tuple[int, float]:
    """For (tokens, D) hidden states: the dimension that most often holds a token's largest |component|,
    and the share of tokens for which it does (about 1/D, plus sampling noise, when no dimension stands
    out; near 1 when one feature dimension dominates every token)."""
    counts = torch.bincount(h.abs().argmax(-1), minlength=h.shape[-1])
    top = int(counts.argmax())
    return top, float(counts[top]) / h.shape[0]


def _block_class():
    from minimind_ref.model import MiniMindBlock

    return MiniMindBlock


class PostLNBlock(_block_class()):
    """The original Transformer's order: normalise *after* each residual addition."""

    def forward(self, hidden_states, position_embeddings, attn_mask=None,
                cache=None):
        h = hidden_states
        attn = self.self_attn(h, position_embeddings, attn_mask, cache)
        h = self.input_layernorm(h + attn)  # LN(h + Attn(h))
        return self.post_attention_layernorm(h + self.mlp(h))  # LN(h + MLP(h))


def set_norm_placement(model, placement: str):
    """Rewire a MiniMindForCausalLM in place (same weights): ``"pre"`` (MiniMind's RMSNorm, unchanged),
    ``"post"`` (post-LN blocks), ``"none"`` (every norm replaced by the identity) or ``"layernorm"``
    (pre-LN with bias-free LayerNorm instead of RMSNorm). Returns the model."""
    from torch import nn

    layers = model.model.layers
    d = model.config.hidden_size
    if placement == "pre":
        pass
    elif placement == "post":
        for block in layers:
            block.__class__ = PostLNBlock
    elif placement in ("none", "layernorm"):
        def make():
            return nn.Identity() if placement == "none" else nn.LayerNorm(d, eps=1e-5, bias=False)

        for block in layers:
            block.input_layernorm, block.post_attention_layernorm = make(), make()
        model.model.norm = make()
    else:
        raise ValueError(f"placement must be 'pre', 'post', 'none' or 'layernorm', got {placement!r}")
    return model


def markov_chain(vocab: int = 64, sharpness: float = 3.0, seed: int = 0) -> torch.Tensor:
    """A random first-order Markov chain over ``vocab`` symbols: row i holds P(next | i)."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(vocab, vocab, generator=g), dim=-1)


def markov_batch(transition: torch.Tensor, batch: int, seq: int, seed: int) -> torch.Tensor:
    """``batch`` sequences of ``seq`` symbols drawn from the chain (uniform first symbol)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(batch, seq, dtype=torch.long)
    ids[:, 0] = torch.randint(0, transition.shape[0], (batch,), generator=g)
    for t in range(1, seq):
        ids[:, t] = torch.multinomial(transition[ids[:, t - 1]], 1, generator=g).squeeze(1)
    return ids


def tiny_config(vocab: int = 64, hidden: int = 64, layers: int = 6, seq: int = 32):
    """A MiniMind small enough to train for a few dozen steps in about a second on one CPU core."""
    from minimind_ref.config import MiniMindConfig

    return MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=seq)


def train_tiny(placement: str, *, seed: int, lr: float, batches: torch.Tensor, val: torch.Tensor,
               config=None) -> tuple[list[float], float]:
    """Train a tiny MiniMind with the given norm ``placement`` (see :func:`set_norm_placement`) on
    ``batches`` (steps, B, T) with AdamW at a constant ``lr`` (no warm-up). Returns the training losses
    (NaN once it diverges) and the final loss on ``val``."""
    from minimind_ref.model import MiniMindForCausalLM

    torch.manual_seed(seed)
    config = config or tiny_config(seq=batches.shape[-1])
    model = set_norm_placement(MiniMindForCausalLM(config), placement)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses: list[float] = []
    for ids in batches:
        loss = model(ids, labels=ids).loss
        if not torch.isfinite(loss):  # diverged: no point in going on
            losses += [math.nan] * (len(batches) - len(losses))
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        val_loss = model(val, labels=val).loss.item()
    return losses, val_loss if math.isfinite(val_loss) else math.nan


def depth_probe(placement: str = "pre", *, layers: int, seed: int = 0, hidden: int = 128,
                embed_scale: float = 1.0) -> dict[str, list[float]]:
    """At initialisation, one language-modelling loss on random tokens through a MiniMind of ``layers``
    blocks with the given norm ``placement``: ``"stream"``, the RMS of the residual stream entering each
    block and then the final norm (``layers + 1`` values), and ``"ffn_out_grad"``, the Frobenius norm of
    the gradient of each block's last feed-forward matrix (``mlp.down_proj``, Xiong et al.'s
    :math:`W^{2,l}`). ``embed_scale`` multiplies the token embeddings on their way into the first block."""
    from minimind_ref.model import MiniMindForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(vocab=256, hidden=hidden, layers=layers, seq=32)
    model = set_norm_placement(MiniMindForCausalLM(cfg), placement)
    if embed_scale != 1.0:
        model.model.embed_tokens.register_forward_hook(lambda m, a, out: out * embed_scale)
    stream: list[float] = []

    def record(module, args):
        stream.append(float(args[0].detach().pow(2).mean().sqrt()))

    for block in model.model.layers:
        block.register_forward_pre_hook(record)
    model.model.norm.register_forward_pre_hook(record)
    ids = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(seed + 1))
    model(ids, labels=ids).loss.backward()
    grads = [float(block.mlp.down_proj.weight.grad.norm()) for block in model.model.layers]
    return {"stream": stream, "ffn_out_grad": grads}


def plot_sphere(ax, x=(2.0, 1.0), scales=(0.4, 1.0, 1.7), u=(1.0, 0.6)) -> dict[str, torch.Tensor]:
    """RMSNorm in D = 2, drawn: inputs ``s * x`` for each scale land on one point of the circle of radius
    sqrt(2); the gradient with respect to the input (for an upstream gradient ``u``) is tangent to the
    circle through x. Returns the computed points and gradient (for tests)."""
    from .plots import COLORS

    x = torch.tensor(x, dtype=torch.float64)
    xs = torch.stack([s * x for s in scales])
    ys = rms_norm(xs, 0.0)
    xr = x.clone().requires_grad_(True)
    (torch.tensor(u, dtype=torch.float64) * rms_norm(xr, 0.0)).sum().backward()
    grad = xr.grad
    t = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    radius = math.sqrt(2)
    ax.plot(radius * t.cos(), radius * t.sin(), color=COLORS["rmsnorm"],
            label=r"RMSNorm's outputs: radius $\sqrt{D}=\sqrt{2}$")
    rx = float(x.norm())
    ax.plot(rx * t.cos(), rx * t.sin(), color=COLORS["input"], linestyle=":", linewidth=1.2,
            label="circle through x (same length)")
    far = xs[-1] * 1.15
    ax.plot([0, float(far[0])], [0, float(far[1])], color="#444444", linewidth=0.8)
    ax.scatter(xs[:, 0], xs[:, 1], color=COLORS["input"], zorder=3,
               label=r"inputs $s\,x$, $s$ = " + ", ".join(f"{s:g}" for s in scales))
    ax.scatter([float(ys[0, 0])], [float(ys[0, 1])], color=COLORS["rmsnorm"], s=80, zorder=4,
               label="their RMSNorm (one point)")
    g = grad / grad.norm() * 0.9
    ax.annotate("", xy=(float(x[0] + g[0]), float(x[1] + g[1])), xytext=(float(x[0]), float(x[1])),
                arrowprops=dict(arrowstyle="->", color=COLORS["layernorm"], linewidth=2))
    ax.text(float(x[0] + g[0]) + 0.05, float(x[1] + g[1]), "gradient\nw.r.t. x", color=COLORS["layernorm"],
            fontsize=9)
    ax.set_aspect("equal")
    reach = max(rx, float(far.abs().max())) + 0.3
    ax.set_xlim(-rx - 0.3, reach)
    ax.set_ylim(-rx - 0.3, rx + 0.3)
    return {"inputs": xs, "outputs": ys, "grad": grad, "x": x}
