"""The MP4 container (ISO BMFF and QuickTime), read without decoding: what a file holds, and
whether its bytes are whole.

`inspect` walks the boxes for what `ffmpeg -i` reports (codecs, frame size and rate, pixel
format, duration), so probing an MP4 spawns no process. `check` also proves the file whole:
every box ends inside the file, every sample's bytes lie inside an mdat, the sample tables agree
with each other and cover the duration the headers declare, and every H.264/HEVC sample is an
exact run of NAL units with no forbidden bytes -- what a cut-short download, a zeroed or garbled
region, or a broken muxer leaves. What it does not read (fragmented files, several sample
descriptions in a track, other codecs) is `Unsupported`: callers ask ffmpeg instead.

Nothing read from the file is trusted: every size, count and offset is bounded before use.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

from runner.media import codec, nal

_HEADER = struct.Struct(">I4s")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TOP = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"})


class Unsupported(Exception):
    """Not an MP4 this module reads (or one it does not read fully): ask ffmpeg."""


class Damaged(Exception):
    """An MP4 whose own structure shows it is broken; the message says where and how."""


class Garbled(Damaged):
    """A video sample holds bytes no encoder writes (zeroed, random): broken for certain only
    once a decoder says so too (a muxer may pad in ways a decoder skips)."""


@dataclass(frozen=True)
class Track:
    """One track's headers and sample tables, as read (`check` proves them consistent)."""

    handler: str  # "vide", "soun", ...
    codec: str | None  # ffmpeg's name ("h264", "hevc", "aac", "mp3", "opus"); None: unknown
    timescale: int
    duration: int  # what mdhd declares, in timescale units
    edits: tuple[tuple[int, int], ...]  # (duration in movie units, media time; -1: empty)
    sizes: array[int]  # bytes of each sample
    chunks: array[int]  # file offset of each chunk
    stsc: tuple[tuple[int, int], ...]  # (first chunk, from 1; samples per chunk)
    stts: tuple[tuple[int, int], ...]  # (sample count, ticks each)
    sync: array[int] | None  # sync samples, from 1; None: every sample is one
    ctts: tuple[tuple[int, int], ...]  # (sample count, composition offset); () if none
    width: int = 0
    height: int = 0
    pix_fmt: str | None = None
    sample_rate: int | None = None
    nal_length: int = 0  # bytes of each NAL unit's length prefix; 0: no NAL units

    @property
    def covered(self) -> int:
        """Ticks the samples cover, by their decode-time table."""
        return sum(count * delta for count, delta in self.stts)

    @property
    def fps(self) -> float:
        """The average frame rate, as ffmpeg reports it (two decimals)."""
        covered = self.covered
        return round(len(self.sizes) * self.timescale / covered, 2) if covered else 0.0

    def seconds(self, movie_timescale: int) -> float:
        """How long the track plays: its edit list's length, else what mdhd declares."""
        if self.edits:
            return sum(d for d, _ in self.edits) / movie_timescale
        return self.duration / self.timescale

    def keyframes(self) -> list[int]:
        """Indices (from 0, decode order) of the samples a decoder can start at."""
        if self.sync is None:
            return list(range(len(self.sizes)))
        return [n - 1 for n in self.sync]

    def shown_at(self, index: int) -> int:
        """When sample `index` is shown, in ticks: its decode time, plus its composition
        offset, less where the edit list starts playing (as ffmpeg times it)."""
        ticks, left = 0, index
        for count, delta in self.stts:
            ticks += min(left, count) * delta
            left -= min(left, count)
        offset, left = 0, index
        for count, value in self.ctts:
            if left < count:
                offset = value
                break
            left -= count
        return ticks + offset - self.media_start()

    def shown(self, movie_timescale: int) -> int:
        """How many samples its edit list lets play (for video: the frames a player shows)."""
        ratio = self.timescale / movie_timescale
        windows = [(t, t + d * ratio) for d, t in self.edits if t >= 0]
        if not windows:
            return len(self.sizes)
        deltas = (d for count, d in self.stts for _ in range(count))
        offsets = chain((o for count, o in self.ctts for _ in range(count)), repeat(0))
        shown = ticks = 0
        for delta, offset in zip(deltas, offsets, strict=False):  # the time table's length
            shown += any(start <= ticks + offset < end for start, end in windows)
            ticks += delta
        return shown

    def media_start(self) -> int:
        """The media time the first non-empty edit starts playing at (0 without edits)."""
        return next((t for _, t in self.edits if t >= 0), 0)


@dataclass(frozen=True)
class Movie:
    """A whole MP4: its movie header, tracks and media data."""

    size: int
    timescale: int
    duration: int  # what mvhd declares, in timescale units
    tracks: tuple[Track, ...]
    mdats: tuple[tuple[int, int], ...]  # [start, end) of each mdat's payload

    def first(self, handler: str) -> Track | None:
        return next((t for t in self.tracks if t.handler == handler), None)

    @property
    def seconds(self) -> float:
        """The file's duration as ffmpeg reports it: the longest track, to 10 ms."""
        longest = max((t.seconds(self.timescale) for t in self.tracks), default=0.0)
        return int(longest * 100 + 0.5) / 100


def is_mp4(path: Path) -> bool:
    """Whether the file starts like an MP4 (its first box is one an MP4 starts with)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:] in _TOP


def inspect(path: Path) -> Movie:
    """The file's headers and tables. Raises Damaged or Unsupported (see the module doc)."""
    with _mapped(path) as buf:
        return _movie(buf, len(buf))


def check(path: Path) -> Movie:
    """inspect, then prove the bytes whole: tables consistent and covering the declared
    durations, every sample inside an mdat, every H.264/HEVC sample whole NAL units."""
    with _mapped(path) as buf:
        movie = _movie(buf, len(buf))
        for track in movie.tracks:
            _check_track(buf, movie, track)
        longest = max((t.seconds(movie.timescale) for t in movie.tracks), default=0.0)
        frame = max((d / t.timescale for t in movie.tracks for _, d in t.stts), default=0.0)
        declared = movie.duration / movie.timescale
        if declared > longest + frame + 2 / movie.timescale:
            raise Damaged(f"the movie declares {declared:.3f} s; its tracks play {longest:.3f} s")
        return movie


class _mapped:
    """The file's bytes, mapped read-only (an empty file is Damaged: mmap cannot map it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.map: mmap.mmap | None = None

    def __enter__(self) -> mmap.mmap:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise Damaged("file not found") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise Damaged("the file is empty (0 bytes)")
            self.map = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return self.map

    def __exit__(self, *exc: object) -> None:
        if self.map is not None:
            self.map.close()


def _boxes(buf: Any, start: int, end: int, where: str) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of each box in buf[start:end]; they must fill it exactly."""
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Damaged(f"{end - pos} stray bytes at byte {pos}, in {where}")
        size, kind = _HEADER.unpack_from(buf, pos)
        if not _printable(kind):
            raise Damaged(f"{end - pos} bytes at byte {pos}, in {where}, are no MP4 box")
        header = 8
        if size == 1:
            if end - pos < 16:
                raise Damaged(f"the {_name(kind)} box at byte {pos} is cut short")
            (size,) = _U64.unpack_from(buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos  # "to the end of its container"
        if size < header:
            raise Damaged(f"the {_name(kind)} box at byte {pos} declares {size} bytes")
        if pos + size > end:
            limit = f"{end} bytes" if where == "the file" else f"ending at byte {end}"
            raise Damaged(
                f"cut short: the {_name(kind)} box at byte {pos} declares {size} bytes, "
                f"{pos + size - end} past the end of {where} ({limit})"
            )
        yield kind, pos + header, pos + size
        pos += size


def _children(buf: Any, start: int, end: int, where: str) -> dict[bytes, list[tuple[int, int]]]:
    found: dict[bytes, list[tuple[int, int]]] = {}
    for kind, payload, box_end in _boxes(buf, start, end, where):
        found.setdefault(kind, []).append((payload, box_end))
    return found


def _one(boxes: dict[bytes, list[tuple[int, int]]], kind: bytes, where: str) -> tuple[int, int]:
    found = boxes.get(kind)
    if not found:
        raise Damaged(f"{where} has no {_name(kind)} box")
    return found[0]


def _printable(kind: bytes) -> bool:
    """Box types are four printable characters (QuickTime's metadata ones may start with
    0xA9, and its terminator box is four zero bytes)."""
    return kind == b"\0\0\0\0" or all(32 <= c < 127 or c == 0xA9 for c in kind)


def _name(kind: bytes) -> str:
    return kind.decode("latin-1")


def _movie(buf: Any, size: int) -> Movie:
    if size < 8:
        raise Damaged(f"cut short: {size} bytes")
    if _HEADER.unpack_from(buf, 0)[1] not in _TOP:
        raise Unsupported("not an MP4 file")
    top = _children(buf, 0, size, "the file")
    if b"moof" in top:
        raise Unsupported("a fragmented MP4")
    if len(top.get(b"moov", ())) != 1:
        raise Damaged(f"{len(top.get(b'moov', ()))} moov boxes (an MP4 has one)")
    start, end = top[b"moov"][0]
    moov = _children(buf, start, end, "the moov box")
    if b"mvex" in moov:
        raise Unsupported("a fragmented MP4")
    pos, mvhd_end = _one(moov, b"mvhd", "the moov box")
    v1 = _need(buf, pos, mvhd_end, 32)[pos] == 1
    timescale, duration = _timing(buf, pos, mvhd_end, v1, 12 if not v1 else 20)
    tracks = tuple(_track(buf, s, e, n) for n, (s, e) in enumerate(moov.get(b"trak", []), 1))
    mdats = tuple(top.get(b"mdat", ()))
    return Movie(size, timescale, duration, tracks, mdats)


def _need(buf: Any, start: int, end: int, size: int) -> Any:
    """buf, once it is sure the box at start holds `size` bytes."""
    if end - start < size:
        raise Damaged(f"a box at byte {start} is {end - start} bytes, too short to read")
    return buf


def _timing(buf: Any, pos: int, end: int, v1: bool, at: int) -> tuple[int, int]:
    """(timescale, duration) of an mvhd or mdhd box (`at`: where the timescale is)."""
    _need(buf, pos, end, at + (12 if v1 else 8))
    (timescale,) = _U32.unpack_from(buf, pos + at)
    (duration,) = (_U64 if v1 else _U32).unpack_from(buf, pos + at + 4)
    if timescale == 0:
        raise Damaged(f"a timescale of 0 at byte {pos}")
    return timescale, duration


def _track(buf: Any, start: int, end: int, n: int) -> Track:
    where = f"track {n}"
    trak = _children(buf, start, end, where)
    mdia = _children(buf, *_one(trak, b"mdia", where), where)
    pos, mdhd_end = _one(mdia, b"mdhd", where)
    v1 = _need(buf, pos, mdhd_end, 24)[pos] == 1
    timescale, duration = _timing(buf, pos, mdhd_end, v1, 12 if not v1 else 20)
    pos, hdlr_end = _one(mdia, b"hdlr", where)
    handler = bytes(_need(buf, pos, hdlr_end, 12)[pos + 8 : pos + 12]).decode("latin-1")
    stbl_at = _one(_children(buf, *_one(mdia, b"minf", where), where), b"stbl", where)
    stbl = _children(buf, *stbl_at, where)
    about = codec.Description()  # other tracks (timecode, text): no codec this walk knows
    if handler in ("vide", "soun"):
        about = _description(buf, *_one(stbl, b"stsd", where), handler, where)
    edits: tuple[tuple[int, int], ...] = ()
    if b"edts" in trak and b"elst" in (edts := _children(buf, *trak[b"edts"][0], where)):
        edits = _edits(buf, *edts[b"elst"][0])
    sizes = _sizes(buf, stbl, where)
    if b"co64" in stbl:
        chunks = _table(buf, *stbl[b"co64"][0], "Q", where)
    else:
        chunks = _table(buf, *_one(stbl, b"stco", where), "I", where)
    stsc = _pairs(buf, *_one(stbl, b"stsc", where), 3, where)
    stts = _pairs(buf, *_one(stbl, b"stts", where), 2, where)
    sync = _table(buf, *stbl[b"stss"][0], "I", where) if b"stss" in stbl else None
    ctts: tuple[tuple[int, int], ...] = ()
    if b"ctts" in stbl:  # offsets are unsigned in version 0, signed in version 1
        signed = buf[stbl[b"ctts"][0][0]] != 0
        ctts = _pairs(buf, *stbl[b"ctts"][0], 2, where, "i" if signed else "I")
    return Track(
        handler, about.codec, timescale, duration, edits,
        sizes=sizes, chunks=chunks, stsc=stsc, stts=stts, sync=sync, ctts=ctts,
        width=about.width, height=about.height, pix_fmt=about.pix_fmt,
        sample_rate=about.sample_rate, nal_length=about.nal_length,
    )  # fmt: skip


def _numbers(
    buf: Any, start: int, end: int, at: int, count: int, code: str, where: str
) -> array[int]:
    """`count` big-endian numbers of type `code` from byte `at` of the box buf[start:end]."""
    table = array(code)
    if at + count * table.itemsize > end:
        raise Damaged(f"{where}: a table declares {count} entries, more than its box holds")
    table.frombytes(buf[at : at + count * table.itemsize])
    if sys.byteorder == "little":
        table.byteswap()
    return table


def _table(buf: Any, start: int, end: int, code: str, where: str, width: int = 1) -> array[int]:
    """A full box's table: version and flags, an entry count, entries of `width` numbers."""
    _need(buf, start, end, 8)
    (count,) = _U32.unpack_from(buf, start + 4)
    return _numbers(buf, start, end, start + 8, count * width, code, where)


def _pairs(
    buf: Any, start: int, end: int, width: int, where: str, code: str = "I"
) -> tuple[tuple[int, int], ...]:
    """The first two numbers of each entry of a table (stts: two an entry, stsc: three)."""
    flat = _table(buf, start, end, code, where, width)
    return tuple(zip(flat[0::width], flat[1::width], strict=True))


def _sizes(buf: Any, stbl: dict[bytes, list[tuple[int, int]]], where: str) -> array[int]:
    if b"stz2" in stbl:
        raise Unsupported("compact sample sizes (stz2)")
    start, end = _one(stbl, b"stsz", where)
    _need(buf, start, end, 12)
    same, count = struct.unpack_from(">II", buf, start + 4)
    if same:  # every sample that size: each takes bytes of the file, so count <= its size
        if count > end:
            raise Damaged(f"{where}: stsz declares {count} samples, more than the file holds")
        return array("I", [same] * count)
    return _numbers(buf, start, end, start + 12, count, "I", where)


def _edits(buf: Any, start: int, end: int) -> tuple[tuple[int, int], ...]:
    _need(buf, start, end, 8)
    v1 = buf[start] == 1
    entry = struct.Struct(">Qq" if v1 else ">Ii")
    (count,) = _U32.unpack_from(buf, start + 4)
    width = entry.size + 4  # and the rate
    if count * width > end - start - 8:
        raise Damaged("an edit list declares more entries than its box holds")
    return tuple(entry.unpack_from(buf, start + 8 + i * width) for i in range(count))


def _description(buf: Any, start: int, end: int, handler: str, where: str) -> codec.Description:
    """What the track's single sample description (stsd) says about its codec."""
    _need(buf, start, end, 8)
    (count,) = _U32.unpack_from(buf, start + 4)
    if count != 1:
        raise Unsupported(f"{where}: {count} sample descriptions")
    kind, payload, entry_end = next(_boxes(buf, start + 8, end, where))
    try:
        return codec.describe(handler, kind, bytes(buf[payload:entry_end]))
    except codec.Unknown as err:
        raise Unsupported(f"{where}: {err}") from None


def _check_track(buf: Any, movie: Movie, track: Track) -> None:
    """The track's tables agree, cover its declared duration, and point inside an mdat."""
    where = f"the {_KINDS.get(track.handler, track.handler)} track"
    count = len(track.sizes)
    if sum(c for c, _ in track.stts) != count:
        raise Damaged(
            f"{where}: its time table covers {sum(c for c, _ in track.stts)} samples, "
            f"its size table {count}"
        )
    widest = max((d for _, d in track.stts), default=0)
    if track.duration > track.covered + widest:
        raise Damaged(
            f"{where} declares {track.duration / track.timescale:.3f} s, but its samples "
            f"cover {track.covered / track.timescale:.3f} s"
        )
    slack = widest + track.timescale // movie.timescale + 1
    media = track.media_start()
    for _, media_time in track.edits:
        if media_time > track.covered:
            raise Damaged(f"{where}: an edit starts past its last sample")
    played = sum(d for d, t in track.edits if t >= 0) * track.timescale // movie.timescale
    lead = max((offset for _, offset in track.ctts), default=0)  # presentation past decode
    if track.edits and media + played > track.covered + max(0, lead) + slack:
        raise Damaged(
            f"{where} plays {played / track.timescale:.3f} s from its edit list, but its "
            f"samples cover {(track.covered - media) / track.timescale:.3f} s"
        )
    if track.sync is not None and any(
        not 1 <= n <= count or (i and n <= track.sync[i - 1]) for i, n in enumerate(track.sync)
    ):
        raise Damaged(f"{where}: its sync sample table is out of order or out of range")
    nals = track.nal_length if track.codec in ("h264", "hevc") else 0
    hevc = track.codec == "hevc"
    sizes = track.sizes
    for offset, first, n in _chunks(track, where):
        end = offset + sum(sizes[first : first + n])
        if not any(start <= offset and end <= stop for start, stop in movie.mdats):
            raise Damaged(
                f"{where}: samples {first + 1}-{first + n} of {count} (bytes {offset}-{end}) "
                f"lie outside the media data (the file is {movie.size} bytes)"
            )
        for index in range(first, first + n) if nals else ():
            size = sizes[index]
            problem = "it is empty" if size == 0 else None
            problem = problem or nal.sample_problem(buf, offset, offset + size, nals, hevc)
            if problem is not None:
                raise Garbled(f"{where}: sample {index + 1} of {count} is garbled: {problem}")
            offset += size


_KINDS = {"vide": "video", "soun": "audio"}


def samples(track: Track) -> Iterator[tuple[int, int]]:
    """(file offset, size) of each of the track's samples, in decode order."""
    for offset, first, n in _chunks(track, f"the {track.handler} track"):
        for size in track.sizes[first : first + n]:
            yield offset, size
            offset += size


def _chunks(track: Track, where: str) -> Iterator[tuple[int, int, int]]:
    """(file offset, first sample, samples) of each chunk, from the chunk tables (whose
    samples lie one after another from the chunk's offset)."""
    chunks, stsc = track.chunks, track.stsc
    firsts = [first for first, _ in stsc]
    if stsc and (firsts[0] != 1 or firsts != sorted(set(firsts)) or firsts[-1] > len(chunks)):
        raise Damaged(f"{where}: its sample-to-chunk table is out of order")
    runs = list(zip(stsc, [*firsts[1:], len(chunks) + 1], strict=True))
    expected = sum((ends - first) * per for (first, per), ends in runs)
    if expected != len(track.sizes):
        raise Damaged(
            f"{where}: its chunk tables hold {expected} samples, its size table {len(track.sizes)}"
        )
    index = 0
    for (first, per), ends in runs:
        for chunk in range(first - 1, ends - 1):
            yield chunks[chunk], index, per
            index += per
