"""Generate chapters/01_rmsnorm.ipynb (the notebook is the source of truth; this script wrote it).

Run: .venv/bin/python scripts/build_ch01.py  -> writes the notebook without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from ch01_cells import CELLS  # noqa: E402


def main() -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, src, tags in CELLS:
        src = src.strip("\n")
        cell = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    out = ROOT / "chapters" / "01_rmsnorm.ipynb"
    nbf.validate(nb)
    nbf.write(nb, out)
    print(f"wrote {out} ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
