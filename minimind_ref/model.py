"""The whole MiniMind: pre-norm blocks, the causal-LM head, generation and checkpoints (chapter 6).

State-dict keys are those of upstream MiniMind (``model.layers.{i}.self_attn.q_proj.weight`` ...),
so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, KVCache, make_attention_mask
from .checkpoint import (
    STANDARD_WEIGHTS,
    find_weights,
    load_state_dict_file,
    resolve_dtype,
    standard_weights,
    unfuse_experts,
    weight_files,
)
from .config import MiniMindConfig
from .decoding import CompiledDecodeStep, capacity_for
from .ffn import FeedForward
from .moe import MoEFeedForward
from .norm import RMSNorm
from .rope import precompute_freqs_cis


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T or logits_to_keep, vocab)
    loss: torch.Tensor | None = None  # next-token cross-entropy (labels shifted inside)
    aux_loss: torch.Tensor | None = None  # sum of the MoE layers' balancing losses (0 for dense)
    past_key_values: KVCache | None = None  # pass back to continue from here


class MiniMindBlock(nn.Module):
    """Pre-norm: h <- h + Attn(RMSNorm(h)); h <- h + MLP(RMSNorm(h))."""

    def __init__(self, layer_id: int, config: MiniMindConfig):
        super().__init__()
        self.self_attn = Attention(config, layer_idx=layer_id)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        h = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_embeddings, attn_mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class MiniMindModel(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        cos, sin = precompute_freqs_cis(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        # non-persistent: derived from the config, so not part of a checkpoint
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: KVCache | None) -> None:
        """Raise TypeError/ValueError, naming the argument, for inputs that would otherwise give a silent wrong
        answer or a cryptic error."""
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(
                f"input_ids must be an integer tensor (torch.long or torch.int32) of shape (batch, seq_len), got "
                f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}"
            )
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids must have shape (batch, seq_len), both > 0; got {tuple(input_ids.shape)}")
        own_device = self.embed_tokens.weight.device
        if input_ids.is_meta:
            raise ValueError("input_ids is on the meta device: it holds no token values")
        if input_ids.device != own_device:
            raise ValueError(f"input_ids is on device {input_ids.device}, the model on {own_device}")
        if not torch.compiler.is_compiling():  # a check of values, not shapes: a compiled graph cannot branch on it
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= cfg.vocab_size:
                raise ValueError(
                    f"input_ids contain token ids outside [0, vocab_size={cfg.vocab_size}): min {lo}, max {hi}"
                )
        past = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise ValueError(f"past_key_values must be the KVCache this model returned, got {type(cache).__name__}")
            own = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
            if cache.signature != own:
                raise ValueError(
                    f"past_key_values comes from another config: (layers, kv_heads, head_dim) = "
                    f"{cache.signature}, this model has {own}"
                )
            if cache.batch_size != input_ids.shape[0]:
                raise ValueError(
                    f"past_key_values holds batch size {cache.batch_size}, input_ids has {input_ids.shape[0]}"
                )
            past = cache.length
        total = past + input_ids.shape[1]
        if total > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence of {total} positions (cache {past} + input {input_ids.shape[1]}) exceeds the "
                f"RoPE table of max_position_embeddings={cfg.max_position_embeddings}"
            )
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_meta:
                raise TypeError(f"attention_mask must be a tensor of 0/1 values, got {type(attention_mask).__name__}")
            expected = (input_ids.shape[0], total)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected} "
                    f"(batch, cached + new tokens)"
                )
            if not torch.compiler.is_compiling() and not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        check: bool = True,
    ) -> tuple[torch.Tensor, KVCache | None, torch.Tensor]:
        """-> (hidden states (B, T, d) after the final norm, cache or None, summed MoE aux loss)."""
        if check:
            self.check_inputs(input_ids, attention_mask, past_key_values)
        bsz, seq_len = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(self.config, bsz, capacity=seq_len)
        past = cache.length if cache is not None else 0
        if cache is not None:
            cache.reserve(seq_len)
        if attention_mask is not None and check and not torch.compiler.is_compiling() and bool(attention_mask.all()):
            attention_mask = None  # no padding: let SDPA use its causal kernel
        attn_mask = make_attention_mask(attention_mask, seq_len, past, input_ids.device)
        position_embeddings = (self.freqs_cos[past : past + seq_len], self.freqs_sin[past : past + seq_len])

        h = self.dropout(self.embed_tokens(input_ids))  # (B, T, d)
        for layer in self.layers:
            h = layer(h, position_embeddings, attn_mask, cache)
        if cache is not None:
            cache.length += seq_len
        aux_loss = sum(
            (layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MoEFeedForward)),
            h.new_zeros((), dtype=torch.float32),
        )
        return self.norm(h), (cache if use_cache else None), aux_loss


class MiniMindForCausalLM(nn.Module):
    """MiniMind as a causal language model: ``MiniMindModel`` and a vocabulary head (tied to the embedding
    unless ``config.tie_word_embeddings`` is False).

    One class for both upstream generations: the config decides (``MiniMindConfig()`` is MiniMind2,
    ``MiniMindConfig.minimind3(use_moe=...)`` MiniMind-3). ``forward`` computes logits and the losses,
    ``generate`` decodes with a KV cache, ``from_pretrained`` / ``save_pretrained`` read and write checkpoints.
    """

    def __init__(self, config: MiniMindConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, MiniMindConfig):
            raise TypeError(f"config must be a MiniMindConfig, got {type(config).__name__}")
        self.config = config or MiniMindConfig()
        self.config.validate()  # again: a field may have been changed since the config was built
        self.model = MiniMindModel(self.config)
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        if self.config.tie_word_embeddings:
            self.model.embed_tokens.weight = self.lm_head.weight  # one matrix reads and writes tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> CausalLMOutput:
        """Logits of the next token at each position, and the losses.

        input_ids: (B, T) token ids. attention_mask: (B, cached + T) of 1 for a real token and 0 for padding
        (left padding for generation). labels: (B, T) targets, shifted inside (position t predicts label
        t + 1), -100 where nothing counts. past_key_values / use_cache: continue from a ``KVCache`` and return
        it. logits_to_keep: 0 for all positions, n for the last n, or a 1-D tensor of positions.
        Returns ``CausalLMOutput(logits, loss, aux_loss, past_key_values)``; ``aux_loss`` sums the MoE layers'
        balancing losses (training mode only; a zero tensor otherwise) and is not included in ``loss``.
        """
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, torch.Tensor)):
            raise TypeError(f"logits_to_keep must be an int or a tensor of positions, got {logits_to_keep!r}")
        if isinstance(logits_to_keep, int) and logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0 keeps every position), got {logits_to_keep}")
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
                raise TypeError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
            if tuple(labels.shape) != tuple(getattr(input_ids, "shape", ())):
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}, expected that of input_ids {tuple(input_ids.shape)}"
                )
            if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
                raise ValueError("labels need the logits of every position: use logits_to_keep=0 when computing a loss")
            if not torch.compiler.is_compiling():
                bad = (labels != -100) & ((labels < 0) | (labels >= self.config.vocab_size))
                if bool(bad.any()):
                    raise ValueError(f"labels must be in [0, vocab_size={self.config.vocab_size}) or -100")
        h, cache, aux_loss = self.model(input_ids, attention_mask, past_key_values, use_cache)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, keep, :])
        loss = None
        if labels is not None:
            # position t predicts token t+1; -100 marks positions that do not count. The labels are shifted,
            # not the logits: slicing (B, T, vocab) logits would copy them, and their gradient, once more
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): the last position predicts nothing
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux_loss, past_key_values=cache)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool = False,
        eos_token_id: int | Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        generator: torch.Generator | None = None,
        repetition_penalty: float = 1.0,
        compile: bool = False,
    ) -> torch.Tensor:
        """Extend each row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens; returns (B, T + new) ids.

        Greedy unless ``do_sample=True``, as in Hugging Face; sampling uses ``temperature``, ``top_k``,
        ``top_p`` and ``generator``. ``repetition_penalty`` > 1 divides the positive logits (multiplies the
        negative ones) of every token already in the row, prompt included, before the choice.
        A row stops at ``eos_token_id`` and is padded with it while the others go on: None means the config's
        EOS, a list gives several stop tokens, and ``eos_token_id=[]`` never stops (every row gets exactly
        ``max_new_tokens`` tokens). ``attention_mask`` marks a left-padded batch (1 real, 0 padding before the
        prompt); right padding is refused, since new tokens would follow the pads. ``streamer``, if given,
        is called with each new column (B,).
        ``compile=True`` runs every step after the prompt compiled (``torch.compile``; CUDA graphs on CUDA)
        over a static cache (``minimind_ref.decoding``): the same tokens, faster per token, after a one-off
        compilation of tens of seconds that the next calls of the same batch size and length bucket reuse.
        """
        stop_ids = self._check_generate_args(
            max_new_tokens, temperature, top_k, top_p, do_sample, eos_token_id, streamer, repetition_penalty
        )
        self.model.check_inputs(input_ids, attention_mask, None)
        if attention_mask is not None:
            real = attention_mask.bool()
            if not bool((real[:, 1:] >= real[:, :-1]).all() and real[:, -1].all()):
                raise ValueError(
                    "attention_mask: generate needs left padding (0s before each prompt, 1s to the end), and a row "
                    "has a 0 after a 1 or ends in padding; pad on the left (tokenizer.padding_side = 'left')"
                )
        bsz, prompt_len = input_ids.shape
        total = prompt_len + max_new_tokens
        if total > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt {prompt_len} + max_new_tokens {max_new_tokens} exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        out = input_ids.new_empty(bsz, total)
        out[:, :prompt_len] = input_ids
        if max_new_tokens == 0:
            return out
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.new_ones(bsz, total)  # grows by one real column per step
            mask[:, :prompt_len] = attention_mask
        seen = None  # (B, vocab) True for the tokens already in a row, for the repetition penalty
        if repetition_penalty != 1.0:
            real = torch.ones_like(input_ids, dtype=torch.long) if attention_mask is None else attention_mask.long()
            counts = torch.zeros(bsz, self.config.vocab_size, dtype=torch.long, device=input_ids.device)
            seen = counts.scatter_add_(1, input_ids.long(), real) > 0  # padding is not "already in the row"
        stop = torch.tensor(stop_ids, device=input_ids.device, dtype=input_ids.dtype) if stop_ids else None
        cache = KVCache(self.config, bsz, capacity=total)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {compile!r}")
        step = self._compiled_step(bsz, total, input_ids.device) if compile else None
        if step is not None:
            cache = step.start(None if mask is None else attention_mask)  # the prefill fills the static cache
        finished = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
        step_ids, n = input_ids, prompt_len
        for _ in range(max_new_tokens):
            if step is not None and n > prompt_len:  # one token at position n - 1, compiled
                logits = step(step_ids, n - 1)
            else:
                h, cache, _ = self.model(
                    step_ids, None if mask is None else mask[:, :n], cache, use_cache=True, check=False
                )
                logits = self.lm_head(h[:, -1]).float()  # (B, vocab): only the last position is needed
            if seen is not None:
                penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
                logits = torch.where(seen, penalised, logits)
            next_tok = self._pick(logits, do_sample, temperature, top_k, top_p, generator)
            if stop is not None:
                next_tok = torch.where(finished, torch.full_like(next_tok, stop_ids[0]), next_tok)
                finished |= torch.isin(next_tok, stop)
            if seen is not None:
                seen[torch.arange(bsz, device=seen.device), next_tok] = True
            out[:, n] = next_tok
            n += 1
            if streamer is not None:
                streamer(next_tok)
            if stop is not None and bool(finished.all()):
                break
            step_ids = next_tok[:, None]
        return out[:, :n]

    def _check_generate_args(
        self, max_new_tokens, temperature, top_k, top_p, do_sample, eos_token_id, streamer, repetition_penalty
    ) -> list[int]:
        """TypeError/ValueError naming the argument; returns the stop token ids (eos_token_id resolved)."""

        def number(name: str, v, hi: float = math.inf) -> None:  # a finite number in (0, hi]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a number, got {v!r}")
            if not (math.isfinite(v) and 0 < v <= hi):
                raise ValueError(f"{name} must be in (0, {hi}], got {v}")

        for name, v in (("max_new_tokens", max_new_tokens), ("top_k", top_k)):
            if (v is not None or name == "max_new_tokens") and (isinstance(v, bool) or not isinstance(v, int)):
                raise TypeError(f"{name} must be an int{' or None' if name == 'top_k' else ''}, got {v!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer (None: no top-k), got {top_k}")
        if not isinstance(do_sample, bool):
            raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {temperature!r}")
        if do_sample and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"temperature must be finite and > 0 when sampling (greedy: do_sample=False), got {temperature}"
            )
        if top_p is not None:
            number("top_p", top_p, 1.0)
        number("repetition_penalty", repetition_penalty)
        if streamer is not None and not callable(streamer):
            raise TypeError(f"streamer must be callable (it is called with each new column), got {streamer!r}")
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_id
        ids = [] if eos_token_id is None else [eos_token_id] if not isinstance(eos_token_id, Sequence) else eos_token_id
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"eos_token_id must be an int, a list of ints or None, got {eos_token_id!r}")
            if not 0 <= i < self.config.vocab_size:
                raise ValueError(f"eos_token_id {i} is outside the vocabulary [0, {self.config.vocab_size})")
        return list(ids)

    def _compiled_step(self, batch_size: int, total: int, device: torch.device) -> CompiledDecodeStep:
        """The compiled decoding step of ``generate(compile=True)`` for ``batch_size`` rows of up to ``total``
        positions. The last one is kept (a plain attribute: not a submodule, not in the state dict) and reused
        when batch size, cache capacity, device and dtype match, so only the first such call compiles."""
        capacity = capacity_for(total, self.config.max_position_embeddings)
        dtype = self.lm_head.weight.dtype
        step = getattr(self, "_decode_step", None)
        if step is None or step.key != (batch_size, capacity, torch.device(device), dtype):
            step = CompiledDecodeStep(self, batch_size, capacity, device, dtype)
            self._decode_step = step
        return step

    @staticmethod
    def _pick(
        logits: torch.Tensor,
        do_sample: bool,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Choose the next token of each row from (B, vocab) float32 logits."""
        if not do_sample:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
            drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.pth``) into folder ``path``.

        Weights under the standard names (``model.safetensors``, ``pytorch_model.bin`` / ``.pth``, sharded
        indexes) left by an earlier save are removed, so the folder never holds two sets; any other weights
        file in it is an error, since ``from_pretrained`` could not tell which one is current."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        name = "model.safetensors" if safe_serialization else "pytorch_model.pth"
        strangers = [f.name for f in weight_files(path) if f.name not in STANDARD_WEIGHTS]
        if strangers:
            raise ValueError(
                f"save_pretrained: {path} already holds weights this method did not write ({strangers}); "
                "save into an empty folder or remove them"
            )
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight")  # the same tensor as the embedding; restored on load
        tmp = path / (name + ".tmp")
        if safe_serialization:
            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(state, tmp)
        os.replace(tmp, path / name)
        for stale in standard_weights(path):
            if stale.name != name:
                stale.unlink()
        (path / "config.json").write_text(self.config.to_json() + "\n")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: MiniMindConfig | None = None,
        map_location: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
    ) -> MiniMindForCausalLM:
        """Load a checkpoint from local files, in eval mode.

        ``path`` is a folder with ``config.json`` and weights (``model.safetensors``, possibly sharded,
        ``pytorch_model.bin``, or one ``.pth`` state dict), or a single weights file, whose config comes
        from ``config`` or a ``config.json`` beside it. The config may be this library's, upstream
        MiniMind2's or MiniMind-3's, or a Hugging Face Qwen3 / Qwen3-MoE export: the generation is read
        from it. A released MiniMind-3 ``.pth`` carries no config: pass ``config=MiniMindConfig.minimind3(
        use_moe=...)``. Keys and shapes must match exactly. ``dtype`` (alias ``torch_dtype``): a torch
        dtype, its name (``"bfloat16"``) or ``"auto"`` for the stored one; None keeps float32.
        """
        dtype = resolve_dtype(dtype, torch_dtype)
        if config is not None and not isinstance(config, MiniMindConfig):
            raise TypeError(f"config must be a MiniMindConfig or None, got {type(config).__name__}")
        path = Path(path)
        if not path.exists():
            hub = len(path.parts) == 2 and not path.suffix and not str(path).startswith((".", "/", "~"))
            raise FileNotFoundError(
                f"from_pretrained: {path} does not exist"
                + (" (it looks like a hub id: minimind_ref reads local files only, downloading is not its job; "
                   f"fetch it first, e.g. `hf download {path} --local-dir {path.name}`)" if hub else "")
            )  # fmt: skip
        folder = path if path.is_dir() else path.parent
        files = find_weights(path) if path.is_dir() else [path]
        if config is None and (folder / "config.json").is_file():
            config = MiniMindConfig.from_json(folder / "config.json")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_state_dict_file(f, map_location))
        if config is None:
            preset = (
                "MiniMindConfig.minimind3(use_moe=...)"
                if any(".q_norm." in k for k in state)
                else "MiniMindConfig(...)"
            )
            raise ValueError(f"{path} comes without a config.json: pass config={preset} as well")
        model = cls(config)
        model.load_checkpoint(unfuse_experts(state))
        if dtype == "auto":
            dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        model.to(device=map_location, dtype=dtype)
        return model.eval()

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """``load_state_dict(strict=True)`` with an error that lists every missing, unexpected and
        mis-shaped key; a tied ``lm_head.weight`` may be absent (it is the embedding)."""
        state = dict(state_dict)
        tied = self.config.tie_word_embeddings
        if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        if tied and "lm_head.weight" in state and "model.embed_tokens.weight" not in state:
            state["model.embed_tokens.weight"] = state["lm_head.weight"]
        if tied and not torch.equal(
            state.get("lm_head.weight", torch.zeros(0)), state.get("model.embed_tokens.weight", torch.zeros(0))
        ):
            raise ValueError(
                "checkpoint has different lm_head.weight and model.embed_tokens.weight, but the config "
                "ties them (tie_word_embeddings=True)"
            )
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(state))
            if state[k].shape != own[k].shape
        ]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing keys ({len(missing)}): {missing}")
            if unexpected:
                parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
            if wrong:
                parts.append(f"shape mismatches ({len(wrong)}): {wrong}")
            ckpt_v3, cfg_v3 = any(".q_norm." in k for k in state), self.config.qk_norm
            if ckpt_v3 != cfg_v3:
                parts.append(
                    "the checkpoint is MiniMind-3 (QK-norm): use MiniMindConfig.minimind3(use_moe=...)"
                    if ckpt_v3
                    else "the checkpoint has no QK-norm (MiniMind2?) but the config has qk_norm=True"
                )
            raise ValueError("checkpoint does not match the model config:\n  " + "\n  ".join(parts))
        self.load_state_dict(state, strict=True)
