"""`runner lint`: the prompting guides' craft, as warnings (never errors).

Each finding names the key it is about and how to fix it. Pure: what was rendered comes in
as a number of takes per shot, so the checks are tested with plain manifests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from runner.film import compose
from runner.film.manifest import Manifest, Shot

WORDS_PER_SECOND = 2.5
"""What a line can carry and still be lip-synced: about 150 words a minute, the pace of calm
speech (the guides: "a 4-second shot accommodates one or two brief exchanges")."""

_TO = r"\s*(?:-|–|—|to)\s*"
_SECONDS = re.compile(
    rf"^\s*(?:at\s+)?(?:\d+(?:\.\d+)?\s*(?:s|secs?|seconds)?{_TO})?(\d+(?:\.\d+)?)\s*"
    r"(?:s|secs?|seconds)\b",
    re.IGNORECASE,
)
_TIMECODE = re.compile(
    rf"^\s*(?:at\s+)?(?:\d+:\d\d(?:\.\d+)?{_TO})?(\d+):(\d\d(?:\.\d+)?)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Finding:
    where: str  # the key path, e.g. "shots.river.actions[2]"
    message: str  # what is wrong, then how to fix it

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def beat_end(action: str) -> float | None:
    """When a timed beat ends, in seconds ("0-2s: ..." -> 2.0, "at 3s" -> 3.0, "00:02-00:04"
    -> 4.0); None for an untimed one."""
    match = _SECONDS.match(action)
    if match:
        return float(match[1])
    match = _TIMECODE.match(action)
    if match:
        return int(match[1]) * 60 + float(match[2])
    return None  # untimed, or a count ("3 birds take off"), not a time


def lint(
    manifest: Manifest, profile: str | None = None, rendered: Mapping[str, int] | None = None
) -> list[Finding]:
    """Every finding, shot by shot in manifest order. `rendered`: shot -> takes rendered."""
    found: list[Finding] = []
    for name, character in manifest.characters.items():
        if not character.description.strip():
            found.append(
                Finding(
                    f"characters.{name}.description",
                    "empty, so every shot that casts them describes no one; say how they "
                    "look (age, hair, clothes), the same words for every shot",
                )
            )
    for shot_id, shot in manifest.shots.items():
        seconds = compose.resolve(manifest, shot_id, profile).seconds
        found += _shot(manifest, shot_id, shot, seconds, (rendered or {}).get(shot_id, 0))
    return found


def _shot(manifest: Manifest, sid: str, shot: Shot, seconds: float, rendered: int) -> list[Finding]:
    where = f"shots.{sid}"
    found: list[Finding] = []
    if shot.remix is None and shot.prompt is None:
        if not shot.camera:
            found.append(
                Finding(
                    f"{where}.camera",
                    'no camera line; add one: framing, lens, movement (camera = "Medium '
                    'close-up, 50mm, slow push-in")',
                )
            )
        if not shot.lighting:
            found.append(
                Finding(
                    f"{where}.lighting",
                    'no lighting line; add one: key, fill, sources (lighting = "Soft blue '
                    'dusk fill, warm lantern key")',
                )
            )
    for i, action in enumerate(shot.actions):
        end = beat_end(action)
        if end is not None and end > seconds + 1e-9:
            found.append(
                Finding(
                    f"{where}.actions[{i}]",
                    f"the beat ends at {end:g} s, past the shot's {seconds:g} s; retime the "
                    f"beats to fit in {seconds:g} s, or set seconds = {math.ceil(end)} "
                    "(or split the shot in two)",
                )
            )
    words = sum(len(d.line.split()) for d in shot.dialogue)
    if words > seconds * WORDS_PER_SECOND:
        need = math.ceil(words / WORDS_PER_SECOND)
        found.append(
            Finding(
                f"{where}.dialogue",
                f"{words} words take about {words / WORDS_PER_SECOND:.1f} s to say "
                f"({WORDS_PER_SECOND:g} words a second), more than the shot's {seconds:g} s; "
                f"cut the lines to {math.floor(seconds * WORDS_PER_SECOND)} words or fewer, "
                f"or set seconds = {need}",
            )
        )
    for i, line in enumerate(shot.dialogue):
        if line.who not in manifest.characters:
            found.append(
                Finding(
                    f"{where}.dialogue[{i}].who",
                    f"`{line.who}` speaks but is never described; declare [characters."
                    f'{line.who}] with description = "..." and add them to cast',
                )
            )
        elif line.who not in shot.cast and shot.prompt is None:
            cast = ", ".join(f'"{c}"' for c in [*shot.cast, line.who])
            found.append(
                Finding(
                    f"{where}.dialogue[{i}].who",
                    f"`{line.who}` speaks but is not cast, so the shot never describes them; "
                    f"add them: cast = [{cast}]",
                )
            )
    if shot.prompt is not None:
        for i, who in enumerate(shot.cast):
            character = manifest.characters.get(who)
            if character and character.description.strip() not in shot.prompt:
                found.append(
                    Finding(
                        f"{where}.cast[{i}]",
                        f"`{who}` is cast, but a raw prompt gets no character anchor and "
                        f"this one never describes them; paste [characters.{who}] "
                        "description into the prompt, or use scene (which adds it)",
                    )
                )
    if shot.takes > 1 and "pick" not in shot.model_fields_set and rendered > 1:
        found.append(
            Finding(
                f"{where}.pick",
                f"{rendered} of {shot.takes} takes are rendered but pick is not set, so take 1 "
                f"is cut in by default; look at them and set pick = N (1 to {shot.takes})",
            )
        )
    return found
