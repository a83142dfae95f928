"""``{minimind-diagram}``: the landing page's map of MiniMind, drawn from the model itself.

The boxes are not typed in: ``minimind_ref.lab.assembly.module_flow`` runs one forward pass of
``MiniMindForCausalLM(MiniMindConfig())`` (and of the ``use_moe=True`` variant) with hooks and returns
the modules in the order they are called, with their classes and parameter counts. This module lays
them out as an inline SVG (the model's outer modules on the first row, the inside of one block on
the second, with its residual stream) and makes every box a link to the chapter that teaches its
class, so the picture is also the book's table of contents. A module class with no chapter is drawn
without a link; a chapter not yet in the table of contents is not linked either.

The SVG is plain markup (no script): it reads the same offline, in both themes (colours are
translucent fills under the theme's text colour) and scales with the column (``viewBox``).
"""

from __future__ import annotations

from html import escape

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

#: The chapter that teaches each module class (and the RoPE tag inside attention).
CHAPTER_OF = {
    "RMSNorm": "chapters/01_rmsnorm",
    "RoPE": "chapters/02_rope",
    "Attention": "chapters/03_attention",
    "FeedForward": "chapters/04_swiglu_ffn",
    "MoEFeedForward": "chapters/05_moe",
    "Embedding": "chapters/06_minimind",
    "MiniMindBlock": "chapters/06_minimind",
    "Linear": "chapters/06_minimind",
}
#: One hue per chapter (the Okabe-Ito palette, readable by colour-blind readers).
HUE = {
    "chapters/01_rmsnorm": "#56B4E9",
    "chapters/02_rope": "#F0E442",
    "chapters/03_attention": "#E69F00",
    "chapters/04_swiglu_ffn": "#009E73",
    "chapters/05_moe": "#CC79A7",
    "chapters/06_minimind": "#999999",
}
CHAR_W = 7.4  # px per character of 13-px text: boxes are sized from their text
BOX_H = 58
GAP = 26


def flow_rows(use_moe: bool) -> list[dict]:
    """``module_flow`` of MiniMind's default configuration (dense or MoE) on a 4-token input; the
    ``lm_head`` row gets ``tied``: whether it is the embedding's matrix."""
    import torch

    from minimind_ref import MiniMindConfig, MiniMindForCausalLM
    from minimind_ref.lab.assembly import module_flow

    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(use_moe=use_moe)).eval()
    rows = module_flow(model, torch.zeros(1, 4, dtype=torch.long))
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return [dict(r, tied=tied) if r["name"] == "lm_head" else r for r in rows]


def _width(*lines: str, bold_first: bool = False) -> float:
    """A box wide enough for its lines (a bold first line is about 10 % wider)."""
    widths = [len(s) * CHAR_W * (1.1 if bold_first and i == 0 else 1.0) for i, s in enumerate(lines)]
    return max(widths) + 20


def _box(x: float, y: float, row: dict, href: str | None, chapter: str | None, dashed: bool = False) -> tuple[str, float]:
    """One module as a rounded box (name, class, parameters), a link when ``href`` is given."""
    name, kind = row["name"], row["kind"]
    where = f"Ch. {int(chapter.split('/')[-1][:2])}" if chapter else ""
    params = "tied to embed_tokens" if row.get("tied") else f"{row['params']:,} params"
    if row.get("repeat", 1) > 1:
        params += " each"
    lines = (name, f"{kind}" + (f"  ·  {where}" if where else ""), params)
    w = _width(*lines, bold_first=True)
    hue = HUE.get(chapter or "", "#999999")
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    parts = [
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{BOX_H}" rx="7" fill="{hue}" '
        f'fill-opacity="0.28" stroke="{hue}" stroke-width="1.6"{dash}/>',
        f'<text x="{x + 9:.0f}" y="{y + 18:.0f}" class="mm-name">{escape(lines[0])}</text>',
        f'<text x="{x + 9:.0f}" y="{y + 35:.0f}">{escape(lines[1])}</text>',
        f'<text x="{x + 9:.0f}" y="{y + 51:.0f}">{escape(lines[2])}</text>',
    ]
    body = "".join(parts)
    if href:
        title = f"{name} ({kind}): Chapter {int(chapter.split('/')[-1][:2])}"
        body = f'<a href="{escape(href)}"><title>{escape(title)}</title>{body}</a>'
    return body, w


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" class="mm-line" marker-end="url(#mm-arrow)"/>'


def _text(x: float, y: float, s: str, cls: str = "", anchor: str = "start") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="{anchor}"{c}>{escape(s)}</text>'


def block_svg(dense: list[dict], moe: list[dict], href: dict[str, str]) -> str:
    """The SVG of the model (``dense``: ``module_flow`` rows of the dense model; ``moe``: of the MoE
    model, whose feed-forward is drawn as the alternative) with ``href[docname]`` as each box's link."""

    def link(kind: str) -> tuple[str | None, str | None]:
        doc = CHAPTER_OF.get(kind)
        return (href.get(doc), doc) if doc in href else (None, doc)

    outer = [r for r in dense if r["depth"] == 1]
    inner = [r for r in dense if r["depth"] == 2]
    moe_mlp = next(r for r in moe if r["depth"] == 2 and r["kind"] == "MoEFeedForward")
    svg: list[str] = []

    # Row 1: token ids -> the outer modules -> logits
    y1, x = 8.0, 0.0
    svg.append(_text(x, y1 + BOX_H / 2 + 4, "tokens"))
    x += 48
    block_span = (0.0, 0.0)
    for r in outer:
        svg.append(_arrow(x, y1 + BOX_H / 2, x + GAP - 4, y1 + BOX_H / 2))
        x += GAP
        label = dict(r)
        if r["repeat"] > 1:
            label["name"] = f"{r['name']}  × {r['repeat']}"
        body, w = _box(x, y1, label, *link(r["kind"]))
        svg.append(body)
        if r["repeat"] > 1:
            block_span = (x, x + w)
        x += w
    svg.append(_arrow(x, y1 + BOX_H / 2, x + GAP - 4, y1 + BOX_H / 2))
    svg.append(_text(x + GAP, y1 + BOX_H / 2 + 4, "logits"))
    width = x + GAP + 44

    # Row 2: inside one block. The residual stream runs along the bottom; each sublayer reads it
    # through its norm and adds its output back (+).
    y2, stream_y = y1 + BOX_H + 46, y1 + BOX_H + 46 + 2 * BOX_H + 38
    frame_top = y2 - 20
    x = 30.0
    plus_xs, feed_xs = [], []
    for r in inner:
        if r["kind"] == "RMSNorm":
            feed_xs.append(x + 20)
            body, w = _box(x, y2, r, *link(r["kind"]))
            svg.append(body)
            svg.append(_arrow(x + w, y2 + BOX_H / 2, x + w + GAP - 4, y2 + BOX_H / 2))
            x += w + GAP
            continue
        body, w = _box(x, y2, r, *link(r["kind"]))
        svg.append(body)
        box_right = x + w
        below = y2 + BOX_H + 6
        if r["kind"] == "Attention":  # RoPE rotates q and k inside attention: its own link
            rope_href, rope_doc = link("RoPE")
            tag = f"RoPE on q, k  ·  Ch. {int(rope_doc.split('/')[-1][:2])}"
            tw = _width(tag) - 6
            rect = (
                f'<rect x="{x:.0f}" y="{below:.0f}" width="{tw:.0f}" height="24" rx="5" fill="{HUE[rope_doc]}" '
                f'fill-opacity="0.35" stroke="{HUE[rope_doc]}" stroke-width="1.2"/>'
            )
            tag_svg = rect + _text(x + 8, below + 17, tag)
            svg.append(f'<a href="{escape(rope_href)}"><title>RoPE: Chapter 2</title>{tag_svg}</a>' if rope_href else tag_svg)
            w = max(w, tw)
        if r["kind"] in ("FeedForward", "MoEFeedForward"):  # the MoE alternative under the dense FFN
            alt = dict(moe_mlp, name="mlp (use_moe=True)")
            body, aw = _box(x, below, alt, *link(moe_mlp["kind"]), dashed=True)
            svg.append(body)
            w = max(w, aw)
        plus_x = x + w + GAP / 2
        plus_xs.append(plus_x)
        svg.append(f'<path d="M{box_right:.0f},{y2 + BOX_H / 2:.0f} H{plus_x:.0f} V{stream_y - 12:.0f}" class="mm-line" '
                   'fill="none" marker-end="url(#mm-arrow)"/>')  # fmt: skip
        x += w + GAP
    inner_width = x + 10
    # the stream, its taps into the norms and the additions
    svg.append(_arrow(10, stream_y, inner_width, stream_y))
    for fx in feed_xs:
        svg.append(_arrow(fx, stream_y, fx, y2 + BOX_H + 4))
    for px in plus_xs:
        svg.append(f'<circle cx="{px:.0f}" cy="{stream_y:.0f}" r="9" class="mm-plus"/>')
        svg.append(_text(px, stream_y + 5, "+", "mm-name", anchor="middle"))
    svg.append(_text(14, stream_y + 22, "residual stream h", "mm-small"))
    width = max(width, inner_width + 10)
    # the frame around the block's inside, joined to the block's box on row 1
    frame_bottom = stream_y + 30
    svg.append(f'<rect x="2" y="{frame_top:.0f}" width="{inner_width + 6:.0f}" height="{frame_bottom - frame_top:.0f}" '
               'rx="9" class="mm-frame"/>')  # fmt: skip
    bx = (block_span[0] + block_span[1]) / 2
    svg.append(f'<line x1="{bx:.0f}" y1="{y1 + BOX_H:.0f}" x2="{bx:.0f}" y2="{frame_top:.0f}" class="mm-frame-line"/>')
    svg.append(_text(10, frame_top - 7, "inside each block (pre-norm):", "mm-small"))

    height = frame_bottom + 4
    defs = (
        '<defs><marker id="mm-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="mm-head"/></marker></defs>'
    )
    return (
        f'<svg class="mm-diagram" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        'aria-label="MiniMind, module by module; each box links to its chapter" '
        f'xmlns="http://www.w3.org/2000/svg">{defs}{"".join(svg)}</svg>'
    )


class minimind_diagram(nodes.General, nodes.Element):
    """Placeholder: drawn at doctree-resolved, when the links from this page can be computed."""


class MiniMindDiagram(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        return [minimind_diagram()]


def _fill(app: Sphinx, doctree: nodes.document, fromdocname: str) -> None:
    placeholders = list(doctree.findall(minimind_diagram))
    if not placeholders:
        return
    found = app.env.found_docs
    href = {doc: app.builder.get_relative_uri(fromdocname, doc) for doc in set(CHAPTER_OF.values()) if doc in found}
    svg = block_svg(flow_rows(False), flow_rows(True), href)
    for node in placeholders:
        node.replace_self(nodes.raw("", f'<div class="mm-diagram-wrap">{svg}</div>', format="html"))


def setup(app: Sphinx) -> dict:
    app.add_node(minimind_diagram)
    app.add_directive("minimind-diagram", MiniMindDiagram)
    app.connect("doctree-resolved", _fill)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
