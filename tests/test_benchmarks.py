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
