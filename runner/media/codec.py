"""What a track's sample description (stsd) says: its codec, by ffmpeg's name, and the frame
size and pixel format of its pictures (from the H.264/HEVC parameter sets) or the sample rate
of its sound. Only what ffmpeg would report the same way is read; anything else is `Unknown`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from runner.media import nal

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_VIDEO = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc"}
_AUDIO = {b"mp4a": "aac", b"Opus": "opus", b".mp3": "mp3"}
_MP4A = {0x40: "aac", 0x66: "aac", 0x67: "aac", 0x68: "aac", 0x69: "mp3", 0x6B: "mp3"}
_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_VISUAL = 78  # bytes of a visual sample entry before its child boxes
_SOUND = {0: 28, 1: 44, 2: 64}  # the same for each version of a sound sample entry


class Unknown(Exception):
    """A codec, or a description of one, that this module does not read."""


@dataclass(frozen=True)
class Description:
    codec: str | None = None  # None: no codec this module knows (a timecode, a text track)
    width: int = 0
    height: int = 0
    pix_fmt: str | None = None
    sample_rate: int | None = None
    nal_length: int = 0  # bytes of each NAL unit's length prefix (H.264, HEVC)


def describe(handler: str, kind: bytes, entry: bytes) -> Description:
    """A sample entry of type `kind` (its bytes after the box header) of a "vide" or "soun"
    track."""
    if handler == "vide":
        name = _VIDEO.get(kind)
        if name is None or len(entry) < _VISUAL:
            raise Unknown(f"video in {kind!r}")
        config = _child(entry, _VISUAL, b"avcC" if name == "h264" else b"hvcC")
        try:
            length, sps = (_avc_config if name == "h264" else _hevc_config)(config)
            pictures = (nal.avc_sps if name == "h264" else nal.hevc_sps)(sps)
        except nal.Unreadable as err:
            raise Unknown(str(err)) from None
        return Description(name, pictures.width, pictures.height, pictures.pix_fmt, None, length)
    name = _AUDIO.get(kind)
    if name is None or len(entry) < 28:
        raise Unknown(f"audio in {kind!r}")
    (version,) = _U16.unpack_from(entry, 8)
    rate = _U32.unpack_from(entry, 24)[0] >> 16  # 16.16 fixed point
    if version not in _SOUND:
        raise Unknown(f"a sound description of version {version}")
    if kind == b"mp4a":
        try:
            esds = _child(entry, _SOUND[version], b"esds")
        except Unknown:  # QuickTime nests it in a wave box
            esds = _child(_child(entry, _SOUND[version], b"wave"), 0, b"esds")
        name, rate = _esds(esds[4:], rate)  # after its version and flags
    if name == "opus":
        rate = 48000  # Opus always decodes at 48 kHz
    return Description(name, sample_rate=rate)


def _child(data: bytes, pos: int, kind: bytes) -> bytes:
    """The payload of the first child box of type `kind` in data[pos:]."""
    while pos + 8 <= len(data):
        size, found = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > len(data):
            break
        if found == kind:
            return data[pos + 8 : pos + size]
        pos += size
    raise Unknown(f"no {kind.decode('latin-1')} box in the sample description")


def _esds(data: bytes, rate: int) -> tuple[str, int]:
    """(codec, sample rate) from an esds box: its object type and AudioSpecificConfig."""
    found: dict[int, bytes] = {}

    def descriptors(blob: bytes) -> None:
        pos = 0
        while pos + 2 <= len(blob):
            tag, length, pos = blob[pos], 0, pos + 1
            for _ in range(4):
                if pos >= len(blob):
                    return
                length, pos = (length << 7) | (blob[pos] & 0x7F), pos + 1
                if not blob[pos - 1] & 0x80:
                    break
            body = blob[pos : pos + length]
            found.setdefault(tag, body)
            if tag == 3 and len(body) >= 3:  # ES_Descriptor: ES_ID, flags, optional fields
                flags, skip = body[2], 3
                skip += 2 if flags & 0x80 else 0
                skip += 1 + body[skip] if flags & 0x40 and skip < len(body) else 0
                skip += 2 if flags & 0x20 else 0
                descriptors(body[skip:])
            elif tag == 4 and len(body) > 13:  # DecoderConfigDescriptor
                descriptors(body[13:])
            pos += length

    descriptors(data)
    config = found.get(4, b"")
    name = _MP4A.get(config[0]) if config else None
    if name is None:
        raise Unknown("mp4a audio of an unknown object type")
    asc = found.get(5, b"")
    if name == "aac" and len(asc) >= 2:
        index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7)
        if index < len(_RATES):
            rate = _RATES[index]
    return name, rate


def _avc_config(record: bytes) -> tuple[int, bytes]:
    """(NAL length prefix size, first SPS) from an avcC box's payload."""
    if len(record) < 7 or record[0] != 1:
        raise Unknown("not an avcC record of version 1")
    if not record[5] & 0x1F:
        raise Unknown("an avcC record without an SPS")
    (size,) = _U16.unpack_from(record, 6)
    sps = record[8 : 8 + size]
    if len(sps) != size:
        raise Unknown("the avcC record ends inside its SPS")
    return (record[4] & 3) + 1, sps


def _hevc_config(record: bytes) -> tuple[int, bytes]:
    """(NAL length prefix size, first SPS) from an hvcC box's payload."""
    if len(record) < 23:
        raise Unknown("an hvcC record cut short")
    pos = 23
    for _ in range(record[22]):  # numOfArrays
        if pos + 3 > len(record):
            break
        kind = record[pos] & 0x3F
        (count,) = _U16.unpack_from(record, pos + 1)
        pos += 3
        for _ in range(count):
            if pos + 2 > len(record):
                break
            (size,) = _U16.unpack_from(record, pos)
            if kind == 33:
                sps = record[pos + 2 : pos + 2 + size]
                if len(sps) != size:
                    break
                return (record[21] & 3) + 1, sps
            pos += 2 + size
    raise Unknown("an hvcC record without a whole SPS")
