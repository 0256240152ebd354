"""The command-line flags for drafts, priorities and ``--no-stitch``, shared by
``facestitch submit`` and ``facestitch ofx submit``.

- ``--draft``: a ``draft`` job (a few frames, no generator tuning; docs/pipeline.md
  "Drafts"), which jumps the queue;
- ``--sweep NAME=FROM:TO:COUNT`` (repeatable, or ``;``-separated): render every
  strength (:func:`fsexchange.grammar.parse_sweep`);
- ``--frames F1,F2,...``: the draft's frames (default: 5 spread over the range;
  ``--option draft.count=K`` for another number);
- ``--draft-pti STEPS``: a short PTI on just the draft frames;
- ``--no-stitch``: a full job without stitching tuning (STIT's ``edit_video.py``);
- ``--priority N``: claim order (-100..100; drafts 50, others 0 by default).

Everything lands in ``Job.options`` / ``Job.priority``; the grammar and the
option checks are the protocol package's, so every client refuses the same text.
Torch-free.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from fsexchange.documents import Edit
from fsexchange.errors import DocumentFieldError, RangeOutOfBounds
from fsexchange.grammar import (SweepAxis, check_sweep_edits, format_sweep,
                                parse_frames, parse_sweep)

__all__ = ["add_draft_arguments", "apply_draft_arguments", "job_kind"]


def add_draft_arguments(p: argparse.ArgumentParser) -> None:
    """Add the flags above to a parser."""
    p.add_argument("--draft", action="store_true",
                   help="a draft: the edit on a few frames in seconds, no generator "
                   "tuning, naive paste-back; jumps the queue")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=FROM:TO:N",
                   help="with --draft: render N strengths of an edit from FROM to TO "
                   "(age=-8:8:5 = -8, -4, 0, 4, 8); several make a grid (repeatable)")
    p.add_argument("--frames", metavar="F1,F2,...",
                   help="with --draft: these source frames (default: 5 spread over "
                   "the range; --option draft.count=K for another number)")
    p.add_argument("--draft-pti", type=int, metavar="STEPS",
                   help="with --draft: a short PTI of STEPS passes on the draft "
                   "frames (default none: e4e alone)")
    p.add_argument("--no-stitch", action="store_true",
                   help="a full job without stitching tuning: PTI and the edit, then "
                   "a naive paste-back of the edited faces (STIT's edit_video.py)")
    p.add_argument("--priority", type=int, metavar="N",
                   help="claim order, -100..100 (default: 50 for drafts, else 0)")


def job_kind(args: argparse.Namespace, default: str) -> str:
    """``draft`` with ``--draft``, else ``default`` (the ``--kind`` given)."""
    if args.draft and default not in ("stitch", "draft"):
        raise DocumentFieldError(f"--draft and --kind {default} ask for two kinds of "
                                 "job; give one", field="kind")
    return "draft" if args.draft else default


def apply_draft_arguments(args: argparse.Namespace, kind: str,
                          options: dict[str, Any], edits: Sequence[Edit], *,
                          range_: tuple[int, int] | None = None
                          ) -> tuple[SweepAxis, ...]:
    """Put the flags into ``options`` (``draft.*``, ``stitch.tune``); returns the
    sweep.

    Raises:
        DocumentFieldError: a draft flag without ``--draft``, ``--no-stitch``
            with a draft or an align-preview.
        EditInvalid: a malformed sweep, an edit both swept and fixed.
        RangeInvalid, RangeOutOfBounds: bad ``--frames``, or frames outside
            ``range_`` (START, END exclusive) when it is known.
    """
    sweep = parse_sweep(args.sweep)
    frames = parse_frames(args.frames)
    if kind != "draft":
        for flag, given in (("--sweep", bool(sweep)), ("--frames", bool(frames)),
                            ("--draft-pti", args.draft_pti is not None)):
            if given:
                raise DocumentFieldError(f"{flag} is for drafts: add --draft",
                                         field="kind")
    if args.no_stitch:
        if kind != "stitch":
            raise DocumentFieldError("--no-stitch is for full (stitch) jobs; a draft "
                                     "never tunes", field="options.stitch.tune")
        options.setdefault("stitch", {})["tune"] = False
    if kind != "draft":
        return ()
    check_sweep_edits(sweep, edits)
    draft = options.setdefault("draft", {})
    if sweep:
        draft["sweep"] = format_sweep(sweep)
    if frames:
        if range_ is not None:
            outside = [f for f in frames if not range_[0] <= f < range_[1]]
            if outside:
                raise RangeOutOfBounds(
                    f"--frames {args.frames}: {', '.join(map(str, outside))} outside "
                    f"the range {range_[0]}:{range_[1]} (END exclusive)",
                    field="options.draft.frames")
        draft["frames"] = list(frames)
    if args.draft_pti is not None:
        draft["pti_steps"] = args.draft_pti
    return sweep
