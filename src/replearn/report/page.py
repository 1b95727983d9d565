"""The report's HTML page: escaping, tables, sections, and the one page with its inline style and
scripts. Nothing here reaches the network: a Content-Security-Policy allows only inline scripts and
styles and ``data:`` images, and a first script records every script error, failed load and policy
violation into ``#page-errors`` (what a reader, and the tests' headless browser, see)."""

from __future__ import annotations

import base64
import html
import json

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

# Runs first, before any other script or image: errors of the page itself, in capture phase so a
# failed <img>/<script> load (which does not bubble) is seen too.
ERROR_RECORDER = """
window.pageErrors = [];
(function () {
  function show() {
    var el = document.getElementById('page-errors');
    if (el) { el.textContent = window.pageErrors.join('\\n'); el.hidden = window.pageErrors.length === 0; }
  }
  function note(msg) { window.pageErrors.push(msg); show(); }
  addEventListener('error', function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) note('failed to load ' + (t.src || t.href));
    else note('script error: ' + (e.message || 'unknown') + (e.lineno ? ' (line ' + e.lineno + ')' : ''));
  }, true);
  addEventListener('unhandledrejection', function (e) { note('unhandled rejection: ' + e.reason); });
  addEventListener('securitypolicyviolation', function (e) { note('blocked by the page policy: ' + e.blockedURI); });
  var consoleError = console.error;
  console.error = function () { note('console error: ' + Array.prototype.join.call(arguments, ' ')); consoleError.apply(console, arguments); };
  addEventListener('DOMContentLoaded', show);
})();
"""

# The map: a thumbnail under the pointer, and a legend entry that highlights its class.
MAP_SCRIPT = """
(function () {
  var svg = document.getElementById('map-svg');
  if (!svg) return;
  var info = JSON.parse(document.getElementById('map-data').textContent);
  var tip = document.getElementById('map-tip'), pic = tip.querySelector('.sprite'), cap = tip.querySelector('.cap');
  var zoom = info.zoom, t = info.tile * zoom;
  pic.style.width = pic.style.height = t + 'px';
  pic.style.backgroundSize = (info.cols * t) + 'px auto';
  svg.addEventListener('mouseover', function (e) {
    var i = e.target.getAttribute('data-id');
    if (i === null) return;
    i = +i;
    pic.style.backgroundPosition = (-(i % info.cols) * t) + 'px ' + (-Math.floor(i / info.cols) * t) + 'px';
    var label = +e.target.getAttribute('data-label');
    cap.textContent = (label >= 0 ? info.names[label] : 'no label') + ' \\u00b7 ' + info.ids[i];
    tip.hidden = false;
  });
  svg.addEventListener('mousemove', function (e) {
    tip.style.left = (e.pageX + 14) + 'px'; tip.style.top = (e.pageY + 14) + 'px';
  });
  svg.addEventListener('mouseout', function (e) { if (e.target.hasAttribute('data-id')) tip.hidden = true; });
  var points = svg.querySelectorAll('circle[data-id]');
  document.querySelectorAll('#map-legend [data-label]').forEach(function (item) {
    item.addEventListener('mouseenter', function () {
      var l = item.getAttribute('data-label');
      points.forEach(function (p) { p.style.opacity = p.getAttribute('data-label') === l ? 1 : 0.08; });
    });
    item.addEventListener('mouseleave', function () { points.forEach(function (p) { p.style.opacity = ''; }); });
  });
  svg.setAttribute('data-ready', 'yes');  // the script ran to its end
})();
"""

STYLE = """
:root { --ink: #1d2329; --muted: #5f6b76; --line: #dde3e8; --bg: #f4f6f8; --good: #1a7f37; --bad: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 20px 24px 60px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .path { color: var(--muted); margin-bottom: 12px; }
nav { margin: 8px 0 0; }
nav a { margin-right: 14px; color: #0b5cad; text-decoration: none; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px 18px; margin: 18px 0; }
section h2 { margin: 0 0 10px; font-size: 18px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 6px 18px; }
.facts div { border-bottom: 1px solid var(--line); padding: 3px 0; }
.facts b { display: block; font-weight: 600; color: var(--muted); font-size: 12px; }
.note { color: var(--muted); }
.todo { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
code { background: var(--bg); padding: 1px 4px; border-radius: 3px; }
pre { background: var(--bg); padding: 10px; overflow: auto; max-height: 420px; }
table { border-collapse: collapse; }
td, th { padding: 3px 9px; border-bottom: 1px solid var(--line); text-align: right; }
th { background: var(--bg); font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
tr.this td { font-weight: 600; }
table.kv td, table.kv th { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.charts svg, .charts .missing { border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.charts .missing { width: 360px; height: 210px; display: flex; align-items: center; justify-content: center; color: var(--muted); }
svg text { font: 11px system-ui, sans-serif; fill: var(--ink); }
svg .axis { stroke: #9aa5ae; stroke-width: 1; }
svg .grid { stroke: #edf0f2; stroke-width: 1; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
#map-svg { width: 660px; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
#map-svg circle { stroke: #fff; stroke-width: 0.4; }
#map-legend { list-style: none; padding: 0; margin: 0; columns: 1; }
#map-legend li { padding: 2px 6px; cursor: default; border-radius: 4px; }
#map-legend li:hover { background: var(--bg); }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin-right: 6px; vertical-align: -1px; }
#map-tip { position: absolute; background: #fff; border: 1px solid #9aa5ae; border-radius: 6px; padding: 6px; box-shadow: 0 2px 8px rgba(0,0,0,.2); pointer-events: none; max-width: 260px; }
#map-tip .cap { font-size: 12px; margin-top: 4px; word-break: break-all; }
.sprite { image-rendering: pixelated; background-repeat: no-repeat; }
.nn-row { display: flex; align-items: flex-start; gap: 6px; margin: 6px 0 12px; }
.nn-row figure { margin: 0; text-align: center; font-size: 11px; width: 84px; }
.nn-row figure .sprite { margin: 0 auto; border: 3px solid transparent; border-radius: 3px; }
.nn-row figure.query .sprite { border-color: #0b5cad; }
.nn-row figure.right .sprite { border-color: var(--good); }
.nn-row figure.wrong .sprite { border-color: var(--bad); }
.nn-row .arrow { align-self: center; color: var(--muted); font-size: 20px; padding: 0 6px; }
.right figcaption { color: var(--good); }
.wrong figcaption { color: var(--bad); }
figcaption { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.confusion td { text-align: center; min-width: 34px; font-variant-numeric: tabular-nums; }
.confusion th.pred { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding: 6px 3px; }
.bar { display: inline-block; height: 10px; background: #4c8bc9; border-radius: 2px; vertical-align: middle; }
.pictures figure { margin: 0 0 16px; }
.pictures img { image-rendering: pixelated; border: 1px solid var(--line); max-width: 100%; }
#page-errors { background: #fdecea; color: var(--bad); border: 1px solid var(--bad); }
"""


def esc(value) -> str:
    """Text (anything str() takes) escaped for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def data_uri(payload: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


class Raw(str):
    """HTML that ``table`` puts in as it is (already escaped or built here)."""


def table(head: list[str], rows: list[list], row_classes: list[str] | None = None, cls: str = "") -> str:
    """An HTML table; cells are escaped unless they are ``Raw``."""
    def cell(v, tag):
        return f"<{tag}>{v if isinstance(v, Raw) else esc(v)}</{tag}>"

    body = []
    for i, r in enumerate(rows):
        klass = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{klass}>" + "".join(cell(v, "td") for v in r) + "</tr>")
    head_html = "<tr>" + "".join(cell(h, "th") for h in head) + "</tr>" if head else ""
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{head_html}{''.join(body)}</table>"


def todo(text: str) -> str:
    """A highlighted note of what to run to fill a section (``text`` is HTML)."""
    return f'<p class="todo">{text}</p>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def page(title: str, header: str, sections: list[tuple[str, str, str]], head_extra: str = "") -> str:
    """The whole document: ``sections`` are (id, title, body HTML); ``head_extra`` goes into a
    <style> after the page's own (the thumbnails' sprite sheet)."""
    nav = "<nav>" + "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in sections) + "</nav>"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<script>{ERROR_RECORDER}</script>",
        f"<style>{STYLE}{head_extra}</style>",
        "</head><body><main>",
        f"<header>{header}{nav}</header>",
        *(section(sid, t, body) for sid, t, body in sections),
        '<pre id="page-errors" hidden></pre>',
        "</main>",
        f"<script>{MAP_SCRIPT}</script>",
        "</body></html>",
        "",
    ])


def json_script(sid: str, value) -> str:
    """A JSON value for the page's scripts, safe inside <script> (no ``</`` can close it)."""
    text = json.dumps(value, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{sid}">{text}</script>'
