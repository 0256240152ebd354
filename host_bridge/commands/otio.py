"""``facestitch otio --exchange DIR JOB --out FILE [--shape S] [--tracks all|layer]``:
write a finished job's round trip (original clip on V1, result layer on V2 at the
same record range) for relinking in another editor.

The file suffix picks the format (``host_bridge.otio_export.FORMATS``): .otio,
.otioz, .otiod, .edl, .aaf, .xml (FCP7), .fcpxml. OpenTimelineIO and its adapters
are the ``otio`` extra (``fcpx`` for .fcpxml), not part of the base install: this
module imports them only when it runs, and says how to install them when they are
missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from fsexchange.client import job_status
from fsexchange.documents import Job, load_document
from fsexchange.errors import HostError
from fsexchange.exchange import JOB_FILE
from host_bridge.advice import explain_status

__all__ = ["main"]

# kept here, not imported from otio_export, so that --help works without OTIO
_SUFFIXES = ".otio, .otioz, .otiod, .edl, .aaf, .xml (FCP7 XML), .fcpxml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch otio",
        description="Write a timeline of a finished job: the original clip on "
                    "'Video 1' and the RGBA result on 'Video 2' at the same record "
                    "range, frame-accurate. Import it into Resolve (File > Import > "
                    "Timeline), Premiere, Avid or Final Cut Pro to relink the result "
                    "(docs/hosts.md section 3 says which file each editor reads).")
    p.add_argument("job", metavar="JOB", help="job id")
    p.add_argument("--exchange", required=True, help="the exchange folder")
    p.add_argument("--out", required=True,
                   help=f"output file; its suffix picks the format: {_SUFFIXES}")
    p.add_argument("--shape", choices=("external", "sequence", "both"),
                   default="external",
                   help="how the result media is referenced: 'external' (first frame; "
                        "what Resolve imports), 'sequence' (ImageSequenceReference, "
                        ".otio and .edl only) or 'both' (default: external)")
    p.add_argument("--tracks", choices=("all", "layer"), default="all",
                   help="'all': the original and the layer; 'layer': the result "
                        "alone. An EDL holds one video track, so 'all' writes "
                        "NAME.V1.edl and NAME.V2.edl (default: all)")
    return p


def _require_otio() -> None:
    if importlib.util.find_spec("opentimelineio") is None:
        raise HostError(
            "facestitch otio needs OpenTimelineIO, which is not installed in "
            f"{sys.executable}: pip install 'facestitch[otio]' (OpenTimelineIO 0.18 "
            "has no wheel for Python 3.14: run this command from another Python, "
            "the exchange folder is all it needs)")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _require_otio()
    from host_bridge.otio_export import build_timeline, export_format, \
        write_timeline  # noqa: PLC0415 - the otio extra, see the module doc

    export_format(args.out)  # an unknown suffix fails before any work
    from fsexchange.paths import check_output

    check_output(args.out, folder=args.out.lower().endswith(".otiod"))
    status = job_status(args.exchange, args.job)
    if status.state != "done" or status.result is None or status.folder is None:
        raise HostError(explain_status(status))
    job = load_document(status.folder / JOB_FILE, Job)
    timeline = build_timeline(job, status.result, status.folder, shape=args.shape)
    paths = write_timeline(timeline, args.out, tracks=args.tracks)
    v2 = timeline.tracks[1][-1]
    for path in paths:
        print(f"wrote {path}")
    print(f"  '{v2.name}', {v2.source_range.duration.to_frames()} frames from "
          f"{timeline.global_start_time.to_timecode()} + "
          f"{v2.range_in_parent().start_time.to_frames()} frames")
    return 0
