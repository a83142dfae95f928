"""Chapter 5's lab module, minimind_ref.lab.moe: accounting, routing, dispatch, balancing experiment."""

import math

import pytest
import torch
from torch.testing import assert_close

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.lab import moe as lm
from minimind_ref.moe import MoEFeedForward, MoEGate, load_balancing_loss


def small_config(**kw):
    base = dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=24, use_moe=True)
    return MiniMindConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- accounting


def test_ffn_multiples_of_minimind_and_of_the_index_example():
    m = lm.ffn_multiples(MiniMindConfig(use_moe=True))
    assert (m["total"], m["active"], m["dense_ffn"], m["router"]) == (5, 3, 3 * 512 * 1408, 4 * 512)
    m8 = lm.ffn_multiples(MiniMindConfig(use_moe=True, n_routed_experts=8, n_shared_experts=0))
    assert (m8["total"], m8["active"]) == (8, 2)


def test_active_params_subtract_the_unchosen_experts_of_every_layer():
    cfg = small_config(num_hidden_layers=3, vocab_size=50)
    with torch.device("meta"):
        model = MiniMindForCausalLM(cfg)
    expert = 3 * 16 * 24
    assert lm.n_params(model) - lm.active_params(model) == 3 * (4 - 2) * expert
    with torch.device("meta"):
        dense = MiniMindForCausalLM(small_config(use_moe=False, num_hidden_layers=3, vocab_size=50))
    assert lm.active_params(dense) == lm.n_params(dense)


def test_forward_flops_counts_three_ffns_and_the_router():
    cfg = small_config()
    x = torch.randn(1, 10, 16)
    ffn = 2 * 10 * 3 * 16 * 24
    assert lm.forward_flops(MoEFeedForward(cfg).eval(), x) == 3 * ffn + 2 * 10 * 16 * 4


# ----------------------------------------------------------------------------- routing and the balancing loss


def test_gate_for_probs_reproduces_the_probabilities_and_the_089_example():
    probs = torch.tensor([[0.26, 0.26, 0.24, 0.24]] * 3 + [[0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)[None]
    gate, h = lm.gate_for_probs(probs, top_k=2, alpha=0.01)
    assert_close(lm.router_scores(gate, h), probs[0], atol=1e-250, rtol=1e-12)
    idx, w, aux = gate.train()(h)
    assert sorted(idx[0].tolist()) == [0, 1] and sorted(idx[3].tolist()) == [2, 3]
    assert aux.item() / 0.01 == pytest.approx(0.89, abs=1e-12)
    odd, h_odd = lm.gate_for_probs(torch.full((1, 2, 3), 1 / 3), top_k=1)  # odd N pads the width
    assert h_odd.shape[-1] == 4 and odd.weight.shape == (3, 4)


def test_load_and_importance_per_slot_and_per_token():
    scores = torch.randn(20, 4).softmax(-1)
    idx = scores.topk(2, dim=-1).indices
    f, P = lm.load_and_importance(scores, idx, 4)
    f_tok, _ = lm.load_and_importance(scores, idx, 4, per_token=True)
    assert_close(f.sum(), torch.tensor(1.0))
    assert_close(f_tok, 2 * f)
    assert_close(P, scores.mean(0))
    # the batch-level loss of minimind_ref is alpha * N * sum f P
    assert_close(load_balancing_loss(scores[None], idx[None], 4, 0.1, seq_aux=False), 0.1 * 4 * (f * P).sum())


def test_logit_push_is_the_gradient_of_the_loss_and_vanishes_at_balance():
    logits = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    scores = logits.softmax(-1)
    idx = scores.topk(2, dim=-1).indices
    loss = load_balancing_loss(scores[None], idx[None], 4, 0.01, seq_aux=False)
    (grad,) = torch.autograd.grad(loss, logits)
    f, _ = lm.load_and_importance(scores.detach(), idx, 4)
    assert_close(grad, 0.01 * 4 / 12 * lm.logit_push(scores.detach(), f))
    assert lm.logit_push(scores.detach(), torch.full((4,), 0.25, dtype=torch.float64)).abs().max() < 1e-16


def test_router_gradient_formula_equals_autograd():
    torch.manual_seed(0)
    moe = MoEFeedForward(small_config(aux_loss_alpha=0.0)).double().train()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    u = torch.randn(2, 5, 16, dtype=torch.float64)
    (u * moe(x)).sum().backward()
    assert_close(lm.router_gradient(moe, x, u), moe.gate.weight.grad)


def test_z_loss():
    logits = torch.randn(6, 4)
    assert_close(lm.z_loss(logits), torch.logsumexp(logits.double(), -1).pow(2).mean())
    assert lm.z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)


def test_descend_aux_balances_and_raises_the_value_to_alpha():
    probs = torch.tensor([[0.26, 0.26, 0.24, 0.24]] * 300 + [[0.0, 0.0, 0.5, 0.5]] * 100)
    run = lm.descend_aux(probs, top_k=2, steps=60, lr=0.02)
    assert run["aux_over_alpha"][0] == pytest.approx(0.89, abs=1e-3)
    assert run["imbalance"][0] == pytest.approx(1.5)
    assert abs(run["aux_over_alpha"][-1] - 1) < 0.01 and run["imbalance"][-1] < 1.05


# ----------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("training", [False, True])
def test_reference_loop_equals_both_dispatch_paths(training):
    torch.manual_seed(1)
    moe = MoEFeedForward(small_config())
    x = torch.randn(2, 6, 16)
    moe.train(training)
    with torch.no_grad():
        assert_close(lm.moe_reference(moe, x), moe(x))


def test_dispatch_trace_of_the_upstream_example():
    choice = lm.trace_routing()
    assert choice.shape == (13, 2) and (choice[:, 0] != choice[:, 1]).all()
    tr = lm.dispatch_trace(choice, 4)
    assert tr["counts"].tolist() == [6, 9, 5, 6] and tr["ends"].tolist() == [6, 15, 20, 26]
    assert tr["sorted_expert"].tolist() == sorted(tr["flat"].tolist())
    assert (choice[tr["token"], tr["slot"]] == tr["sorted_expert"]).all()


def test_document_moe_infer_is_wrong_and_its_fix_is_right():
    torch.manual_seed(2)
    moe = MoEFeedForward(small_config(n_shared_experts=0)).eval()
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        idx, w, _ = moe.gate(x)
        want = moe(x).reshape(-1, 16)
        assert_close(lm.document_moe_infer(moe, x[0], idx, w, fixed=True), want)
        assert not torch.allclose(lm.document_moe_infer(moe, x[0], idx, w), want, atol=1e-4)


def test_fp16_buffer_path_fails_without_the_cast_and_rounds_with_it():
    torch.manual_seed(3)
    moe = MoEFeedForward(small_config(n_shared_experts=0)).eval()
    x = torch.randn(1, 8, 16)
    with pytest.raises(RuntimeError, match="dtypes match"):
        lm.fp16_buffer_training_path(moe, x, cast=False)
    with torch.no_grad():
        y = lm.fp16_buffer_training_path(moe, x)
        assert y.dtype == torch.float32
        assert_close(y, moe(x), atol=1e-3, rtol=1e-2)
        exact = lm.fp16_buffer_training_path(moe, x, buffer_dtype=torch.float32)
        assert_close(exact, moe(x))


# ----------------------------------------------------------------------------- loss-free balancing


def test_loss_free_gate_chooses_with_the_bias_and_weighs_without_it():
    cfg = small_config(n_routed_experts=4, num_experts_per_tok=2)
    gate = lm.LossFreeBiasGate(cfg, gamma=0.1)
    gate.load_state_dict(MoEGate(cfg).state_dict(), strict=False)
    x = torch.randn(1, 20, 16)
    gate.train()
    idx0, w0, aux = gate(x)
    assert aux.item() == 0.0
    assert_close(w0.sum(-1), torch.ones(20))
    counts = torch.bincount(idx0.reshape(-1), minlength=4).float()
    gate.update()
    assert_close(gate.bias, 0.1 * torch.sign(counts.mean() - counts))
    with torch.no_grad():
        gate.bias.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))  # forces experts 0 and 1
    idx1, w1, _ = gate(x)
    assert sorted(set(idx1.reshape(-1).tolist())) == [0, 1]
    scores = lm.router_scores(gate, x)
    chosen = scores.gather(1, idx1)
    assert_close(w1, chosen / chosen.sum(-1, keepdim=True))


# ----------------------------------------------------------------------------- explorers and the experiment


def test_router_rows_and_stats():
    rows = lm.router_rows(top_k=2, temperature=1.0, tilt=0.0)
    tokens = [r for r in rows if r["panel"] == "token"]
    bars = [r for r in rows if r["panel"] == "bar"]
    assert len(tokens) == 80 and len(bars) == 8 and rows[-1]["panel"] == "text"
    assert sum(r["value"] for r in bars if r["quantity"] == "load f") == pytest.approx(1.0)
    assert lm.router_stats(top_k=4)["aux_over_alpha"] == pytest.approx(1.0, abs=1e-6)  # every expert chosen
    tilted = lm.router_stats(top_k=1, tilt=2.0)
    assert tilted["f"][0] > lm.router_stats(top_k=1)["f"][0] and tilted["aux_over_alpha"] > 1.2
    # the temperature changes the probabilities, not the choices
    assert_close(lm.router_stats(2, 0.25)["f"], lm.router_stats(2, 4.0)["f"])


def test_explorer_charts_build():
    from minimind_ref.lab.explorer import explorer

    router = explorer(
        lm.router_rows,
        {"top_k": [1, 2], "temperature": [1.0], "tilt": [0.0, 2.0]},
        lm.draw_router,
        title="router",
        width=None,
        height=None,
        show=False,
    )
    assert "hconcat" in router.chart.to_dict()
    runs = lm.balance_experiment(methods=["α = 0", "loss-free bias"], seeds=(0,), steps=6)
    bal = explorer(
        lambda method, seed: lm.balance_rows(runs, method, seed),
        {"method": ["α = 0", "loss-free bias"], "seed": [0]},
        lm.draw_balance,
        title="balance",
        width=None,
        height=None,
        show=False,
    )
    assert len(bal.rows) == 2 * 2 * 5  # steps 1, 4 (every 3) x (4 experts + loss) x 2 methods


def test_train_balance_shapes_determinism_and_methods():
    task = lm.BalanceTask.make()
    a = lm.train_balance("α = 0.01", seed=0, steps=5, task=task)
    b = lm.train_balance("α = 0.01", seed=0, steps=5, task=task)
    assert a.loads.shape == (5, 4) and a.task_loss.shape == (5,) and a.routing.shape == (8, 4)
    assert_close(a.loads, b.loads) and a.val_loss == b.val_loss
    assert_close(a.loads.sum(1), torch.ones(5))
    assert_close(a.routing.sum(1), torch.ones(8))
    assert ((a.imbalance >= 1) & (a.imbalance <= 2)).all()
    assert lm.method_alpha("α = 0.001") == 0.001 and lm.method_alpha("loss-free bias") == 0.0
    bias = lm.train_balance("loss-free bias", seed=0, steps=5, task=task)
    assert bias.loads.shape == (5, 4)
    # same seed, same start: the first step's routing does not depend on the method's loss
    assert_close(a.loads[0], lm.train_balance("α = 0", seed=0, steps=1, task=task).loads[0])


def test_capacity_drop_and_all_to_all():
    assert lm.capacity_drop(torch.full((4,), 0.25), 1.0).item() == 0.0
    assert lm.capacity_drop(torch.tensor([0.5, 0.5, 0.0, 0.0]), 1.0).item() == pytest.approx(0.5)
    assert lm.capacity_drop(torch.tensor([0.5, 0.5, 0.0, 0.0]), 2.0).item() == 0.0
    assert lm.all_to_all_bytes(512, 2, 2) == 4096


def test_plot_router_draws_two_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    s = lm.plot_router(axes, top_k=2, tilt=1.0)
    assert len(axes[0].collections) > 0 and len(axes[1].patches) == 8
    assert s["f"].sum().item() == pytest.approx(1.0)
    plt.close(fig)


# ----------------------------------------------------------------------------- a trained model's routing


def test_routing_records_and_their_statistics():
    torch.manual_seed(4)
    cfg = small_config(num_hidden_layers=2, vocab_size=40)
    model = MiniMindForCausalLM(cfg).eval()
    docs = [torch.randint(0, 40, (n,)).tolist() for n in (9, 12, 7, 10)]
    rec = lm.routing_records(model, docs, ["b", "a", "b", "a"])
    assert rec["names"] == ["a", "b"] and rec["top1"].shape == (38, 2) and rec["scores"].shape == (38, 2, 4)
    assert rec["label"][:9].tolist() == [1] * 9 and rec["doc"][-1].item() == 3
    with torch.no_grad():  # the first choice is the argmax of the gate's own probabilities
        h = model.model.embed_tokens(torch.tensor([docs[0]]))
        layer0 = model.model.layers[0]
        pe = (model.model.freqs_cos[:9], model.model.freqs_sin[:9])
        h = h + layer0.self_attn(layer0.input_layernorm(h), pe)
        scores = lm.router_scores(layer0.mlp.gate, layer0.post_attention_layernorm(h))
    assert_close(rec["scores"][:9, 0], scores)
    shares = lm.label_expert_shares(rec, 1)
    assert shares.shape == (2, 4) and and_close_rows(shares)
    token_top = lm.distinctive_tokens(rec, 0, int(rec["top1"][0, 0]), min_count=1, top=3)
    assert 0 < len(token_top) <= 3 and all(lift > 0 for _, lift in token_top)


def and_close_rows(m):
    assert_close(m.sum(1), torch.ones(m.shape[0]))
    return True


def test_heldout_accuracy_of_a_perfect_and_a_useless_key():
    groups = torch.arange(100) // 10  # 10 documents of 10 tokens
    key = torch.arange(100) % 5
    target = key % 3  # a function of the key
    assert lm.heldout_accuracy(key, target, groups) == 1.0
    noise = torch.randint(0, 3, (100,), generator=torch.Generator().manual_seed(0))
    useless = lm.heldout_accuracy(torch.zeros(100, dtype=torch.long), noise, groups)
    assert useless == pytest.approx(max(torch.bincount(noise).tolist()) / 100, abs=0.1)
