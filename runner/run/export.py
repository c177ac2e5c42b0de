"""`runner export`: the cut as an editor's timeline, with the shots it uses as stable files.

The cut is the edit node's recipe (the builder's one reading of [edit], picks included) laid
out by assembly's own frame arithmetic (`assemble.spans`), so the timeline and the film cannot
disagree. Each clip's media is a hard link (else a copy) of its cached output, under
out/media/ named by shot and take: the names stay put while the bytes behind them change only
when a take does. Under the sound layers the music and voice-over assets are placed, and the
subtitle cues marked, by the same functions the mix and the subtitles node time them with
(`soundtrack.placement`, `music_passes`, `voice_frame`, `cues`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from runner.digest import file_digest
from runner.errors import UserError
from runner.film.graph import Graph, shot_name
from runner.film.plan import CACHED
from runner.media import assemble, ffmpeg, soundtrack, timeline
from runner.run.project import Project


def export(project: Project, fmt: str) -> Path:
    """Write out/<stem><suffix> for `fmt` (a timeline.FORMATS key); returns its path."""
    graph = project.graph
    edit = graph.cut  # the node holding the cuts (under the sound layers: "picture")
    plan = project.plan()
    cuts = edit.recipe["cuts"]
    missing = []
    for cut in cuts:
        d = plan.decisions[edit.inputs[cut["clip"]]]
        if d.status != CACHED or d.output is None or not project.outputs.have(d.output):
            missing.append(d.id)
    if missing:
        raise UserError(
            f"{project.manifest_path}: the edit uses {', '.join(dict.fromkeys(missing))}, "
            f"not rendered yet; run `runner render {project.manifest_path}` first, then export"
        )
    clips, shots = [], []
    media = project.out_dir / "media"
    for cut in cuts:
        nid = edit.inputs[cut["clip"]]
        d = plan.decisions[nid]
        assert d.output is not None and d.key is not None
        node = graph.nodes[nid]
        blob = project.outputs.blob(d.output)
        clips.append(assemble.Clip(blob, d.output, cut["start"], cut["end"], cut["crossfade_in"]))
        shot = node.shot or {}
        name = shot_name(nid) if nid.count(".") == 1 else f"{shot_name(nid)} take {shot['take']}"
        file = media / f"{shot_name(nid)}.take{shot.get('take', 1)}{blob.suffix or '.mp4'}"
        _place(blob, d.output, file)
        meta = {
            "node": nid,
            "key": d.key,
            "prompt": shot.get("prompt"),
            "shot": shot_name(nid),
            "take": shot.get("take", 1),
            "backend": node.pool,
            "model": shot.get("model"),
            "sha256": d.output,
            "trim": {"start": cut["start"], "end": cut["end"]},
        }
        shots.append((name, file, meta))
    spans = assemble.spans(clips, width=graph.width, height=graph.height, fps=graph.fps)
    timed = [timeline.Shot(n, f, span, m) for (n, f, m), span in zip(shots, spans, strict=True)]
    film_meta = {
        "manifest": project.manifest_path.name,
        "manifest_sha256": project.manifest_sha256,
        "profile": project.profile,
        "size": f"{graph.width}x{graph.height}",
        "fps": graph.fps,
    }
    sound, markers = _sound_layers(graph, clips)
    made = timeline.build(graph.title, graph.fps, timed, film_meta, sound, markers)
    if timeline.CUTS_ONLY[fmt]:
        dropped = timeline.cuts_only(made)
        if dropped:
            s = "s" if dropped != 1 else ""
            _warn(
                f"{fmt} holds cuts only: {dropped} crossfade{s} became a cut at the middle of "
                "the dissolve (the film's length is kept); export otio or fcp7xml to keep them"
            )
    if not timeline.SOUND_TRACKS[fmt] and timeline.drop_sound(made, set(sound)):
        tracks = f"{' and '.join(sound).lower()} track{'s are' if len(sound) > 1 else ' is'}"
        _warn(
            f"{fmt} holds the picture track only: the {tracks} left out (the film's mix has "
            "them); export otio, fcp7xml or fcpxml to keep them"
        )
    if markers and timeline.MARKERS_ON[fmt] == "clips":
        timeline.markers_on_clips(made)
        if fmt == "edl":
            s = "s" if len(markers) != 1 else ""
            _warn(
                f"edl keeps {len(markers)} subtitle cue{s} as LOC comments on the clips they "
                "start in, in capitals, with their first frame but not their last (out/"
                f"{project.stem}.srt has them whole); export otio, fcp7xml or fcpxml to keep "
                "their ranges"
            )
    dest = project.out_dir / f"{project.stem}{timeline.FORMATS[fmt][1]}"
    timeline.write(made, fmt, dest)
    return dest


MUSIC, VOICE_OVER = "Music", "Voice-over"


def _sound_layers(
    graph: Graph, clips: list[assemble.Clip]
) -> tuple[dict[str, list[timeline.Sound]], list[timeline.Marker]]:
    """The music and voice-over tracks and the cue markers, where the mix and the subtitles
    put them (none for a film without the sound layers)."""
    if graph.cut.id != "picture":
        return {}, []
    fps = graph.fps
    placed = soundtrack.placement(clips, fps)
    frames = soundtrack.film_frames(placed)
    sound: dict[str, list[timeline.Sound]] = {}
    music = graph.nodes.get("audio.music")
    if music is not None:
        asset = graph.nodes[music.inputs["music"]]
        assert asset.path is not None
        length = ffmpeg.probe(Path(asset.path)).duration
        recipe = music.recipe
        passes = soundtrack.music_passes(
            fps=fps, frames=frames, start=recipe["start"], length=length
        )
        meta = {k: recipe[k] for k in ("start", "gain_db", "duck_db", "fade")}
        sound[MUSIC] = [
            timeline.Sound(
                asset.id.removeprefix("assets."),
                Path(asset.path),
                first,
                last - first,
                round(length * fps),
                metadata={"node": music.id, "asset": asset.id, "pass": n, **meta},
            )
            for n, (first, last) in enumerate(passes, start=1)
        ]
    mix = graph.nodes.get("audio.mix")
    voices: list[timeline.Sound] = []
    if mix is not None:
        cut_shots = graph.cut_clips()
        for vo in mix.recipe["voiceovers"]:
            asset = graph.nodes[mix.inputs[vo["input"]]]
            assert asset.path is not None
            length = round(ffmpeg.probe(Path(asset.path)).duration * fps)
            first = soundtrack.voice_frame(placed[vo["cut"]], vo["at"], fps)
            if min(first + length, frames) > first:  # the mix ends with the film
                voices.append(
                    timeline.Sound(
                        asset.id.removeprefix("assets."),
                        Path(asset.path),
                        first,
                        min(first + length, frames) - first,
                        length,
                        metadata={
                            "node": mix.id,
                            "asset": asset.id,
                            "shot": shot_name(cut_shots[vo["cut"]]),
                            "at": vo["at"],
                            "duck_db": vo["duck_db"],
                        },
                    )
                )
    if voices:
        sound[VOICE_OVER] = voices
    markers = []
    subtitles = graph.nodes.get("subtitles")
    if subtitles is not None:
        for n, cue in enumerate(soundtrack.cues(placed, subtitles.recipe["lines"], fps), 1):
            text = " ".join(cue.text.split())
            markers.append(
                timeline.Marker(
                    f"{cue.who}: {text}" if cue.who else text,
                    cue.first,
                    cue.last,
                    {"node": subtitles.id, "cue": n, "who": cue.who, "text": cue.text},
                )
            )
    return sound, markers


def _warn(message: str) -> None:
    print(f"runner: warning: {message}", file=sys.stderr)


def _place(blob: Path, digest: str, dest: Path) -> None:
    """dest holds blob's bytes: kept when it already does, else a hard link, else a copy."""
    if dest.is_file():
        if os.path.samefile(dest, blob):
            return
        if dest.stat().st_size == blob.stat().st_size and file_digest(dest) == digest:
            return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(blob, tmp)
    except OSError:  # another filesystem, or links not allowed: a copy
        shutil.copyfile(blob, tmp)
    tmp.replace(dest)
