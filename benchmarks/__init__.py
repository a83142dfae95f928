"""Benchmarks of ``minimind_ref`` against real baselines, as ratios measured side by side in one process.

Run them all with ``python -m benchmarks`` (``--quick`` for a short run, ``--only train,decode`` for a
subset). Each benchmark returns rows of a table; ``benchmarks.report`` writes them to
``benchmarks/results/<device>.md`` and ``.json`` together with the device, threads, torch version and
shapes. The appendix page "Performance" of the book explains every row.

Baselines:
* Hugging Face ``transformers.LlamaForCausalLM`` with the equivalent config and the very same weights
  (the dense MiniMind is exactly a Llama; ``benchmarks.models.llama_twin``);
* the upstream-style MiniMind of ``minimind_ref.lab.upstream`` (concatenating KV cache, ``repeat_kv``
  copies, the boolean-mask MoE training path, ``moe_infer``);
* the naive per-token MoE loop of ``benchmarks.naive_moe``.
"""
