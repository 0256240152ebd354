"""``facestitch otio --exchange DIR JOB --out FILE.otio [--shape external|sequence|both]``:
write a finished job's round trip (original clip on V1, result layer on V2 at the
same record range) for relinking in another editor."""

from __future__ import annotations

import argparse

from fsexchange.client import job_status
from fsexchange.documents import Job, load_document
from fsexchange.errors import HostError
from fsexchange.exchange import JOB_FILE
from host_bridge.advice import explain_status
from host_bridge.otio_export import SHAPES, build_timeline, write_timeline

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch otio",
        description="Write an OpenTimelineIO timeline of a finished job: the original "
                    "clip on 'Video 1' and the RGBA result on 'Video 2' at the same "
                    "record range, frame-accurate. Import it into Resolve (File > "
                    "Import > Timeline), Premiere, Avid or FCP (through the OTIO "
                    "adapters) to relink the result.")
    p.add_argument("job", metavar="JOB", help="job id")
    p.add_argument("--exchange", required=True, help="the exchange folder")
    p.add_argument("--out", required=True,
                   help="output file: .otio (default adapter), .otioz, .otiod, or "
                        ".edl/.xml/.aaf with opentimelineio-plugins installed")
    p.add_argument("--shape", choices=SHAPES, default="external",
                   help="how the result media is referenced: 'external' (first frame; "
                        "what Resolve imports), 'sequence' (ImageSequenceReference, "
                        "which Resolve does not import) or 'both' (default: external)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    status = job_status(args.exchange, args.job)
    if status.state != "done" or status.result is None or status.folder is None:
        raise HostError(explain_status(status))
    job = load_document(status.folder / JOB_FILE, Job)
    timeline = build_timeline(job, status.result, status.folder, shape=args.shape)
    path = write_timeline(timeline, args.out)
    v2 = timeline.tracks[1][-1]
    print(f"wrote {path}: '{v2.name}', {v2.source_range.duration.to_frames()} frames "
          f"from {timeline.global_start_time.to_timecode()} + "
          f"{v2.range_in_parent().start_time.to_frames()} frames")
    return 0
