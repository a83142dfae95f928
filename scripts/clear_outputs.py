#!/usr/bin/env python3
"""Clear outputs, execution counts and saved widget state of notebooks, in place.

Usage: python scripts/clear_outputs.py chapters/*.ipynb     (or: make clear-outputs)
Same effect as `jupyter nbconvert --clear-output --inplace`, plus the widget state, with nbformat only.
"""

import sys

import nbformat


def clear(path: str) -> bool:
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, path)
    return after != before


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"{'cleared' if clear(p) else 'clean  '} {p}")
