"""The whole MiniMind: pre-norm blocks, the causal-LM head, generation and checkpoints (chapter 6).

State-dict keys are those of upstream MiniMind (``model.layers.{i}.self_attn.q_proj.weight`` ...),
so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, KVCache, make_attention_mask
from .config import MiniMindConfig
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
        """Raise ValueError for inputs that would otherwise give a silent wrong answer or a cryptic error."""
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(
                f"input_ids must be an integer tensor of shape (batch, seq_len), got "
                f"{getattr(input_ids, 'dtype', type(input_ids))} of shape {tuple(getattr(input_ids, 'shape', ()))}"
            )
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids has no tokens (seq_len 0)")
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
            expected = (input_ids.shape[0], total)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected} "
                    f"(batch, cached + new tokens)"
                )

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
    def __init__(self, config: MiniMindConfig | None = None):
        super().__init__()
        self.config = config or MiniMindConfig()
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
        if labels is not None:
            if tuple(labels.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}, expected that of input_ids {tuple(input_ids.shape)}"
                )
            if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
                raise ValueError("labels need the logits of every position: use logits_to_keep=0 when computing a loss")
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
        do_sample: bool = True,
        eos_token_id: int | None = -1,
        attention_mask: torch.Tensor | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend each row by up to ``max_new_tokens`` tokens; returns (B, T + new) token ids.

        Greedy when ``do_sample=False``. A row stops at ``eos_token_id`` (the config's by default,
        None to never stop) and is padded with it while the others go on. ``attention_mask`` marks a
        left-padded batch (1 real, 0 pad). ``streamer``, if given, is called with each new column (B,).
        """
        if eos_token_id == -1:
            eos_token_id = self.config.eos_token_id
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 when sampling, got {temperature} (use do_sample=False for greedy)"
            )
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.model.check_inputs(input_ids, attention_mask, None)
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
        cache = KVCache(self.config, bsz, capacity=total)
        finished = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
        step_ids, n = input_ids, prompt_len
        for _ in range(max_new_tokens):
            h, cache, _ = self.model(
                step_ids, None if mask is None else mask[:, :n], cache, use_cache=True, check=False
            )
            logits = self.lm_head(h[:, -1]).float()  # (B, vocab): only the last position is needed
            next_tok = self._pick(logits, do_sample, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                next_tok = torch.where(finished, torch.full_like(next_tok, eos_token_id), next_tok)
                finished |= next_tok == eos_token_id
            out[:, n] = next_tok
            n += 1
            if streamer is not None:
                streamer(next_tok)
            if eos_token_id is not None and bool(finished.all()):
                break
            step_ids = next_tok[:, None]
        return out[:, :n]

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
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.pth``) into folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(self.config.to_json() + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight")  # the same tensor as the embedding; restored on load
        if safe_serialization:
            save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(state, path / "pytorch_model.pth")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: MiniMindConfig | None = None,
        map_location: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> MiniMindForCausalLM:
        """Load a folder with ``config.json`` and weights (``*.safetensors`` or a ``.pth``/``.bin`` state
        dict), or a single weights file together with ``config``. Keys and shapes must match exactly."""
        path = Path(path)
        if path.is_dir():
            if config is None:
                cfg_file = path / "config.json"
                if not cfg_file.exists():
                    raise FileNotFoundError(f"{path} has no config.json; pass config=MiniMindConfig(...)")
                config = MiniMindConfig.from_dict(json.loads(cfg_file.read_text()))
            candidates = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth")) or sorted(path.glob("*.bin"))
            if len(candidates) != 1:
                raise FileNotFoundError(
                    f"expected exactly one weights file (*.safetensors, *.pth or *.bin) in {path}, "
                    f"found {[c.name for c in candidates]}"
                )
            weights = candidates[0]
        else:
            if config is None:
                raise ValueError(f"{path} is a single weights file: pass config=MiniMindConfig(...) as well")
            weights = path
        model = cls(config)
        model.load_checkpoint(load_state_dict_file(weights, map_location))
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
            raise ValueError("checkpoint does not match the model config:\n  " + "\n  ".join(parts))
        self.load_state_dict(state, strict=True)


def load_state_dict_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file or a plain ``torch.save``d state dict (never unpickling arbitrary code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state
