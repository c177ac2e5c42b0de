"""film.toml: the film as the team declares it, validated with pydantic.

Every error names the file and the key path (`shots.sky.seconds`) and says how to fix it;
unknown keys are errors with a "did you mean" hint, because a misspelt key silently ignored
would render (and bill) the wrong shot.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner.errors import TOO_DEEP, UserError

ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
LANGUAGE_PATTERN = r"^(?:[a-z]{2,3}|und)$"  # ISO 639-1 or -2: "en", "eng", "fra"
MAX_SECONDS = 86_400.0  # a day: bounds every length and time, so `inf` or 1e308 is an error


class Strict(BaseModel):
    """No unknown keys, and no coercion: `fps = "24"` is an error, not 24."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


def parse_size(size: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); the format is validated before this is called."""
    width, height = size.split("x")
    return int(width), int(height)


def _check_size(value: str | None) -> str | None:
    if value is not None:
        match = SIZE_PATTERN.match(value)
        if not match:
            raise ValueError(f"size must look like '1280x720' (WIDTHxHEIGHT), got {value!r}")
        width, height = int(match[1]), int(match[2])
        if not (16 <= width <= 7680 and 16 <= height <= 7680) or width % 2 or height % 2:
            # H.264 in 4:2:0 needs even sides.
            raise ValueError(f"size {value!r}: width and height must be even, 16 to 7680")
    return value


class FilmInfo(Strict):
    """[film]: the film as a whole."""

    title: str
    """The film's title."""
    size: str = "1280x720"
    """The edit's frame, WIDTHxHEIGHT with even sides (16 to 7680); clips of other sizes are
    conformed to it."""
    fps: int = Field(24, ge=1, le=120)
    """The edit's frame rate in frames per second (1 to 120)."""
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)  # `plan` shows what is left
    """What the film may spend in all, in US dollars; `runner plan` shows what is left of it."""
    sign: bool = False
    """Sign the film with C2PA content credentials (written as out/<stem>.signed.mp4) when a
    signing key is set (RUNNER_SIGN_KEY / RUNNER_SIGN_CERT); without one, warn and skip."""
    language: str = Field("und", pattern=LANGUAGE_PATTERN)
    """The language of the film's words (ISO 639, e.g. "en"): the subtitle track's tag."""

    _size = field_validator("size")(_check_size)


class Settings(Strict):
    """Generation settings shared by [defaults], [profiles.*] and each shot."""

    backend: str | None = None
    """The backend that renders the shot: previz (offline, the default), openai, veo, fal, runway,
    luma."""
    model: str | None = None
    """The backend's model (default: the backend's own), e.g. sora-2 or veo-3.1-generate-preview."""
    seconds: float | None = Field(None, gt=0, le=MAX_SECONDS)
    """The shot's length in seconds (within what the model allows; 4 to 8 s shots cut best)."""
    size: str | None = None
    """The rendered frame, WIDTHxHEIGHT with even sides, e.g. 1280x720 (within what the model
    allows)."""
    seed: int | None = None
    """A seed, for backends that take one: the same seed asks for the same variation."""

    _size = field_validator("size")(_check_size)


class Limits(Strict):
    """[limits.BACKEND]: one backend's pool: jobs in flight, request rate, spend cap."""

    concurrency: int | None = Field(None, ge=1)
    """Jobs in flight at once (default: the cores for local backends, 4 for hosted ones)."""
    rpm: int | None = Field(None, ge=1)
    """At most this many submits in any 60-second window."""
    max_cost_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Never start a submit that could take this pool's spend past this many US dollars (in-flight
    jobs count)."""
    give_up_after: float | None = Field(None, gt=0, allow_inf_nan=False)  # seconds
    """Seconds a shot may wait to send while rate-limited before it fails (default 3600)."""


class Style(Strict):
    """[style]: the style spine, appended verbatim to every shot."""

    look: str | None = None
    """The look every shot shares: stock, grain, lenses, palette, light."""
    avoid: list[str] = []
    """What no shot may show: a negative prompt where the backend has one, else an `Avoid:` line."""


class Character(Strict):
    """[characters.ID]: a character anchor, the same words in every shot that casts them."""

    description: str
    """How the character looks, word for word in every shot that casts them."""
    name: str | None = None  # how dialogue names the speaker; the id, capitalised, by default
    """How dialogue names the speaker (default: the id, capitalised)."""


class Asset(Strict):
    """[assets.ID]: a file the film uses (a reference image), hashed by its content."""

    path: str
    """The file, relative to the film's folder (it must stay inside it)."""


class FrameRef(Strict):
    """`image = { shot = "x", frame = "last" }`: start where another shot ended;
    `end_image = { shot = "y", frame = "first" }`: end where another shot starts."""

    shot: str
    """The shot whose video the frame is taken from (its picked take)."""
    frame: Literal["first", "last"] = "last"
    """Which frame of it: "last" (start where it ended) or "first" (end where it starts)."""


class ExtendRef(Strict):
    """`extend = { shot = "x" }`: the provider continues another shot's video."""

    shot: str
    """The shot whose video this one continues, on the same backend."""


class RemixRef(Strict):
    """`remix = { shot = "x", prompt = "..." }`: the provider edits another shot's video."""

    shot: str
    """The shot (same backend) whose video the provider edits."""
    prompt: str
    """What to change, in words."""


class Line(Strict):
    """A dialogue line; `at`/`until` (seconds into its shot) time its subtitle cue and the
    music's ducking only: they are not part of the shot's request, so never re-render it."""

    who: str
    """The speaker: a character id from [characters]."""
    line: str
    """The words, as spoken (about 2.5 words a second fit)."""
    at: float | None = Field(None, ge=0, le=MAX_SECONDS)
    """When the line starts, in seconds into its shot (default: the shot's start)."""
    until: float | None = Field(None, gt=0, le=MAX_SECONDS)
    """When the line ends, in seconds into its shot (default: the shot's end)."""


class Voiceover(Strict):
    """`voiceover = { asset = "assets.vo", at = 0.5 }`: a recorded line over the shot, `at`
    seconds into it (it may run past the cut); it ducks the music and the shot's own audio."""

    asset: str
    """The recorded line: "assets.NAME", an audio file in the film's folder."""
    at: float = Field(0.0, ge=0, le=MAX_SECONDS)
    """Seconds into the shot where the line starts."""
    duck_db: float = Field(8.0, ge=0, le=60, allow_inf_nan=False)
    """How many dB the shot's own audio is lowered under the line."""


class Shot(Settings):
    """[shots.ID]: one shot, either a raw `prompt` or the structured fields the guides recommend."""

    prompt: str | None = None
    """The full prompt text, for full control (the style spine is still appended); or use the
    structured fields."""
    scene: str | None = None
    """Prose: the place, the time, who is there and what they do."""
    camera: str | None = None
    """The cinematography line: framing, lens, movement."""
    lighting: str | None = None
    """The lighting line: key, fill, sources, mood."""
    actions: list[str] = []
    """Timed beats, e.g. "0-2s: she lights the lantern"; their times should fit in `seconds`."""
    dialogue: list[Line] = []
    """Spoken lines, e.g. [{ who = "mara", line = "Go on." }]."""
    sound: str | None = None
    """Sound and ambience."""
    cast: list[str] = []
    """Character ids from [characters] whose anchors go into the shot."""
    image: str | FrameRef | None = None
    """The first frame: "assets.NAME", or { shot = "x", frame = "last" } to start where a shot
    ended."""
    end_image: str | FrameRef | None = None
    """The clip's last frame, where the model takes one: "assets.NAME" or { shot = "x", frame =
    "first" } (end where x starts)."""
    remix: RemixRef | None = None
    """Edit another shot's video instead: { shot = "x", prompt = "..." } (openai, previz)."""
    extend: ExtendRef | None = None
    """Continue another shot's video where the model can (the output is only the new part):
    { shot = "x" }."""
    references: list[str] = []  # "assets.NAME" images of a character or look (Veo "asset")
    """"assets.NAME" reference images of a character or a look (Veo takes up to three)."""
    needs: list[str] = []
    """Shots this one renders after, and renders again with."""
    takes: int = Field(1, ge=1, le=16)
    """How many variants to render (1 to 16), in parallel."""
    pick: int = Field(1, ge=1)
    """Which take goes into the film (1 to takes); changing it re-cuts, never re-renders."""
    voiceover: Voiceover | None = None
    """A recorded line over the shot, mixed in at assembly (not part of the request)."""


class Transition(Strict):
    """How a clip joins the one before it."""

    kind: Literal["cut", "crossfade"] = "cut"
    """`cut`, or `crossfade` (a dissolve of `seconds`)."""
    seconds: float = Field(0.0, ge=0, le=MAX_SECONDS)
    """The crossfade's length in seconds."""


class Cut(Strict):
    """One clip of the edit: a shot, optionally trimmed, and how it joins the previous clip."""

    shot: str
    """The shot (its picked take)."""
    start: float = Field(0.0, ge=0, le=MAX_SECONDS)
    """Trim in: seconds into the shot where the clip starts."""
    end: float | None = Field(None, gt=0, le=MAX_SECONDS)
    """Trim out: seconds into the shot where the clip ends (default: the shot's end)."""
    transition: Transition | None = None
    """How it joins the previous clip (default: [edit] transition)."""


class Music(Strict):
    """`[edit] music = { asset = "assets.score", ... }`: a bed under the whole film, from
    `start` seconds into the cut to its end (looped or trimmed), faded in and out, ducked by
    `duck_db` wherever someone speaks (dialogue lines, voice-overs)."""

    asset: str
    """The music: "assets.NAME", an audio file (WAV, FLAC, MP3, M4A) in the film's folder."""
    start: float = Field(0.0, ge=0, le=MAX_SECONDS)
    """Seconds into the cut where the music enters."""
    gain_db: float = Field(-14.0, ge=-60, le=20, allow_inf_nan=False)
    """The music's level in dB before the mix is brought to the loudness target."""
    duck_db: float = Field(8.0, ge=0, le=60, allow_inf_nan=False)
    """How many dB the music is lowered while someone speaks."""
    fade: float = Field(1.0, ge=0, le=MAX_SECONDS)
    """Seconds of fade in and out."""


class Edit(Strict):
    """[edit]: the cut: which shots in which order, trims and transitions."""

    sequence: list[str | Cut] = []
    """The clips in order: shot ids, or { shot = "x", start = 0.5, end = 3.5, transition = {...} }
    (default: every shot in manifest order)."""
    transition: Transition = Transition()
    """The default join between clips."""
    loudness_lufs: float | None = Field(-16.0, ge=-70, le=-5)
    """The film's EBU R128 loudness target in LUFS (-70 to -5)."""
    music: Music | None = None
    """A music bed under the whole film: { asset = "assets.score", gain_db = -14, ... }."""
    subtitles: Literal["soft", "burn", "off"] | None = None
    """The dialogue as subtitles: "soft" (a track; the default when a shot in the cut has
    dialogue), "burn" (drawn into the picture: a re-encode) or "off"."""


class Manifest(Strict):
    """film.toml: a short film as a shot list, rendered by `runner render`."""

    film: FilmInfo
    """The film as a whole: title, frame size, frame rate, budget."""
    defaults: Settings = Settings()
    """Settings every shot inherits: backend, model, seconds, size, seed."""
    profiles: dict[str, Settings] = {}
    """Named settings `--profile NAME` applies over [defaults] (a shot's own win)."""
    limits: dict[str, Limits] = {}
    """Per backend: jobs in flight, request rate, spend cap."""
    style: Style = Style()
    """The style spine, appended verbatim to every shot."""
    characters: dict[Annotated[str, Field(pattern=ID_PATTERN)], Character] = {}
    """Character anchors by id."""
    assets: dict[Annotated[str, Field(pattern=ID_PATTERN)], Asset] = {}
    """Files the film uses, by id."""
    shots: dict[Annotated[str, Field(pattern=ID_PATTERN)], Shot]
    """The shots by id, in manifest order."""
    edit: Edit = Edit()
    """The cut."""

    def cuts(self) -> list[Cut]:
        """The edit's clips in order; every shot in manifest order when no sequence is given."""
        items: list[str | Cut] = list(self.edit.sequence) or list(self.shots)
        return [Cut(shot=item) if isinstance(item, str) else item for item in items]

    def subtitle_mode(self) -> str:
        """`[edit] subtitles`, defaulting to "soft" when a shot of the cut has dialogue."""
        if self.edit.subtitles is not None:
            return self.edit.subtitles
        spoken = any(self.shots[cut.shot].dialogue for cut in self.cuts() if cut.shot in self.shots)
        return "soft" if spoken else "off"


def load(path: Path) -> Manifest:
    """Read and validate a manifest; raise UserError naming the file and key on bad input."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass the path of a film.toml") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML: {err}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid TOML: {TOO_DEEP}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise UserError(_explain(path, err, data)) from None
    _check_references(path, manifest)
    return manifest


def _explain(path: Path, err: ValidationError, data: dict[str, Any]) -> str:
    lines: list[str] = []
    shown: set[str] = set()  # examples given once per message
    items = [(item, _clean_loc(item["loc"], data)) for item in err.errors()]
    deeper = {tuple(loc[:n]) for _, loc in items for n in range(len(loc))}
    for item, loc in items:
        if item["type"] == "string_type" and tuple(loc) in deeper:
            continue  # a table where `str | table` was allowed: its own error says what is wrong
        where = ".".join(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = f"unknown key{_did_you_mean(loc)}"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] in _TYPE_WORDS and isinstance(item.get("input"), str):
            # Strict: a quoted number is a mistake, not a number (`fps = "24"`).
            key = loc[-1].split("[")[0] if loc else "key"
            message = (
                f"expected {_TYPE_WORDS[item['type']]}, got the string {item['input']!r}; "
                f"write it without quotes ({key} = {item['input']})"
            )
        elif item["type"] in ("model_type", "dict_type") and _example(loc):
            message = f"expected a table, got {item.get('input')!r}; write {_example(loc)}"
        elif item["type"] == "string_pattern_mismatch" and item["ctx"]["pattern"] in _PATTERNS:
            message = f"{item['input']!r} is not {_PATTERNS[item['ctx']['pattern']]}"
        else:
            message = item["msg"]
            if "input" in item and not isinstance(item["input"], dict | list):
                message += f" (got {item['input']!r})"
        example = _example(loc[:-1])
        if item["type"] in ("extra_forbidden", "missing") and example and example not in shown:
            message += f"; write {example}"
            shown.add(example)
        line = f"{path}: {where}: {message}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


_PATTERNS = {  # what a pattern asks for, in words
    LANGUAGE_PATTERN: 'a language code: ISO 639 in lower case, e.g. "en" or "eng" ("und" when '
    "it is not known)",
}
_TYPE_WORDS = {
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
}
_EXAMPLES = {
    "dialogue": 'dialogue = [{ who = "mara", line = "Go on. Find her." }] (who: a character id)',
    "image": 'image = "assets.NAME" or image = { shot = "river", frame = "last" }',
    "end_image": 'end_image = "assets.NAME" or end_image = { shot = "sky", frame = "first" }',
    "extend": 'extend = { shot = "river" }',
    "remix": 'remix = { shot = "sky", prompt = "Same shot, but every lantern glows blue." }',
    "voiceover": 'voiceover = { asset = "assets.vo_river", at = 0.5 }',
}


def _example(loc: list[str]) -> str | None:
    """How a shot's table-shaped key is written, for an error inside it."""
    if len(loc) >= 3 and loc[0] == "shots":
        return _EXAMPLES.get(loc[2].split("[")[0])
    return None


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> list[str]:
    """Drop pydantic's union-member tags so the path is the user's key path."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out[-1] = f"{out[-1]}[{part}]" if out else f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and not part[:1].isupper() and "[" not in part:
            if part in ("str", "int", "float", "list", "dict", "bool", "none"):
                continue
            out.append(part)
            node = None
    return out


def _did_you_mean(loc: list[str]) -> str:
    """Suggest the closest allowed key for a misspelt one."""
    allowed = _allowed_keys(loc[:-1])
    if not loc or not allowed:
        return ""
    key = loc[-1]
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return f"{hint} (allowed: {', '.join(sorted(allowed))})"


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "film": FilmInfo,
    "defaults": Settings,
    "style": Style,
    "edit": Edit,
}
_TABLE_MODELS: dict[str, type[BaseModel]] = {
    "profiles": Settings,
    "limits": Limits,
    "characters": Character,
    "assets": Asset,
    "shots": Shot,
}

_SHOT_PART_MODELS: dict[str, type[BaseModel]] = {
    "image": FrameRef,
    "end_image": FrameRef,
    "extend": ExtendRef,
    "dialogue": Line,
    "remix": RemixRef,
    "voiceover": Voiceover,
}


def _allowed_keys(parent: list[str]) -> list[str]:
    parent = [re.sub(r"\[\d+\]$", "", part) for part in parent]
    model: type[BaseModel] | None = None  # the model whose keys are allowed here
    if not parent:
        model = Manifest
    elif len(parent) == 1:
        model = _SECTION_MODELS.get(parent[0])
    elif len(parent) == 2 and parent[0] in _TABLE_MODELS:
        model = _TABLE_MODELS[parent[0]]
    elif parent[0] == "shots" and len(parent) == 3:
        model = _SHOT_PART_MODELS.get(parent[2])
    elif parent[:2] == ["edit", "sequence"]:
        model = Cut if len(parent) == 2 else Transition
    elif parent[:2] == ["edit", "transition"]:
        model = Transition
    elif parent[:2] == ["edit", "music"]:
        model = Music
    return list(model.model_fields) if model else []


def _check_references(path: Path, m: Manifest) -> None:
    """Names that must point at something: needs, cast, images, picks, the edit."""
    problems: list[str] = []
    shot_names = ", ".join(m.shots) or "(none)"

    def unknown_shot(where: str, name: str) -> None:
        close = difflib.get_close_matches(name, list(m.shots), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        problems.append(f"{path}: {where}: no shot named `{name}`{hint} (shots: {shot_names})")

    for sid, shot in m.shots.items():
        where = f"shots.{sid}"
        if shot.remix is not None:
            if shot.remix.shot not in m.shots:
                unknown_shot(f"{where}.remix.shot", shot.remix.shot)
            if shot.prompt or shot.scene or shot.image or shot.end_image:
                problems.append(
                    f"{path}: {where}: a remix is described by `remix.prompt` alone; "
                    "remove `prompt`, `scene`, `image` and `end_image`"
                )
        elif shot.prompt is None and shot.scene is None:
            problems.append(f"{path}: {where}: give the shot a `prompt` or a `scene`")
        if shot.prompt is not None and (shot.scene or shot.camera or shot.actions):
            problems.append(
                f"{path}: {where}: `prompt` is the full text; use it or the structured "
                "fields (scene, camera, actions, ...), not both"
            )
        if shot.pick > shot.takes:
            problems.append(
                f"{path}: {where}.pick: take {shot.pick} does not exist; the shot has "
                f"takes = {shot.takes}, so pick a number from 1 to {shot.takes}"
            )
        for i, need in enumerate(shot.needs):
            if need not in m.shots:
                unknown_shot(f"{where}.needs[{i}]", need)
        for i, who in enumerate(shot.cast):
            if who not in m.characters:
                problems.append(
                    f"{path}: {where}.cast[{i}]: no character named `{who}`; declare "
                    f"[characters.{who}] or fix the name (characters: "
                    f"{', '.join(m.characters) or '(none)'})"
                )
        for key, image in (("image", shot.image), ("end_image", shot.end_image)):
            if isinstance(image, FrameRef):
                if image.shot not in m.shots:
                    unknown_shot(f"{where}.{key}.shot", image.shot)
                elif image.shot == sid:
                    problems.append(
                        f"{path}: {where}.{key}: a shot cannot start or end on a frame of its "
                        "own video; name another shot"
                    )
            elif isinstance(image, str):
                kind, _, name = image.partition(".")
                if kind != "assets" or name not in m.assets:
                    problems.append(
                        f"{path}: {where}.{key}: `{image}` is not a declared asset; write "
                        '"assets.NAME" for an [assets.NAME] table or { shot = "x", frame = '
                        '"last" } ("first" for its first frame)'
                    )
        if shot.extend is not None:
            if shot.extend.shot not in m.shots:
                unknown_shot(f"{where}.extend.shot", shot.extend.shot)
            elif shot.extend.shot == sid:
                problems.append(f"{path}: {where}.extend: a shot cannot extend itself")
            if shot.image is not None or shot.remix is not None:
                problems.append(
                    f"{path}: {where}: an extension starts where `extend.shot` ends; remove "
                    "`image` and `remix`"
                )
        for i, ref in enumerate(shot.references):
            kind, _, name = ref.partition(".")
            if kind != "assets" or name not in m.assets:
                problems.append(
                    f"{path}: {where}.references[{i}]: `{ref}` is not a declared asset; write "
                    '"assets.NAME" for an [assets.NAME] table'
                )
    _check_sound(path, m, problems)
    for i, cut in enumerate(m.edit.sequence):
        name = cut if isinstance(cut, str) else cut.shot
        if name not in m.shots:
            unknown_shot(f"edit.sequence[{i}]", name)
        elif isinstance(cut, Cut) and cut.end is not None and cut.end <= cut.start:
            problems.append(f"{path}: edit.sequence[{i}].end: must be after start ({cut.start})")
    if problems:
        raise UserError("\n".join(problems))


def _check_sound(path: Path, m: Manifest, problems: list[str]) -> None:
    """The music and voice-over assets, and each dialogue line's timing."""

    def asset(where: str, ref: str) -> None:
        kind, _, name = ref.partition(".")
        if kind != "assets" or name not in m.assets:
            problems.append(
                f'{path}: {where}: `{ref}` is not a declared asset; write "assets.NAME" for '
                "an [assets.NAME] table holding an audio file (WAV, FLAC, MP3, M4A)"
            )

    if m.edit.music is not None:
        asset("edit.music.asset", m.edit.music.asset)
    for sid, shot in m.shots.items():
        if shot.voiceover is not None:
            asset(f"shots.{sid}.voiceover.asset", shot.voiceover.asset)
        for i, line in enumerate(shot.dialogue):
            if line.at is not None and line.until is not None and line.until <= line.at:
                problems.append(
                    f"{path}: shots.{sid}.dialogue[{i}].until: {line.until:g} s is not after "
                    f"at = {line.at:g} s"
                )
