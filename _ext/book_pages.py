"""Sphinx helpers for the book's own pages (loaded from _config.yml: sphinx.local_extensions).

* ``{chapter-overview}``: the landing page's table of chapters. Each content line is
  ``docname | title | key insight``; a chapter whose document is in the table of contents becomes a
  link, one that is not yet written is listed as "in preparation" (so the page never links to a
  page that does not exist, and needs no edit when a chapter arrives).
* ``{book-statistics}``: counts computed from the sources at build time (chapters written, words of
  prose, code cells, exercises, glued numbers, bibliography entries, unit tests); nothing typed by hand.
* Identical scripts included twice in a page (a bug of the current stack, see ``_dedupe_assets``)
  are included once.
* Offline assets: ``mathjax_path`` and ``nb_ipywidgets_js`` point at copies served by the book
  (``make assets``). If those files are missing, warn (an error under ``-W``) and fall back to the
  CDNs, so a build without them is still a working online book and never a silently broken one.

Pages using the directives are re-read on every build, since what they show depends on other files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

CDN_MATHJAX = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
CDN_WIDGETS = {
    "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js": {},
    "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.6/dist/embed-amd.js": {
        "data-jupyter-widgets-cdn": "https://cdn.jsdelivr.net/npm/",
    },
}
EXERCISE = re.compile(r"^\s*(```+|:::+)\{exercise\}", re.M)
GLUE_USE = re.compile(r"\{glue(?::[a-z]+)?\}`|```+\{glue(?::[a-z]+)?\}")
WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
TEST_FUNC = re.compile(r"^\s*(?:async\s+)?def test_\w+", re.M)


def _track(env, docname: str) -> None:
    if not hasattr(env, "book_pages_docs"):
        env.book_pages_docs = set()
    env.book_pages_docs.add(docname)


def _source(env, docname: str) -> Path | None:
    """The source file of a document in the table of contents (None if it is not there)."""
    if docname not in env.found_docs:
        return None
    return Path(env.doc2path(docname))


class ChapterOverview(SphinxDirective):
    has_content = True

    def run(self) -> list[nodes.Node]:
        _track(self.env, self.env.docname)
        rows = ["| # | Chapter | Key insight |", "|---|---|---|"]
        for number, line in enumerate((ln for ln in self.content if ln.strip()), start=1):
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3:
                raise self.error(f"chapter-overview: expected 'docname | title | insight', got {line!r}")
            docname, title, insight = parts
            path = _source(self.env, docname)
            if path is not None:
                self.env.note_dependency(str(path))
                cell = f"{{doc}}`{title} </{docname}>`"
            else:
                cell = f"{title} *(in preparation)*"
            rows.append(f"| {number} | {cell} | {insight} |")
        container = nodes.container(classes=["chapter-overview"])
        self.state.nested_parse(StringList(rows, source=self.env.docname), self.content_offset, container)
        return [container]


def _notebook_counts(path: Path) -> dict[str, int]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    counts = {"words": 0, "code": 0, "exercises": 0, "glued": 0}
    for cell in nb.get("cells", []):
        text = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "code":
            counts["code"] += 1
        elif cell.get("cell_type") == "markdown":
            counts["words"] += len(WORD.findall(re.sub(r"\$\$.*?\$\$|\$[^$]*\$|```.*?```", " ", text, flags=re.S)))
            counts["exercises"] += len(EXERCISE.findall(text))
            counts["glued"] += len(GLUE_USE.findall(text))
    return counts


class BookStatistics(SphinxDirective):
    """Counts computed from the sources of the book at build time."""

    option_spec = {"planned": int}

    def run(self) -> list[nodes.Node]:
        _track(self.env, self.env.docname)
        root = Path(self.env.srcdir)
        chapters = sorted(d for d in self.env.found_docs if d.startswith("chapters/"))
        totals = {"words": 0, "code": 0, "exercises": 0, "glued": 0}
        for docname in chapters:
            path = _source(self.env, docname)
            self.env.note_dependency(str(path))
            if path.suffix == ".ipynb":
                for key, value in _notebook_counts(path).items():
                    totals[key] += value
        bib = root / "references.bib"
        n_refs = len(re.findall(r"^\s*@\w+\s*\{", bib.read_text(encoding="utf-8"), re.M)) if bib.exists() else 0
        test_files = sorted((root / "tests").glob("test_*.py"))
        n_tests = sum(len(TEST_FUNC.findall(p.read_text(encoding="utf-8"))) for p in test_files)
        for p in [bib, *test_files]:
            if p.exists():
                self.env.note_dependency(str(p))
        planned = self.options.get("planned")
        written = f"{len(chapters)} of {planned}" if planned else f"{len(chapters)}"
        rows = [
            "| Quantity | Count |",
            "|---|---|",
            f"| Chapters written | {written} |",
            f"| Words of prose in the chapters | {totals['words']:,} |",
            f"| Code cells (all executed when the book is built) | {totals['code']:,} |",
            f"| Numbers in the text computed by the notebooks (`glue`) | {totals['glued']:,} |",
            f"| Exercises with solutions | {totals['exercises']:,} |",
            f"| Works in the bibliography | {n_refs:,} |",
            f"| Test functions in `tests/` (parametrised cases counted once) | {n_tests:,} |",
        ]
        container = nodes.container(classes=["book-statistics"])
        self.state.nested_parse(StringList(rows, source=self.env.docname), self.content_offset, container)
        return [container]


def _always_reread(app, env, added, changed, removed):
    return sorted(getattr(env, "book_pages_docs", set()) - set(removed))


def _purge(app, env, docname):
    getattr(env, "book_pages_docs", set()).discard(docname)


def _merge(app, env, docnames, other):
    if not hasattr(env, "book_pages_docs"):
        env.book_pages_docs = set()
    env.book_pages_docs |= getattr(other, "book_pages_docs", set())


def _check_offline_assets(app: Sphinx, config) -> None:
    """Relative asset paths must exist in html_static_path; otherwise warn and use the CDNs."""
    static_dirs = [Path(app.confdir) / p for p in config.html_static_path]

    def present(rel: str) -> bool:
        return "://" in rel or any((d / rel).is_file() for d in static_dirs)

    hint = (
        "run `make assets` (needs npm; see scripts/fetch_assets.py) so that the book works offline; "
        "falling back to the public CDNs"
    )
    if not present(config.mathjax_path):
        logger.warning(f"offline MathJax not found at _static/{config.mathjax_path}: {hint}")
        config.mathjax_path = CDN_MATHJAX
    widgets = getattr(config, "nb_ipywidgets_js", None) or {}
    missing = [p for p in widgets if not present(p)]
    if missing:
        logger.warning(f"offline widget manager not found ({', '.join(missing)}): {hint}")
        config.nb_ipywidgets_js = dict(CDN_WIDGETS)


def _dedupe_assets(app, pagename, templatename, context, doctree):
    """Drop scripts and stylesheets that are included twice with identical attributes.

    With jupyter-book 1.0.4, Sphinx 7.4 and sphinx-thebe 0.3.1, the inline script
    ``const THEBE_JS_URL = ...`` (and sphinx-togglebutton's) lands twice in every page, and the
    second ``const`` is a SyntaxError in the console of every page. The copies are identical, so
    keeping the first one of each is exactly what was meant.
    """
    for key in ("script_files", "css_files"):
        assets = context.get(key)
        if not assets:
            continue
        seen, kept = set(), []
        for asset in assets:
            # an inline script is registered once with filename None and once with '' (the two
            # registries of Sphinx), otherwise identical
            ident = (
                str(getattr(asset, "filename", asset) or ""),
                getattr(asset, "priority", 500),
                tuple(sorted((k, str(v)) for k, v in getattr(asset, "attributes", {}).items())),
            )
            if ident not in seen:
                seen.add(ident)
                kept.append(asset)
        assets[:] = kept


def setup(app: Sphinx) -> dict:
    app.add_directive("chapter-overview", ChapterOverview)
    app.add_directive("book-statistics", BookStatistics)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("config-inited", _check_offline_assets, priority=900)
    app.connect("html-page-context", _dedupe_assets, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
