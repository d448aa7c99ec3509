"""The prompt playground the endpoint serves at ``/``: try prompts from a browser through the video-jobs API.

One self-contained page (no CDN). Each prompt becomes a job (``POST v1/videos``); its card shows the job's status and
progress, polled at the interval the server suggests (``openai-poll-after-ms``), then plays the MP4
(``GET v1/videos/{id}/content``). The server's limits and defaults are embedded so the controls never offer a value
the server would refuse; errors are shown in plain words (the message naming the field, busy, token needed).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

MAX_KEPT_RESULTS = 8


@dataclass(frozen=True, kw_only=True)
class PlaygroundSettings:
    """What the page needs to know about the server."""

    title: str
    model: str
    default_num_frames: int
    default_height: int
    default_width: int
    default_steps: int
    max_num_frames: int
    max_size: int
    max_steps: int
    frame_multiple: int
    size_multiple: int
    auth_required: bool
    max_prompt_chars: int


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
main{display:flex;gap:24px;padding:20px 24px;flex-wrap:wrap}
form{background:#fff;padding:16px;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);width:340px}
label{display:block;font-size:13px;margin:10px 0 4px}
input,textarea,select{width:100%;box-sizing:border-box;padding:6px 8px;border:1px solid #bbb;border-radius:6px}
textarea{height:80px}
button{margin-top:14px;padding:8px 16px;border:0;border-radius:6px;background:#1d2330;color:#fff;cursor:pointer}
button:disabled{opacity:.5}
#message{margin-top:10px;font-size:14px;min-height:1.2em}#message.error{color:#c62828}
#results{flex:1;display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:14px;align-content:start}
.result{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.result video{width:100%;background:#000;border-radius:4px}.result div{font-size:12px;color:#444;word-wrap:break-word}
.result progress{width:100%;height:14px}
"""

_JS = """
(function(){
  var S = JSON.parse(document.getElementById('settings').textContent);
  var form = document.getElementById('form'), msg = document.getElementById('message');
  var button = document.getElementById('generate'), results = document.getElementById('results');
  function say(text, isError){ msg.textContent = text; msg.className = isError ? 'error' : ''; }
  function headers(){
    var h = {};
    if (S.auth_required && form.token.value) h['Authorization'] = 'Bearer ' + form.token.value;
    return h;
  }
  function explain(r){
    // Errors come as {"error": {"message", "param", ...}}; Serve's own 503 is plain text.
    return r.text().then(function(text){
      var e = null;
      try { e = JSON.parse(text).error; } catch (err) { e = null; }
      var detail = e && e.message ? e.message : '';
      if (r.status === 400 || r.status === 422) return 'Invalid input: ' + (detail || 'the request was not valid');
      if (r.status === 401) return 'A valid access token is required.';
      if (r.status === 503 || r.status === 429) return 'The server is busy, please retry in a few seconds.';
      return 'The server could not take this request (HTTP ' + r.status + ')' + (detail ? ': ' + detail : '.');
    });
  }
  function addCard(job){
    var card = document.createElement('div'); card.className = 'result'; card.id = 'job-' + job.id;
    var bar = document.createElement('progress'); bar.max = 100; bar.value = 0;
    var status = document.createElement('div'); status.className = 'status';
    var caption = document.createElement('div');
    caption.textContent = job.prompt + ' \\u00b7 seed ' + job.seed + ' \\u00b7 ' + job.size + ' \\u00b7 ' +
      job.num_frames + ' frames';
    card.appendChild(bar); card.appendChild(status); card.appendChild(caption);
    card.setAttribute('data-history', '');
    results.insertBefore(card, results.firstChild);
    while (results.children.length > S.max_kept) results.removeChild(results.lastChild);
    return {card: card, bar: bar, status: status};
  }
  function show(view, job){
    view.bar.value = job.progress;
    view.status.textContent = job.status.replace('_', ' ') + ' \\u00b7 ' + job.progress + '%';
    var seen = view.card.getAttribute('data-history');
    view.card.setAttribute('data-history', (seen ? seen + ',' : '') + job.status + ' ' + job.progress);
  }
  function play(view, job, started){
    return fetch('v1/videos/' + job.id + '/content', {headers: headers()}).then(function(r){
      if (!r.ok) return explain(r).then(function(text){ say(text, true); });
      return r.blob().then(function(blob){
        var seconds = ((performance.now() - started) / 1000).toFixed(2);
        var video = document.createElement('video');
        video.controls = true; video.loop = true; video.muted = true; video.autoplay = true;
        video.src = URL.createObjectURL(blob);
        view.card.replaceChild(video, view.bar);
        view.status.textContent = 'completed in ' + seconds + ' s';
        say('Done in ' + seconds + ' s.', false);
      });
    });
  }
  function poll(view, job, started, waitMs){
    setTimeout(function(){
      fetch('v1/videos/' + job.id, {headers: headers()}).then(function(r){
        if (!r.ok) return explain(r).then(function(text){ say(text, true); });
        var next = parseInt(r.headers.get('openai-poll-after-ms') || '500', 10);
        return r.json().then(function(current){
          show(view, current);
          if (current.status === 'completed') return play(view, current, started);
          if (current.status === 'failed') {
            view.status.textContent = 'failed: ' + current.error.message;
            return say('The video failed: ' + current.error.message, true);
          }
          poll(view, current, started, next);
        });
      }).catch(function(){ say('The server could not be reached.', true); });
    }, waitMs);
  }
  form.addEventListener('submit', function(ev){
    ev.preventDefault();
    var body = {
      prompt: form.prompt.value, seed: parseInt(form.seed.value, 10),
      num_frames: parseInt(form.num_frames.value, 10), height: parseInt(form.height.value, 10),
      width: parseInt(form.width.value, 10), num_inference_steps: parseInt(form.steps.value, 10)
    };
    var h = headers(); h['Content-Type'] = 'application/json';
    button.disabled = true; say('Creating the job\\u2026', false);
    var started = performance.now();
    fetch('v1/videos', {method: 'POST', headers: h, body: JSON.stringify(body)}).then(function(r){
      if (!r.ok) return explain(r).then(function(text){ say(text, true); });
      var wait = parseInt(r.headers.get('openai-poll-after-ms') || '500', 10);
      return r.json().then(function(job){
        var view = addCard(job); show(view, job);
        say('Queued as ' + job.id + '.', false);
        poll(view, job, started, wait);
      });
    }).catch(function(){ say('The server could not be reached.', true); })
      .finally(function(){ button.disabled = false; });
  });
})();
"""


def _number(name: str, label: str, value: int, *, minimum: int, maximum: int, step: int) -> str:
    return (
        f'<label for="{name}">{label}</label>'
        f'<input id="{name}" name="{name}" type="number" value="{value}" '
        f'min="{minimum}" max="{maximum}" step="{step}">'
    )


def render_playground(settings: PlaygroundSettings) -> str:
    """The whole page as a string."""
    e = html.escape
    data = {"auth_required": settings.auth_required, "max_kept": MAX_KEPT_RESULTS}
    # JSON inside <script>: escape "<" so a value can never close the tag.
    data_json = json.dumps(data).replace("<", "\\u003c")
    token = (
        '<label for="token">Access token</label><input id="token" name="token" type="password" autocomplete="off">'
        if settings.auth_required
        else ""
    )
    s = settings
    controls = (
        f'<label for="prompt">Prompt</label><textarea id="prompt" name="prompt" maxlength="{s.max_prompt_chars}" '
        "required>a red circle moving left</textarea>"
        + _number("seed", "Seed", 0, minimum=0, maximum=2**31 - 1, step=1)
        + _number("steps", "Steps", s.default_steps, minimum=1, maximum=s.max_steps, step=1)
        + _number(
            "num_frames", "Frames", s.default_num_frames, minimum=1, maximum=s.max_num_frames, step=s.frame_multiple
        )
        + _number(
            "height", "Height", s.default_height, minimum=s.size_multiple, maximum=s.max_size, step=s.size_multiple
        )
        + _number("width", "Width", s.default_width, minimum=s.size_multiple, maximum=s.max_size, step=s.size_multiple)
        + token
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(s.title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{e(s.title)}</h1><div>model {e(s.model)}</div></header><main>"
        f'<form id="form" novalidate>{controls}<button id="generate" type="submit">Generate</button>'
        '<div id="message" role="status"></div></form><div id="results"></div></main>'
        f'<script id="settings" type="application/json">{data_json}</script><script>{_JS}</script></body></html>\n'
    )
