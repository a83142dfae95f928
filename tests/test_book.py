"""Structure checks of the book: what must hold before a build is even attempted.

* every file in ``_toc.yml`` exists, and every chapter notebook is in it (``only_build_toc_files``
  would silently leave it out otherwise);
* chapter notebooks are committed clean: no outputs, no execution counts, no saved widget state,
  kernelspec ``python3``, valid nbformat;
* every chapter notebook has its source, the MyST Markdown notebook ``chapters/NN_name.md``, and the
  two are in sync (``make sync``); regenerating keeps the cell ids; the code cells pass ruff with
  lines no longer than the page shows (88 characters);
* the first code cell of every chapter is the Colab set-up cell of the shared contract (tagged
  ``hide-output``, installs the project from REPO_URL or ``MINIMIND_SOURCE`` when ``minimind_ref``
  is missing, then ``show_versions()``);
* one repository URL everywhere: ``_config.yml``, ``minimind_ref.lab.REPO_URL`` and every set-up cell;
* the configuration keeps the build honest (forced execution, errors fail, offline assets);
* every ``{cite}`` key exists in ``references.bib``, which has no duplicate keys;
* (checks of the built pages live in tests/test_browser.py, which runs after the build)
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from minimind_ref.lab import REPO_URL

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
CHAPTER_IDS = [p.stem for p in CHAPTERS]


def toc_files() -> list[str]:
    files = [TOC["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in TOC.get("parts", []):
        assert part.get("chapters"), f"toc part {part.get('caption')!r} has no entries (comment it out instead)"
        walk(part["chapters"])
    walk(TOC.get("chapters"))
    return files


def source_of(docname: str) -> Path | None:
    for suffix in (".md", ".ipynb"):
        path = ROOT / f"{docname}{suffix}"
        if path.exists():
            return path
    return None


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def first_code_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


# ---- the table of contents -------------------------------------------------------------------


def test_toc_is_a_book_with_intro_root():
    assert TOC["format"] == "jb-book"
    assert TOC["root"] == "intro"


def test_every_toc_entry_exists():
    missing = [f for f in toc_files() if source_of(str(Path(f).with_suffix(""))) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_toc_has_no_duplicates():
    files = [str(Path(f).with_suffix("")) for f in toc_files()]
    assert len(files) == len(set(files)), f"duplicate toc entries: {files}"


def test_every_chapter_notebook_is_in_the_toc():
    listed = {str(Path(f).with_suffix("")) for f in toc_files()}
    orphans = [f"chapters/{p.stem}" for p in CHAPTERS if f"chapters/{p.stem}" not in listed]
    assert not orphans, f"chapter notebooks not in _toc.yml (they would not be built): {orphans}"


# ---- chapter notebooks, committed clean --------------------------------------------------------


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_notebook_is_valid_nbformat(path):
    import nbformat

    nbformat.validate(nbformat.read(path, as_version=4))


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_notebook_committed_without_outputs(path):
    nb = load(path)
    dirty = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; "
        f"clear them: jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}"
    )
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: saved widget state in the metadata; clear it"


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_notebook_kernelspec_is_python3(path):
    spec = load(path).get("metadata", {}).get("kernelspec", {})
    assert spec.get("name") == "python3", f"{path.name}: kernelspec {spec!r} (nbmake needs name 'python3')"


# ---- sources: MyST Markdown notebooks paired with the .ipynb -------------------------------------

NOTEBOOK_LINE_LENGTH = 88  # what the book's code column shows without a scroll bar


def _sync_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_chapters", ROOT / "scripts" / "sync_chapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_has_its_markdown_source(path):
    md = path.with_suffix(".md")
    assert md.exists(), f"{path.name} has no source {md.name} (chapters are written as MyST Markdown notebooks)"
    head = md.read_text(encoding="utf-8").split("---")[1]
    assert "format_name: myst" in head and "ipynb,md:myst" in head, f"{md.name}: not a paired jupytext md:myst file"


def test_every_source_has_its_notebook():
    for md in (ROOT / "chapters").glob("[0-9][0-9]_*.md"):
        assert md.with_suffix(".ipynb").exists(), f"{md.name} has no notebook: run `make sync`"


def test_sources_and_notebooks_are_in_sync():
    sync = _sync_script()
    assert sync.main(["--check"]) == 0, "a chapter's .md and .ipynb differ: edit the .md and run `make sync`"


def test_regenerating_keeps_cell_ids(tmp_path):
    """Editing a source and syncing keeps every existing cell's id; only the new cell gets a new one."""
    import nbformat

    sync = _sync_script()
    if not CHAPTERS:
        pytest.skip("no chapters yet")
    src = CHAPTERS[0]
    md, ipynb = tmp_path / src.with_suffix(".md").name, tmp_path / src.name
    md.write_text(src.with_suffix(".md").read_text(encoding="utf-8"), encoding="utf-8")
    ipynb.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    before = [c.id for c in nbformat.read(ipynb, as_version=4).cells]
    assert len(set(before)) == len(before), f"{src.name}: duplicate cell ids"
    text = md.read_text(encoding="utf-8")
    md.write_text(text + "\n```{code-cell}\nprint('a new cell')\n```\n", encoding="utf-8")
    assert sync.main([str(md)]) == 0
    after = [c.id for c in nbformat.read(ipynb, as_version=4).cells]
    assert after[: len(before)] == before and len(after) == len(before) + 1 and after[-1] not in before
    assert sync.main(["--check", str(md)]) == 0


def test_chapter_code_passes_ruff():
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed (it is in requirements.txt)")
    if not CHAPTERS:
        pytest.skip("no chapters yet")
    proc = subprocess.run(
        [ruff, "check", "--no-cache", f"--line-length={NOTEBOOK_LINE_LENGTH}", *map(str, CHAPTERS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"ruff found problems in the chapters' code cells:\n{proc.stdout}{proc.stderr}"


# ---- the Colab set-up cell ---------------------------------------------------------------------


def setup_cell_repo_url(source: str) -> str | None:
    """The string assigned to REPO_URL in a cell (None if there is none)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "REPO_URL" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return None


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_first_cell_is_the_setup_cell(path):
    cell = first_code_cell(load(path))
    source = "".join(cell["source"])
    assert "hide-output" in cell.get("metadata", {}).get("tags", []), f"{path.name}: first cell not tagged hide-output"
    assert setup_cell_repo_url(source) == REPO_URL, f"{path.name}: first cell's REPO_URL is not {REPO_URL}"
    for needle in ('find_spec("minimind_ref")', "MINIMIND_SOURCE", "pip", "install", "show_versions()"):
        assert needle in source, f"{path.name}: the set-up cell lacks {needle!r} (see the set-up cell contract)"
    # self-contained: it must run before the package exists, so it may import only the standard
    # library until the install has happened
    before_install = source.split("subprocess.run")[0]
    assert "minimind_ref." not in before_install.replace('find_spec("minimind_ref")', ""), (
        f"{path.name}: the set-up cell uses minimind_ref before installing it"
    )


def test_repository_url_agrees_everywhere():
    assert CONFIG["repository"]["url"] == REPO_URL
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["html"]["use_repository_button"] is True


# ---- the configuration keeps the build honest ----------------------------------------------------


def test_build_configuration():
    assert CONFIG["only_build_toc_files"] is True
    assert {".*", "**/.*", "_build"} <= set(CONFIG["exclude_patterns"])
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "force", "the cache does not see changes in minimind_ref"
    assert execute["allow_errors"] is False
    assert 60 <= execute["timeout"] <= 600
    sphinx = CONFIG["sphinx"]
    assert "sphinx_exercise" in sphinx["extra_extensions"]
    assert sphinx["config"]["nb_execution_raise_on_error"] is True
    assert CONFIG["bibtex_bibfiles"] == ["references.bib"]


def test_offline_assets_are_relative_and_not_in_underscore_static():
    cfg = CONFIG["sphinx"]["config"]
    paths = [cfg["mathjax_path"], *cfg["nb_ipywidgets_js"]]
    for p in paths:
        assert "://" not in p and not p.startswith("/"), f"{p}: must be relative to _static to work on any host"
    # everything under <book>/_static is injected into every page: bulky assets live elsewhere
    assert "_static" not in cfg["html_static_path"]
    assert (ROOT / "_static_book" / "book" / "widgets-setup.js").exists()


# ---- citations ---------------------------------------------------------------------------------

CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
LITERAL = re.compile(r"``.*?``|```.*?```", re.S)  # code spans and fences show citations, not make them


def bib_keys() -> list[str]:
    return re.findall(r"^\s*@\w+\s*\{\s*([^,\s]+)\s*,", (ROOT / "references.bib").read_text(encoding="utf-8"), re.M)


def test_bibliography_parses_without_duplicates():
    from pybtex.database import parse_file

    keys = bib_keys()
    assert len(keys) == len(set(keys)), (
        f"duplicate keys in references.bib: {sorted(k for k in keys if keys.count(k) > 1)}"
    )
    data = parse_file(str(ROOT / "references.bib"))
    assert set(data.entries) == set(keys)
    # references.bib merges as a union (.gitattributes): a merge can lose an entry's closing brace, which
    # the parser may swallow silently into the next entry
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    for chunk in re.split(r"(?m)^(?=@)", text):
        if chunk.startswith("@"):
            assert chunk.count("{") == chunk.count("}"), f"unbalanced braces in {chunk.splitlines()[0]!r}"
    for key, entry in data.entries.items():
        assert "title" in entry.fields and "year" in entry.fields, f"{key}: needs a title and a year"
        assert entry.persons.get("author"), f"{key}: needs authors"


def test_every_citation_exists():
    keys = set(bib_keys())
    texts = {}
    for docname in toc_files():
        path = source_of(str(Path(docname).with_suffix("")))
        if path is None:
            continue
        if path.suffix == ".ipynb":
            texts[path.name] = "\n".join(
                "".join(c["source"]) for c in load(path)["cells"] if c["cell_type"] == "markdown"
            )
        else:
            texts[path.name] = path.read_text(encoding="utf-8")
    unknown = {
        name: sorted({k.strip() for m in CITE.findall(LITERAL.sub("", text)) for k in m.split(",")} - keys)
        for name, text in texts.items()
    }
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, f"cited but not in references.bib: {unknown}"


# ---- the statistics table of the landing page -----------------------------------------------------


def _book_pages():
    import importlib.util

    spec = importlib.util.spec_from_file_location("book_pages", ROOT / "_ext" / "book_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prose_word_count_skips_code_math_and_options():
    bp = _book_pages()
    md = (
        "Two words $x^2 + y$ and {glue:text}`name:.2f` here.\n\n$$\na = b\n$$\n\n"
        "```python\nignored = 1\n```\n\n```{admonition} Box title words\n:class: warning\nInside the box.\n```\n"
    )
    # Two words and N here (5) + Box title words (3) + Inside the box (3)
    assert bp._prose_words(md) == 11


def test_statistics_change_when_a_chapter_changes(tmp_path):
    """The landing page's table is computed from the chapters: editing one changes it."""
    import nbformat

    bp = _book_pages()
    if not CHAPTERS:
        pytest.skip("no chapters yet")
    before = bp.chapter_counts(CHAPTERS[0])
    assert before["words"] > 1000 and before["code"] > 10 and before["assertions"] > 10
    nb = nbformat.read(CHAPTERS[0], as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("Eight more words of prose for the count."))
    nb.cells.append(nbformat.v4.new_code_cell("e = sp.Symbol('e')\nassert e == e\ntorch.testing.assert_close(x, x)"))
    nb.cells.append(nbformat.v4.new_markdown_cell("```{exercise} New\n:label: ex-new\nDo it.\n```"))
    nb.cells.append(nbformat.v4.new_code_cell("explorer(f, {'a': [1, 2]}, draw, title='t')"))
    changed = tmp_path / CHAPTERS[0].name
    nbformat.write(nb, changed)
    after = bp.chapter_counts(changed)
    assert after["words"] - before["words"] == 8 + 1 + 2  # the exercise's title "New" and body "Do it" count
    assert after["code"] - before["code"] == 2
    assert after["assertions"] - before["assertions"] == 2
    assert after["sympy"] - before["sympy"] == 1
    assert after["exercises"] - before["exercises"] == 1
    assert after["explorers"] - before["explorers"] == 1


# ---- the MiniMind-3 appendix ----------------------------------------------------------------------


def test_minimind3_config_table_is_read_from_the_library():
    rows = {r[0]: r[1:] for r in _book_pages().minimind3_config_rows()}
    assert rows["qk_norm"] == ["false", "true", "false", "true"]
    assert "hidden_size" in rows and "n_shared_experts" in rows
    assert "vocab_size" not in rows  # equal fields are left out


# ---- the landing page -----------------------------------------------------------------------------


def _ext_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reading_time_grows_with_the_words():
    bp = _book_pages()
    assert bp.reading_minutes(0) == 5  # never "0 min"
    assert bp.reading_minutes(6000) == 5 * round(6000 / bp.WORDS_PER_MINUTE / 5)
    assert bp.reading_minutes(6000) > bp.reading_minutes(3000)


def test_minimind_diagram_is_drawn_from_the_model_and_links_every_chapter():
    """The landing page's diagram: well-formed SVG, the modules' real parameter counts, one link per
    chapter that exists, and no link to a chapter that does not."""
    import xml.etree.ElementTree as ET

    import torch

    from minimind_ref import MiniMindConfig, MiniMindForCausalLM

    bd = _ext_module("block_diagram")
    dense, moe = bd.flow_rows(False), bd.flow_rows(True)
    href = {doc: f"{doc}.html" for doc in set(bd.CHAPTER_OF.values())}
    svg = bd.block_svg(dense, moe, href)
    root = ET.fromstring(svg)
    links = {a.get("href") for a in root.iter("{http://www.w3.org/2000/svg}a")}
    assert links == set(href.values())
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig())
    block = model.model.layers[0]
    for module in (block.self_attn, block.mlp, model.model.embed_tokens):
        assert f"{sum(p.numel() for p in module.parameters()):,} params" in svg
    moe_mlp = MiniMindForCausalLM(MiniMindConfig(use_moe=True)).model.layers[0].mlp
    assert f"{sum(p.numel() for p in moe_mlp.parameters()):,} params" in svg
    assert f"× {MiniMindConfig().num_hidden_layers}<" in svg and "tied to embed_tokens" in svg
    partial = bd.block_svg(dense, moe, {k: v for k, v in href.items() if "05_moe" not in k})
    assert "05_moe" not in partial and "MoEFeedForward" in partial


def test_landing_page_reaches_every_chapter_from_the_guides_and_the_corrections():
    """Every chapter of the table of contents is linked from the reading guides and has its
    corrected claim, linked to the section that measures it."""
    intro = (ROOT / "intro.md").read_text(encoding="utf-8")
    guides = intro[intro.index("## Reading guides") : intro.index("## How to read this book")]
    corrections = intro[intro.index("### What each chapter corrects") : intro.index("## Reading guides")]
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    chapters = [c["file"] for part in toc["parts"] for c in part["chapters"] if c["file"].startswith("chapters/")]
    assert chapters
    for doc in chapters:
        assert f"<{doc}>" in guides or f"({doc}.ipynb#" in guides, f"{doc} missing from the reading guides"
        assert f"({doc}.ipynb#" in corrections, f"{doc} has no linked correction on the landing page"
        assert f"{doc}.ipynb::" in corrections, f"{doc}'s correction has no number glued from the chapter"
