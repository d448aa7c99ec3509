"""The batch-run gallery: self-contained HTML pages written next to a run's videos and ``results.parquet``.

A million-row output stays fast to open: the gallery is split into pages of a fixed number of rows (``index.html``,
``index-2.html``, ...), each with the whole output's counts, links to its neighbours and to ``results.parquet``; the
search box and status filters work within a page.

No external CDN (viewers may be offline); videos are linked relatively, so the folder can be moved or served from
S3 as it is. Every user-supplied string (prompts, ids, error messages) is HTML-escaped; the small filter script
reads only ``data-*`` attributes and never builds markup from user text.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

STATUSES = ("ok", "error", "skipped")
FIRST_PAGE = "index.html"
# Page links shown either side of the current page (plus the first and the last).
NEIGHBOUR_PAGES = 3


@dataclass(frozen=True, kw_only=True)
class GalleryItem:
    """One row of a batch run as the gallery shows it.

    Args:
        id: the row id.
        prompt: the prompt text (user text: escaped on output).
        seed: the seed used.
        status: ``ok``, ``error`` or ``skipped``.
        video_href: link to the MP4 relative to ``index.html`` (None when there is no video).
        params: generation parameters shown under the video (frames, size, steps, fps, ...).
        seconds: generation time of the video.
        error: the error message of an ``error`` row.
    """

    id: str
    prompt: str
    seed: int | None
    status: str
    video_href: str | None = None
    params: dict = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """The header: the latest run's totals and, for an output that several runs wrote, the whole output's.

    Args:
        title: page title.
        model: the model of the latest run.
        wall_seconds / num_ok / num_error / num_skipped: the latest run.
        run_id: the latest run's id.
        totals: rows per status over the whole output (``results.parquet``); None shows the run's only.
    """

    title: str
    model: str
    wall_seconds: float
    num_ok: int
    num_error: int
    num_skipped: int
    run_id: str | None = None
    totals: dict[str, int] | None = None

    @property
    def videos_per_second(self) -> float:
        return self.num_ok / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True, kw_only=True)
class Page:
    """Where a page sits: ``number`` of ``count`` (1-based), its first row (0-based) of ``num_rows``; ``num_shown``
    is how many rows all pages together show, when fewer than ``num_rows`` (the rest is in results.parquet)."""

    number: int
    count: int
    first_row: int
    num_rows: int
    num_shown: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.number <= max(self.count, 1):
            raise ValueError(f"page number must be in [1, {self.count}], got {self.number}")


def page_name(number: int) -> str:
    """The file of page ``number``: ``index.html`` for the first, ``index-<n>.html`` after it."""
    if number < 1:
        raise ValueError(f"page number must be >= 1, got {number}")
    return FIRST_PAGE if number == 1 else f"index-{number}.html"


def num_pages(num_rows: int, page_size: int) -> int:
    """Pages for ``num_rows`` rows (at least one, so an empty output still has its index.html)."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    return max(1, -(-num_rows // page_size))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:16px 24px}
header h1{margin:0 0 6px;font-size:20px}
header .totals span{margin-right:18px}
.controls{padding:12px 24px;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
.controls input{padding:6px 10px;min-width:260px;border:1px solid #bbb;border-radius:6px}
.controls button{padding:6px 12px;border:1px solid #bbb;border-radius:6px;background:#fff;cursor:pointer}
.controls button.active{background:#1d2330;color:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:16px;padding:0 24px 24px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:10px;overflow:hidden}
.card video{width:100%;border-radius:4px;background:#000}
.card .prompt{font-weight:600;margin:8px 0 4px;word-wrap:break-word}
.card .meta{font-size:12px;color:#555;word-wrap:break-word}
.card.error{border-left:4px solid #c62828}.card.skipped{border-left:4px solid #9e9e9e}
.card .errmsg{color:#c62828;font-size:13px;margin-top:6px;word-wrap:break-word}
.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;background:#e0e0e0}
.badge.ok{background:#c8e6c9}.badge.error{background:#ffcdd2}
#empty{padding:24px;color:#666;display:none}
nav.pages{padding:8px 24px;display:flex;gap:8px;align-items:center;flex-wrap:wrap;font-size:14px}
nav.pages a,nav.pages span.current{padding:3px 8px;border-radius:4px;border:1px solid #bbb;text-decoration:none}
nav.pages a{color:#1d2330}
nav.pages span.current{background:#1d2330;color:#fff}
"""

# Filtering runs on data attributes only; textContent is never parsed as HTML.
_JS = """
(function(){
  var status = 'all';
  var search = document.getElementById('search');
  var cards = Array.prototype.slice.call(document.querySelectorAll('.card'));
  var buttons = Array.prototype.slice.call(document.querySelectorAll('button[data-status]'));
  function apply(){
    var q = search.value.toLowerCase(), shown = 0;
    cards.forEach(function(c){
      var ok = (status === 'all' || c.dataset.status === status) && c.dataset.prompt.indexOf(q) !== -1;
      c.style.display = ok ? '' : 'none'; if (ok) shown++;
    });
    document.getElementById('shown').textContent = shown;
    document.getElementById('empty').style.display = shown ? 'none' : 'block';
  }
  buttons.forEach(function(b){ b.addEventListener('click', function(){
    status = b.dataset.status;
    buttons.forEach(function(x){ x.classList.toggle('active', x === b); });
    apply();
  }); });
  search.addEventListener('input', apply);
  apply();
})();
"""


def _card(item: GalleryItem) -> str:
    e = html.escape
    params = " · ".join(f"{e(str(k))} {e(str(v))}" for k, v in item.params.items())
    seconds = f" · {item.seconds:.2f} s" if item.seconds is not None else ""
    video = ""
    if item.video_href and item.status in ("ok", "skipped"):
        video = f'<video controls preload="metadata" muted loop playsinline src="{e(item.video_href)}"></video>'
    error = f'<div class="errmsg">{e(item.error)}</div>' if item.error else ""
    return (
        f'<div class="card {e(item.status)}" data-status="{e(item.status)}" data-prompt="{e(item.prompt.lower())}" '
        f'data-id="{e(item.id)}">{video}'
        f'<div class="prompt">{e(item.prompt)}</div>'
        f'<div class="meta"><span class="badge {e(item.status)}">{e(item.status)}</span> id {e(item.id)} · '
        f"seed {e(str(item.seed))}{seconds}</div>"
        f'<div class="meta">{params}</div>{error}</div>'
    )


def _totals(summary: RunSummary) -> str:
    e = html.escape
    run = (
        f"<span>{summary.num_ok} ok</span><span>{summary.num_error} error</span>"
        f"<span>{summary.num_skipped} skipped</span><span>{summary.wall_seconds:.1f} s wall</span>"
        f"<span>{summary.videos_per_second:.2f} videos/s</span><span>model {e(summary.model)}</span>"
    )
    if summary.run_id:
        run = f"<span>latest run {e(summary.run_id)}:</span>{run}"
    if summary.totals is None:
        return f'<div class="totals">{run}</div>'
    total = sum(summary.totals.values())
    # An output's rows are ok (the video exists) or error; skips belong to runs.
    output = "".join(f"<span>{summary.totals.get(s, 0)} {s}</span>" for s in ("ok", "error"))
    return (
        f'<div class="totals" id="output-totals"><span>this output: {total} rows</span>{output}</div>'
        f'<div class="totals">{run}</div>'
    )


def _nav(page: Page, num_items: int, results_href: str | None) -> str:
    """Where this page sits, links to the first, previous, neighbouring, next and last pages, and to the full table."""
    e, last = html.escape, page.count
    near = range(max(1, page.number - NEIGHBOUR_PAGES), min(last, page.number + NEIGHBOUR_PAGES) + 1)
    links, previous = [], 0
    for number in sorted({1, last, *near}):
        if number - previous > 1:
            links.append("<span>…</span>")
        if number == page.number:
            links.append(f'<span class="current" aria-current="page">{number}</span>')
        else:
            links.append(f'<a href="{page_name(number)}" data-page="{number}">{number}</a>')
        previous = number
    if page.number > 1:
        links.insert(0, f'<a href="{page_name(page.number - 1)}" rel="prev" data-page="prev">‹ previous</a>')
    if page.number < last:
        links.append(f'<a href="{page_name(page.number + 1)}" rel="next" data-page="next">next ›</a>')
    rows = f"rows {page.first_row + 1}–{page.first_row + num_items} of {page.num_rows}" if num_items else "no rows"
    if page.num_shown is not None and page.num_shown < page.num_rows:
        rows += f" (these pages show the first {page.num_shown})"
    table = f' · all rows: <a href="{e(results_href)}">{e(results_href)}</a>' if results_href else ""
    return f'<nav class="pages" aria-label="pages">page {page.number} of {last} · {rows}{table} {"".join(links)}</nav>'


def render_page(
    items: Sequence[GalleryItem], summary: RunSummary, page: Page | None = None, *, results_href: str | None = None
) -> str:
    """One gallery page as a string (UTF-8, no external resources); ``page`` None renders a single page."""
    e = html.escape
    page = page or Page(number=1, count=1, first_row=0, num_rows=len(items))
    buttons = "".join(
        f'<button data-status="{s}" class="{"active" if s == "all" else ""}">{s}</button>' for s in ("all", *STATUSES)
    )
    nav = _nav(page, len(items), results_href)
    meta = json.dumps({"count": len(items), "page": page.number, "pages": page.count, "rows": page.num_rows})
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(summary.title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{e(summary.title)}</h1>{_totals(summary)}</header>{nav}"
        '<div class="controls">'
        '<input id="search" type="search" placeholder="Search prompts on this page" aria-label="Search prompts">'
        f'{buttons}<span><span id="shown">{len(items)}</span> shown</span></div>'
        f'<div class="grid" id="grid" data-meta="{e(meta)}">{"".join(_card(i) for i in items)}</div>'
        f'<div id="empty">No video matches.</div>{nav}<script>{_JS}</script></body></html>\n'
    )


def render_gallery(items: Sequence[GalleryItem], summary: RunSummary) -> str:
    """A single-page gallery of ``items`` (small runs, tests); the batch job writes pages with :func:`render_page`."""
    return render_page(items, summary)
