"""Plotting defaults for the book: every figure a white card with a title and labelled axes.

The book theme has a light and a dark mode. A figure with a transparent background (what the
Jupyter inline backend produces by default) shows black text on a dark page in dark mode, which is
unreadable; a white face colour gives a white card that reads the same in both modes. Colours are
mid-tone and colour-blind safe (Okabe-Ito), so lines stay distinct on white and in print.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COLORS", "PALETTE", "use_book_style", "subplots", "label"]

#: Okabe-Ito colour-blind-safe palette (black left out: it is the text colour).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]

#: One colour per recurring idea, so a reader can follow them from figure to figure.
COLORS = {
    "input": "#7f7f7f",
    "layernorm": "#0072B2",
    "rmsnorm": "#D55E00",
    "batchnorm": "#009E73",
    "float32": "#0072B2",
    "bfloat16": "#D55E00",
    "float16": "#009E73",
    "float64": "#7f7f7f",
    "pre-ln": "#D55E00",
    "post-ln": "#0072B2",
}

BOOK_RC: dict[str, Any] = {
    # a white card in light and dark mode alike
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "figure.edgecolor": "white",
    "text.color": "#222222",
    "axes.labelcolor": "#222222",
    "axes.edgecolor": "#444444",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    # legible at the book's column width
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.fontsize": 9.5,
    "legend.framealpha": 0.9,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 2.0,
    "figure.constrained_layout.use": True,
}


def use_book_style() -> None:
    """Apply the book's matplotlib defaults (call once, after the set-up cell).

    pyplot is imported first, so that the Jupyter inline backend has already applied its own rc
    (including its transparent face colour) and ours wins.
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt  # noqa: F401  (activates the inline backend before we override it)
    from cycler import cycler

    mpl.rcParams.update(BOOK_RC)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)
    try:  # the inline backend re-applies its rc on each figure unless told otherwise
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None and "inline" in str(mpl.get_backend()):
            ip.run_line_magic("config", "InlineBackend.rc = {}")
    except Exception:  # noqa: BLE001  (not in IPython: nothing to undo)
        pass


def label(ax, title: str, xlabel: str, ylabel: str, *, legend: bool = False) -> Any:
    """Title and axis labels in one call (put units in the labels, e.g. 'time (ms)')."""
    if not (title and xlabel and ylabel):
        raise ValueError("every figure in the book has a title and both axis labels")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend()
    return ax


def subplots(nrows: int = 1, ncols: int = 1, *, width: float | None = None, height: float | None = None,
             suptitle: str | None = None, **kw):
    """``plt.subplots`` with the book's sizes: about 3.5 in wide per panel, capped at the column width."""
    import matplotlib.pyplot as plt

    width = width if width is not None else min(11.0, 3.6 * ncols + 0.6)
    height = height if height is not None else 3.2 * nrows + (0.4 if suptitle else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)
    if suptitle:
        fig.suptitle(suptitle, fontweight="bold")
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)
