"""The text grammars every client shares: frame ranges, subjects, edits, options.

One home for what a user types, whether on the command line (``facestitch
submit``, ``preview``, ``metrics``, ``ofx submit``), in a Resolve dialog or in the
bridge's settings file, so the same text means the same job everywhere:

- **range**: ``START:END`` media frame indices, END exclusive (either side may be
  empty), or source timecodes ``TC-TC`` (END exclusive) converted with the media's
  start timecode and rate;
- **subject**: ``--face N`` (N-th largest face), ``--face-point FRAME:X,Y`` or
  ``--face-box FRAME:X0,Y0,X1,Y1``;
- **edit**: ``NAME=STRENGTH`` or keyframes ``NAME=STRENGTH@FRAME,STRENGTH@FRAME,...``
  (STIT's strength convention); an **edit spec** is several edits separated by
  ``;`` or by a comma that starts the next ``NAME=``, or the word ``preview``
  (an align-preview job: track, align and paste back without an edit); a last
  part ``no-refine`` (or ``refine``) switches the temporal refinement off (on)
  for that job, e.g. ``age=-4; no-refine``;
- **option**: ``KEY.SUB=VALUE`` (VALUE parsed as JSON, else kept as text) into the
  nested ``Job.options`` map.

Standard library only. Errors are the protocol's typed errors, with ``field`` set.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Sequence

from fsexchange.documents import Edit, Keyframe, Subject
from fsexchange.errors import (DocumentFieldError, EditInvalid, EditUnknown,
                               FaceStitchError, RangeInvalid, RangeOutOfBounds,
                               SubjectInvalid)
from fsexchange.timecode import timecode_to_frames

__all__ = ["parse_range", "is_timecode_range", "timecode_range", "parse_subject",
           "parse_edit", "split_edit_spec", "EditChoice", "parse_edit_spec",
           "PREVIEW_WORDS", "REFINE_WORDS", "parse_option"]

#: Edit-spec words that ask for an align-preview job instead of an edit.
PREVIEW_WORDS = ("preview", "align-preview")
#: Edit-spec words that switch the temporal refinement of a stitch job.
REFINE_WORDS = {"no-refine": False, "refine": True}
_REFINE_TAIL = re.compile(r"(?:^|[;,])\s*(no-refine|refine)\s*$", re.IGNORECASE)

_TC = r"\d{1,2}[:;.]\d{2}[:;.]\d{2}[:;.]\d{2,3}"
_TC_RANGE = re.compile(rf"^\s*({_TC})\s*-\s*({_TC})\s*$")
# a comma that starts the next "NAME=" (keyframe lists also contain commas)
_EDIT_SPLIT = re.compile(r";|,(?=\s*[A-Za-z_][\w-]*\s*=)")


# --- ranges ---------------------------------------------------------------------------


def parse_range(text: str | None, frame_count: int | None = None, *,
                flag: str = "--range") -> tuple[int, int]:
    """``"START:END"`` (either side may be empty) -> ``(start, end)``.

    ``None`` means the whole media (``0:frame_count``).

    Raises:
        RangeInvalid: bad syntax, negative, empty or reversed; a missing END when
            the media's length is unknown.
        RangeOutOfBounds: END past the media's ``frame_count``.
    """
    if text is None:
        if frame_count is None:
            raise RangeInvalid(f"give {flag} START:END (the media cannot be probed "
                               "here to find its length)", field="range")
        return 0, frame_count
    start_s, sep, end_s = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start = int(start_s) if start_s.strip() else 0
        if end_s.strip():
            end = int(end_s)
        elif frame_count is not None:
            end = frame_count
        else:
            raise RangeInvalid(f"{flag} {text}: give END (the media cannot be "
                               "probed here)", field="range.end")
    except ValueError:
        raise RangeInvalid(f"{flag} {text!r} is not START:END with frame numbers "
                           "(media indices, END exclusive)", field="range") from None
    if start < 0:
        raise RangeInvalid(f"{flag} {text}: START must be >= 0", field="range.start")
    if end <= start:
        raise RangeInvalid(f"{flag} {text} is empty: END is exclusive and must be "
                           f"greater than START", field="range.end")
    if frame_count is not None and end > frame_count:
        raise RangeOutOfBounds(f"{flag} {text} reaches past the media, which has "
                               f"{frame_count} frames (0:{frame_count})",
                               field="range.end")
    return start, end


def is_timecode_range(text: str | None) -> bool:
    return bool(text) and _TC_RANGE.match(text) is not None


def timecode_range(text: str, rate: Fraction, start_timecode: str | None, *,
                   flag: str = "--range") -> str:
    """``"01:00:00:10-01:00:04:00"`` -> ``"10:96"`` (media indices, END exclusive)
    for media starting at ``start_timecode`` (00:00:00:00 when it has none).

    Raises:
        RangeInvalid: not a timecode range, a bad timecode, or one before the
            media's start.
    """
    m = _TC_RANGE.match(text)
    if not m:
        raise RangeInvalid(f"{flag} {text!r} is not a timecode range TC-TC",
                           field="range")
    origin = timecode_to_frames(start_timecode, rate) if start_timecode else 0
    try:
        start, end = (timecode_to_frames(tc, rate) - origin for tc in m.groups())
    except DocumentFieldError as exc:
        raise RangeInvalid(f"{flag} {text}: {exc.message}", field="range") from None
    if start < 0:
        raise RangeInvalid(f"{flag} {text}: {m[1]} is before the media's start "
                           f"timecode {start_timecode or '00:00:00:00'}",
                           field="range.start")
    return f"{start}:{end}"


# --- subjects -------------------------------------------------------------------------


def parse_subject(face: int | None = None, point: str | None = None,
                  box: str | None = None) -> Subject:
    """``--face N`` / ``--face-point FRAME:X,Y`` / ``--face-box FRAME:X0,Y0,X1,Y1``.

    Raises:
        SubjectInvalid: more than one given, or bad syntax.
    """
    given = [a for a in (face, point, box) if a is not None]
    if len(given) > 1:
        raise SubjectInvalid("give only one of --face, --face-point, --face-box",
                             field="subject")
    if face is not None:
        if face < 0:
            raise SubjectInvalid("--face must be >= 0", field="subject.index")
        return Subject(index=face)
    for text, n, flag in ((point, 2, "--face-point"), (box, 4, "--face-box")):
        if text is None:
            continue
        frame_s, sep, coords = text.partition(":")
        try:
            values = [float(v) for v in coords.split(",")]
            frame = int(frame_s)
            if not sep or len(values) != n or frame < 0:
                raise ValueError
        except ValueError:
            shape = "X,Y" if n == 2 else "X0,Y0,X1,Y1"
            raise SubjectInvalid(f"{flag} {text!r} must be FRAME:{shape} (media frame "
                                 "index, pixel coordinates)", field="subject") from None
        if n == 4 and not (values[0] < values[2] and values[1] < values[3]):
            raise SubjectInvalid(f"{flag} {text!r}: need X0 < X1 and Y0 < Y1",
                                 field="subject.box")
        coords_t = (float(frame), *values)
        return Subject(point=coords_t) if n == 2 else Subject(box=coords_t)
    return Subject()


# --- edits ----------------------------------------------------------------------------


def parse_edit(text: str) -> Edit:
    """``"age=-4"`` or ``"age=0@1001,-4@1024"`` (strength@frame) -> :class:`Edit`.

    Raises:
        EditInvalid: bad syntax, or keyframe frames that do not increase.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or not value.strip():
        raise EditInvalid(f"edit {text.strip()!r} must be NAME=STRENGTH or "
                          "NAME=STRENGTH@FRAME,... (e.g. age=-4)", field="edits")
    try:
        if "@" not in value:
            return Edit.from_dict({"name": name, "strength": float(value)})
        keyframes = []
        for pair in value.split(","):
            strength, at, frame = pair.partition("@")
            if not at:
                raise ValueError
            keyframes.append(Keyframe(int(frame), float(strength)))
    except ValueError:
        raise EditInvalid(f"edit {text.strip()!r}: keyframes must be STRENGTH@FRAME "
                          "pairs separated by commas, e.g. age=0@10,-4@20",
                          field="edits") from None
    except FaceStitchError as exc:
        raise EditInvalid(f"edit {text.strip()!r}: {exc.message}",
                          field="edits") from None
    frames = [k.frame for k in keyframes]
    if frames != sorted(set(frames)):
        raise EditInvalid(f"edit {text.strip()!r}: keyframe frames must increase",
                          field="edits")
    return Edit.from_dict({"name": name, "strength": keyframes[0].strength,
                           "keyframes": [[k.frame, k.strength] for k in keyframes]})


def split_edit_spec(text: str) -> list[str]:
    """``"age=0@10,-4@20, smile=2; pose=1"`` -> the three edits' texts."""
    return [p.strip() for p in _EDIT_SPLIT.split(text) if p.strip()]


@dataclass(frozen=True)
class EditChoice:
    """What to run: ``kind`` and its edits; ``spec`` is the text form; ``refine``
    is the spec's ``no-refine`` / ``refine`` word (None: not said, the settings
    decide)."""

    kind: str
    edits: tuple[Edit, ...]
    spec: str
    refine: bool | None = None


def parse_edit_spec(text: str | Iterable[str], *,
                    known: Sequence[str] = ()) -> EditChoice:
    """An edit spec (or several ``--edit`` texts) -> :class:`EditChoice`.

    ``"preview"`` gives an align-preview job; otherwise a stitch job with at least
    one edit. ``known``: edit names to accept (when the installed edits are known).

    Raises:
        EditInvalid: malformed text, or no edit at all.
        EditUnknown: a name missing from ``known`` (when given).
    """
    parts = ([text] if isinstance(text, str) else list(text))
    refine: bool | None = None
    if parts:
        m = _REFINE_TAIL.search(parts[-1])
        if m:
            refine = REFINE_WORDS[m.group(1).lower()]
            parts = parts[:-1] + [parts[-1][:m.start()]]
    spec = "; ".join(p.strip() for p in parts if p.strip())
    if spec.lower() in PREVIEW_WORDS:
        return EditChoice("align-preview", (), "preview")
    texts = [t for p in parts for t in split_edit_spec(p)]
    if not texts:
        raise EditInvalid("no edit given: write NAME=STRENGTH (e.g. age=-4), several "
                          "separated by ';', or 'preview'", field="edits")
    for t in texts:  # an unknown name is the more useful message, so first
        name = t.partition("=")[0].strip()
        if known and name not in known:
            raise EditUnknown(f"unknown edit '{name}'; installed: "
                              f"{', '.join(known)}", field="edits")
    return EditChoice("stitch", tuple(parse_edit(t) for t in texts),
                      spec + ("" if refine is None else
                              f"; {'refine' if refine else 'no-refine'}"), refine)


# --- options --------------------------------------------------------------------------


def parse_option(options: dict[str, Any], text: str) -> None:
    """Apply ``"pti.steps=40"`` to a nested options map (VALUE: JSON or text).

    Raises:
        DocumentFieldError: not ``KEY.SUB=VALUE``, or a clash with another option.
    """
    key, sep, raw = text.partition("=")
    parts = [k.strip() for k in key.split(".")]
    if not sep or not all(parts):
        raise DocumentFieldError(f"option {text!r} must be KEY.SUB=VALUE",
                                 field="options")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    node = options
    for k in parts[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise DocumentFieldError(f"option {text!r} conflicts with another "
                                     "option", field=f"options.{key}")
    if isinstance(node.get(parts[-1]), dict):
        raise DocumentFieldError(f"option {text!r} conflicts with another option",
                                 field=f"options.{key}")
    node[parts[-1]] = value
