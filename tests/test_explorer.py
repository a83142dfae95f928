"""minimind_ref.lab.explorer: charts precomputed over a grid of slider settings, live sliders in a kernel."""

from __future__ import annotations

import json
import math

import pytest

alt = pytest.importorskip("altair")

from minimind_ref.lab import explorer as ex  # noqa: E402
from minimind_ref.lab import normalization as nl  # noqa: E402


def square(a: float, b: float, kind: str = "u") -> dict:
    return {"x": [0, 1, 2], "y": [a * b * x * x for x in (0, 1, 2)]}


def spec_of(result) -> dict:
    return result.chart.to_dict()


def test_sliders_are_ranges_logs_or_options():
    assert ex._Slider("a", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], "a").kind == "range"
    assert ex._Slider("a", [1, 2, 3, 4, 5, 6, 7], "a").kind == "range"
    log = ex._Slider("eps", [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3], "eps")
    assert log.kind == "log" and log.column == "log10_eps" and math.isclose(log.step, 1.0)
    assert ex._Slider("a", [1, 2, 5, 6, 9, 10], "a").kind == "options"  # neither even nor geometric
    assert ex._Slider("a", [1, 2, 3], "a").kind == "options"  # a few values: buttons
    assert ex._Slider("s", ["x", "y"], "s").kind == "options"
    with pytest.raises(ValueError, match="repeats"):
        ex._Slider("a", [1, 1, 2], "a")
    with pytest.raises(ValueError, match="no values"):
        ex._Slider("a", [], "a")


def test_precompute_covers_every_setting_and_tags_rows():
    b = [10, 100, 1000, 1e4, 1e5, 1e6]
    rows = ex.precompute(square, {"a": [1.0, 2.0, 3.0], "b": b})
    assert len(rows) == 3 * 6 * 3
    # b is log-spaced: its rows carry log10(b)
    got = {(r["a"], r["log10_b"]): r["y"] for r in rows if r["x"] == 2}
    assert got[(2.0, 2.0)] == pytest.approx(2.0 * 100 * 4)
    assert len(got) == 18


def test_precompute_refuses_too_many_rows_and_clashing_columns(monkeypatch):
    monkeypatch.setattr(ex, "MAX_ROWS", 10)
    with pytest.raises(ValueError, match="rows"):
        ex.precompute(square, {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0]})
    monkeypatch.undo()
    with pytest.raises(ValueError, match="named like the grid"):
        ex.precompute(lambda a: [{"a": a}], {"a": [1, 2, 3]})
    with pytest.raises(TypeError, match="list of dicts"):
        ex.precompute(lambda a: 3.0, {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="different lengths"):
        ex.precompute(lambda a: {"x": [1, 2], "y": [1]}, {"a": [1, 2, 3]})


def test_non_finite_values_become_null_and_floats_are_compact():
    rows = ex.precompute(lambda a: [{"v": math.inf}, {"v": 1 / 3}], {"a": ["p", "q"]})
    assert rows[0]["v"] is None
    assert rows[1]["v"] == pytest.approx(1 / 3, rel=1e-5) and len(repr(rows[1]["v"])) <= 10


def test_explorer_chart_binds_one_slider_per_parameter_and_filters_on_all():
    grid = {"a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], "b": [10, 100, 1000, 1e4, 1e5, 1e6], "kind": ["u", "v"]}
    result = ex.explorer(square, grid, ex.lines("x:Q", "y:Q"), title="t", labels={"a": "gain a"}, show=False)
    spec = spec_of(result)
    params = {p["name"]: p for p in spec["params"]}
    assert set(params) == {"p_a", "p_b", "p_kind"}
    assert params["p_a"]["bind"]["input"] == "range" and params["p_a"]["bind"]["name"].startswith("gain a")
    assert params["p_a"]["value"] == 4.0  # the middle of the grid by default
    assert params["p_b"]["bind"]["input"] == "range" and params["p_b"]["value"] == 4.0  # log10(1e4)
    assert params["p_kind"]["bind"]["input"] == "radio" and params["p_kind"]["bind"]["labels"] == ["u", "v"]
    filters = [t["filter"] for t in spec.get("transform", [])]
    assert len(filters) == 1 and all(f"p_{n}" in filters[0] for n in ("a", "b", "kind"))
    assert spec["config"]["background"] == "white"
    assert result.widget is None
    json.dumps(spec)  # serialisable as it stands


def test_explorer_rejects_bad_labels_and_defaults():
    with pytest.raises(ValueError, match="not in the grid"):
        ex.explorer(
            square, {"a": [1.0, 2.0], "b": [1.0, 2.0]}, ex.lines("x:Q", "y:Q"), title="t", labels={"c": "?"}, show=False
        )
    with pytest.raises(ValueError, match="not one of the grid"):
        ex.explorer(
            square,
            {"a": [1.0, 2.0], "b": [1.0, 2.0]},
            ex.lines("x:Q", "y:Q"),
            title="t",
            default={"a": 1.5},
            show=False,
        )


def test_the_filter_selects_exactly_one_setting():
    """Evaluate the chart's own Vega filter expression in Python on the stored rows."""
    grid = {"a": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0], "b": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], "c": [1, 2]}
    result = ex.explorer(
        square,
        {k: v for k, v in grid.items() if k != "c"},
        ex.lines("x:Q", "y:Q"),
        title="t",
        default={"a": 1.5, "b": 0.1},
        show=False,
    )
    expr = spec_of(result)["transform"][0]["filter"]
    py = expr.replace("&&", " and ").replace("datum[", "row[")
    for name, value in (("p_a", 1.5), ("p_b", -1.0)):
        py = py.replace(name, repr(value))
    kept = [row for row in result.rows if eval(py, {"abs": abs}, {"row": row})]  # noqa: S307
    assert len(kept) == 3 and all(r["y"] == pytest.approx(1.5 * 0.1 * r["x"] ** 2) for r in kept)


def test_live_sliders_call_compute_at_any_value():
    pytest.importorskip("ipywidgets")
    calls = []

    def compute(a, kind):
        calls.append((a, kind))
        return {"x": [0, 1], "y": [0, a]}

    result = ex.explorer(
        compute, {"a": [1.0, 2.0, 3.0], "kind": ["u", "v"]}, ex.lines("x:Q", "y:Q"), title="t", live=True
    )
    assert result.widget is not None
    slider = next(w for w in result.widget.children if type(w).__name__ == "FloatSlider")
    slider.value = 2.37  # between grid points: the live explorer computes it
    assert calls[-1][0] == 2.37


def test_live_sliders_give_ints_for_an_int_grid():
    pytest.importorskip("ipywidgets")
    seen = []

    def compute(dim):
        assert isinstance(dim, int), f"compute got {dim!r}"
        seen.append(dim)
        return {"x": [0, 1], "y": [0, dim]}

    result = ex.explorer(compute, {"dim": [64, 256, 1024, 4096]}, ex.lines("x:Q", "y:Q"), title="t", live=True)
    slider = next(w for w in result.widget.children if type(w).__name__ == "FloatLogSlider")
    slider.value = 300.7
    assert seen[-1] == 301


def test_no_live_sliders_while_the_book_is_built(monkeypatch):
    monkeypatch.setenv("MINIMIND_BOOK_BUILD", "1")
    monkeypatch.setattr(ex, "in_kernel", lambda: True)
    result = ex.explorer(square, {"a": [1.0, 2.0], "b": [1.0, 2.0]}, ex.lines("x:Q", "y:Q"), title="t")
    assert result.widget is None


def test_chapter_one_rows():
    rows = nl.norm_vector_rows(mu=3.0, sigma=1.0, eps=1e-5, n=8)
    assert len(rows) == 24 and {r["series"] for r in rows} == {"input x", "LayerNorm(x)", "RMSNorm(x)"}
    ln = [r["value"] for r in rows if r["series"] == "LayerNorm(x)"]
    assert abs(sum(ln)) < 1e-9  # LayerNorm output has mean 0
    rows = nl.dtype_error_rows("input dtype (naive)", eps=1e-5, dim=64)
    f16 = {r["scale"]: r["error"] for r in rows if r["dtype"] == "float16"}
    assert f16[max(f16)] > 1.0  # x^2 overflows: the naive float16 output collapses to 0
    up = {
        r["scale"]: r["error"] for r in nl.dtype_error_rows("float32 (minimind_ref)", dim=64) if r["dtype"] == "float16"
    }
    assert up[max(up)] < 1e-2
    with pytest.raises(ValueError, match="statistics"):
        nl.dtype_error_rows("float8")
