"""Chapter 1's experiments as functions: normalisers, dtype behaviour, and the widgets' plots.

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
    "plot_norm_vector",
    "plot_dtype_behaviour",
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


def norm_error_vs_scale(scales, dtype: torch.dtype, *, upcast: bool, dim: int = 512, eps: float = 1e-5,
                        seed: int = 0) -> torch.Tensor:
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


def plot_norm_vector(ax, mu: float = 0.0, sigma: float = 1.0, eps: float = 1e-5, n: int = 16) -> None:
    """Components of a vector (mean ``mu``, std ``sigma``) before and after LayerNorm and RMSNorm."""
    from .plots import COLORS

    x = vector_with_stats(mu, sigma, n)
    ln, rms = layer_norm(x, eps), rms_norm(x, eps)
    x, ln, rms = x.numpy(), ln.numpy(), rms.numpy()
    i = torch.arange(n, dtype=torch.float64).numpy()
    w = 0.27
    ax.bar(i - w, x, w, color=COLORS["input"], label="input x")
    ax.bar(i, ln, w, color=COLORS["layernorm"], label="LayerNorm(x)")
    ax.bar(i + w, rms, w, color=COLORS["rmsnorm"], label="RMSNorm(x)")
    ax.axhline(0, color="#444444", linewidth=0.8)
    ax.set_xlabel("component index i (dimensionless)")
    ax.set_ylabel("value (dimensionless)")
    ax.set_title(f"mu={mu:g}, sigma={sigma:g}, eps={eps:g}")
    ax.legend(loc="best", fontsize=8)


def plot_dtype_behaviour(ax, statistics: str = "float32 (minimind_ref)", eps: float = 1e-5, dim: int = 512) -> None:
    """Error of RMSNorm's output against float64 as the input scale grows, per dtype (log-log)."""
    from .plots import COLORS

    upcast = statistics.startswith("float32")
    scales = torch.logspace(-3, 4, 57, dtype=torch.float64)
    cap = 10.0  # plot non-finite outputs at the top of the axis
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        err = norm_error_vs_scale(scales, dt, upcast=upcast, dim=dim, eps=eps).clamp(min=1e-9, max=cap)
        name = str(dt).removeprefix("torch.")
        ax.loglog(scales.numpy(), err.numpy(), marker=".", color=COLORS[name], label=name)
    ax.axvline(256, color="#444444", linestyle="--", linewidth=1)
    ax.text(256 * 1.15, 3e-8, "|x| = 256:\nfloat16 x^2 overflows", fontsize=8)
    ax.set_ylim(1e-9, cap * 2)
    ax.set_xlabel("largest |x_i| of the input (log scale)")
    ax.set_ylabel("max |error| of output vs float64")
    ax.set_title(f"statistics in {statistics}")
    ax.legend(loc="upper left", fontsize=8)
