"""`runner pick SHOT N`: choose the take that goes into the film, in film.toml itself.

The manifest is the user's file: tomlkit edits the one value and keeps every comment, blank
line and the order of keys. The next render re-cuts the edit; no take renders again.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from runner.cache.store import write_atomic
from runner.errors import UserError


def pick(manifest: Path, shot: str, number: str) -> int:
    """Set `pick = number` on [shots.SHOT]; returns the number. Validated against the
    manifest as loaded (the shot exists; the take does) before a byte is written."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    from runner.film import manifest as manifest_module

    loaded = manifest_module.load(manifest)  # a broken manifest is reported as always
    if shot not in loaded.shots:
        names = sorted(loaded.shots)
        close = difflib.get_close_matches(shot, names, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise UserError(f"{manifest}: no shot named `{shot}`{hint} (shots: {', '.join(names)})")
    takes = loaded.shots[shot].takes
    try:
        n = int(number)
    except ValueError:
        n = 0
    if not 1 <= n <= takes or str(n) != number.strip():
        if takes == 1:
            fix = f"it has one take; set `takes = 2` (or more) on [shots.{shot}] to render others"
        else:
            fix = f"it has takes = {takes}: pick a number from 1 to {takes}"
        raise UserError(f"{manifest}: shots.{shot}: no take {number!r}; {fix}")
    try:
        doc = tomlkit.parse(manifest.read_text(encoding="utf-8"))
        table: Any = doc["shots"][shot]
        table["pick"] = n
        text = tomlkit.dumps(doc)
    except (TOMLKitError, KeyError, TypeError) as err:
        raise UserError(f"{manifest}: cannot set shots.{shot}.pick: {err}") from None
    write_atomic(manifest, text.encode("utf-8"))
    return n
