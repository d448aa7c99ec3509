"""The batch-run gallery: one self-contained ``index.html`` written next to a run's videos and results manifest.

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
    """Run totals for the header."""

    title: str
    model: str
    wall_seconds: float
    num_ok: int
    num_error: int
    num_skipped: int

    @property
    def videos_per_second(self) -> float:
        return self.num_ok / self.wall_seconds if self.wall_seconds > 0 else 0.0


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


def render_gallery(items: Sequence[GalleryItem], summary: RunSummary) -> str:
    """The whole ``index.html`` as a string (UTF-8, no external resources)."""
    e = html.escape
    totals = (
        f"<span>{summary.num_ok} ok</span><span>{summary.num_error} error</span>"
        f"<span>{summary.num_skipped} skipped</span><span>{summary.wall_seconds:.1f} s wall</span>"
        f"<span>{summary.videos_per_second:.2f} videos/s</span><span>model {e(summary.model)}</span>"
    )
    buttons = "".join(
        f'<button data-status="{s}" class="{"active" if s == "all" else ""}">{s}</button>' for s in ("all", *STATUSES)
    )
    meta = json.dumps({"count": len(items)})
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(summary.title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{e(summary.title)}</h1><div class="totals">{totals}</div></header>'
        '<div class="controls">'
        '<input id="search" type="search" placeholder="Search prompts" aria-label="Search prompts">'
        f'{buttons}<span><span id="shown">{len(items)}</span> shown</span></div>'
        f'<div class="grid" id="grid" data-meta="{e(meta)}">{"".join(_card(i) for i in items)}</div>'
        f'<div id="empty">No video matches.</div><script>{_JS}</script></body></html>\n'
    )
