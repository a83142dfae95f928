"""Chapter 1's experiments as functions: normalisers, dtype behaviour, and the explorers' data.

The chapter's explorers call these (tested) functions, so what the sliders show is what
``tests/test_lab.py`` checks. The normalisers are written out plainly (no fused kernels) to be read.
"""

from __future__ import annotations

import math

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
