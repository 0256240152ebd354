"""``facestitch ofx``: the OpenFX shim.

- ``facestitch ofx build --out DIR [--cc CC]``: compile FaceStitch.ofx.bundle.
- ``facestitch ofx submit FOLDER --exchange DIR --rate RATE [--edit NAME=STRENGTH]
  [--kind K] [--face N] [--option KEY.SUB=VALUE] [--copy-media] [--draft [--sweep
  NAME=FROM:TO:N] [--frames F,...] [--draft-pti STEPS]] [--no-stitch]
  [--no-refine]``: submit the frames the shim's Export mode wrote; prints the
  Composite-mode settings that read the results back (for a draft, one results
  folder per strength).
  Frame numbers of ``--frames`` count from the first exported frame (0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fsexchange.client import new_job_id, submit_job
from fsexchange.documents import JOB_KINDS, Subject
from fsexchange.errors import HostError
from fsexchange.grammar import (parse_edit_spec, parse_option, sweep_row_folder,
                                sweep_row_label, sweep_rows)
from fsexchange.timecode import parse_rate
from host_bridge.draft_args import (add_draft_arguments, apply_draft_arguments,
                                    job_kind)
from host_bridge.ofx import PARAMS, build_bundle, build_ofx_job

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch ofx",
        description="The FaceStitch OpenFX shim (Export / Composite modes). See "
                    "docs/hosts.md for installing the bundle.")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="compile and lay out FaceStitch.ofx.bundle with "
                                     "the system C compiler")
    b.add_argument("--out", required=True,
                   help="folder to receive FaceStitch.ofx.bundle, "
                        "e.g. /usr/OFX/Plugins")
    b.add_argument("--cc", default=None,
                   help="C compiler (default: $CC, cc, gcc, clang)")
    s = sub.add_parser("submit", help="submit frames written by the Export mode")
    s.add_argument("folder", type=Path, help="the Export folder (frame.NNNNNNN.pam)")
    s.add_argument("--exchange", required=True, type=Path, help="the exchange folder")
    s.add_argument("--rate", required=True,
                   help="the shot's frame rate (24000/1001, 25)")
    s.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH",
                   help="an edit (repeatable)")
    s.add_argument("--kind", choices=JOB_KINDS, default="stitch")
    s.add_argument("--face", type=int, metavar="N", help="the N-th face by size (0 = "
                                                         "the largest)")
    s.add_argument("--option", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="a pipeline option, e.g. align.resolution=256 (repeatable)")
    s.add_argument("--no-refine", dest="refine", action="store_false", default=None,
                   help="skip the temporal refinement (on by default in stitch jobs)")
    s.add_argument("--copy-media", action="store_true",
                   help="copy the frames into the job (else the engine reads them in "
                        "place: keep the folder under the exchange or a media root)")
    add_draft_arguments(s)
    return p


def _options(items: list[str]) -> dict:
    """``["align.resolution=256"]`` -> ``{"align": {"resolution": 256}}``
    (:func:`fsexchange.grammar.parse_option`)."""
    out: dict = {}
    for item in items:
        parse_option(out, item)
    return out


def _submit(args: argparse.Namespace) -> int:
    kind = job_kind(args, args.kind)
    edits: tuple = ()
    if args.edit:
        edits = parse_edit_spec(args.edit).edits
    elif kind == "stitch":
        raise HostError("a stitch job needs at least one --edit NAME=STRENGTH (or use "
                        "--kind align-preview)")
    options = _options(args.option)
    sweep = apply_draft_arguments(args, kind, options, edits)
    job_id = new_job_id("ofx")
    source = "media/export" if args.copy_media else None
    job = build_ofx_job(args.folder, job_id, parse_rate(args.rate, "--rate"),
                        kind=kind, edits=edits, subject=Subject(index=args.face),
                        source_path=source, options=options, priority=args.priority,
                        refine=args.refine)
    attachments = {"media/export": args.folder} if args.copy_media else {}
    submit_job(args.exchange, job, attachments=attachments)
    output = Path(args.exchange).resolve() / "done" / job_id / "output"
    print(job_id)
    print("When it is done, set the FaceStitch effect to Composite with:")
    if kind == "draft":  # one folder per strength; frames only at the draft frames
        rows = sweep_rows(sweep)
        for i, row in enumerate(rows):
            print(f"  Results folder  {output / 'sweep' / sweep_row_folder(i, row)}"
                  f"  ({sweep_row_label(row, edits)})")
        print(f"  (the strengths side by side: {output / 'sweep.png'})")
    else:
        print(f"  Results folder  {output}")
    print(f"  Result name     {job.output.name}")
    print("  Frame offset    the same as for Export")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "submit":
        return _submit(args)
    from fsexchange.paths import check_output

    check_output(args.out, folder=True)  # before compiling
    build = build_bundle(args.out, cc=args.cc)
    print(f"built {build.bundle}")
    print(f"  binary    {build.binary} ({build.arch}, {build.compiler})")
    print(f"  parameters: {', '.join(PARAMS)}")
    print("Restart the host (Resolve, Nuke, Natron...) so that it rescans its plugins.")
    return 0
