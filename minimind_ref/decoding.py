"""The decoding step compiled: one token through the model over a static KV cache (chapter 6; the Performance
appendix measures it). ``MiniMindForCausalLM.generate(..., compile=True)`` uses it.

An eager decoding step at batch 1 spends much of its time outside the matrix-vector products: some 1 800
small ATen calls per token and the Python between them. ``torch.compile`` fuses them into a few kernels; on
CUDA, CUDA graphs then replay the whole step as one launch. Both need a step whose tensors have the same
shapes at every token, and CUDA graphs also the same addresses. So:

* the cache is allocated once, at a fixed capacity (rounded up to a power of two, so that calls of
  similar length share one compiled step), and the step writes the new key and value into slot ``pos``;
* ``pos`` is a tensor, not a Python int: an int would be baked into the graph and recompile at every token;
* attention reads all ``capacity`` slots, and a mask hides those after ``pos`` (and padding): the shapes
  never depend on the position. The price is attention over the whole capacity at every step, small next
  to the weights at the lengths the book uses;
* every tensor the step reads or writes, other than the model's own parameters and buffers (which
  ``torch.compile`` treats as static already), is allocated here once and marked static
  (``torch._dynamo.mark_static_address``), so that CUDA graphs read and write them in place rather than
  copying them in; the logits are cloned out of the graph's memory before the next replay overwrites them.

The prefill (the prompt, many tokens at once) stays eager and writes into the same cache.
"""

from __future__ import annotations

import torch

from .attention import KVCache

MIN_CAPACITY = 64


def capacity_for(total: int, max_positions: int) -> int:
    """The cache capacity for ``total`` positions: the next power of two >= ``total`` (at least 64), at most
    ``max_positions``. Generations of similar length then share one cache and one compiled step."""
    capacity = MIN_CAPACITY
    while capacity < total:
        capacity *= 2
    return max(total, min(capacity, max_positions))


class _SlotWriter:
    """What ``Attention`` sees as its cache inside the compiled step: write slot ``pos``, return all slots."""

    def __init__(self, cache: KVCache, pos: torch.Tensor):
        self.cache, self.pos = cache, pos

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]  # (B, H_kv, capacity, hd)
        keys.index_copy_(2, self.pos, k)  # k, v: (B, H_kv, 1, hd) into slot pos, in place
        values.index_copy_(2, self.pos, v)
        return keys, values


def compile_options(backend: str, cuda_graphs: bool) -> dict:
    """``torch.compile`` keywords for the step: the whole step as one graph (``fullgraph``: a graph break
    would be an error, not a silent slow-down); with Inductor on CUDA, ``mode="reduce-overhead"``, which
    replays Inductor's kernels as CUDA graphs. Another ``backend`` (tests use ``"aot_eager"``: the same
    graph without Inductor's code generation, seconds instead of a minute) is passed through."""
    if backend == "inductor":
        return {"fullgraph": True, "mode": "reduce-overhead" if cuda_graphs else None}
    return {"fullgraph": True, "backend": backend}


class CompiledDecodeStep:
    """``step(token_ids (B, 1), position) -> logits (B, vocab)``, float32, compiled once for a batch size
    and a cache capacity. ``start(attention_mask)`` empties the cache and returns it for the eager prefill.

    ``cuda_graphs`` (default: whether ``device`` is CUDA) selects CUDA graphs (see ``compile_options``) and
    the bookkeeping they need around each call; on a CPU the same bookkeeping runs without a capture.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
        cuda_graphs: bool | None = None,
        backend: str = "inductor",
    ):
        cfg = model.config
        self.model = model
        self.key = (batch_size, capacity, torch.device(device), dtype)  # what a reuse must match
        self.cuda_graphs = torch.device(device).type == "cuda" if cuda_graphs is None else cuda_graphs
        self.cache = KVCache(cfg, batch_size, capacity=capacity)
        shape = (batch_size, cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.cache.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.cache.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.token_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(capacity, device=device)  # (capacity,)
        self.key_ok = torch.ones(batch_size, capacity, dtype=torch.bool, device=device)  # False: padding
        for t in (*self.cache.keys, *self.cache.values, self.token_ids, self.pos, self.slots, self.key_ok):
            torch._dynamo.mark_static_address(t)  # the same storage at every call: CUDA graphs use it in place
        self._compiled = torch.compile(self._forward, **compile_options(backend, self.cuda_graphs))

    # a copy or a pickle of the model that holds this step gets None instead: it compiles its own when needed
    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __reduce__(self):
        return type(None), ()

    def start(self, attention_mask: torch.Tensor | None = None) -> KVCache:
        """Empty the cache for a new generation; ``attention_mask`` (B, prompt) marks left padding with 0."""
        self.cache.length = 0
        for t in (*self.cache.keys, *self.cache.values):
            t.zero_()  # a masked slot must hold finite values: softmax weight 0 times NaN would be NaN
        self.key_ok.fill_(True)
        if attention_mask is not None:
            self.key_ok[:, : attention_mask.shape[1]] = attention_mask.bool()
        return self.cache

    def __call__(self, token_ids: torch.Tensor, position: int) -> torch.Tensor:
        """Run ``token_ids`` (B, 1) at ``position`` (the number of cached tokens) -> (B, vocab) float32 logits."""
        self.token_ids.copy_(token_ids)
        self.pos.fill_(position)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous replay's outputs are done
        logits = self._compiled(self.token_ids, self.pos)
        self.cache.length = position + 1
        return logits.clone() if self.cuda_graphs else logits  # out of the graph's pool before the next replay

    def _forward(self, token_ids, pos):
        """Token ids (B, 1) at position ``pos`` (a tensor) -> logits (B, vocab)."""
        inner = self.model.model
        cos, sin = inner.freqs_cos[pos], inner.freqs_sin[pos]  # (1, hd): RoPE
        mask = (self.slots <= pos) & self.key_ok  # (B, capacity): slots to attend to
        cache = _SlotWriter(self.cache, pos)  # writes slot pos, returns all slots
        h = inner.embed_tokens(token_ids)  # (B, 1, d)
        for layer in inner.layers:
            h = layer(h, (cos, sin), mask[:, None, None, :], cache)
        return self.model.lm_head(inner.norm(h)[:, -1]).float()  # (B, vocab)
