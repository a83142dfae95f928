"""python -m minimind_ref.train / .generate: exact resume, DDP equals one process, bad input, the CLIs."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch.testing import assert_close

from minimind_ref import MiniMindForCausalLM
from minimind_ref.generate import TextStreamer, generate_text, load
from minimind_ref.generate import main as generate_main
from minimind_ref.tokenizer import train_tokenizer
from minimind_ref.train import lr_at, parse_args, train

TINY = [
    "hidden_size=32",
    "num_hidden_layers=2",
    "num_attention_heads=4",
    "num_key_value_heads=2",
    "vocab_size=320",
    "max_position_embeddings=64",
]
MOE = ["use_moe=true", "n_routed_experts=3", "num_experts_per_tok=2", "n_shared_experts=1", "intermediate_size=48"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small corpus (docstrings of the json package and more) and a 320-token tokenizer trained on it."""
    from minimind_ref.data import extract_corpus, read_jsonl

    d = tmp_path_factory.mktemp("train")
    extract_corpus(d / "corpus", sources=["json", "email"])
    lines = (d / "corpus" / "train.jsonl").read_text().splitlines(keepends=True)  # 2 % of 30 files: val is empty
    (d / "corpus" / "train.jsonl").write_text("".join(lines[:-4]))
    (d / "corpus" / "val.jsonl").write_text("".join(lines[-4:]))
    train_tokenizer(read_jsonl(d / "corpus" / "train.jsonl"), vocab_size=320).save(d / "tokenizer.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIMIND_CACHE", str(d / "cache"))  # token caches stay in the test's folder
        yield d


def args_for(workdir, out, *extra, model=TINY, steps=6):
    return [
        "--data", str(workdir / "corpus" / "train.jsonl"), "--val-data", str(workdir / "corpus" / "val.jsonl"),
        "--tokenizer", str(workdir / "tokenizer.json"), "--out", str(out), "--seq-len", "32", "--batch-size", "4",
        "--max-steps", str(steps), "--warmup-steps", "2", "--eval-every", "3", "--eval-sequences", "4",
        "--final-eval-sequences", "8", "--save-every", "2", "--threads", "1", "--no-progress", "--model", *model,
        *extra,
    ]  # fmt: skip


def log(out):
    return [json.loads(line) for line in open(out / "train_log.jsonl")]


def losses(out):
    return [(r["step"], r["loss"], r.get("val_loss")) for r in log(out) if "loss" in r]


def test_interrupted_and_resumed_run_equals_uninterrupted(workdir, tmp_path):
    full = train(parse_args(args_for(workdir, tmp_path / "full", model=TINY + MOE)))
    part = train(parse_args(args_for(workdir, tmp_path / "part", "--until-step", "3", model=TINY + MOE)))
    assert part["step"] == 3 and not (tmp_path / "part" / "model.safetensors").exists()
    # the interrupted run went on past its last checkpoint (step 2 here would be such a state): resume from 3
    rest = train(parse_args(args_for(workdir, tmp_path / "part", "--resume", model=TINY + MOE)))
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # exactly, not approximately
    assert rest["val_loss"] == full["val_loss"]
    a = MiniMindForCausalLM.from_pretrained(tmp_path / "full")
    b = MiniMindForCausalLM.from_pretrained(tmp_path / "part")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert [r["step"] for r in log(tmp_path / "part") if "loss" in r] == list(range(1, 7))


def test_training_lowers_the_loss_and_writes_a_loadable_model(workdir, tmp_path):
    out = tmp_path / "run"
    result = train(parse_args(args_for(workdir, out, "--save-dtype", "float16", "--lr", "1e-2", steps=12)))
    first, last = losses(out)[0][1], losses(out)[-1][1]
    assert last < first - 0.5
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_log.jsonl", "train_args.json"} <= {
        p.name for p in out.iterdir()
    }
    model, tok = load(out)
    assert next(model.parameters()).dtype == torch.float32  # stored float16, loaded float32
    assert abs(result["val_loss_float16"] - result["val_loss"]) < 0.01
    assert log(out)[0]["event"] == "start" and log(out)[-1]["event"] == "final"
    assert all(r["tokens_per_s"] > 0 and len(r["batch_sha256"]) == 16 for r in log(out) if "loss" in r)


def test_warmup_then_cosine():
    a = parse_args(
        [
            "--data",
            "x",
            "--tokenizer",
            "t",
            "--out",
            "o",
            "--max-steps",
            "100",
            "--warmup-steps",
            "10",
            "--lr",
            "1.0",
            "--min-lr-ratio",
            "0.1",
        ]
    )
    assert lr_at(0, a) == pytest.approx(0.1) and lr_at(9, a) == pytest.approx(1.0)
    assert lr_at(10, a) == pytest.approx(1.0) and lr_at(100, a) == pytest.approx(0.1)
    assert lr_at(55, a) == pytest.approx(0.55)  # half way down the cosine


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error(workdir, tmp_path):
    def run(*extra, model=TINY, **kw):
        return train(parse_args(args_for(workdir, tmp_path / "bad", *extra, model=model, **kw)))

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run("--data", str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        run("--data", str(tmp_path / "empty.jsonl"))
    (tmp_path / "notext.jsonl").write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    with pytest.raises(ValueError, match=r"notext.jsonl:2: expected an object with a string \"text\" field"):
        run("--data", str(tmp_path / "notext.jsonl"))
    with pytest.raises(ValueError, match="320 tokens but the model's vocab_size is 6400"):
        run(model=[m for m in TINY if not m.startswith("vocab_size")])
    with pytest.raises(ValueError, match="unknown MiniMindConfig field"):
        run(model=[*TINY, "hidden=3"])
    with pytest.raises(ValueError, match="sequences, fewer than one global batch"):
        run("--batch-size", "100000")
    run("--until-step", "2")
    with pytest.raises(ValueError, match=r"another config.*hidden_size.*\(32, 64\)"):
        run("--resume", model=[m if not m.startswith("hidden_size") else "hidden_size=64" for m in TINY])
    with pytest.raises(ValueError, match=r"settings differ.*seq_len"):
        run("--resume", "--seq-len", "16")


def test_help_is_useful(capsys):
    for main in (lambda a: parse_args(a), generate_main):
        with pytest.raises(SystemExit):
            main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--max-tokens",
        "--grad-accum",
        "--resume",
        "--compile",
        "--model [FIELD=VALUE ...]",
        "torchrun",
        "--temperature",
        "--top-p",
        "--sample",
        "book model",
    ):
        assert flag in text, flag


# ----------------------------------------------------------------------------- DDP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_processes_equal_one_process_with_the_same_global_batch(workdir, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU) on the MoE: every expert is in the graph, so DDP needs no
    find_unused_parameters; both ranks end with identical weights, and the loss curve is the single process's."""
    steps = ["--eval-every", "2", "--save-every", "4"]
    single = args_for(workdir, tmp_path / "one", "--batch-size", "4", *steps, model=TINY + MOE, steps=4)
    train(parse_args(single))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "minimind_ref.train",
        *args_for(workdir, tmp_path / "two", "--batch-size", "2", *steps, model=TINY + MOE, steps=4),
    ]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    print(f"2-rank DDP run: {time.perf_counter() - t0:.1f} s")
    final = log(tmp_path / "two")[-1]
    assert final["event"] == "final" and len(final["param_sha256_per_rank"]) == 2
    assert len(set(final["param_sha256_per_rank"])) == 1  # the ranks hold identical weights
    assert log(tmp_path / "two")[0]["world_size"] == 2
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r["batch_sha256"] for r in log(tmp_path / "one") if "loss" in r] == [
        r["batch_sha256"] for r in log(tmp_path / "two") if "loss" in r
    ]  # the same global batches
    assert_close(torch.tensor([x[1] for x in two]), torch.tensor([x[1] for x in one]), rtol=1e-5, atol=1e-5)
    assert_close(
        torch.tensor([x[2] for x in two if x[2]]), torch.tensor([x[2] for x in one if x[2]]), rtol=1e-5, atol=1e-5
    )
    a = MiniMindForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = MiniMindForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    for k in a:
        assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


# ----------------------------------------------------------------------------- generate


def test_generate_streams_what_it_returns(workdir, tmp_path):
    out = tmp_path / "gen"
    train(parse_args(args_for(workdir, out, steps=2)))
    model, tok = load(out)
    buf = io.StringIO()
    streamer = TextStreamer(tok, file=buf)
    text = generate_text(model, tok, "Return the", max_new_tokens=12, streamer=streamer, do_sample=False)
    streamer.end()
    assert buf.getvalue() == text + "\n"
    sampled = generate_text(model, tok, "Return the", max_new_tokens=12, seed=1, do_sample=True, top_k=20)
    assert sampled == generate_text(model, tok, "Return the", max_new_tokens=12, seed=1, do_sample=True, top_k=20)
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a book model"):
        load(tmp_path / "nowhere")


def test_streamer_holds_back_split_characters():
    tok = train_tokenizer(["plain text"], vocab_size=270)
    buf = io.StringIO()
    streamer = TextStreamer(tok, file=buf)
    for t in tok.encode("é🤖"):  # one token per byte: the characters arrive in pieces
        streamer(torch.tensor([t]))
        assert "\ufffd" not in buf.getvalue()
    streamer.end()
    assert buf.getvalue() == "é🤖\n"
