"""Prompt composition: defaults, profile, characters and style spine -> the exact request text.

Pure: no disk, no network. The compiled text is what gets hashed and sent, so the layout is
stable: prose scene (with character anchors), Cinematography, Actions, Dialogue, Sound, Style,
the layout the Sora 2 prompting guides recommend and other models read well.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import UserError
from runner.film.manifest import Manifest, Settings, Shot, parse_size

BUILTIN_DEFAULTS = Settings(backend="previz", seconds=4.0)


@dataclass(frozen=True)
class ShotSettings:
    """A shot's generation settings after defaults and the profile are applied."""

    backend: str
    model: str | None
    seconds: float
    width: int
    height: int
    seed: int | None


def resolve(manifest: Manifest, shot_id: str, profile: str | None) -> ShotSettings:
    """Built-in defaults < [defaults] < [profiles.NAME] < the shot's own keys."""
    layers: list[Settings] = [BUILTIN_DEFAULTS, manifest.defaults]
    if profile is not None:
        if profile not in manifest.profiles:
            names = ", ".join(manifest.profiles) or "(none declared)"
            raise UserError(f"--profile {profile}: no [profiles.{profile}] (profiles: {names})")
        layers.append(manifest.profiles[profile])
    layers.append(manifest.shots[shot_id])
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update(layer.model_dump(include=set(Settings.model_fields), exclude_none=True))
    width, height = parse_size(str(merged.get("size", manifest.film.size)))
    return ShotSettings(
        backend=str(merged["backend"]),
        model=str(merged["model"]) if "model" in merged else None,
        seconds=float(str(merged["seconds"])),
        width=width,
        height=height,
        seed=int(str(merged["seed"])) if "seed" in merged else None,
    )


def speaker(manifest: Manifest, who: str) -> str:
    character = manifest.characters.get(who)
    if character and character.name:
        return character.name
    return who[:1].upper() + who[1:]


def compile_prompt(manifest: Manifest, shot_id: str, *, negative_prompt: bool) -> str:
    """The text a shot sends. `negative_prompt`: the backend takes `avoid` as a separate field."""
    shot: Shot = manifest.shots[shot_id]
    style = manifest.style
    blocks: list[str] = []
    if shot.remix is not None:
        # The change to make to an existing video; its look is already that video's.
        return shot.remix.prompt.strip() + "\n"
    if shot.prompt is not None:
        blocks.append(shot.prompt.strip())
    else:
        prose = [(shot.scene or "").strip()]
        # Character anchors: the same words in every shot the character is in.
        for who in shot.cast:
            prose.append(
                f"{speaker(manifest, who)}: {manifest.characters[who].description.strip()}"
            )
        blocks.append("\n".join(p for p in prose if p))
        cinematography = []
        if shot.camera:
            cinematography.append(f"Camera shot: {shot.camera.strip()}")
        if shot.lighting:
            cinematography.append(f"Lighting: {shot.lighting.strip()}")
        if cinematography:
            blocks.append("Cinematography:\n" + "\n".join(cinematography))
        if shot.actions:
            blocks.append("Actions:\n" + "\n".join(f"- {a.strip()}" for a in shot.actions))
        if shot.dialogue:
            lines = [f'{speaker(manifest, d.who)}: "{d.line.strip()}"' for d in shot.dialogue]
            blocks.append("Dialogue:\n" + "\n".join(lines))
        if shot.sound:
            blocks.append(f"Sound:\n{shot.sound.strip()}")
    if style.look:
        blocks.append(f"Style:\n{style.look.strip()}")
    if style.avoid and not negative_prompt:
        blocks.append("Avoid: " + "; ".join(a.strip() for a in style.avoid) + ".")
    return "\n\n".join(b for b in blocks if b) + "\n"
