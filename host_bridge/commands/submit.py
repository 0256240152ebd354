"""``facestitch submit``: turn a clip into a job in an exchange folder.

Refuses at submit time, with a clear message and exit status 2, what would only
fail later on the engine: missing media (``media.missing``), an impossible range
(``range.invalid``, ``range.out_of_bounds``), unknown edit names
(``edit.unknown``), bad option values (``document.field``).

Frame numbers (``--range``, keyframes) are 0-based indices into the media, and
``--range START:END`` excludes END (``0:48`` is the first 48 frames). Keyframed
edits: ``--edit age=0@10,-4@20,-4@30,0@40`` gives strength@frame pairs. Text edits
(StyleCLIP global directions): ``--edit-text "a smiling face" --strength 4 --beta
0.12``.

Drafts: ``--draft [--sweep age=-8:8:5] [--frames 10,24,40] [--draft-pti STEPS]``
(:mod:`host_bridge.draft_args`); a malformed sweep or a swept edit that is not
installed is refused here too. ``--no-stitch``: a full job without stitching
tuning.

Torch-free: the media is probed with :mod:`fsexchange.media` when PyAV is installed
here, and edit names are checked against the engine installed on this machine (in a
child process, :mod:`host_bridge.engine_cli`); without them only the syntax is
checked (then ``--range`` and, for movies, ``--rate`` are required).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from fsexchange.client import build_job, submit_job, wait_job
from fsexchange.colour import SOURCE_NAMES, canonical_source
from fsexchange.documents import (JOB_KINDS, Edit, FrameRange, Job, OutputSpec, Source)
from fsexchange.errors import (DocumentFieldError, EditInvalid, EditUnknown,
                               MediaMissing, ModelError, RangeInvalid)
from fsexchange.paths import is_within
from fsexchange.grammar import (is_timecode_range, parse_edit, parse_option,
                                parse_range, parse_subject, parse_text_edit,
                                timecode_range)
from fsexchange.media import probe, probe_available
from fsexchange.options import PipelineConfig
from fsexchange.timecode import parse_rate

from host_bridge.draft_args import (add_draft_arguments, apply_draft_arguments,
                                    job_kind)
from host_bridge.engine_cli import installed_edit_names

__all__ = ["main", "build_parser", "job_from_args"]


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
    p.add_argument("--edit-text", action="append", default=[], metavar="TEXT",
                   help="a StyleCLIP text edit: the engine turns the prompt into a "
                   "style-space direction (needs CLIP and fs3.npy in its model "
                   "store; repeatable, each with the --strength/--beta/--neutral "
                   "given)")
    p.add_argument("--strength", metavar="STRENGTH",
                   help="strength of the --edit-text edits: a number (e.g. 4) or "
                   "keyframes STRENGTH@FRAME,...")
    p.add_argument("--beta", type=float, metavar="BETA",
                   help="channel threshold of the --edit-text edits (default 0.2; "
                   "lower keeps more channels)")
    p.add_argument("--neutral", metavar="TEXT",
                   help="neutral prompt of the --edit-text edits (default 'face')")
    p.add_argument("--face", type=int, metavar="N",
                   help="follow the N-th face by size (0 = the largest)")
    p.add_argument("--face-point", metavar="FRAME:X,Y",
                   help="follow the face containing pixel (X, Y) at media frame FRAME")
    p.add_argument("--face-box", metavar="FRAME:X0,Y0,X1,Y1",
                   help="follow the face best matching this box at media frame FRAME")
    p.add_argument("--kind", choices=JOB_KINDS, default="stitch",
                   help="stitch (the full edit), align-preview (check the track) or "
                   "draft (as --draft)")
    add_draft_arguments(p)
    p.add_argument("--profile", choices=("auto", "official", "tiny"),
                   help="model profile (default auto: official when installed)")
    p.add_argument("--recipe", choices=("auto", "reference", "fast"),
                   help="how PTI and stitching train: reference = STIT's arithmetic "
                   "(one float32 update per frame, in order), fast = mini-batches "
                   "in bfloat16 where the device has it (default auto: reference "
                   "with the official models, fast with the tiny test ones)")
    p.add_argument("--option", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="a pipeline option, e.g. pti.steps=40 (repeatable)")
    p.add_argument("--colour", "--color", metavar="NAME", dest="colour",
                   help="the source's colour space: Rec.709, sRGB, Rec.2020, Rec.2100 "
                   "PQ, Rec.2100 HLG, ARRI LogC3, ARRI LogC4, S-Log3, V-Log, "
                   "ACEScct, ACEScg... or an OCIO colour-space name of the engine's "
                   "config (default: from the media's tags; docs/colour.md)")
    p.add_argument("--no-refine", dest="refine", action="store_false", default=None,
                   help="skip the temporal refinement (VideoEditGAN's flow-based "
                   "pass between the edit and stitching tuning; on by default in "
                   "stitch jobs; recorded as options.refine.enabled)")
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


def _probe(media: Path, rate: Fraction | None, notes: list[str]):
    if not probe_available():
        notes.append("cannot probe media here (PyAV is not installed); only the "
                     "syntax of --range is checked")
        return None
    return probe(media, rate)


def _colour_option(section: Any, name: str, notes: list[str]) -> Any:
    """``options.colour`` with ``source`` = ``name`` (the engine checks it against
    its OCIO config; here only that it is not empty)."""
    if not name.strip():
        raise DocumentFieldError("--colour needs a colour-space name",
                                 field="options.colour.source")
    if canonical_source(name) is None:
        notes.append(f"--colour {name!r} is not one of FaceStitch's names "
                     f"({', '.join(SOURCE_NAMES)}); the engine accepts it only if "
                     "its OCIO config has a colour space of that name")
    out = dict(section) if isinstance(section, dict) else {}
    out["source"] = name.strip()
    return out


def _check_edits(edits: list[Edit], profile: str, notes: list[str]) -> None:
    """Edit names (fixed or swept) against the engine installed here, if any."""
    if not edits:
        return
    try:
        known = installed_edit_names(profile)
    except ModelError as exc:
        notes.append(f"cannot check edit names here: {exc.message}")
        return
    if known is None:
        notes.append("cannot check edit names here (the engine is not installed on "
                     "this machine); the engine checks them when it starts the job")
        return
    for e in edits:
        # a text edit's direction is computed by the engine, which checks its files
        if e.space != "text" and e.name not in known:
            raise EditUnknown(f"unknown edit {e.name!r} for the {profile} profile; "
                              f"installed: {', '.join(known) or 'none'} "
                              "(see 'facestitch edits')", field="edits")


def job_from_args(args: argparse.Namespace, notes: list[str]
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
    if is_timecode_range(range_text):
        if info is None:
            raise RangeInvalid("a timecode --range needs the media's start timecode: "
                               "it cannot be probed here, give frame numbers",
                               field="range")
        range_text = timecode_range(range_text, info.rate, info.start_timecode)
    start, end = parse_range(range_text, info.frame_count if info else None)
    frange = FrameRange(start, end, info.rate if info else rate,
                        info.start_timecode if info else None)
    edits = [parse_edit(t) for t in args.edit]
    if not args.edit_text and (args.strength is not None or args.beta is not None
                               or args.neutral is not None):
        raise EditInvalid("--strength, --beta and --neutral belong to --edit-text "
                          "(a named edit takes its strength as --edit NAME=STRENGTH)",
                          field="edits")
    edits += [parse_text_edit(t, args.strength, beta=args.beta, neutral=args.neutral)
              for t in args.edit_text]
    options: dict[str, Any] = {}
    for text in args.option:
        parse_option(options, text)
    if args.profile:
        options["profile"] = args.profile
    if args.recipe:
        options["recipe"] = args.recipe
    if args.colour is not None:
        options["colour"] = _colour_option(options.get("colour"), args.colour, notes)
    jkind = job_kind(args, args.kind)
    sweep = apply_draft_arguments(args, jkind, options, edits, range_=(start, end))
    cfg = PipelineConfig.from_options(options)
    _check_edits(edits + [Edit(a.name, a.start) for a in sweep], cfg.profile, notes)
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
    job = build_job(source=source, range=frange, kind=jkind, edits=edits,
                    subject=subject, options=options, output=output,
                    host={"app": "facestitch submit", "host": socket.gethostname(),
                          "media": str(media)}, job_id=args.id,
                    priority=args.priority, refine=args.refine)
    return job, attachments


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from fsexchange.exchange import Exchange

    Exchange(args.exchange.absolute()).ensure().check_writable()  # before probing
    notes: list[str] = []
    job, attachments = job_from_args(args, notes)
    submit_job(args.exchange, job, attachments=attachments)
    for note in notes:
        print(f"facestitch submit: note: {note}", file=sys.stderr)
    if not args.wait:
        if args.json:
            from fsexchange.client import job_status

            print(json.dumps(job_status(args.exchange, job.id).to_dict(), indent=2))
        else:
            print(job.id)
        return 0
    if not args.json:
        print(job.id, flush=True)

    def show(status) -> None:
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
