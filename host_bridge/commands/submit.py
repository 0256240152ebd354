"""``facestitch submit``: turn a clip into a job in an exchange folder.

Refuses at submit time, with a clear message and exit status 2, what would only
fail later on the engine: missing media (``media.missing``), an impossible range
(``range.invalid``, ``range.out_of_bounds``), unknown edit names
(``edit.unknown``), bad option values (``document.field``).

Frame numbers (``--range``, keyframes) are 0-based indices into the media, and
``--range START:END`` excludes END (``0:48`` is the first 48 frames). Keyframed
edits: ``--edit age=0@10,-4@20,-4@30,0@40`` gives strength@frame pairs.

Torch-free: probing the media and checking edit names use ``engine.media.video`` and
``engine.models.directions`` when they are installed here; without them only the syntax
is checked (then ``--range`` and, for movies, ``--rate`` are required).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from fsexchange.client import new_job_id, submit_job, wait_job
from fsexchange.documents import (JOB_KINDS, Edit, FrameRange, Job, Keyframe,
                                  OutputSpec, Source, Subject)
from fsexchange.errors import (DocumentFieldError, EditInvalid, EditUnknown,
                               FaceStitchError, MediaMissing, ModelError, RangeInvalid,
                               RangeOutOfBounds, SubjectInvalid)
from fsexchange.exchange import utc_now
from fsexchange.paths import is_within
from fsexchange.timecode import parse_rate, timecode_to_frames

__all__ = ["main", "build_parser", "parse_range", "timecode_range", "parse_subject",
           "parse_edit", "parse_option", "build_job"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch submit",
        description="Submit a movie file or image-sequence folder as a job; prints "
        "the job id. Frame numbers are 0-based media indices; --range END is "
        "exclusive.")
    p.add_argument("media", type=Path, metavar="MEDIA",
                   help="a movie file or a folder of numbered images")
    p.add_argument("--exchange", required=True, type=Path, metavar="DIR",
                   help="the exchange folder the engine watches")
    p.add_argument("--range", metavar="START:END",
                   help="frames START (inclusive) to END (exclusive); default all. "
                   "Or source timecodes TC-TC, e.g. 01:00:00:10-01:00:04:00 (END "
                   "exclusive), converted with the media's start timecode and rate")
    p.add_argument("--rate", metavar="RATE",
                   help="frame rate (24000/1001, 25...) for image sequences, or when "
                   "the media cannot be probed here")
    p.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH",
                   help="an edit; STRENGTH is a number or keyframes "
                   "STRENGTH@FRAME,STRENGTH@FRAME,... (repeatable)")
    p.add_argument("--face", type=int, metavar="N",
                   help="follow the N-th face by size (0 = the largest)")
    p.add_argument("--face-point", metavar="FRAME:X,Y",
                   help="follow the face containing pixel (X, Y) at media frame FRAME")
    p.add_argument("--face-box", metavar="FRAME:X0,Y0,X1,Y1",
                   help="follow the face best matching this box at media frame FRAME")
    p.add_argument("--kind", choices=JOB_KINDS, default="stitch",
                   help="stitch (the full edit) or align-preview (check the track)")
    p.add_argument("--profile", choices=("auto", "official", "tiny"),
                   help="model profile (default auto: official when installed)")
    p.add_argument("--option", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="a pipeline option, e.g. pti.steps=40 (repeatable)")
    p.add_argument("--format", choices=("png16", "exr", "prores4444", "pam16"),
                   help="output frame format (default png16)")
    p.add_argument("--copy-media", action="store_true",
                   help="copy media from outside the exchange into the job folder "
                   "(else the engine needs --media-root for its folder)")
    p.add_argument("--id", metavar="JOB_ID", help="job id (default: generated)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the job to end; exit 0 only if it is done")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --wait: give up after this long (exit 3)")
    p.add_argument("--json", action="store_true",
                   help="print the job status as JSON instead of the id")
    return p


def parse_range(text: str | None, frame_count: int | None) -> tuple[int, int]:
    """``"START:END"`` (either side may be empty) -> ``(start, end)``.

    Raises:
        RangeInvalid: bad syntax, negative, empty or reversed.
        RangeOutOfBounds: END past the media's ``frame_count``.
    """
    if text is None:
        if frame_count is None:
            raise RangeInvalid("give --range START:END (the media cannot be probed "
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
            raise RangeInvalid(f"--range {text}: give END (the media cannot be "
                               "probed here)", field="range.end")
    except ValueError:
        raise RangeInvalid(f"--range {text!r} is not START:END with frame numbers",
                           field="range") from None
    if start < 0:
        raise RangeInvalid(f"--range {text}: START must be >= 0", field="range.start")
    if end <= start:
        raise RangeInvalid(f"--range {text} is empty: END is exclusive and must be "
                           f"greater than START", field="range.end")
    if frame_count is not None and end > frame_count:
        raise RangeOutOfBounds(f"--range {text} reaches past the media, which has "
                               f"{frame_count} frames (0:{frame_count})",
                               field="range.end")
    return start, end


_TC_RANGE = re.compile(r"^\s*(\d{1,2}[:;.]\d{2}[:;.]\d{2}[:;.]\d{2,3})\s*-\s*"
                       r"(\d{1,2}[:;.]\d{2}[:;.]\d{2}[:;.]\d{2,3})\s*$")


def timecode_range(text: str, rate: Fraction, start_timecode: str | None
                   ) -> str | None:
    """``"01:00:00:10-01:00:04:00"`` -> ``"10:96"`` (media indices, END exclusive)
    for media starting at ``start_timecode``; None when ``text`` is not a timecode
    range.

    Raises:
        RangeInvalid: a timecode before the media's start.
    """
    m = _TC_RANGE.match(text)
    if not m:
        return None
    origin = timecode_to_frames(start_timecode, rate) if start_timecode else 0
    try:
        start, end = (timecode_to_frames(tc, rate) - origin for tc in m.groups())
    except DocumentFieldError as exc:
        raise RangeInvalid(f"--range {text}: {exc.message}", field="range") from None
    if start < 0:
        raise RangeInvalid(f"--range {text}: {m[1]} is before the media's start "
                           f"timecode {start_timecode or '00:00:00:00'}",
                           field="range.start")
    return f"{start}:{end}"


def parse_subject(face: int | None, point: str | None, box: str | None) -> Subject:
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


def parse_edit(text: str) -> Edit:
    """``"age=-4"`` or ``"age=0@1001,-4@1024"`` (strength@frame) -> :class:`Edit`.

    Raises:
        EditInvalid: bad syntax.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or not value.strip():
        raise EditInvalid(f"--edit {text!r} must be NAME=STRENGTH or "
                          "NAME=STRENGTH@FRAME,...", field="edits")
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
        raise EditInvalid(f"--edit {text!r}: keyframes must be STRENGTH@FRAME pairs "
                          "separated by commas, e.g. age=0@10,-4@20", field="edits"
                          ) from None
    except FaceStitchError as exc:
        raise EditInvalid(f"--edit {text!r}: {exc.message}", field="edits") from None
    frames = [k.frame for k in keyframes]
    if frames != sorted(set(frames)):
        raise EditInvalid(f"--edit {text!r}: keyframe frames must increase",
                          field="edits")
    return Edit.from_dict({"name": name, "strength": keyframes[0].strength,
                           "keyframes": [[k.frame, k.strength] for k in keyframes]})


def parse_option(options: dict[str, Any], text: str) -> None:
    """Apply ``"pti.steps=40"`` to a nested options map (values: JSON or text)."""
    key, sep, raw = text.partition("=")
    parts = [k.strip() for k in key.split(".")]
    if not sep or not all(parts):
        raise DocumentFieldError(f"--option {text!r} must be KEY.SUB=VALUE",
                                 field="options")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    node = options
    for k in parts[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise DocumentFieldError(f"--option {text!r} conflicts with another "
                                     "option", field=f"options.{key}")
    node[parts[-1]] = value


def _probe(media: Path, rate: Fraction | None, notes: list[str]):
    try:
        from engine.media.video import probe  # noqa: PLC0415
    except ImportError as exc:
        notes.append(f"cannot probe media here ({exc.name} is not installed); "
                     "only the syntax of --range is checked")
        return None
    return probe(media, rate)


def _check_edits(edits: list[Edit], profile: str, notes: list[str]) -> None:
    if not edits:
        return
    try:
        from engine.models.directions import available_edits  # noqa: PLC0415
    except ImportError as exc:
        notes.append(f"cannot check edit names here ({exc.name} is not installed)")
        return
    try:
        known = available_edits(profile)
    except ModelError as exc:
        notes.append(f"cannot check edit names here: {exc.message}")
        return
    for e in edits:
        if e.name not in known:
            raise EditUnknown(f"unknown edit {e.name!r} for the {profile} profile; "
                              f"installed: {', '.join(sorted(known)) or 'none'} "
                              "(see 'facestitch edits')", field="edits")


def build_job(args: argparse.Namespace, notes: list[str]
              ) -> tuple[Job, dict[str, Path]]:
    """Validate the arguments into a ``Job/1`` and its attachments."""
    media = args.media.absolute()
    if not os.path.exists(media):
        raise MediaMissing(f"{args.media}: no such file or folder", field="source.path")
    kind = "sequence" if media.is_dir() else "video"
    rate = parse_rate(args.rate, "--rate") if args.rate else None
    info = _probe(media, rate, notes)
    if info is None and rate is None:
        if kind == "video":
            raise DocumentFieldError("give --rate: the movie cannot be probed here",
                                     field="range.rate")
        rate = Fraction(24)
    range_text = args.range
    if range_text and _TC_RANGE.match(range_text):
        if info is None:
            raise RangeInvalid("a timecode --range needs the media's start timecode: "
                               "it cannot be probed here, give frame numbers",
                               field="range")
        range_text = timecode_range(range_text, info.rate, info.start_timecode)
    start, end = parse_range(range_text, info.frame_count if info else None)
    frange = FrameRange(start, end, info.rate if info else rate,
                        info.start_timecode if info else None)
    edits = [parse_edit(t) for t in args.edit]
    options: dict[str, Any] = {}
    for text in args.option:
        parse_option(options, text)
    if args.profile:
        options["profile"] = args.profile
    from fsexchange.options import PipelineConfig  # noqa: PLC0415 (torch-free)

    cfg = PipelineConfig.from_options(options)
    _check_edits(edits, cfg.profile, notes)
    exchange = args.exchange.absolute()
    attachments: dict[str, Path] = {}
    if is_within(Path(os.path.realpath(media)), Path(os.path.realpath(exchange))):
        source = Source(str(Path(os.path.realpath(media))), kind)
    elif args.copy_media:
        rel = f"media/{media.name}"
        attachments[rel] = media
        source = Source(rel, kind)
    else:
        source = Source(str(Path(os.path.realpath(media))), kind)
        notes.append(f"the job reads {source.path} in place: start the engine with "
                     f"--media-root {Path(source.path).parent} (or submit with "
                     "--copy-media)")
    subject = parse_subject(args.face, args.face_point, args.face_box)
    output = OutputSpec(format=args.format) if args.format else OutputSpec()
    job = Job(id=args.id or new_job_id(), source=source, range=frange, kind=args.kind,
              subject=subject, edits=tuple(edits), options=options, output=output,
              host={"app": "facestitch submit", "host": socket.gethostname(),
                    "media": str(media)},
              created=utc_now())
    return job, attachments


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    notes: list[str] = []
    job, attachments = build_job(args, notes)
    submit_job(args.exchange, job, attachments=attachments)
    for note in notes:
        print(f"facestitch submit: note: {note}", file=sys.stderr)
    if not args.wait:
        if args.json:
            from fsexchange.client import job_status  # noqa: PLC0415

            print(json.dumps(job_status(args.exchange, job.id).to_dict(), indent=2))
        else:
            print(job.id)
        return 0
    if not args.json:
        print(job.id, flush=True)

    def show(status) -> None:  # noqa: ANN001
        print(f"{status.id}: {status.state} {status.progress:6.1%} "
              f"{status.message}", file=sys.stderr, flush=True)

    try:
        status = wait_job(args.exchange, job.id, timeout=args.timeout, on_progress=show)
    except TimeoutError as exc:
        print(f"facestitch submit: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    elif status.folder is not None:
        print(f"{status.state}: {status.folder}", file=sys.stderr)
    return 0 if status.state == "done" else 1
