"""An OpenTimelineIO round trip of a finished job, for editors other than Resolve
(Premiere, Avid, FCP relink from it) and for Resolve users on the free edition.

The timeline holds the original clip on "Video 1" and the result layer on "Video 2"
at the same record range, frame-accurate: source ranges are in the media's timecode
space (01:00:00:00 at 24 fps starts at 86400, as Resolve writes them), the record
position is a gap from the timeline start, rates are the job's exact rationals (OTIO
stores floats; the exact ``[num, den]`` is kept in metadata).

Result media reference shapes (docs/hosts.md "OpenTimelineIO facts"): Resolve (and
NukeStudio) do not import
``ImageSequenceReference``, so the default is an ``ExternalReference`` to the first
frame (Resolve detects the sequence); ``sequence`` writes an
``ImageSequenceReference``; ``both`` writes both (Clip.2 ``media_references``) with
the external one active. OTIO has no alpha field: ``metadata["facestitch"]`` carries
the job id and the alpha mode.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import opentimelineio as otio

from fsexchange.documents import Job, Result
from fsexchange.errors import HostError
from fsexchange.timecode import parse_rate, rate_to_list

from host_bridge.resolve.place import ResultMedia

__all__ = ["SHAPES", "build_timeline", "write_timeline"]

SHAPES = ("external", "sequence", "both")
_SEQUENCE_KEY = "image_sequence"


def _rt(frames: int, rate: Fraction) -> otio.opentime.RationalTime:
    return otio.opentime.RationalTime(frames, float(rate))


def _range(start: int, count: int, rate: Fraction) -> otio.opentime.TimeRange:
    return otio.opentime.TimeRange(_rt(start, rate), _rt(count, rate))


def _url(path: Path) -> str:
    # bare filesystem paths, no file:// (what Resolve writes and reads, docs/hosts.md
    # "OpenTimelineIO facts")
    return str(path.resolve())


def _result_references(media: ResultMedia, tc_first: int, rate: Fraction,
                       shape: str) -> dict[str, otio.core.MediaReference]:
    available = _range(tc_first, len(media.frames), rate)
    first_file = media.file(media.first_number or 0)
    refs: dict[str, otio.core.MediaReference] = {}
    if shape in ("external", "both") or media.kind == "movie":
        refs[otio.schema.Clip.DEFAULT_MEDIA_KEY] = otio.schema.ExternalReference(
            target_url=_url(first_file), available_range=available)
    if shape in ("sequence", "both") and media.kind == "sequence":
        head, _, tail = media.path.name.partition("%0")
        padding, _, suffix = tail.partition("d")
        refs[_SEQUENCE_KEY] = otio.schema.ImageSequenceReference(
            target_url_base=_url(media.path.parent) + os.sep, name_prefix=head,
            name_suffix=suffix, start_frame=media.first_number, frame_step=1,
            rate=float(rate), frame_zero_padding=int(padding),
            missing_frame_policy=otio.schema.ImageSequenceReference.MissingFramePolicy.error,
            available_range=available)
    return refs


def build_timeline(job: Job, result: Result, job_folder: str | Path, *,
                   shape: str = "external") -> otio.schema.Timeline:
    """The round-trip timeline of a finished job.

    Args:
        job: its ``Job/1`` (``host`` from the Resolve bridge gives the record
            position; a job from ``facestitch submit`` is laid out from its source
            timecode).
        result: its ``Result/1`` (the frame list decides the file numbers).
        job_folder: where the job folder is now (``JobStatus.folder``).
        shape: ``external`` (default, Resolve-friendly), ``sequence`` or ``both``.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    folder = Path(job_folder)
    media = ResultMedia.from_result(folder, result)
    host: dict[str, Any] = dict(job.host)
    rate = job.range.rate
    origin = job.range.start_frame_number  # timecode frames of media index 0
    s_in = int(host.get("source_in", job.range.start))
    s_out = int(host.get("source_out", job.range.end))
    s_in, s_out = max(s_in, media.first_frame), min(s_out, media.end_frame)
    if s_out <= s_in:
        raise HostError(f"job {job.id}: the delivered frames do not cover the shot")
    if host.get("app") == "resolve":
        tl_rate = parse_rate(host["timeline_rate"], "host.timeline_rate")
        tl_start = int(host["timeline_start_frame"])
        record = int(host["record_start"]) + (s_in - int(host.get("source_in", s_in)))
    else:  # no editor context: a timeline in the source's own timecode
        tl_rate, tl_start = rate, origin + s_in
        record = tl_start
    name = str(host.get("item_name") or Path(job.source.path).name)
    count = s_out - s_in

    source_path = Path(job.source.path)
    if not source_path.is_absolute():  # media the bridge attached or rendered
        source_path = folder / source_path
    source_ref = otio.schema.ExternalReference(
        target_url=_url(source_path),
        available_range=_range(origin + job.range.start, job.range.count, rate))
    original = otio.schema.Clip(
        name=name, media_reference=source_ref,
        source_range=_range(origin + s_in, count, rate),
        metadata={"facestitch": {"role": "source", "job_id": job.id,
                                 "rate": rate_to_list(rate)}})

    alpha = media.alpha
    layer = otio.schema.Clip(
        name=f"{name} FaceStitch",
        source_range=_range(origin + s_in, count, rate),
        metadata={"facestitch": {
            "role": "result", "job_id": job.id, "kind": job.kind,
            "alpha": alpha, "premultiplied": alpha == "premultiplied",
            "output_format": job.output.format, "rate": rate_to_list(rate),
            "source_frames": [media.first_frame, media.end_frame],
            "file_numbers": [media.first_number, media.last_number],
            "edits": [e.to_dict() for e in job.edits]}})
    refs = _result_references(media, origin + media.first_frame, rate, shape)
    active = (otio.schema.Clip.DEFAULT_MEDIA_KEY
              if otio.schema.Clip.DEFAULT_MEDIA_KEY in refs else _SEQUENCE_KEY)
    layer.set_media_references(refs, active)

    timeline = otio.schema.Timeline(
        name=f"FaceStitch {job.id}", global_start_time=_rt(tl_start, tl_rate),
        metadata={"facestitch": {"job_id": job.id, "timeline_rate": rate_to_list(tl_rate),
                                 "record_start": record, "host": host}})
    for track_name, clip in (("Video 1", original), ("Video 2", layer)):
        track = otio.schema.Track(name=track_name, kind=otio.schema.TrackKind.Video)
        if record > tl_start:
            track.append(otio.schema.Gap(source_range=_range(0, record - tl_start,
                                                             tl_rate)))
        track.append(clip)
        timeline.tracks.append(track)
    return timeline


def write_timeline(timeline: otio.schema.Timeline, out: str | Path) -> Path:
    """Write with the adapter chosen by the file suffix (.otio, .otioz, .otiod, and
    .edl/.xml/.aaf... when the OTIO adapter plugins are installed)."""
    path = Path(out)
    suffix = path.suffix.lstrip(".").lower()
    try:
        otio.adapters.write_to_file(timeline, str(path))
    except otio.exceptions.NoKnownAdapterForExtensionError:
        raise HostError(
            f"no OpenTimelineIO adapter writes .{suffix} files here; write .otio, or "
            "install the adapters: pip install opentimelineio-plugins") from None
    return path
