"""generate(compile=True): the single-token step compiled over a static cache (minimind_ref.decoding).

Compile time dominates here, so one test goes through Inductor (the default path, dense) and the others use
the "aot_eager" backend: the same Dynamo graph, the same functionalised cache writes and the same MoE dispatch,
without Inductor's C++ code generation (seconds instead of most of a minute on two cores).
"""

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters, get_static_address_type

from minimind_ref import MiniMindConfig, MiniMindForCausalLM
from minimind_ref.decoding import CompiledDecodeStep, capacity_for, compile_options

from .conftest import tiny_config


def _left_padded_batch(cfg, prompt_len=6):
    ids = torch.randint(3, cfg.vocab_size, (2, prompt_len))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0 is left-padded by two positions
    return ids, mask


def _install(model, batch_size, total, **kw):
    """A step as generate would build it, with another backend: generate reuses it (same key)."""
    capacity = capacity_for(total, model.config.max_position_embeddings)
    model._decode_step = CompiledDecodeStep(model, batch_size, capacity, torch.device("cpu"), torch.float32, **kw)
    assert model._compiled_step(batch_size, total, torch.device("cpu")) is model._decode_step
    return model._decode_step


@pytest.mark.slow  # Inductor's code generation: about 15 s on two cores
def test_compiled_generate_gives_the_eager_tokens_and_compiles_once():
    """The real path (Inductor): identical greedy tokens, one graph for every token of two calls."""
    cfg = tiny_config()
    model = MiniMindForCausalLM(cfg).eval()
    ids, mask = _left_padded_batch(cfg)
    torch._dynamo.reset()
    counters.clear()
    for new in (24, 12):  # 6 + 24 and 6 + 12 positions share the 64-slot cache
        eager = model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=[], attention_mask=mask)
        compiled = model.generate(
            ids, max_new_tokens=new, do_sample=False, eos_token_id=[], attention_mask=mask, compile=True
        )
        assert torch.equal(compiled, eager)
    assert counters["stats"]["unique_graphs"] == 1  # compiled once: no recompilation per token or per call
    assert not counters["graph_break"]


def _inspecting_aot_eager(seen):
    """The aot_eager backend, after recording the graph's inputs and which of them it writes in place."""
    from torch._dynamo.backends.debugging import aot_eager

    def backend(gm, example_inputs):
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        seen["inputs"] = dict(zip([p.name for p in placeholders], example_inputs, strict=True))
        seen["mutated"] = {
            n.args[0].name
            for n in gm.graph.nodes
            if n.op == "call_method" and n.target.endswith("_") and n.args[0].op == "placeholder"
        }
        return aot_eager(gm, example_inputs)

    return backend


def _config(kind):
    """Toy configs for every decoding path: MiniMind2 dense and MoE; MiniMind-3 dense and MoE (QK-norm, head_dim
    32 where 64 / 4 heads would give 16, top-1 routing, no shared expert). An MoE layer is a large graph to
    trace: one layer is enough."""
    if kind.startswith("minimind3"):
        return MiniMindConfig.minimind3(
            use_moe=kind.endswith("moe"), vocab_size=97, hidden_size=64, num_hidden_layers=1 if "moe" in kind else 2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        )  # fmt: skip
    if kind == "moe":
        return tiny_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, num_hidden_layers=1)
    return tiny_config()


@pytest.mark.parametrize(
    "kind",
    [
        "dense",
        pytest.param("moe", marks=pytest.mark.slow),
        "minimind3",
        pytest.param("minimind3-moe", marks=pytest.mark.slow),
    ],
)
def test_compiled_step_matches_eager_and_meets_what_cuda_graphs_need(kind):
    """Dense and MoE (whose compiled path is the static-shape dense_dispatch), MiniMind2 and MiniMind-3,
    a left-padded batch: the same greedy tokens, with and without a repetition penalty; sampling and EOS
    stay outside the graph, so with the same generator the same draws. What CUDA graphs need is checked on
    the CPU: every tensor the graph reads is static (a parameter, a buffer, or allocated once by the step
    and marked), so a replay copies nothing in; what it writes in place is the cache, whose storage never
    moves; the cuda_graphs bookkeeping around each call runs."""
    cfg = _config(kind)
    if kind.startswith("minimind3"):
        assert cfg.qk_norm and cfg.moe_variant == "minimind3"
    model = MiniMindForCausalLM(cfg).eval()
    ids, mask = _left_padded_batch(cfg)
    new, seen = 16, {}
    torch._dynamo.reset()
    counters.clear()
    step = _install(model, 2, ids.shape[1] + new, backend=_inspecting_aot_eager(seen), cuda_graphs=True)
    storage = [t.data_ptr() for t in (*step.cache.keys, *step.cache.values)]
    greedy = dict(max_new_tokens=new, do_sample=False, eos_token_id=[], attention_mask=mask)
    assert torch.equal(model.generate(ids, compile=True, **greedy), model.generate(ids, **greedy))
    penalised = dict(greedy, repetition_penalty=1.3)  # applied to the step's logits, outside the graph
    assert torch.equal(model.generate(ids, compile=True, **penalised), model.generate(ids, **penalised))
    if kind == "dense":
        sampled = dict(max_new_tokens=new, do_sample=True, top_k=20, eos_token_id=5, attention_mask=mask)
        draws = [
            model.generate(ids, generator=torch.Generator().manual_seed(7), compile=c, **sampled) for c in (False, True)
        ]
        assert torch.equal(draws[0], draws[1])
    assert counters["stats"]["unique_graphs"] == 1

    assert [name for name, t in seen["inputs"].items() if get_static_address_type(t) is None] == []
    assert len(seen["mutated"]) == 2 * cfg.num_hidden_layers  # the keys and the values of each layer
    assert {seen["inputs"][name].data_ptr() for name in seen["mutated"]} == set(storage)
    assert [t.data_ptr() for t in (*step.cache.keys, *step.cache.values)] == storage


def test_step_is_kept_per_shape_and_not_copied():
    model = MiniMindForCausalLM(tiny_config()).eval()
    cpu = torch.device("cpu")
    a = model._compiled_step(1, 40, cpu)
    assert a.key == (1, 64, cpu, torch.float32)
    assert model._compiled_step(1, 64, cpu) is a  # same bucket: reused, nothing recompiles
    assert model._compiled_step(2, 64, cpu) is not a  # another batch size: another step
    assert model._compiled_step(2, 65, cpu).cache.capacity == 128
    assert copy.deepcopy(model)._decode_step is None  # a copy compiles its own
    assert "_decode_step" not in str(list(model.state_dict()))


def test_compile_must_be_a_bool():
    model = MiniMindForCausalLM(tiny_config()).eval()
    with pytest.raises(TypeError, match="compile must be True or False"):
        model.generate(torch.randint(3, 97, (1, 4)), max_new_tokens=2, compile="yes")


def test_capacity_buckets_and_compile_options():
    assert [capacity_for(n, 256) for n in (1, 64, 65, 200, 256)] == [64, 64, 128, 256, 256]
    assert capacity_for(300, 256) == 300  # beyond the table: generate refuses it before any cache is built
    assert capacity_for(100, 96) == 100
    assert compile_options("inductor", cuda_graphs=True) == {"fullgraph": True, "mode": "reduce-overhead"}
    assert compile_options("inductor", cuda_graphs=False) == {"fullgraph": True, "mode": None}
    assert compile_options("aot_eager", cuda_graphs=True) == {"fullgraph": True, "backend": "aot_eager"}
