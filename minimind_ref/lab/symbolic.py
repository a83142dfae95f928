"""Derivations that check themselves: sympy results compared with PyTorch autograd in float64.

A chapter derives a formula in sympy on a small concrete dimension (say D = 4, with symbols
``x0 .. x3``), then hands the expression, its symbols and the PyTorch function it claims to describe
to one of the ``check_*`` functions below. They turn the expression into a float64 function
(``sympy.lambdify``), evaluate both sides on random inputs and raise :class:`SymbolicMismatch`
(an ``AssertionError``) with the largest error when they differ. A wrong derivation therefore fails
the notebook, and so the book build.

Arguments are described by *symbol groups*: a group is one sympy ``Symbol`` (a scalar, sampled as a
0-d tensor) or a sequence / column ``Matrix`` of symbols (a vector, sampled as a 1-d tensor).
Symbols declared ``positive=True`` are sampled in [0.5, 2], all others from a standard normal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "SymbolicMismatch",
    "init_printing",
    "vector",
    "lambdify_torch",
    "sample_inputs",
    "check_expr",
    "check_gradient",
    "check_jacobian",
]


class SymbolicMismatch(AssertionError):
    """A sympy expression and the PyTorch computation it should describe disagree."""

    def __init__(self, message: str, max_error: float):
        super().__init__(message)
        self.max_error = max_error


def init_printing() -> None:
    """sympy's pretty printing as MathJax (``init_printing()`` alone renders PNG images of math)."""
    import sympy as sp

    sp.init_printing(use_latex="mathjax")


def vector(name: str, n: int, **assumptions: Any):
    """A column ``Matrix`` of n symbols ``name0 .. name{n-1}``, e.g. ``vector('x', 4)``."""
    import sympy as sp

    return sp.Matrix(sp.symbols(f"{name}0:{n}", **assumptions))


def _groups(args: Sequence[Any]) -> list[tuple[bool, list]]:
    """(is_vector, [symbols]) for each argument group."""
    import sympy as sp

    out = []
    for a in args:
        if isinstance(a, sp.Symbol):
            out.append((False, [a]))
        else:
            out.append((True, list(a)))
    return out


def lambdify_torch(expr, args: Sequence[Any]) -> Callable[..., torch.Tensor]:
    """``expr`` (scalar or Matrix) as a function of float64 tensors, one per symbol group.

    The result has the expression's shape: a scalar gives a 0-d tensor, a column vector a 1-d
    tensor, a matrix a 2-d tensor.
    """
    import numpy as np
    import sympy as sp

    groups = _groups(args)
    flat = [s for _, syms in groups for s in syms]
    f = sp.lambdify(flat, expr, modules="numpy")
    is_matrix = isinstance(expr, sp.MatrixBase)
    shape = tuple(expr.shape) if is_matrix else ()
    if is_matrix and shape[1] == 1:
        shape = (shape[0],)

    def call(*tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) != len(groups):
            raise TypeError(f"expected {len(groups)} inputs (one per symbol group), got {len(tensors)}")
        values = []
        for (is_vec, syms), t in zip(groups, tensors, strict=True):
            t = torch.as_tensor(t, dtype=torch.float64)
            if is_vec:
                if t.shape != (len(syms),):
                    raise ValueError(f"a group of {len(syms)} symbols needs a tensor of shape ({len(syms)},), "
                                     f"got {tuple(t.shape)}")
                values.extend(float(v) for v in t)
            else:
                values.append(float(t))
        result = np.asarray(f(*values), dtype=np.float64)
        return torch.from_numpy(result.reshape(shape).copy())

    return call


def sample_inputs(args: Sequence[Any], generator: torch.Generator) -> list[torch.Tensor]:
    """Random float64 inputs for the symbol groups (positive symbols in [0.5, 2], others N(0, 1))."""
    out = []
    for is_vec, syms in _groups(args):
        vals = []
        for s in syms:
            if s.is_positive:
                vals.append(0.5 + 1.5 * torch.rand((), generator=generator, dtype=torch.float64))
            else:
                vals.append(torch.randn((), generator=generator, dtype=torch.float64))
        t = torch.stack(vals)
        out.append(t if is_vec else t[0])
    return out


def _trials(args, inputs, sample, n_trials, seed):
    if inputs is not None:
        return [[torch.as_tensor(t, dtype=torch.float64) for t in inputs]]
    gen = torch.Generator().manual_seed(seed)
    draw = sample if sample is not None else (lambda g: sample_inputs(args, g))
    return [[torch.as_tensor(t, dtype=torch.float64) for t in draw(gen)] for _ in range(n_trials)]


def _compare(got: torch.Tensor, want: torch.Tensor, what: str, atol: float, rtol: float) -> float:
    if got.shape != want.shape:
        raise SymbolicMismatch(f"{what}: shapes differ, sympy {tuple(got.shape)} vs torch {tuple(want.shape)}",
                               float("inf"))
    err = float((got - want).abs().max()) if got.numel() else 0.0
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        raise SymbolicMismatch(f"{what}: sympy and autograd differ, max |difference| = {err:.3g} "
                               f"(atol={atol:g}, rtol={rtol:g})", err)
    return err


def check_expr(expr, args: Sequence[Any], torch_fn: Callable[..., torch.Tensor], *,
               inputs: Sequence[torch.Tensor] | None = None,
               sample: Callable[[torch.Generator], Sequence[torch.Tensor]] | None = None,
               n_trials: int = 5, seed: int = 0, atol: float = 1e-10, rtol: float = 1e-8) -> float:
    """Check ``expr(args) == torch_fn(*inputs)`` in float64; return the largest absolute error.

    ``inputs`` gives one explicit trial; otherwise ``sample(generator)`` (default: :func:`sample_inputs`)
    draws ``n_trials`` of them. Raises :class:`SymbolicMismatch` when any trial differs.
    """
    f = lambdify_torch(expr, args)
    worst = 0.0
    for trial in _trials(args, inputs, sample, n_trials, seed):
        got = f(*trial)
        want = torch.as_tensor(torch_fn(*trial), dtype=torch.float64).detach()
        if want.numel() == got.numel():
            want = want.reshape(got.shape)
        worst = max(worst, _compare(got, want, "value", atol, rtol))
    return worst


def check_gradient(expr, args: Sequence[Any], torch_fn: Callable[..., torch.Tensor], wrt: int = 0, *,
                   inputs: Sequence[torch.Tensor] | None = None,
                   sample: Callable[[torch.Generator], Sequence[torch.Tensor]] | None = None,
                   n_trials: int = 5, seed: int = 0, atol: float = 1e-10, rtol: float = 1e-8) -> float:
    """Check a hand-derived gradient against autograd; return the largest absolute error.

    ``expr`` is the claimed gradient of the scalar ``torch_fn(*inputs)`` with respect to the
    symbol group ``args[wrt]``: a Matrix (or list) with one entry per symbol of that group.
    To check sympy's own differentiation, pass ``[sp.diff(L, s) for s in group]``.
    """
    import sympy as sp

    expr = sp.Matrix(expr) if not isinstance(expr, sp.MatrixBase) else expr
    f = lambdify_torch(expr, args)
    worst = 0.0
    for trial in _trials(args, inputs, sample, n_trials, seed):
        leaves = [t.clone().requires_grad_(i == wrt) for i, t in enumerate(trial)]
        out = torch_fn(*leaves)
        if out.numel() != 1:
            raise ValueError(f"torch_fn must return a scalar to take its gradient, got shape {tuple(out.shape)}")
        (grad,) = torch.autograd.grad(out.reshape(()), leaves[wrt])
        worst = max(worst, _compare(f(*trial).reshape(grad.shape), grad.detach(), "gradient", atol, rtol))
    return worst


def check_jacobian(expr, args: Sequence[Any], torch_fn: Callable[..., torch.Tensor], wrt: int = 0, *,
                   inputs: Sequence[torch.Tensor] | None = None,
                   sample: Callable[[torch.Generator], Sequence[torch.Tensor]] | None = None,
                   n_trials: int = 5, seed: int = 0, atol: float = 1e-10, rtol: float = 1e-8) -> float:
    """Check a Jacobian matrix ``d torch_fn / d args[wrt]`` (rows: outputs) against autograd."""
    f = lambdify_torch(expr, args)
    worst = 0.0
    for trial in _trials(args, inputs, sample, n_trials, seed):
        def fn(v, trial=trial):
            return torch_fn(*[v if i == wrt else t for i, t in enumerate(trial)])

        jac = torch.autograd.functional.jacobian(fn, trial[wrt])
        worst = max(worst, _compare(f(*trial).reshape(jac.shape), jac, "Jacobian", atol, rtol))
    return worst
