"""minimind_ref.lab.assembly (chapter 6): sizes, FLOPs and memory against real modules, sampling against
``generate``, the uncached decoder, YaRN rebuilds, the module diagram, communication volumes, logs."""

import json
from unittest import mock

import pytest
import torch
from torch.testing import assert_close

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.lab import assembly as asm

from .conftest import tiny_config


def small_config(**kw) -> MiniMindConfig:
    """conftest's toy shapes with a 300-token vocabulary."""
    return tiny_config(**{"vocab_size": 300, **kw})


def small(**kw) -> MiniMindForCausalLM:
    torch.manual_seed(0)
    return MiniMindForCausalLM(small_config(**kw))


def ids(batch=2, seq=24, vocab=300, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- parameters

VARIANTS = [
    {},
    {"tie_word_embeddings": False},
    {"use_moe": True, "intermediate_size": 64},
    {"use_moe": True, "n_shared_experts": 0, "num_experts_per_tok": 1},
    {"head_dim": 32, "qk_norm": True},
]


@pytest.mark.parametrize("name", list(asm.released_configs()))
def test_released_shapes_formula_equals_meta_modules(name):
    cfg = asm.released_configs()[name]
    model = asm.meta_model(cfg)
    assert next(model.parameters()).is_meta
    assert asm.parameter_breakdown(model) == asm.parameter_formula(cfg)


def test_released_sizes_are_upstreams():
    sizes = {k: asm.parameter_formula(c) for k, c in asm.released_configs().items()}
    assert round(sizes["minimind2-small"]["total"] / 1e6) == 26
    assert round(sizes["minimind2"]["total"] / 1e6) == 104
    assert round(sizes["minimind2-moe"]["total"] / 1e6) == 145
    assert round(sizes["minimind-3"]["total"] / 1e6) == 64
    assert round(sizes["minimind-3-moe"]["total"] / 1e6) == 198
    assert round(sizes["minimind-3-moe"]["active"] / 1e6) == 64


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
def test_parameter_formula_equals_real_modules(kw):
    model = small(**kw)
    counts = asm.parameter_breakdown(model)
    assert counts == asm.parameter_formula(model.config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_active_parameters_leave_out_unchosen_experts():
    model = small(use_moe=True, intermediate_size=64)
    c = asm.parameter_breakdown(model)
    per_expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
    assert c["total"] - c["active"] == 2 * (4 - 2) * per_expert


def test_category_rejects_unknown_names():
    with pytest.raises(ValueError):
        asm.category("model.something.weight")


# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
def test_flops_formula_equals_flop_counter(kw):
    model = small(flash_attn=False, **kw)  # the explicit attention path: products FlopCounterMode counts
    x = ids(2, 24)
    measured = asm.count_flops(model, x)["total"]
    assert measured == 2 * 24 * asm.flops_per_token(model.config, 24)
    fwd = asm.count_flops(model, x, backward=False)["total"]
    assert fwd == 2 * 24 * asm.flops_per_token(model.config, 24, training=False)
    assert measured == 3 * fwd


def test_flops_on_meta_equal_flops_on_real_tensors():
    real = small(flash_attn=False)
    meta = asm.meta_model(real.config)
    x = ids(1, 16)
    assert asm.count_flops(meta, x.to("meta"))["total"] == asm.count_flops(real, x)["total"]


def test_meta_loss_path_equals_the_model_loss():
    model = small()
    x = ids()
    assert_close(asm._lm_loss(model, x), model(x, labels=x).loss)


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "kw",
    [{}, {"num_hidden_layers": 3, "hidden_size": 96, "num_attention_heads": 3, "num_key_value_heads": 1},
     {"head_dim": 32, "qk_norm": True}, {"vocab_size": 500}],
    ids=str,
)  # fmt: skip
def test_activation_formula_equals_saved_tensors(kw):
    model = small(**kw)
    x = ids(3, 20, vocab=model.config.vocab_size)
    assert asm.saved_activation_bytes(model, x) == asm.activation_bytes_formula(model.config, 3, 20)


def test_autocast_weight_copies_are_split_off():
    model = small()
    x = ids(2, 16)
    fp32 = asm.saved_tensor_bytes(model, x)
    assert fp32["weight copies"] == 0
    bf16 = asm.saved_tensor_bytes(model, x, autocast_dtype=torch.bfloat16)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # the tied head once
    assert bf16["weight copies"] == 2 * matrices  # every matrix that multiplies, once, in bfloat16
    assert asm.saved_activation_bytes(model, x, torch.bfloat16) == bf16["activations"]


def test_activation_formula_refuses_moe():
    with pytest.raises(ValueError):
        asm.activation_bytes_formula(small_config(use_moe=True), 1, 8)


def test_training_memory_is_16_bytes_per_parameter_plus_activations():
    cfg = small_config()
    n = asm.parameter_formula(cfg)["total"]
    m = asm.training_memory(cfg, 2, 32)
    assert sum(v for k, v in m.items() if k != "activations") == 16 * n
    assert m["activations"] == asm.activation_bytes_formula(cfg, 2, 32)
    with pytest.raises(ValueError):
        asm.training_memory(small_config(use_moe=True), 2, 32)


def test_optimizer_state_measured_is_two_moments():
    model = small()
    opt = torch.optim.AdamW(model.parameters())
    x = ids()
    model(x, labels=x).loss.backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    moments = sum(v.numel() for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq"))
    assert moments == 2 * n


def test_memory_rows_and_draw():
    rows = asm.memory_rows(512, 8, 4096)
    parts = [r["part"] for r in rows]
    assert parts[-1] == "activations" and len(parts) == 5
    assert rows[0]["note"] == f"total {sum(r['GB'] for r in rows):.2f} GB for 25.8 M parameters"
    assert rows[0]["label"] == f"weights: {rows[0]['GB']:.2f} GB"
    assert asm.memory_rows(512, 8, 8192)[-1]["GB"] > rows[-1]["GB"]  # activations grow with tokens
    assert asm.memory_rows(512, 8, 8192)[0]["GB"] == rows[0]["GB"]  # the weights do not
    import altair as alt

    assert asm.draw_memory(alt.Chart(alt.Data(values=rows))).to_dict()


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "knobs",
    [dict(temperature=1.0), dict(temperature=0.5, top_k=5), dict(temperature=1.3, top_p=0.7),
     dict(temperature=0.8, top_k=20, top_p=0.9), dict(temperature=1.0, top_p=1e-6)],
    ids=str,
)  # fmt: skip
def test_sampling_probs_is_what_generate_samples_from(knobs):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1)) * 3
    seen = {}

    def capture(probs, num_samples, generator=None):
        seen["probs"] = probs
        return torch.zeros(probs.shape[0], num_samples, dtype=torch.long)

    with mock.patch("torch.multinomial", side_effect=capture):
        MiniMindForCausalLM._pick(logits.clone(), True, knobs["temperature"], knobs.get("top_k"),
                                  knobs.get("top_p"), None)  # fmt: skip
    assert_close(seen["probs"].double(), asm.sampling_probs(logits, **knobs), rtol=1e-5, atol=1e-6)


def test_sampling_knob_limits():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert asm.sampling_probs(logits, top_k=1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert asm.sampling_probs(logits, top_p=1e-9).tolist() == [1.0, 0.0, 0.0, 0.0]
    cold = asm.sampling_probs(logits, temperature=0.01)
    hot = asm.sampling_probs(logits, temperature=100.0)
    assert cold[0] > 0.999 and (hot - 0.25).abs().max() < 0.01
    p = asm.sampling_probs(logits, top_p=0.8)  # 0.64 + 0.24 >= 0.8: two tokens
    assert (p > 0).sum() == 2


def test_sampling_rows_and_draw():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0)) * 2
    labels = [f"t{i}" for i in range(10)]
    rows = asm.sampling_rows(logits, labels, temperature=0.7, top_k=3, top_p=1.0)
    after = [r for r in rows if r["which"] == "after the knobs"]
    assert len(after) == 10 and sum(r["p"] > 0 for r in after) == 3
    assert abs(sum(r["p"] for r in after) - 1) < 1e-9  # the 3 kept are among the 10 shown
    assert [r["rank"] for r in after] == list(range(10))
    import altair as alt

    assert asm.draw_sampling(alt.Chart(alt.Data(values=rows))).to_dict()


# ----------------------------------------------------------------------------- generation, YaRN


def test_greedy_uncached_equals_cached_generate():
    model = small().eval()
    x = ids(2, 8)
    cached = model.generate(x, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(asm.greedy_uncached(model, x, 12), cached)


def test_with_rope_scaling_keeps_weights_and_changes_tables():
    model = small().eval()
    same = asm.with_rope_scaling(model, None, model.config.max_position_embeddings)
    x = ids(1, 40)
    assert_close(same(x).logits, model(x).logits)
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    long = asm.with_rope_scaling(model, yarn, 256)
    assert long.config.rope_scaling["factor"] == 4.0 and long.config.max_position_embeddings == 256
    assert not torch.allclose(long.model.freqs_cos, model.model.freqs_cos)
    assert_close(long.lm_head.weight, model.lm_head.weight)


def test_loss_by_position_averages_to_the_model_loss():
    model = small().eval()
    x = ids(3, 30)
    per_pos = asm.loss_by_position(model, x, batch_size=2)
    assert per_pos.shape == (29,)
    assert_close(per_pos.mean().float(), model(x, labels=x).loss, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the diagram


@pytest.mark.parametrize("kw", [{}, {"use_moe": True}], ids=["dense", "moe"])
def test_module_flow_is_in_call_order(kw):
    model = small(**kw)
    rows = asm.module_flow(model, ids(1, 5))
    names = [r["name"] for r in rows]
    assert names[0] == "embed_tokens" and names[-2:] == ["norm", "lm_head"]
    assert names[1] == "layers[0 … 1]" and rows[1]["repeat"] == 2
    inner = [r["name"] for r in rows if r["depth"] == 2]
    assert inner == ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp"]  # forward order
    attn = next(r for r in rows if r["name"] == "self_attn")
    assert attn["chips"] == ["q_proj", "k_proj", "v_proj", "o_proj"] and attn["shape"] == (1, 5, 64)
    assert rows[-1]["shape"] == (1, 5, 300)
    if kw:
        assert next(r for r in rows if r["name"] == "mlp")["chips"] == ["gate", "experts ×4", "shared_experts ×1"]


def test_draw_module_flow():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    rows = asm.draw_module_flow(ax, small(), ids(1, 5))
    assert len(ax.patches) >= len(rows)
    plt.close(fig)


# ----------------------------------------------------------------------------- scaling out


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_ring_allreduce_sums_and_sends_2_p_minus_1_over_p(world):
    g = torch.Generator().manual_seed(world)
    xs = [torch.randn(24, generator=g) for _ in range(world)]
    results, sent = asm.ring_allreduce(xs)
    for r in results:
        assert_close(r, torch.stack(xs).sum(0))
    assert all(b == asm.ddp_bytes(24, world) for b in sent)


def test_communication_volumes():
    n = 1_000_000
    assert asm.ddp_bytes(n, 1) == 0 and asm.fsdp_bytes(n, 1) == 0
    assert asm.ddp_bytes(n, 2) == 4 * n  # 2 (P-1)/P * 4 bytes at P = 2
    assert asm.fsdp_bytes(n, 8) == pytest.approx(1.5 * asm.ddp_bytes(n, 8))
    assert asm.ddp_bytes(n, 1024) < 2 * 4 * n
    ep = asm.expert_parallel_bytes(tokens_per_rank=100, hidden_size=10, top_k=2, moe_layers=3, world_size=4)
    assert ep == pytest.approx(4 * 3 * 100 * 2 * 10 * 4 * 3 / 4)


# ----------------------------------------------------------------------------- logs


def test_read_log_series_smooth(tmp_path):
    lines = [{"event": "start", "config": {}}] + [
        {"step": i, "loss": 5.0 - i / 10, **({"val_loss": 4.0} if i % 2 == 0 else {})} for i in range(1, 6)
    ] + [{"event": "final", "final": True, "val_loss": 3.5}]  # fmt: skip
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    log = asm.read_log(path)
    assert log["start"]["event"] == "start" and log["final"]["val_loss"] == 3.5 and len(log["steps"]) == 5
    assert asm.series(log["steps"], "val_loss") == ([2, 4], [4.0, 4.0])
    assert asm.smooth([1.0, 3.0, 5.0], window=2) == [1.0, 2.0, 4.0]


def test_run_showing_progress_keeps_the_last_state_when_building(monkeypatch, capsys):
    import sys

    def work():
        for i in range(3):
            sys.stderr.write(f"\rstep {i}")
        sys.stderr.write("\n")
        return 42

    assert asm.run_showing_progress(work) == 42  # not building: passes through
    assert "step 0" in capsys.readouterr().err
    monkeypatch.setenv("MINIMIND_BOOK_BUILD", "1")
    assert asm.run_showing_progress(work) == 42
    err = capsys.readouterr().err
    assert err.strip() == "step 2"


def test_pieces_collects_writes():
    p = asm.Pieces()
    p.write("a")
    p.write("")
    p.write(" b")
    p.flush()
    assert p.pieces == ["a", " b"] and p.text == "a b"


def test_average_gradients_is_the_mean():
    a, b = small(), small()
    x = ids(2, 12)
    a(x[:1], labels=x[:1]).loss.backward()
    b(x[1:], labels=x[1:]).loss.backward()
    want = {n: (p.grad + dict(b.named_parameters())[n].grad) / 2 for n, p in a.named_parameters()}
    asm.average_gradients([a, b])
    for n, p in a.named_parameters():
        assert_close(p.grad, want[n])
        assert_close(dict(b.named_parameters())[n].grad, want[n])


def test_torchrun_command():
    cmd = asm.torchrun_command("minimind_ref.train", ["--help"], nproc=3)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nnodes=1"] and "--nproc_per_node=3" in cmd
    port = int(next(c for c in cmd if c.startswith("--master_port=")).split("=")[1])
    assert 0 < port < 65536 and cmd[-3:] == ["-m", "minimind_ref.train", "--help"]


def test_chat_answers_from_a_folder():
    from minimind_ref.generate import BOOK_MODELS_DIR

    answer = asm.chat(BOOK_MODELS_DIR / "dense", "What is a list?", max_new_tokens=5)
    assert isinstance(answer, str)


def test_equations_display():
    import sympy as sp

    x = sp.Symbol("x")
    m = asm.equations({"a": x**2, "b": x + 1})
    assert m.data.startswith(r"\begin{aligned}") and r"a &= x^{2}" in m.data and r"\\" in m.data


def test_training_step_trains_even_under_no_grad():
    torch.manual_seed(0)
    cfg = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=50, max_position_embeddings=32, use_moe=True, n_routed_experts=2,
                         num_experts_per_tok=1, intermediate_size=32)
    model = MiniMindForCausalLM(cfg)
    batch = torch.randint(0, 50, (2, 16))
    step = asm.training_step(model, batch, lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        losses = [step() for _ in range(20)]
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_source_fits_comments_and_keeps_the_code():
    import ast
    import inspect
    import textwrap

    for obj in (MiniMindForCausalLM._pick, MiniMindForCausalLM.__init__):
        shown = asm.source(obj, width=88)
        original = textwrap.dedent(inspect.getsource(obj))
        assert ast.dump(ast.parse(shown)) == ast.dump(ast.parse(original))  # the same code
        for line in shown.splitlines():
            assert len(line) <= 88 or "#" not in line
    assert "kth = torch.topk" in asm.source(MiniMindForCausalLM._pick)
