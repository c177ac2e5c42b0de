"""H.264 and HEVC as an MP4 carries them: samples of length-prefixed NAL units, and the
sequence parameter set that says a stream's frame size and pixel format. Read, never decoded.

Within a NAL unit the bytes 00 00 00, 00 00 01 and 00 00 02 never occur (the encoder escapes
them), so a run of zeroed bytes, or a length prefix landing in garbage, shows without decoding a
picture. Nothing here trusts its input: every read is bounded, and a parameter set it cannot
read raises `Unreadable`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

_FORBIDDEN = re.compile(rb"\x00\x00[\x00-\x02]")
_ESCAPE = re.compile(rb"\x00\x00\x03")
_U32 = struct.Struct(">I")
# H.264 profiles whose SPS carries chroma format, bit depths and scaling matrices.
_AVC_HIGH = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_CHROMA = {0: "420", 1: "420", 2: "422", 3: "444"}  # ffmpeg shows 4:0:0 H.264 as 4:2:0


class Unreadable(Exception):
    """A parameter set this module cannot read (cut short, or a syntax it does not know)."""


@dataclass(frozen=True)
class Sps:
    """What a sequence parameter set says about the pictures."""

    width: int  # after cropping, as players show it
    height: int
    pix_fmt: str  # ffmpeg's name for what its decoder will output, e.g. "yuv420p"


def sample_problem(buf: Any, start: int, end: int, length_size: int, hevc: bool) -> str | None:
    """What is wrong with the NAL units of the sample at buf[start:end], in words; None when
    they tile it exactly and none holds a forbidden byte sequence."""
    pos = start
    while pos < end:
        if end - pos < length_size:
            return f"{end - pos} stray bytes after its last NAL unit"
        if length_size == 4:
            (n,) = _U32.unpack_from(buf, pos)
        else:
            n = int.from_bytes(buf[pos : pos + length_size], "big")
        body = pos + length_size
        if n == 0:
            return f"an empty NAL unit at byte {pos}"
        if body + n > end:
            return f"a NAL unit at byte {pos} declares {n} bytes, {body + n - end} past its end"
        header = buf[body]
        if header & 0x80:
            return f"the NAL unit at byte {pos} has its forbidden bit set"
        if hevc and (n < 2 or buf[body + 1] & 0x07 == 0):
            return f"the NAL unit at byte {pos} has no temporal id"
        if not hevc and header & 0x1F == 0:
            return f"the NAL unit at byte {pos} has type 0"
        found = _FORBIDDEN.search(buf, body, body + n)
        if found is not None:
            return f"bytes {found.group().hex(' ')} at byte {found.start()}, inside a NAL unit"
        pos = body + n
    return None


class _Bits:
    """An MSB-first bit reader over a NAL unit's payload (escape bytes removed)."""

    def __init__(self, rbsp: bytes) -> None:
        self.value = int.from_bytes(rbsp, "big")
        self.left = len(rbsp) * 8

    def u(self, n: int) -> int:
        if n > self.left:
            raise Unreadable("the parameter set ends early")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def ue(self) -> int:
        rest = self.value & ((1 << self.left) - 1)
        zeros = self.left - rest.bit_length()
        if zeros > 31:
            raise Unreadable("an Exp-Golomb code is too long")
        self.u(zeros)
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(nal: bytes, header: int) -> _Bits:
    """The payload of a NAL unit after its `header` bytes, emulation prevention undone."""
    return _Bits(_ESCAPE.sub(b"\x00\x00", nal[header:]))


def _pix_fmt(chroma: int, depth: int, full_range: bool) -> str:
    if chroma not in _CHROMA or depth not in (8, 10, 12):
        raise Unreadable(f"chroma format {chroma} at {depth} bits")
    if depth == 8:
        return f"yuv{'j' if full_range else ''}{_CHROMA[chroma]}p"
    return f"yuv{_CHROMA[chroma]}p{depth}le"


def avc_sps(nal: bytes) -> Sps:
    """An H.264 SPS NAL unit (header byte included)."""
    if not nal or nal[0] & 0x1F != 7:
        raise Unreadable("not an H.264 SPS")
    r = _rbsp(nal, 1)
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma, depth = 1, 8
    if profile in _AVC_HIGH:
        chroma = r.ue()
        if chroma == 3:
            r.u(1)  # separate_colour_plane_flag
        depth = r.ue() + 8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    _skip_avc_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = r.ue() + 1, r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.u(1) else (0, 0, 0, 0)
    unit_x = 2 if chroma in (1, 2) else 1
    unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    full_range = False
    if r.u(1):  # vui_parameters_present_flag
        full_range = _vui_full_range(r)
    if width <= 0 or height <= 0:
        raise Unreadable(f"a frame of {width}x{height}")
    return Sps(width, height, _pix_fmt(chroma, depth, full_range))


def _skip_avc_scaling_list(r: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + r.se() + 256) % 256
        last = following or last


def _vui_full_range(r: _Bits) -> bool:
    """video_full_range_flag from the start of VUI parameters (the same in H.264 and HEVC)."""
    if r.u(1) and r.u(8) == 255:  # aspect_ratio_info_present_flag, aspect_ratio_idc
        r.u(32)  # sar_width, sar_height
    if r.u(1):  # overscan_info_present_flag
        r.u(1)
    if r.u(1):  # video_signal_type_present_flag
        r.u(3)  # video_format
        return bool(r.u(1))
    return False


def hevc_sps(nal: bytes) -> Sps:
    """An HEVC SPS NAL unit (its two header bytes included)."""
    if len(nal) < 2 or (nal[0] >> 1) & 0x3F != 33:
        raise Unreadable("not an HEVC SPS")
    r = _rbsp(nal, 2)
    r.u(4)  # sps_video_parameter_set_id
    sub_layers = r.u(3)  # sps_max_sub_layers_minus1
    r.u(1)  # sps_temporal_id_nesting_flag
    _skip_profile_tier_level(r, sub_layers)
    r.ue()  # sps_seq_parameter_set_id
    chroma = r.ue()
    if chroma == 3:
        r.u(1)  # separate_colour_plane_flag
    width, height = r.ue(), r.ue()
    if r.u(1):  # conformance_window_flag
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = 2 if chroma == 1 else 1
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    depth = r.ue() + 8
    r.ue()  # bit_depth_chroma_minus8
    poc_bits = r.ue() + 4
    ordering_all = r.u(1)  # sps_sub_layer_ordering_info_present_flag
    for _ in range(sub_layers + 1 if ordering_all else 1):
        r.ue(), r.ue(), r.ue()
    for _ in range(6):  # min/max coding and transform block sizes, hierarchy depths
        r.ue()
    if r.u(1) and r.u(1):  # scaling_list_enabled_flag, sps_scaling_list_data_present_flag
        _skip_hevc_scaling_lists(r)
    r.u(2)  # amp_enabled_flag, sample_adaptive_offset_enabled_flag
    if r.u(1):  # pcm_enabled_flag
        r.u(8)
        r.ue(), r.ue()
        r.u(1)
    _skip_short_term_ref_pic_sets(r, r.ue())
    if r.u(1):  # long_term_ref_pics_present_flag
        for _ in range(r.ue()):
            r.u(poc_bits + 1)
    r.u(2)  # sps_temporal_mvp_enabled_flag, strong_intra_smoothing_enabled_flag
    full_range = _vui_full_range(r) if r.u(1) else False
    if width <= 0 or height <= 0:
        raise Unreadable(f"a frame of {width}x{height}")
    pix_fmt = f"gray{'' if depth == 8 else f'{depth}le'}" if chroma == 0 else None
    return Sps(width, height, pix_fmt or _pix_fmt(chroma, depth, full_range))


def _skip_profile_tier_level(r: _Bits, sub_layers: int) -> None:
    r.u(8 + 32 + 48 + 8)  # general profile, compatibility flags, constraints, level
    present = [(r.u(1), r.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        r.u(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile, level in present:
        r.u((88 if profile else 0) + (8 if level else 0))


def _skip_hevc_scaling_lists(r: _Bits) -> None:
    for size in range(4):
        for _ in range(0, 6, 3 if size == 3 else 1):
            if not r.u(1):  # scaling_list_pred_mode_flag
                r.ue()
                continue
            if size > 1:
                r.se()  # scaling_list_dc_coef_minus8
            for _ in range(min(64, 1 << (4 + (size << 1)))):
                r.se()


def _skip_short_term_ref_pic_sets(r: _Bits, count: int) -> None:
    deltas: list[int] = []  # NumDeltaPocs of each set, for sets predicted from another
    for i in range(count):
        if i and r.u(1):  # inter_ref_pic_set_prediction_flag
            r.u(1)  # delta_rps_sign
            r.ue()  # abs_delta_rps_minus1
            n = 0
            for _ in range(deltas[i - 1] + 1):
                used = r.u(1)
                if used or r.u(1):  # use_delta_flag
                    n += 1
            deltas.append(n)
        else:
            negative, positive = r.ue(), r.ue()
            if negative + positive > 32:
                raise Unreadable("a reference picture set of more than 32 pictures")
            for _ in range(negative + positive):
                r.ue()
                r.u(1)
            deltas.append(negative + positive)
