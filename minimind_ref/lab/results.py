"""The committed benchmark results, read for the Performance appendix: numbers with their spread, cost models,
figures.

``python -m benchmarks`` writes ``benchmarks/results/<device>.json`` (every round of every candidate) and
``python -m benchmarks.profile_steps`` writes ``<device>-profile.json``. The appendix reads them when the book
is built, so that every number in its prose is the committed measurement, printed the same way everywhere:
two significant figures, with the number of rounds and the range of the per-round values.

A ratio is the median over rounds of the *same-round* ratio (both candidates timed one after the other in
every round, so that a burst of load slows both); a time is the median of a candidate's own rounds. The ratio
of two median times is therefore close to, but not the same number as, the ratio printed beside them.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A section is re-run (``python -m benchmarks --only <section> --merge``) when, in any of its results, the
#: largest per-round ratio exceeds the smallest by more than this factor: a burst of load hit some rounds and
#: not others. It is re-run once; the re-run replaces the whole section, whatever its own spread.
RERUN_SPREAD = 1.25

#: The sections of a results file, in the order of the benchmarks.
TITLES = {
    "train": "1. Training step (forward + backward), default config, batch 4 x 256, float32",
    "compile": "1b. torch.compile(fullgraph=True) of the same training step",
    "decode": "2. Greedy decoding, 32-token prompt + 128 new tokens, batch 1 (identical tokens)",
    "moe-infer": "3a. MoE layer, inference (8 routed experts, top-2, 1 shared; 8 x 256 tokens)",
    "moe-train": "3b. MoE layer, training (forward + backward)",
    "context": "4. One decoding step against the context length (ratio to the same implementation at 64)",
    "norm-forward": "5a. Normalisation, forward (4, 256, 512)",
    "norm-train": "5b. Normalisation, forward + backward (4, 256, 512)",
    "attention-forward": "5c. Attention layer, forward (projections included)",
    "attention-train": "5d. Attention layer, forward + backward",
}


def sig(x: float, digits: int = 2) -> str:
    """``x`` rounded to ``digits`` significant figures, in plain notation: 0.9088 -> '0.91', 1.832 -> '1.8',
    12.6 -> '13', 21 540 -> '22,000'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    rounded = round(x, decimals)
    decimals = digits - 1 - math.floor(math.log10(abs(rounded)))  # 0.996 -> 1.0: one decimal, not two
    rounded = round(x, decimals)
    return f"{rounded:.{decimals}f}" if decimals > 0 else f"{int(round(rounded)):,}"


@dataclass
class Result:
    """One row of a results file: a candidate's median time and, if it has a baseline, its ratio."""

    bench: str
    name: str
    seconds: float  # median over rounds
    rounds: list[float]  # seconds per round
    baseline: str | None = None
    ratios: list[float] = field(default_factory=list)  # same-round ratios to the baseline
    note: str = ""

    @property
    def ratio(self) -> float:
        """The median of the same-round ratios."""
        if not self.ratios:
            raise ValueError(f"{self.bench}/{self.name} has no baseline")
        return statistics.median(self.ratios)

    @property
    def n(self) -> int:
        return len(self.rounds)

    def spread(self) -> float:
        """Largest over smallest per-round ratio (1.0: every round agreed)."""
        return max(self.ratios) / min(self.ratios) if self.ratios else 1.0

    def ratio_text(self) -> str:
        """'0.91 (5 rounds: 0.86-0.95)': the median ratio, the round count and the range of per-round ratios."""
        return f"{sig(self.ratio)} ({_rounds(self.n)}: {sig(min(self.ratios))}–{sig(max(self.ratios))})"

    def time_text(self, per: int = 1, unit: str = "ms", scale: float = 1e3) -> str:
        """'12 ms (5 rounds: 11-14)': the median time (divided by ``per``) and the range of the rounds."""
        t = [r / per * scale for r in self.rounds]
        return f"{sig(self.seconds / per * scale)} {unit} ({_rounds(self.n)}: {sig(min(t))}–{sig(max(t))})"


def _rounds(n: int) -> str:
    return "1 round" if n == 1 else f"{n} rounds"


class Results:
    """A results file of ``python -m benchmarks``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        payload = json.loads(self.path.read_text())
        self.date: str = payload["date_utc"]
        self.environment: dict[str, Any] = payload["environment"]
        self.info: dict[str, Any] = payload["info"]
        raw = payload["rows"]
        self.results: list[Result] = []
        for row in raw:
            ratios = row.get("ratio_rounds") or []
            if row.get("baseline") and not ratios:  # files written before ratio_rounds was recorded
                base = next(
                    r
                    for r in raw
                    if r["bench"] == row["bench"]
                    and r["name"] == row["baseline"]
                    and r["rounds"]
                    and len(r["rounds"]) == len(row["rounds"])
                )
                ratios = [a / b for a, b in zip(row["rounds"], base["rounds"], strict=True)]
            self.results.append(
                Result(
                    row["bench"],
                    row["name"],
                    row["seconds"],
                    row["rounds"],
                    row.get("baseline"),
                    ratios,
                    row.get("note", ""),
                )
            )

    def get(self, bench: str, name: str, baseline: str | None = None) -> Result:
        """The row of ``name`` in section ``bench`` (with ``baseline`` when the name appears more than once)."""
        found = [
            r
            for r in self.results
            if r.bench == bench and r.name == name and (baseline is None or r.baseline == baseline)
        ]
        if len(found) != 1:
            names = sorted({f"{r.name} (to {r.baseline})" for r in self.results if r.bench == bench})
            raise KeyError(f"{len(found)} rows named {name!r} (baseline {baseline!r}) in section {bench!r}: {names}")
        return found[0]

    def section(self, bench: str) -> list[Result]:
        return [r for r in self.results if r.bench == bench]

    def to_rerun(self) -> list[str]:
        """The sections whose widest per-round spread exceeds ``RERUN_SPREAD`` (and were not re-run already)."""
        rerun = {s for entry in self.info.get("re-run", []) for s in entry["sections"]}
        spoilt = {r.bench for r in self.results if r.spread() > RERUN_SPREAD}
        return sorted(spoilt - rerun)

    def table(self, bench: str) -> str:
        """A Markdown table of one section: median time, ratio with its rounds and range, baseline, note."""
        lines = [
            "| candidate | median time | ratio (median of same-round ratios) | rounds: range | to | note |",
            "|---|---:|---:|---|---|---|",
        ]
        for r in self.section(bench):
            ratio = sig(r.ratio) if r.ratios else ""
            spread = f"{r.n}: {sig(min(r.ratios))}–{sig(max(r.ratios))}" if r.ratios else f"{r.n}"
            lines.append(f"| {r.name} | {_time(r.seconds)} | {ratio} | {spread} | {r.baseline or ''} | {r.note} |")
        return "\n".join(lines)


def _time(s: float) -> str:
    if s >= 1:
        return f"{sig(s, 3)} s"
    if s >= 1e-3:
        return f"{sig(s * 1e3, 3)} ms"
    return f"{sig(s * 1e6, 3)} µs"


# ---------------------------------------------------------------------------------------------- cost models
def decode_step_cost(cfg, context: int) -> dict[str, float]:
    """FLOPs and bytes of one decoding step at batch 1 with ``context`` cached tokens (float32).

    weights: every matrix applied to one vector, 2 FLOPs per weight, 4 bytes per weight read;
    attention: each query head takes ``context`` dot products with the keys and sums ``context`` values
    (4 d_h FLOPs per cached token and head); the cache holds K and V of every layer and KV head, read once per
    KV head by an implementation that keeps GQA's sharing, once per query head by one that copies K/V per head.
    """
    d, L, hd = cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim
    H, Hkv, dff, V = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size
    attn_weights = d * H * hd + 2 * d * Hkv * hd + H * hd * d  # q, k, v, o
    mlp_weights = 3 * d * dff  # gate, up, down
    weights = L * (attn_weights + mlp_weights) + d * V  # + the language-model head
    kv_bytes = 2 * L * Hkv * hd * context * 4
    return {
        "weights": weights,
        "weight_flops": 2 * weights,
        "attention_flops": 4 * L * H * hd * context,
        "flops": 2 * weights + 4 * L * H * hd * context,
        "weight_bytes": 4 * weights,
        "cache_bytes": kv_bytes,
        "bytes_per_kv_head": 4 * weights + kv_bytes,
        "bytes_per_query_head": 4 * weights + kv_bytes * (H // Hkv),
    }


# ---------------------------------------------------------------------------------------------- figures
DECODE_ORDER = [
    ("floor: the step's matrix-vector products only", "floor (the step's GEMVs only)"),
    ("minimind_ref generate(compile=True)", "minimind_ref, compile=True"),
    ("transformers generate, static cache + compile", "transformers, static cache + compile"),
    ("minimind_ref generate", "minimind_ref, eager"),
    ("transformers Llama generate", "transformers generate, eager"),
    ("upstream-style greedy loop", "upstream-style loop, eager"),
]
HF = "transformers Llama generate"
FAMILY_COLORS = {"floor": "#7f7f7f", "minimind_ref": "#D55E00", "transformers": "#0072B2", "upstream": "#009E73"}


def plot_decoding(ax, results: Results) -> None:
    """Horizontal bars of ms per token (median, with the range of the rounds), the floor as a line, and each
    candidate's ratio to transformers' eager generate."""
    new = results.info["decode_new_tokens"]
    rows = []
    for name, label in DECODE_ORDER:
        try:
            r = results.get("decode", name, HF if name != HF else None)
        except KeyError:
            continue
        rows.append((label, r))
    ys = list(range(len(rows)))[::-1]
    for y, (label, r) in zip(ys, rows, strict=True):
        ms = [t / new * 1e3 for t in r.rounds]
        med = r.seconds / new * 1e3
        color = next(c for key, c in FAMILY_COLORS.items() if key in label)
        ax.barh(y, med, color=color, alpha=0.85)
        ax.errorbar(med, y, xerr=[[med - min(ms)], [max(ms) - med]], fmt="none", ecolor="#222222", capsize=3, lw=1)
        text = "baseline" if r.name == HF else f"{sig(r.ratio)} × ({sig(min(r.ratios))}–{sig(max(r.ratios))})"
        ax.text(max(ms) * 1.02, y, text, va="center", fontsize=9)
        if label.startswith("floor"):
            ax.axvline(med, color="#7f7f7f", ls="--", lw=1.2)
    ax.set_yticks(ys, [label for label, _ in rows])
    ax.set_xlim(0, max(max(r.rounds) for _, r in rows) / new * 1e3 * 1.45)
    ax.grid(axis="y", visible=False)


def warmup_on_clock(results: Results, cache: str, name: str) -> float:
    """The compile warm-up of ``name`` (``cache``: "cold" or "warm") on the clock the rounds were timed by:
    CPU seconds when they were timed by the process's CPU time, wall seconds otherwise. The break-even divides
    it by a per-token saving measured on that clock."""
    w = results.info["decode_warmup"][cache][name]
    cpu = results.environment.get("clock") == "process CPU time"
    return w["warmup_cpu_s"] if cpu else w["warmup_s"]


def plot_break_even(ax, results: Results) -> None:
    """Total time of a generation against its length, eager and compiled (cold and warm Inductor cache)."""
    import numpy as np

    compiled, eager = "minimind_ref generate(compile=True)", "minimind_ref generate"
    new = results.info["decode_new_tokens"]
    t_eager = results.get("decode", eager, HF).seconds / new
    saving = results.info["decode_saving_per_token_s"][compiled]
    n = np.logspace(1, 6, 200)
    ax.loglog(n, n * t_eager, color="#0072B2", label="eager")
    for cache, style in (("cold", "-"), ("warm", "--")):
        warm = warmup_on_clock(results, cache, compiled)
        ax.loglog(
            n, warm + n * (t_eager - saving), color="#D55E00", ls=style, label=f"compile=True, {cache} Inductor cache"
        )
        if saving > 0:
            b = warm / saving
            ax.plot([b], [b * t_eager], "o", color="#D55E00")
            ax.annotate(f"{sig(b)} tokens", (b, b * t_eager), textcoords="offset points", xytext=(6, -14), fontsize=9)
    ax.legend(loc="upper left")


CONTEXT_IMPLS = [
    ("minimind_ref cached", "minimind_ref, eager", "#D55E00", "-"),
    ("minimind_ref compiled", "minimind_ref, compiled step", "#E69F00", "-"),
    ("transformers Llama cached", "transformers Llama", "#0072B2", "-"),
    ("upstream-style cached", "upstream-style (concatenated cache, repeat_kv)", "#009E73", "-"),
]


def plot_context(ax, results: Results, cfg) -> None:
    """Time of a step at each context length over the same implementation's at the shortest: measured (median
    and range of the per-round ratios) and the three cost models."""
    contexts = results.info["context_lengths"]
    lo = contexts[0]
    for impl, label, color, style in CONTEXT_IMPLS:
        try:
            rs = [results.get("context", f"{impl} @{S}") for S in contexts[1:]]
        except KeyError:
            continue
        med = [1.0] + [r.ratio for r in rs]
        low = [0.0] + [r.ratio - min(r.ratios) for r in rs]
        high = [0.0] + [max(r.ratios) - r.ratio for r in rs]
        ax.errorbar(contexts, med, yerr=[low, high], color=color, ls=style, marker="o", ms=4, capsize=3, label=label)
    base = decode_step_cost(cfg, lo)
    models = [
        ("flops", "FLOP model", ":"),
        ("bytes_per_kv_head", "byte model, K/V read once per KV head", "-."),
        ("bytes_per_query_head", "byte model, K/V read once per query head", "--"),
    ]
    for key, label, style in models:
        ax.plot(
            contexts,
            [decode_step_cost(cfg, S)[key] / base[key] for S in contexts],
            color="#555555",
            ls=style,
            lw=1.3,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(S) for S in contexts])
    ax.minorticks_off()
    ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def profile_on_cpu(profile: dict) -> dict:
    """A ``profile_steps`` file with every step's parts in milliseconds of the process's CPU time.

    The profiler's times are wall-clock. On a machine with more runnable jobs than cores, a one-thread process
    spends much of its wall time waiting for a core, and each part's wall time holds its share of that waiting.
    With one torch thread the file records the process's CPU time beside the wall time; each part is then
    scaled by CPU time / wall time (the waiting taken as spread over the step like its work, so the parts'
    shares are unchanged), and the GFLOP/s of the matrix products by the inverse. ``ms_per_step`` is the step's
    total (CPU time when scaled, wall time otherwise) and ``on_cpu`` the fraction of wall time the process
    had a core (None when not scaled)."""
    import copy

    out = copy.deepcopy(profile)
    scale = out.get("environment", {}).get("threads") == 1
    for section in ("training", "decoding"):
        for name, p in out.get(section, {}).items():
            if not isinstance(p, dict) or "parts_ms" not in p:
                continue
            p = out[section][name] = copy.deepcopy(p)  # its own copy, even where the input shares one
            f = p["cpu_ms_per_step"] / p["wall_ms_per_step"] if scale and "cpu_ms_per_step" in p else None
            p["on_cpu"] = f
            p["ms_per_step"] = p["wall_ms_per_step"] * (f or 1.0)
            p["parts_ms"] = {k: v * (f or 1.0) for k, v in p["parts_ms"].items()}
            if f and "matmul_gflops_per_s" in p:
                p["matmul_gflops_per_s"] /= f
    return out


PART_COLORS = {
    "matrix products": "#0072B2",
    "attention kernel": "#009E73",
    "fused kernels (Inductor)": "#E69F00",
    "other operators": "#CC79A7",
    "outside operators": "#BBBBBB",
}


def plot_profile(ax, parts_by_candidate: dict[str, dict[str, float]]) -> None:
    """Stacked horizontal bars: milliseconds per step in each part of the profile."""
    names = list(parts_by_candidate)
    ys = list(range(len(names)))[::-1]
    shown = set()
    for y, name in zip(ys, names, strict=True):
        left = 0.0
        for part, color in PART_COLORS.items():
            ms = parts_by_candidate[name].get(part, 0.0)
            if ms <= 0:
                continue
            ax.barh(y, ms, left=left, color=color, label=None if part in shown else part)
            shown.add(part)
            left += ms
        ax.text(left * 1.01, y, f"{sig(left)} ms", va="center", fontsize=9)
    ax.set_yticks(ys, names)
    ax.set_xlim(0, max(sum(p.values()) for p in parts_by_candidate.values()) * 1.18)
    ax.grid(axis="y", visible=False)
    ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=3, frameon=False)
