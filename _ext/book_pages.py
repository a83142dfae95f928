"""Sphinx helpers for the book's own pages (loaded from _config.yml: sphinx.local_extensions).

* ``{chapter-overview}``: the landing page's table of chapters. Each content line is
  ``docname | title | what it shows``; a chapter whose document is in the table of contents becomes a
  link, one that is not yet written is listed as "in preparation" (so the page never links to a
  page that does not exist, and needs no edit when a chapter arrives). The reading time is computed
  from the chapter's words of prose (``reading_minutes``).
* ``{book-statistics}``: a table computed at build time, one row per chapter and a total: words of
  prose, code cells, checks (assertions), SymPy cells, figures, explorers, exercises, glued numbers and
  the run time of the notebook in this build; then the bibliography and test counts. Nothing typed by
  hand (``chapter_counts`` is tested in tests/test_book.py).
* ``{minimind3-changes}``: a table of every chapter's "What MiniMind-3 changed" box (where it is, what
  changed, its first sentence), collected from the chapters at build time, so the appendix that lists
  them cannot miss or misquote one.
* Identical scripts included twice in a page (a bug of the current stack, see ``_dedupe_assets``)
  are included once.
* Offline assets: ``mathjax_path`` and ``nb_ipywidgets_js`` point at copies served by the book
  (``make assets``). If those files are missing, warn (an error under ``-W``) and fall back to the
  CDNs, so a build without them is still a working online book and never a silently broken one.
* Explorers (``minimind_ref.lab.explorer``) are Altair charts. Altair's HTML loads Vega from a CDN
  unless the page already has it; on every page with a chart, the book loads its own copies of
  Vega, Vega-Lite and Vega-Embed first and tells Altair's loader so (``VEGA_DEBUG``), and names them
  for RequireJS where a page has it (widgets), so the charts render offline. The versions must be
  the ones the installed Altair asks for (checked at start-up).
* ``MINIMIND_BOOK_BUILD=1`` is set for the notebooks executed by the build: explorers then leave out
  their live ipywidgets sliders, which would do nothing in a page without a kernel.

Pages using the directives are re-read on every build, since what they show depends on other files.
"""

from __future__ import annotations

import json
import os
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


#: Reading pace assumed for the landing page's "Reading time" column: technical prose with formulas
#: and code to follow, about half the pace of ordinary reading.
WORDS_PER_MINUTE = 120


def reading_minutes(words: int) -> int:
    """Minutes to read ``words`` words of a chapter's prose at WORDS_PER_MINUTE, to the nearest 5."""
    return max(5, 5 * round(words / WORDS_PER_MINUTE / 5))


class ChapterOverview(SphinxDirective):
    has_content = True

    def run(self) -> list[nodes.Node]:
        _track(self.env, self.env.docname)
        rows = ["| # | Chapter | What it shows | Reading time |", "|---|---|---|---|"]
        for number, line in enumerate((ln for ln in self.content if ln.strip()), start=1):
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3:
                raise self.error(f"chapter-overview: expected 'docname | title | insight', got {line!r}")
            docname, title, insight = parts
            path = _source(self.env, docname)
            if path is not None:
                self.env.note_dependency(str(path))
                cell = f"{{doc}}`{title} </{docname}>`"
                words = chapter_counts(path)["words"] if path.suffix == ".ipynb" else 0
                minutes = f"{reading_minutes(words)} min" if words else "–"
            else:
                cell, minutes = f"{title} *(in preparation)*", "–"
            rows.append(f"| {number} | {cell} | {insight} | {minutes} |")
        rows += [
            "",
            f"The reading time counts each chapter's prose at {WORDS_PER_MINUTE} words a minute, the pace of "
            "technical text read with its formulas and code; running its notebook takes about a minute more "
            "(the table at the end of this page gives each chapter's run time in this build).",
        ]
        container = nodes.container(classes=["chapter-overview"])
        self.state.nested_parse(StringList(rows, source=self.env.docname), self.content_offset, container)
        return [container]


ASSERT_CALLS = {
    "assert_close",
    "assert_allclose",
    "assert_equal",
    "check_expr",
    "check_gradient",
    "check_jacobian",
    "gradcheck",
}
FENCE = re.compile(r"^(`{3,}|:{3,})(.*)$")
PROSE_DIRECTIVES = re.compile(
    r"^\{(admonition|note|tip|warning|important|caution|attention|hint|seealso|exercise|solution|epigraph|topic|sidebar|margin|dropdown)"
)
ROLE = re.compile(r"\{[a-z:]+\}`[^`]*`")


def _prose_words(markdown: str) -> int:
    """Words of prose in a Markdown cell: math, code blocks, directive options and roles left out;
    the bodies of prose directives (admonitions, exercises, solutions) counted."""
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", " ", markdown, flags=re.S)
    kept, skipping = [], None
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if skipping is not None:
            if fence and fence.group(1) == skipping:
                skipping = None
            continue
        if fence:
            info = fence.group(2).strip()
            if info and not PROSE_DIRECTIVES.match(info):
                skipping = fence.group(1)  # code, math or another non-prose block: skip to its closing fence
            elif info:
                kept.append(re.sub(r"^\{[^}]*\}", "", info))  # a prose directive's title (exercise, box)
            continue
        if re.match(r"^\s*:[a-z-]+:", line):  # a directive option
            continue
        kept.append(line)
    text = ROLE.sub(" N ", "\n".join(kept))
    text = re.sub(r"`[^`]*`|https?://\S+|<[^>]+>", " ", text)
    return len(WORD.findall(text))


def _assertions(code: str) -> int:
    """assert statements and calls of checking functions (assert_close, check_gradient, ...)."""
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:  # IPython magics
        tree = ast.parse("\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!"))))
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            count += 1
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            count += name in ASSERT_CALLS
    return count


def chapter_counts(path: Path) -> dict[str, int]:
    """What a chapter notebook holds, counted from its cells (its figures and run time are counted from
    the build: see ``_fill_statistics``)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    counts = {"words": 0, "code": 0, "assertions": 0, "sympy": 0, "explorers": 0, "exercises": 0, "glued": 0}
    for cell in nb.get("cells", []):
        text = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "code":
            counts["code"] += 1
            counts["assertions"] += _assertions(text)
            counts["sympy"] += bool(re.search(r"\b(sp|sympy)\.", text))
            counts["explorers"] += len(re.findall(r"(?m)^\s*(?:\w+\s*=\s*)?explorer\(", text))
        elif cell.get("cell_type") == "markdown":
            counts["words"] += _prose_words(text)
            counts["exercises"] += len(EXERCISE.findall(text))
            counts["glued"] += len(GLUE_USE.findall(text))
    return counts


class statistics_table(nodes.General, nodes.Element):
    """Placeholder for the statistics table: filled in once every chapter has been read and executed."""


class BookStatistics(SphinxDirective):
    """Counts computed from the sources of the book at build time, per chapter and in all."""

    option_spec = {"planned": int}

    def run(self) -> list[nodes.Node]:
        _track(self.env, self.env.docname)
        root = Path(self.env.srcdir)
        for docname in sorted(d for d in self.env.found_docs if d.startswith("chapters/")):
            self.env.note_dependency(str(_source(self.env, docname)))
        for p in [root / "references.bib", *sorted((root / "tests").glob("test_*.py"))]:
            if p.exists():
                self.env.note_dependency(str(p))
        return [statistics_table(planned=self.options.get("planned"))]


def _figures_in(doctree: nodes.Node) -> int:
    """Figures a chapter shows: images (matplotlib) and explorers (Vega-Lite charts)."""
    images = len(list(doctree.findall(nodes.image)))
    charts = sum(node.astext().count("altair-viz-") // 2 for node in doctree.findall(nodes.raw))
    return images + charts


def _fill_statistics(app: Sphinx, doctree: nodes.document, fromdocname: str) -> None:
    from myst_nb.sphinx_ import NbMetadataCollector

    env = app.env
    for placeholder in list(doctree.findall(statistics_table)):
        root = Path(env.srcdir)
        chapters = sorted(d for d in env.found_docs if d.startswith("chapters/"))
        columns = [
            ("Chapter", None),
            ("Words", "words"),
            ("Code cells", "code"),
            ("Checks", "assertions"),
            ("SymPy cells", "sympy"),
            ("Figures", "figures"),
            ("Explorers", "explorers"),
            ("Exercises", "exercises"),
            ("Glued numbers", "glued"),
            ("Run time (s)", "runtime"),
        ]
        rows, totals = [], dict.fromkeys([k for _, k in columns if k], 0.0)
        for docname in chapters:
            path = _source(env, docname)
            counts = dict(chapter_counts(path)) if path.suffix == ".ipynb" else {}
            counts["figures"] = _figures_in(env.get_doctree(docname))
            exec_data = NbMetadataCollector.get_exec_data(env, docname) or {}
            counts["runtime"] = exec_data.get("runtime") or 0.0
            for key in totals:
                totals[key] += counts.get(key, 0)
            title = env.titles[docname].astext() if docname in env.titles else docname
            rows.append((docname, title.split(":")[0], counts))  # "RMSNorm: normalising ..." -> "RMSNorm"
        bib = root / "references.bib"
        n_refs = len(re.findall(r"^\s*@\w+\s*\{", bib.read_text(encoding="utf-8"), re.M)) if bib.exists() else 0
        n_tests = sum(len(TEST_FUNC.findall(p.read_text(encoding="utf-8"))) for p in (root / "tests").glob("test_*.py"))

        def fmt(key, value):
            return f"{value:,.0f}" if key != "runtime" else (f"{value:.0f}" if value else "–")

        body = []
        for docname, title, counts in rows:
            link = nodes.reference("", title, internal=True, refuri=app.builder.get_relative_uri(fromdocname, docname))
            body.append([nodes.paragraph("", "", link)] + [fmt(k, counts.get(k, 0)) for _, k in columns[1:]])
        total_label = nodes.paragraph("", "", nodes.strong(text="All chapters"))
        body.append([total_label] + [fmt(k, totals[k]) for _, k in columns[1:]])
        table = _table([name for name, _ in columns], body)

        planned = placeholder.get("planned")
        written = f"{len(chapters)} of {planned}" if planned else f"{len(chapters)}"
        summary = nodes.paragraph(
            text=f"Chapters written: {written}. Works in the bibliography: {n_refs:,}. "
            f"Test functions in tests/ (parametrised cases counted once): {n_tests:,}. "
            "Checks are assert statements and checking calls (assert_close, check_gradient, ...) in the "
            "code cells; figures are the matplotlib figures and explorers a chapter shows; the run time is "
            "that of this build's execution of the notebook."
        )
        container = nodes.container(classes=["book-statistics"])
        container += table
        container += summary
        placeholder.replace_self(container)


M3_TITLE = "What MiniMind-3 changed"


class minimind3_table(nodes.General, nodes.Element):
    """Placeholder for the table of the chapters' "What MiniMind-3 changed" boxes (filled when all are read)."""


class MiniMind3Changes(SphinxDirective):
    """``:what: boxes`` (default): one row per "What MiniMind-3 changed" box of the chapters (where it is,
    its title, its first sentence); ``:what: config``: the configuration fields in which MiniMind2's defaults
    and ``MiniMindConfig.minimind3()`` differ, read from minimind_ref."""

    option_spec = {"what": lambda arg: arg.strip() if arg.strip() in ("boxes", "config") else None}

    def run(self) -> list[nodes.Node]:
        _track(self.env, self.env.docname)
        what = self.options.get("what") or "boxes"
        for docname in sorted(d for d in self.env.found_docs if d.startswith("chapters/")):
            self.env.note_dependency(str(_source(self.env, docname)))
        return [minimind3_table(what=what)]


def minimind3_boxes(env) -> list[dict]:
    """The chapters' boxes titled "What MiniMind-3 changed...": chapter, section (id, title), box title, text."""
    boxes = []
    for docname in sorted(d for d in env.found_docs if d.startswith("chapters/")):
        doctree = env.get_doctree(docname)
        for admonition in doctree.findall(nodes.admonition):
            titles = list(admonition.findall(nodes.title))
            title = titles[0].astext() if titles else ""
            if not title.startswith(M3_TITLE):
                continue
            section = admonition.parent
            while section is not None and not isinstance(section, nodes.section):
                section = section.parent
            body = " ".join(p.astext() for p in admonition.findall(nodes.paragraph) if p not in titles)
            first = re.split(r"(?<=[.!?])\s+", body.strip(), maxsplit=1)[0] if body.strip() else ""
            boxes.append(
                {
                    "docname": docname,
                    "chapter": (env.titles[docname].astext() if docname in env.titles else docname).split(":")[0],
                    "anchor": section["ids"][0] if section is not None and section["ids"] else "",
                    "section": section[0].astext() if section is not None else "",
                    "title": title.removeprefix(M3_TITLE).lstrip(" :-–"),
                    "first": first,
                }
            )
    return boxes


def _table(columns: list[str], rows: list[list]) -> nodes.table:
    """A docutils table; a cell is a string or a node."""
    table = nodes.table()
    group = nodes.tgroup(cols=len(columns))
    table += group
    for _ in columns:
        group += nodes.colspec(colwidth=1)

    def row(cells):
        r = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += cell if isinstance(cell, nodes.Node) else nodes.paragraph(text=str(cell))
            r += entry
        return r

    head = nodes.thead()
    head += row(columns)
    group += head
    body = nodes.tbody()
    for cells in rows:
        body += row(cells)
    group += body
    return table


def minimind3_config_rows() -> list[list[str]]:
    """The configuration fields whose values differ between MiniMind2's defaults and the MiniMind-3 preset,
    dense and MoE: [field, MiniMind2, MiniMind-3 dense, MiniMind2 MoE, MiniMind-3 MoE]."""
    from minimind_ref import MiniMindConfig

    configs = [
        MiniMindConfig().to_dict(),
        MiniMindConfig.minimind3(use_moe=False).to_dict(),
        MiniMindConfig(use_moe=True).to_dict(),
        MiniMindConfig.minimind3(use_moe=True).to_dict(),
    ]
    fields = sorted({k for c in configs for k in c})
    rows = []
    for field in fields:
        values = [c.get(field) for c in configs]
        if values[0] != values[1] or values[2] != values[3]:
            rows.append([f"{field}"] + [json.dumps(v) if not isinstance(v, str) else v for v in values])
    return rows


def _fill_minimind3(app: Sphinx, doctree: nodes.document, fromdocname: str) -> None:
    for placeholder in list(doctree.findall(minimind3_table)):
        if placeholder.get("what") == "config":
            columns = ["Field", "MiniMind2", "MiniMind-3", "MiniMind2 MoE", "MiniMind-3 MoE"]
            container = nodes.container(classes=["minimind3-config"])
            container += _table(columns, minimind3_config_rows())
            placeholder.replace_self(container)
            continue
        rows = []
        for box in minimind3_boxes(app.env):
            uri = app.builder.get_relative_uri(fromdocname, box["docname"]) + (
                f"#{box['anchor']}" if box["anchor"] else ""
            )
            where = nodes.paragraph(
                "", "", nodes.reference("", f"{box['chapter']}, {box['section']}", internal=True, refuri=uri)
            )
            rows.append([where, box["title"], box["first"]])
        if rows:
            replacement = nodes.container(classes=["minimind3-changes"])
            replacement += _table(["Where", "What changed", "In short"], rows)
        else:
            replacement = nodes.paragraph(text='No chapter has a "What MiniMind-3 changed" box yet.')
        placeholder.replace_self(replacement)


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


VEGA_FILES = ("offline/vega/vega.min.js", "offline/vega/vega-lite.min.js", "offline/vega/vega-embed.min.js")
VEGA_MARKERS = ("altair-viz-", "vega-embed")


def _altair_versions() -> dict[str, str] | None:
    """The versions Altair's HTML asks for: {"vega": "6", "vega-lite": "6.4.1", "vega-embed": "7"}."""
    try:
        import altair as alt
    except ImportError:
        return None
    return {"vega": alt.VEGA_VERSION, "vega-lite": alt.VEGALITE_VERSION, "vega-embed": alt.VEGAEMBED_VERSION}


def _check_vega_assets(app: Sphinx, config) -> None:
    """The offline Vega files exist and have the majors the installed Altair's HTML asks for."""
    app.env_vega_ok = False  # type: ignore[attr-defined]
    wanted = _altair_versions()
    if wanted is None:
        return
    static = [Path(app.confdir) / p for p in config.html_static_path]
    versions_file = next(
        (d / "offline" / "VERSIONS.json" for d in static if (d / "offline" / "VERSIONS.json").is_file()), None
    )
    have = json.loads(versions_file.read_text()) if versions_file else {}
    missing = [f for f in VEGA_FILES if not any((d / f).is_file() for d in static)]
    if missing:
        logger.warning(
            f"offline Vega not found ({', '.join(missing)}): run `make assets`; charts will load Vega from a CDN"
        )
        return
    for name, version in wanted.items():
        got = have.get(name, {}).get("version", "")
        if got.split(".")[0] != str(version).split(".")[0]:
            logger.warning(
                f"the book serves {name}@{got or '?'} but the installed Altair asks for {name}@{version}: "
                "update the pin in scripts/fetch_assets.py"
            )
            return
    app.env_vega_ok = True  # type: ignore[attr-defined]


def _add_vega(app, pagename, templatename, context, doctree):
    """On a page with an Altair chart: the book's Vega before anything else, and the hooks Altair looks for."""
    body = context.get("body") or ""
    if not getattr(app, "env_vega_ok", False) or not any(m in body for m in VEGA_MARKERS):
        return
    wanted = _altair_versions()
    # loaded before RequireJS (priority 500), so these UMD bundles define globals, not anonymous modules
    for i, path in enumerate(VEGA_FILES):
        app.add_js_file(path, priority=300 + i)
    # Altair's loader skips a library whose VEGA_DEBUG.<name>_version equals the version it wants
    debug = {f"{k.replace('-', '')}_version": v for k, v in wanted.items()}
    app.add_js_file(
        None, body=f"var VEGA_DEBUG = Object.assign(window.VEGA_DEBUG || {{}}, {json.dumps(debug)});", priority=310
    )
    # where RequireJS is on the page, Altair asks it for "vega-embed": name the globals for it first
    app.add_js_file(
        None,
        body=(
            'if (typeof define === "function" && define.amd) {'
            ' define("vega", [], function () { return window.vega; });'
            ' define("vega-lite", [], function () { return window.vegaLite; });'
            ' define("vega-embed", [], function () { return window.vegaEmbed; }); }'
        ),
        priority=600,
    )


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


def _launch_only_in_chapters(app, pagename, templatename, context, doctree):
    """No "launch" buttons (Colab, Binder) outside chapters/: an appendix written as a MyST notebook reads the
    repository's committed files (the benchmark results) and has no set-up cell, and Colab cannot open a
    ``.md``. sphinx-book-theme adds the buttons at priority 501; this runs after it."""
    buttons = context.get("header_buttons")
    if buttons and not pagename.startswith("chapters/"):
        buttons[:] = [b for b in buttons if b.get("label") != "launch-buttons"]


def setup(app: Sphinx) -> dict:
    # notebooks executed by this build inherit it (their kernels are child processes)
    os.environ["MINIMIND_BOOK_BUILD"] = "1"
    app.add_directive("chapter-overview", ChapterOverview)
    app.add_css_file("book/book.css")  # the statistics table, the explorers' cards
    app.add_node(statistics_table)
    app.add_node(minimind3_table)
    app.add_directive("minimind3-changes", MiniMind3Changes)
    app.connect("doctree-resolved", _fill_minimind3)
    app.add_directive("book-statistics", BookStatistics)
    app.connect("doctree-resolved", _fill_statistics)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("config-inited", _check_offline_assets, priority=900)
    app.connect("config-inited", _check_vega_assets, priority=900)
    app.connect("html-page-context", _add_vega, priority=400)
    app.connect("html-page-context", _dedupe_assets, priority=900)
    app.connect("html-page-context", _launch_only_in_chapters, priority=600)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
