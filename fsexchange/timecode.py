"""Rational time: frame rates as ``Fraction``, SMPTE timecode <-> frame counts.

No float seconds anywhere in the protocol: a frame is an integer, a rate is a
``Fraction`` (serialised as ``[num, den]``), and a timecode string is converted with
the nominal integer rate (24 for 24000/1001, 30 for 30000/1001). Drop-frame (``;``)
is supported for 30000/1001 and 60000/1001 per SMPTE 12M.
"""

from __future__ import annotations

import re
from fractions import Fraction

from fsexchange.errors import DocumentFieldError

__all__ = [
    "parse_rate",
    "rate_to_list",
    "nominal_fps",
    "timecode_to_frames",
    "frames_to_timecode",
]

_TC = re.compile(r"^(\d{1,2})[:;.](\d{2})[:;.](\d{2})([:;.])(\d{2,3})$")


def parse_rate(value: object, field: str = "rate") -> Fraction:
    """Parse ``[num, den]``, ``"24000/1001"``, an int or a ``Fraction`` into a rate."""
    try:
        if isinstance(value, Fraction):
            rate = value
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            num, den = value
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError
            rate = Fraction(num, den)
        elif isinstance(value, int) and not isinstance(value, bool):
            rate = Fraction(value)
        elif isinstance(value, str):
            rate = Fraction(value)
        else:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        raise DocumentFieldError(
            f"{field} must be a rational frame rate like [24000, 1001], got {value!r}",
            field=field,
        ) from None
    if rate <= 0 or rate > 1000:
        raise DocumentFieldError(f"{field} {rate} is not a plausible frame rate",
                                 field=field)
    return rate


def rate_to_list(rate: Fraction) -> list[int]:
    return [rate.numerator, rate.denominator]


def nominal_fps(rate: Fraction) -> int:
    """The integer frame count per timecode second (24 for 23.976, 30 for 29.97)."""
    return max(1, round(rate))


def _is_drop_capable(rate: Fraction) -> bool:
    return rate.denominator == 1001 and nominal_fps(rate) in (30, 60)


def timecode_to_frames(tc: str, rate: Fraction) -> int:
    """``"01:00:00:00"`` at 24000/1001 -> 86400. ``;`` before the frames means
    drop-frame."""
    m = _TC.match(tc.strip())
    if not m:
        raise DocumentFieldError(f"timecode {tc!r} is not HH:MM:SS:FF",
                                 field="timecode")
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    fps = nominal_fps(rate)
    if mm > 59 or ss > 59 or ff >= fps:
        raise DocumentFieldError(f"timecode {tc!r} is out of range at {fps} fps",
                                 field="timecode")
    frames = ((hh * 60 + mm) * 60 + ss) * fps + ff
    if sep == ";":
        if not _is_drop_capable(rate):
            raise DocumentFieldError(
                f"drop-frame timecode {tc!r} needs a 30000/1001 or 60000/1001 rate",
                field="timecode")
        drop = 2 * (fps // 30)
        total_minutes = hh * 60 + mm
        frames -= drop * (total_minutes - total_minutes // 10)
    return frames


def frames_to_timecode(frames: int, rate: Fraction, drop_frame: bool = False) -> str:
    """Inverse of :func:`timecode_to_frames`."""
    if frames < 0:
        raise ValueError(f"negative frame count {frames}")
    fps = nominal_fps(rate)
    sep = ":"
    if drop_frame:
        if not _is_drop_capable(rate):
            raise ValueError("drop-frame timecode needs 30000/1001 or 60000/1001")
        drop = 2 * (fps // 30)
        per_10min = fps * 600 - drop * 9
        per_min = fps * 60 - drop
        tens, rem = divmod(frames, per_10min)
        if rem > drop:
            frames += drop * 9 * tens + drop * ((rem - drop) // per_min)
        else:
            frames += drop * 9 * tens
        sep = ";"
    ff = frames % fps
    total_s = frames // fps
    hh, mm, ss = total_s // 3600, total_s // 60 % 60, total_s % 60
    return f"{hh:02d}:{mm:02d}:{ss:02d}{sep}{ff:02d}"
