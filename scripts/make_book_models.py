"""Package finished training runs as the book's models: ``minimind_ref/book_models/<name>/``.

    python scripts/make_book_models.py --runs runs --corpus corpus --tokenizer-cmd "..." dense moe

For each run folder ``runs/<name>`` (written by ``python -m minimind_ref.train``): copies the weights,
config, tokenizer, training log and arguments; measures what the model card states (validation loss of the
weights as shipped on the fixed validation slice, the unigram and bigram baselines of the validation
split, parameters, sample generations); writes ``metrics.json`` and the card ``README.md``. It also writes
the fixed validation slice (``book_models/val_slice.safetensors``) and, for the reproduction test, the
first global batches of each run (``tests/data/book_first_batches_<name>.safetensors``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minimind_ref.data import BatchSampler, bigram_loss, cached_token_stream, pack, unigram_entropy  # noqa: E402
from minimind_ref.generate import generate_text, load  # noqa: E402
from minimind_ref.lab.book import parameter_counts  # noqa: E402

DEST = ROOT / "minimind_ref" / "book_models"
FIXTURES = ROOT / "tests" / "data"
VAL_SLICE = 16  # sequences of the validation split in the fixed slice
REPLAY_STEPS = 3  # first global batches kept for the reproduction test
PROMPTS = ["Return the number of", "The following example shows", "def "]
COPY = ("model.safetensors", "config.json", "tokenizer.json", "train_log.jsonl", "train_args.json")


@torch.no_grad()
def mean_loss(model, seqs: torch.Tensor, batch_size: int = 8) -> float:
    total, n = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        x = seqs[i : i + batch_size]
        total += model(x, labels=x).loss.item() * x.shape[0]
        n += x.shape[0]
    return total / n


def command_of(args: dict, launcher: str) -> str:
    """The train command line that reproduces a run, from its train_args.json."""
    flags = [
        ("--data", args["data"]), ("--val-data", args["val_data"]), ("--tokenizer", args["tokenizer"]),
        ("--out", args["out"]), ("--seq-len", args["seq_len"]), ("--batch-size", args["batch_size"]),
        ("--grad-accum", args["grad_accum"]), ("--max-steps", args["max_steps"]), ("--lr", args["lr"]),
        ("--min-lr-ratio", args["min_lr_ratio"]), ("--warmup-steps", args["warmup_steps"]),
        ("--weight-decay", args["weight_decay"]), ("--grad-clip", args["grad_clip"]), ("--seed", args["seed"]),
        ("--eval-every", args["eval_every"]), ("--eval-sequences", args["eval_sequences"]),
        ("--final-eval-sequences", args["final_eval_sequences"]),
        ("--save-every", args["save_every"]), ("--threads", args["threads"]), ("--save-dtype", args["save_dtype"]),
    ]  # fmt: skip
    parts = [launcher] + [f"{k} {v}" for k, v in flags] + ["--model " + " ".join(args["model"])]
    return " \\\n    ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+")
    p.add_argument("--runs", default="runs")
    p.add_argument("--corpus", default="corpus")
    p.add_argument("--machine", default="2-core AMD EPYC CPU (shared), no GPU")
    p.add_argument("--notes", default="", help="a sentence on the machine load during training")
    a = p.parse_args()
    torch.set_num_threads(1)
    corpus = Path(a.corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    DEST.mkdir(parents=True, exist_ok=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in a.names:
        run = Path(a.runs) / name
        log = [json.loads(line) for line in open(run / "train_log.jsonl")]
        start, final = log[0], log[-1]
        if not final.get("final"):
            raise SystemExit(f"{run} has not finished (last record: step {final.get('step')})")
        train_args = json.loads((run / "train_args.json").read_text())
        dst = DEST / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in COPY:
            shutil.copy2(run / f, dst / f)
        model, tok = load(dst)
        seq_len = train_args["seq_len"]

        # the validation split, its baselines, and the fixed slice the tests measure
        train_stream = cached_token_stream(corpus / "train.jsonl", tok)
        val_stream = cached_token_stream(corpus / "val.jsonl", tok)
        val_seqs = pack(val_stream, seq_len)
        slice_ = val_seqs[:VAL_SLICE].to(torch.int16)
        slice_file = DEST / "val_slice.safetensors"
        if slice_file.exists():
            from safetensors.torch import load_file

            if not torch.equal(load_file(str(slice_file))["input_ids"], slice_):
                raise SystemExit("the models were trained on different validation data")
        save_file({"input_ids": slice_}, str(slice_file), metadata={"val_sha256": manifest["val"]["sha256"]})

        # the first global batches of the run, for the reproduction test
        train_seqs = pack(train_stream, seq_len)
        sampler = BatchSampler(
            len(train_seqs), train_args["batch_size"], train_args["grad_accum"], 1, 0, train_args["seed"]
        )
        first = torch.stack([train_seqs[sampler.global_indices(s)] for s in range(REPLAY_STEPS)])
        steps = [r for r in log if "loss" in r][:REPLAY_STEPS]
        for s, r in enumerate(steps):
            digest = hashlib.sha256(first[s].numpy().tobytes()).hexdigest()[:16]
            if digest != r["batch_sha256"]:
                raise SystemExit(f"{name}: step {s + 1}'s batch differs from the logged one: corpus changed?")
        save_file({"input_ids": first.to(torch.int16)}, str(FIXTURES / f"book_first_batches_{name}.safetensors"))

        counts = parameter_counts(model)
        metrics = {
            "name": name,
            "parameters": counts,
            "tokens_seen": final["tokens_seen"],
            "steps": final["step"],
            "train_compute_s": final["elapsed_s"],
            "wall_s": final["wall_s"],
            "tokens_per_s": final["tokens_per_s"],
            "threads": start["threads"],
            "val_loss": final[f"val_loss_{train_args['save_dtype']}"],
            "val_loss_float32": final["val_loss"],
            "val_tokens": int(final["val_sequences"] * seq_len),
            "val_slice_sequences": VAL_SLICE,
            "val_slice_loss": mean_loss(model, slice_.long()),
            "unigram_entropy_val": unigram_entropy(val_stream, tok.vocab_size),
            "bigram_kn_val": bigram_loss(train_stream, val_stream, tok.vocab_size),
            "corpus": manifest,
            "corpus_train_tokens": int(train_stream.numel()),
            "corpus_val_tokens": int(val_stream.numel()),
            "machine": a.machine,
            "torch": start["torch"],
        }
        samples = {
            "greedy": {pr: generate_text(model, tok, pr, 48, do_sample=False) for pr in PROMPTS},
            "sampled (temperature 0.8, top-k 40, seed 0)": {
                pr: generate_text(model, tok, pr, 48, seed=0, do_sample=True, temperature=0.8, top_k=40)
                for pr in PROMPTS[:2]
            },
        }
        metrics["samples"] = samples
        (dst / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        (dst / "README.md").write_text(card(name, metrics, train_args, a.notes))
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("corpus", "samples")}, indent=2))


def card(name: str, m: dict, args: dict, notes: str) -> str:
    cfg = json.loads((DEST / name / "config.json").read_text())
    c = m["corpus"]
    moe = cfg["use_moe"]
    arch = (
        f"hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} query heads "
        f"over {cfg['num_key_value_heads']} KV heads (head_dim {cfg['hidden_size'] // cfg['num_attention_heads']}), "
        f"vocabulary {cfg['vocab_size']}, tied embeddings, RoPE θ = {cfg['rope_theta']:g}, "
        f"table of {cfg['max_position_embeddings']} positions, "
    )
    if moe:
        arch += (
            f"MoE feed-forward in MiniMind2's style: {cfg['n_routed_experts']} routed experts, top-"
            f"{cfg['num_experts_per_tok']}, {cfg['n_shared_experts']} shared expert, each a SwiGLU of width "
            f"{cfg['intermediate_size']} (chosen so that the active parameters match the dense model's), "
            f"sequence-level balancing loss α = {cfg['aux_loss_alpha']}"
        )
    else:
        arch += f"SwiGLU feed-forward of width {cfg['intermediate_size']}"
    p = m["parameters"]
    sources = ", ".join(f"{k} ({v})" for k, v in c["sources"].items())
    samples = "\n\n".join(
        f"*{kind}*\n\n"
        + "\n".join(f"- `{pr}` → `{json.dumps(text, ensure_ascii=False)[1:-1]}`" for pr, text in d.items())
        for kind, d in m["samples"].items()
    )
    gap = m["unigram_entropy_val"] - m["val_loss"]
    hours = m["wall_s"] / 3600
    launcher = "python -m minimind_ref.train"
    return f"""# The book's {name} MiniMind

A small MiniMind{" with a mixture of experts" if moe else ""} trained for *the executable MiniMind textbook*
on a 2-core CPU, so that the chapters can measure real trained weights (norms, attention patterns, gate
values{", routing" if moe else ""}). Load it with

```python
from minimind_ref.lab import book_model
model, tokenizer = book_model("{name}")
```

or generate from the command line: `python -m minimind_ref.generate {name} "Return the number of"`.

**What it is good for, and what not.** Its weights are trained ones: the chapters measure real norms,
attention patterns, gate values{", routing" if moe else ""} on it, not those of random vectors. It is *not* a
useful language model: it saw {m["tokens_seen"] / 1e6:.2f} M tokens of docstrings, and it continues a prompt
with docstring-like text (doctest prompts, section headings, parameter lists) that is plausible for a few
words and meaningless beyond them (samples below).

## Model

- {arch}.
- Parameters: {p["total"]:,} in all, {p["active"]:,} active per token.
- Weights: `model.safetensors` in {args["save_dtype"]} ({
        (DEST / name / "model.safetensors").stat().st_size / 1e6:.1f} MB);
  `from_pretrained` loads them as float32.

## Data

The book's corpus, made offline from what every reader has installed: the docstrings of {sources},
read from the source files with `ast` (nothing imported; test folders skipped), one document per file,
repeated docstrings dropped, in a fixed order; split by a hash of the file name ({c["split"]}).

| split | documents | characters | tokens | sha256 of the JSONL |
|---|---|---|---|---|
| train | {c["train"]["documents"]:,} | {c["train"]["characters"]:,} | {m["corpus_train_tokens"]:,} | `{
        c["train"]["sha256"][:16]
    }…` |
| validation | {c["val"]["documents"]:,} | {c["val"]["characters"]:,} | {m["corpus_val_tokens"]:,} | `{
        c["val"]["sha256"][:16]
    }…` |

The corpus is not stored in the repository: `python -m minimind_ref.data --out corpus` makes it again (same
versions, same bytes: compare the sha256 above). Tokens: the byte-level BPE of `tokenizer.json` (6400 tokens,
`<|endoftext|>` = 0, `<|im_start|>` = 1 = bos, `<|im_end|>` = 2 = eos), each document framed as bos … eos.

## Training

- {m["tokens_seen"]:,} tokens ({m["steps"]} steps of {args["batch_size"]} × {args["seq_len"]} tokens,
  {m["tokens_seen"] / m["corpus_train_tokens"]:.2f} passes over the training split), AdamW (β = 0.9, 0.95,
  weight decay {args["weight_decay"]} on matrices), peak learning rate {args["lr"]:g} after {args["warmup_steps"]}
  warm-up steps, cosine decay to {args["min_lr_ratio"]:g} of it, gradient clipping at {args["grad_clip"]:g},
  float32, seed {args["seed"]}.
- Hardware: {m["machine"]}; torch {m["torch"]}, {m["threads"]} thread. {notes}
- Wall time {hours:.2f} h ({m["wall_s"] / 60:.0f} min, evaluations and checkpoints included); training steps
  alone {m["train_compute_s"] / 60:.0f} min, i.e. {m["tokens_per_s"]:.0f} tokens/s on average.
- `train_log.jsonl`: one line per step (loss, balancing loss, learning rate, gradient norm, tokens/s, a hash
  of the step's batch), validation loss every {args["eval_every"]} steps, and the final record.

## Validation loss

On the whole validation split ({m["val_tokens"]:,} tokens in sequences of {args["seq_len"]}), in nats per token:

| model | loss |
|---|---|
| unigram entropy of the validation split (its own token frequencies) | {m["unigram_entropy_val"]:.3f} |
| bigram count model (interpolated Kneser-Ney, counted on the training split) | {m["bigram_kn_val"]:.3f} |
| **this model** (weights as shipped, {args["save_dtype"]}) | **{m["val_loss"]:.3f}** |

{gap:.2f} nats below the unigram entropy{
        " and below the bigram model"
        if m["val_loss"] < m["bigram_kn_val"]
        else f", but {m['val_loss'] - m['bigram_kn_val']:.2f} nats above the bigram count model"
    }. On the fixed slice that
the tests check (the first {m["val_slice_sequences"]} validation sequences, `book_models/val_slice.safetensors`):
{m["val_slice_loss"]:.4f}.

## Samples

Prompts prefixed with bos, 48 new tokens:

{samples}

## Reproduce

```bash
python -m minimind_ref.data --out corpus
python -m minimind_ref.tokenizer corpus/train.jsonl --out {args["tokenizer"]}
{command_of(args, launcher)}
```

The losses of the first steps are reproduced exactly by the same command on the same kind of machine
(`tests/test_book_models.py` replays the first {REPLAY_STEPS} logged batches); `--threads` is part of the
command because the order of float additions, and so the last bits of every loss, depends on it. The run may
be interrupted and continued with `--resume` without changing a single loss. Under
`torchrun --nproc_per_node=N` the same flags give the same global batch with `--batch-size` divided by N.
"""


if __name__ == "__main__":
    main()
