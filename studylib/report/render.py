"""A report page as data (Section, Block) and its two renderings: self-contained HTML (figures
embedded as base64, coloured verdicts, a table of contents with anchors, the lead blocks on the
first screen) and its Markdown twin. pages.py builds the sections; this module only draws them.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Block:
    """A figure (png file name), a table, a paragraph, or a line of links, with its caption.

    `meta`: facts about a figure that the page records as data-* attributes of its <figure>
    (the heatmap's row order, the arm panels' x-limits), for a reader's script or a test.
    `chart`: an interactive chart's HTML (charts.py), shown in the HTML page in place of the
    PNG, which stays for the Markdown twin. `links`: (label, URL) pairs, into the MLflow UI.
    """

    caption: str = ""
    png: str | None = None
    table: pd.DataFrame | None = None
    text: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    chart: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)
    lead: bool = False  # shown above the contents, on the page's first screen


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


VERDICTS = ("supported", "contradicted", "inconclusive", "not measured")
EMPTY_TABLE = "No rows: nothing in the tracking store for this table."


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _markdown_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = [
        "| "
        + " | ".join((f"[open]({v})" if _is_url(v) else _fmt(v).replace("|", "\\|")) for v in row)
        + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def _links_markdown(links: list[tuple[str, str]]) -> str:
    return " · ".join(f"[{label}]({url})" for label, url in links)


def render_markdown(
    title: str, intro: str, sections: list[Section], lead: list[Block] | None = None
) -> str:
    parts = [f"# {title}"]
    for number, block in enumerate(lead or []):
        if block.png:
            parts += [f"![{block.png}]({block.png})", f"*{block.caption}*"]
        elif block.text:
            parts.append(f"**{block.text}**" if number == 0 else block.text)
        elif block.links:
            parts.append(_links_markdown(block.links))
    parts.append(intro)
    for section in sections:
        parts.append(f"## {section.title}")
        if not section.blocks:
            parts.append("Nothing to show: no runs in the tracking store for this section.")
        for block in section.blocks:
            if block.png:
                parts += [f"![{block.png}]({block.png})", f"*{block.caption}*"]
            elif block.table is not None:
                table = _markdown_table(block.table) if not block.table.empty else EMPTY_TABLE
                parts += [f"*{block.caption}*", table]
            elif block.text:
                parts.append(block.text)
            elif block.links:
                parts.append(_links_markdown(block.links))
    return "\n\n".join(parts) + "\n"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:1.5em auto;padding:0 1em;"
    "color:#222;line-height:1.45}h1{font-size:1.6em;margin-bottom:.2em}"
    "h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}"
    "table{border-collapse:collapse;font-size:13px;margin-bottom:.5em}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "th{background:#f3f3f3}img{max-width:100%}figure{margin:0 0 1em 0}"
    ".caption{font-size:13px;color:#555;margin-bottom:1.5em}.table-wrap{overflow-x:auto}"
    ".verdict-supported{background:#e3f4e1;color:#1b6e20;font-weight:600}"
    ".verdict-contradicted{background:#fbe3e1;color:#a4201b;font-weight:600}"
    ".verdict-inconclusive{background:#f0f0f0;color:#555}"
    ".verdict-not-measured{color:#999;font-style:italic}"
    ".lead{font-size:1.15em;background:#f6f8fa;border-left:4px solid #2c7be5;padding:.6em .9em}"
    "nav.toc{font-size:14px;background:#fafafa;border:1px solid #eee;padding:.4em 1em}"
    "nav.toc ol{margin:.3em 0;padding-left:1.4em}.links a{margin-right:1.2em}"
    ".top{font-size:13px}.chart{margin-bottom:.4em}"
    ".warning{background:#fff6e0;border-left:4px solid #e0a800;padding:.3em .8em}"
)


def _html_cell(value) -> str:
    if _is_url(value):
        return f"<td><a href='{html.escape(value)}'>open</a></td>"
    text = _fmt(value)
    if text in VERDICTS:
        return f"<td class='verdict-{text.replace(' ', '-')}'>{html.escape(text)}</td>"
    numeric = isinstance(value, int | float) or bool(
        re.fullmatch(r"[+-]?[\d.]+(e[+-]?\d+)?( \[.*\]| \+/- .*| \(n=\d+\))?", text)
    )
    cls = " class='num'" if numeric and not isinstance(value, bool) else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _html_table(df: pd.DataFrame) -> str:
    """Text left-aligned, numbers right-aligned, verdicts coloured, URLs as links."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(_html_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _links_html(links: list[tuple[str, str]]) -> str:
    return (
        "<p class='links'>"
        + "".join(f"<a href='{html.escape(url)}'>{html.escape(label)}</a>" for label, url in links)
        + "</p>"
    )


def render_html(
    title: str,
    intro: str,
    sections: list[Section],
    folder: Path,
    home: str | None = None,
    lead: list[Block] | None = None,
) -> str:
    """The page: title, the lead (the answer: summary sentence and figure), a table of
    contents, then every section under an anchor. `home`: the landing page's relative URL."""
    body = []
    if home:
        body.append(f"<p class='top'><a href='{html.escape(home)}'>&larr; all reports</a></p>")
    body.append(f"<h1>{html.escape(title)}</h1>")
    for number, block in enumerate(lead or []):
        body.append(_block_html(block, folder, lead=number == 0))
    body.append(f"<p>{html.escape(intro)}</p>")
    toc = "".join(f"<li><a href='#{s.anchor}'>{html.escape(s.title)}</a></li>" for s in sections)
    body.append(f"<nav class='toc'><strong>Contents</strong><ol>{toc}</ol></nav>")
    for section in sections:
        body.append(f"<h2 id='{section.anchor}'>{html.escape(section.title)}</h2>")
        if not section.blocks:
            body.append("<p>Nothing to show: no runs in the tracking store for this section.</p>")
        body += [_block_html(block, folder) for block in section.blocks]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


def _figure_html(block: Block, folder: Path) -> str:
    data = base64.b64encode((folder / block.png).read_bytes()).decode()
    meta = "".join(f" data-{key}='{html.escape(value)}'" for key, value in block.meta.items())
    return (
        f"<figure data-png='{html.escape(block.png)}'{meta}><img "
        f"alt='{html.escape(block.png)}' src='data:image/png;base64,{data}'>"
        f"<figcaption class='caption'>{html.escape(block.caption)}</figcaption></figure>"
    )


def _block_html(block: Block, folder: Path, lead: bool = False) -> str:
    caption = f"<div class='caption'>{html.escape(block.caption)}</div>"
    if block.chart:
        static = (
            f"<details><summary>static figure</summary>{_figure_html(block, folder)}</details>"
            if block.png
            else ""
        )
        return f"<div class='chart'>{block.chart}</div>{caption}{static}"
    if block.png:
        return _figure_html(block, folder)
    if block.table is not None:
        if block.table.empty:
            return f"<p>{html.escape(EMPTY_TABLE)}</p>{caption}"
        return f"<div class='table-wrap'>{_html_table(block.table)}</div>{caption}"
    if block.text:
        cls = (
            " class='lead'"
            if lead
            else (" class='warning'" if block.text.startswith("Warning:") else "")
        )
        return f"<p{cls}>{html.escape(block.text)}</p>"
    if block.links:
        return _links_html(block.links)
    return ""
