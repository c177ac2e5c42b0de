"""The review page (`out/review/index.html`): a pure function from records to HTML.

Everything shown comes from the manifest, the cache's records and the provider's messages,
so every string is user text: it is HTML-escaped here, in one place, and never reaches the
page's script (the script is a constant, allowed by its hash in the page's CSP). The page
links only files beside it: it opens from disk, a CI artifact or a static host, offline.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from html import escape

RENDERED, CACHED, FAILED, MISSING = "rendered", "cached", "failed", "missing"
STATUS_WORDS = {
    RENDERED: "rendered in the last run",
    CACHED: "cached",
    FAILED: "failed",
    MISSING: "not yet rendered",
}


@dataclass(frozen=True)
class Take:
    node: str  # shots.NAME or shots.NAME.takeN
    number: int
    picked: bool
    status: str  # RENDERED | CACHED | FAILED | MISSING
    pick_command: str
    message: str = ""  # the provider's message (failed) or why it is not rendered yet
    clip: str | None = None  # a path relative to the page
    poster: str | None = None
    seconds_taken: float | None = None  # wall time of the render
    cost_usd: float | None = None


@dataclass(frozen=True)
class Shot:
    name: str
    prompt: str
    backend: str
    model: str
    seconds: float
    in_cut: bool
    takes: list[Take]


@dataclass(frozen=True)
class LastRun:
    finished: str  # ISO time
    rendered: list[str]
    failed: list[str]
    skipped: list[str]
    spend_usd: float


@dataclass(frozen=True)
class Page:
    title: str
    manifest: str  # the manifest's path as the page names it
    film: str | None  # the film's file, relative to the page
    film_note: str  # what the film is ("the current cut", "an earlier cut: ...")
    shots: list[Shot]
    spend_by_backend: dict[str, float] = field(default_factory=dict)
    last_run: LastRun | None = None


STYLE = """
:root { color-scheme: dark; --bg: #111214; --panel: #1a1c1f; --line: #2a2d31;
  --text: #d6d3cc; --dim: #8c8a85; --accent: #d9a55b; --bad: #e07a6f; --good: #7fb48a; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
a { color: var(--accent); }
:focus-visible { outline: 2px solid var(--accent); outline-offset: 3px; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: var(--panel); padding: .5rem; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 1rem 1.5rem; }
h1 { font-weight: 500; letter-spacing: .02em; margin: .5rem 0; }
h2 { font-weight: 500; font-size: 1.1rem; margin: 0 0 .5rem; }
.film video { width: 100%; max-height: 70vh; background: #000; border-radius: 4px; }
.dim { color: var(--dim); }
.shot { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 1rem; margin: 1rem 0; }
.shot:focus { outline: 2px solid var(--accent); }
.takes { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr));
  gap: 1rem; margin: .75rem 0; }
.take { border: 1px solid var(--line); border-radius: 4px; padding: .5rem; }
.take.picked { border-color: var(--accent); }
.take video, .take img { width: 100%; aspect-ratio: 16 / 9; background: #000;
  object-fit: contain; display: block; }
.empty { width: 100%; aspect-ratio: 16 / 9; background: #0b0c0d; display: grid;
  place-items: center; color: var(--dim); }
.badge { font-size: .8rem; padding: 0 .4rem; border-radius: 3px; border: 1px solid; }
.status-failed { color: var(--bad); } .status-rendered { color: var(--good); }
.status-cached, .status-missing { color: var(--dim); }
.pick { color: var(--accent); }
.message { color: var(--bad); white-space: pre-wrap; overflow-wrap: anywhere; }
code, pre { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #0d0e10; padding: .75rem; }
table { border-collapse: collapse; } td, th { padding: .2rem 1rem .2rem 0; text-align: left; }
"""

# Keyboard: j / k (or n / p) move between shots; the film and every clip are native
# <video controls> (Tab, Space), prompts are <details> (Enter).
SCRIPT = """
document.addEventListener("keydown", function (e) {
  if (e.altKey || e.ctrlKey || e.metaKey || /INPUT|TEXTAREA/.test(e.target.tagName)) return;
  var step = { j: 1, n: 1, k: -1, p: -1 }[e.key];
  if (!step) return;
  var shots = Array.prototype.slice.call(document.querySelectorAll(".shot"));
  var at = shots.indexOf(document.activeElement.closest(".shot"));
  var next = shots[Math.min(shots.length - 1, Math.max(0, at + step))];
  if (next) { next.focus(); e.preventDefault(); }
});
"""


def _csp() -> str:
    """Only files beside the page, and only this page's own style and script."""

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    return (
        "default-src 'none'; img-src 'self' file:; media-src 'self' file:; "
        f"style-src 'sha256-{digest(STYLE)}'; script-src 'sha256-{digest(SCRIPT)}'"
    )


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _money(usd: float | None) -> str:
    return "" if usd is None else f"${usd:.2f}"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return "under 1 s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def build(page: Page) -> str:
    """The whole page, as text."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(page.title)}: review</title>",
        f"<style>{STYLE}</style></head><body>",
        '<a class="skip" href="#shots">Skip to the shots</a>',
        f"<header><h1>{_e(page.title)}</h1>",
        f'<p class="dim">{_e(page.manifest)}</p></header>',
        "<main>",
        _film(page),
        _summary(page),
        f'<section id="shots" aria-label="Shots"><h2>Shots ({len(page.shots)})</h2>',
        '<p class="dim">Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous shot; '
        "<kbd>Tab</kbd> to a clip, <kbd>Space</kbd> to play.</p>",
        *(_shot(shot) for shot in page.shots),
        "</section></main>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _film(page: Page) -> str:
    if page.film is None:
        return f'<section class="film"><p class="dim">{_e(page.film_note)}</p></section>'
    return (
        '<section class="film" aria-label="The film">'
        f'<video id="film" controls preload="metadata" src="{_e(page.film)}"></video>'
        f'<p class="dim">{_e(page.film_note)}</p></section>'
    )


def _summary(page: Page) -> str:
    rows = "".join(
        f"<tr><td>{_e(backend)}</td><td>{_money(usd)}</td></tr>"
        for backend, usd in sorted(page.spend_by_backend.items())
    )
    total = sum(page.spend_by_backend.values())
    out = [
        '<section class="summary" aria-label="Summary"><h2>Spend</h2>',
        f"<table><tr><th>backend</th><th>the takes shown</th></tr>{rows}",
        f"<tr><th>total</th><th>{_money(total)}</th></tr></table>",
    ]
    run = page.last_run
    if run is None:
        out.append('<p class="dim">No render has run on this machine yet.</p>')
    else:
        changed = ", ".join(run.rendered) or "nothing"
        out.append(
            f"<h2>The last run</h2><p>{_e(run.finished)}: rendered {_e(changed)}; "
            f"spent {_money(run.spend_usd)}.</p>"
        )
        if run.failed:
            out.append(f'<p class="message">Failed: {_e(", ".join(run.failed))}</p>')
        if run.skipped:
            out.append(f'<p class="dim">Not rendered: {_e(", ".join(run.skipped))}</p>')
    out.append("</section>")
    return "\n".join(out)


def _shot(shot: Shot) -> str:
    cut = "" if shot.in_cut else ' <span class="dim">(not in the cut)</span>'
    return "\n".join(
        [
            f'<article class="shot" tabindex="-1" id="shot-{_e(shot.name)}" '
            f'aria-label="Shot {_e(shot.name)}">',
            f"<h2>{_e(shot.name)}{cut}</h2>",
            f'<p class="dim">{_e(shot.backend)} · {_e(shot.model)} · {shot.seconds:g} s</p>',
            '<div class="takes">',
            *(_take(shot, take) for take in shot.takes),
            "</div>",
            f"<details><summary>Prompt</summary><pre>{_e(shot.prompt)}</pre></details>",
            "</article>",
        ]
    )


def _take(shot: Shot, take: Take) -> str:
    label = f"{shot.name}, take {take.number}"
    if take.clip is not None:
        poster = f' poster="{_e(take.poster)}"' if take.poster else ""
        media = (
            f'<video controls preload="none"{poster} src="{_e(take.clip)}" '
            f'aria-label="{_e(label)}"></video>'
        )
    elif take.poster is not None:
        media = f'<img src="{_e(take.poster)}" alt="{_e(label)}">'
    else:
        media = f'<div class="empty">{_e(STATUS_WORDS[take.status])}</div>'
    picked = ' <span class="badge pick">picked</span>' if take.picked else ""
    facts = [_e(STATUS_WORDS[take.status]), _took(take.seconds_taken), _money(take.cost_usd)]
    lines = [
        f'<div class="take{" picked" if take.picked else ""}" data-node="{_e(take.node)}">',
        media,
        f"<p><strong>Take {take.number}</strong>{picked}</p>",
        f'<p class="status-{_e(take.status)}">{" · ".join(f for f in facts if f)}</p>',
    ]
    if take.message:
        css = "message" if take.status == FAILED else "dim"
        lines.append(f'<p class="{css}">{_e(take.message)}</p>')
    if not take.picked:
        lines.append(f"<p><code>{_e(take.pick_command)}</code></p>")
    lines.append("</div>")
    return "\n".join(lines)
