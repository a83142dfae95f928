"""The Colab path, without Colab.

On Colab a chapter notebook starts in a Python that has torch and the usual scientific stack but not
this book's package; its first cell installs ``minimind-ref[lab]`` from the repository. This test
rebuilds that situation: a fresh virtual environment with only torch and what Colab preinstalls
(numpy, sympy, matplotlib, ipywidgets, ipykernel, nbclient, nbformat), the notebook copied to an
empty folder (as ``/content`` on Colab, so the checkout is not importable from the working
directory), and ``MINIMIND_SOURCE`` pointing at a copy of this checkout instead of the GitHub
repository. The notebook must then run to the end.

It takes minutes (a venv, a torch install, a full notebook), hence ``slow``; ``make test-colab``
runs it, and ``make test`` too (see the README for the choice). Set ``TORCH_SPEC`` to install another
torch than ``torch==2.13.0``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
# Colab ships an older Altair (5.x) than the book builds with (6.x): the explorers must work with both
COLAB_PREINSTALLED = [
    "numpy",
    "sympy",
    "matplotlib",
    "ipywidgets",
    "altair>=5.4,<6",
    "ipykernel",
    "nbclient",
    "nbformat",
]

EXECUTE = r"""
import sys, nbformat
from pathlib import Path
from nbclient import NotebookClient
path, out = sys.argv[1], sys.argv[2]
nb = nbformat.read(path, as_version=4)
cwd = {"metadata": {"path": str(Path(path).parent)}}
client = NotebookClient(nb, timeout=900, kernel_name="python3", resources=cwd)
try:
    client.execute()
finally:
    nbformat.write(nb, out)
"""


def run(cmd, log, **kw):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    log.append(f"{time.perf_counter() - t0:6.1f} s  {' '.join(map(str, cmd))[:140]}")
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebook in chapters/ yet")
def test_first_chapter_runs_from_a_fresh_environment(tmp_path):
    notebook = CHAPTERS[0]
    log: list[str] = []
    t_start = time.perf_counter()

    # the "repository": the files a pip install of the project reads, copied so that the build
    # writes nothing into the checkout
    source = tmp_path / "minimind-textbook"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "minimind_ref", source / "minimind_ref", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )

    venv = tmp_path / "colab-venv"
    run([sys.executable, "-m", "venv", str(venv)], log)
    py = venv / "bin" / "python"
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
    run([py, "-m", "pip", "install", "-q", torch_spec], log)
    run([py, "-m", "pip", "install", "-q", *COLAB_PREINSTALLED], log)
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    probe = run([py, "-c", "import importlib.util; print(importlib.util.find_spec('minimind_ref'))"], log, cwd=content)
    assert probe.stdout.strip() == "None", "the fresh environment must not see minimind_ref before the first cell"
    shutil.copy2(notebook, content / notebook.name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "JUPYTER_PATH")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", MINIMIND_SOURCE=source.as_uri())
    executed = tmp_path / "executed.ipynb"
    run([py, "-c", EXECUTE, str(content / notebook.name), str(executed)], log, env=env, cwd=content, timeout=1500)

    # it really installed the package into the fresh environment, from the given source
    where = run([py, "-c", "import minimind_ref, sys; print(minimind_ref.__file__)"], log, cwd=content)
    assert str(venv) in where.stdout, f"minimind_ref imported from {where.stdout.strip()}, not the fresh venv"
    nb = nbformat.read(executed, as_version=4)  # (normalises multi-line strings)
    errors = [
        o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"
    ]
    assert not errors, f"{notebook.name}: error outputs: {[e['ename'] + ': ' + e['evalue'] for e in errors]}"
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    printed = "".join(o.get("text", "") for o in first.get("outputs", []) if o["output_type"] == "stream")
    assert "torch" in printed, f"the set-up cell did not print versions: {printed!r}"
    print(f"\nColab path for {notebook.name}: {time.perf_counter() - t_start:.0f} s\n" + "\n".join(log))
