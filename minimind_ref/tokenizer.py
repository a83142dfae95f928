"""MiniMind's tokenizer: a byte-level BPE of 6400 tokens, trained with Hugging Face ``tokenizers``.

Byte-level means the base alphabet is the 256 bytes, so every UTF-8 string (Chinese, emoji, code)
encodes and decodes back exactly, with no unknown token. The three special tokens are MiniMind's:
``<|endoftext|>`` = 0 (padding), ``<|im_start|>`` = 1 (bos) and ``<|im_end|>`` = 2 (eos), matching
``MiniMindConfig``'s ``bos_token_id=1, eos_token_id=2``. ``load_tokenizer`` reads the ``tokenizer.json``
written here or the one upstream MiniMind ships (the same format).

``python -m minimind_ref.tokenizer --help`` trains one from the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
PAD, BOS, EOS = SPECIAL_TOKENS


class Tokenizer:
    """A thin wrapper of ``tokenizers.Tokenizer`` with MiniMind's special ids and plain-list results."""

    def __init__(self, backend):
        self.backend = backend  # the tokenizers.Tokenizer
        missing = [t for t in (BOS, EOS) if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer has no special token(s) {missing}: MiniMind frames text with {BOS} ... {EOS}")
        self.bos_token_id = backend.token_to_id(BOS)
        self.eos_token_id = backend.token_to_id(EOS)
        self.pad_token_id = backend.token_to_id(PAD)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no bos/eos added; special-token strings in ``text`` become their ids)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    def check_model(self, config) -> None:
        """Raise ValueError unless this tokenizer fits a model of ``config`` (vocabulary and special ids)."""
        if self.vocab_size != config.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.vocab_size} tokens but the model's vocab_size is {config.vocab_size}: "
                f"they must be trained together"
            )
        if (self.bos_token_id, self.eos_token_id) != (config.bos_token_id, config.eos_token_id):
            raise ValueError(
                f"the tokenizer's bos/eos ids ({self.bos_token_id}, {self.eos_token_id}) differ from the model "
                f"config's ({config.bos_token_id}, {config.eos_token_id})"
            )

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, eos={self.eos_token_id})"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 6400) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (the three special tokens first) on ``texts``."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the data or not
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json`` file, or a folder holding one (a book model, or upstream MiniMind's ``model/``)."""
    from tokenizers import Tokenizer as Backend

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer at {file} (expected a tokenizer.json or a folder holding one)")
    return Tokenizer(Backend.from_file(str(file)))


def main(argv: list[str] | None = None) -> None:
    from .data import read_jsonl

    parser = argparse.ArgumentParser(
        prog="python -m minimind_ref.tokenizer",
        description="Train MiniMind's byte-level BPE tokenizer on a pretraining JSONL file and save tokenizer.json.",
    )
    parser.add_argument("data", help='JSONL file with a "text" field per line (e.g. corpus/train.jsonl)')
    parser.add_argument(
        "--out", default="tokenizer.json", help="where to write the tokenizer (default: tokenizer.json)"
    )
    parser.add_argument("--vocab-size", type=int, default=6400, help="vocabulary size, special tokens included (6400)")
    args = parser.parse_args(argv)
    tok = train_tokenizer(read_jsonl(args.data), vocab_size=args.vocab_size)
    tok.save(args.out)
    print(f"{tok} -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
