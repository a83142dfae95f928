"""The cells of chapter 1 (RMSNorm), in order: ("md" | "code", source, tags)."""

CELLS: list[tuple[str, str, tuple[str, ...]]] = []


def md(src: str) -> None:
    CELLS.append(("md", src, ()))


def code(src: str, *tags: str) -> None:
    CELLS.append(("code", src, tags))


# =====================================================================================  front matter

md(r'''
# RMSNorm: normalising by the root mean square

Every block of MiniMind starts the same way: before the attention layer and before the feed-forward
layer, the hidden state of each token is divided by its root mean square and multiplied by a learned
gain. The operation is four lines of PyTorch and costs a sliver of the model's compute, yet it is one of
the reasons a deep Transformer trains at all. This chapter tells how deep learning arrived at it
(BatchNorm, then LayerNorm, then RMSNorm), derives its forward and backward passes and checks every
formula against PyTorch's autograd, reads MiniMind's implementation line by line, measures how fast it
really is, and looks inside a MiniMind to see whether the assumption behind it holds.
''')

code('''
# Set-up: on Colab (or anywhere minimind_ref is missing) install the book's package, then show versions.
import importlib, importlib.util, os, subprocess, sys
REPO_URL = "https://github.com/minimind-textbook/minimind-textbook"
if importlib.util.find_spec("minimind_ref") is None:
    source = os.environ.get("MINIMIND_SOURCE", f"git+{REPO_URL}")  # a local checkout: file:///path/to/repo
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"minimind-ref[lab] @ {source}"], check=True)
    importlib.invalidate_caches()
from minimind_ref.lab import show_versions
show_versions()
''', "hide-output")

md(r'''
```{admonition} Learning objectives
:class: tip
After this chapter you can

1. explain why deep networks need normalisation, and what BatchNorm, LayerNorm and RMSNorm each
   normalise over, including why BatchNorm does not suit language models;
2. state RMSNorm's forward pass and derive its backward pass with a learnable gain, and say why a
   common textbook version of that gradient is wrong;
3. prove and use RMSNorm's key properties: $\mathrm{RMS}^2=\sigma^2+\mu^2$, scale invariance, the
   Jacobian $\frac1r\big(I-\frac{xx^\top}{Dr^2}\big)$ and the $1/\text{scale}$ gradient;
4. read `minimind_ref.norm.RMSNorm` and explain each detail (float32 statistics, `rsqrt`, $\varepsilon$
   inside the root, the gain initialised to ones), and avoid the dtype and overflow pitfalls of mixed
   precision;
5. reason about the speed of a normalisation layer in bytes moved rather than operations counted, and
   measure it.
```

**How to read it.** The Motivation, History and Core idea sections need no more than high-school
algebra. The Mathematics section is the densest; a reader who wants the practical story can skip from
the end of Core idea straight to Implementation and lose nothing that later sections rely on. Every
figure in the HTML book is static; to move the sliders of the two interactive explorers, open the
chapter on Colab (the rocket icon at the top of the page) or in your own Jupyter.
''')

code('''
import inspect
import math
import os
import warnings

import matplotlib.pyplot as plt
import sympy as sp
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from minimind_ref import MiniMindBlock, MiniMindConfig, MiniMindForCausalLM
from minimind_ref.lab import device_name, glue
from minimind_ref.lab import normalization as nl
from minimind_ref.lab.plots import COLORS, label, subplots, use_book_style
from minimind_ref.lab.symbolic import (SymbolicMismatch, check_expr, check_gradient,
                                       check_jacobian, init_printing, vector)
from minimind_ref.lab.timing import bandwidth, compare
from minimind_ref.lab.widgets import explore
from minimind_ref.norm import RMSNorm

torch.manual_seed(0)
if not torch.cuda.is_available():
    # This chapter's tensors are small: on a CPU one thread avoids thread-synchronisation
    # overhead, which dominates (and makes timings erratic) when other programs share the cores.
    torch.set_num_threads(1)
use_book_style()   # white-card figures, legible in the book's light and dark themes
init_printing()    # sympy renders as MathJax
''', "hide-input")

# =====================================================================================  1 Motivation
md(r'''
## Motivation

A deep network is a long product. Each layer multiplies its input by a weight matrix, and the
output of one layer is the input of the next, so whatever a layer does to the *size* of the signal is
compounded by every layer after it. If each layer makes the signal a little larger, a
deep stack makes it enormous; if each makes it a little smaller, it vanishes. The gradients that
flow back during training pass through the transposes of the same matrices, so they grow or shrink in
step. A network whose activations have drifted to a scale of 100 produces gradients that throw the
weights far off; one whose activations have shrunk to 0.01 barely learns.

The next cell makes this concrete with the simplest deep network there is: a stack of random linear
layers of width 512, each initialised with a gain $g$ (weights drawn with standard deviation
$g/\sqrt{512}$, so $g=1$ is the "correct" initialisation that preserves the scale on average). We follow
the root mean square of the signal through the depth, once as it is and once with an RMS
normalisation after every layer.
''')

code('''
def rms_through_depth(gain, depth=48, dim=512, normalise=False, seed=0):
    """RMS of a signal through `depth` random linear layers (optionally RMS-normalised)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(dim, generator=g)
    trace = [float(x.pow(2).mean().sqrt())]
    for _ in range(depth):
        W = torch.randn(dim, dim, generator=g) * gain / math.sqrt(dim)
        x = W @ x
        if normalise:
            x = nl.rms_norm(x)
        trace.append(float(x.pow(2).mean().sqrt()))
    return trace

depth_runs = {g: rms_through_depth(g) for g in (0.8, 1.0, 1.2)}
normed_run = rms_through_depth(1.2, normalise=True)
for g, tr in depth_runs.items():
    print(f"gain {g}: RMS after 48 layers = {tr[-1]:.3g}")
print(f"gain 1.2 with RMS normalisation after each layer: RMS = {normed_run[-1]:.6f}")
assert depth_runs[1.2][-1] > 1e3 and depth_runs[0.8][-1] < 1e-3     # explodes / vanishes
assert abs(normed_run[-1] - 1) < 1e-3                               # held at 1
glue("depth_rms_up", depth_runs[1.2][-1], display=False)
glue("depth_rms_down", depth_runs[0.8][-1], display=False)
glue("depth_rms_one", depth_runs[1.0][-1], display=False)
''')

code('''
fig, ax = subplots(1, 1, width=7, height=3.8)
for g, tr in depth_runs.items():
    ax.semilogy(tr, label=f"no normalisation, gain {g}")
ax.semilogy(normed_run, color="black", linestyle="--",
            label="RMSNorm after each layer, gain 1.2")
label(ax, "Signal scale through a stack of random linear layers", "layer index (depth)",
      "RMS of the activations (log scale)", legend=True)
plt.show()
''', "hide-input")

md(r'''
In the figure, the scale of the signal is a straight line on the logarithmic axis: it changes by a
constant factor per layer. With gain 1.2 the activations reach an RMS of
{glue:text}`depth_rms_up:.3g` after 48 layers; with gain 0.8 they fall to
{glue:text}`depth_rms_down:.2g`. Even the "correct" gain of 1 drifts, to {glue:text}`depth_rms_one:.2f`,
because a random matrix preserves the scale only on average. The dashed line is the same gain-1.2 stack
with an RMS normalisation after every layer: the scale is reset to 1 at each step, whatever the weights
do.

Real networks are not random stacks, but the mechanism is the same, and it is worse during training,
when the weights change at every step. Ioffe and Szegedy {cite}`ioffe2015batchnorm` gave the phenomenon
a name: **internal covariate shift**. When the first layer's weights are updated, the distribution of
the second layer's inputs moves, say from values in $[0, 1]$ to values in $[0.5, 1.5]$, and the second
layer's weights, fitted to the old distribution, are suddenly fitted to the wrong one. Every layer
chases a moving target. The argument predicts three symptoms that practitioners knew well: training is
slow, gradients explode or vanish, and the learning rate must be tuned carefully (ideally per layer).
The proposed cure was to normalise: force each layer's inputs to have mean 0 and variance 1, so that
their distribution moves less when the weights below change.

```{admonition} What the usual explanation gets wrong: internal covariate shift is a hypothesis, not a fact
:class: warning
The covariate-shift story is the way normalisation is usually motivated, and it is often presented as
settled. It is not. Santurkar et al. {cite}`santurkar2018batchnorm` measured it directly: they injected
random, time-varying noise *after* BatchNorm layers, creating far more distribution shift than an
unnormalised network has, and the network still trained about as fast as with plain BatchNorm; in other
networks BatchNorm did not reduce their measure of internal covariate shift at all. What they found
instead is that normalisation makes the loss surface smoother: the loss and its gradient change more
predictably along a step (smaller Lipschitz constants), so larger learning rates are safe. Keep the
covariate-shift picture as an intuition for *why scale must be controlled*; the precise reason
normalisation helps optimisation is still studied. This chapter proves a concrete version of the
smoothness story for RMSNorm in the Mathematics section: its Jacobian has norm $1/\mathrm{RMS}(x)$ and it
discards the radial direction of the gradient.
```

Normalisation is therefore not a detail but one of the load-bearing parts of a deep network. What is
normalised, over which axis, with which statistics, turns out to matter a great deal, and the history
of that question is the path to MiniMind's choice.
''')

# =====================================================================================  2 History
md(r'''
## History

### Batch Normalization (2015)

Ioffe and Szegedy's BatchNorm {cite}`ioffe2015batchnorm` normalises each feature over the examples of
a mini-batch. For a batch of $B$ examples and a feature $j$, it computes the batch mean and variance
of that feature and standardises it, then applies a learnable scale $\gamma_j$ and shift $\beta_j$ so
that the network can undo the normalisation where that helps:

$$
\mu_j = \frac1B\sum_{b=1}^B x_{bj},\qquad
\sigma_j^2 = \frac1B\sum_{b=1}^B (x_{bj}-\mu_j)^2,\qquad
y_{bj} = \gamma_j\,\frac{x_{bj}-\mu_j}{\sqrt{\sigma_j^2+\varepsilon}} + \beta_j .
$$

It transformed the training of convolutional networks: higher learning rates, less sensitivity to
initialisation, faster convergence. But the statistics come from the *batch*, and that is its weakness.
The output for one example depends on which other examples happen to share its batch. With a batch of
one, $x_{bj}=\mu_j$ and the normalised value is $0/\sqrt{\varepsilon} = 0$ for every feature: the
input is erased. With a handful of examples the statistics are noisy. The next cell runs this: one fixed
example $x_0$ with 64 features is normalised by BatchNorm (in training mode) inside 300 random batches
of each size, its batch-mates drawn from the same population, and we measure how much its normalised
value jumps around from batch to batch.
''')

code('''
features = 64
gen = torch.Generator().manual_seed(0)
feat_mean = torch.randn(features, generator=gen)            # each feature has its own mean
feat_std = 0.5 + 1.5 * torch.rand(features, generator=gen)  # ... and its own spread
x0 = feat_mean + feat_std * torch.randn(features, generator=gen)   # the example we follow

# A batch of one: PyTorch refuses, and the formula itself returns 0 for every feature.
try:
    F.batch_norm(x0[None], None, None, training=True)
except ValueError as err:
    print("batch of 1 -> ValueError:", err)
by_hand = (x0 - x0[None].mean(0)) / torch.sqrt(x0[None].var(0, unbiased=False) + 1e-5)
print("batch of 1 by hand: max |output| =", float(by_hand.abs().max()))
assert torch.all(by_hand == 0)

def batchnorm_spread(batch_size, trials=300):
    """Std, over random batches, of x0's BatchNorm output (averaged over features)."""
    noise = torch.randn(trials, batch_size - 1, features, generator=gen)
    mates = feat_mean + feat_std * noise
    batches = torch.cat([x0.expand(trials, 1, features), mates], dim=1)  # (trials, B, feat)
    # one F.batch_norm call for all trials: the trials side by side as extra "features"
    flat = batches.permute(1, 0, 2).reshape(batch_size, trials * features)
    out = F.batch_norm(flat, None, None, training=True)
    out = out.reshape(batch_size, trials, features)
    return float(out[0].std(0).mean())   # row 0 is x0, in each of the `trials` batches

batch_sizes = [2, 4, 8, 16, 64, 256]
spread = {b: batchnorm_spread(b) for b in batch_sizes}
for b, s in spread.items():
    print(f"batch {b:3d}: x0's normalised features vary by {s:.3f} (std) between batches")
assert spread[4] > 3 * spread[64] > 0   # small batches: much noisier statistics
glue("bn_spread_4", spread[4], display=False)
glue("bn_spread_64", spread[64], display=False)
glue("bn_spread_256", spread[256], display=False)
''')

code('''
# LayerNorm, by contrast, looks at one example at a time: batch-mates change nothing.
alone = F.layer_norm(x0[None], (features,))[0]
batch = torch.cat([x0[None], torch.randn(63, features, generator=gen)])
in_a_batch = F.layer_norm(batch, (features,))[0]
assert torch.equal(alone, in_a_batch)
print("LayerNorm output of x0, alone vs in a batch of 64: identical")
''')

code('''
fig, ax = subplots(1, 1, width=6.5, height=3.8)
bs = torch.tensor(batch_sizes, dtype=torch.float64)
ax.loglog(bs, [spread[b] for b in batch_sizes], "o-", color=COLORS["batchnorm"],
          label="BatchNorm (training mode)")
ax.loglog(bs, spread[64] * (64 / bs).sqrt(), ":", color="#555555",
          label=r"$\\propto 1/\\sqrt{B}$ reference")
ax.axhline(1e-3, color=COLORS["layernorm"], linestyle="--",
           label="LayerNorm: exactly 0 (drawn at 1e-3)")
ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
ax.minorticks_off()
label(ax, "One example, normalised inside random batches", "batch size B (examples)",
      "batch-to-batch std of its output", legend=True)
plt.show()
''', "hide-input")

md(r'''
The figure shows the price of batch statistics. The same example's normalised features vary by a
standard deviation of {glue:text}`bn_spread_4:.2f` from one batch of four to the next (the features
themselves have standard deviation 1 after normalisation, so this is noise of the same order as the
signal), {glue:text}`bn_spread_64:.2f` in batches of 64 and {glue:text}`bn_spread_256:.3f` in batches of
256, falling like $1/\sqrt{B}$. In vision, batches of 64 or 256 images are cheap. In language
modelling they are not: a sequence of 2,048 tokens is a large example, and the number of sequences per
device is often 2 to 8. Worse, a sequence batch mixes positions and padding: pooling statistics
over the batch blurs what is specific to each position, and variable-length sequences make those
statistics depend on padding. BatchNorm also behaves differently in training (batch statistics) and
inference (running averages collected during training), and the two can disagree.

### Layer Normalization (2016)

Ba, Kiros and Hinton {cite}`ba2016layernorm` turned the axis around: normalise each example over its
own features. For a vector $x\in\mathbb R^D$ (one token's hidden state),

$$
\mu = \frac1D\sum_{i=1}^D x_i,\qquad \sigma^2=\frac1D\sum_{i=1}^D (x_i-\mu)^2,
$$

$$
\hat x_i = \frac{x_i-\mu}{\sqrt{\sigma^2+\varepsilon}},\qquad y_i=\gamma_i\hat x_i+\beta_i ,
$$

with $\varepsilon$ typically $10^{-5}$. The statistics of a 512-dimensional hidden state are computed
from 512 numbers, so they are reliable even for a batch of one; training and inference do the same
computation; and, as the cell above checked, the result for one token does not depend on any other
token. LayerNorm became the normalisation of the Transformer {cite}`vaswani2017attention`, of BERT and of
the GPT family.

### Where the norm sits: post-LN and pre-LN

The original Transformer placed LayerNorm *after* each residual addition:
$h \leftarrow \mathrm{LN}(h + \mathrm{Sublayer}(h))$. This is **post-LN**. GPT-2
{cite}`radford2019gpt2` moved it to the *input* of each sublayer and added a final norm after the last
block: $h\leftarrow h+\mathrm{Sublayer}(\mathrm{LN}(h))$. This is **pre-LN**. Xiong et al.
{cite}`xiong2020prelayernorm` analysed the difference: in post-LN the gradients of the parameters near
the output are large at initialisation, which is why post-LN Transformers need a learning-rate warm-up;
pre-LN keeps an unnormalised identity path from the loss to every layer, trains without warm-up and
became the standard for large language models.

```{admonition} What the usual explanation gets wrong: "the original Transformer used pre-LN or post-LN"
:class: warning
It is sometimes said that the original Transformer put LayerNorm "before and after" its sublayers. It
used **post-LN** only {cite}`vaswani2017attention`; pre-LN came later (GPT-2, analysed by Xiong et al.).
MiniMind, like LLaMA, is pre-norm, as its source shows below.
```

Here is MiniMind's block, read from the installed package:
''')

code('''
print(inspect.getsource(MiniMindBlock.forward))
''')

md(r'''
Two norms per block, `input_layernorm` before attention and `post_attention_layernorm` before the
feed-forward layer (the name says "post attention", but it normalises the *input* of the MLP), plus a
final `model.norm` after the last block. The residual stream `h` itself is never normalised inside the
stack. To see what that means, the next cell builds the post-LN variant from the very same modules
(only `forward` changes) and compares the two on an untrained 12-layer MiniMind: the RMS of the
residual stream entering each block, and the gradient norm each block's parameters receive from one
language-modelling loss.
''')

code('''
class PostLNBlock(MiniMindBlock):
    """The original Transformer's order: normalise after each residual addition."""
    def forward(self, hidden_states, position_embeddings, attn_mask=None, cache=None):
        attn = self.self_attn(hidden_states, position_embeddings, attn_mask, cache)
        h = self.input_layernorm(hidden_states + attn)
        return self.post_attention_layernorm(h + self.mlp(h))

def block_profile(post_ln, layers=12, seed=0):
    torch.manual_seed(seed)
    cfg = MiniMindConfig(hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = MiniMindForCausalLM(cfg)
    if post_ln:
        for block in model.model.layers:
            block.__class__ = PostLNBlock          # same weights, post-LN order
    stream_rms = []
    def record(module, args):
        stream_rms.append(float(args[0].detach().pow(2).mean().sqrt()))
    hooks = [b.register_forward_pre_hook(record) for b in model.model.layers]
    ids = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()
    for hk in hooks:
        hk.remove()
    grads = [float(torch.cat([p.grad.flatten() for p in b.parameters()]).norm())
             for b in model.model.layers]
    return stream_rms, grads

pre_rms, pre_grad = block_profile(post_ln=False)
post_rms, post_grad = block_profile(post_ln=True)
assert all(abs(r - 1) < 1e-3 for r in post_rms[1:])     # post-LN: every block sees RMS 1
assert pre_rms[-1] > 5 * pre_rms[0]                     # pre-LN: the stream grows with depth
glue("pre_rms_first", pre_rms[0], display=False)
glue("pre_rms_last", pre_rms[-1], display=False)
glue("pre_grad_ratio", pre_grad[0] / pre_grad[-1], display=False)
glue("post_grad_ratio", post_grad[0] / post_grad[-1], display=False)
''')

code('''
fig, axes = subplots(2, 1, width=6.5, height=6.6)
ax1, ax2 = axes[0, 0], axes[1, 0]
layers_idx = range(len(pre_rms))
ax1.plot(layers_idx, pre_rms, "o-", color=COLORS["pre-ln"], label="pre-LN (MiniMind)")
ax1.plot(layers_idx, post_rms, "s-", color=COLORS["post-ln"], label="post-LN")
label(ax1, "Residual stream entering each block", "block index",
      "RMS of hidden state", legend=True)
ax2.semilogy(layers_idx, pre_grad, "o-", color=COLORS["pre-ln"], label="pre-LN (MiniMind)")
ax2.semilogy(layers_idx, post_grad, "s-", color=COLORS["post-ln"], label="post-LN")
label(ax2, "Gradient reaching each block at initialisation", "block index",
      "norm of dL/d(block parameters)", legend=True)
plt.show()
''', "hide-input")

md(r'''
The left panel shows the structural difference. In post-LN every block receives a stream of RMS exactly
1, because the previous block ended with a norm. In pre-LN the stream starts at the scale of MiniMind's
token embeddings ({glue:text}`pre_rms_first:.3f`: the embedding is tied to the output head and
initialised small) and grows as each block adds its output, to {glue:text}`pre_rms_last:.2f` at the
last block; only the *inputs of the sublayers* are normalised. The right panel shows the gradient each
block's parameters receive. In pre-LN the first block gets {glue:text}`pre_grad_ratio:.1f` times the
gradient of the last; in post-LN the ratio is {glue:text}`post_grad_ratio:.1f`. The Mathematics section
explains the pre-LN pattern: a norm's Jacobian has size $1/\mathrm{RMS}$ of its input, so paths that
pass through norms where the stream is still small are amplified. At this toy scale neither variant is
in trouble; the post-LN instability that Xiong et al. analyse (large gradients near the output,
requiring warm-up) grows with depth and width, and is the reason the field settled on pre-LN.

### RMSNorm (2019)

Zhang and Sennrich {cite}`zhang2019rmsnorm` asked whether LayerNorm needs both of its operations. It
*re-centres* (subtracts $\mu$) and *re-scales* (divides by $\sigma$). Their hypothesis: the re-scaling is
what makes normalisation work, because it gives the layer invariance to the scale of its inputs and
weights; the re-centring is dispensable. Drop it, and divide by the root mean square instead of the
standard deviation:

$$
\mathrm{RMS}(x)=\sqrt{\frac1D\sum_{i=1}^D x_i^2+\varepsilon},\qquad y_i=\gamma_i\,\frac{x_i}{\mathrm{RMS}(x)} .
$$

There is no mean, no shift $\beta$, and one statistic instead of two. In their experiments on machine
translation, language modelling, image–caption retrieval and question answering, RMSNorm matched
LayerNorm's quality and reduced the running time by 7% to 64% depending on the model and framework
{cite}`zhang2019rmsnorm`. They also proposed **pRMSNorm**, which estimates the RMS from only the first
$p\%$ of the components (they suggest $p=6.25\%$); we return to it in In practice.

RMSNorm spread quickly. T5 {cite}`raffel2020t5` used a layer norm that only rescales and has no bias,
which is RMSNorm in all but name; Gopher {cite}`rae2021gopher` used RMSNorm; LLaMA
{cite}`touvron2023llama` adopted "pre-normalization using RMSNorm", and its descendants (Mistral, Qwen,
DeepSeek, and MiniMind) inherited it.

```{admonition} What the usual explanation gets wrong: the ablation numbers and the PaLM example
:class: warning
A widely read explanation of RMSNorm quotes an "ablation" with BLEU scores 27.2 (full LayerNorm), 27.1
(re-scaling only) and 20.5 (re-centring only). No such table exists in Zhang and Sennrich's paper: they
compare a baseline without normalisation, LayerNorm, L2-Norm, RMSNorm and pRMSNorm; there is no
"re-centring only" variant. Treat those numbers as invented. The same explanation lists PaLM among the
models that "validated" RMSNorm; the PaLM paper {cite}`chowdhery2022palm` does not name RMSNorm (it says
its layer norms have no biases). T5, Gopher and LLaMA are the documented cases.
```
''')

# =====================================================================================  3 Core idea
md(r'''
## Core idea

Start with numbers. Take the vector $x=(1,2,3,4)$. Its mean is $\mu=2.5$, its variance
$\sigma^2=\frac14(2.25+0.25+0.25+2.25)=1.25$, and its mean square is
$\frac14(1+4+9+16)=7.5$. Notice that $7.5 = 1.25 + 2.5^2$. This is no accident: expanding the square
in the definition of the variance gives

$$
\begin{aligned}
\sigma^2&=\frac1D\sum_i (x_i-\mu)^2\\
&=\frac1D\sum_i x_i^2-2\mu\cdot\frac1D\sum_i x_i+\mu^2\\
&=\frac1D\sum_i x_i^2-\mu^2,\\
\text{so}\quad \mathrm{RMS}^2&=\sigma^2+\mu^2
\end{aligned}
$$

(with $\varepsilon=0$). The mean square is the variance plus the squared mean. When the mean is small
compared with the spread, $\mathrm{RMS}\approx\sigma$, dividing by the RMS is nearly the same as dividing
by the standard deviation, and RMSNorm nearly equals LayerNorm without its shift. When the mean is
large, the two differ: LayerNorm removes the mean and rescales what is left; RMSNorm keeps the mean in
the vector and rescales everything together.

What RMSNorm guarantees is that the output has **unit root mean square** (exactly so when
$\varepsilon=0$): $\frac1D\sum_i\hat x_i^2=1$. Equivalently $\lVert\hat x\rVert_2=\sqrt D$: every
normalised hidden state lies on the sphere of radius $\sqrt D$ (about 22.6 for MiniMind's 512
dimensions). An input at scale 0.1 and one at scale 100 that point in the same direction land on the
same point of that sphere. The gain $\gamma$ then stretches each axis, so the layer can choose a
different scale per feature; what it has lost is only the freedom of the *input* to change the overall
scale. It does **not** fix the variance at 1: the variance of $\hat x$ is
$\sigma^2/(\sigma^2+\mu^2)$, which is 1 only when the mean is 0 (the Mathematics section proves it).

The widget below shows a 16-component vector with a chosen mean $\mu$ and spread $\sigma$ (grey), its
LayerNorm (blue) and its RMSNorm (orange), both without gain. The static figure shows four settings:
a centred vector, where the two norms agree; a vector with a large mean, where LayerNorm removes it and
RMSNorm keeps it (and shrinks the spread to make room for it); a tiny vector, where both norms blow
it up to unit scale; and the same tiny vector with a large $\varepsilon$, where $\varepsilon$ dominates
the statistic and the normalisation no longer reaches unit scale.
''')

code('''
explorer_vectors = explore(
    nl.plot_norm_vector,
    sliders={"mu": (-4.0, 4.0, 0.1), "sigma": (0.01, 3.0, 0.01), "eps": ("log", -8, 0)},
    static=[dict(mu=0.0, sigma=1.0, eps=1e-5), dict(mu=3.0, sigma=1.0, eps=1e-5),
            dict(mu=0.0, sigma=0.01, eps=1e-5), dict(mu=0.0, sigma=0.01, eps=1e-3)],
    title="A vector before and after LayerNorm and RMSNorm", ncols=2, figsize=(8, 6.4))
''')

md(r'''
Why would dropping the mean be harmless? The usual argument has three parts: activation functions such
as ReLU, GELU and SiLU are not zero-centred anyway, so nothing downstream needs zero-mean inputs;
nonlinearities respond to the scale of their inputs more than to a shift; and a bias in the next layer
can absorb a mean shift.

```{admonition} What the usual explanation gets wrong: "biases absorb the mean"
:class: warning
The third argument relies on biases, and MiniMind has none: its attention projections and feed-forward
layers are all `bias=False`, like LLaMA's. A better argument uses what RMSNorm does keep. The normalised
vector still contains its mean, as a component along the all-ones direction $\mathbf 1/\sqrt D$. The next
layer is linear, $W(\gamma\odot\hat x)$, and a linear layer can use that direction or ignore it as it
learns: it sees the mean as one more feature. What the network cannot tolerate is an uncontrolled
*scale*, and that RMSNorm removes. Whether the mean is in fact small inside a trained language model is
an empirical question; In practice measures it in MiniMind.
```
''')

# =====================================================================================  4 Mathematics
md(r'''
## Mathematics

This section derives the forward and backward passes of LayerNorm and RMSNorm and the properties
used above. Every derivation is done twice: symbolically with sympy, on a vector of $D=4$ symbolic
components (large enough to show every cross term, small enough to print), and numerically, by
comparing the symbolic result with PyTorch's autograd in float64 on random inputs. The checks use
`minimind_ref.lab.symbolic`: `check_expr`, `check_gradient` and `check_jacobian` turn a sympy result into
a float64 function and raise `SymbolicMismatch` with the largest error if it disagrees with PyTorch, so a
wrong derivation fails the notebook and the book build. (Readers who want the practical story can skip
to Implementation.)

Notation: $x\in\mathbb R^D$ is one token's hidden state, $\gamma$ the gain, $u=\partial L/\partial y$ the
gradient arriving from above (for any loss $L$), and $\varepsilon>0$.

### LayerNorm: forward and Jacobian

The forward pass is $\hat x=(x-\mu\mathbf 1)/s$ with $s=\sqrt{\sigma^2+\varepsilon}$. In sympy, with
the symbols $x_0,\dots,x_3$ (the cell shows the mean it builds; printing a whole $\hat x_i$ would fill
the page):
''')

code('''
D = 4
x = vector("x", D, real=True)           # x0 .. x3
gam = vector("gamma", D, real=True)     # the gain
u = vector("u", D, real=True)           # dL/dy, the gradient arriving from above
eps = sp.Symbol("epsilon", positive=True)

mu = sum(x) / D
var = sum((xi - mu) ** 2 for xi in x) / D
s = sp.sqrt(var + eps)
xhat_ln = (x - mu * sp.ones(D, 1)) / s
sp.Eq(sp.Symbol(r"\\mu"), mu, evaluate=False)
''')

md(r'''
Each output depends on every input, through $\mu$ and $\sigma$. Differentiating by hand, with
$\partial\mu/\partial x_j = 1/D$ and $\partial\sigma^2/\partial x_j = 2(x_j-\mu)/D$, gives the
Jacobian in a compact matrix form:

$$
\frac{\partial\hat x}{\partial x}=\frac1s\Big(I-\frac1D\mathbf 1\mathbf 1^\top-\frac1D\hat x\hat x^\top\Big).
$$

The three terms read: the direct path, the path through the mean (which removes the all-ones
direction), and the path through the variance (which removes the direction of $\hat x$ itself). sympy
confirms that the compact form equals the full Jacobian entry by entry, and the compact form is then
checked against PyTorch's `F.layer_norm`:
''')

code('''
J_ln = xhat_ln.jacobian(x)
J_ln_compact = (sp.eye(D) - sp.ones(D, D) / D - xhat_ln * xhat_ln.T / D) / s
assert (J_ln - J_ln_compact).applyfunc(sp.simplify) == sp.zeros(D, D)   # exact, symbolic

err = check_jacobian(J_ln_compact, [x, eps], lambda xv, e: F.layer_norm(xv, (D,), eps=float(e)))
print(f"compact LayerNorm Jacobian vs autograd: max |difference| = {err:.1e}")
glue("err_ln_jac", err, display=False)
''')

md(r'''
With a gain and shift, $y=\gamma\odot\hat x+\beta$, the backward pass multiplies the transposed
Jacobian by $g=\gamma\odot u$. Because the Jacobian is symmetric, the result is a short vector formula
that every LayerNorm kernel implements:

$$
\frac{\partial L}{\partial x}=\frac1s\Big(g-\overline{g}\,\mathbf 1-\hat x\,\overline{g\odot\hat x}\Big),
\qquad g=\gamma\odot u,
$$

where the bar is the mean over the $D$ components. Checked against autograd through `F.layer_norm` with
random gain, shift and upstream gradient:
''')

code('''
g_vec = gam.multiply_elementwise(u)
ln_grad = (g_vec - (sum(g_vec) / D) * sp.ones(D, 1)
           - xhat_ln * (sum(g_vec.multiply_elementwise(xhat_ln)) / D)) / s
beta = vector("beta", D, real=True)

def layernorm_loss(xv, gv, bv, uv, e):
    return (uv * F.layer_norm(xv, (D,), weight=gv, bias=bv, eps=float(e))).sum()

err = check_gradient(ln_grad, [x, gam, beta, u, eps], layernorm_loss, wrt=0)
print(f"LayerNorm dL/dx (vector form) vs autograd: max |difference| = {err:.1e}")
''')

md(r'''
### RMSNorm: forward, and three identities

RMSNorm's forward pass is $r=\sqrt{\frac1D\sum_i x_i^2+\varepsilon}$, $\hat x=x/r$, $y=\gamma\odot\hat x$.
Three identities describe what it does to the statistics of a vector. With $m=\frac1D\sum_ix_i^2$ the
mean square:

1. $m=\sigma^2+\mu^2$ (the expansion of the Core idea);
2. with $\varepsilon=0$, the variance of the normalised vector is
   $\operatorname{Var}(\hat x)=\frac{\sigma^2}{\sigma^2+\mu^2}$, not 1;
3. with $\varepsilon>0$, the RMS of the normalised vector is
   $\mathrm{RMS}(\hat x)=\sqrt{\frac{m}{m+\varepsilon}}$, slightly less than 1.
''')

code('''
ms = sum(xi ** 2 for xi in x) / D
r = sp.sqrt(ms + eps)
xhat = x / r

# 1. RMS^2 = sigma^2 + mu^2
assert sp.expand(ms - (var + mu ** 2)) == 0

# 2. Var(x/RMS) = sigma^2 / (sigma^2 + mu^2) when eps = 0
xhat0 = x / sp.sqrt(ms)
var_xhat0 = sum(xi ** 2 for xi in xhat0) / D - (sum(xhat0) / D) ** 2
assert sp.simplify(var_xhat0 - var / (var + mu ** 2)) == 0

# 3. RMS(xhat)^2 = m / (m + eps)
assert sp.simplify(sum(xi ** 2 for xi in xhat) / D - ms / (ms + eps)) == 0
print("identities 1-3 hold symbolically for D = 4; identity 2 in full:")
sp.Eq(var_xhat0, sp.factor(var / (var + mu ** 2)))
''')

md(r'''
The displayed equation is identity 2 as sympy sees it for $D=4$ (left, the variance of $\hat x$ from its
definition; right, $\sigma^2/(\sigma^2+\mu^2)$ expanded). A numeric experiment at a realistic size:
a 4,096-component vector drawn with mean 1.5 and standard deviation 2 should have, after RMSNorm, a
variance of $4/(4+2.25)=0.64$.
''')

code('''
g = torch.Generator().manual_seed(0)
xs = 1.5 + 2.0 * torch.randn(4096, generator=g, dtype=torch.float64)
mu_s, var_s = xs.mean(), xs.var(unbiased=False)
measured = float(nl.rms_norm(xs, eps=0.0).var(unbiased=False))
predicted = float(var_s / (var_s + mu_s ** 2))
print(f"Var(RMSNorm(x)) measured {measured:.4f}, predicted from the sample {predicted:.4f}, "
      f"from the population 4/(4+2.25) = {4 / 6.25:.4f}")
assert abs(measured - predicted) < 1e-12

ms_small = torch.tensor([1e-7, 1e-5, 1e-3, 1.0], dtype=torch.float64)
constant = [torch.full((512,), math.sqrt(float(m)), dtype=torch.float64) for m in ms_small]
rms_out = torch.stack([nl.rms_norm(v).pow(2).mean().sqrt() for v in constant])
torch.testing.assert_close(rms_out, (ms_small / (ms_small + 1e-5)).sqrt())
glue("var_measured", measured, display=False)
glue("rms_out_at_eps", float(rms_out[1]), display=False)
''')

md(r'''
The measured variance is {glue:text}`var_measured:.3f`, equal to the prediction from the sample's own
mean and spread to machine precision. The last lines check identity 3 on vectors whose mean square is
$10^{-7}$, $10^{-5}$, $10^{-3}$ and 1 with MiniMind's $\varepsilon=10^{-5}$: when the mean square equals
$\varepsilon$, the output's RMS is only {glue:text}`rms_out_at_eps:.3f`. $\varepsilon$ is harmless when
$m\gg\varepsilon$ and takes over when $m\lesssim\varepsilon$ (the condition is on the *mean* square, not
the sum of squares).

### RMSNorm backward with a learnable gain

Now the gradient. Write $y_i=\gamma_ix_i/r$ and $L$ any loss with $u_i=\partial L/\partial y_i$. The gain's
gradient is immediate: $\partial L/\partial\gamma_i=u_i\hat x_i$ (summed over all tokens in practice). For
$x$, each $x_i$ reaches the loss along two paths: directly through $y_i$, and through $r$, which every
$y_j$ shares. With $\partial r/\partial x_i=x_i/(Dr)$,

$$
\frac{\partial L}{\partial x_i}=\frac{\gamma_iu_i}{r}+\frac{\partial L}{\partial r}\frac{x_i}{Dr},\qquad
\frac{\partial L}{\partial r}=-\frac1{r^2}\sum_j\gamma_ju_jx_j ,
$$

so

$$
\boxed{\;\frac{\partial L}{\partial x_i}=\frac1r\Big[\gamma_iu_i-\frac{x_i}{Dr^2}\sum_j\gamma_ju_jx_j\Big]\;}
$$

sympy differentiates the loss $L=\sum_iu_iy_i$ directly and agrees:
''')

code('''
y = gam.multiply_elementwise(xhat)
L = sum(u[i] * y[i] for i in range(D))
grad_sympy = sp.Matrix([sp.diff(L, xi) for xi in x])
dot = sum(gam[j] * u[j] * x[j] for j in range(D))
grad_correct = sp.Matrix([(gam[i] * u[i] - x[i] / (D * r ** 2) * dot) / r for i in range(D)])
grad_textbook = sp.Matrix([gam[i] / r * (u[i] - x[i] / (D * r ** 2) * dot) for i in range(D)])

assert (grad_sympy - grad_correct).applyfunc(sp.simplify) == sp.zeros(D, 1)
assert (grad_sympy - grad_textbook).applyfunc(sp.simplify) != sp.zeros(D, 1)
# the textbook formula is right only when every gamma is 1:
ones = {gi: 1 for gi in gam}
assert (grad_sympy - grad_textbook).subs(ones).applyfunc(sp.simplify) == sp.zeros(D, 1)
grad_correct[0]
''')

md(r'''
The numeric check runs against `minimind_ref.norm.RMSNorm` itself, with a random gain copied into its
`weight`:
''')

code('''
def rmsnorm_loss(xv, gv, uv, e):
    norm = RMSNorm(D, eps=float(e)).double()
    # run the module with gv as its weight (so autograd also sees the gain)
    return (uv * torch.func.functional_call(norm, {"weight": gv}, (xv,))).sum()

err_correct = check_gradient(grad_correct, [x, gam, u, eps], rmsnorm_loss, wrt=0)
print(f"boxed formula vs autograd (minimind_ref RMSNorm): max |diff| = {err_correct:.1e}")
err_dgamma = check_gradient(u.multiply_elementwise(xhat), [x, gam, u, eps], rmsnorm_loss, wrt=1)
print(f"dL/dgamma = u * xhat vs autograd: max |difference| = {err_dgamma:.1e}")
try:
    check_gradient(grad_textbook, [x, gam, u, eps], rmsnorm_loss, wrt=0)
except SymbolicMismatch as mismatch:
    err_textbook = mismatch.max_error
    print("textbook formula:", mismatch)
else:
    raise AssertionError("the textbook formula should have failed the check")
glue("err_correct", err_correct, display=False)
glue("err_textbook", err_textbook, display=False)
''')

md(r'''
```{admonition} What the usual explanation gets wrong: the gain factored out of both terms
:class: warning
A widely copied derivation ends with

$$
\frac{\partial L}{\partial x_i}\overset{?}{=}\frac{\gamma_i}{r}\Big[u_i-\frac{x_i}{Dr^2}\sum_j\gamma_ju_jx_j\Big],
$$

pulling $\gamma_i$ out of *both* terms. The second term comes from the shared denominator $r$ and has
nothing to do with coordinate $i$'s gain, so the factor $\gamma_i$ must not multiply it. The two formulas
agree only when every $\gamma_j=1$, which is exactly the state at initialisation, so a test with a freshly
constructed module cannot tell them apart. With a random gain, the textbook formula is off by up to
{glue:text}`err_textbook:.2f` on these inputs, while the boxed formula agrees with autograd to
{glue:text}`err_correct:.0e`.
```

### The Jacobian: a scaled projection

Set $\gamma=1$ to isolate the normalisation itself. The derivative of $\hat x_i=x_i/r$ is
$\delta_{ij}/r-x_ix_j/(Dr^3)$, that is

$$
J=\frac{\partial\hat x}{\partial x}=\frac1r\Big(I-\frac{xx^\top}{Dr^2}\Big).
$$

This holds exactly, with $\varepsilon$ inside $r$. It has a clean geometric reading. Apply it to $x$ itself:
$Jx=\frac1r\big(x-x\frac{m}{m+\varepsilon}\big)=\frac{\varepsilon}{r^3}x$, which vanishes as
$\varepsilon\to0$. Apply it to any vector $v$ orthogonal to $x$: $Jv=v/r$. So $J$ is $1/r$ times the
projector that removes the radial direction $x$, up to a term of order $\varepsilon$. Its eigenvalues are
$1/r$ (with multiplicity $D-1$) and $\varepsilon/r^3$ (along $x$), and its spectral norm is $1/r$.
''')

code('''
J_rms = xhat.jacobian(x)
J_rms_claim = (sp.eye(D) - x * x.T / (D * r ** 2)) / r
assert (J_rms - J_rms_claim).applyfunc(sp.simplify) == sp.zeros(D, D)
assert (J_rms * x - eps / r ** 3 * x).applyfunc(sp.simplify) == sp.zeros(D, 1)   # J x = eps x / r^3

err = check_jacobian(J_rms_claim, [x, eps], lambda xv, e: F.rms_norm(xv, (D,), eps=float(e)))
print(f"RMSNorm Jacobian (1/r)(I - x x^T/(D r^2)) vs autograd: max |difference| = {err:.1e}")

# eigenvalues at MiniMind's size
xv = torch.randn(512, dtype=torch.float64)
Jv = torch.autograd.functional.jacobian(lambda v: nl.rms_norm(v, 1e-5), xv)
evals = torch.linalg.eigvalsh(Jv)
rv = float((xv.pow(2).mean() + 1e-5).sqrt())
torch.testing.assert_close(evals[-1], torch.tensor(1 / rv, dtype=torch.float64))
torch.testing.assert_close(evals[0], torch.tensor(1e-5 / rv ** 3, dtype=torch.float64))
print(f"D = 512: largest eigenvalue {evals[-1]:.4f} = 1/r, smallest {evals[0]:.2e} = eps/r^3")
''')

md(r'''
Two consequences follow, and they are the precise form of the hand-waving one often reads ("the
gradient couples the dimensions, which prevents some of them from growing too large").

**The radial component of the gradient is removed.** Because $J$ is symmetric,
$x\cdot\nabla_xL=x^\top J^\top u=(Jx)^\top u=\frac{\varepsilon}{r^3}\,x\cdot u$. The gradient with respect to
the input has (almost) no component along the input: a gradient step cannot change the input's length to
first order, only its direction. The next cell measures $x\cdot\nabla_xL$ through autograd for shrinking
$\varepsilon$ and compares it with the formula.
''')

code('''
g = torch.Generator().manual_seed(1)
xv = torch.randn(512, generator=g, dtype=torch.float64)
uv = torch.randn(512, generator=g, dtype=torch.float64)
rows = []
for e in (1e-1, 1e-3, 1e-5, 1e-8, 0.0):
    xr = xv.clone().requires_grad_(True)
    (uv * nl.rms_norm(xr, e)).sum().backward()
    measured = float(xv @ xr.grad)
    rv = float((xv.pow(2).mean() + e).sqrt())
    predicted = e / rv ** 3 * float(xv @ uv)
    rows.append((e, measured, predicted))
    print(f"eps = {e:7.0e}:  x . grad = {measured: .3e}   predicted eps (x.u)/r^3 = {predicted: .3e}")
    assert abs(measured - predicted) < 1e-9 * max(1.0, abs(predicted))
glue("radial_eps5", abs(rows[2][1]), display=False)
glue("radial_eps0", abs(rows[-1][1]), display=False)
''')

md(r'''
At MiniMind's $\varepsilon=10^{-5}$ the radial component is {glue:text}`radial_eps5:.1e` (for a
gradient whose entries are of order 1), and with $\varepsilon=0$ it is {glue:text}`radial_eps0:.0e`,
rounding error.

**Scale invariance and the $1/\text{scale}$ gradient.** With $\varepsilon=0$,
$\mathrm{RMSNorm}(\alpha x)=\mathrm{RMSNorm}(x)$ for every $\alpha>0$: the output forgets the input's scale.
Zhang and Sennrich stress a stronger form: if the input is $x=Wa$ for a weight matrix $W$, rescaling $W$
by $\alpha$ changes nothing either. The Jacobian, on the other hand, scales as $J(\alpha x)=J(x)/\alpha$.
A layer whose weights have grown large therefore receives proportionally *smaller* gradients, and one
whose weights are small receives larger ones: the normalisation adapts the effective learning rate to
the scale of the weights, which Zhang and Sennrich call *implicit learning-rate adaptation*. This is
also what the pre-LN gradient profile showed earlier: where the residual stream is small, the norms
that read it amplify the gradient.
''')

code('''
alpha = sp.Symbol("alpha", positive=True)
xhat_noeps = x / sp.sqrt(ms)
scaled = xhat_noeps.subs({xi: alpha * xi for xi in x}, simultaneous=True)
# RMSNorm(a x) = RMSNorm(x)
assert (scaled - xhat_noeps).applyfunc(sp.simplify) == sp.zeros(D, 1)
# J(a x) = J(x) / a
J0 = xhat_noeps.jacobian(x)
J0_scaled = J0.subs({xi: alpha * xi for xi in x}, simultaneous=True)
assert (J0_scaled - J0 / alpha).applyfunc(sp.simplify) == sp.zeros(D, D)

# numerically, through minimind_ref's module, for a weight matrix rescaled by alpha
g = torch.Generator().manual_seed(2)
W = torch.randn(512, 512, generator=g, dtype=torch.float64) / math.sqrt(512)
a_in = torch.randn(512, generator=g, dtype=torch.float64)
u_up = torch.randn(512, generator=g, dtype=torch.float64)
norm = RMSNorm(512, eps=0.0).double()
def grad_wrt_W(scale):
    Ws = (scale * W).requires_grad_(True)
    out = norm(Ws @ a_in)
    (u_up * out).sum().backward()
    return out.detach(), Ws.grad
out1, gW1 = grad_wrt_W(1.0)
out100, gW100 = grad_wrt_W(100.0)
torch.testing.assert_close(out100, out1)              # same output for W and 100 W
torch.testing.assert_close(gW100, gW1 / 100)          # gradient 100 times smaller
glue("grad_ratio_100", float(gW1.norm() / gW100.norm()), display=False)
print(f"||grad at W|| / ||grad at 100 W|| = {float(gW1.norm() / gW100.norm()):.2f}")
''')

md(r'''
Multiplying the weights by 100 leaves the output unchanged and divides their gradient by
{glue:text}`grad_ratio_100:.1f`. Under plain gradient descent a large weight matrix therefore moves slowly
and a small one quickly, a self-stabilising behaviour that the network gets for free from the norm
that follows it.
''')

# =====================================================================================  5 Implementation
md(r'''
## Implementation

This is MiniMind's RMSNorm as the book's package defines it, printed from the installed source (what
you read is what runs):
''')

code('''
print(inspect.getsource(RMSNorm))
''')

md(r'''
Read it against the formula $y=\gamma\odot x/\sqrt{\frac1D\sum_ix_i^2+\varepsilon}$:

- **`self.weight = nn.Parameter(torch.ones(dim))`** is the gain $\gamma$. Initialised to ones, the layer
  starts as pure normalisation and the network learns where to deviate from it; a random initialisation
  would rescale features arbitrarily before training had any reason to. There is no bias $\beta$.
- **`x.pow(2).mean(-1, keepdim=True)`** is the mean square over the last dimension, the hidden size.
  `keepdim=True` leaves a trailing dimension of size 1, shape `(batch, seq, 1)`, which broadcasts against
  `(batch, seq, hidden)` in the multiplication. (Without it, a later `unsqueeze(-1)` would do the same; a
  view costs nothing, so this is about clarity, not memory.)
- **`+ self.eps` inside `torch.rsqrt(...)`**: $\varepsilon$ is added to the mean square *inside* the root,
  as in the formula, so a zero vector gives $0\cdot\varepsilon^{-1/2}=0$ rather than a division by zero.
- **`torch.rsqrt`** computes $1/\sqrt{\cdot}$ in one operation. In eager PyTorch that is one kernel
  instead of two (`sqrt`, then a division). It is not "more numerically stable": PyTorch's `rsqrt` is
  about as accurate as `1/sqrt` (within an ulp or so), and the fast GPU hardware instruction behind
  it is an approximation. For a memory-bound operation the difference in arithmetic is irrelevant; the number of
  passes over memory is what counts (see Performance).
- **The cast before `_norm` and `.type_as(x)` after it**: the statistics are computed in at least
  float32 (a float16 or bfloat16 input is upcast; float64 stays float64), and the normalised tensor is
  cast back to the input's dtype *before* the gain is applied. The reasons (the square overflows in
  float16, and bfloat16 is coarse) are demonstrated below.
- **The shape check** in `forward` turns a mismatched hidden size into a clear error instead of a
  broadcasting surprise.

A from-scratch version written from the formula, the module, and PyTorch's own `torch.nn.RMSNorm`
(available since PyTorch 2.4) must agree:
''')

code('''
def rmsnorm_from_scratch(x, weight, eps):
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)    # (..., 1)
    return weight * (x / rms)

dim = 512
ours = RMSNorm(dim, eps=1e-5)
theirs = torch.nn.RMSNorm(dim, eps=1e-5)
with torch.no_grad():
    w = 1 + 0.1 * torch.randn(dim)
    ours.weight.copy_(w)
    theirs.weight.copy_(w)
xb = torch.randn(4, 64, dim)
torch.testing.assert_close(ours(xb), theirs(xb))
torch.testing.assert_close(ours(xb), rmsnorm_from_scratch(xb, w, 1e-5))
xd = xb.double()
torch.testing.assert_close(ours.double()(xd), F.rms_norm(xd, (dim,), w.double(), 1e-5))
print("minimind_ref RMSNorm == torch.nn.RMSNorm == F.rms_norm == from scratch")
''')

md(r'''
### Mixed precision: three pitfalls

Large models are trained with activations in bfloat16 or float16. Three things can go wrong in a norm,
and the module's float32 round trip exists because of them.

**1. The dtype of the result.** PyTorch promotes a float32 tensor times a bfloat16 tensor to float32.
The module casts the normalised tensor back to the input dtype, but then multiplies by `self.weight`;
if the module was left in float32 while its input is bfloat16, the output silently becomes float32, and
every following layer runs in float32.
''')

code('''
x_bf16 = torch.randn(2, 8, dim, dtype=torch.bfloat16)
norm_fp32 = RMSNorm(dim)
norm_bf16 = RMSNorm(dim).to(torch.bfloat16)
print("float32 module, bfloat16 input ->", norm_fp32(x_bf16).dtype)
print("bfloat16 module, bfloat16 input ->", norm_bf16(x_bf16).dtype)
with torch.autocast("cpu", dtype=torch.bfloat16):
    print("float32 module under autocast   ->", norm_fp32(x_bf16).dtype)
with warnings.catch_warnings():   # PyTorch warns: no fused kernel for mixed dtypes
    warnings.simplefilter("ignore")
    print("torch.nn.RMSNorm (float32), bfloat16 input ->", torch.nn.RMSNorm(dim)(x_bf16).dtype)
assert norm_fp32(x_bf16).dtype == torch.float32 and norm_bf16(x_bf16).dtype == torch.bfloat16
''')

md(r'''
Cast the model (`model.to(torch.bfloat16)`) so that the weight matches the activations, or keep the
weights in float32 deliberately (as mixed-precision training does for the master copy) and know that
the norm's output follows the weight. Elementwise multiplication is not on autocast's list of operations
to cast, so autocast does not change this. PyTorch's own `torch.nn.RMSNorm` makes the other choice and
returns the input's dtype (warning that it cannot use its fused kernel for mixed dtypes): two
implementations of "the same" layer can differ in the dtype they hand to the next layer.

**2. Float16 overflow of the square.** Float16 represents numbers up to {glue:text}`fp16_max:.0f`.
The statistic squares every component, and $256^2=65{,}536$ is already beyond that, so a single
component of magnitude 256 or more makes the mean square infinite, and the normalised output collapses to zero:
''')

code('''
fp16, bf16 = torch.finfo(torch.float16), torch.finfo(torch.bfloat16)
v = torch.tensor([255.0, 255.875, 256.0, 300.0], dtype=torch.float16)
print("float16 squares:", v.pow(2).tolist())
assert torch.isfinite(v[:2].pow(2)).all() and torch.isinf(v[2:].pow(2)).all()
print("bfloat16 300^2 =", torch.tensor(300.0, dtype=torch.bfloat16).pow(2).item())

g = torch.Generator().manual_seed(0)
x_big = torch.randn(dim, generator=g).mul(100).half()      # a few components beyond 256
print(f"largest |x_i| = {float(x_big.abs().max()):.0f}")
naive = nl.naive_rms_norm(x_big)                      # statistics in float16
safe = RMSNorm(dim).half()(x_big)                     # minimind_ref: statistics in float32
print("naive float16 RMSNorm, first values:", naive[:4].tolist())
print("minimind_ref RMSNorm,  first values:", safe[:4].tolist())
assert torch.all(naive == 0) and torch.isfinite(safe).all()
torch.testing.assert_close(safe.float(), nl.rms_norm(x_big.double()).float(), atol=2e-3, rtol=2e-3)
glue("fp16_max", float(fp16.max), display=False)
glue("bf16_max", float(bf16.max), display=False)
glue("fp16_eps", float(fp16.eps), display=False)
glue("bf16_eps", float(bf16.eps), display=False)
glue("fp32_eps", float(torch.finfo(torch.float32).eps), display=False)
''')

md(r'''
**3. Bfloat16's precision.** Bfloat16 keeps float32's exponent range (its largest value is
{glue:text}`bf16_max:.3g`, so nothing overflows) but only 8 significant bits: the gap between 1 and the
next number is {glue:text}`bf16_eps:.4f`, against {glue:text}`fp16_eps:.5f` for float16 and
{glue:text}`fp32_eps:.1e` for float32. Every bfloat16 result carries a relative rounding error of up
to about 0.4%. Summing many such squares in bfloat16 would add errors up; computing the statistic in
float32 removes that part, and what remains is the rounding of the output itself when it is cast back.

```{admonition} What the usual explanation gets wrong: "activations of 100 overflow the sum" and "cancellation in x − μ"
:class: warning
It is often said that activations around 100 overflow float16 because their squares (10,000) *sum* past
65,504. In PyTorch, reductions such as `mean` on float16 tensors accumulate in float32, so the sum is
not the problem; the elementwise square is, and only from $|x_i|\ge256$ on (a float16 maximum of
{glue:text}`fp16_max:.0f`). Bfloat16 does not overflow at all; its problem is precision. Similarly,
RMSNorm is said to be "more stable" because it avoids the catastrophic cancellation of $x-\mu$ in
LayerNorm. The unstable formula is the *one-pass* variance $\overline{x^2}-\mu^2$, which subtracts two
large, nearly equal numbers; the two-pass form $\overline{(x-\mu)^2}$ that LayerNorm kernels compute (or
Welford's update) does not cancel catastrophically. The next cell shows the difference in float32.
```
''')

code('''
g = torch.Generator().manual_seed(0)
xc = 1e4 + torch.randn(4096, generator=g, dtype=torch.float64)
true_var = float(xc.var(unbiased=False))
x32 = xc.float()
one_pass = float(x32.pow(2).mean() - x32.mean() ** 2)
two_pass = float((x32 - x32.mean()).pow(2).mean())
print(f"variance of 1e4 + N(0,1) in float32: exact {true_var:.4f}, "
      f"two-pass {two_pass:.4f}, one-pass {one_pass:.4f}")
assert abs(two_pass - true_var) < 1e-2 * true_var < abs(one_pass - true_var)
''')

md(r'''
The explorer below makes the dtype story visible. It normalises a fixed 512-component vector scaled so
that its largest component has a given magnitude, in float32, bfloat16 and float16, and plots the
largest error of the output against an exact float64 computation of the same (rounded) input. In the
top panel the statistics are computed in the input's own dtype; in the bottom panel as
`minimind_ref` computes them, in float32. Look for three things: float16's error jumps to the size
of the output itself at $|x_i|=256$ in the top panel and not in the bottom one; bfloat16's error, around $10^{-2}$,
is the same in both panels (it is the rounding of the output, which no statistic can fix); and float32
stays far below both everywhere. Open the chapter on Colab to change $\varepsilon$ (try $10^{-2}$ and
watch the small inputs) and the dimension.
''')

code('''
explorer_dtypes = explore(
    nl.plot_dtype_behaviour,
    sliders={"statistics": ["input dtype (naive)", "float32 (minimind_ref)"],
             "eps": ("log", -8, -2), "dim": (64, 2048, 64)},
    static=[dict(statistics="input dtype (naive)", eps=1e-5, dim=512),
            dict(statistics="float32 (minimind_ref)", eps=1e-5, dim=512)],
    title="RMSNorm output error by dtype as the input grows", ncols=1, figsize=(6.5, 7.4))
''')

# =====================================================================================  6 Performance
md(r'''
## Performance

RMSNorm is usually sold as faster than LayerNorm. The index of the documents this book follows says
it is "10–15% more efficient"; the document itself says "7–15%" in one place, "10–15%" in another,
and "25% in theory" from an operation count (LayerNorm about $4D$ operations per token, RMSNorm about
$3D$). Zhang and Sennrich report running-time reductions of **7% to 64%** across their models and
frameworks {cite}`zhang2019rmsnorm`. None of these numbers can be taken to a new machine, and the
operation count in particular predicts nothing, for a reason worth understanding before measuring.

### Count bytes, not operations

A normalisation layer does a handful of arithmetic operations per element: a square, an add into a
sum, a multiply by the reciprocal root, a multiply by the gain (LayerNorm adds a subtraction and an
add of the shift). A modern processor can do tens to thousands of such operations in the time it takes
to fetch one element from main memory. So the time of a norm is the time to **move its data**: read
$x$, write $y$. The *roofline* view {cite}`williams2009roofline` makes this precise: an operation
whose arithmetic intensity (operations per byte moved) is below the machine's ratio of compute to
bandwidth is memory-bound, and its best possible time is bytes moved divided by memory bandwidth. A
norm does about one operation per byte; GPUs and CPUs sustain tens to hundreds. Both norms are deep in
memory-bound territory, where a few operations more or less cost nothing.

What matters, then, is how many times the data crosses the memory bus, and that depends on the
implementation, not on the formula. Per element of a float32 tensor ($b=4$ bytes):

| implementation | passes over the data | bytes per element |
|---|---|---|
| fused LayerNorm (one kernel: statistics, then normalise) | read $x$, write $y$ | $2b=8$ |
| fused RMSNorm (one kernel) | read $x$, write $y$ | $2b=8$ |
| MiniMind's module, eager (`pow`, `mean`, `mul` by `rsqrt`, `mul` by gain) | 3 reads + writes, 1 read | $7b=28$ |

(The per-row statistics and the $D$ gains are negligible next to the $D$ elements of a row.) A fused
LayerNorm and a fused RMSNorm move the same bytes; the eager module moves 3.5 times as many, because
every PyTorch operation in eager mode is a separate kernel that writes its result to memory and the
next one reads it back. A fused LayerNorm computes $\sum x$ and $\sum x^2$ (or Welford's running mean
and variance) in one read, so the document's "three passes versus two" is also a property of a naive
implementation, not of the algorithm. The same reasoning applies to memory: LayerNorm keeps the mean
and the reciprocal standard deviation of each row for its backward pass, RMSNorm only the reciprocal
RMS: one float per token per norm, negligible next to the activations themselves.

### Measured

First the speed limit: the copy bandwidth of this machine's memory, measured by timing a large
tensor copy. Then the timings, with `minimind_ref.lab.timing.compare` (medians of
`torch.utils.benchmark` runs, as ratios to `F.layer_norm`) at the three (hidden size, sequence length)
pairs the document discusses: (512, 128), (1024, 512) and (2048, 2048). The cell never fails because
a machine is slow; it reports what it measured, on the device named in its output.
''')

code('''
PERF_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
bw = bandwidth(64 * 2**20, device=PERF_DEVICE, min_run_time=0.2)
print(f"copy bandwidth on {device_name()}: {bw / 1e9:.1f} GB/s")
glue("bw_gbs", bw / 1e9, display=False)
glue("perf_device", device_name(), display=False)

# torch.compile fuses the module into one kernel, but compiling takes tens of seconds
# on a CPU, beyond this chapter's budget: it runs on CUDA, or with MINIMIND_COMPILE=1.
COMPILE = PERF_DEVICE == "cuda" or os.environ.get("MINIMIND_COMPILE") == "1"
if not COMPILE:
    print("torch.compile skipped on CPU (set MINIMIND_COMPILE=1 to include it)")
''')

code('''
def layernorm_written_out(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return w * (x - mu) * torch.rsqrt(var + eps) + b

shapes = [(4, 128, 512), (4, 512, 1024), (1, 2048, 2048)]
timings = {}
for shape in shapes:
    hid = shape[-1]
    xt = torch.randn(shape, device=PERF_DEVICE)
    w, b = torch.ones(hid, device=PERF_DEVICE), torch.zeros(hid, device=PERF_DEVICE)
    module = RMSNorm(hid).to(PERF_DEVICE)
    fns = {
        "F.layer_norm": lambda xt=xt, w=w, b=b, hid=hid: F.layer_norm(xt, (hid,), w, b, 1e-5),
        "F.rms_norm": lambda xt=xt, w=w, hid=hid: F.rms_norm(xt, (hid,), w, 1e-5),
        "RMSNorm module (eager)": lambda xt=xt, m=module: m(xt),
        "LayerNorm written out (eager)": lambda xt=xt, w=w, b=b: layernorm_written_out(xt, w, b),
    }
    if COMPILE:
        compiled = torch.compile(module)
        fns["RMSNorm module (compiled)"] = lambda xt=xt, m=compiled: m(xt)
    timings[shape] = compare(fns, baseline="F.layer_norm", min_run_time=0.15,
                             label=f"(batch, seq, hidden) = {shape}")
''')

code('''
fig, ax = subplots(1, 1, width=7.5, height=4.4)
names = list(timings[shapes[0]].medians)
colors = [COLORS["layernorm"], COLORS["rmsnorm"], "#E69F00", "#56B4E9", "#CC79A7"]
width = 0.8 / len(names)
for k, name in enumerate(names):
    ratios = [timings[s].ratio(name) for s in shapes]
    ax.bar([i + k * width for i in range(len(shapes))], ratios, width, label=name, color=colors[k])
ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(shapes))],
              [f"hidden {s[2]}, seq {s[1]}\\n(batch {s[0]})" for s in shapes])
ax.axhline(1.0, color="#444444", linewidth=1)
ax.set_yscale("log")
label(ax, f"Normalisation time relative to F.layer_norm, on {PERF_DEVICE}", "tensor shape",
      "time / time of F.layer_norm (log)")
ax.legend(fontsize=8, loc="upper left")
plt.show()
''', "hide-input")

code('''
mid, big = shapes[1], shapes[2]
t_mid, t_big = timings[mid], timings[big]
rms_over_ln = [timings[s].ratio("F.rms_norm") for s in shapes]
module_over_ln = [timings[s].ratio("RMSNorm module (eager)") for s in shapes]
glue("ratio_rms_ln_min", min(rms_over_ln), display=False)
glue("ratio_rms_ln_max", max(rms_over_ln), display=False)
glue("ratio_rms_ln_mid", t_mid.ratio("F.rms_norm"), display=False)
glue("ratio_mod_ln_min", min(module_over_ln), display=False)
glue("ratio_mod_ln_max", max(module_over_ln), display=False)
glue("ratio_mod_rms_mid", t_mid.ratio("RMSNorm module (eager)", "F.rms_norm"), display=False)
glue("ratio_lnw_ln_mid", t_mid.ratio("LayerNorm written out (eager)"), display=False)
glue("saving_pct_mid", 100 * (1 - t_mid.ratio("F.rms_norm")), display=False)
n_big = math.prod(big)
for name in ("F.layer_norm", "F.rms_norm", "RMSNorm module (eager)"):
    achieved = 8 * n_big / t_big.medians[name]    # the fused minimum: 8 bytes per element
    print(f"{name:24s} at {big}: {t_big.medians[name] * 1e3:6.2f} ms, "
          f"{achieved / 1e9:5.1f} GB/s useful = {achieved / bw:.0%} of copy bandwidth")
glue("floor_big_ms", 8 * n_big / bw * 1e3, display=False)
glue("n_big_m", n_big / 1e6, display=False)
glue("mb_big", 8 * n_big / 1e6, display=False)
glue("ln_big_ms", t_big.medians["F.layer_norm"] * 1e3, display=False)
glue("ln_big_frac", 100 * 8 * n_big / t_big.medians["F.layer_norm"] / bw, display=False)
if COMPILE:
    r_comp = t_mid.ratio("RMSNorm module (compiled)", "F.rms_norm")
    print(f"compiled module / F.rms_norm at {mid}: {r_comp:.2f}")
''')

md(r'''
The figure and the table above are the measurement on {glue:text}`perf_device`. Read them with the byte
count in mind.

- **The fused kernels.** `F.rms_norm` took between {glue:text}`ratio_rms_ln_min:.2f` and
  {glue:text}`ratio_rms_ln_max:.2f` times the time of `F.layer_norm` over the three shapes (at hidden
  1024, sequence 512, a ratio of {glue:text}`ratio_rms_ln_mid:.2f`: RMSNorm's time saving there was
  {glue:text}`saving_pct_mid:.0f`%, a negative saving meaning that it was slower). A ratio below 1
  would be the advertised speed-up; a ratio above 1 means the two operations are *not* implemented with
  the same care on this device. Both must move the same 8 bytes per element, so any large difference
  between them is a difference of kernels, not of mathematics. In the PyTorch version this book was
  written with (2.13), the CPU `layer_norm` is one hand-written fused kernel while the CPU `rms_norm`
  is assembled from several operations (the profiler shows separate `rsqrt` and `mul` kernels); GPU
  builds ship fused kernels for both.
- **The eager module.** MiniMind's module, run as five separate PyTorch operations, took
  {glue:text}`ratio_mod_ln_min:.2f` to {glue:text}`ratio_mod_ln_max:.2f` times as long as the fused
  LayerNorm, and {glue:text}`ratio_mod_rms_mid:.2f` times as long as `F.rms_norm` at the middle shape.
  The byte count predicts up to 3.5 times when every intermediate tensor streams to and from main
  memory; on a CPU part of that traffic stays in the caches (the smallest shape, 1 MB, fits in them
  entirely), so the measured penalty can be smaller. LayerNorm written out the same way
  (seven or eight kernels) suffers more: {glue:text}`ratio_lnw_ln_mid:.1f` times the fused kernel at the
  middle shape. The fusion, not the formula, sets the speed.
- **The speed limit.** At the largest shape ({glue:text}`n_big_m:.1f` million elements,
  {glue:text}`mb_big:.1f` MB read and written), the copy
  bandwidth of {glue:text}`bw_gbs:.1f` GB/s puts a floor of {glue:text}`floor_big_ms:.2f` ms under any
  normalisation; `F.layer_norm` took {glue:text}`ln_big_ms:.2f` ms, that is it ran at
  {glue:text}`ln_big_frac:.0f`% of the bandwidth bound.

So is RMSNorm 10–15% faster? Only as a statement about a particular pair of kernels. What *is* true on
every device is that RMSNorm does strictly less work per element and keeps one statistic instead of
two, so a well-fused RMSNorm kernel is never slower than a well-fused LayerNorm and has a simpler
backward pass; the size of the gain depends on how close to the bandwidth bound each kernel already is,
which is why the paper found anything from 7% to 64% on different models and frameworks. In a real
model, fusion often goes further: compilers (`torch.compile`, XLA) and hand-written kernels merge the
norm with the residual addition before it or the matrix multiplication after it, and then the norm's
cost nearly disappears. For MiniMind on a GPU the practical advice is to use `F.rms_norm` or
`torch.compile` on the module; on this book's CPU runs, the numbers above say which is faster here.
''')

# =====================================================================================  7 In practice
md(r'''
## In practice

### Is the mean small inside MiniMind?

RMSNorm's justification leans on the mean of a hidden state being small next to its spread, so that
$\mathrm{RMS}\approx\sigma$ and dropping the re-centring loses little. The usual explanation asserts
this; we can measure it. The next cell hooks every RMSNorm of a MiniMind, records the input of each
(one hidden state per token) and computes, per token, the ratio $|\mu|/\mathrm{RMS}$, and also
$\max_i|x_i|/\mathrm{RMS}$, which measures how much a single feature dominates. It does this for the
default 26-million-parameter MiniMind freshly initialised, and for a small MiniMind (hidden size 128,
4 layers) before and after a short training run on synthetic sequences (a random Markov chain over 64
symbols, 60 steps of AdamW; seconds on a CPU).
''')

code('''
def norm_input_stats(model, ids):
    """Per RMSNorm of the model: |mean|/RMS and max|x_i|/RMS of each token's input."""
    stats = {}
    def hook(name):
        def record(module, args):
            h = args[0].detach().float()
            rms = h.pow(2).mean(-1).sqrt()
            stats[name] = (h.mean(-1).abs() / rms).flatten(), (h.abs().amax(-1) / rms).flatten()
        return record
    handles = []
    for i, block in enumerate(model.model.layers):
        handles.append(block.input_layernorm.register_forward_pre_hook(hook(f"{i}.attn")))
        handles.append(block.post_attention_layernorm.register_forward_pre_hook(hook(f"{i}.mlp")))
    handles.append(model.model.norm.register_forward_pre_hook(hook("final")))
    with torch.no_grad():
        model(ids)
    for hd in handles:
        hd.remove()
    return stats

torch.manual_seed(0)
big_model = MiniMindForCausalLM(MiniMindConfig())           # the default MiniMind, untrained
ids_big = torch.randint(0, 6400, (2, 64), generator=torch.Generator().manual_seed(0))
stats_big = norm_input_stats(big_model, ids_big)
n_params = sum(p.numel() for p in big_model.parameters())
print(f"default MiniMind: {n_params / 1e6:.1f} M parameters")
del big_model
''')

code('''
VOCAB = 64
gen = torch.Generator().manual_seed(0)
# a random Markov chain over VOCAB symbols: row i = next-symbol probabilities
transition = torch.softmax(3 * torch.randn(VOCAB, VOCAB, generator=gen), -1)

def markov_batch(batch=16, seq=64):
    ids = torch.empty(batch, seq, dtype=torch.long)
    ids[:, 0] = torch.randint(0, VOCAB, (batch,), generator=gen)
    for t in range(1, seq):
        ids[:, t] = torch.multinomial(transition[ids[:, t - 1]], 1, generator=gen).squeeze(1)
    return ids

torch.manual_seed(0)
small_cfg = MiniMindConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
small = MiniMindForCausalLM(small_cfg)
probe = markov_batch(4, 64)
stats_small_init = norm_input_stats(small, probe)
opt = torch.optim.AdamW(small.parameters(), lr=3e-3)
losses = []
for step in range(60):
    batch = markov_batch()
    loss = small(batch, labels=batch).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
entropy = float(-(transition * transition.log()).sum(-1).mean())
print(f"loss {losses[0]:.2f} -> {losses[-1]:.2f} (entropy of the chain: {entropy:.2f} nats)")
assert losses[-1] < losses[0] - 1.0    # it learned something
stats_small_trained = norm_input_stats(small, probe)
glue("train_loss_first", losses[0], display=False)
glue("train_loss_last", losses[-1], display=False)
glue("chain_entropy", entropy, display=False)
''')

code('''
def summary(stats):
    mean_ratio = torch.cat([v[0] for v in stats.values()])
    peak_ratio = torch.cat([v[1] for v in stats.values()])
    return mean_ratio, peak_ratio

fig, axes = subplots(2, 1, width=6.5, height=7.0)
ax1, ax2 = axes[0, 0], axes[1, 0]
runs = {"default MiniMind, untrained": stats_big, "small MiniMind, untrained": stats_small_init,
        "small MiniMind, 60 steps": stats_small_trained}
run_colors = [COLORS["input"], COLORS["layernorm"], COLORS["rmsnorm"]]
for (name, st), col in zip(runs.items(), run_colors):
    names = list(st)
    idx = range(len(names))
    ax1.plot(idx, [float(st[n][0].median()) for n in names], "o-", color=col, label=name)
    ax2.plot(idx, [float(st[n][1].median()) for n in names], "o-", color=col, label=name)
label(ax1, "How large is the mean?", "norm index (2 per block, then the final norm)",
      "median |mean| / RMS per token", legend=True)
label(ax2, "How peaked is the hidden state?", "norm index (2 per block, then the final norm)",
      "median max|x_i| / RMS per token", legend=True)
plt.show()

mr_big, pr_big = summary(stats_big)
mr_tr, pr_tr = summary(stats_small_trained)
mr_init, _ = summary(stats_small_init)
glue("mu_rms_big_median", float(mr_big.median()), display=False)
glue("mu_rms_big_max", float(mr_big.max()), display=False)
glue("mu_rms_init_median", float(mr_init.median()), display=False)
glue("mu_rms_trained_median", float(mr_tr.median()), display=False)
glue("mu_rms_trained_max", float(mr_tr.max()), display=False)
glue("peak_big_median", float(pr_big.median()), display=False)
glue("peak_trained_median", float(pr_tr.median()), display=False)
glue("peak_trained_max", float(pr_tr.max()), display=False)
glue("expected_median_512", 0.6745 / math.sqrt(512), display=False)
''', )

md(r'''
In the untrained default MiniMind the mean is small: the median token has $|\mu|/\mathrm{RMS}$ of
{glue:text}`mu_rms_big_median:.3f` (for a vector of 512 independent zero-mean components the mean is
normal with standard deviation $\sigma/\sqrt{512}$, so the median of $|\mu|/\sigma$ is
$0.6745/\sqrt{512}=$ {glue:text}`expected_median_512:.3f`),
with a largest value of {glue:text}`mu_rms_big_max:.2f`. At initialisation RMS and standard deviation
are practically the same thing. The small model starts at a median of
{glue:text}`mu_rms_init_median:.3f` and, after 60 training steps (loss {glue:text}`train_loss_first:.2f`
→ {glue:text}`train_loss_last:.2f` nats per token, against the chain's entropy of
{glue:text}`chain_entropy:.2f`), sits at a median of {glue:text}`mu_rms_trained_median:.3f` with a
maximum of {glue:text}`mu_rms_trained_max:.2f`. The right panel tracks how peaked the hidden states are:
the largest component is a median of {glue:text}`peak_trained_median:.1f` times the RMS after training
(at most {glue:text}`peak_trained_max:.1f`), against {glue:text}`peak_big_median:.1f` for the
untrained default model.

Two cautions. First, a 60-step toy is not an LLM: the statement "μ is small" is about the models you
actually train, and it should be checked there. Large trained language models are known to develop a
few *outlier features*, hidden dimensions whose magnitude is tens of times the rest
{cite}`dettmers2022llmint8`. An outlier makes the vector peaked, and, when it has a consistent sign,
gives it a mean; RMSNorm then divides everything by a statistic dominated by one feature. Second, even
where $\mu$ is not small, RMSNorm loses nothing a linear layer cannot recover: as argued in Core idea,
the mean is one direction of the vector, which the next projection may use. The measured fact that
makes RMSNorm safe is not that the mean vanishes, but that the models trained with it (T5, LLaMA,
MiniMind) match those trained with LayerNorm.

```{admonition} What the usual explanation gets wrong: "RMSNorm fixes the variance at 1" and "μ ≪ RMS in deep nets"
:class: warning
RMSNorm fixes the *second moment* (mean square) at 1, not the variance. The variance of its output is
$\sigma^2/(\sigma^2+\mu^2)\le1$, proved and measured in Mathematics. And "$\mu\ll\mathrm{RMS}$ in deep
networks" is an assumption, true at initialisation as measured above, to be checked (not assumed) in a
trained model.
```

### Choosing ε

$\varepsilon$ exists to keep the division finite when a vector is (nearly) zero. Identity 3 says exactly
what it costs: the output's RMS is $\sqrt{m/(m+\varepsilon)}$, so $\varepsilon$ is invisible when the mean
square $m$ of the input is much larger than $\varepsilon$, and it *shrinks the output* when $m$ is
comparable or smaller, at $m=\varepsilon$ to {glue:text}`rms_out_at_eps:.3f` as computed earlier. Note
the condition: $\varepsilon\gg m$ (the **mean** of the squares), not $\varepsilon\gg\sum_i x_i^2$, a slip
some explanations make. MiniMind uses $\varepsilon=10^{-5}$ (LLaMA uses $10^{-5}$ or $10^{-6}$); its
hidden states have mean squares far above that (the small model's token embeddings, its quietest
hidden states, start with a mean square of {glue:text}`emb_ms_init:.1e` and end the short training at
{glue:text}`emb_ms_trained:.1e`). Too large an $\varepsilon$ would defeat the normalisation
for quiet tokens; too small buys nothing. In float16 there is a further catch: $10^{-5}$ is below
float16's smallest normal number (about $6.1\times10^{-5}$), another reason to add $\varepsilon$ in float32.
''')

code('''
eps16 = float(torch.tensor(1e-5, dtype=torch.float16))
tiny16 = torch.finfo(torch.float16).tiny
print(f"1e-5 stored in float16: {eps16:.6e} (smallest normal float16: {tiny16:.2e})")
emb_ms = float(small.model.embed_tokens.weight.detach().pow(2).mean())
emb_ms_init = float(MiniMindForCausalLM(small_cfg).model.embed_tokens.weight.detach().pow(2).mean())
print(f"small MiniMind's embedding mean square: {emb_ms_init:.1e} at init, {emb_ms:.1e} trained")
assert emb_ms_init > 100 * 1e-5 and emb_ms > 100 * 1e-5     # far above MiniMind's eps
glue("emb_ms_init", emb_ms_init, display=False)
glue("emb_ms_trained", emb_ms, display=False)
''')

md(r'''
### Mixed-precision advice

- Compute the statistic in float32 (MiniMind's module does; so do fused kernels) and add $\varepsilon$
  there. This removes float16's overflow at $|x_i|\ge256$ and the accumulation of bfloat16 rounding.
- Keep the norm's output in the dtype of the next layer: cast the module with the model, or know that a
  float32 gain promotes a bfloat16 activation to float32 (and that `torch.nn.RMSNorm` chooses
  differently).
- Prefer bfloat16 to float16 for training when the hardware has it: it has float32's range, so
  activations and squares do not overflow, at the price of precision that the float32 statistic and
  float32 master weights make up for {cite}`micikevicius2018mixed`.
- Keep the final norm before the output head in mind: its output feeds the logits, where rounding
  matters most. Many implementations compute the head's input in float32.

### pRMSNorm: estimating the RMS from a few features

Zhang and Sennrich also proposed **partial RMSNorm**: estimate the RMS from only the first $k=\lceil pD\rceil$
components, $\overline{\mathrm{RMS}}(x)=\sqrt{\frac1k\sum_{i\le k}x_i^2}$, with $p=6.25\%$ in their
experiments, on the argument that the components of a hidden state are close to independent and
identically distributed, so a sample of them estimates the whole. For MiniMind's $D=512$ that is $k=32$
features. How good is the estimate? The next cell compares it with the full RMS on random Gaussian
vectors and on the trained small model's hidden states (there $D=128$ and $k=8$).
''')

code('''
g = torch.Generator().manual_seed(3)
gauss = torch.randn(10_000, 512, generator=g)
full = nl.rms_norm(gauss, 0.0)
partial = nl.prms_norm(gauss, p=0.0625, eps=0.0)
scale_err_gauss = (partial / full)[:, 0].sub(1).abs()   # ratio of the two scales, per vector
theory = 0.6745 / math.sqrt(2 * 32)   # median of |N(0, 1/(2k))|, see Exercise 4
print(f"Gaussian, D=512, k=32: median relative error of the RMS estimate "
      f"{scale_err_gauss.median():.3f}, theory 0.6745/sqrt(2k) = {theory:.3f}")
assert abs(float(scale_err_gauss.median()) - theory) < 0.01
hidden = []
hook = small.model.layers[-1].post_attention_layernorm.register_forward_pre_hook(
    lambda m, a: hidden.append(a[0].detach().reshape(-1, a[0].shape[-1])))
with torch.no_grad():
    small(probe)
hook.remove()
h = hidden[0]
scale_err_h = (nl.prms_norm(h, 0.0625, 0.0) / nl.rms_norm(h, 0.0))[:, 0].sub(1).abs()
print(f"small MiniMind hidden states, D=128, k=8: median relative error "
      f"{scale_err_h.median():.3f}")
glue("prms_err_gauss", float(scale_err_gauss.median()) * 100, display=False)
glue("prms_err_hidden", float(scale_err_h.median()) * 100, display=False)
''')

md(r'''
On Gaussian vectors the estimate from 32 of 512 features is off by a median of
{glue:text}`prms_err_gauss:.0f`% (Exercise 4 derives the $1/\sqrt{2k}$ law behind it); on the small
model's hidden states, from 8 of 128 features, by {glue:text}`prms_err_hidden:.0f`%. pRMSNorm trades an
error of that size in the scale for reading fewer elements when computing the statistic; the output
must still be written in full, so in the bandwidth terms of the Performance section it saves at most
part of one read. It never caught on in large models, and MiniMind uses the full RMS.

### When to use RMSNorm, and when to be careful

For a new Transformer, RMSNorm in the pre-norm position is the default choice of almost every open
model family, and MiniMind follows it; the gain in speed is real only with a fused kernel, but it costs
nothing in quality in the published comparisons. Be careful when converting a model *trained* with
LayerNorm: its weights learned to expect centred inputs, and swapping the norm changes the function, so
it needs fine-tuning. Be careful, too, with the advice, found in the documents this book follows, to use
RMSNorm "for models above 1B parameters or sequences longer than 1024": the choice does not depend on
size, and small models like MiniMind use it as well. Other normalisations serve other domains: GroupNorm
and InstanceNorm in vision, where statistics over spatial positions make sense, and adaptive LayerNorm
(gain and shift predicted from a conditioning signal) in diffusion models.
''')

# =====================================================================================  8 Summary
md(r'''
## Summary and further reading

- Deep networks multiply their signal through many layers; without control of its scale, activations
  and gradients explode or vanish. Normalisation resets the scale at every layer. Whether it helps by
  reducing "internal covariate shift" or by smoothing the loss landscape is debated
  {cite}`santurkar2018batchnorm`; that it controls scale is not.
- BatchNorm normalises each feature over the batch and depends on the batch: a batch of one erases the
  input, and small batches give noisy outputs (we measured a batch-to-batch spread of
  {glue:text}`bn_spread_4:.2f` at batch 4 against {glue:text}`bn_spread_64:.2f` at 64). LayerNorm
  normalises each token over its features and is independent of the batch.
- The original Transformer was post-LN; GPT-2 and LLaMA, and MiniMind, are pre-LN: a norm at the
  input of each sublayer, an unnormalised residual stream, and a final norm.
- RMSNorm drops the re-centring: $y=\gamma\odot x/\sqrt{\overline{x^2}+\varepsilon}$. Since
  $\mathrm{RMS}^2=\sigma^2+\mu^2$, it equals LayerNorm (without shift) on zero-mean inputs. It fixes the
  mean square, not the variance, which is $\sigma^2/(\sigma^2+\mu^2)$.
- Its gradient with a learnable gain is
  $\frac1r\big[\gamma_iu_i-\frac{x_i}{Dr^2}\sum_j\gamma_ju_jx_j\big]$; the popular version with $\gamma_i$
  factored out of both terms is wrong (off by up to {glue:text}`err_textbook:.2f` in our check). Its
  Jacobian $\frac1r(I-\frac{xx^\top}{Dr^2})$ removes the radial direction and scales by $1/r$: the output is
  invariant to the input's scale and the gradient shrinks as the weights grow.
- MiniMind's module computes the statistic in float32 and casts back before the gain; float16 would
  overflow from $|x_i|=256$, bfloat16 would lose precision, and a float32 gain promotes bfloat16
  outputs to float32.
- Speed is set by bytes moved and kernel fusion, not by operation counts. Measured on
  {glue:text}`perf_device`: `F.rms_norm` / `F.layer_norm` = {glue:text}`ratio_rms_ln_min:.2f` to
  {glue:text}`ratio_rms_ln_max:.2f`; the eager module / `F.layer_norm` = {glue:text}`ratio_mod_ln_min:.2f`
  to {glue:text}`ratio_mod_ln_max:.2f` (below 1 means RMSNorm is faster). These ratios come from the
  Performance section's `torch.utils.benchmark` run at (hidden, sequence) = (512, 128), (1024, 512) and
  (2048, 2048), not from a paper; compare them with the document's "10–15%" and the paper's 7–64%,
  which describe other kernels on other machines.

**Further reading.**

- Zhang and Sennrich, *Root Mean Square Layer Normalization* {cite}`zhang2019rmsnorm`: the source;
  read it for the invariance analysis (inputs and weights), the implicit learning-rate argument, pRMSNorm
  and the experiments across four tasks.
- Ba, Kiros and Hinton, *Layer Normalization* {cite}`ba2016layernorm`: the invariance table comparing
  BatchNorm, WeightNorm and LayerNorm is the clearest statement of what each normalisation is invariant to.
- Ioffe and Szegedy, *Batch Normalization* {cite}`ioffe2015batchnorm`: where normalisation layers and
  the covariate-shift argument started; read it with the next item.
- Santurkar et al., *How Does Batch Normalization Help Optimization?* {cite}`santurkar2018batchnorm`:
  the experiments that separate "reduces covariate shift" from "smooths the landscape".
- Xiong et al., *On Layer Normalization in the Transformer Architecture* {cite}`xiong2020prelayernorm`:
  why pre-LN trains without warm-up; the gradient analysis behind MiniMind's block layout.
- Touvron et al., *LLaMA* {cite}`touvron2023llama`: the architecture MiniMind follows (pre-norm RMSNorm,
  SwiGLU, RoPE), described in two pages.
- Dettmers et al., *LLM.int8()* {cite}`dettmers2022llmint8`: outlier features in trained LLMs, the
  reason to measure rather than assume that hidden states are well behaved.
- Williams, Waterman and Patterson, *Roofline* {cite}`williams2009roofline`: the model behind "count
  bytes, not operations".
- The implementations: `torch.nn.RMSNorm` in PyTorch, `LlamaRMSNorm` in Hugging Face Transformers
  (compare its dtype handling with MiniMind's), and the fused Triton kernels of projects such as
  Liger-Kernel, which fuse the norm with its neighbours.

**Recap.** You can now say what a normalisation layer normalises over and why language models use
per-token norms; derive RMSNorm's forward and backward passes and check them; read MiniMind's RMSNorm
and its mixed-precision choices; and measure, rather than quote, its speed. Chapter 2 turns to the
other half of MiniMind's attention input: how positions enter through rotary embeddings.
''')

# =====================================================================================  Exercises
md(r'''
## Exercises

```{exercise} Statistics by hand
:label: ex-rms-warmup
For $x=(1,2,3,4)$ and $\varepsilon=0$, compute $\mu$, $\sigma^2$, $\mathrm{RMS}(x)$, $\mathrm{RMSNorm}(x)$ and
$\mathrm{LayerNorm}(x)$ by hand. Check $\mathrm{RMS}^2=\sigma^2+\mu^2$ and
$\operatorname{Var}(\mathrm{RMSNorm}(x))=\sigma^2/(\sigma^2+\mu^2)$, then confirm your numbers with PyTorch.
```

```{solution-start} ex-rms-warmup
:class: dropdown
```
$\mu=2.5$, $\sigma^2=1.25$, $\overline{x^2}=7.5=1.25+2.5^2$, $\mathrm{RMS}=\sqrt{7.5}\approx2.739$,
$\mathrm{RMSNorm}(x)=x/2.739\approx(0.365, 0.730, 1.095, 1.461)$, whose variance is $1.25/7.5=1/6$.
$\mathrm{LayerNorm}(x)=(x-2.5)/\sqrt{1.25}\approx(-1.342,-0.447,0.447,1.342)$.
''')

code('''
xw = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
mu_w, var_w, rms_w = xw.mean(), xw.var(unbiased=False), xw.pow(2).mean().sqrt()
assert torch.isclose(rms_w ** 2, var_w + mu_w ** 2)
torch.testing.assert_close(nl.rms_norm(xw, 0.0), xw / math.sqrt(7.5))
torch.testing.assert_close(nl.rms_norm(xw, 0.0).var(unbiased=False),
                           torch.tensor(1 / 6, dtype=torch.float64))
torch.testing.assert_close(F.layer_norm(xw, (4,), eps=0.0), (xw - 2.5) / math.sqrt(1.25))
print(nl.rms_norm(xw, 0.0), F.layer_norm(xw, (4,), eps=0.0))
''')

md(r'''
```{solution-end}
```

```{exercise} RMSNorm is LayerNorm on centred inputs
:label: ex-rms-zero-mean
Show that $\mathrm{RMSNorm}(x)=\mathrm{LayerNorm}(x)$ (same $\varepsilon$, no gain or shift) whenever the
mean of $x$ is 0, and more generally that $\mathrm{LayerNorm}(x)=\mathrm{RMSNorm}(x-\mu\mathbf 1)$. Check
both on random batches with `minimind_ref`'s module.
```

```{solution-start} ex-rms-zero-mean
:class: dropdown
```
If $\mu=0$ then $\sigma^2=\overline{x^2}-\mu^2=\overline{x^2}$, so the two denominators
$\sqrt{\sigma^2+\varepsilon}$ and $\sqrt{\overline{x^2}+\varepsilon}$ coincide, and so do the numerators
$x-\mu=x$. For general $x$, $x-\mu\mathbf 1$ has mean 0 and the same variance as $x$, so the first case
applies to it.
''')

code('''
xz = torch.randn(8, 16, 512, dtype=torch.float64) * 3 + 2
centred = xz - xz.mean(-1, keepdim=True)
norm = RMSNorm(512).double()
torch.testing.assert_close(norm(centred), F.layer_norm(centred, (512,), eps=1e-5))
torch.testing.assert_close(norm(centred), F.layer_norm(xz, (512,), eps=1e-5))
assert not torch.allclose(norm(xz), F.layer_norm(xz, (512,), eps=1e-5))   # not equal when mean != 0
print("RMSNorm(x - mean) == LayerNorm(x): checked")
''')

md(r'''
```{solution-end}
```

```{exercise} The smallest float16 that overflows
:label: ex-rms-fp16
Find, by exhaustive search over all finite positive float16 values, the smallest value whose square
overflows to infinity in float16, and the largest whose square is still finite. Then estimate the
same threshold for bfloat16 from `torch.finfo`.
```

```{solution-start} ex-rms-fp16
:class: dropdown
```
Every float16 bit pattern from `0x0001` to `0x7BFF` is a finite positive number; view them as float16,
square, and look for the first infinity. The answer is $256$ (the largest finite square is
$255.875^2=65{,}472$); for bfloat16 the threshold is $\sqrt{3.39\times10^{38}}\approx1.8\times10^{19}$,
far beyond any activation.
''')

code('''
bits = torch.arange(1, 0x7C00, dtype=torch.int32).to(torch.int16)
vals = bits.view(torch.float16)
sq = vals.pow(2)
first_inf = int(torch.isinf(sq).nonzero()[0])
smallest, largest_ok = float(vals[first_inf]), float(vals[first_inf - 1])
print(f"smallest float16 whose square overflows: {smallest}; "
      f"largest with a finite square: {largest_ok}")
assert smallest == 256.0 and largest_ok == 255.875
print(f"bfloat16 threshold ~ {math.sqrt(torch.finfo(torch.bfloat16).max):.3g}")
''')

md(r'''
```{solution-end}
```

```{exercise} The error of pRMSNorm's estimate
:label: ex-rms-prms
pRMSNorm estimates the mean square from $k$ of the $D$ components. Assume the components are
independent $\mathcal N(0,s^2)$. Show that the relative standard deviation of the estimated RMS is about
$1/\sqrt{2k}$ for large $k$, and check it by simulation for $k=8, 32, 128$. What does that predict for
$p=6.25\%$ at $D=512$, and what would change if one feature were an outlier ten times larger than the
others?
```

```{solution-start} ex-rms-prms
:class: dropdown
```
The estimate of the mean square is $\hat m=\frac1k\sum_{i\le k}x_i^2$, with $x_i^2/s^2\sim\chi^2_1$ of mean 1 and
variance 2, so $\hat m/s^2$ has mean 1 and variance $2/k$. The RMS is $\sqrt{\hat m}$, and to first order
(the delta method) $\sqrt{1+\delta}\approx1+\delta/2$, so its relative standard deviation is
$\frac12\sqrt{2/k}=1/\sqrt{2k}$. At $D=512$ and $p=6.25\%$, $k=32$: an error of about 12.5% (standard
deviation) in the scale, whose median absolute value is $0.6745/\sqrt{64}\approx8.4\%$, as measured in In
practice. An outlier feature breaks the i.i.d. assumption: if it lies among the $k$ sampled features
the estimate is far too large, otherwise far too small.
''')

code('''
g = torch.Generator().manual_seed(4)
for k in (8, 32, 128):
    sample = torch.randn(200_000, k, generator=g, dtype=torch.float64)
    rel_std = float(sample.pow(2).mean(-1).sqrt().std())      # s = 1, so this is relative
    theory = 1 / math.sqrt(2 * k)
    print(f"k = {k:3d}: relative std of the RMS estimate {rel_std:.4f}, 1/sqrt(2k) = {theory:.4f}")
    assert abs(rel_std * math.sqrt(2 * k) - 1) < 0.05
''')

md(r'''
```{solution-end}
```

```{exercise} The gain is redundant for the function, not for training
:label: ex-rms-fold
In a MiniMind block, the attention input is `q_proj(input_layernorm(h))` (and likewise for `k_proj`,
`v_proj`). Show that the gain $\gamma$ of `input_layernorm` can be folded into the three projections,
$W(\gamma\odot\hat x)=(W\operatorname{diag}\gamma)\,\hat x$, leaving a norm with $\gamma=1$ and the same block
output. Verify it on a block with a random gain. Why do models keep $\gamma$ anyway?
```

```{solution-start} ex-rms-fold
:class: dropdown
```
Scaling column $i$ of each projection by $\gamma_i$ is the same as scaling input component $i$; after
folding, the gain can be reset to ones. The function is unchanged, but the parametrisation is not: a
single vector $\gamma$ shared by three projections changes the optimisation (weight decay is usually
not applied to gains, and a gain moves all three projections' effective columns together). The same
argument shows why RMSNorm does not need a shift $\beta$ in a bias-free model: there is nothing to fold it
into, and the linear layer after the norm can use the mean direction itself.
''')

code('''
torch.manual_seed(5)
cfg_fold = MiniMindConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
block = MiniMindBlock(0, cfg_fold).double()
with torch.no_grad():
    block.input_layernorm.weight.copy_(1 + 0.5 * torch.randn(64, dtype=torch.float64))
h_in = torch.randn(2, 10, 64, dtype=torch.float64)
rope = MiniMindForCausalLM(cfg_fold).model          # only to borrow its RoPE tables
pe = (rope.freqs_cos[:10].double(), rope.freqs_sin[:10].double())
before = block(h_in, pe)
with torch.no_grad():
    gain = block.input_layernorm.weight.clone()
    for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
        proj.weight.mul_(gain)                 # W diag(gamma): scale column i by gamma_i
    block.input_layernorm.weight.fill_(1.0)
torch.testing.assert_close(block(h_in, pe), before)
print("gain folded into q/k/v projections: block output unchanged")
''')

md(r'''
```{solution-end}
```

```{exercise} Research question: does the mean matter?
:label: ex-rms-research
Replace every RMSNorm in the small MiniMind of In practice by a LayerNorm without bias
(`torch.nn.LayerNorm(128, eps=1e-5, bias=False)`), train both versions from the same initialisation on
the same Markov data, and compare their losses. Then design the experiment that would answer the
question properly: how many seeds, how many steps, which model sizes, and which measurements besides
the loss (for instance the $|\mu|/\mathrm{RMS}$ statistics of this chapter)?
```

```{solution-start} ex-rms-research
:class: dropdown
```
A short run cannot settle it; it only shows how to set the experiment up. Below, both variants train for
40 steps; the difference in final loss is of the order of the step-to-step noise. A real answer needs
several seeds per variant (the difference must exceed the spread between seeds), runs long enough to
leave the initial transient, at least two model sizes, and a held-out loss. Zhang and Sennrich's
comparisons, at full scale, found the two equal in quality.
''')

code('''
def train_variant(use_layernorm, steps=40, seed=0):
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(small_cfg)
    if use_layernorm:
        for block in model.model.layers:
            block.input_layernorm = torch.nn.LayerNorm(128, eps=1e-5, bias=False)
            block.post_attention_layernorm = torch.nn.LayerNorm(128, eps=1e-5, bias=False)
        model.model.norm = torch.nn.LayerNorm(128, eps=1e-5, bias=False)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data_gen = torch.Generator().manual_seed(seed + 1)
    curve = []
    for _ in range(steps):
        ids = torch.empty(16, 64, dtype=torch.long)
        ids[:, 0] = torch.randint(0, VOCAB, (16,), generator=data_gen)
        for t in range(1, 64):
            probs = transition[ids[:, t - 1]]
            ids[:, t] = torch.multinomial(probs, 1, generator=data_gen).squeeze(1)
        loss = model(ids, labels=ids).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        curve.append(loss.item())
    return curve

curve_rms, curve_ln = train_variant(False), train_variant(True)
print(f"final loss (mean of last 5 steps): RMSNorm {sum(curve_rms[-5:]) / 5:.3f}, "
      f"LayerNorm {sum(curve_ln[-5:]) / 5:.3f}")
assert curve_rms[-1] < curve_rms[0] - 1 and curve_ln[-1] < curve_ln[0] - 1   # both learn
''')

md(r'''
```{solution-end}
```
''')
