"""Generate text with a MiniMind: ``python -m minimind_ref.generate --help``.

The model is a folder holding ``config.json``, the weights and ``tokenizer.json`` (what
``minimind_ref.train`` writes), or the name of one of the book's own trained models (``dense``, ``moe``),
which ship inside the package under ``minimind_ref/book_models/``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

from .model import MiniMindForCausalLM
from .tokenizer import Tokenizer, load_tokenizer

BOOK_MODELS_DIR = Path(__file__).parent / "book_models"


def book_model_names() -> list[str]:
    return (
        sorted(p.name for p in BOOK_MODELS_DIR.iterdir() if (p / "config.json").exists())
        if BOOK_MODELS_DIR.is_dir()
        else []
    )


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A folder path as given, or the folder of the book model of that name."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in book_model_names():
        return BOOK_MODELS_DIR / str(name_or_path)
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a model folder nor a book model (book models: {book_model_names()})"
    )


def load(
    name_or_path: str | Path,
    tokenizer: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[MiniMindForCausalLM, Tokenizer]:
    """(model in eval mode, tokenizer) from a folder or a book model's name; checks they fit each other."""
    folder = resolve_model_dir(name_or_path)
    model = MiniMindForCausalLM.from_pretrained(folder, map_location=device, dtype=dtype)
    tok = load_tokenizer(tokenizer or folder)
    tok.check_model(model.config)
    return model, tok


class TextStreamer:
    """Prints the text of the new tokens as they come. Byte-level BPE can split one character over
    several tokens, so text ending in an incomplete character (U+FFFD) waits for the next token."""

    def __init__(self, tokenizer: Tokenizer, file=None):
        self.tokenizer, self.file = tokenizer, file or sys.stdout
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, column: torch.Tensor) -> None:
        self.ids.append(int(column[0]))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.file.write(text[self.printed :])
            self.file.flush()
            self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        self.file.write(text[self.printed :] + "\n")
        self.file.flush()


def generate_text(
    model: MiniMindForCausalLM,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    streamer=None,
    seed: int | None = None,
    **sampling,
) -> str:
    """The continuation of ``prompt`` (bos is prepended, as in training); ``sampling`` goes to ``model.generate``."""
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(prompt)]], device=next(model.parameters()).device)
    accepted = inspect.signature(model.generate).parameters
    unknown = [k for k, v in sampling.items() if k not in accepted and v not in (None, 1.0)]
    if unknown:
        raise ValueError(f"this version of MiniMindForCausalLM.generate does not accept {unknown}")
    kwargs = {k: v for k, v in sampling.items() if k in accepted}
    if seed is not None:
        kwargs["generator"] = torch.Generator(device=ids.device).manual_seed(seed)
    out = model.generate(ids, max_new_tokens=max_new_tokens, streamer=streamer, **kwargs)
    return tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m minimind_ref.generate",
        description="Continue a prompt with a MiniMind, streaming the text as it is generated.",
        epilog='Example: python -m minimind_ref.generate dense "Return the number of" --max-new-tokens 60',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "model",
        help=f"a model folder (config.json, weights, tokenizer.json) or a book model: "
        f"{', '.join(book_model_names()) or 'dense, moe'}",
    )
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one in the model folder)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--sample", action="store_true", help="sample (with the knobs below) instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.8, help="with --sample: divide the logits by this")
    p.add_argument("--top-k", type=int, help="with --sample: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, help="with --sample: keep the smallest set holding this probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens")
    p.add_argument("--seed", type=int, default=0, help="with --sample: seed of the sampler")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    model, tok = load(args.model, args.tokenizer, args.device)
    streamer = TextStreamer(tok)
    sys.stdout.write(args.prompt)
    generate_text(
        model,
        tok,
        args.prompt,
        args.max_new_tokens,
        streamer=streamer,
        seed=args.seed if args.sample else None,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )
    streamer.end()


if __name__ == "__main__":
    sys.exit(main())
