"""What the chapters need besides the model: symbolic checks, figures, widgets, timing, Colab set-up.

Heavy dependencies (sympy, matplotlib, ipywidgets) are imported lazily inside the submodules, so
``import minimind_ref.lab`` stays cheap and the core package never depends on them.

Submodules (import them explicitly, e.g. ``from minimind_ref.lab import symbolic``):

- ``symbolic``: sympy printing set-up; ``check_expr`` / ``check_gradient`` / ``check_jacobian``
  compare a sympy result with PyTorch autograd in float64 and raise ``SymbolicMismatch`` if they differ.
- ``plots``: ``use_book_style()`` (white-card figures legible in light and dark mode), ``label``,
  ``subplots``, ``COLORS``.
- ``explorer``: ``explorer(compute, grid, draw, title=...)``: an interactive Vega-Lite chart
  precomputed over a grid of slider settings (works in the static HTML, offline), plus live
  ipywidgets sliders in a running kernel; ``lines`` and ``encode`` make the common ``draw``s.
- ``timing``: ``compare({...})`` over ``torch.utils.benchmark`` in interleaved rounds (medians,
  same-round ratios, the device and the clock) and ``bandwidth()``.
- ``normalization``: chapter 1's normalisers, dtype experiments, explorer data, the norm-placement
  variants of MiniMind and the tiny training runs, and the measurements of memory and kernels.
- ``book``: ``book_model("dense" | "moe") -> (model, tokenizer)``, the book's trained MiniMinds (re-exported here).
"""

from __future__ import annotations

import platform
import sys

#: The one repository URL of the whole book (Colab launch buttons, install cells, _config.yml).
REPO_URL = "https://github.com/minimind-textbook/minimind-textbook"


def device_name() -> str:
    """'cuda (<GPU name>)', 'mps' or 'cpu (<processor>)': where the chapter's tensors run by default."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


def show_versions() -> dict:
    """Print (and return) the versions a chapter ran with and the device it runs on."""
    import importlib

    info = {"python": sys.version.split()[0]}
    for name in ("torch", "sympy", "numpy", "matplotlib", "ipywidgets", "minimind_ref"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = "not installed"
    info["device"] = device_name()
    print("  ".join(f"{k} {v}" for k, v in info.items()))
    return info


def glue(name: str, value, display: bool = True) -> None:
    """myst-nb's ``glue`` when myst-nb is installed (the book build); elsewhere (Colab) show the value.

    Chapters insert every number of their prose with ``{glue:text}`` from a glued value; on Colab,
    where myst-nb is usually absent, the notebook must still run, so this falls back to displaying.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(value)
        return
    myst_glue(name, value, display=display)


def book_model(name: str = "dense", device: str = "cpu", dtype=None):
    """(model, tokenizer) of one of the book's trained MiniMinds, ``"dense"`` or ``"moe"`` (see ``lab.book``)."""
    from .book import book_model as load

    return load(name, device=device) if dtype is None else load(name, device=device, dtype=dtype)
