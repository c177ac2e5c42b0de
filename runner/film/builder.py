"""Manifest -> graph: resolve settings, compile prompts, check capabilities, add edges."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.film import compose, model_table
from runner.film.graph import RECIPE_VERSION, Graph, Node, toposort
from runner.film.manifest import FrameRef, Manifest, parse_size
from runner.film.request import Catalog, Models, ShotRequest


def take_ids(manifest: Manifest, shot_id: str) -> list[str]:
    takes = manifest.shots[shot_id].takes
    if takes == 1:
        return [f"shots.{shot_id}"]
    return [f"shots.{shot_id}.take{i}" for i in range(1, takes + 1)]


def picked(manifest: Manifest, shot_id: str) -> str:
    return take_ids(manifest, shot_id)[manifest.shots[shot_id].pick - 1]


def build(
    manifest: Manifest,
    film_dir: Path,
    profile: str | None,
    source: str,
    backends: Catalog,
) -> Graph:
    """Turn a validated manifest into nodes. `source` names the manifest in error messages;
    `backends` are the run's configured backends (their tables, from pyproject)."""
    nodes: dict[str, Node] = {}
    root = film_dir.resolve()
    for name, asset in manifest.assets.items():
        path = (film_dir / asset.path).resolve()
        where = f"{source}: assets.{name}.path"
        if not path.is_relative_to(root):
            raise UserError(
                f"{where}: {asset.path!r} is outside the film's folder {film_dir}; "
                "copy the file into the folder and give a relative path"
            )
        if not path.is_file():
            raise UserError(f"{where}: no file at {path}; add the file or fix the path")
        nid = f"assets.{name}"
        nodes[nid] = Node(nid, "asset", "local", {"kind": "asset"}, path=str(path))

    problems: list[str] = []
    for name in manifest.limits:
        try:
            _backend(backends, name, f"{source}: limits.{name}")
        except UserError as err:
            problems.append(str(err))
    for shot_id, shot in manifest.shots.items():
        try:
            settings = compose.resolve(manifest, shot_id, profile)
            backend = _backend(backends, settings.backend, f"{source}: shots.{shot_id}.backend")
            model = settings.model or backend.default_model
            caps = backend.capabilities(model)
            prompt = compose.compile_prompt(manifest, shot_id, negative_prompt=caps.negative_prompt)
            inputs: dict[str, str] = {}
            for role, image in (("image", shot.image), ("end_image", shot.end_image)):
                if isinstance(image, FrameRef):
                    inputs[role] = _frame_node(manifest, nodes, image)
                elif isinstance(image, str):
                    inputs[role] = image
            for i, ref in enumerate(shot.references):
                inputs[f"ref{i}"] = ref
            if shot.remix is not None:
                inputs["remix"] = picked(manifest, shot.remix.shot)
            if shot.extend is not None:
                inputs["extend"] = picked(manifest, shot.extend.shot)
            after = [t for need in shot.needs for t in take_ids(manifest, need)]
            for take, nid in enumerate(take_ids(manifest, shot_id), start=1):
                fields: dict[str, Any] = {
                    "film": manifest.film.title,
                    "shot": shot_id,
                    "take": take,
                    "model": model,
                    "prompt": prompt,
                    "avoid": list(manifest.style.avoid),
                    "seconds": settings.seconds,
                    "width": settings.width,
                    "height": settings.height,
                    "fps": manifest.film.fps,
                    "seed": settings.seed,
                    "remix_of": shot.remix.shot if shot.remix else None,
                }
                if shot.extend is not None:  # only then: every other shot's key stays as it was
                    fields["extend_of"] = shot.extend.shot
                    fields["extend_from"] = _extended_until(manifest, shot.extend.shot, profile)
                # Stand-in paths say "this shot has an image, these references" to the checks; the
                # real files are known only once their upstreams (assets, frames) are made.
                has_image = Path(inputs["image"]) if "image" in inputs else None
                has_end = Path(inputs["end_image"]) if "end_image" in inputs else None
                references = tuple(Path(ref) for ref in shot.references)
                request = ShotRequest(
                    **{**fields, "avoid": tuple(manifest.style.avoid), "image": has_image},
                    references=references,
                    end_image=has_end,
                )
                where = f"{source}: shots.{shot_id}"
                _check(where, request, backend, settings.backend, caps, backends)
                recipe = {
                    "kind": "shot",
                    "v": RECIPE_VERSION,
                    "backend": settings.backend,
                    "request": backend.request(request),
                }
                price = backend.price_per_second(model, settings.width, settings.height)
                nodes[nid] = Node(
                    nid,
                    "shot",
                    settings.backend,
                    recipe,
                    inputs=dict(inputs),
                    after=after,
                    cost_usd=round(price * settings.seconds, 4),
                    shot=fields,
                )
            if shot.remix is not None:
                _check_remix(manifest, source, shot_id, shot.remix.shot, settings.backend, profile)
            if shot.extend is not None:
                _check_remix(
                    manifest, source, shot_id, shot.extend.shot, settings.backend, profile, "extend"
                )
        except UserError as err:  # the other shots are checked too: one pass, every problem
            problems.append(str(err))
    if problems:  # each once: a missing profile is every shot's problem
        raise UserError("\n".join(dict.fromkeys(problems)))

    _check_cuts(manifest, source, profile)
    nodes.update(_edit_nodes(manifest, backends.media))
    for node in nodes.values():
        node.seal()
    width, height = parse_size(manifest.film.size)
    return Graph(
        title=manifest.film.title,
        width=width,
        height=height,
        fps=manifest.film.fps,
        nodes=toposort(nodes, source),
        limits={k: v.model_dump(exclude_none=True) for k, v in manifest.limits.items()},
        budget_usd=manifest.film.budget_usd,
        sign=manifest.film.sign,
    )


def _backend(backends: Catalog, name: str, where: str) -> Models:
    try:
        return backends.get(name)
    except KeyError:
        known = ", ".join(backends.names())
        raise UserError(f"{where}: unknown backend {name!r}; choose one of: {known}") from None


def _check(
    where: str,
    request: ShotRequest,
    backend: Models,
    name: str,
    row: model_table.ModelRow,
    backends: Catalog,
) -> None:
    """The shot against the model's row (the one check, located at the shot's key), then what
    only the backend knows (an unknown model, an endpoint that is gone, previz's bounds)."""
    problem = backend.check(request)
    located = model_table.check(request, row, name)
    if located is not None and (problem is None or problem == str(located)):
        if located.field in model_table.FEATURES:  # say which models have it
            located = model_table.check(request, row, name, _tables(backends)) or located
        raise UserError(located.at(where))
    if problem is not None:
        raise UserError(f"{where}: {name} cannot render it: {problem}")


def _tables(backends: Catalog) -> dict[str, Mapping[str, model_table.ModelRow]]:
    """Every configured backend's model rows (a backend that cannot load is left out)."""
    tables: dict[str, Mapping[str, model_table.ModelRow]] = {}
    for name in backends.names():
        try:
            tables[name] = backends.get(name).rows()
        except (UserError, ImportError):
            continue
    return tables


def _frame_node(manifest: Manifest, nodes: dict[str, Node], ref: FrameRef) -> str:
    """The `frames.SHOT.first|last` node a shot's image or end_image reads, made once."""
    frame_id = f"frames.{ref.shot}.{ref.frame}"
    nodes.setdefault(
        frame_id,
        Node(
            frame_id,
            "frame",
            "local",
            {"kind": "frame", "frame": ref.frame, "v": RECIPE_VERSION},
            inputs={"video": picked(manifest, ref.shot)},
        ),
    )
    return frame_id


def _extended_until(manifest: Manifest, shot_id: str, profile: str | None) -> float:
    """Where the video an extension continues ends, counted from the first shot of its chain
    of extensions (previz's timecode runs on across them)."""
    total, seen = 0.0, set()
    current: str | None = shot_id
    while current is not None and current not in seen:  # a cycle is reported elsewhere
        seen.add(current)
        total += compose.resolve(manifest, current, profile).seconds
        ext = manifest.shots[current].extend
        current = ext.shot if ext is not None else None
    return total


def _check_remix(
    manifest: Manifest,
    source: str,
    shot_id: str,
    original: str,
    backend: str,
    profile: str | None,
    key: str = "remix",
) -> None:
    """A remix edits, an extension continues, a job of the same provider: both shots must
    render on one backend."""
    if compose.resolve(manifest, original, profile).backend != backend:
        verb = "edits" if key == "remix" else "continues"
        raise UserError(
            f"{source}: shots.{shot_id}.{key}: shot {original!r} renders on another backend; "
            f"{'a remix' if key == 'remix' else 'an extension'} {verb} a job of the same "
            f"provider, so both shots need backend = {backend!r}"
        )


def _check_cuts(manifest: Manifest, source: str, profile: str | None) -> None:
    """Each trim against its shot's length and each crossfade against the clips it joins,
    at plan time and at the key: assembly would only find out after everything rendered."""
    frame = 1 / manifest.film.fps  # assembly rounds to frames: allow that much
    lengths: list[float] = []  # each clip's length after trimming
    fades: list[tuple[float, str]] = []  # each clip's crossfade in, and its key
    for i, cut in enumerate(manifest.cuts()):
        where = f"{source}: edit.sequence[{i}]"
        seconds = compose.resolve(manifest, cut.shot, profile).seconds
        end = seconds if cut.end is None else cut.end
        if cut.start >= seconds:
            raise UserError(
                f"{where}.start: {cut.start:g} s is not before the end of shot {cut.shot!r} "
                f"({seconds:g} s); start earlier or lengthen the shot"
            )
        if end > seconds + frame:
            raise UserError(
                f"{where}.end: {end:g} s is past the end of shot {cut.shot!r} ({seconds:g} s); "
                "end earlier or lengthen the shot"
            )
        if end <= cut.start:
            raise UserError(f"{where}.end: {end:g} s is not after start {cut.start:g} s")
        transition = cut.transition or manifest.edit.transition
        key = f"{where}.transition" if cut.transition else f"{source}: edit.transition"
        lengths.append(end - cut.start)
        fades.append((transition.seconds if transition.kind == "crossfade" and i else 0.0, key))
    fades.append((0.0, ""))
    for i, length in enumerate(lengths):
        (fade_in, key_in), (fade_out, key_out) = fades[i], fades[i + 1]
        if fade_in + fade_out > length + frame:
            key = key_out if fade_out else key_in
            raise UserError(
                f"{key}.seconds: crossfades of {fade_in + fade_out:g} s in all are longer than "
                f"clip {i + 1} ({manifest.cuts()[i].shot!r}, {length:g} s after trimming); "
                "shorten the crossfade or the trim"
            )


def _edit_node(manifest: Manifest, media: str) -> Node:
    cuts: list[dict[str, Any]] = []
    inputs: dict[str, str] = {}
    default = manifest.edit.transition
    for i, cut in enumerate(manifest.cuts()):
        transition = cut.transition or default
        crossfade = transition.seconds if transition.kind == "crossfade" and i > 0 else 0.0
        role = f"clip{i}"
        inputs[role] = picked(manifest, cut.shot)
        cuts.append({"clip": role, "start": cut.start, "end": cut.end, "crossfade_in": crossfade})
    width, height = parse_size(manifest.film.size)
    recipe = {
        "kind": "edit",
        "v": RECIPE_VERSION,
        "cuts": cuts,
        "width": width,
        "height": height,
        "fps": manifest.film.fps,
        "loudness_lufs": manifest.edit.loudness_lufs,
        "media": media,
    }
    return Node("edit", "edit", "local", recipe, inputs=inputs)


def _edit_nodes(manifest: Manifest, media: str) -> dict[str, Node]:
    """The edit, and when the film has sound or words over the cut, its layers: `picture` (the
    cut: video and the shots' audio), `audio.music` (the ducked bed), `audio.mix` (shots, music
    and voice-overs at the film's loudness), `subtitles` (the cues) and `edit`, the mux of them.
    Each is a node of its own, so changing the music re-mixes and re-muxes, never re-cuts."""
    edit = _edit_node(manifest, media)
    music = manifest.edit.music
    mode = manifest.subtitle_mode()
    clips = dict(edit.inputs)
    cuts = edit.recipe["cuts"]
    fps = manifest.film.fps
    lines: list[dict[str, Any]] = []
    voices: list[dict[str, Any]] = []
    voice_inputs: dict[str, str] = {}
    for i, cut in enumerate(manifest.cuts()):
        shot = manifest.shots[cut.shot]
        for line in shot.dialogue:
            who = compose.speaker(manifest, line.who)
            lines.append(
                {"cut": i, "at": line.at, "until": line.until, "who": who, "text": line.line}
            )
        if shot.voiceover is not None:
            role = f"vo{len(voices)}"
            voice_inputs[role] = shot.voiceover.asset
            vo = shot.voiceover
            voices.append({"cut": i, "at": vo.at, "input": role, "duck_db": vo.duck_db})
    subtitles = mode != "off" and bool(lines)
    mixing = music is not None or bool(voices)
    if not (subtitles or mixing):
        return {"edit": edit}
    base = {"v": RECIPE_VERSION, "media": media, "fps": fps, "cuts": cuts}
    picture = Node(
        "picture",
        "picture",
        "local",
        {
            **edit.recipe,
            "kind": "picture",
            "audio": "alac" if mixing else "aac",
            "loudness_lufs": None if mixing else manifest.edit.loudness_lufs,
        },
        inputs=clips,
    )
    nodes = {"picture": picture}
    final_inputs = {"picture": "picture"}
    if mixing:
        mix_inputs = {"picture": "picture", **clips, **voice_inputs}
        if music is not None:
            spoken = [{k: line[k] for k in ("cut", "at", "until")} for line in lines]
            nodes["audio.music"] = Node(
                "audio.music",
                "audio",
                "local",
                {
                    **base,
                    "kind": "music",
                    "start": music.start,
                    "gain_db": music.gain_db,
                    "duck_db": music.duck_db,
                    "fade": music.fade,
                    "spoken": spoken,
                    "voiceovers": [{k: v[k] for k in ("cut", "at", "input")} for v in voices],
                },
                inputs={"music": music.asset, **clips, **voice_inputs},
            )
            mix_inputs["music"] = "audio.music"
        nodes["audio.mix"] = Node(
            "audio.mix",
            "audio",
            "local",
            {
                **base,
                "kind": "mix",
                "voiceovers": voices,
                "loudness_lufs": manifest.edit.loudness_lufs,
            },
            inputs=mix_inputs,
        )
        final_inputs["audio"] = "audio.mix"
    if subtitles:
        nodes["subtitles"] = Node(
            "subtitles",
            "subtitles",
            "local",
            {**base, "kind": "subtitles", "lines": lines, "language": manifest.film.language},
            inputs=clips,
        )
        final_inputs["subtitles"] = "subtitles"
    nodes["edit"] = Node(
        "edit",
        "edit",
        "local",
        {
            "kind": "mux",
            "v": RECIPE_VERSION,
            "media": media,
            "fps": fps,
            "height": edit.recipe["height"],
            "subtitles": mode if subtitles else "off",
            "language": manifest.film.language,
        },
        inputs=final_inputs,
    )
    return nodes
