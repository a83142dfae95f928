"""minimind_ref.lab: the helpers the chapters rely on do what they promise (and fail when they should)."""

import math
import subprocess
import sys

import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import minimind_ref.lab as lab
from minimind_ref.lab import normalization as nl
from minimind_ref.lab import symbolic
from minimind_ref.lab.symbolic import SymbolicMismatch, check_expr, check_gradient, check_jacobian, vector

# ----------------------------------------------------------------------------- package hygiene


def test_import_lab_is_lazy():
    """Importing minimind_ref.lab (and the core) must not pull in sympy, matplotlib or ipywidgets."""
    code = ("import sys, minimind_ref, minimind_ref.lab; "
            "bad = [m for m in ('sympy', 'matplotlib', 'ipywidgets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_show_versions_reports_device(capsys):
    info = lab.show_versions()
    assert info["torch"] == torch.__version__
    assert info["device"].split()[0] in {"cuda", "mps", "cpu"}
    assert "torch" in capsys.readouterr().out


# ----------------------------------------------------------------------------- symbolic


def _rmsnorm_sym(D=3):
    x, g = vector("x", D), vector("g", D)
    eps = sp.Symbol("epsilon", positive=True)
    r = sp.sqrt(sum(xi**2 for xi in x) / D + eps)
    return x, g, eps, r


def test_check_expr_accepts_a_right_formula_and_rejects_a_wrong_one():
    x, _, eps, r = _rmsnorm_sym()
    y = x / r

    def torch_fn(xv, e):
        return xv / torch.sqrt(xv.pow(2).mean() + e)

    err = check_expr(y, [x, eps], torch_fn)
    assert err < 1e-12
    with pytest.raises(SymbolicMismatch) as info:
        check_expr(x / sp.sqrt(sum(xi**2 for xi in x) + eps), [x, eps], torch_fn)  # forgot the 1/D
    assert info.value.max_error > 1e-3
    assert "max |difference|" in str(info.value)


def test_positive_symbols_are_sampled_positive():
    eps = sp.Symbol("e", positive=True)
    z = sp.Symbol("z")
    for seed in range(20):
        e, _ = symbolic.sample_inputs([eps, z], torch.Generator().manual_seed(seed))
        assert 0.5 <= float(e) <= 2.0


def test_check_gradient_against_autograd_with_gain():
    x, g, eps, r = _rmsnorm_sym()
    u = vector("u", 3)  # upstream gradient dL/dy
    L = sum(u[i] * g[i] * x[i] / r for i in range(3))
    grad = [sp.diff(L, xi) for xi in x]

    def loss(xv, gv, uv, e):
        return (uv * gv * xv / torch.sqrt(xv.pow(2).mean() + e)).sum()

    assert check_gradient(grad, [x, g, u, eps], loss, wrt=0) < 1e-10
    # the textbook formula with the gain factored out of both terms is caught
    D = 3
    wrong = [g[i] / r * (u[i] - x[i] / (D * r**2) * sum(g[j] * u[j] * x[j] for j in range(D))) for i in range(D)]
    with pytest.raises(SymbolicMismatch):
        check_gradient(wrong, [x, g, u, eps], loss, wrt=0)


def test_check_jacobian_and_explicit_inputs():
    x = vector("x", 3)
    J = sp.Matrix([x[0] ** 2, x[0] * x[1], sp.sin(x[2])]).jacobian(x)

    def f(v):
        return torch.stack([v[0] ** 2, v[0] * v[1], torch.sin(v[2])])

    assert check_jacobian(J, [x], f) < 1e-12
    assert check_jacobian(J, [x], f, inputs=[torch.tensor([1.0, 2.0, 3.0])]) < 1e-12
    with pytest.raises(SymbolicMismatch):
        check_jacobian(J.T, [x], f)  # transposed: rows must be outputs


def test_lambdify_torch_checks_shapes():
    x = vector("x", 2)
    f = symbolic.lambdify_torch(x.T * x, [x])
    assert float(f(torch.tensor([1.0, 2.0])).reshape(())) == 5.0
    with pytest.raises(ValueError):
        f(torch.tensor([1.0, 2.0, 3.0]))


# ----------------------------------------------------------------------------- normalisers


def test_normalisers_match_torch_and_minimind():
    from minimind_ref.norm import RMSNorm

    x = torch.randn(3, 5, 64, dtype=torch.float64)
    torch.testing.assert_close(nl.layer_norm(x), F.layer_norm(x, (64,), eps=1e-5))
    torch.testing.assert_close(nl.rms_norm(x), RMSNorm(64).double()(x))
    torch.testing.assert_close(nl.naive_rms_norm(x), nl.rms_norm(x))
    torch.testing.assert_close(nl.prms_norm(x, p=1.0), nl.rms_norm(x))
    with pytest.raises(ValueError):
        nl.prms_norm(x, p=0.0)


def test_vector_with_stats_is_exact():
    v = nl.vector_with_stats(1.5, 2.0, n=32, seed=3)
    assert math.isclose(float(v.mean()), 1.5, abs_tol=1e-12)
    assert math.isclose(float(v.std(unbiased=False)), 2.0, rel_tol=1e-12)


def test_float16_overflow_is_seen_and_float32_statistics_fix_it():
    scales = [1.0, 100.0, 1000.0]
    naive = nl.norm_error_vs_scale(scales, torch.float16, upcast=False, dim=256)
    upcast = nl.norm_error_vs_scale(scales, torch.float16, upcast=True, dim=256)
    assert naive[0] < 1e-2 and naive[1] < 1e-2  # fine below |x| = 256
    assert naive[2] > 0.5  # x^2 overflows to inf, output collapses
    assert (upcast < 1e-2).all()
    bf = nl.norm_error_vs_scale(scales, torch.bfloat16, upcast=True, dim=256)
    f32 = nl.norm_error_vs_scale(scales, torch.float32, upcast=True, dim=256)
    assert (bf > 10 * f32).all()  # bf16's 8-bit mantissa: far coarser than float32


def test_batch_norm_over_tokens_leaks_the_future_and_layer_norm_does_not():
    x = torch.randn(4, 16, 32)
    edited = x.clone()
    edited[:, -1] = torch.randn(4, 32)

    def leak(norm):
        return (norm(edited) - norm(x)).abs().mean(dim=(0, 2))

    bn, ln = leak(nl.batch_norm_tokens), leak(lambda h: F.layer_norm(h, (32,)))
    assert bn.shape == (16,) and bn[0] > 0 and bn[-1] > bn[0]
    assert ln[:-1].max() == 0 and ln[-1] > 0
    torch.testing.assert_close(nl.batch_norm_tokens(x).mean(dim=(0, 1)), torch.zeros(32), atol=1e-5, rtol=0)


def test_affine_fit_residual_is_zero_only_for_a_constant_mean_to_spread_ratio():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 32, generator=g, dtype=torch.float64)
    z = (z - z.mean(-1, keepdim=True)) / z.std(-1, unbiased=False, keepdim=True)
    scale = torch.rand(2000, 1, generator=g, dtype=torch.float64) + 0.5
    assert nl.affine_fit_residual(scale * (z + 1.5)) < 1e-10  # same mu/sigma for every token: exact
    ratio = 1 + torch.rand(2000, 1, generator=g, dtype=torch.float64)
    assert 0.05 < nl.affine_fit_residual(z + ratio) < 0.3  # mu/sigma varies: no fixed map fits


def test_saved_for_backward_sees_what_autograd_keeps():
    x = torch.randn(8, 64, requires_grad=True)
    w, b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    kept = nl.saved_for_backward(lambda t: F.layer_norm(t, (64,), w, b), x)
    assert any(is_x for *_, is_x in kept)  # LayerNorm keeps its input
    big = [k for k in kept if k[0] == (8, 64)]
    assert len(big) == 1  # ... and no other full-size tensor
    xb = x.detach().bfloat16().requires_grad_(True)
    from minimind_ref.norm import RMSNorm

    kept = nl.saved_for_backward(RMSNorm(64).bfloat16(), xb)
    assert sum(n for _, _, n, _ in kept) >= 3 * xb.numel() * 2  # float32 copy + bf16 output


def test_aten_ops_lists_the_arithmetic_kernels():
    x = torch.randn(16, 64)
    assert nl.aten_ops(lambda: F.layer_norm(x, (64,))) == ["native_layer_norm"]
    ops = nl.aten_ops(lambda: x.pow(2).mean(-1))
    assert ops[0] == "pow" and "empty" not in ops


def test_iid_baseline_follows_one_over_sqrt_dim():
    for d in (64, 512):
        mean_ratio, peak_ratio = nl.iid_baseline(d, n=4000)
        assert mean_ratio == pytest.approx(0.6745 / math.sqrt(d), rel=0.06)
        assert 2 < peak_ratio < 4.5  # the largest of d Gaussians, in units of their RMS


def test_norm_placements_and_tiny_training():
    from minimind_ref import MiniMindForCausalLM

    cfg = nl.tiny_config(layers=2, seq=8)
    for placement in ("pre", "post", "none", "layernorm"):
        torch.manual_seed(0)
        m = nl.set_norm_placement(MiniMindForCausalLM(cfg), placement)
        ids = torch.randint(0, 64, (2, 8))
        assert torch.isfinite(m(ids, labels=ids).loss)
    with pytest.raises(ValueError):
        nl.set_norm_placement(MiniMindForCausalLM(cfg), "sideways")
    chain = nl.markov_chain(vocab=64)
    torch.testing.assert_close(chain.sum(-1), torch.ones(64))
    batches = nl.markov_batch(chain, 3 * 4, 8, seed=1).view(3, 4, 8)
    losses, val = nl.train_tiny("pre", seed=0, lr=1e-3, batches=batches, val=batches[0], config=cfg)
    assert len(losses) == 3 and math.isfinite(val)
    losses, val = nl.train_tiny("none", seed=0, lr=1e6, batches=batches, val=batches[0], config=cfg)
    assert len(losses) == 3  # a diverging run still reports one value per step (NaN after divergence)


def test_depth_probe_post_ln_stream_is_normalised_and_the_gradient_is_the_down_projection():
    post = nl.depth_probe("post", layers=3, hidden=64)
    assert len(post["stream"]) == 4 and len(post["ffn_out_grad"]) == 3
    # post-LN: every block after the first, and the final norm (an identity-like second norm), see RMS ~1
    assert all(abs(r - 1) < 1e-3 for r in post["stream"][1:])
    scaled = nl.depth_probe("pre", layers=3, hidden=64, embed_scale=10.0)
    base = nl.depth_probe("pre", layers=3, hidden=64)
    assert scaled["stream"][0] == pytest.approx(10 * base["stream"][0], rel=1e-5)
    assert all(g > 0 for g in base["ffn_out_grad"])
    assert nl.depth_probe("pre", layers=3, hidden=64) == base  # seeded: the same numbers again


def test_norm_inputs_and_dominant_dimension():
    from minimind_ref import MiniMindForCausalLM

    cfg = nl.tiny_config(layers=2, seq=8)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 8))
    inputs = nl.norm_inputs(model, ids)
    assert list(inputs) == ["0.attn", "0.mlp", "1.attn", "1.mlp", "final"]
    assert all(h.shape == (16, cfg.hidden_size) for h in inputs.values())
    torch.testing.assert_close(inputs["0.attn"], model.model.embed_tokens(ids).reshape(16, -1))
    stats = nl.norm_input_stats(model, ids)
    h = inputs["final"]
    rms = h.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(stats["final"][1], h.abs().amax(-1) / rms)
    h = torch.randn(1000, 32)
    h[:600, 7] = 50.0  # dimension 7 dominates 60 % of the tokens
    assert nl.dominant_dimension(h) == (7, pytest.approx(0.6, abs=0.02))


# ----------------------------------------------------------------------------- plots and widgets


@pytest.fixture
def agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_book_style_gives_opaque_white_figures(agg):
    import matplotlib as mpl

    from minimind_ref.lab import plots

    plots.use_book_style()
    assert mpl.colors.to_rgba(mpl.rcParams["figure.facecolor"]) == (1.0, 1.0, 1.0, 1.0)
    assert mpl.rcParams["savefig.transparent"] is False
    fig, ax = plots.subplots()
    plots.label(ax, "t", "x (s)", "y (m)")
    assert ax.get_xlabel() == "x (s)"
    with pytest.raises(ValueError):
        plots.label(ax, "t", "", "y")


def test_sphere_figure_maps_every_scale_to_one_point_with_a_tangent_gradient(agg):
    fig, ax = agg.subplots()
    r = nl.plot_sphere(ax)
    torch.testing.assert_close(r["outputs"], r["outputs"][:1].expand_as(r["outputs"]))
    assert float(r["outputs"][0].norm()) == pytest.approx(math.sqrt(2))
    assert abs(float(r["grad"] @ r["x"])) < 1e-12


# ----------------------------------------------------------------------------- timing


def test_compare_returns_ratios_without_asserting_on_time(capsys):
    from minimind_ref.lab.timing import bandwidth, compare

    x = torch.randn(256, 256)
    t = compare({"copy": lambda: x.clone(), "matmul": lambda: x @ x}, min_run_time=0.02, rounds=5, label="t")
    assert t.ratio("copy") == 1.0
    assert all(len(v) == 5 for v in t.rounds.values())  # every callable timed in every round
    per_round = sorted(m / c for m, c in zip(t.rounds["matmul"], t.rounds["copy"], strict=True))
    assert t.ratio("matmul") == per_round[2]  # the median of the same-round ratios
    assert set(t.ratios()) == {"copy", "matmul"}
    q1, med, q3 = t.ratio_quartiles("matmul")
    assert q1 <= med == t.ratio("matmul") <= q3
    assert t.per_round("matmul", "copy") == [m / c for m, c in zip(t.rounds["matmul"], t.rounds["copy"], strict=True)]
    out = capsys.readouterr().out
    assert "cpu" in out or "cuda" in out or "mps" in out
    with pytest.raises(KeyError):
        compare({"a": lambda: None}, baseline="b", min_run_time=0.01)
    assert bandwidth(4 * 2**20, min_run_time=0.02) > 1e8  # any machine moves more than 100 MB/s


def test_steady_memory_keeps_freed_blocks_and_restores_the_defaults():
    import resource

    from minimind_ref.lab.timing import compare, steady_memory

    def faults(fn, n=20):
        for _ in range(5):  # the heap grows to its working size first
            fn()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    x = torch.randn(2**20)  # 4 MiB: above glibc's default mmap threshold
    with steady_memory() as kept:
        inside = faults(lambda: x * 2)
    if not kept:
        pytest.skip("not glibc: mallopt is not available")
    # the freed output is reused: fresh pages would be 1,024 per call (20,480 in all); allow a
    # little for the rest of the process (other threads, the allocator's bookkeeping) on a busy machine
    assert inside < 2 * x.numel() * 4 // 4096
    t = compare({"a": lambda: x * 2}, min_run_time=0.01, rounds=2, steady_memory=True, verbose=False)
    assert t.steady_memory is True
    assert "freed memory kept" in str(t)


def test_clock_is_thread_cpu_time_only_for_one_cpu_thread():
    from minimind_ref.lab.timing import clock

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = "wall clock" if torch.cuda.is_available() else "thread CPU time"
        assert clock()[0] == expected
        torch.set_num_threads(2)
        assert clock()[0] == "wall clock"
    finally:
        torch.set_num_threads(threads)


def test_glue_works_with_and_without_myst_nb(monkeypatch):
    lab.glue("test_value", 1.5, display=False)  # myst-nb installed here: must not raise
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # simulate Colab: import fails
    lab.glue("test_value", 1.5, display=False)
