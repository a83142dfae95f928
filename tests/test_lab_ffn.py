"""minimind_ref.lab.ffn: chapter 4's activations, gated blocks, widths, costs and explorer data."""

import math

import pytest
import torch
import torch.nn.functional as F

from minimind_ref import MiniMindConfig
from minimind_ref.ffn import FeedForward
from minimind_ref.lab import ffn as fl
from minimind_ref.lab.explorer import explorer

# ----------------------------------------------------------------------------- activations


def test_swish_family_and_its_limits():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(fl.swish(x, 1.0), F.silu(x))
    torch.testing.assert_close(fl.swish(x, 0.0), x / 2)
    torch.testing.assert_close(fl.swish(x, 1e4), F.relu(x))
    # Swish_beta(x) = SiLU(beta x) / beta
    torch.testing.assert_close(fl.swish(x, 2.5), F.silu(2.5 * x) / 2.5)


def test_gelu_approximations_and_their_errors():
    x = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    torch.testing.assert_close(fl.gelu_tanh(x), F.gelu(x, approximate="tanh"))
    err_tanh = (fl.gelu_tanh(x) - F.gelu(x)).abs().max()
    err_sig = (fl.gelu_sigmoid(x) - F.gelu(x)).abs().max()
    assert err_tanh < 1e-3 and 0.019 < err_sig < 0.021
    assert set(fl.ACTIVATIONS) >= {"ReLU", "GELU", "SiLU"}


def test_derivative_is_autograd_elementwise():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(fl.derivative(F.relu)(x), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    s = torch.sigmoid(x)
    torch.testing.assert_close(fl.derivative(F.silu)(x), s * (1 + x * (1 - s)))
    assert float(fl.derivative(F.silu)(torch.tensor(0.0))) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- the blocks


def test_glu_ffn_is_minimind_feedforward_for_each_activation():
    x = torch.randn(2, 5, 512)
    for act_name, act in (("silu", F.silu), ("relu", F.relu), ("gelu", F.gelu)):
        ffn = FeedForward(MiniMindConfig(hidden_act=act_name))
        ws = (ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight)
        torch.testing.assert_close(fl.glu_ffn(x, *ws, act=act), ffn(x))
    assert list(fl.GLU_GATES) == ["GLU", "Bilinear", "ReGLU", "GEGLU", "SwiGLU"]
    torch.testing.assert_close(fl.GLU_GATES["Bilinear"](x), x)


def test_gated_and_plain_blocks():
    gated, plain = fl.GatedFFN(64, 100), fl.PlainFFN(64, 256, F.gelu)
    assert sum(p.numel() for p in gated.parameters()) == 3 * 64 * 100
    assert sum(p.numel() for p in plain.parameters()) == 2 * 64 * 256
    x = torch.randn(3, 64)
    ws = (gated.gate_proj.weight, gated.up_proj.weight, gated.down_proj.weight)
    torch.testing.assert_close(gated(x), fl.glu_ffn(x, *ws))
    torch.testing.assert_close(plain(x), plain.down_proj(F.gelu(plain.up_proj(x))))


def test_fused_gate_up_equals_the_module():
    ffn = FeedForward(MiniMindConfig())
    fused = fl.fuse_gate_up(ffn.gate_proj, ffn.up_proj)
    assert fused.weight.shape == (2 * 1408, 512) and fused.bias is None
    x = torch.randn(3, 7, 512)
    torch.testing.assert_close(fl.fused_forward(x, fused, ffn.down_proj), ffn(x))


# ----------------------------------------------------------------------------- widths


def test_width_rules():
    assert fl.ffn_width(512) == 1408 == MiniMindConfig().intermediate_size
    assert fl.ffn_width(768) == 2048 and fl.ffn_width(640) == 1728
    assert all(fl.ffn_width(d) == fl.upstream_width(d) for d in range(1, 5001))
    assert fl.llama_width(4096) == 11008 and fl.llama_width(512) == 1536  # LLaMA-7B's width
    assert fl.minimind3_width(768) == 2432 and fl.minimind3_width(512) == 1664
    for d in (64, 256, 768):
        cfg = MiniMindConfig(hidden_size=d, num_attention_heads=1, num_key_value_heads=1)
        assert cfg.intermediate_size == fl.ffn_width(d)


# ----------------------------------------------------------------------------- costs


def test_saved_activations_per_token():
    tokens, d = 32, 512
    x = torch.randn(1, tokens, d)

    def per_token(module):
        return fl.saved_activation_elements(module, x) / (tokens * d)

    assert per_token(fl.PlainFFN(d, 4 * d, F.relu)) == 5  # input + ReLU output (shared)
    assert per_token(fl.PlainFFN(d, 4 * d, F.gelu)) == 9  # input + pre-activation + output
    assert per_token(FeedForward(MiniMindConfig())) == 1 + 4 * 1408 / d  # x, g, u, SiLU(g), h


def test_saved_activations_count_a_storage_once_and_skip_parameters():
    class Square(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8))

        def forward(self, x):
            return (x * x) * self.w  # x saved twice (one storage), x*x saved once, w skipped

    assert fl.saved_activation_elements(Square(), torch.randn(8)) == 16


def test_saved_activations_of_another_forward():
    ffn = fl.GatedFFN(8, 12)

    def one_line(x):
        return ffn.down_proj(F.silu(ffn.gate_proj(x)) * ffn.up_proj(x))

    x = torch.randn(3, 8)
    assert fl.saved_activation_elements(ffn, x, one_line) == fl.saved_activation_elements(ffn, x)


def test_live_intermediates_named_against_one_line():
    ffn = fl.GatedFFN(8, 12)
    x = torch.randn(3, 8)

    def named():
        gate = F.silu(ffn.gate_proj(x))
        up = ffn.up_proj(x)
        hidden = gate * up
        return ffn.down_proj(hidden)

    def one_line():
        return ffn.down_proj(F.silu(ffn.gate_proj(x)) * ffn.up_proj(x))

    with torch.no_grad():
        assert fl.live_intermediates(named, 12) == 2  # gate and up, besides the input hidden
        assert fl.live_intermediates(one_line, 12) == 0
        with pytest.raises(ValueError, match="width 5"):
            fl.live_intermediates(one_line, 5)


def test_matmul_flops_are_two_per_weight_and_token():
    x = torch.randn(1, 10, 64)
    for module in (fl.PlainFFN(64, 256), fl.GatedFFN(64, 170), FeedForward(MiniMindConfig(), 96)):
        if isinstance(module, FeedForward):
            x_in = torch.randn(1, 10, 512)
        else:
            x_in = x
        weights = sum(p.numel() for p in module.parameters())
        assert fl.matmul_flops(module, x_in) == 2 * weights * 10


# ----------------------------------------------------------------------------- explorer data


def test_activation_rows():
    rows = fl.activation_rows(0.0)
    assert len(rows) == 81 and {r["series"] for r in rows} == {"Swish-β"}
    for r in rows:
        assert r["y"] == pytest.approx(r["x"] / 2) and r["slope"] == pytest.approx(0.5)
    one = {round(r["x"], 6): r["y"] for r in fl.activation_rows(1.0)}
    assert one[-1.3] == pytest.approx(-1.3 * torch.sigmoid(torch.tensor(-1.3, dtype=torch.float64)).item())
    refs = fl.reference_rows()
    assert len(refs) == 162 and {r["series"] for r in refs} == {"ReLU", "GELU"}
    assert fl.activation_rows(2.0) != fl.activation_rows(2.25)  # every slider position differs


def test_surface_rows():
    rows = fl.surface_rows("Bilinear")
    assert len(rows) == 21 * 21
    for r in rows:
        assert r["out"] == pytest.approx(r["gate"] * r["up"])
    assert all(r["out"] == 0 for r in fl.surface_rows("ReGLU") if r["gate"] < 0)
    assert all(abs(r["out"]) < abs(r["up"]) + 1e-12 for r in fl.surface_rows("GLU"))
    outs = {v: [r["out"] for r in fl.surface_rows(v)] for v in fl.GLU_GATES}
    assert len({tuple(o) for o in outs.values()}) == len(fl.GLU_GATES)  # each variant differs
    with pytest.raises(ValueError, match="variant"):
        fl.surface_rows("SwishGLU")
    ticks = {-3.0, -1.5, 0.0, 1.5, 3.0}  # draw_surface's axis values: exact grid values
    assert ticks <= {r["gate"] for r in rows} and ticks <= {r["up"] for r in rows}


def test_gate_histogram_rows():
    torch.manual_seed(0)
    g = {0: torch.randn(4, 16, 32), 1: 2 * torch.randn(4, 16, 32)}
    u = {0: torch.randn(4, 16, 32), 1: torch.randn(4, 16, 32)}
    for quantity in ("g", "SiLU(g)", "SiLU(g)·u"):
        rows = fl.gate_histogram_rows(g, u, layer=1, quantity=quantity, bins=40)
        assert len(rows) == 40
        assert sum(r["share"] for r in rows) == pytest.approx(1.0)
        assert all(r["lo"] < r["hi"] for r in rows)
    rows = fl.gate_histogram_rows(g, u, layer=0, quantity="SiLU(g)")
    negative = sum(r["share"] for r in rows if r["region"] == "below 0")
    expected = float((F.silu(g[0].double()) < 0).double().mean())
    assert negative == pytest.approx(expected)  # 0 is a bin edge
    assert {r["region"] for r in rows} == {"below 0", "0 to 1", "above 1"}
    assert [r["edge"] for r in rows if r["edge"]] == ["≤ -0.5", "≥ 3.5"]
    assert rows[0]["edge"] and rows[-1]["edge"] and not any(r["edge"] for r in rows[1:-1])
    with pytest.raises(ValueError, match="quantity"):
        fl.gate_histogram_rows(g, u, quantity="sigma(g)")


@pytest.mark.parametrize(
    "compute, grid, draw",
    [
        (fl.activation_rows, {"beta": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]}, fl.draw_activation),
        (fl.surface_rows, {"variant": list(fl.GLU_GATES)}, fl.draw_surface),
    ],
)
def test_explorers_build_a_valid_chart(compute, grid, draw):
    pytest.importorskip("altair")
    result = explorer(compute, grid, draw, title="t", width=None, height=None, show=False)
    spec = result.chart.to_dict()
    assert spec["params"] and all(p["name"].startswith("p_") for p in spec["params"])


def test_gate_histogram_explorer_builds():
    pytest.importorskip("altair")
    from functools import partial

    g = {i: torch.randn(2, 8, 16) for i in range(2)}
    u = {i: torch.randn(2, 8, 16) for i in range(2)}
    result = explorer(
        partial(fl.gate_histogram_rows, g, u),
        {"layer": [0, 1], "quantity": ["g", "SiLU(g)", "SiLU(g)·u"]},
        fl.draw_gate_histogram,
        title="t",
        show=False,
    )
    assert len(result.rows) == 2 * 3 * 64
    assert math.isclose(sum(r["share"] for r in result.rows), 6.0, rel_tol=1e-4)
