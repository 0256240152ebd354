"""An OpenTimelineIO round trip of a finished job, for editors other than Resolve
(Premiere, Avid, Final Cut Pro relink from it) and for Resolve users on the free
edition.

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

File formats (:data:`FORMATS`, chosen by the file suffix) each go through one OTIO
adapter, with what that adapter and its readers need: EDL holds one video track per
file (the original and the layer are written as ``NAME.V1.edl`` and ``NAME.V2.edl``,
or the layer alone with ``tracks="layer"``) with record timecodes from the timeline
start; AAF gets fresh mob ids (``use_empty_mob_ids``: our clips come from no Avid
bin); FCP7 XML gets ``file://localhost/`` URLs in ``<pathurl>`` (what Premiere writes
and relinks) and a sequence ``<format>`` (which Resolve requires); FCPX gets
``file:///`` URLs and only integer rates (its adapter knows no 23.976). Adapter
failures become one :class:`HostError` line.

Needs the ``otio`` extra (``fcpx`` for ``.fcpxml``); the base install has no
OpenTimelineIO.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import opentimelineio as otio

from fsexchange.documents import Job, Result
from fsexchange.errors import DocumentFieldError, HostError
from fsexchange.fsutil import fsync_dir, open_regular, unique_name
from fsexchange.timecode import parse_rate, rate_to_list

from host_bridge.resolve.place import ResultMedia

__all__ = ["SHAPES", "TRACKS", "ExportFormat", "FORMATS", "export_format",
           "build_timeline", "write_timeline", "file_url"]

log = logging.getLogger(__name__)

SHAPES = ("external", "sequence", "both")
#: which tracks a file holds: the original and the layer, or the layer alone
TRACKS = ("all", "layer")
_SEQUENCE_KEY = "image_sequence"


def _rt(frames: int, rate: Fraction) -> otio.opentime.RationalTime:
    return otio.opentime.RationalTime(frames, float(rate))


def _range(start: int, count: int, rate: Fraction) -> otio.opentime.TimeRange:
    return otio.opentime.TimeRange(_rt(start, rate), _rt(count, rate))


def _url(path: Path) -> str:
    # bare filesystem paths, no file:// (what Resolve writes and reads, docs/hosts.md
    # "OpenTimelineIO facts")
    return str(path.resolve())


def _frame_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG or PAM header (stdlib only), else None."""
    try:  # never blocks on a pipe named like a frame
        with open_regular(path, follow_symlinks=True) as fh:
            head = fh.read(256)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:3] == b"P7\n":
        words = head.split(b"ENDHDR")[0].split()
        fields = dict(zip(words[1::2], words[2::2]))
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            return None
    return None


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

    meta: dict[str, Any] = {"job_id": job.id, "timeline_rate": rate_to_list(tl_rate),
                            "record_start": record, "host": host}
    size = _frame_size(media.file(media.first_number or 0))
    if size is not None:
        meta["frame_size"] = list(size)
    timeline = otio.schema.Timeline(
        name=f"FaceStitch {job.id}", global_start_time=_rt(tl_start, tl_rate),
        metadata={"facestitch": meta})
    for track_name, clip in (("Video 1", original), ("Video 2", layer)):
        track = otio.schema.Track(name=track_name, kind=otio.schema.TrackKind.Video)
        if record > tl_start:
            track.append(otio.schema.Gap(source_range=_range(0, record - tl_start,
                                                             tl_rate)))
        track.append(clip)
        timeline.tracks.append(track)
    return timeline


# ---- file formats --------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    """How one file type is written: the OTIO adapter and what its readers need."""

    suffix: str
    adapter: str  # OTIO adapter name
    extra: str  # the pyproject extra that installs the adapter
    readers: str  # who opens it (help text and docs/hosts.md)
    #: media URLs: "path" (bare paths, what Resolve's .otio uses), "file"
    #: (file:///...), "localhost" (file://localhost/..., FCP7 XML as Premiere writes it)
    urls: str = "path"
    one_video_track: bool = False  # EDL: one file per video track
    integer_rates: bool = False  # the fcpx_xml adapter has no table entry for NTSC
    sequences: bool = True  # whether ImageSequenceReference can be written
    options: Mapping[str, Any] = field(default_factory=dict)  # adapter arguments


FORMATS: dict[str, ExportFormat] = {f.suffix: f for f in (
    ExportFormat(".otio", "otio_json", "otio",
                 "Resolve 18.5+ (File > Import > Timeline), Premiere (OTIO import), "
                 "any OTIO tool"),
    ExportFormat(".otioz", "otioz", "otio", "OTIO tools (media bundled in the zip)",
                 sequences=False),
    ExportFormat(".otiod", "otiod", "otio", "OTIO tools (media in a folder)",
                 sequences=False),
    ExportFormat(".edl", "cmx_3600", "otio",
                 "Avid, Premiere, Resolve (CMX 3600: one video track per file)",
                 one_video_track=True, options={"style": "avid"}),
    ExportFormat(".aaf", "AAF", "otio", "Avid Media Composer, Premiere, Resolve",
                 urls="file", sequences=False, options={"use_empty_mob_ids": True}),
    ExportFormat(".xml", "fcp_xml", "otio",
                 "Premiere Pro, Final Cut Pro 7, Resolve (FCP7 XML)",
                 urls="localhost", sequences=False),
    ExportFormat(".fcpxml", "fcpx_xml", "fcpx",
                 "Final Cut Pro 10.4+ (FCPXML 1.8; integer frame rates only)",
                 urls="file", integer_rates=True, sequences=False),
)}


def export_format(path: str | Path) -> ExportFormat:
    """The format a file name asks for (by suffix, case-insensitive).

    Raises:
        HostError: a suffix no format is known for.
    """
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise HostError(f"cannot write {Path(path).name!r}: use one of "
                        f"{', '.join(FORMATS)}")
    return fmt


def file_url(path: str | Path, host: str = "") -> str:
    """A ``file://`` URL of an absolute path, percent-encoded (``host`` "localhost"
    gives the ``file://localhost/...`` form FCP7 XML and Premiere use).

    >>> file_url("/Volumes/NAS/shot 1/a.png", "localhost")
    'file://localhost/Volumes/NAS/shot%201/a.png'
    """
    posix = Path(path).as_posix()
    if not posix.startswith("/"):  # Windows: C:/shots -> /C:/shots
        posix = "/" + posix
    return f"file://{host}{quote(posix)}"


def _timeline_rate(timeline: otio.schema.Timeline) -> Fraction:
    """The exact timeline rate build_timeline recorded, else OTIO's float."""
    meta = timeline.metadata.get("facestitch", {})
    if "timeline_rate" in meta:
        try:
            return parse_rate(list(meta["timeline_rate"]), "timeline_rate")
        except DocumentFieldError:
            pass
    rate = (timeline.global_start_time.rate if timeline.global_start_time is not None
            else timeline.duration().rate)
    return Fraction(rate).limit_denominator(1001)


def _convert_urls(timeline: otio.schema.Timeline, style: str) -> None:
    """Rewrite bare media paths as ``file://`` URLs in place (``style`` as in
    :attr:`ExportFormat.urls`)."""
    if style == "path":
        return
    host = "localhost" if style == "localhost" else ""
    for clip in timeline.find_clips():
        for ref in clip.media_references().values():
            if isinstance(ref, otio.schema.ExternalReference) and ref.target_url \
                    and "://" not in ref.target_url:
                ref.target_url = file_url(ref.target_url, host)
            elif isinstance(ref, otio.schema.ImageSequenceReference) and \
                    "://" not in ref.target_url_base:
                ref.target_url_base = file_url(ref.target_url_base, host) + "/"


def _fcp_sequence_format(timeline: otio.schema.Timeline) -> None:
    """Give the FCP7 sequence a ``<format>`` with the frame size where known: Resolve
    refuses an XML without one (OTIO #839), Premiere sizes the sequence from it."""
    size = timeline.metadata.get("facestitch", {}).get("frame_size")
    if not size:
        return
    width, height = (int(v) for v in size)
    # the fcp_xml writer builds <sequence> from the timeline's "fcp_xml" metadata
    timeline.metadata["fcp_xml"] = {"media": {"video": {"format": {
        "samplecharacteristics": {"width": width, "height": height}}}}}


def _absolute_record(track: otio.schema.Track, start: int, rate: Fraction
                     ) -> otio.schema.Track:
    """The track with its record positions counted from 00:00:00:00 rather than the
    timeline start: the EDL writer ignores ``global_start_time``, and an EDL's
    record timecodes must be the timeline's (01:00:00:10, not 00:00:00:10)."""
    out = otio.schema.Track(name=track.name, kind=track.kind, metadata=track.metadata)
    if start > 0:
        out.append(otio.schema.Gap(source_range=_range(0, start, rate)))
    for child in track:
        out.append(child.deepcopy())
    return out


def _select(timeline: otio.schema.Timeline, fmt: ExportFormat, tracks: str,
            out: Path) -> list[tuple[Path, otio.schema.Timeline]]:
    """(file, timeline) pairs to write: one, or one per video track (EDL)."""
    video = [i for i, t in enumerate(timeline.tracks)
             if t.kind == otio.schema.TrackKind.Video]
    if not video:
        raise HostError("the timeline has no video track to write")
    if tracks == "layer":
        video = video[-1:]  # build_timeline puts the layer on the top track
    if not fmt.one_video_track:
        chosen = otio.schema.Timeline(name=timeline.name,
                                      global_start_time=timeline.global_start_time,
                                      metadata=timeline.metadata)
        for i, track in enumerate(timeline.tracks):
            if i in video or track.kind != otio.schema.TrackKind.Video:
                chosen.tracks.append(track.deepcopy())
        return [(out, chosen)]
    rate = _timeline_rate(timeline)
    start = (round(timeline.global_start_time.value)
             if timeline.global_start_time is not None else 0)
    pairs = []
    for i in video:
        track = timeline.tracks[i]
        single = otio.schema.Timeline(name=f"{timeline.name} {track.name}",
                                      metadata=timeline.metadata)
        single.tracks.append(_absolute_record(track, start, rate))
        path = out if len(video) == 1 else out.with_name(
            f"{out.stem}.V{video.index(i) + 1}{out.suffix}")
        pairs.append((path, single))
    return pairs


def _edl_reels(timeline: otio.schema.Timeline) -> None:
    """Give the result layer its own reel name: the EDL writer derives reels from
    clip names (8 characters), which makes the layer's reel the original's, and a
    conform by reel and timecode would then pull the original for both events."""
    for clip in timeline.find_clips():
        meta = clip.metadata.get("facestitch", {})
        if meta.get("role") != "result":
            continue
        base = "".join(ch for ch in clip.name if ch.isalnum())[:6] or "FACE"
        clip.metadata["cmx_3600"] = {"reel": f"{base.upper()}FS"}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _write_one(timeline: otio.schema.Timeline, path: Path, fmt: ExportFormat,
               options: Mapping[str, Any]) -> None:
    """Write through the adapter into a temporary sibling, then rename it into place
    (a reader never sees half a file; a failed write leaves nothing behind)."""
    tmp = path.with_name(f".{path.stem}.{unique_name()}.tmp{path.suffix}")
    try:
        otio.adapters.write_to_file(timeline, str(tmp), adapter_name=fmt.adapter,
                                    **options)
        if tmp.is_dir():  # .otiod is a folder
            if path.is_dir():
                shutil.rmtree(path)
            tmp.rename(path)
        else:
            os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - adapters are plug-ins and raise anything
        log.debug("the %s adapter failed on %s", fmt.adapter, path, exc_info=True)
        raise HostError(f"the {fmt.adapter} adapter could not write {path.name}: "
                        f"{_one_line(exc)}") from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_timeline(timeline: otio.schema.Timeline, out: str | Path, *,
                   tracks: str = "all") -> list[Path]:
    """Write ``timeline`` in the format its suffix names (:data:`FORMATS`).

    Args:
        timeline: from :func:`build_timeline` (its metadata holds the exact rate).
        out: the file to write; an EDL of both tracks becomes ``NAME.V1.edl`` and
            ``NAME.V2.edl`` beside it.
        tracks: ``all`` (original and layer) or ``layer`` (the result alone).

    Returns:
        The files written.

    Raises:
        HostError: an unknown suffix, a missing adapter (with the pip command), a
            rate or reference shape the format cannot carry, or the adapter's own
            failure, each as one line.
    """
    if tracks not in TRACKS:
        raise ValueError(f"tracks must be one of {', '.join(TRACKS)}")
    path = Path(out)
    fmt = export_format(path)
    if fmt.adapter not in otio.adapters.available_adapter_names():
        raise HostError(f"writing {fmt.suffix} needs the OpenTimelineIO {fmt.adapter} "
                        f"adapter, which is not installed here: pip install "
                        f"'facestitch[{fmt.extra}]'")
    rate = _timeline_rate(timeline)
    if fmt.integer_rates and rate.denominator != 1:
        raise HostError(f"{fmt.suffix} files are written at integer frame rates only "
                        f"(the fcpx_xml adapter has no {float(rate):.3f} fps); write "
                        ".otio or .xml instead")
    if not fmt.sequences and any(
            isinstance(c.media_reference, otio.schema.ImageSequenceReference)
            for c in timeline.find_clips()):
        raise HostError(f"{fmt.suffix} files cannot hold an image-sequence reference: "
                        "use --shape external (or both) for them, or write .otio")
    options = dict(fmt.options)
    if fmt.adapter == "cmx_3600":
        options["rate"] = float(rate)
    written = []
    for target, single in _select(timeline, fmt, tracks, path):
        _convert_urls(single, fmt.urls)
        if fmt.adapter == "fcp_xml":
            _fcp_sequence_format(single)
        elif fmt.adapter == "cmx_3600":
            _edl_reels(single)
        _write_one(single, target, fmt, options)
        written.append(target)
    return written
