"""Chapter 5's experiments: mixture-of-experts accounting, routing, dispatch and load balancing.

Everything here runs on ``minimind_ref``'s own modules (``MoEGate``, ``MoEFeedForward``):

* accounting: parameters, active parameters and FLOPs of real modules;
* routing: a gate that reproduces chosen router probabilities exactly (for the auxiliary-loss
  examples), the statistics f (load) and P (mean probability), the router z-loss;
* dispatch: a per-token reference loop, the step-by-step trace of the grouped dispatch, and two code
  versions that the MoE document quotes (its ``moe_infer`` excerpt with the weights indexed in the
  wrong order, and the older training path with a float16 buffer), so the chapter can show them fail;
* the router explorer: tokens in two dimensions, expert regions, top-k and temperature;
* the load-balancing experiment: one MoE layer with MiniMind2's routing (4 routed experts, top-2,
  one shared expert, sequence-level auxiliary loss) trained on a synthetic clustered regression task
  with the auxiliary loss at several strengths, or with DeepSeek-V3's auxiliary-loss-free bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MiniMindConfig
from ..moe import MoEFeedForward, MoEGate

__all__ = [
    "n_params",
    "active_params",
    "ffn_multiples",
    "forward_flops",
    "router_scores",
    "load_and_importance",
    "gate_for_probs",
    "z_loss",
    "router_gradient",
    "descend_aux",
    "moe_reference",
    "dispatch_trace",
    "document_moe_infer",
    "fp16_buffer_training_path",
    "LossFreeBiasGate",
    "router_logits",
    "router_rows",
    "draw_router",
    "plot_router",
    "BalanceTask",
    "BalanceRun",
    "train_balance",
    "balance_experiment",
    "balance_rows",
    "draw_balance",
    "capacity_drop",
    "logit_push",
    "trace_routing",
    "all_to_all_bytes",
    "routing_records",
    "heldout_accuracy",
    "label_expert_shares",
    "distinctive_tokens",
    "book_validation_documents",
]


# ----------------------------------------------------------------------------- accounting


def n_params(module: nn.Module) -> int:
    """Number of parameters (tied weights counted once, as ``parameters()`` yields them once)."""
    return sum(p.numel() for p in module.parameters())


def _moe_layers(module: nn.Module) -> list[MoEFeedForward]:
    return [m for m in module.modules() if isinstance(m, MoEFeedForward)]


def active_params(module: nn.Module) -> int:
    """Parameters one token uses: all of them except the routed experts it does not choose.

    Each MoE layer runs top_k of its routed experts per token, so (n_routed - top_k) experts'
    parameters are idle for that token (every expert of a layer has the same size)."""
    idle = 0
    for moe in _moe_layers(module):
        per_expert = n_params(moe.experts[0])
        idle += (len(moe.experts) - moe.top_k) * per_expert
    return n_params(module) - idle


def ffn_multiples(config: MiniMindConfig) -> dict[str, float]:
    """Total and active parameters of one MoE layer, in units of one dense FFN of the same config."""
    from ..ffn import FeedForward

    dense = n_params(FeedForward(config))
    moe = MoEFeedForward(config)
    experts = n_params(moe.experts) + n_params(moe.shared_experts)  # without the router
    active = experts - (len(moe.experts) - moe.top_k) * n_params(moe.experts[0])
    return {
        "dense_ffn": dense,
        "router": n_params(moe.gate),
        "total": experts / dense,
        "active": active / dense,
    }


def forward_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)`` counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- routing


def router_scores(gate: MoEGate, hidden: torch.Tensor) -> torch.Tensor:
    """(tokens, N) router probabilities exactly as ``gate`` computes them (softmax in >= float32)."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), gate.weight)
    return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def load_and_importance(
    scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, per_token: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, P) over all tokens: f_i the share of the T*K selections that went to expert i (MiniMind2;
    ``per_token``: selections per token, K times larger, as MiniMind-3 and Hugging Face's Qwen-MoE count),
    P_i the mean router probability of expert i."""
    scores = scores.reshape(-1, n_experts)
    k = topk_idx.reshape(scores.shape[0], -1).shape[1]
    counts = torch.bincount(topk_idx.reshape(-1), minlength=n_experts).to(scores.dtype)
    f = counts / (scores.shape[0] * (1 if per_token else k))
    return f, scores.mean(0)


def gate_for_probs(
    probs: torch.Tensor,
    top_k: int,
    alpha: float = 0.01,
    seq_aux: bool = True,
    norm_topk_prob: bool = True,
    **config: object,
) -> tuple[MoEGate, torch.Tensor]:
    """A float64 ``MoEGate`` and hidden states whose router probabilities are exactly ``probs``.

    probs: (B, L, N), each row a probability vector (zeros allowed). The gate's weight is the
    identity on the first N hidden dimensions and the hidden state of a token is log(p), so the
    softmax gives back p. Used to put hand-made routings through the real module."""
    bsz, seq_len, n = probs.shape
    hidden = n + n % 2  # an even width (MiniMindConfig needs an even head_dim)
    cfg = MiniMindConfig(
        hidden_size=hidden,
        num_attention_heads=1,
        num_key_value_heads=1,
        use_moe=True,
        n_routed_experts=n,
        num_experts_per_tok=top_k,
        aux_loss_alpha=alpha,
        seq_aux=seq_aux,
        norm_topk_prob=norm_topk_prob,
        **config,
    )
    gate = MoEGate(cfg).double()
    with torch.no_grad():
        gate.weight.zero_()
        gate.weight[:, :n] = torch.eye(n, dtype=torch.float64)
    h = torch.zeros(bsz, seq_len, hidden, dtype=torch.float64)
    h[..., :n] = probs.double().clamp_min(1e-300).log()  # p = 0 -> exp(-690) = 0 in the softmax
    return gate, h


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: the mean over tokens of (log sum_j exp(logit_j))^2."""
    return torch.logsumexp(logits.reshape(-1, logits.shape[-1]).double(), dim=-1).pow(2).mean()


def router_gradient(moe: MoEFeedForward, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """d(sum u * routed output)/d(gate weight) from the formula derived in the chapter, not autograd.

    For token t and a chosen expert i with renormalised weight w_ti, the logit z_ti receives
    w_ti * (u_t . E_i(x_t) - u_t . yhat_t), yhat_t = sum over chosen j of w_tj E_j(x_t); logits of
    experts not chosen receive nothing; the weight's gradient is sum_t g_t x_t^T."""
    hidden = x.shape[-1]
    tokens = x.reshape(-1, hidden)
    u = u.reshape(-1, hidden)
    with torch.no_grad():
        topk_idx, topk_weight, _ = moe.gate(x)
        outs = torch.stack([expert(tokens) for expert in moe.experts], dim=1)  # (T, N, d)
        score = (outs * u[:, None]).sum(-1)  # (T, N): u_t . E_i(x_t)
        chosen = score.gather(1, topk_idx)  # (T, K)
        yhat = (topk_weight * chosen).sum(-1, keepdim=True)  # u_t . yhat_t
        g = torch.zeros_like(score).scatter(1, topk_idx, topk_weight * (chosen - yhat))
    return g.T @ tokens  # (N, d)


def descend_aux(probs: torch.Tensor, top_k: int, steps: int = 150, lr: float = 0.5, seed: int = 0) -> dict:
    """Gradient descent on the balancing loss alone, the router logits of T tokens as free parameters.

    probs: (T, N) starting probabilities (a little noise is added to the logits so tokens differ).
    Returns the loss (in units of alpha) and the imbalance N * max_i f_i at every step."""
    from ..moe import load_balancing_loss

    g = torch.Generator().manual_seed(seed)
    n = probs.shape[-1]
    logits = probs.double().clamp_min(1e-12).log() + 0.02 * torch.randn(probs.shape, generator=g, dtype=torch.float64)
    logits.requires_grad_(True)
    values, imbalance = [], []
    for _ in range(steps + 1):
        scores = logits.softmax(-1)
        idx = scores.topk(top_k, dim=-1).indices
        loss = load_balancing_loss(scores[None], idx[None], n, 1.0, seq_aux=False)
        f = torch.bincount(idx.reshape(-1), minlength=n).double() / idx.numel()
        values.append(loss.item())
        imbalance.append(float(f.max() * n))
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            logits -= lr * grad * probs.shape[0]  # per-token step (the loss averages over T tokens)
    return {"aux_over_alpha": torch.tensor(values), "imbalance": torch.tensor(imbalance)}


# ----------------------------------------------------------------------------- dispatch


def moe_reference(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The layer's output token by token: sum_k w[t, k] * expert[idx[t, k]](x[t]) + shared(x[t]).

    The slowest correct version (one small call per (token, slot) pair): the baseline that both
    dispatch paths must equal."""
    bsz, seq_len, hidden = x.shape
    topk_idx, topk_weight, _ = moe.gate(x)
    tokens = x.reshape(-1, hidden)
    rows = []
    for t in range(tokens.shape[0]):
        y_t = tokens.new_zeros(hidden)
        for k in range(topk_idx.shape[1]):
            y_t = y_t + topk_weight[t, k] * moe.experts[int(topk_idx[t, k])](tokens[t])
        for shared in moe.shared_experts:
            y_t = y_t + shared(tokens[t])
        rows.append(y_t)
    return torch.stack(rows).view(bsz, seq_len, hidden)


def dispatch_trace(topk_idx: torch.Tensor, n_experts: int) -> dict[str, torch.Tensor]:
    """The bookkeeping of the grouped dispatch, step by step.

    flat: expert of each (token, slot) pair in token order; order: the pairs sorted by expert (a
    stable argsort); counts: pairs per expert; ends: where each expert's block ends (cumsum of
    counts); token: the token each sorted pair belongs to (order // K); slot: which of its K slots."""
    k = topk_idx.shape[-1]
    flat = topk_idx.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    return {
        "flat": flat,
        "order": order,
        "sorted_expert": flat[order],
        "counts": counts,
        "ends": counts.cumsum(0),
        "token": order // k,
        "slot": order % k,
    }


@torch.no_grad()
def document_moe_infer(
    moe: MoEFeedForward,
    tokens: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    fixed: bool = False,
) -> torch.Tensor:
    """The MoE document's inference excerpt (routed experts only): sort the (token, slot) pairs by
    expert, run each expert on its block, weight, accumulate.

    The excerpt weights expert i's outputs with ``flat_weights[start:end]``, the weights of the pairs
    at those positions in *token* order, while the outputs are in *expert* order. ``fixed=True``
    indexes them through the sort, ``flat_weights[order[start:end]]``, as the repository does."""
    flat_idx = topk_idx.reshape(-1)
    flat_w = topk_weight.reshape(-1, 1)
    order = flat_idx.argsort()
    ends = torch.bincount(flat_idx, minlength=len(moe.experts)).cumsum(0).tolist()
    token_of = order // topk_idx.shape[1]
    out = torch.zeros_like(tokens)
    start = 0
    for e, end in enumerate(ends):
        if end > start:
            rows = token_of[start:end]
            weights = flat_w[order[start:end]] if fixed else flat_w[start:end]
            out[rows] += moe.experts[e](tokens[rows]) * weights  # a token occurs once per expert
        start = end
    return out


def fp16_buffer_training_path(
    moe: MoEFeedForward, x: torch.Tensor, cast: bool = True, buffer_dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """The training path of the documents' code version (routed experts only): repeat each token K
    times, write every expert's outputs into a buffer of ``buffer_dtype`` (float16 in that version),
    then weight and sum the K copies. ``cast=False`` is the document's excerpt, which leaves out the
    ``.to(buffer.dtype)`` before the write."""
    hidden = x.shape[-1]
    topk_idx, topk_weight, _ = moe.gate(x)
    flat_idx = topk_idx.reshape(-1)
    repeated = x.reshape(-1, hidden).repeat_interleave(moe.top_k, dim=0)  # (T*K, d)
    buffer = torch.empty_like(repeated, dtype=buffer_dtype)
    for e, expert in enumerate(moe.experts):
        mask = flat_idx == e
        out = expert(repeated[mask])
        buffer[mask] = out.to(buffer.dtype) if cast else out
    y = (buffer.view(*topk_weight.shape, hidden) * topk_weight.unsqueeze(-1)).sum(dim=1)
    return y.view(x.shape)


# ----------------------------------------------------------------------------- auxiliary-loss-free balancing


class LossFreeBiasGate(MoEGate):
    """DeepSeek-V3's auxiliary-loss-free balancing on MiniMind's router.

    A per-expert bias b is added to the router probabilities *for the choice of the top-k only*; the
    weights that multiply the experts' outputs are still the (renormalised) probabilities. After each
    training step, outside the gradient, ``update`` raises b_i by ``gamma`` for an expert that got fewer
    than its share of the selections and lowers it by ``gamma`` for one that got more. No loss term."""

    def __init__(self, config: MiniMindConfig, gamma: float = 0.01):
        super().__init__(config)
        self.gamma = gamma
        self.register_buffer("bias", torch.zeros(config.n_routed_experts))
        self.last_counts = torch.zeros(config.n_routed_experts)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = router_scores(self, hidden_states)  # (T, N)
        _, topk_idx = torch.topk(scores + self.bias, k=self.top_k, dim=-1, sorted=False)  # choose with the bias
        topk_weight = scores.gather(1, topk_idx)  # weigh without it
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        if self.training:
            self.last_counts = torch.bincount(topk_idx.reshape(-1), minlength=self.n_routed_experts).float()
        return topk_idx, topk_weight.to(hidden_states.dtype), scores.new_zeros(())

    @torch.no_grad()
    def update(self) -> None:
        """b_i += gamma * sign(mean load - load_i), from the counts of the last training forward."""
        counts = self.last_counts
        self.bias += self.gamma * torch.sign(counts.mean() - counts)


# ----------------------------------------------------------------------------- the router explorer


def _router_tokens(n: int = 80, seed: int = 0) -> torch.Tensor:
    """Fixed 2-D 'tokens': five blobs of different sizes, so the expert regions get unequal loads."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.6, 1.2], [-1.4, 1.5], [-1.2, -1.4], [1.5, -1.1], [0.4, 0.2]])
    share = torch.tensor([0.3, 0.15, 0.2, 0.15, 0.2])
    which = torch.multinomial(share, n, replacement=True, generator=g)
    return centres[which] + 0.45 * torch.randn(n, 2, generator=g)


#: The router of the explorer: one weight vector per expert, pointing into the four quadrants.
ROUTER_W = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def router_gate(top_k: int, temperature: float, tilt: float, alpha: float = 0.01) -> MoEGate:
    """A real ``MoEGate`` with 4 experts on 4-dimensional hidden states (x, y, 1, 0): logits =
    (W (x, y) + tilt * e_0) / temperature, the third feature carrying the tilt towards expert 0."""
    cfg = MiniMindConfig(
        hidden_size=4,
        num_attention_heads=1,
        num_key_value_heads=1,
        use_moe=True,
        n_routed_experts=4,
        num_experts_per_tok=top_k,
        aux_loss_alpha=alpha,
        seq_aux=True,
    )
    gate = MoEGate(cfg)
    with torch.no_grad():
        gate.weight.zero_()
        gate.weight[:, :2] = ROUTER_W
        gate.weight[0, 2] = tilt
        gate.weight.div_(temperature)
    return gate


def _router_hidden(points: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(points.shape[0], 1)
    return torch.cat([points, ones, torch.zeros_like(ones)], dim=1)[None]  # (1, T, 4): one sequence


def router_logits(top_k: int = 2, temperature: float = 1.0, tilt: float = 0.0) -> torch.Tensor:
    """(tokens, 4) logits of the explorer's router for its tokens."""
    return F.linear(_router_hidden(_router_tokens())[0], router_gate(top_k, temperature, tilt).weight)


def router_stats(top_k: int = 2, temperature: float = 1.0, tilt: float = 0.0, alpha: float = 0.01) -> dict:
    """Route the explorer's tokens with the real gate: scores, choices, f, P and the auxiliary loss."""
    gate = router_gate(top_k, temperature, tilt, alpha).train()
    points = _router_tokens()
    hidden = _router_hidden(points)
    with torch.no_grad():
        topk_idx, topk_weight, aux = gate(hidden)
        scores = router_scores(gate, hidden)
    f, P = load_and_importance(scores, topk_idx, 4)
    return {
        "points": points,
        "scores": scores,
        "topk_idx": topk_idx,
        "topk_weight": topk_weight,
        "f": f,
        "P": P,
        "aux_over_alpha": float(aux) / alpha,
    }


def router_rows(top_k: int = 2, temperature: float = 1.0, tilt: float = 0.0) -> list[dict]:
    """Explorer rows: each token (x, y, its top-1 expert and that expert's weight), and per expert
    its load f_i and mean probability P_i, and the auxiliary loss in units of alpha."""
    s = router_stats(top_k, temperature, tilt)
    top1 = s["scores"].argmax(-1)
    rows = [
        {
            "panel": "token",
            "x": float(p[0]),
            "y": float(p[1]),
            "expert": f"expert {int(e)}",
            "top-1 probability": float(s["scores"][i, e]),
        }
        for i, (p, e) in enumerate(zip(s["points"], top1, strict=True))
    ]
    for e in range(4):
        rows.append({"panel": "bar", "expert": f"expert {e}", "quantity": "load f", "value": float(s["f"][e])})
        rows.append(
            {"panel": "bar", "expert": f"expert {e}", "quantity": "mean probability P", "value": float(s["P"][e])}
        )
    rows.append({"panel": "text", "label": f"aux loss = {s['aux_over_alpha']:.3f} α"})
    return rows


EXPERT_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7"]


def draw_router(base):
    """The router explorer: (a) tokens coloured by their top-1 expert, (b) f and P per expert."""
    import altair as alt

    colour = alt.Color(
        "expert:N",
        scale=alt.Scale(domain=[f"expert {e}" for e in range(4)], range=EXPERT_COLORS),
        legend=alt.Legend(orient="bottom", title=None),
    )
    tokens = (
        base.transform_filter("datum.panel == 'token'")
        .mark_circle()
        .encode(
            x=alt.X("x:Q", title="hidden feature 1", scale=alt.Scale(domain=[-3, 3])),
            y=alt.Y("y:Q", title="hidden feature 2", scale=alt.Scale(domain=[-3, 3])),
            color=colour,
            size=alt.Size("top-1 probability:Q", scale=alt.Scale(domain=[0.25, 1], range=[10, 120]), legend=None),
            tooltip=["expert:N", "top-1 probability:Q"],
        )
        .properties(width=260, height=260, title="(a) tokens, by top-1 expert (size: its probability)")
    )
    bars = (
        base.transform_filter("datum.panel == 'bar'")
        .mark_bar()
        .encode(
            x=alt.X("expert:N", title=None),
            xOffset="quantity:N",
            y=alt.Y("value:Q", title="fraction", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "quantity:N",
                scale=alt.Scale(domain=["load f", "mean probability P"], range=["#444444", "#E69F00"]),
                legend=alt.Legend(orient="bottom", title=None),
            ),
        )
        .properties(width=220, height=260, title="(b) load f and mean probability P")
    )
    text = (
        base.transform_filter("datum.panel == 'text'")
        .mark_text(align="left", fontSize=13, fontWeight="bold")
        .encode(text="label:N", x=alt.value(5), y=alt.value(12))
    )
    return alt.hconcat(tokens, bars + text).resolve_scale(color="independent")


def plot_router(axes, top_k: int = 2, temperature: float = 1.0, tilt: float = 0.0, title: str = "") -> dict:
    """Matplotlib version for a static figure: (axes[0]) expert regions and tokens, (axes[1]) f and P."""
    s = router_stats(top_k, temperature, tilt)
    ax, bx = axes
    grid = torch.linspace(-3, 3, 241)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    gate = router_gate(top_k, temperature, tilt)
    region = router_scores(gate, _router_hidden(pts)).argmax(-1).reshape(gx.shape)
    from matplotlib.colors import ListedColormap

    ax.contourf(
        gx.numpy(),
        gy.numpy(),
        region.numpy(),
        levels=[-0.5, 0.5, 1.5, 2.5, 3.5],
        cmap=ListedColormap(EXPERT_COLORS),
        alpha=0.18,
    )
    top1 = s["scores"].argmax(-1)
    for e in range(4):
        m = top1 == e
        size = 10 + 110 * (s["scores"][m, e] - 0.25) / 0.75
        ax.scatter(
            s["points"][m, 0].tolist(),
            s["points"][m, 1].tolist(),
            s=size.tolist(),
            color=EXPERT_COLORS[e],
            label=f"expert {e}",
        )
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_aspect("equal")
    pos = list(range(4))
    bx.bar([p - 0.2 for p in pos], s["f"].tolist(), 0.4, color="#444444", label="load f (share of selections)")
    bx.bar([p + 0.2 for p in pos], s["P"].tolist(), 0.4, color="#E69F00", label="mean probability P")
    bx.axhline(0.25, color="#888888", linestyle=":", linewidth=1)
    bx.set_xticks(pos, [f"expert {e}" for e in range(4)])
    bx.text(0.02, 0.95, f"aux loss = {s['aux_over_alpha']:.3f} α", transform=bx.transAxes, va="top", fontweight="bold")
    return s


# ----------------------------------------------------------------------------- the load-balancing experiment


@dataclass
class BalanceTask:
    """A synthetic regression task with clustered inputs.

    Tokens are drawn around ``n_clusters`` centres that share a common offset (so at initialisation
    the router's logits share a large common part, and its routing starts unbalanced); the target of
    a token is tanh(2 A_c (x - centre_c)) with a random matrix A_c per cluster c, so the best layer
    gives different clusters to different experts."""

    centres: torch.Tensor  # (C, d)
    maps: torch.Tensor  # (C, d, d)

    @classmethod
    def make(cls, n_clusters: int = 8, dim: int = 32, offset: float = 8.0, seed: int = 1000) -> BalanceTask:
        g = torch.Generator().manual_seed(seed)
        centres = torch.randn(n_clusters, dim, generator=g)
        common = torch.randn(dim, generator=g)
        maps = torch.randn(n_clusters, dim, dim, generator=g) / math.sqrt(dim)
        return cls(centres + offset * common / common.norm(), maps)

    def batch(self, g: torch.Generator, bsz: int = 8, seq_len: int = 32, noise: float = 0.5):
        """(x, y, cluster) for ``bsz`` sequences of ``seq_len`` tokens (clusters mixed within a sequence)."""
        n_clusters, dim = self.centres.shape
        c = torch.randint(0, n_clusters, (bsz, seq_len), generator=g)
        local = noise * torch.randn(bsz, seq_len, dim, generator=g)
        y = torch.tanh(2 * torch.einsum("bld,blde->ble", local, self.maps[c]))
        return self.centres[c] + local, y, c

    def batches(self, seed: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The training batches of one seed (drawn once, shared by every method)."""
        g = torch.Generator().manual_seed(seed)
        return [self.batch(g) for _ in range(steps)]


def balance_config(alpha: float, dim: int = 32, width: int = 32) -> MiniMindConfig:
    """MiniMind2's MoE routing (4 routed experts, top-2, 1 shared expert, sequence-level aux loss,
    renormalised weights) at a small width."""
    return MiniMindConfig(
        hidden_size=dim,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=width,
        use_moe=True,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        aux_loss_alpha=alpha,
        seq_aux=True,
    )


@dataclass
class BalanceRun:
    method: str
    seed: int
    loads: torch.Tensor  # (steps, N): share of the T*K selections per expert at each training step
    task_loss: torch.Tensor  # (steps,) mean squared error of the training batch
    val_loss: float  # mean squared error on a held-out set after training
    routing: torch.Tensor  # (C, N): share of each cluster's selections per expert, after training
    extra: dict = field(default_factory=dict)

    @property
    def imbalance(self) -> torch.Tensor:
        """(steps,) N * max_i f_i: 1 when balanced, N/K (= 2 here) when all tokens use the same K experts."""
        return self.loads.max(dim=1).values * self.loads.shape[1]


def method_alpha(method: str) -> float:
    """'α = 0.01' -> 0.01; 'loss-free bias' -> 0 (that method has no auxiliary loss)."""
    return float(method.split("=")[1]) if method.startswith("α") else 0.0


def train_balance(
    method: str = "α = 0.01",
    seed: int = 0,
    steps: int = 120,
    lr: float = 1e-2,
    gamma: float = 0.01,
    task: BalanceTask | None = None,
    batches: list | None = None,
) -> BalanceRun:
    """Train one MoE layer on the clustered task with Adam; record the load of every expert per step.

    ``method`` is 'α = <value>' (MiniMind's auxiliary loss with that coefficient) or 'loss-free bias'
    (``LossFreeBiasGate`` with step ``gamma``). The same seed gives the same initial weights and the
    same batches for every method."""
    task = task or BalanceTask.make()
    torch.manual_seed(seed)
    cfg = balance_config(method_alpha(method), dim=task.centres.shape[1])
    moe = MoEFeedForward(cfg)
    if method == "loss-free bias":
        gate = LossFreeBiasGate(cfg, gamma)
        gate.load_state_dict(moe.gate.state_dict(), strict=False)
        moe.gate = gate
    opt = torch.optim.Adam(moe.parameters(), lr=lr, fused=True)
    batches = batches or task.batches(seed, steps)
    n = cfg.n_routed_experts
    loads, losses = [], []
    counted: list[torch.Tensor] = []
    hook = moe.gate.register_forward_hook(lambda m, a, out: counted.append(out[0].detach()))
    for x, y, _c in batches[:steps]:
        loss = F.mse_loss(moe(x), y)
        (loss + moe.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if isinstance(moe.gate, LossFreeBiasGate):
            moe.gate.update()
        loads.append(torch.bincount(counted.pop().reshape(-1), minlength=n).float() / (x.shape[0] * x.shape[1] * 2))
        losses.append(loss.item())
    hook.remove()
    moe.eval()
    gval = torch.Generator().manual_seed(10_000)
    xv, yv, cv = task.batch(gval, bsz=16, seq_len=64)
    with torch.no_grad():
        val = F.mse_loss(moe(xv), yv).item()
        idx, _, _ = moe.gate(xv)
    c_pairs = cv.reshape(-1).repeat_interleave(2)
    routing = torch.zeros(task.centres.shape[0], n)
    routing.index_put_((c_pairs, idx.reshape(-1)), torch.ones(c_pairs.shape[0]), accumulate=True)
    routing = routing / routing.sum(1, keepdim=True)
    return BalanceRun(method, seed, torch.stack(loads), torch.tensor(losses), val, routing)


#: The settings of the experiment (and of its explorer).
BALANCE_METHODS = ["α = 0", "α = 0.001", "α = 0.01", "α = 0.1", "loss-free bias"]


def balance_experiment(
    methods: list[str] | None = None, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 120, **kw
) -> dict[tuple[str, int], BalanceRun]:
    """Every method with every seed, on one task."""
    task = BalanceTask.make()
    data = {s: task.batches(s, steps) for s in seeds}
    return {
        (m, s): train_balance(m, s, steps, task=task, batches=data[s], **kw)
        for m in (methods or BALANCE_METHODS)
        for s in seeds
    }


def balance_rows(runs: dict[tuple[str, int], BalanceRun], method: str, seed: int, every: int = 3) -> list[dict]:
    """Explorer rows of one run: the load of each expert and the training loss, every ``every`` steps."""
    run = runs[(method, seed)]
    rows = []
    for t in range(0, run.loads.shape[0], every):
        for e in range(run.loads.shape[1]):
            rows.append({"step": t + 1, "series": f"expert {e}", "value": float(run.loads[t, e]), "panel": "load"})
        rows.append({"step": t + 1, "series": "task loss", "value": float(run.task_loss[t]), "panel": "loss"})
    return rows


def draw_balance(base):
    """Explorer: (a) share of the selections per expert against the step, (b) the task loss."""
    import altair as alt

    loads = (
        base.transform_filter("datum.panel == 'load'")
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("value:Q", title="share of the top-2 selections", scale=alt.Scale(domain=[0, 0.55])),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(domain=[f"expert {e}" for e in range(4)], range=EXPERT_COLORS),
                legend=alt.Legend(orient="bottom", title=None),
            ),
        )
        .properties(width=300, height=240, title="(a) load of each expert (ideal: 0.25)")
    )
    ideal = alt.Chart(alt.Data(values=[{"y": 0.25}])).mark_rule(strokeDash=[4, 4], color="#888888").encode(y="y:Q")
    loss = (
        base.transform_filter("datum.panel == 'loss'")
        .mark_line(color="#444444")
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("value:Q", title="mean squared error", scale=alt.Scale(type="log")),
        )
        .properties(width=220, height=240, title="(b) task loss (training batch)")
    )
    return alt.hconcat(loads + ideal, loss)


def capacity_drop(loads: torch.Tensor, capacity_factor: float) -> torch.Tensor:
    """Share of the (token, slot) pairs an expert capacity would drop, from the loads f (..., N).

    With GShard's and Switch's capacity, each expert takes at most capacity_factor * T * K / N of the
    T * K pairs of a batch; the pairs beyond it are dropped (their expert's contribution is lost; a token
    whose every pair is dropped passes through the residual alone).
    In shares of the pairs: sum_i max(0, f_i - capacity_factor / N)."""
    n = loads.shape[-1]
    return (loads - capacity_factor / n).clamp_min(0).sum(-1)


def logit_push(scores: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """s_{t,i} (f_i - sum_j s_{t,j} f_j): the direction in which the balancing loss moves token t's router
    logits, up to the factor alpha * N / T (the derivation is in the chapter)."""
    return scores * (f - (scores * f).sum(-1, keepdim=True))


def trace_routing() -> torch.Tensor:
    """(13, 2) top-2 choices of 13 tokens whose pair counts per expert are (6, 9, 5, 6), so the blocks
    end at (6, 15, 20, 26): the example of the comment in upstream MiniMind's ``moe_infer``."""
    pairs = [(0, 1)] * 4 + [(1, 2)] * 2 + [(1, 3)] * 3 + [(0, 2), (0, 3), (2, 3), (2, 3)]
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(len(pairs), generator=g).tolist()
    flips = torch.randint(0, 2, (len(pairs),), generator=g).tolist()
    rows = [pairs[i][::-1] if flip else pairs[i] for i, flip in zip(perm, flips, strict=True)]
    return torch.tensor(rows)


def all_to_all_bytes(hidden: int, top_k: int, bytes_per_value: int = 2) -> int:
    """Bytes one token sends across devices per MoE layer with expert parallelism, at worst (every
    chosen expert on another device): its hidden state to each of its K experts, and K results back."""
    return 2 * top_k * hidden * bytes_per_value


# ----------------------------------------------------------------------------- a trained model's routing


@torch.no_grad()
def routing_records(model: nn.Module, token_lists: list[list[int]], labels: list[str]) -> dict:
    """Route documents through a trained MoE model and record, for every token, its first-choice expert
    in every MoE layer.

    token_lists: one list of token ids per document; labels: one label per document (e.g. its package).
    Returns tensors over all tokens: ``token`` (ids), ``doc`` (document index), ``label`` (index into
    ``names``), ``top1`` (tokens, layers) and ``scores`` (tokens, layers, N) router probabilities."""
    gates = [m.gate for m in _moe_layers(model)]
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        g.register_forward_hook(lambda m, args, out, k=k: seen.__setitem__(k, router_scores(m, args[0])))
        for k, g in enumerate(gates)
    ]
    names = sorted(set(labels))
    token, doc, label, scores = [], [], [], []
    try:
        for d, (ids, lab) in enumerate(zip(token_lists, labels, strict=True)):
            model(torch.tensor([ids]))
            scores.append(torch.stack([seen[k].float() for k in range(len(gates))], dim=1))  # (L, layers, N)
            token += ids
            doc += [d] * len(ids)
            label += [names.index(lab)] * len(ids)
    finally:
        for h in hooks:
            h.remove()
    scores_t = torch.cat(scores)
    return {
        "token": torch.tensor(token),
        "doc": torch.tensor(doc),
        "label": torch.tensor(label),
        "names": names,
        "scores": scores_t,
        "top1": scores_t.argmax(-1),
    }


def heldout_accuracy(key: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> float:
    """How well ``key`` predicts ``target`` on unseen documents: for each value of the key, the most frequent
    target in the even-numbered groups predicts the odd-numbered ones, and vice versa (a value never seen
    predicts the most frequent target overall); the mean of the two accuracies."""
    scores = []
    for train in (groups % 2 == 0, groups % 2 == 1):
        test = ~train
        n_targets = int(target.max()) + 1
        counts: dict[int, torch.Tensor] = {}
        for k, t in zip(key[train].tolist(), target[train].tolist(), strict=True):
            counts.setdefault(k, torch.zeros(n_targets))[t] += 1
        fallback = int(torch.bincount(target[train], minlength=n_targets).argmax())
        best = {k: int(c.argmax()) for k, c in counts.items()}
        pred = torch.tensor([best.get(k, fallback) for k in key[test].tolist()])
        scores.append(float((pred == target[test]).float().mean()))
    return sum(scores) / 2


def label_expert_shares(records: dict, layer: int) -> torch.Tensor:
    """(labels, N): the share of each label's tokens whose first choice in ``layer`` is each expert."""
    n_labels = len(records["names"])
    n_experts = records["scores"].shape[-1]
    shares = torch.zeros(n_labels, n_experts)
    shares.index_put_((records["label"], records["top1"][:, layer]), torch.ones(len(records["token"])), accumulate=True)
    return shares / shares.sum(1, keepdim=True)


def distinctive_tokens(records: dict, layer: int, expert: int, min_count: int = 20, top: int = 8) -> list:
    """The tokens most over-represented among an expert's first choices in ``layer``: (token id, lift) with
    lift = P(token | expert) / P(token), among tokens seen at least ``min_count`` times."""
    token = records["token"]
    mine = token[records["top1"][:, layer] == expert]
    overall = torch.bincount(token)
    chosen = torch.bincount(mine, minlength=len(overall))
    lift = (chosen / max(len(mine), 1)) / (overall / len(token)).clamp_min(1e-12)
    lift[overall < min_count] = 0
    best = lift.argsort(descending=True)[:top]
    return [(int(t), float(lift[t])) for t in best if lift[t] > 0]


def book_validation_documents() -> list[tuple[str, str]]:
    """(package, text) for each validation document of the book models' corpus (``minimind_ref.data``): the
    source files of the corpus's packages that its split assigns to validation, read from the packages as
    installed here (the corpus also drops docstrings repeated elsewhere; this does not)."""
    from .. import data

    docs = []
    for name in data.BOOK_SOURCES:
        root = data.source_root(name)
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            rel = path.relative_to(root)
            if data.SKIP_DIRS & set(rel.parts[:-1]) or not data.is_validation(f"{name}:{rel.as_posix()}"):
                continue
            text = "\n\n".join(data.file_docstrings(path))
            if text:
                docs.append((name, text))
    return docs
