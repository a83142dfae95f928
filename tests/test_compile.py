"""torch.compile(fullgraph=True) compiles the whole forward (dense and MoE, training and inference) on CPU,
and the compiled model computes what the eager one computes: logits, loss, aux loss and, in training, the
gradients. fullgraph=True turns every graph break (a host sync, a data-dependent branch) into an error."""

import pytest
import torch
import torch._dynamo

from minimind_ref import MiniMindForCausalLM

from .conftest import tiny_config

CASES = [
    pytest.param(False, False, id="dense-inference"),
    pytest.param(False, True, id="dense-training", marks=pytest.mark.slow),
    pytest.param(True, False, id="moe-inference", marks=pytest.mark.slow),
    pytest.param(True, True, id="moe-training", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("use_moe,training", CASES)
def test_forward_compiles_fullgraph_and_matches_eager(use_moe, training):
    cfg = tiny_config(use_moe=use_moe, n_routed_experts=4, num_experts_per_tok=2)
    model = MiniMindForCausalLM(cfg).train(training)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)

    with torch.set_grad_enabled(training):
        out_c = compiled(ids, labels=ids)
        grads_c = None
        if training:
            (out_c.loss + out_c.aux_loss).backward()
            grads_c = {k: p.grad.clone() for k, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
        out_e = model(ids, labels=ids)
        if training:
            (out_e.loss + out_e.aux_loss).backward()

    torch.testing.assert_close(out_c.logits, out_e.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_c.loss, out_e.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_c.aux_loss, out_e.aux_loss, rtol=1e-4, atol=1e-6)
    if use_moe and training:
        assert out_e.aux_loss.item() > 0  # the balancing loss is really computed, compiled and eager
    if training:
        for k, p in model.named_parameters():
            assert grads_c[k] is not None, k
            torch.testing.assert_close(grads_c[k], p.grad, rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_compiled_moe_path_matches_the_grouped_dispatch():
    """The static-shape dispatch used under torch.compile equals the grouped one the eager model uses."""
    from minimind_ref.moe import MoEFeedForward

    cfg = tiny_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=2)
    moe = MoEFeedForward(cfg).eval()
    tokens = torch.randn(32, cfg.hidden_size)
    idx, w, _ = moe.gate(tokens[None])
    torch.testing.assert_close(moe.dense_dispatch(tokens, idx, w), moe.dispatch(tokens, idx, w, run_all=False),
                               rtol=1e-5, atol=1e-6)
