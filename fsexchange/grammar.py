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
- **sweep**: ``NAME=FROM:TO:COUNT`` renders an edit at COUNT strengths from FROM to
  TO, both included (``age=-8:8:5`` = -8, -4, 0, 4, 8); several separated by ``;``
  (or repeated flags) make a grid, one row per combination, the first edit varying
  slowest; in an edit spec for a draft, sweep items and plain edits mix freely;
- **frames**: ``F1,F2,...`` source frame indices (``--frames 10,24,40``);
- **text edit**: ``--edit-text "a smiling face" --strength 4 --beta 0.12``, a
  StyleCLIP global direction from a prompt (STRENGTH as for edits: a number or
  keyframes ``STRENGTH@FRAME,...``; ``--neutral`` defaults to "face");
- **option**: ``KEY.SUB=VALUE`` (VALUE parsed as JSON, else kept as text) into the
  nested ``Job.options`` map.

Standard library only. Errors are the protocol's typed errors, with ``field`` set.
"""

from __future__ import annotations

import json
import math
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
           "PREVIEW_WORDS", "SweepAxis", "parse_sweep", "format_sweep", "sweep_rows",
           "sweep_row_label", "sweep_row_folder", "check_sweep_edits",
           "MAX_SWEEP_ROWS", "parse_frames", "parse_option", "parse_text_edit",
           "text_edit_name", "REFINE_WORDS"]

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
    try:  # finite strengths within range, frames >= 0 (Edit.from_dict checks)
        return Edit.from_dict({"name": name, "strength": keyframes[0].strength,
                               "keyframes": [[k.frame, k.strength]
                                             for k in keyframes]})
    except FaceStitchError as exc:
        raise EditInvalid(f"edit {text.strip()!r}: {exc.message}",
                          field="edits") from None


def text_edit_name(text: str) -> str:
    """The edit name of a text edit: ``text_`` and the prompt's words
    (``"a smiling face"`` -> ``text_a_smiling_face``), at most 64 characters."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text.lower()).strip("_")
    return ("text_" + slug)[:64].rstrip("_") if slug else "text"


def parse_text_edit(text: str, strength: str | float | None, *,
                    beta: float | None = None, neutral: str | None = None) -> Edit:
    """``--edit-text TEXT --strength S [--beta B] [--neutral N]`` -> :class:`Edit`
    with ``space="text"`` (a StyleCLIP global direction the engine computes from
    the prompt; docs/reference.md "StyleCLIP global directions").

    ``strength`` is a number or keyframes ``STRENGTH@FRAME,...`` as for
    :func:`parse_edit`; ``beta`` defaults to 0.2 and ``neutral`` to "face" (STIT's
    defaults).

    Raises:
        EditInvalid: an empty prompt, no strength, a bad strength or β.
    """
    prompt = (text or "").strip()
    if not prompt:
        raise EditInvalid("--edit-text needs a prompt, e.g. --edit-text "
                          "\"a smiling face\"", field="edits.text")
    if strength is None or not str(strength).strip():
        raise EditInvalid(f"--edit-text {prompt!r} needs --strength (e.g. 4, or "
                          "keyframes 0@10,4@20)", field="edits.strength")
    base = parse_edit(f"{text_edit_name(prompt)}={strength}")
    data = base.to_dict()
    data.update(space="text", text=prompt)
    if neutral is not None:
        data["neutral"] = neutral
    if beta is not None:
        data["beta"] = beta
    try:
        return Edit.from_dict(data, "edits")
    except FaceStitchError as exc:
        raise EditInvalid(f"--edit-text {prompt!r}: {exc.message}",
                          field=exc.field or "edits") from None


def split_edit_spec(text: str) -> list[str]:
    """``"age=0@10,-4@20, smile=2; pose=1"`` -> the three edits' texts."""
    return [p.strip() for p in _EDIT_SPLIT.split(text) if p.strip()]


@dataclass(frozen=True)
class EditChoice:
    """What to run: ``kind`` and its edits; ``spec`` is the text form; ``sweep``
    the swept edits of a draft (empty otherwise); ``refine`` the spec's
    ``no-refine`` / ``refine`` word (None: not said, the settings decide)."""

    kind: str
    edits: tuple[Edit, ...]
    spec: str
    sweep: tuple["SweepAxis", ...] = ()
    refine: bool | None = None


def _is_sweep_item(text: str) -> bool:
    value = text.partition("=")[2]
    return ":" in value and "@" not in value


def parse_edit_spec(text: str | Iterable[str], *, known: Sequence[str] = (),
                    draft: bool = False) -> EditChoice:
    """An edit spec (or several ``--edit`` texts) -> :class:`EditChoice`.

    ``"preview"`` gives an align-preview job; otherwise a stitch job with at least
    one edit, or with ``draft`` a draft job whose items may also be sweeps
    (``age=-8:8:5``). ``known``: edit names to accept (when the installed edits
    are known).

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
    if spec.lower() in PREVIEW_WORDS and not draft:
        return EditChoice("align-preview", (), "preview")
    texts = [t for p in parts for t in split_edit_spec(p)]
    if not texts:
        raise EditInvalid("no edit given: write NAME=STRENGTH (e.g. age=-4), several "
                          "separated by ';'"
                          + (", or NAME=FROM:TO:COUNT to sweep strengths" if draft
                             else ", or 'preview'"), field="edits")
    for t in texts:  # an unknown name is the more useful message, so first
        name = t.partition("=")[0].strip()
        if known and name not in known:
            raise EditUnknown(f"unknown edit '{name}'; installed: "
                              f"{', '.join(known)}", field="edits")
    if not draft:
        return EditChoice("stitch", tuple(parse_edit(t) for t in texts),
                          spec + ("" if refine is None else
                                  f"; {'refine' if refine else 'no-refine'}"),
                          refine=refine)
    sweep = parse_sweep([t for t in texts if _is_sweep_item(t)])
    edits = tuple(parse_edit(t) for t in texts if not _is_sweep_item(t))
    check_sweep_edits(sweep, edits)
    return EditChoice("draft", edits, spec, sweep)


# --- strength sweeps ------------------------------------------------------------------

#: Most rows a sweep may render (the product of every swept edit's count).
MAX_SWEEP_ROWS = 64
_MAX_SWEEP_COUNT = 16


@dataclass(frozen=True)
class SweepAxis:
    """One swept edit: ``count`` strengths from ``start`` to ``stop``, both ends
    included, evenly spaced."""

    name: str
    start: float
    stop: float
    count: int

    @property
    def strengths(self) -> tuple[float, ...]:
        if self.count == 1:
            return (self.start,)
        step = (self.stop - self.start) / (self.count - 1)
        # rounded so that -8:8:5 gives exactly -8, -4, 0, 4, 8
        return tuple(round(self.start + i * step, 9) for i in range(self.count))

    def text(self) -> str:
        return f"{self.name}={self.start:g}:{self.stop:g}:{self.count}"


def parse_sweep(text: str | Iterable[str] | None) -> tuple[SweepAxis, ...]:
    """``"age=-8:8:5; smile=0:2:3"`` (or several texts) -> the swept edits, in order.

    ``None`` or empty text: no sweep.

    Raises:
        EditInvalid: not ``NAME=FROM:TO:COUNT``, a count below 1 or above 16, one
            strength asked for a range (count 1 with FROM != TO), an edit swept
            twice, or more than :data:`MAX_SWEEP_ROWS` rows in all.
    """
    if text is None:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    items = [t for p in parts for t in split_edit_spec(p)]
    axes: list[SweepAxis] = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        bits = value.split(":")
        try:
            if (not sep or len(bits) != 3
                    or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name)):
                raise ValueError
            start, stop, count = float(bits[0]), float(bits[1]), int(bits[2])
            if not all(map(math.isfinite, (start, stop))):
                raise ValueError
        except ValueError:
            raise EditInvalid(f"sweep {item.strip()!r} must be NAME=FROM:TO:COUNT "
                              "(e.g. age=-8:8:5: 5 strengths from -8 to 8)",
                              field="sweep") from None
        if not 1 <= count <= _MAX_SWEEP_COUNT:
            raise EditInvalid(f"sweep {item.strip()!r}: COUNT must be 1 to "
                              f"{_MAX_SWEEP_COUNT}", field="sweep")
        if count == 1 and start != stop:
            raise EditInvalid(f"sweep {item.strip()!r}: one strength cannot span "
                              f"{start:g} to {stop:g}; give COUNT >= 2", field="sweep")
        if any(a.name == name for a in axes):
            raise EditInvalid(f"sweep: edit {name!r} is swept twice", field="sweep")
        axes.append(SweepAxis(name, start, stop, count))
    rows = math.prod(a.count for a in axes) if axes else 0
    if rows > MAX_SWEEP_ROWS:
        raise EditInvalid(f"sweep {format_sweep(axes)!r} makes {rows} rows; at most "
                          f"{MAX_SWEEP_ROWS}", field="sweep")
    return tuple(axes)


def format_sweep(axes: Sequence[SweepAxis]) -> str:
    """The canonical text of a sweep (what ``options.draft.sweep`` holds)."""
    return "; ".join(a.text() for a in axes)


def sweep_rows(axes: Sequence[SweepAxis]) -> list[tuple[tuple[str, float], ...]]:
    """Every combination of the swept strengths, first edit varying slowest:
    ``[(("age", -8.0),), (("age", -4.0),), ...]``; one empty row without a sweep."""
    rows: list[tuple[tuple[str, float], ...]] = [()]
    for a in axes:
        rows = [r + ((a.name, s),) for r in rows for s in a.strengths]
    return rows


def sweep_row_label(row: Sequence[tuple[str, float]], edits: Sequence[Edit] = ()
                    ) -> str:
    """A row for people: ``"age -8"``, ``"age 4, smile 1"``; without a sweep (an
    empty row) the job's own edits."""
    if row:
        return ", ".join(f"{n} {s:g}" for n, s in row)
    return ", ".join(f"{e.name} {e.strength:g}" if not e.keyframes
                     else f"{e.name} (keyframed)" for e in edits) or "no edit"


def sweep_row_folder(index: int, row: Sequence[tuple[str, float]]) -> str:
    """The folder name of a draft's row under ``output/sweep/``: ``r00_age-8``,
    ``r03_age+4_smile0``; ``r00_edit`` without a sweep."""
    slug = "_".join(f"{n}{s:+g}" if s else f"{n}0" for n, s in row) or "edit"
    return f"r{index:02d}_{slug}"


def check_sweep_edits(sweep: Sequence[SweepAxis], edits: Sequence[Edit]) -> None:
    """Refuse an edit both swept and given a fixed strength (which would win?).

    Raises:
        EditInvalid: naming the edit.
    """
    fixed = {e.name for e in edits}
    for a in sweep:
        if a.name in fixed:
            raise EditInvalid(f"edit {a.name!r} is both swept ({a.text()}) and given "
                              "a fixed strength; give it once", field="sweep")


# --- frame lists ----------------------------------------------------------------------


def parse_frames(text: str | None, *, flag: str = "--frames") -> tuple[int, ...]:
    """``"10,24,40"`` -> ``(10, 24, 40)`` (sorted, without repeats).

    Raises:
        RangeInvalid: not a comma-separated list of frame numbers >= 0.
    """
    if text is None or not text.strip():
        return ()
    try:
        frames = sorted({int(t) for t in text.split(",") if t.strip()})
        if not frames or frames[0] < 0:
            raise ValueError
    except ValueError:
        raise RangeInvalid(f"{flag} {text!r} must be source frame numbers separated "
                           "by commas, e.g. 10,24,40", field="frames") from None
    return tuple(frames)


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
