"""Pretraining data: the book's offline corpus, MiniMind's JSONL format, packed sequences, per-rank shards.

* ``extract_corpus`` writes the book's corpus: the docstrings of the Python standard library and of the
  packages the book installs (NumPy, SymPy, PyTorch, Matplotlib), read from their source files with
  ``ast`` (nothing is imported), in a fixed order, one document per source file, as MiniMind's
  pretraining JSONL (``{"text": ...}`` per line). The train/validation split is by source file, decided by
  a hash of the file's name, so that no file contributes to both.
* ``read_jsonl`` reads any such file (MiniMind's ``pretrain_hq.jsonl`` too), with clear errors.
* ``token_stream`` turns documents into one token stream (``bos text eos`` per document, as MiniMind's
  pretraining dataset frames a sample), ``pack`` cuts it into sequences of ``seq_len`` tokens, and ``BatchSampler``
  decides which sequences each rank reads at each step, as a pure function of the step (exact resume).

``python -m minimind_ref.data --help`` extracts the corpus from the command line.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import platform
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

#: The sources of the book's corpus, in the order they are read.
BOOK_SOURCES = ("stdlib", "numpy", "sympy", "torch", "matplotlib")
#: Folders whose files are tests or vendored data, not documentation.
SKIP_DIRS = {"test", "tests", "testing", "idle_test", "site-packages", "__pycache__", "_vendor", "vendored"}
VAL_PERCENT = 2  # about 2 % of the source files go to the validation split


# ----------------------------------------------------------------------------- extraction


def source_root(name: str) -> Path:
    """The folder holding the ``.py`` files of ``name`` ('stdlib' or an installed package)."""
    if name == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"corpus source {name!r} is not an installed package (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations)))


def source_version(name: str) -> str:
    """The package's version; a standard-library module (or 'stdlib') has Python's."""
    try:
        return importlib.metadata.version(name) if name != "stdlib" else f"Python {platform.python_version()}"
    except importlib.metadata.PackageNotFoundError:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        return f"Python {platform.python_version()}" if stdlib in source_root(name).parents else "unknown"


def file_docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one source file, in source order, dedented."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):  # e.g. lib2to3's deliberately broken grammar fixtures
        return []
    docs = []
    nodes = [
        n for n in ast.walk(tree) if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))  # ast.walk is breadth-first: put them back in reading order
    for node in nodes:
        text = ast.get_docstring(node, clean=False)
        if text and text.strip():
            docs.append(inspect.cleandoc(text))
    return docs


def is_validation(doc_id: str) -> bool:
    """The split by source file: a hash of the file's id, so adding a file moves no other file."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 100 < VAL_PERCENT


def iter_documents(sources: Iterable[str] = BOOK_SOURCES) -> Iterator[tuple[str, str]]:
    """(doc_id, text) for each source file with docstrings, sorted by source then path.

    A docstring seen before (anywhere in the corpus) is dropped: libraries repeat boilerplate such as
    "Return self==value." hundreds of times, and a repeat across the split would leak into validation.
    """
    seen: set[str] = set()
    for name in sources:
        root = source_root(name)
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            rel = path.relative_to(root)
            if SKIP_DIRS & set(rel.parts[:-1]):
                continue
            fresh = []
            for doc in file_docstrings(path):
                key = hashlib.sha1(doc.encode()).digest()
                if key not in seen:
                    seen.add(key)
                    fresh.append(doc)
            if fresh:
                yield f"{name}:{rel.as_posix()}", "\n\n".join(fresh)


def extract_corpus(out_dir: str | Path, sources: Iterable[str] = BOOK_SOURCES) -> dict:
    """Write ``train.jsonl``, ``val.jsonl`` and ``manifest.json`` (versions, sizes, sha256) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = tuple(sources)
    stats = {split: {"documents": 0, "characters": 0} for split in ("train", "val")}
    with (
        open(out / "train.jsonl", "w", encoding="utf-8") as f_train,
        open(out / "val.jsonl", "w", encoding="utf-8") as f_val,
    ):
        for doc_id, text in iter_documents(sources):
            split = "val" if is_validation(doc_id) else "train"
            (f_val if split == "val" else f_train).write(
                json.dumps({"text": text, "source": doc_id}, ensure_ascii=False) + "\n"
            )
            stats[split]["documents"] += 1
            stats[split]["characters"] += len(text)
    for split in ("train", "val"):
        stats[split]["sha256"] = sha256_file(out / f"{split}.jsonl")
    manifest = {
        "sources": {name: source_version(name) for name in sources},
        "platform": platform.platform(),
        "split": f"by source file: sha256(source id) % 100 < {VAL_PERCENT} -> val",
        **stats,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading and packing


def read_jsonl(path: str | Path) -> list[str]:
    """The ``"text"`` of every line of a pretraining JSONL file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} does not exist (make the book's corpus: python -m minimind_ref.data)"
        )
    texts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f'{path}:{lineno}: expected an object with a string "text" field, got {line[:80]!r}')
            texts.append(record["text"])
    if not texts:
        raise ValueError(f'data file {path} is empty: expected one JSON object with a "text" field per line')
    return texts


def token_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """Documents -> one 1-D int64 token stream, ``bos text eos`` per document (MiniMind's framing)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = tokenizer.encode_batch(texts)
    return torch.tensor([t for doc in ids for t in (bos, *doc, eos)], dtype=torch.int64)


def cached_token_stream(path: str | Path, tokenizer, cache_dir: str | Path | None = None) -> torch.Tensor:
    """``token_stream(read_jsonl(path))``, cached on disk under the sha256 of the data file and the tokenizer.

    Tokenizing the book's corpus takes about a minute on two cores; the cache makes a resume, a second
    process or a second model start at once. ``cache_dir`` defaults to ``$MINIMIND_CACHE`` or
    ``~/.cache/minimind_ref``; a cache file is written atomically, so concurrent processes are safe.
    """
    import os

    texts = read_jsonl(path)  # also the errors for a missing, empty or malformed file
    tok_json = tokenizer.backend.to_str().encode()
    key = hashlib.sha256(sha256_file(path).encode() + hashlib.sha256(tok_json).digest()).hexdigest()[:32]
    root = Path(cache_dir or os.environ.get("MINIMIND_CACHE") or Path.home() / ".cache" / "minimind_ref")
    file = root / f"tokens-{key}.pt"
    if file.exists():
        return torch.load(file, weights_only=True).to(torch.int64)
    stream = token_stream(texts, tokenizer)
    small = stream.to(torch.int16) if tokenizer.vocab_size <= 32767 else stream.to(torch.int32)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(small, tmp)
        os.replace(tmp, file)
    except OSError:  # a read-only home: work without the cache
        pass
    return stream


def pack(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A token stream -> (n_sequences, seq_len): consecutive pieces; the incomplete tail is dropped."""
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"the data holds {stream.numel()} tokens, fewer than one sequence of seq_len={seq_len}")
    return stream[: n * seq_len].view(n, seq_len)


@dataclass
class BatchSampler:
    """Which sequences rank ``rank`` of ``world_size`` reads at each step: a pure function of the step.

    A global batch is ``batch_size * grad_accum * world_size`` sequences drawn, without replacement, from
    a fresh permutation each epoch (seeded by ``seed`` and the epoch). Micro-step ``m`` of rank ``r``
    reads the slice ``(m * world_size + r) * batch_size`` of it, so the ranks read disjoint shards and a
    single process with the same global batch reads exactly the union of them.
    """

    n_sequences: int
    batch_size: int
    grad_accum: int = 1
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_sequences < self.global_batch:
            raise ValueError(
                f"the training data has {self.n_sequences} sequences, fewer than one global batch of "
                f"{self.global_batch} = batch_size {self.batch_size} x grad_accum {self.grad_accum} x "
                f"{self.world_size} processes: each process needs its own shard of every batch "
                f"(use fewer processes, a smaller batch, or more data)"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.n_sequences // self.global_batch

    def global_indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_sequences, generator=g)
        return perm[b * self.global_batch : (b + 1) * self.global_batch]

    def micro_batches(self, step: int) -> list[torch.Tensor]:
        """This rank's ``grad_accum`` index tensors of ``batch_size`` sequences for ``step``."""
        idx = self.global_indices(step)
        out = []
        for m in range(self.grad_accum):
            start = (m * self.world_size + self.rank) * self.batch_size
            out.append(idx[start : start + self.batch_size])
        return out


# ----------------------------------------------------------------------------- baselines


def unigram_entropy(stream: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats/token) of the token frequencies of ``stream`` itself: the loss of the best model
    that ignores context, fitted to the very text it is scored on (an optimistic unigram baseline)."""
    p = torch.bincount(stream, minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def bigram_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int, discount: float = 0.75) -> float:
    """Cross-entropy (nats/token) on ``val`` of an interpolated Kneser-Ney bigram model counted on ``train``.

    P(b | a) = max(c(a b) - D, 0) / c(a) + D * N1+(a .) / c(a) * P_cont(b), with P_cont(b) the share of
    distinct left neighbours of b (mixed with 1 % uniform so every token has mass). This is the
    strongest of the simple count models: a network must beat it to show it learnt more than pairs.
    """
    V = vocab_size
    keys, counts = torch.unique(train[:-1] * V + train[1:], return_counts=True)  # sorted pair ids, c(a b)
    counts = counts.double()
    left, right = keys // V, keys % V
    c_a = torch.bincount(left, weights=counts, minlength=V)  # c(a .)
    types_a = torch.bincount(left, minlength=V).double()  # N1+(a .)
    p_cont = torch.bincount(right, minlength=V).double()
    p_cont = 0.99 * p_cont / p_cont.sum() + 0.01 / V
    a, b = val[:-1], val[1:]
    q = a * V + b
    pos = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    c_ab = torch.where(keys[pos] == q, counts[pos], torch.zeros_like(counts[pos]))
    ca = c_a[a]
    p = torch.where(
        ca > 0,
        (c_ab - discount).clamp(min=0) / ca.clamp(min=1) + discount * types_a[a] / ca.clamp(min=1) * p_cont[b],
        p_cont[b],
    )
    return float(-p.log().mean())


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minimind_ref.data",
        description="Extract the book's corpus: docstrings of the standard library and of installed packages, "
        "as MiniMind pretraining JSONL (train.jsonl, val.jsonl) with a manifest of versions and sha256.",
    )
    parser.add_argument("--out", default="corpus", help="output folder (default: corpus)")
    parser.add_argument(
        "--sources",
        nargs="+",
        default=list(BOOK_SOURCES),
        help=f"'stdlib' and/or installed package names, read in this order (default: {' '.join(BOOK_SOURCES)})",
    )
    args = parser.parse_args(argv)
    manifest = extract_corpus(args.out, args.sources)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    sys.exit(main())
