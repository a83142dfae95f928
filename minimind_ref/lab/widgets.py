"""Widgets that still teach in the static HTML: an explorer plus small multiples.

:func:`explore` takes a plotting function ``plot(ax, **params)`` and slider specifications. It
always draws a static figure of a few representative settings side by side (that PNG is what the
HTML book shows, where no kernel runs), and, when a Jupyter kernel is running, also shows an
``ipywidgets.interact`` explorer with the same function behind the sliders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Explorer", "in_kernel", "make_widget", "explore"]


def in_kernel() -> bool:
    """True inside a running Jupyter kernel (Colab, JupyterLab, nbmake, the book's execution)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def make_widget(name: str, spec: Any, value: Any = None):
    """An ipywidgets control from a compact spec.

    ``(lo, hi, step)`` of numbers: a FloatSlider (IntSlider if all are ints); ``("log", lo, hi)``:
    a FloatLogSlider over decades ``lo`` .. ``hi`` (exponents of 10); a list/tuple of strings or of
    other options: a Dropdown; a bool: a Checkbox; an existing widget is returned as it is.
    ``value`` sets the initial value (the first static setting, normally).
    """
    import ipywidgets as W

    if isinstance(spec, W.Widget):
        return spec
    desc = name
    style = {"description_width": "initial"}
    layout = W.Layout(width="420px")
    if isinstance(spec, bool):
        return W.Checkbox(value=spec if value is None else bool(value), description=desc)
    if isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "log":
        _, lo, hi = spec
        v = 10.0 ** ((lo + hi) / 2) if value is None else value
        return W.FloatLogSlider(value=v, base=10, min=lo, max=hi, step=0.05, description=desc,
                                style=style, layout=layout, continuous_update=False)
    if isinstance(spec, tuple) and len(spec) == 3 and all(isinstance(s, (int, float)) for s in spec):
        lo, hi, step = spec
        if all(isinstance(s, int) for s in spec):
            return W.IntSlider(value=lo if value is None else int(value), min=lo, max=hi, step=step,
                               description=desc, style=style, layout=layout, continuous_update=False)
        return W.FloatSlider(value=lo if value is None else float(value), min=lo, max=hi, step=step,
                             description=desc, style=style, layout=layout, continuous_update=False)
    if isinstance(spec, (list, tuple)):
        options = list(spec)
        return W.Dropdown(options=options, value=options[0] if value is None else value, description=desc,
                          style=style)
    raise TypeError(f"cannot make a widget for {name!r} from {spec!r}")


@dataclass
class Explorer:
    """What :func:`explore` drew: the static figure and (in a kernel) the interactive widget."""

    figure: Any
    settings: list[dict] = field(default_factory=list)
    widget: Any = None

    def _ipython_display_(self) -> None:  # both parts are already displayed by explore()
        pass


def _panel_title(params: Mapping[str, Any]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items())


def explore(plot: Callable[..., Any], sliders: Mapping[str, Any], static: Sequence[Mapping[str, Any]], *,
            title: str, ncols: int | None = None, panel_titles: Sequence[str] | None = None,
            interactive: bool | None = None, figsize: tuple[float, float] | None = None) -> Explorer:
    """Static small multiples of ``static`` settings, then an interactive explorer in a kernel.

    ``plot(ax, **params)`` draws one setting on a matplotlib axis and must title and label it
    (the panel title defaults to the parameter values). ``sliders`` maps each parameter to a spec
    for :func:`make_widget`. ``static`` lists 2-4 representative settings; each must give every
    parameter. ``interactive=None`` means "when a kernel runs".
    """
    import matplotlib.pyplot as plt

    from .plots import subplots

    if not 1 <= len(static) <= 6:
        raise ValueError(f"give 1-6 representative static settings, got {len(static)}")
    for s in static:
        missing = set(sliders) - set(s)
        if missing:
            raise ValueError(f"static setting {dict(s)} lacks {sorted(missing)}")
    ncols = ncols or min(len(static), 4)
    nrows = -(-len(static) // ncols)
    kw = {} if figsize is None else {"width": figsize[0], "height": figsize[1]}
    fig, axes = subplots(nrows, ncols, suptitle=title, **kw)
    flat = list(getattr(axes, "flat", [axes]))
    for i, (ax, params) in enumerate(zip(flat, static, strict=False)):
        plot(ax, **params)
        ax.set_title(panel_titles[i] if panel_titles else _panel_title(params), fontsize=10)
    for ax in flat[len(static):]:
        ax.set_visible(False)
    if in_kernel():
        plt.show()
    explorer = Explorer(figure=fig, settings=[dict(s) for s in static])

    if interactive is None:
        interactive = in_kernel()
    if interactive:
        import ipywidgets as W
        from IPython.display import display

        controls = {k: make_widget(k, spec, static[0][k]) for k, spec in sliders.items()}

        def redraw(**params):
            f, ax = subplots(1, 1, width=6.5, height=3.8)
            plot(ax, **params)
            plt.show()

        out = W.interactive_output(redraw, controls)
        box = W.VBox([W.HTML(f"<b>Explore: {title}</b> (move the sliders; needs a running kernel)"),
                      *controls.values(), out])
        display(box)
        explorer.widget = box
    return explorer
