"""Chapter 4's experiments as functions: activations, the GLU family, FFN widths, memory, FLOPs, explorers.

The chapter builds the feed-forward block from these pieces and proves them equal to
``minimind_ref.ffn.FeedForward``; its explorers call the ``*_rows`` functions, so what the sliders show
is what ``tests/test_ffn_lab.py`` checks. Everything is written out plainly, to be read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "swish",
    "gelu_tanh",
    "gelu_sigmoid",
    "ACTIVATIONS",
    "GLU_GATES",
    "glu_ffn",
    "GatedFFN",
    "PlainFFN",
    "ffn_width",
    "upstream_width",
    "llama_width",
    "minimind3_width",
    "fuse_gate_up",
    "fused_forward",
    "saved_activation_elements",
    "live_intermediates",
    "matmul_flops",
    "derivative",
    "activation_rows",
    "reference_rows",
    "draw_activation",
    "surface_rows",
    "draw_surface",
    "gate_histogram_rows",
    "draw_gate_histogram",
]


# ----------------------------------------------------------------------------- activations


def swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Swish_beta(x) = x * sigmoid(beta * x) (Ramachandran et al.); beta = 1 is SiLU, beta = 0 gives x / 2."""
    return x * torch.sigmoid(beta * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Hendrycks and Gimpel's tanh approximation of GELU, written out (what GPT-2's code computes)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hendrycks and Gimpel's cheaper approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: The activations of a plain two-matrix FFN, by name.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ReLU": F.relu,
    "GELU": F.gelu,  # the exact form x * Phi(x), with erf
    "GELU (tanh)": gelu_tanh,
    "GELU (sigmoid 1.702)": gelu_sigmoid,
    "SiLU": F.silu,
}

#: The gated family of Shazeer (2020): the same three matrices, only the gate's activation differs.
GLU_GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "GLU": torch.sigmoid,
    "Bilinear": _identity,
    "ReGLU": F.relu,
    "GEGLU": F.gelu,
    "SwiGLU": F.silu,
}


# ----------------------------------------------------------------------------- the feed-forward blocks


def glu_ffn(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu,
) -> torch.Tensor:
    """W_down (act(W_gate x) * W_up x): the whole GLU family, one activation per member.

    Weights are stored as ``nn.Linear`` stores them: (out_features, in_features).
    """
    gate = act(F.linear(x, w_gate))  # (..., m)
    up = F.linear(x, w_up)  # (..., m)
    return F.linear(gate * up, w_down)  # (..., d)


class GatedFFN(nn.Module):
    """A gated FFN with any gate activation (SwiGLU with ``F.silu`` is MiniMind's FeedForward)."""

    def __init__(self, hidden: int, width: int, act: Callable[[torch.Tensor], torch.Tensor] = F.silu):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PlainFFN(nn.Module):
    """The original Transformer's two-matrix FFN, W_down act(W_up x), without biases (as T5 and Shazeer)."""

    def __init__(self, hidden: int, width: int, act: Callable[[torch.Tensor], torch.Tensor] = F.relu):
        super().__init__()
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


# ----------------------------------------------------------------------------- widths


def ffn_width(hidden: int, ratio: float = 8 / 3, multiple: int = 64) -> int:
    """multiple * ceil(hidden * ratio / multiple): minimind_ref's rule (ratio 8/3, multiple 64)."""
    return multiple * math.ceil(hidden * ratio / multiple)


def upstream_width(hidden: int) -> int:
    """Upstream MiniMind2's rule as its code writes it: int(hidden * 8 / 3), rounded up to a multiple of 64."""
    m = int(hidden * 8 / 3)
    return 64 * ((m + 64 - 1) // 64)


def llama_width(hidden: int, multiple_of: int = 256) -> int:
    """LLaMA's reference code: int(2 * 4 * hidden / 3), rounded up to a multiple of ``multiple_of``."""
    m = int(2 * (4 * hidden) / 3)
    return multiple_of * ((m + multiple_of - 1) // multiple_of)


def minimind3_width(hidden: int) -> int:
    """MiniMind-3's default: ceil(hidden * pi / 64) * 64."""
    return math.ceil(hidden * math.pi / 64) * 64


# ----------------------------------------------------------------------------- fusing gate and up


def fuse_gate_up(gate_proj: nn.Linear, up_proj: nn.Linear) -> nn.Linear:
    """One Linear of width 2m whose first m outputs are the gate's and last m the up projection's."""
    width, hidden = gate_proj.weight.shape
    fused = nn.Linear(hidden, 2 * width, bias=False)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([gate_proj.weight, up_proj.weight], dim=0))  # (2m, d)
    return fused


def fused_forward(
    x: torch.Tensor,
    gate_up: nn.Linear,
    down_proj: nn.Linear,
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu,
) -> torch.Tensor:
    """down(act(g) * u) with g and u from one matrix multiplication, split in two."""
    gate, up = gate_up(x).chunk(2, dim=-1)  # (..., m) each
    return down_proj(act(gate) * up)


# ----------------------------------------------------------------------------- memory and FLOPs


def saved_activation_elements(
    module: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> int:
    """Elements of the tensors autograd saves for backward in one forward pass of ``module`` on ``x``.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: each saved tensor is counted once per
    storage (a tensor saved twice, or a view of one already counted, costs nothing more), and the
    module's parameters are not counted (they are in memory anyway). The input is counted (it is saved
    to compute the weight gradient of the first projection). ``forward`` (default: ``module`` itself)
    is another way of running the module's computation, such as a rewritten ``forward`` method.
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes() // t.element_size())
        return t

    x = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (forward or module)(x)
    return sum(seen.values())


def live_intermediates(forward: Callable[[], torch.Tensor], width: int) -> int:
    """How many tensors of last dimension ``width`` made by ``forward()`` are still alive, besides the
    input, when the first ``F.linear`` whose input has that width (the down projection) runs.

    Run under ``torch.no_grad()`` (inference), this is what a ``forward`` written with named
    intermediates keeps in memory at that moment: Python frees a temporary as soon as nothing refers to
    it, a named local only when the function returns. Tracked with a ``TorchFunctionMode`` holding weak
    references, so the tracking itself keeps nothing alive.
    """
    import weakref

    from torch.overrides import TorchFunctionMode

    class Watch(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.made: list[weakref.ref] = []
            self.alive: int | None = None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.linear and self.alive is None and args[0].shape[-1] == width:
                inputs = {id(a) for a in args}
                self.alive = sum(1 for r in self.made if r() is not None and id(r()) not in inputs)
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.shape[-1:] == (width,):
                self.made.append(weakref.ref(out))
            return out

    watch = Watch()
    with watch:
        forward()
    if watch.alive is None:
        raise ValueError(f"no F.linear with an input of width {width} ran")
    return watch.alive


def matmul_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    It counts matrix multiplications only, at 2 FLOPs per multiply-accumulate; elementwise work
    (the activation, the gating product) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- explorer 1: activations

_X = torch.linspace(-4.0, 4.0, 81, dtype=torch.float64)


def derivative(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> fn'(x) elementwise, by autograd (fn must act elementwise)."""

    def slope(x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(x).sum(), x)
        return grad

    return slope


def _curve_rows(fn: Callable[[torch.Tensor], torch.Tensor], series: str) -> list[dict]:
    y, dy = fn(_X).detach(), derivative(fn)(_X)
    return [
        {"x": float(a), "y": float(b), "slope": float(c), "series": series} for a, b, c in zip(_X, y, dy, strict=True)
    ]


def activation_rows(beta: float = 1.0) -> list[dict]:
    """Explorer rows: Swish-beta on [-4, 4], its value and its slope (by autograd), as {x, y, slope, series}."""
    return _curve_rows(lambda t: swish(t, beta), "Swish-β")


def reference_rows() -> list[dict]:
    """ReLU and GELU on the same points as :func:`activation_rows` (they do not depend on beta)."""
    return _curve_rows(F.relu, "ReLU") + _curve_rows(F.gelu, "GELU")


def draw_activation(base):
    """Explorer ``draw``: two panels, (a) the functions and (b) their slopes; ReLU and GELU drawn for reference."""
    import altair as alt

    order = ["ReLU", "GELU", "Swish-β"]
    color = alt.Color(
        "series:N",
        sort=order,
        legend=alt.Legend(orient="bottom", title=None),
        scale=alt.Scale(domain=order, range=["#7f7f7f", "#0072B2", "#D55E00"]),
    )
    refs = alt.Chart(alt.Data(values=reference_rows()))
    x = alt.X("x:Q", title="input x")
    panels = []
    for field, title, ytitle, domain in (
        ("y", "(a) the function", "f(x)", [-2.0, 4.0]),
        ("slope", "(b) its slope", "f′(x)", [-0.2, 1.2]),
    ):
        y = alt.Y(f"{field}:Q", title=ytitle, scale=alt.Scale(domain=domain))
        tooltip = ["series:N", alt.Tooltip("x:Q", format=".2f"), alt.Tooltip(f"{field}:Q", format=".4f")]
        ref = refs.mark_line(strokeDash=[5, 3], clip=True).encode(x=x, y=y, color=color, tooltip=tooltip)
        cur = base.mark_line(clip=True, strokeWidth=3).encode(x=x, y=y, color=color, tooltip=tooltip)
        panels.append(alt.layer(ref, cur).properties(title=title, width=250, height=230))
    return alt.hconcat(*panels)


# ----------------------------------------------------------------------------- explorer 2: the gated unit

_G = torch.linspace(-3.0, 3.0, 21, dtype=torch.float64)


def surface_rows(variant: str = "SwiGLU") -> list[dict]:
    """Explorer rows: one gated unit's output act(g) * u over a grid of gate g and up u pre-activations.

    Returns {gate, up, out} for the GLU-family member ``variant`` (a key of :data:`GLU_GATES`).
    """
    if variant not in GLU_GATES:
        raise ValueError(f"variant must be one of {list(GLU_GATES)}, got {variant!r}")
    g, u = torch.meshgrid(_G, _G, indexing="ij")
    out = GLU_GATES[variant](g) * u
    return [  # grid values rounded, so that the axis ticks at -1.5, 0, 1.5 find them exactly
        {"gate": round(float(a), 6), "up": round(float(b), 6), "out": float(c)}
        for a, b, c in zip(g.flatten(), u.flatten(), out.flatten(), strict=True)
    ]


def draw_surface(base):
    """Explorer ``draw``: a heat map of the unit's output, on one diverging colour scale for every variant."""
    import altair as alt

    return base.mark_rect().encode(
        x=alt.X("gate:O", title="gate pre-activation g = (W_gate x)ᵢ", axis=alt.Axis(format=".1f", labelAngle=0,
                                                                                    values=[-3, -1.5, 0, 1.5, 3])),
        y=alt.Y("up:O", title="up pre-activation u = (W_up x)ᵢ", sort="descending",
                axis=alt.Axis(format=".1f", values=[-3, -1.5, 0, 1.5, 3])),
        color=alt.Color("out:Q", title="act(g)·u", scale=alt.Scale(scheme="redblue", domain=[-9, 9], reverse=True)),
        tooltip=[alt.Tooltip("gate:Q", format=".2f"), alt.Tooltip("up:Q", format=".2f"),
                 alt.Tooltip("out:Q", format=".3f")],
    )  # fmt: skip


# ----------------------------------------------------------------------------- explorer 3: gates of a model


def gate_histogram_rows(
    gate_pre: dict[int, torch.Tensor],
    up: dict[int, torch.Tensor],
    layer: int = 0,
    quantity: str = "SiLU(g)",
    bins: int = 64,
) -> list[dict]:
    """Explorer rows: the histogram of one layer's gate statistics over many (token, feature) pairs.

    ``gate_pre[layer]`` and ``up[layer]`` hold the gate and up pre-activations g and u of that layer's FFN
    (any shape, the same for both). ``quantity`` is "g", "SiLU(g)" or "SiLU(g)·u". Returns
    {lo, hi, share, region, edge}: the bin's edges, the share of all pairs in the bin (summing to 1), where
    the bin lies ("below 0", "0 to 1" or "above 1", which colours the bars), and ``edge``: "≤ lo" and
    "≥ hi" on the two end bins, which also count every value beyond the range, "" elsewhere.
    """
    g = gate_pre[layer].double().flatten()
    if quantity == "g":
        v, lo, hi = g, -8.0, 8.0
    elif quantity == "SiLU(g)":
        v, lo, hi = F.silu(g), -0.5, 3.5
    elif quantity == "SiLU(g)·u":
        v, lo, hi = F.silu(g) * up[layer].double().flatten(), -3.2, 3.2
    else:
        raise ValueError(f"quantity must be 'g', 'SiLU(g)' or 'SiLU(g)·u', got {quantity!r}")
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    counts = torch.histc(v.clamp(lo, hi), bins=bins, min=lo, max=hi)  # out-of-range values join the end bins
    share = counts / counts.sum()
    rows = []
    for i, (a, b, s) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist(), share.tolist(), strict=True)):
        centre = (a + b) / 2
        region = "below 0" if centre < 0 else ("0 to 1" if centre <= 1 else "above 1")
        edge = f"≤ {lo:g}" if i == 0 else (f"≥ {hi:g}" if i == bins - 1 else "")
        rows.append({"lo": a, "hi": b, "share": s, "region": region, "edge": edge})
    return rows


def draw_gate_histogram(base):
    """Explorer ``draw``: bars of the share of (token, feature) pairs per bin, coloured by region; the two
    end bins, which also hold the values beyond the range, are labelled "≤ lo" and "≥ hi" when not empty."""
    import altair as alt

    order = ["below 0", "0 to 1", "above 1"]
    ends = (
        base.transform_filter("datum.edge != '' && datum.share > 0")  # a non-empty end bin
        .transform_calculate(mid="(datum.lo + datum.hi) / 2")
        .mark_text(dy=-8, fontSize=11)
        .encode(x="mid:Q", y="share:Q", text="edge:N")
    )
    bars = base.mark_bar().encode(
        x=alt.X("lo:Q", title="value (dimensionless)"),
        x2="hi:Q",
        y=alt.Y("share:Q", title="share of (token, feature) pairs", axis=alt.Axis(format="%")),
        y2=alt.datum(0),
        color=alt.Color(
            "region:N",
            sort=order,
            legend=alt.Legend(orient="bottom", title=None),
            scale=alt.Scale(domain=order, range=["#D55E00", "#0072B2", "#009E73"]),
        ),
        tooltip=[
            alt.Tooltip("lo:Q", format=".2f"),
            alt.Tooltip("hi:Q", format=".2f"),
            alt.Tooltip("share:Q", format=".2%"),
            "region:N",
        ],
    )
    return alt.layer(bars, ends)
