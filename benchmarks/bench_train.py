"""Benchmark 1: one training step (forward + backward) of the default 26 M config, batch 4 x 256, float32."""

from __future__ import annotations

import time

import torch

from minimind_ref import MiniMindConfig

from .common import Row, interleaved
from .models import build, llama_twin, upstream_twin

TARGET_VS_LLAMA = 0.95


def _step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    return out.loss


def run(device: torch.device, quick: bool = False, compiled: bool = True) -> tuple[list[Row], dict]:
    cfg = MiniMindConfig()
    bsz, seq_len = (4, 256)
    mm = build(cfg, device).train()
    llama = llama_twin(mm).train()
    up = upstream_twin(mm).train()
    x = torch.randint(0, cfg.vocab_size, (bsz, seq_len), device=device)

    # same weights, same loss, same gradients: the three compute one function
    losses = {name: _step(m, x).item() for name, m in (("mm", mm), ("llama", llama), ("up", up))}
    ours = dict(mm.named_parameters())
    for m in (llama, up):
        theirs = dict(m.named_parameters())
        assert set(theirs) == set(ours)
        for k, p in ours.items():
            torch.testing.assert_close(theirs[k].grad, p.grad, rtol=1e-3, atol=1e-5)
    assert max(losses.values()) - min(losses.values()) < 1e-4, losses

    fns = {
        "minimind_ref": lambda: _step(mm, x),
        "transformers Llama (sdpa)": lambda: _step(llama, x),
        "upstream-style MiniMind": lambda: _step(up, x),
    }
    print(f"  training step, batch {bsz} x {seq_len}", flush=True)
    cmp = interleaved(fns, rounds=3 if quick else 5)
    base = "transformers Llama (sdpa)"
    rows = [
        cmp.row("train", "minimind_ref", base, TARGET_VS_LLAMA),
        cmp.row("train", "upstream-style MiniMind", base),
        cmp.row("train", base),
    ]
    info = {"train_shape": [bsz, seq_len], "train_loss": losses["mm"]}

    if compiled:
        rows += _compiled(mm, llama, x, quick, info)
    return rows, info


def _compiled(mm, llama, x, quick: bool, info: dict) -> list[Row]:
    """torch.compile(fullgraph=True) of the same model: compile time and compiled/eager step time."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(mm, fullgraph=True)
    t0 = time.perf_counter()
    try:
        loss_c = _step(compiled, x)
        _step(compiled, x)  # a second call: recompilation would show here
    except Exception as exc:  # report, do not hide: the table says why there is no ratio
        info["compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
        print("  torch.compile failed:", info["compile_error"], flush=True)
        return [Row("compile", "torch.compile(minimind_ref) training step", float("nan"),
                    note=f"compile failed: {info['compile_error'][:120]}")]
    info["compile_seconds"] = time.perf_counter() - t0
    loss_e = _step(mm, x)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-4)
    print(f"  torch.compile: first two steps (compilation included) {info['compile_seconds']:.1f} s", flush=True)
    base = "transformers Llama (sdpa), eager"
    cmp = interleaved({"minimind_ref eager": lambda: _step(mm, x), "minimind_ref compiled": lambda: _step(compiled, x),
                       base: lambda: _step(llama, x)}, rounds=3 if quick else 5)
    note = f"torch.compile(fullgraph=True), default mode; compiling took {info['compile_seconds']:.0f} s"
    return [cmp.row("compile", "minimind_ref compiled", "minimind_ref eager", note=note),
            cmp.row("compile", "minimind_ref compiled", base, note="compiled against the eager Llama"),
            cmp.row("compile", "minimind_ref eager", base), cmp.row("compile", base)]
