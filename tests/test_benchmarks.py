"""The benchmark package's arithmetic and baselines (cheap: no timing of real models here).

The ratios in benchmarks/results and in the appendix are medians of same-round ratios; the naive MoE
baselines compute the same function as minimind_ref; a partial re-run replaces only its own sections.
"""

import json

import pytest
import torch

from benchmarks.common import Comparison, Row, interleaved
from benchmarks.naive_moe import group_by_expert, grouped_floor, per_token_moe
from benchmarks.report import markdown, merge, write
from minimind_ref.moe import MoEFeedForward

from .conftest import tiny_config


def test_ratio_is_the_median_of_same_round_ratios():
    # round 2 is slowed for both candidates by a neighbour: per-round ratios are 0.5, 0.5, 0.9
    cmp = Comparison({"a": [1.0, 5.0, 0.9], "b": [2.0, 10.0, 1.0]})
    assert cmp.ratio("a", "b") == pytest.approx(0.5)
    assert cmp.median("a") == pytest.approx(1.0)
    row = cmp.row("x", "a", "b", target=0.6)
    assert row.met and row.target == "<= 0.6" and row.rounds == [1.0, 5.0, 0.9]
    assert not cmp.row("x", "a", "b", target=0.4).met


def test_interleaved_times_every_candidate_in_every_round():
    calls = []
    cmp = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, number=2,
                      warmup=1, verbose=False)
    assert len(cmp.times["a"]) == len(cmp.times["b"]) == 3
    assert calls.count("a") == calls.count("b") >= 1 + 3 * 2  # Timer.timeit adds its own warm-up calls


def test_report_lists_targets_and_merge_replaces_only_rerun_sections(tmp_path):
    env = {"device": "cpu", "device_name": "test cpu", "threads": 2, "cpu_count": 2, "torch": "x",
           "transformers": "y", "python": "3", "load_average_at_start": (1.0, 1.0, 1.0)}
    rows = [Row("train", "minimind_ref", 1.0, "llama", 1.01, "<= 0.95", False),
            Row("moe-infer", "minimind_ref MoE", 0.2, "floor", 1.3, "<= 1.15", False)]
    text = markdown(rows, env, {"command": "python -m benchmarks"}, "2026-01-01 00:00", 10.0)
    assert "### Targets" in text and text.count("**no**") == 4  # twice in the summary, twice in the sections
    write(rows, env, {"command": "python -m benchmarks"}, "2026-01-01 00:00", 10.0, tmp_path, "cpu")

    new = [Row("moe-infer", "minimind_ref MoE", 0.2, "floor", 1.02, "<= 1.15", True)]
    merged, env2, info, started, _ = merge(tmp_path / "cpu.json", new, env, {"command": "--only moe"},
                                           "2026-01-01 01:00", 5.0)
    assert [(r.bench, r.ratio) for r in merged] == [("train", 1.01), ("moe-infer", 1.02)]
    assert started == "2026-01-01 00:00" and info["re-run"][0]["sections"] == ["moe-infer"]
    write(merged, env2, info, started, 10.0, tmp_path, "cpu")
    assert "re-run later" in (tmp_path / "cpu.md").read_text()
    assert len(json.loads((tmp_path / "cpu.json").read_text())["rows"]) == 2


@pytest.mark.parametrize("training", [False, True])
def test_naive_moe_baselines_compute_what_minimind_ref_computes(training):
    cfg = tiny_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=2)
    moe = MoEFeedForward(cfg).train(training)
    x = torch.randn(2, 8, cfg.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(per_token_moe(moe, x), moe(x), rtol=1e-5, atol=1e-6)
        blocks = group_by_expert(moe, x)
        assert sum(b.shape[0] for b in blocks) == x.shape[0] * x.shape[1] * cfg.num_experts_per_tok
        outs = grouped_floor(moe, blocks, x)
    assert len(outs) == cfg.n_routed_experts + cfg.n_shared_experts


# ---- the appendix's reading of the results (minimind_ref.lab.results) ----------------------------------------


def _results_file(tmp_path, rows, info=None):
    env = {"device": "cpu", "device_name": "test cpu", "threads": 2, "cpu_count": 2, "torch": "x",
           "transformers": "y", "python": "3", "load_average_at_start": (1.0, 1.0, 1.0)}
    write(rows, env, {"command": "python -m benchmarks", **(info or {})}, "2026-01-01 00:00", 10.0, tmp_path, "cpu")
    return tmp_path / "cpu.json"


def test_numbers_are_printed_with_two_significant_figures():
    from minimind_ref.lab.results import sig

    cases = {0.90876: "0.91", 1.832: "1.8", 12.6: "13", 21540: "22,000", 0.996: "1.0", 0.01234: "0.012", 7.3: "7.3",
             0: "0", 150.0: "150"}
    assert {x: sig(x) for x in cases} == cases
    assert sig(1.6237, 3) == "1.62" and sig(None) == "n/a" and sig(float("inf")) == "n/a"


def test_results_give_each_ratio_with_its_rounds_and_range(tmp_path):
    from minimind_ref.lab.results import Results

    cmp = Comparison({"a": [1.0, 5.0, 0.9, 1.2], "b": [2.0, 10.0, 1.0, 1.0]})
    path = _results_file(tmp_path, [cmp.row("x", "a", "b"), cmp.row("x", "b")])
    r = Results(path).get("x", "a")
    assert r.ratios == [0.5, 0.5, 0.9, 1.2] and r.ratio == pytest.approx(0.7)
    assert r.ratio_text() == "0.70 (4 rounds: 0.50–1.2)"
    assert r.time_text() == "1,100 ms (4 rounds: 900–5,000)"
    assert r.time_text(per=100) == "11 ms (4 rounds: 9.0–50)"
    with pytest.raises(KeyError, match="section 'x'"):
        Results(path).get("x", "c")
    table = Results(path).table("x")
    assert "| a | 1.10 s | 0.70 | 4: 0.50–1.2 | b |" in table


def test_results_without_recorded_ratio_rounds_use_the_baselines_rounds(tmp_path):
    from minimind_ref.lab.results import Results

    path = _results_file(tmp_path, [Row("x", "a", 1.0, "b", 0.5, rounds=[1.0, 2.0, 3.0]),
                                    Row("x", "b", 2.0, rounds=[2.0, 4.0, 3.0])])
    payload = json.loads(path.read_text())
    for row in payload["rows"]:
        row.pop("ratio_rounds")  # as in a file written before the field existed
    path.write_text(json.dumps(payload))
    assert Results(path).get("x", "a").ratios == [0.5, 0.5, 1.0]


def test_rerun_rule_flags_spoilt_sections_once(tmp_path):
    from minimind_ref.lab.results import RERUN_SPREAD, Results

    calm = Comparison({"a": [1.0, 1.0, 1.0], "b": [1.0, 1.05, 0.97]})
    spoilt = Comparison({"a": [1.0, 1.0, 1.0], "b": [1.0, RERUN_SPREAD * 1.1, 1.0]})
    rows = [calm.row("train", "a", "b"), calm.row("train", "b"),
            spoilt.row("decode", "a", "b"), spoilt.row("decode", "b")]
    path = _results_file(tmp_path, rows)
    assert Results(path).to_rerun() == ["decode"]
    md = (tmp_path / "cpu.md").read_text()
    assert "sections decode: re-run" in md and "| a | 1.000 s | 1.000 | 0.952–1.031 (3) | b |" in md
    path = _results_file(tmp_path, rows, {"re-run": [{"sections": ["decode"], "date_utc": "d", "seconds": 1,
                                                      "load_average_at_start": [1, 1, 1], "command": "c"}]})
    assert Results(path).to_rerun() == []  # re-run once: whatever its spread, it stands


def test_decode_cost_model_matches_the_appendix_derivation():
    from minimind_ref import MiniMindConfig
    from minimind_ref.lab.results import decode_step_cost

    cfg = MiniMindConfig()
    c64, c2k = decode_step_cost(cfg, 64), decode_step_cost(cfg, 2048)
    # every matrix, the tied embedding counted once as the language-model head
    assert c64["weights"] == 25_821_184 == sum(p.numel() for p in _default_model().parameters() if p.dim() == 2)
    assert c64["weight_flops"] == 51_642_368 and c64["attention_flops"] == 16_384 * 64
    assert c2k["cache_bytes"] == 8_192 * 2048
    assert c2k["flops"] / c64["flops"] == pytest.approx(1.617, abs=1e-3)
    assert c2k["bytes_per_kv_head"] / c64["bytes_per_kv_head"] == pytest.approx(1.157, abs=1e-3)
    # K/V read once per query head: the bytes are exactly twice the FLOPs at every context length
    assert c2k["bytes_per_query_head"] == 2 * c2k["flops"] and c64["bytes_per_query_head"] == 2 * c64["flops"]


def _default_model():
    from minimind_ref import MiniMindConfig, MiniMindForCausalLM

    with torch.device("meta"):
        return MiniMindForCausalLM(MiniMindConfig())


def test_every_number_glued_into_the_performance_page_is_defined_there():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "appendix" / "performance.md").read_text()
    used = set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", page))
    defined = set(re.findall(r'\bg\("([A-Za-z0-9_]+)"', page))
    assert used and used <= defined, f"glued but never defined: {sorted(used - defined)}"
    prose = re.sub(r"```\{code-cell\}.*?```", "", page, flags=re.S)
    typed = re.findall(r"(?<![\w$`{(.-])\d+(?:\.\d+)?\s*(?:%|ms|s\b|×|GB/s|GFLOP)", prose)
    assert typed == [], f"numbers typed into the prose instead of glued: {typed}"


def test_step_profile_sorts_operators_into_the_parts_of_the_stacked_bar():
    from benchmarks.profile_steps import PARTS, category, profile_calls

    assert category("aten::mm") == "matrix products"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention kernel"
    assert category("graph_0_cpp_fused_mul_silu_4") == "fused kernels (Inductor)"
    assert category("aten::mul") == "other operators"
    assert category("Torch-Compiled Region: 0/0") is None  # a range: its self time is Python, "outside"
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    r = profile_calls(lambda: torch.nn.functional.silu(a @ b), steps=3)
    assert set(r["parts_ms"]) == set(PARTS) and r["operator_calls_per_step"] >= 3  # matmul, mm, silu, ...
    assert r["parts_ms"]["matrix products"] > 0 and r["parts_ms"]["attention kernel"] == 0
    assert sum(r["parts_ms"].values()) == pytest.approx(r["wall_ms_per_step"], rel=1e-6)


def test_cpu_time_clock_needs_one_thread_and_ignores_waiting(monkeypatch):
    import time

    from benchmarks import common

    monkeypatch.setattr(common, "CLOCK", dict(common.CLOCK))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with pytest.raises(ValueError, match="--threads 1"):
        common.use_cpu_time()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    common.use_cpu_time()
    assert common.environment(torch.device("cpu"))["clock"] == "process CPU time"
    # a candidate that waits (as a process the scheduler keeps waiting does) costs no CPU time
    cmp = interleaved({"sleeps": lambda: time.sleep(0.02), "works": lambda: sum(range(20_000))}, rounds=2,
                      verbose=False)
    assert cmp.median("sleeps") < 0.005 < 0.02


def test_profile_parts_are_scaled_to_cpu_time_only_with_one_thread():
    from minimind_ref.lab.results import profile_on_cpu

    step = {"wall_ms_per_step": 100.0, "cpu_ms_per_step": 25.0, "matmul_gflops_per_s": 10.0,
            "parts_ms": {"matrix products": 60.0, "outside operators": 40.0}}  # fmt: skip
    raw = {"environment": {"threads": 1}, "training": {"a": step}, "decoding": {"cached_tokens": 32, "b": step}}
    got = profile_on_cpu(raw)
    for p in (got["training"]["a"], got["decoding"]["b"]):
        assert p["on_cpu"] == 0.25 and p["ms_per_step"] == 25.0
        assert p["parts_ms"] == {"matrix products": 15.0, "outside operators": 10.0}  # the same shares
    assert got["training"]["a"]["matmul_gflops_per_s"] == 40.0
    assert raw["training"]["a"]["parts_ms"]["matrix products"] == 60.0  # the input is not changed
    two = profile_on_cpu({**raw, "environment": {"threads": 2}})["training"]["a"]  # CPU time of 2 threads: no
    assert two["on_cpu"] is None and two["ms_per_step"] == 100.0 and two["parts_ms"] == step["parts_ms"]


def test_break_even_warmup_is_on_the_clock_of_the_rounds(tmp_path):
    from minimind_ref.lab.results import Results, warmup_on_clock

    path = _results_file(tmp_path, [Row("decode", "a", 1.0)])
    payload = json.loads(path.read_text())
    payload["info"]["decode_warmup"] = {"cold": {"c": {"warmup_s": 80.0, "warmup_cpu_s": 30.0}}}
    path.write_text(json.dumps(payload))
    assert warmup_on_clock(Results(path), "cold", "c") == 80.0  # wall-clock rounds
    payload["environment"]["clock"] = "process CPU time"
    path.write_text(json.dumps(payload))
    assert warmup_on_clock(Results(path), "cold", "c") == 30.0
