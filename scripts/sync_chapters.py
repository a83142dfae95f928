#!/usr/bin/env python3
"""Keep each chapter's notebook in step with its source.

A chapter's source is the MyST Markdown notebook ``chapters/NN_name.md`` (jupytext ``md:myst``); the
paired ``chapters/NN_name.ipynb`` is generated from it and is what Colab opens, nbmake runs and the
book builds. This script writes every ``.ipynb`` from its ``.md``:

* the notebook's cells are the ``.md``'s cells (sources, tags and other cell options);
* cell ids are kept from the existing ``.ipynb`` (jupytext's ``--update``), so a regeneration does not
  churn them; a new cell gets a new id;
* outputs and execution counts are dropped, the kernelspec is ``python3``.

Usage::

    python scripts/sync_chapters.py             # write chapters/*.ipynb from chapters/*.md
    python scripts/sync_chapters.py --check     # exit 1, naming the files, if any pair is out of sync
    python scripts/sync_chapters.py chapters/02_rope.md   # only these
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def chapter_sources(paths: list[str] | None = None) -> list[Path]:
    """The chapter sources: ``chapters/NN_*.md`` (README.md and other pages are not notebooks)."""
    if paths:
        return [Path(p).with_suffix(".md") for p in paths]
    return sorted(p for p in (ROOT / "chapters").glob("[0-9][0-9]_*.md"))


def notebook_from_source(md: Path, existing: nbformat.NotebookNode | None) -> nbformat.NotebookNode:
    """The notebook the ``.md`` defines, with the ids of ``existing`` where its cells match."""
    nb = jupytext.read(md)
    if existing is not None:
        # jupytext's --update: take the new inputs, keep the old notebook's ids (and outputs,
        # which are cleared below)
        from jupytext.combine import combine_inputs_with_outputs

        nb = combine_inputs_with_outputs(nb, existing)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,md:myst"
    nb.metadata["jupytext"].pop("text_representation", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nbformat.validator.normalize(nb)
    return nb


def comparable(nb: nbformat.NotebookNode) -> list[tuple]:
    """What must agree between the two files: each cell's type, source and metadata."""
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="chapter sources (.md) or notebooks (default: all chapters)")
    parser.add_argument("--check", action="store_true", help="only report pairs that are out of sync")
    args = parser.parse_args(argv)
    stale = []
    for md in chapter_sources(args.paths):
        if not md.exists():
            print(f"sync_chapters: {md} does not exist", file=sys.stderr)
            return 2
        ipynb = md.with_suffix(".ipynb")
        existing = nbformat.read(ipynb, as_version=4) if ipynb.exists() else None
        nb = notebook_from_source(md, existing)
        if existing is not None and comparable(nb) == comparable(existing) and nb.metadata == existing.metadata:
            if not args.check and any(c.get("outputs") for c in existing.cells if c.cell_type == "code"):
                nbformat.write(nb, ipynb)  # same inputs, outputs present: strip them
            continue
        if args.check:
            stale.append(md)
            continue
        nbformat.write(nb, ipynb)
        print(f"sync_chapters: wrote {_shown(ipynb)}")
    if stale:
        names = ", ".join(_shown(p) for p in stale)
        print(
            f"sync_chapters: out of sync with their .ipynb: {names}\n"
            "  edit the .md (the source), then run `make sync` to regenerate the notebooks",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
