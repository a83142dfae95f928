"""Explorers: interactive figures that work in the static HTML book as well as in a running kernel.

An explorer shows how something depends on a few settings. Three things define it:

* ``compute(**setting) -> rows``: a tested function (of ``minimind_ref`` or ``minimind_ref.lab``)
  that returns the data of one setting, as a list of dicts or a dict of equal-length columns;
* ``grid = {name: values}``: the positions of each slider. ``compute`` is called once for every
  combination, and the results are stored in the chart;
* ``draw(base) -> chart``: how one setting is drawn, as Altair marks and encodings on ``base``, an
  Altair chart of the rows of the setting the sliders select (``lines("x", "y", color="series")``
  and :func:`encode` cover the common cases).

:func:`explorer` returns a Vega-Lite chart (through Altair) whose sliders select among the
precomputed settings in the browser: it is interactive in the HTML book with no kernel and no
network (the book serves Vega itself, see ``_ext/book_pages.py``), and in Jupyter or Colab alike.
In a live kernel it also shows ipywidgets sliders that call ``compute`` on any value in the grid's
range, not only on the grid. While the book is being built (``MINIMIND_BOOK_BUILD=1``, set by the
book's Sphinx extension) no ipywidgets are made, so the HTML holds no slider that needs a kernel.

Example (one line in a chapter)::

    explorer(nl.norm_vector_rows, {"mu": [-2, -1, 0, 1, 2], "sigma": [0.5, 1, 2]},
             lines("feature", "value", color="series"), title="LayerNorm vs RMSNorm",
             labels={"mu": "mean", "sigma": "std"})
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Explorer", "explorer", "encode", "lines", "precompute", "in_kernel", "building_book", "MAX_ROWS"]

#: Precomputed rows above this make the page heavy (each row is stored in the HTML): coarsen the grid.
MAX_ROWS = 60_000
#: A grid of at most this many values is shown as buttons; a longer one as a slider (or a drop-down).
MAX_BUTTONS = 5
#: Significant digits kept for floats stored in the chart (the page size, not the plot, is the limit).
DIGITS = 6


def _compact(v: Any) -> Any:
    """A JSON-friendly value: Python floats with DIGITS significant digits, ints, str, bool, None."""
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        v = v.item()
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return None  # JSON has no inf/nan; Vega-Lite leaves the point out
        return float(f"{v:.{DIGITS}g}")
    raise TypeError(f"explorer rows hold numbers, strings or booleans, got {type(v).__name__}: {v!r}")


def _as_rows(data: Any, where: str) -> list[dict]:
    """compute()'s result as a list of dicts (it may also return a dict of equal-length columns)."""
    if isinstance(data, Mapping):
        cols = {k: list(v.tolist() if hasattr(v, "tolist") else v) for k, v in data.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"{where}: columns of different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        return [{k: _compact(v[i]) for k, v in cols.items()} for i in range(n)]
    if isinstance(data, Sequence) and all(isinstance(r, Mapping) for r in data):
        return [{k: _compact(v) for k, v in r.items()} for r in data]
    raise TypeError(f"{where}: compute() must return a list of dicts or a dict of columns, got {type(data).__name__}")


@dataclass
class _Slider:
    """One grid axis and how it is shown: a range slider (evenly spaced or log-spaced numbers) or a
    set of options (anything else)."""

    name: str
    values: list
    label: str
    kind: str = field(init=False)  # "range" | "log" | "options"
    step: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"grid[{self.name!r}] has no values")
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError(f"grid[{self.name!r}] repeats a value: {self.values}")
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)
        self.kind = "options"  # buttons for a few values, a drop-down for many irregular ones
        if numeric and len(self.values) > MAX_BUTTONS and self.values == sorted(self.values):
            diffs = [b - a for a, b in itertools.pairwise(self.values)]
            if max(diffs) - min(diffs) <= 1e-9 * max(abs(d) for d in diffs):
                self.kind, self.step = "range", diffs[0]
            elif self.values[0] > 0:
                logs = [math.log10(v) for v in self.values]
                ldiffs = [b - a for a, b in itertools.pairwise(logs)]
                if max(ldiffs) - min(ldiffs) <= 1e-6 * max(ldiffs):
                    self.kind, self.step = "log", ldiffs[0]

    @property
    def column(self) -> str:
        """The column of the rows that the slider filters on."""
        return f"log10_{self.name}" if self.kind == "log" else self.name

    def position(self, value: Any) -> Any:
        """The slider's value for a grid value (its log10 for a log slider)."""
        return _compact(math.log10(value)) if self.kind == "log" else _compact(value)

    def param(self, default: Any):
        import altair as alt

        label = f"log₁₀ {self.label}" if self.kind == "log" else self.label
        if self.kind in ("range", "log"):
            positions = [self.position(v) for v in self.values]
            bind = alt.binding_range(min=positions[0], max=positions[-1], step=_compact(self.step), name=label + " ")
        else:
            options = [_compact(v) for v in self.values]
            shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in options]
            make = alt.binding_radio if len(options) <= MAX_BUTTONS else alt.binding_select
            bind = make(options=options, labels=shown, name=label + " ")
        return alt.param(name=f"p_{self.name}", value=self.position(default), bind=bind)

    def test(self) -> str:
        """The Vega expression that keeps the rows of the selected setting."""
        col, p = f"datum[{self.column!r}]", f"p_{self.name}"
        if self.kind in ("range", "log"):
            return f"abs({col} - {p}) < {abs(self.step) / 2!r}"
        return f"{col} == {p}"

    def cast(self, value: Any) -> Any:
        """A live widget's value as compute() expects it: an int grid gets ints (a log slider gives floats)."""
        if all(isinstance(v, int) and not isinstance(v, bool) for v in self.values):
            return int(round(value))
        return value

    def widget(self, default: Any):
        """An ipywidgets control over the grid's range (any value, not only the grid's)."""
        import ipywidgets as W

        style, layout = {"description_width": "initial"}, W.Layout(width="440px")
        common = dict(description=self.label, style=style, layout=layout, continuous_update=False)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)
        if not numeric or len(self.values) < 2 or self.values != sorted(self.values):
            return W.Dropdown(options=list(self.values), value=default, description=self.label, style=style)
        lo, hi = self.values[0], self.values[-1]
        ratios = [b / a for a, b in itertools.pairwise(self.values)] if lo > 0 else []
        if len(self.values) >= 3 and ratios and max(ratios) / min(ratios) < 1.01 and max(ratios) > 1.5:
            llo, lhi = math.log10(lo), math.log10(hi)  # geometric grid: a log slider
            return W.FloatLogSlider(value=default, base=10, min=llo, max=lhi, step=(lhi - llo) / 100, **common)
        if all(isinstance(v, int) for v in self.values):
            return W.IntSlider(value=default, min=lo, max=hi, step=1, **common)
        return W.FloatSlider(value=default, min=lo, max=hi, step=(hi - lo) / 100, **common)


def precompute(compute: Callable[..., Any], grid: Mapping[str, Sequence[Any]]) -> list[dict]:
    """compute(**setting) for every combination of the grid, as rows tagged with their setting."""
    names = list(grid)
    sliders = [_Slider(n, list(grid[n]), n) for n in names]
    rows: list[dict] = []
    for combo in itertools.product(*(s.values for s in sliders)):
        setting = dict(zip(names, combo, strict=True))
        tags = {s.column: s.position(v) for s, v in zip(sliders, combo, strict=True)}
        for row in _as_rows(compute(**setting), f"compute({setting})"):
            clash = set(row) & set(tags)
            if clash:
                raise ValueError(f"compute() returned columns named like the grid's sliders: {sorted(clash)}")
            rows.append({**row, **tags})
        if len(rows) > MAX_ROWS:
            raise ValueError(
                f"the grid gives more than {MAX_ROWS} rows, each stored in the page: use fewer grid values "
                f"or fewer points per setting"
            )
    return rows


def encode(mark: str = "line", mark_options: Mapping[str, Any] | None = None, **channels: Any) -> Callable:
    """A ``draw`` function: one mark with the given encodings, e.g. ``encode("bar", x="expert:O", y="load:Q")``.

    A channel may be a field ("name", "name:Q") or any Altair channel object (``alt.X(...)``)."""

    def draw(base):
        return getattr(base, f"mark_{mark}")(**dict(mark_options or {})).encode(**channels)

    return draw


def lines(x: str, y: str, color: str | None = None, *, points: bool = False, **channels: Any) -> Callable:
    """A ``draw`` function for curves of ``y`` against ``x``, one per ``color`` value."""
    import altair as alt

    enc = {"x": x, "y": y, **channels}
    if color is not None:
        enc["color"] = alt.Color(color, legend=alt.Legend(orient="bottom", title=None))
    return encode("line", {"point": points, "clip": True}, **enc)


def in_kernel() -> bool:
    """True inside a running Jupyter kernel (Colab, JupyterLab, nbmake, the book's execution)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def building_book() -> bool:
    """True while the book's build executes this notebook (set by ``_ext/book_pages.py``)."""
    return os.environ.get("MINIMIND_BOOK_BUILD") == "1"


@dataclass
class Explorer:
    """What :func:`explorer` made: the Altair chart, its precomputed rows and (live) the widget box."""

    chart: Any
    rows: list[dict]
    widget: Any = None

    def _ipython_display_(self) -> None:  # already displayed by explorer()
        pass


def _style(chart, title: str, width: int | None, height: int | None):
    props = {"title": title}
    if width is not None:
        props["width"] = width
    if height is not None:
        props["height"] = height
    try:
        chart = chart.properties(**props)
    except Exception:  # noqa: BLE001  (a concatenated chart takes its size from its panels)
        chart = chart.properties(title=title)
    # a white card, like the matplotlib figures: legible in the book's light and dark themes
    return (
        chart.configure(background="white")
        .configure_view(stroke="#dddddd")
        .configure_axis(labelFontSize=11, titleFontSize=12, gridColor="#e5e5e5")
        .configure_title(fontSize=14, anchor="start")
        .configure_legend(labelFontSize=11)
    )


def _show(chart) -> None:
    """Display an Altair chart as SVG without the export menu (which links to the online editor)."""
    import altair as alt
    from IPython.display import display

    with alt.renderers.set_embed_options(actions=False, renderer="svg"):
        bundle = chart._repr_mimebundle_()
    if isinstance(bundle, tuple):  # older Altair: (data, metadata)
        bundle = bundle[0]
    display(bundle, raw=True)


def explorer(
    compute: Callable[..., Any],
    grid: Mapping[str, Sequence[Any]],
    draw: Callable,
    *,
    title: str,
    labels: Mapping[str, str] | None = None,
    default: Mapping[str, Any] | None = None,
    width: int | None = 520,
    height: int | None = 260,
    live: bool | None = None,
    show: bool = True,
) -> Explorer:
    """Precompute ``compute`` over ``grid`` and show it as an interactive chart (see the module docs).

    ``labels`` names the sliders for the reader (default: the parameter names); ``default`` is the
    setting shown first (default: the middle of each grid); ``live`` adds ipywidgets sliders that
    call ``compute`` (default: in a running kernel, except while the book is being built).
    """
    import altair as alt

    labels = dict(labels or {})
    unknown = set(labels) - set(grid)
    if unknown:
        raise ValueError(f"labels for parameters that are not in the grid: {sorted(unknown)}")
    sliders = [_Slider(n, list(v), labels.get(n, n)) for n, v in grid.items()]
    default = dict(default or {})
    for s in sliders:
        default.setdefault(s.name, s.values[len(s.values) // 2])
        if default[s.name] not in s.values:
            raise ValueError(f"default {s.name}={default[s.name]!r} is not one of the grid's values {s.values}")
    rows = precompute(compute, grid)
    params = [s.param(default[s.name]) for s in sliders]
    keep = " && ".join(f"({s.test()})" for s in sliders)
    base = alt.Chart(alt.Data(values=rows)).transform_filter(keep)
    chart = _style(draw(base).add_params(*params), title, width, height)
    result = Explorer(chart=chart, rows=rows)
    if not show:
        return result
    _show(chart)
    if live is None:
        live = in_kernel() and not building_book()
    if live:
        result.widget = _live(compute, sliders, default, draw, title, width, height)
    return result


def _live(compute, sliders, default, draw, title, width, height):
    """ipywidgets sliders that recompute and redraw one setting (needs a running kernel)."""
    import altair as alt
    import ipywidgets as W
    from IPython.display import display

    controls = {s.name: s.widget(default[s.name]) for s in sliders}
    out = W.Output()

    def redraw(**setting):
        rows = _as_rows(compute(**setting), f"compute({setting})")
        chart = _style(draw(alt.Chart(alt.Data(values=rows))), title, width, height)
        out.clear_output(wait=True)
        with out:
            _show(chart)

    by_name = {s.name: s for s in sliders}

    def current() -> dict:
        return {k: by_name[k].cast(w.value) for k, w in controls.items()}

    for c in controls.values():
        c.observe(lambda _change: redraw(**current()), names="value")
    redraw(**current())
    header = W.HTML(f"<b>Live: {title}</b> (these sliders call the function itself, at any value in range)")
    box = W.VBox([header, *controls.values(), out])
    display(box)
    return box
