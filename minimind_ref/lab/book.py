"""The book's own trained MiniMinds, as the chapters load them.

``book_model("dense")`` and ``book_model("moe")`` return ``(model, tokenizer)``: the small models trained
for the book on this repository's corpus (see ``minimind_ref/book_models/<name>/README.md``), in float32
and eval mode, on the CPU unless told otherwise. ``val_slice()`` is the fixed validation slice their
stated losses are measured on.
"""

from __future__ import annotations

import torch

from ..generate import BOOK_MODELS_DIR, book_model_names, load


def book_model(name: str = "dense", device: str = "cpu", dtype: torch.dtype = torch.float32):
    """-> (MiniMindForCausalLM in eval mode, minimind_ref.tokenizer.Tokenizer) of the book model ``name``."""
    if name not in book_model_names():
        raise ValueError(f"unknown book model {name!r}; the book ships {book_model_names()}")
    return load(BOOK_MODELS_DIR / name, device=device, dtype=dtype)


def val_slice() -> torch.Tensor:
    """(sequences, seq_len) int64 token ids: the start of the corpus's validation split, as the models saw text."""
    from safetensors.torch import load_file

    return load_file(str(BOOK_MODELS_DIR / "val_slice.safetensors"))["input_ids"].long()


def parameter_counts(model) -> dict[str, int]:
    """{'total': every parameter once (a tied embedding once), 'active': those one token uses: for an MoE,
    the routed experts it is not sent to are left out (``num_experts_per_tok`` of ``n_routed_experts`` run)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())  # .parameters() yields a shared tensor once
    active = total
    if cfg.use_moe:
        from ..moe import MoEFeedForward

        for module in model.modules():
            if isinstance(module, MoEFeedForward):
                per_expert = sum(p.numel() for p in module.experts[0].parameters())
                active -= (len(module.experts) - cfg.num_experts_per_tok) * per_expert
    return {"total": total, "active": active}
