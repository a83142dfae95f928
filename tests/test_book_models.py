"""The book's trained models (minimind_ref/book_models/): they load, generate, reach their stated loss, and
the shipped command reproduces their first logged losses exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from minimind_ref.generate import BOOK_MODELS_DIR
from minimind_ref.lab import book_model
from minimind_ref.lab.book import parameter_counts, val_slice
from minimind_ref.train import parse_args, train

NAMES = ("dense", "moe")
FIXTURES = __import__("pathlib").Path(__file__).parent / "data"


def metrics(name):
    return json.loads((BOOK_MODELS_DIR / name / "metrics.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_book_model_loads_and_generates(name):
    model, tok = book_model(name)
    assert tok.vocab_size == model.config.vocab_size == 6400
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    ids = torch.tensor([[tok.bos_token_id, *tok.encode("Return the number of")]])
    out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=[])  # [] never stops
    assert out.shape == (1, ids.shape[1] + 8)
    assert tok.decode(out[0, ids.shape[1] :].tolist()).strip()


@pytest.mark.parametrize("name", NAMES)
def test_book_model_reaches_its_stated_validation_loss(name):
    model, _ = book_model(name)
    seqs = val_slice()
    with torch.no_grad():
        loss = torch.stack([model(seqs[i : i + 8], labels=seqs[i : i + 8]).loss for i in range(0, len(seqs), 8)])
    m = metrics(name)
    assert loss.mean().item() == pytest.approx(m["val_slice_loss"], abs=2e-3)
    # the quality bar, on the whole validation split (stated in the card)
    assert m["val_loss"] < m["unigram_entropy_val"] - 1.5
    assert m["val_loss"] < m["bigram_kn_val"]


def test_dense_and_moe_have_matched_active_parameters():
    dense, moe = (parameter_counts(book_model(n)[0]) for n in NAMES)
    assert dense["total"] == dense["active"]
    assert moe["total"] > 1.25 * moe["active"]
    assert abs(moe["active"] - dense["active"]) / dense["active"] < 0.01
    assert metrics("moe")["parameters"] == moe and metrics("dense")["parameters"] == dense


def test_shipped_size_is_within_budget():
    size = sum(p.stat().st_size for p in BOOK_MODELS_DIR.rglob("*") if p.is_file())
    assert size < 30e6


class LoggedBatches:
    """Replays the first global batches of a run (saved from the corpus by scripts/make_book_models.py)."""

    def __init__(self, n_steps, batch_size):
        self.global_batch, self.n = batch_size, n_steps

    def global_indices(self, step):
        return torch.arange(step * self.global_batch, (step + 1) * self.global_batch)

    def micro_batches(self, step):
        return [self.global_indices(step)]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_command_reproduces_the_first_logged_losses(name, tmp_path):
    folder = BOOK_MODELS_DIR / name
    shipped = json.loads((folder / "train_args.json").read_text())
    batches = load_file(str(FIXTURES / f"book_first_batches_{name}.safetensors"))["input_ids"].long()
    k, global_batch, _ = batches.shape
    assert shipped["grad_accum"] == 1 and shipped["world_size"] == 1
    argv = [
        "--data", shipped["data"], "--tokenizer", str(folder), "--out", str(tmp_path), "--no-progress",
        "--seq-len", str(shipped["seq_len"]), "--batch-size", str(shipped["batch_size"]),
        "--max-steps", str(shipped["max_steps"]), "--until-step", str(k), "--lr", str(shipped["lr"]),
        "--min-lr-ratio", str(shipped["min_lr_ratio"]), "--warmup-steps", str(shipped["warmup_steps"]),
        "--weight-decay", str(shipped["weight_decay"]), "--grad-clip", str(shipped["grad_clip"]),
        "--seed", str(shipped["seed"]), "--threads", str(shipped["threads"]), "--model", *shipped["model"],
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        train(
            parse_args(argv), train_seqs=batches.reshape(k * global_batch, -1), sampler=LoggedBatches(k, global_batch)
        )
    finally:
        torch.set_num_threads(threads)
    logged = [json.loads(line) for line in open(folder / "train_log.jsonl")]
    logged = [r for r in logged if "loss" in r][:k]
    again = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")][1:]
    assert [r["batch_sha256"] for r in again] == [r["batch_sha256"] for r in logged]
    assert [r["loss"] for r in again] == [r["loss"] for r in logged]  # exactly
    assert [r["grad_norm"] for r in again] == [r["grad_norm"] for r in logged]


@pytest.mark.parametrize("name", NAMES)
def test_model_card_states_the_command_and_numbers(name):
    card = (BOOK_MODELS_DIR / name / "README.md").read_text()
    m = metrics(name)
    for text in (
        "python -m minimind_ref.train",
        "python -m minimind_ref.data --out corpus",
        f"{m['val_loss']:.3f}",
        f"{m['unigram_entropy_val']:.3f}",
        f"{m['bigram_kn_val']:.3f}",
        f"{m['tokens_seen']:,}",
        "--threads 1",
        m["corpus"]["train"]["sha256"][:16],
    ):
        assert text in card, text
