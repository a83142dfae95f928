"""SwiGLU feed-forward (chapter 4) and the mixture of experts (chapter 5)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.testing import assert_close

from minimind_ref.ffn import FeedForward
from minimind_ref.moe import MoEFeedForward, MoEGate, load_balancing_loss

from .conftest import tiny_config


def moe_config(**kw):
    base = dict(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, aux_loss_alpha=0.1)
    return tiny_config(**{**base, **kw})


# ----------------------------------------------------------------------------- SwiGLU


def test_ffn_is_down_of_silu_gate_times_up():
    cfg = tiny_config()
    ffn = FeedForward(cfg)
    assert ffn.gate_proj.weight.shape == (cfg.intermediate_size, 64) == ffn.up_proj.weight.shape
    assert ffn.down_proj.weight.shape == (64, cfg.intermediate_size)
    x = torch.randn(3, 5, 64)
    g, u = x @ ffn.gate_proj.weight.T, x @ ffn.up_proj.weight.T
    assert_close(ffn(x), (g * torch.sigmoid(g) * u) @ ffn.down_proj.weight.T)
    assert FeedForward(cfg, intermediate_size=32).up_proj.weight.shape == (32, 64)


def test_ffn_gradcheck_float64():
    ffn = FeedForward(tiny_config(hidden_size=8, num_attention_heads=2, num_key_value_heads=1)).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert gradcheck(ffn, (x,))


def test_default_width_is_1408():
    from minimind_ref import MiniMindConfig

    ffn = FeedForward(MiniMindConfig())
    assert ffn.gate_proj.weight.shape == (1408, 512)
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 512 * 1408


# ----------------------------------------------------------------------------- router and balancing loss


def test_gate_scores_topk_and_renormalisation():
    cfg = moe_config()
    gate = MoEGate(cfg).eval()
    x = torch.randn(2, 7, 64)
    idx, w, aux = gate(x)
    assert idx.shape == w.shape == (14, 2)
    scores = F.linear(x.reshape(-1, 64), gate.weight).softmax(-1)
    top = scores.topk(2, dim=-1)
    assert_close(torch.sort(idx, dim=-1).values, torch.sort(top.indices, dim=-1).values)
    assert_close(w.sum(-1), torch.ones(14))  # renormalised
    assert_close(torch.sort(w, -1).values, torch.sort(top.values / top.values.sum(-1, keepdim=True), -1).values)
    assert aux.item() == 0.0  # no balancing loss outside training
    raw = MoEGate(moe_config(norm_topk_prob=False)).eval()
    raw.load_state_dict(gate.state_dict())
    assert (raw(x)[1].sum(-1) < 1).all()


@pytest.mark.parametrize("seq_aux", [True, False])
def test_balanced_routing_gives_alpha(seq_aux):
    n, alpha = 4, 0.1  # K = 2 slots per token below
    uniform = torch.full((3, 8, n), 1 / n)
    # every expert chosen equally often in every sequence
    idx = torch.tensor([[0, 1], [2, 3]]).repeat(3, 4, 1)  # (B=3, L=8, K=2)
    assert_close(load_balancing_loss(uniform, idx, n, alpha, seq_aux), torch.tensor(alpha))
    # with uniform probabilities any routing gives alpha too: sum_i f_i = 1
    skewed = torch.tensor([[0, 0]] * 5 + [[1, 2]] * 3).repeat(3, 1, 1)
    assert_close(load_balancing_loss(uniform, skewed, n, alpha, seq_aux), torch.tensor(alpha))


def test_gate_in_training_with_uniform_router_gives_alpha():
    for seq_aux in (True, False):
        gate = MoEGate(moe_config(seq_aux=seq_aux, aux_loss_alpha=0.01)).train()
        with torch.no_grad():
            gate.weight.zero_()  # every expert equally likely
        _, _, aux = gate(torch.randn(2, 6, 64))
        assert_close(aux, torch.tensor(0.01))


def test_aux_loss_gradient_flows_only_through_router_probabilities():
    """dL/dP_i = alpha * N * f_i: the spec's example f = (.4, .3, .2, .1) with alpha = 1 gives (1.6, 1.2, .8, .4)."""
    n, L = 4, 10
    idx = torch.tensor([0] * 4 + [1] * 3 + [2] * 2 + [3] * 1).view(1, L, 1)  # K = 1, f = (.4, .3, .2, .1)
    scores = torch.rand(1, L, n).softmax(-1).requires_grad_(True)
    load_balancing_loss(scores, idx, n, alpha=1.0, seq_aux=True).backward()
    # P_i is the mean of s_{t,i} over the L tokens, so dL/ds_{t,i} = (dL/dP_i) / L
    assert_close(scores.grad[0], torch.tensor([1.6, 1.2, 0.8, 0.4]).expand(L, n) / L)
    # batch variant: same formula over all B*L tokens
    scores.grad = None
    load_balancing_loss(scores, idx, n, alpha=1.0, seq_aux=False).backward()
    assert_close(scores.grad[0], torch.tensor([1.6, 1.2, 0.8, 0.4]).expand(L, n) / L)


def test_sequence_and_batch_variants_differ_when_sequences_differ():
    n = 4
    scores = torch.rand(2, 4, n).softmax(-1)
    idx = torch.tensor([[[0], [0], [1], [1]], [[2], [2], [3], [3]]])  # each sequence uses 2 experts
    seq = load_balancing_loss(scores, idx, n, 1.0, True)
    batch = load_balancing_loss(scores, idx, n, 1.0, False)
    assert not torch.isclose(seq, batch)
    # hand computation of the sequence variant
    f = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    assert_close(seq, (n * (f * scores.mean(1)).sum(1)).mean())


# ----------------------------------------------------------------------------- MoE layer


def _brute_force(moe, x):
    """sum_k w_k E_{idx_k}(x) + shared(x), token by token."""
    idx, w, _ = moe.gate(x)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.stack(
        [sum(w[t, j] * moe.experts[int(idx[t, j])](flat[t]) for j in range(idx.shape[1])) for t in range(flat.shape[0])]
    )
    out = out.view_as(x)
    for e in moe.shared_experts:
        out = out + e(x)
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(n_shared_experts=0),
        dict(num_experts_per_tok=1),
        dict(n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2),
    ],
)
def test_moe_paths_equal_each_other_and_brute_force(kw):
    moe = MoEFeedForward(moe_config(**kw)).double()
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    moe.eval()
    with torch.no_grad():
        infer = moe(x)
        ref = _brute_force(moe, x)
    moe.train()
    train = moe(x)
    assert_close(infer, ref)
    assert_close(train, infer)
    assert moe.aux_loss.requires_grad


def test_every_expert_gets_a_gradient_even_when_unused():
    moe = MoEFeedForward(moe_config(n_routed_experts=6, num_experts_per_tok=1)).train()
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, :] = 1.0  # positive inputs all go to expert 0
    x = torch.rand(1, 4, 64)
    out = moe(x)
    idx, _, _ = moe.gate(x)
    assert set(idx.flatten().tolist()) == {0}
    (out.sum() + moe.aux_loss).backward()
    for e, expert in enumerate(moe.experts):
        for name, p in expert.named_parameters():
            assert p.grad is not None, f"expert {e} {name} left the graph"
            assert (p.grad.abs().sum() > 0) == (e == 0)
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0


def test_moe_training_path_gradcheck_float64():
    cfg = moe_config(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16)
    moe = MoEFeedForward(cfg).double().train()
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: moe(x), (x,))


def test_moe_low_precision():
    moe = MoEFeedForward(moe_config()).eval()
    x = torch.randn(2, 5, 64)
    ref = moe(x)
    out = moe.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
