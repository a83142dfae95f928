"""The tokenizer (byte-level BPE, MiniMind's special ids) and the pretraining data pipeline."""

import json

import pytest
import torch

from minimind_ref import MiniMindConfig
from minimind_ref.data import (
    BatchSampler,
    bigram_loss,
    cached_token_stream,
    extract_corpus,
    is_validation,
    pack,
    read_jsonl,
    token_stream,
    unigram_entropy,
)
from minimind_ref.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer, train_tokenizer

TEXTS = [
    "Return the number of items in a container.",
    "def f(x):\n    return x ** 2  # square\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Compute the sum of the array elements over a given axis.",
]
HARD = [
    "",
    "plain ASCII",
    "中文分词测试：你好，世界！",
    "emoji 🤖🧠✨ and a family 👨‍👩‍👧",
    "tabs\tand\nnewlines\r\n  and   spaces ",
    "combining e\u0301 and zero-width\u200bjoiner",
    "<|im_start|>special strings in text<|im_end|>",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS * 5, vocab_size=300)


def test_special_tokens_have_minimind_ids(tok):
    assert [tok.backend.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    cfg = MiniMindConfig()
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)


@pytest.mark.parametrize("text", HARD)
def test_round_trip_of_any_utf8(tok, text):
    # byte-level: characters never seen in training (Chinese, emoji) still encode, as bytes
    assert tok.decode(tok.encode(text)) == text


def test_trained_merges_shorten_text(tok):
    assert len(tok.encode(TEXTS[0])) < 0.75 * len(TEXTS[0].encode())  # 41 merges already save a quarter


def test_training_is_deterministic():
    a = train_tokenizer(TEXTS * 5, vocab_size=300).backend.to_str()
    b = train_tokenizer(TEXTS * 5, vocab_size=300).backend.to_str()
    assert a == b


def test_save_and_load_file_or_folder(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    for where in (tmp_path, tmp_path / "tokenizer.json"):
        again = load_tokenizer(where)
        assert again.encode(HARD[2]) == tok.encode(HARD[2])
        assert again.vocab_size == tok.vocab_size == 300
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nothing")


def test_loads_upstream_style_tokenizer_json(tok, tmp_path):
    """Upstream MiniMind ships a Hugging Face tokenizer.json of the same format, with special tokens that are
    'added tokens' carrying extra flags; a file rewritten in that shape loads and encodes the same."""
    data = json.loads(tok.backend.to_str())
    for added in data["added_tokens"]:
        added.update(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>"}))
    up = load_tokenizer(tmp_path)
    assert up.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    assert (up.bos_token_id, up.eos_token_id) == (1, 2)


def test_tokenizer_without_minimind_specials_is_refused():
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    with pytest.raises(ValueError, match="special token"):
        Tokenizer(Backend(models.BPE()))


def test_vocabulary_must_match_the_model(tok):
    tok.check_model(MiniMindConfig(vocab_size=300, hidden_size=64, num_attention_heads=4))
    with pytest.raises(ValueError, match="300 tokens but the model's vocab_size is 6400"):
        tok.check_model(MiniMindConfig())


# ----------------------------------------------------------------------------- JSONL


def write(path, lines):
    path.write_text("".join(lines))
    return path


def test_read_jsonl_and_its_errors(tmp_path):
    good = write(tmp_path / "good.jsonl", [json.dumps({"text": t}) + "\n" for t in TEXTS] + ["\n"])
    assert read_jsonl(good) == TEXTS
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="is empty"):
        read_jsonl(write(tmp_path / "empty.jsonl", ["\n"]))
    with pytest.raises(ValueError, match=r"no_text.jsonl:2: expected an object with a string \"text\""):
        read_jsonl(write(tmp_path / "no_text.jsonl", ['{"text": "a"}\n', '{"content": "b"}\n']))
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON line"):
        read_jsonl(write(tmp_path / "bad.jsonl", ["text: a\n"]))


def test_token_stream_frames_documents_and_pack_cuts_it(tok):
    stream = token_stream(["ab", "cd"], tok)
    a, c = tok.encode("ab"), tok.encode("cd")
    assert stream.tolist() == [1, *a, 2, 1, *c, 2]
    seqs = pack(torch.arange(10), 4)
    assert seqs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the tail of 2 is dropped
    with pytest.raises(ValueError, match="fewer than one sequence"):
        pack(torch.arange(3), 4)


def test_cached_token_stream(tok, tmp_path):
    data = write(tmp_path / "d.jsonl", [json.dumps({"text": t}) + "\n" for t in TEXTS])
    first = cached_token_stream(data, tok, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tokens-*.pt"))) == 1
    again = cached_token_stream(data, tok, cache_dir=tmp_path / "cache")
    assert torch.equal(first, again) and torch.equal(first, token_stream(TEXTS, tok))
    write(data, [json.dumps({"text": t}) + "\n" for t in TEXTS[:2]])  # new content, new key
    assert len(cached_token_stream(data, tok, cache_dir=tmp_path / "cache")) < len(first)


# ----------------------------------------------------------------------------- corpus


def test_extract_corpus_is_deterministic_and_split_by_file(tmp_path):
    m1 = extract_corpus(tmp_path / "a", sources=["json", "email"])  # two stdlib packages: quick
    m2 = extract_corpus(tmp_path / "b", sources=["json", "email"])
    assert m1 == m2 and m1["train"]["documents"] > 10
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    records = [json.loads(line) for split in ("train", "val") for line in open(tmp_path / "a" / f"{split}.jsonl")]
    assert all(r["text"].strip() for r in records)
    val_ids = {json.loads(line)["source"] for line in open(tmp_path / "a" / "val.jsonl")}
    assert all(is_validation(i) for i in val_ids)
    assert not any(is_validation(json.loads(line)["source"]) for line in open(tmp_path / "a" / "train.jsonl"))
    assert "json:decoder.py" in {r["source"] for r in records}
    assert m1["sources"]["json"].startswith("Python ")
    with pytest.raises(ValueError, match="not an installed package"):
        extract_corpus(tmp_path / "c", sources=["no_such_package_xyz"])


# ----------------------------------------------------------------------------- shards


def test_ranks_read_disjoint_shards_whose_union_is_the_single_process_batch():
    single = BatchSampler(n_sequences=50, batch_size=4, grad_accum=2, world_size=1, seed=3)
    ranks = [BatchSampler(n_sequences=50, batch_size=2, grad_accum=2, world_size=2, rank=r, seed=3) for r in range(2)]
    for step in (0, 5, 6, 13):  # 6 steps per epoch: 6 and 13 are in later epochs
        mine = [torch.cat(s.micro_batches(step)).tolist() for s in ranks]
        assert not set(mine[0]) & set(mine[1])
        assert sorted(mine[0] + mine[1]) == sorted(torch.cat(single.micro_batches(step)).tolist())
    assert single.micro_batches(7)[0].tolist() == single.micro_batches(7)[0].tolist()  # a function of the step
    epoch0 = torch.cat([single.global_indices(s) for s in range(6)])
    assert len(set(epoch0.tolist())) == 48  # no sequence twice within an epoch


def test_more_processes_than_shards_is_an_error():
    with pytest.raises(ValueError, match=r"10 sequences, fewer than one global batch of 16 .* 4 processes"):
        BatchSampler(n_sequences=10, batch_size=4, grad_accum=1, world_size=4)


# ----------------------------------------------------------------------------- baselines


def test_unigram_and_bigram_baselines():
    V = 5
    assert unigram_entropy(torch.tensor([0, 1, 2, 3]), V) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    cyc = torch.tensor([0, 1, 2, 3, 4] * 200)  # a deterministic cycle: bigrams predict it almost surely
    assert bigram_loss(cyc, cyc[:50], V) < 0.01 < unigram_entropy(cyc, V)
    unseen = torch.tensor([4, 3, 2, 1, 0] * 10)  # pairs never counted: backs off to continuation counts
    assert bigram_loss(cyc, unseen, V) > 1.0
