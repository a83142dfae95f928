"""Pretrain a MiniMind: ``python -m minimind_ref.train --help``.

One process or many: under ``torchrun --nproc_per_node=N`` every process trains a replica wrapped in
``DistributedDataParallel`` (gloo on CPU, NCCL on GPU) and reads its own shard of every global batch,
so the run computes what one process with the same global batch would (see ``data.BatchSampler``).

The recipe: packed sequences of ``--seq-len`` tokens, AdamW with linear warm-up and cosine decay,
gradient clipping, evaluation on a fixed validation slice, bf16 autocast on CUDA, optional
``torch.compile``. A checkpoint holds the weights, the optimizer state and the step; since the data
order and the learning rate are functions of the step alone, ``--resume`` continues an interrupted run
with exactly the losses it would have had.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import load_state_dict_file
from .config import MiniMindConfig
from .data import BatchSampler, cached_token_stream, pack
from .model import MiniMindForCausalLM
from .tokenizer import load_tokenizer

# arguments that decide the numbers a run computes: a resume must not change them
RESUME_MUST_MATCH = (
    "seq_len",
    "batch_size",
    "grad_accum",
    "world_size",
    "seed",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "max_steps",
    "grad_clip",
)


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m minimind_ref.train",
        description='Pretrain a MiniMind (dense or MoE) on a JSONL file of {"text": ...} lines. Runs unchanged '
        "under torchrun --nproc_per_node=N (DistributedDataParallel, each process reading its own shard).",
        epilog="Example (the book's dense model): python -m minimind_ref.data --out corpus && "
        "python -m minimind_ref.tokenizer corpus/train.jsonl --out tokenizer.json && "
        "python -m minimind_ref.train --data corpus/train.jsonl --val-data corpus/val.jsonl "
        "--tokenizer tokenizer.json --out runs/dense --model hidden_size=256 num_hidden_layers=4 "
        "num_attention_heads=4 num_key_value_heads=2 --max-tokens 3000000 --threads 1",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="training JSONL (MiniMind's pretrain_hq.jsonl, or corpus/train.jsonl)")
    g.add_argument("--val-data", help="validation JSONL (default: none, no evaluation)")
    g.add_argument("--tokenizer", required=True, help="tokenizer.json, or a folder holding one")
    g.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    g = p.add_argument_group("model")
    g.add_argument("--config", help="a config.json to start from (default: MiniMindConfig's defaults)")
    g.add_argument(
        "--model",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override MiniMindConfig fields, e.g. hidden_size=256 use_moe=true (values parsed as JSON)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch, per process")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    budget = g.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-tokens", type=int, help="token budget (rounded up to whole steps)")
    budget.add_argument("--max-steps", type=int, help="optimizer steps")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate / peak")
    g.add_argument("--warmup-steps", type=int, default=50)
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay of the matrices (not the norms)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    g.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the data order")
    g = p.add_argument_group("evaluation, checkpoints, logging")
    g.add_argument("--eval-every", type=int, default=100, help="evaluate every N steps (and at the end)")
    g.add_argument("--eval-sequences", type=int, default=64, help="validation sequences used at each evaluation")
    g.add_argument("--final-eval-sequences", type=int, default=0, help="sequences for the final evaluation (0 = all)")
    g.add_argument("--save-every", type=int, default=100, help="write a resumable checkpoint every N steps")
    g.add_argument("--out", required=True, help="output folder: final model, train_log.jsonl, checkpoint/")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if there is one")
    g.add_argument("--until-step", type=int, help="stop after this step (checkpoint saved), as if interrupted")
    g.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the final model.safetensors",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", help="cpu, cuda, mps (default: cuda if available, else cpu)")
    g.add_argument("--threads", type=int, help="torch intra-op threads per process (set it: results depend on it)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="autocast dtype: auto = bfloat16 on CUDA, float32 elsewhere",
    )
    args = p.parse_args(argv)
    for name in ("seq_len", "batch_size", "grad_accum", "eval_every", "save_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model expects FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a bare string such as hidden_act=gelu
    return out


def build_config(args: argparse.Namespace) -> MiniMindConfig:
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    overrides = parse_overrides(args.model)
    known = set(MiniMindConfig.__dataclass_fields__) - {"extra"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown MiniMindConfig field(s) {unknown}; known: {sorted(known)}")
    return MiniMindConfig.from_dict({**base, **overrides})


# ----------------------------------------------------------------------------- the recipe


def init_weights(model: MiniMindForCausalLM) -> None:
    """GPT-2's initialisation: N(0, 0.02) for every matrix and the embedding, the projections that write
    into the residual stream scaled by 1/sqrt(2 * layers) so the stream's variance does not grow with
    depth, norms at 1."""
    std = 0.02
    n_layers = model.config.num_hidden_layers
    for name, param in model.named_parameters():
        if param.dim() == 1:
            nn.init.ones_(param)  # RMSNorm weights
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            nn.init.normal_(param, 0.0, std / math.sqrt(2 * n_layers))
        else:
            nn.init.normal_(param, 0.0, std)


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and the embedding
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norm weights
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


@torch.no_grad()
def evaluate(model: nn.Module, seqs: torch.Tensor, batch_size: int, device, autocast, rank=0, world_size=1) -> float:
    """Mean next-token loss (nats/token) over ``seqs``, each process taking every ``world_size``-th sequence."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, number of tokens)
    mine = seqs[rank::world_size]
    for start in range(0, len(mine), batch_size):
        x = mine[start : start + batch_size].to(device)
        with autocast():
            loss = model(x, labels=x).loss
        n = x.shape[0] * (x.shape[1] - 1)
        total += torch.stack([loss.double() * n, torch.tensor(n, dtype=torch.float64, device=device)])
    if world_size > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def param_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(out: Path, model: MiniMindForCausalLM, optimizer, state: dict) -> None:
    """OUT/checkpoint/: config.json + model.safetensors (float32) + trainer_state.pt, replaced atomically."""
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({**state, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def load_checkpoint(out: Path, model: MiniMindForCausalLM, optimizer, args: argparse.Namespace) -> dict:
    ckpt = out / "checkpoint"
    # both through today's MiniMindConfig, so that a field added to it since the checkpoint is no difference
    saved_cfg = MiniMindConfig.from_json(ckpt / "config.json").to_dict()
    own_cfg = model.config.to_dict()
    diff = {
        k: (saved_cfg.get(k), own_cfg.get(k))
        for k in sorted(set(saved_cfg) | set(own_cfg))
        if saved_cfg.get(k) != own_cfg.get(k)
    }
    if diff:
        raise ValueError(
            f"cannot resume: {ckpt} was saved by a model of another config; differing fields (checkpoint, now): {diff}"
        )
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    changed = {
        k: (state["args"].get(k), getattr(args, k))
        for k in RESUME_MUST_MATCH
        if state["args"].get(k) != getattr(args, k)
    }
    if changed:
        raise ValueError(f"cannot resume {ckpt} exactly: these settings differ (checkpoint, now): {changed}")
    model.load_checkpoint(load_state_dict_file(ckpt / "model.safetensors"))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return state


# ----------------------------------------------------------------------------- the run


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def log_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(args: argparse.Namespace, train_seqs: torch.Tensor | None = None, sampler=None) -> dict:
    """Run ``args`` (from ``parse_args``); ``train_seqs``/``sampler`` replace the data (tests replay logged batches)."""
    rank, world_size, device = setup_distributed(args)
    args.world_size = world_size
    master = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _train(args, rank, world_size, device, master, train_seqs, sampler)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _train(args, rank, world_size, device, master, train_seqs, sampler) -> dict:
    out = Path(args.out)
    config = build_config(args)
    tokenizer = load_tokenizer(args.tokenizer)
    tokenizer.check_model(config)
    if args.seq_len > config.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} exceeds max_position_embeddings={config.max_position_embeddings}")

    t0 = time.perf_counter()
    if train_seqs is None:
        train_seqs = pack(cached_token_stream(args.data, tokenizer), args.seq_len)
    val_seqs = pack(cached_token_stream(args.val_data, tokenizer), args.seq_len) if args.val_data else None
    if sampler is None:
        sampler = BatchSampler(len(train_seqs), args.batch_size, args.grad_accum, world_size, rank, args.seed)
    tokens_per_step = sampler.global_batch * args.seq_len
    if args.max_steps is None:
        args.max_steps = math.ceil(args.max_tokens / tokens_per_step)
    tokenize_s = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    model = MiniMindForCausalLM(config)
    init_weights(model)
    model.to(device).train()
    optimizer = make_optimizer(model, args)
    step, tokens_seen, elapsed, wall = 0, 0, 0.0, 0.0  # wall: steps + evaluations + checkpoints
    log_path = out / "train_log.jsonl"
    if master:
        out.mkdir(parents=True, exist_ok=True)
    if args.resume and (out / "checkpoint").exists():
        state = load_checkpoint(out, model, optimizer, args)
        step, tokens_seen, elapsed, wall = state["step"], state["tokens_seen"], state["elapsed_s"], state["wall_s"]
        if master and log_path.exists():  # drop what the interrupted run logged after its last checkpoint
            kept = [
                r
                for r in map(json.loads, log_path.read_text().splitlines())
                if r.get("step", 0) <= step and not r.get("final")
            ]
            log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    elif master:
        log_path.unlink(missing_ok=True)
        header = {
            "event": "start",
            "config": config.to_dict(),
            "args": vars(args),
            "world_size": world_size,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "torch": torch.__version__,
            "train_sequences": len(train_seqs),
            "val_sequences": 0 if val_seqs is None else len(val_seqs),
            "tokens_per_step": tokens_per_step,
            "tokenize_s": round(tokenize_s, 2),
        }
        log_line(log_path, header)
        (out / "train_args.json").write_text(json.dumps(vars(args), indent=2) + "\n")

    use_bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda")

    def autocast():
        if use_bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    net: nn.Module = model
    if world_size > 1:
        # the MoE's training path calls every expert (see moe.py), so every parameter is in each step's
        # graph and find_unused_parameters can stay off
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)

    last = min(args.max_steps, args.until_step or args.max_steps)
    bar = None
    if master and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.max_steps, initial=step, unit="step", dynamic_ncols=True)
    t_wall = time.perf_counter() - wall
    while step < last:
        t_step = time.perf_counter()
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = torch.zeros(2, device=device)  # (cross-entropy, aux loss) summed over micro-batches
        micro = sampler.micro_batches(step)
        batch_sha = hashlib.sha256(train_seqs[sampler.global_indices(step)].numpy().tobytes()).hexdigest()[:16]
        for m, idx in enumerate(micro):
            x = train_seqs[idx].to(device)
            sync = m == len(micro) - 1 or world_size == 1
            with contextlib.nullcontext() if sync else net.no_sync(), autocast():
                output = net(x, labels=x)
                loss = output.loss + output.aux_loss
                (loss / len(micro)).backward()
            stats += torch.stack([output.loss.detach().float(), output.aux_loss.detach().float()])
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf")
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats /= len(micro)
        if world_size > 1:
            dist.all_reduce(stats)  # a sum (gloo has no average): the global batch's mean, below
            stats /= world_size
        step += 1
        tokens_seen += tokens_per_step
        dt = time.perf_counter() - t_step
        elapsed += dt
        record = {
            "step": step,
            "loss": stats[0].item(),
            "aux_loss": stats[1].item(),
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "tokens": tokens_seen,
            "tokens_per_s": round(tokens_per_step / dt, 1),
            "elapsed_s": round(elapsed, 2),
            "batch_sha256": batch_sha,
        }
        if val_seqs is not None and (step % args.eval_every == 0 or step == args.max_steps):
            n = min(args.eval_sequences, len(val_seqs))
            record["val_loss"] = evaluate(model, val_seqs[:n], args.batch_size, device, autocast, rank, world_size)
        if master:
            log_line(log_path, record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tokens_seen / elapsed:.0f}", refresh=False)
                bar.update(1)
        if step % args.save_every == 0 or step == last:
            if master:
                wall = time.perf_counter() - t_wall
                save_checkpoint(
                    out,
                    model,
                    optimizer,
                    {
                        "step": step,
                        "tokens_seen": tokens_seen,
                        "elapsed_s": elapsed,
                        "wall_s": wall,
                        "args": vars(args),
                    },
                )
            if world_size > 1:
                dist.barrier()
    if bar is not None:
        bar.close()

    result = {
        "step": step,
        "tokens_seen": tokens_seen,
        "elapsed_s": round(elapsed, 2),
        "wall_s": round(time.perf_counter() - t_wall, 2),
    }
    if step < args.max_steps:  # stopped by --until-step: resume later with --resume
        return result
    # the end of the run: every replica must hold the same weights
    digests = [param_sha256(model)]
    if world_size > 1:
        digests = [None] * world_size
        dist.all_gather_object(digests, param_sha256(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {world_size} processes ended with different weights: {digests}")
    final = {
        "event": "final",
        "final": True,
        **result,
        "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
        "param_sha256_per_rank": digests,
    }
    save_dtype = getattr(torch, args.save_dtype)
    if val_seqs is not None:
        n = args.final_eval_sequences or len(val_seqs)
        final["val_sequences"] = n
        final["val_loss"] = evaluate(model, val_seqs[:n], args.batch_size, device, autocast, rank, world_size)
        if save_dtype != torch.float32:  # the loss of the weights as shipped, rounded to save_dtype
            rounded = MiniMindForCausalLM(config).to(device)
            rounded.load_state_dict({k: v.to(save_dtype).float() for k, v in model.state_dict().items()})
            final[f"val_loss_{args.save_dtype}"] = evaluate(
                rounded, val_seqs[:n], args.batch_size, device, autocast, rank, world_size
            )
    if master:
        export = MiniMindForCausalLM(config)
        export.load_state_dict(model.state_dict())
        export.to(save_dtype).save_pretrained(out)
        tokenizer.save(out / "tokenizer.json")
        log_line(log_path, final)
    return final


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
