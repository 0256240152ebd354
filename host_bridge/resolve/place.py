"""Putting a finished job back on the timeline (docs/hosts.md "Putting results back"),
frame-accurately.

1. Import the RGBA sequence into the "FaceStitch" bin (``SetCurrentFolder`` first;
   ``ImportMedia`` with a ``%07d`` pattern and StartIndex/EndIndex taken from the
   result's own frame list).
2. Remove an earlier result for the same shot (tagged by a clip marker), so a re-run
   replaces instead of stacking.
3. Find a free video track directly above the shot, adding one where needed.
4. ``AppendToTimeline`` at the exact absolute record frame (``endFrame`` exclusive),
   then read the track back and compare start and duration: appends fail silently.
5. Composite mode Normal, opacity, and a marker whose customData carries the job id.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

from fsexchange.documents import FrameOutput, Result
from fsexchange.errors import HostError, MediaMissing
from fsexchange.timecode import frames_to_timecode, parse_rate, rate_to_list

from host_bridge.resolve.connect import ResolveSession, constant, has_api
from host_bridge.resolve.shot import RESULT_TAG, resolve_rate

__all__ = ["ResultMedia", "Placement", "place_result", "place_stills", "find_results",
           "result_tag",
           "parse_tag", "BIN_NAME", "ALPHA_MODES"]

log = logging.getLogger(__name__)

BIN_NAME = "FaceStitch"
MARKER_COLOR = "Purple"
_NUMBERED = re.compile(r"^(?P<head>.*\.)(?P<number>\d+)(?P<tail>\.[A-Za-z0-9]+)$")
#: how the engine's outputs store alpha, by extension (documents.OUTPUT_FORMATS:
#: png16, pam16 and prores4444 straight, exr premultiplied per the EXR convention)
ALPHA_MODES = {".png": "straight", ".pam": "straight", ".mov": "straight",
               ".exr": "premultiplied"}


@dataclass(frozen=True)
class ResultMedia:
    """The frames a job delivered, as Resolve imports them.

    ``frames[i]`` is the source frame shown by frame ``i`` of the imported clip.
    Sequences: ``path`` is a ``%0Nd`` pattern and ``first_number``/``last_number``
    the file numbers (ImportMedia's StartIndex/EndIndex). Movies (prores4444): one
    file, numbers None.
    """

    kind: str  # "sequence" | "movie"
    path: Path
    first_number: int | None
    last_number: int | None
    frames: tuple[int, ...]

    @property
    def first_frame(self) -> int:
        return self.frames[0]

    @property
    def end_frame(self) -> int:
        return self.frames[-1] + 1

    @property
    def alpha(self) -> str:
        """"straight" or "premultiplied"."""
        return ALPHA_MODES.get(self.path.suffix.lower(), "straight")

    def file(self, number: int) -> Path:
        """The file of one frame number (a movie: the movie)."""
        if self.kind == "movie":
            return self.path
        return self.path.parent / (self.path.name % number)

    @classmethod
    def from_result(cls, job_folder: str | Path, result: Result) -> "ResultMedia":
        """Read the frame list of ``Result/1`` (paths relative to the job folder).

        Raises:
            HostError: no frames, or frames that are not one contiguous sequence.
            MediaMissing: the first or last file is not there.
        """
        return cls.from_frames(job_folder, result.job_id, result.frames)

    @classmethod
    def from_frames(cls, job_folder: str | Path, job_id: str,
                    delivered: Sequence[FrameOutput]) -> "ResultMedia":
        """:meth:`from_result` for any list of delivered frames (one draft frame, a
        draft's row...)."""
        folder = Path(job_folder)
        frames = sorted(delivered, key=lambda f: f.frame)
        if not frames:
            raise HostError(f"job {job_id} delivered no frames")
        numbers = [f.frame for f in frames]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise HostError(f"job {job_id}: the delivered frames are not "
                            "contiguous; cannot import them as one clip")
        paths = [folder / f.path for f in frames]
        for p in (paths[0], paths[-1]):
            if not p.is_file():
                raise MediaMissing(f"job {job_id}: result file {p} is missing")
        if len({str(p) for p in paths}) == 1:  # a movie holding every frame
            return cls("movie", paths[0], None, None, tuple(numbers))
        parts = [_NUMBERED.match(p.name) for p in paths]
        if not all(parts) or len({(m["head"], m["tail"], len(m["number"]))
                                  for m in parts if m}) != 1:
            raise HostError(f"job {job_id}: result files are not one numbered "
                            f"sequence ({paths[0].name} ... {paths[-1].name})")
        file_numbers = [int(m["number"]) for m in parts if m]
        if (file_numbers != list(range(file_numbers[0], file_numbers[0] + len(paths)))
                or len({p.parent for p in paths}) != 1):
            raise HostError(f"job {job_id}: result file numbers are not "
                            "consecutive; cannot import them as one clip")
        m = parts[0]
        assert m is not None
        pattern = paths[0].parent / f"{m['head']}%0{len(m['number'])}d{m['tail']}"
        return cls("sequence", pattern, file_numbers[0], file_numbers[-1],
                   tuple(numbers))

    def import_spec(self) -> Any:
        if self.kind == "movie":
            return str(self.path)
        return {"FilePath": str(self.path), "StartIndex": self.first_number,
                "EndIndex": self.last_number}


@dataclass(frozen=True)
class Placement:
    """A result placed and verified on the timeline."""

    job_id: str
    item: Any
    media_pool_item: Any
    track_index: int
    record_start: int
    duration: int
    clip_start: int  # first frame of the imported clip that is used
    replaced: int  # earlier results removed
    timecode: str
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        out = (f"placed job {self.job_id} on V{self.track_index} at {self.timecode} "
               f"({self.duration} frames)")
        if self.replaced:
            out += f", replacing {self.replaced} earlier result(s)"
        return out


def result_tag(job_id: str, host: Mapping[str, Any]) -> str:
    """Marker customData naming the job and the shot it belongs to."""
    return RESULT_TAG + json.dumps({"job": job_id, "item": host.get("item_id", ""),
                                    "timeline": host.get("timeline_id", "")},
                                   separators=(",", ":"), sort_keys=True)


def parse_tag(custom_data: Any) -> dict[str, Any] | None:
    if not isinstance(custom_data, str) or not custom_data.startswith(RESULT_TAG):
        return None
    try:
        data = json.loads(custom_data[len(RESULT_TAG):])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def find_results(timeline: Any) -> list[tuple[int, Any, dict[str, Any]]]:
    """Every tagged FaceStitch result on the timeline: (track, item, tag)."""
    out = []
    for track in range(1, (timeline.GetTrackCount("video") or 0) + 1):
        for item in timeline.GetItemListInTrack("video", track) or []:
            markers = item.GetMarkers() if has_api(item, "GetMarkers") else None
            for marker in (markers or {}).values():
                tag = parse_tag(marker.get("customData") if isinstance(marker, dict)
                                else None)
                if tag is not None:
                    out.append((track, item, tag))
                    break
    return out


# ---- steps ---------------------------------------------------------------------------


def _find_timeline(session: ResolveSession, timeline_id: str) -> Any:
    if not timeline_id or session.timeline.GetUniqueId() == timeline_id:
        return session.timeline
    for index in range(1, (session.project.GetTimelineCount() or 0) + 1):
        tl = session.project.GetTimelineByIndex(index)
        if tl is not None and tl.GetUniqueId() == timeline_id:
            return tl
    return None


def _find_item(timeline: Any, item_id: str, track_hint: int) -> Any:
    count = timeline.GetTrackCount("video") or 0
    order = [track_hint] + [t for t in range(1, count + 1) if t != track_hint]
    for track in order:
        for item in timeline.GetItemListInTrack("video", track) or []:
            if item.GetUniqueId() == item_id:
                return item
    return None


def _span(item: Any) -> tuple[int, int] | None:
    start, duration = item.GetStart(), item.GetDuration()
    if start is None or duration is None:
        return None
    return int(start), int(start) + int(duration)


def _is_free(timeline: Any, track: int, start: int, end: int) -> bool:
    if timeline.GetIsTrackLocked("video", track) is True:
        return False
    for item in timeline.GetItemListInTrack("video", track) or []:
        span = _span(item)
        if span and span[0] < end and start < span[1]:
            return False
    return True


def _delete(session: ResolveSession, items: list[Any]) -> None:
    """DeleteClips needs the Edit page and can fail on the first try (docs/hosts.md
    "Scripting calls and their quirks")."""
    session.open_page("edit")
    ids = {item.GetUniqueId() for item in items}
    tl = session.timeline
    for _ in range(3):
        tl.DeleteClips(items, False)
        items = [i for t in range(1, (tl.GetTrackCount("video") or 0) + 1)
                 for i in tl.GetItemListInTrack("video", t) or []
                 if i.GetUniqueId() in ids]
        if not items:
            return
    raise HostError("Resolve would not delete a FaceStitch layer on this shot. Delete "
                    "it by hand (it carries a purple FaceStitch marker) and import "
                    "again.")


def _ensure_bin(session: ResolveSession, name: str) -> Any:
    root = session.media_pool.GetRootFolder()
    if root is None:
        raise HostError("Resolve returned no media-pool root folder")
    for folder in root.GetSubFolderList() or []:
        if folder.GetName() == name:
            return folder
    folder = session.media_pool.AddSubFolder(root, name)
    if folder is None:
        raise HostError(f"could not create the media-pool bin {name!r}")
    return folder


def _import(session: ResolveSession, media: ResultMedia, job_id: str, bin_name: str,
            label: str = "") -> Any:
    folder = _ensure_bin(session, bin_name)
    note = f"FaceStitch job {job_id}" + (f" {label}" if label else "")
    for clip in folder.GetClipList() or []:  # imported before: reuse
        if clip.GetMetadata("Comments") == note:
            return clip
    previous = session.media_pool.GetCurrentFolder()
    if not session.media_pool.SetCurrentFolder(folder):  # ImportMedia uses this folder
        raise HostError(f"could not open the media-pool bin {bin_name!r}")
    try:
        imported = session.media_pool.ImportMedia([media.import_spec()]) or []
    finally:
        if previous is not None:
            session.media_pool.SetCurrentFolder(previous)
    if not imported or imported[0] is None:
        raise HostError(f"Resolve could not import the result {media.path} "
                        f"(numbers {media.first_number}-{media.last_number}). Check "
                        "that this machine can read the exchange folder.")
    clip = imported[0]
    frames = clip.GetClipProperty("Frames")
    if str(frames).strip().isdigit() and int(frames) != len(media.frames):
        raise HostError(f"Resolve imported {frames} frames of the {len(media.frames)} "
                        f"delivered for job {job_id}")
    clip.SetMetadata("Comments", note)
    return clip


def _copy_clip_properties(clip: Any, source: Mapping[str, Any], media: ResultMedia,
                          media_rate: Fraction, warnings: list[str]) -> None:
    """Levels, colour space and rate of the source (docs/hosts.md "Round-trip
    conventions"); alpha by format."""
    linear = media.path.suffix.lower() == ".exr"
    if linear and source.get("Input Color Space"):
        # EXR results are scene-linear (docs/colour.md), not in the clip's encoding
        warnings.append("the EXR result is scene-linear: set its Input Color Space to "
                        "the linear space of the source's gamut by hand")
    for key in ("Data Level",) if linear else ("Data Level", "Input Color Space"):
        value = source.get(key)
        if value and clip.GetClipProperty(key) != value and \
                not clip.SetClipProperty(key, value):
            warnings.append(f"could not copy the clip's {key} ({value}); "
                            "set it by hand")
    mode = media.alpha.capitalize()  # Resolve's "Straight" / "Premultiplied"
    if clip.GetClipProperty("Alpha mode") not in (None, "", mode) and \
            not clip.SetClipProperty("Alpha mode", mode):
        warnings.append(f"set the result clip's Alpha mode to {mode} by hand")
    fps = clip.GetClipProperty("FPS")
    if fps and resolve_rate(fps) != media_rate:
        text = f"{float(media_rate):.3f}".rstrip("0").rstrip(".")
        if not clip.SetClipProperty("FPS", text):
            warnings.append(f"the result clip runs at {fps} fps, the source at {text}")


def _target_track(session: ResolveSession, source_track: int, start: int, end: int
                  ) -> int:
    """The track directly above the shot if the range is free there, else a new
    track inserted there (20.3+) or added on top."""
    tl = session.timeline
    count = tl.GetTrackCount("video") or 0
    target = source_track + 1
    if target <= count and _is_free(tl, target, start, end):
        return target
    if target <= count and session.edition.at_least(20, 3):
        tl.AddTrack("video", {"index": target})  # insert directly above the shot
    else:
        tl.AddTrack("video")  # older builds: on top
    if (tl.GetTrackCount("video") or 0) != count + 1:
        raise HostError("Resolve would not add a video track for the result")
    for candidate in (target, count + 1):
        if _is_free(tl, candidate, start, end):
            tl.SetTrackName("video", candidate, "FaceStitch")
            return candidate
    raise HostError("no free video track above the shot for the result")


def _placed(tl: Any, track: int, start: int, clip: Any) -> Any:
    want = clip.GetUniqueId()
    for item in tl.GetItemListInTrack("video", track) or []:
        span = _span(item)
        mpi = item.GetMediaPoolItem()
        if span and span[0] == start and mpi is not None and mpi.GetUniqueId() == want:
            return item
    return None


def _append(session: ResolveSession, clip: Any, clip_start: int, count: int, track: int,
            record: int, expect: int | None, where: str) -> Any:
    """Append and verify by reading the track back. Tries again when nothing reached
    the track (an append can return an item that was never placed), and one frame
    shorter when the item came out one frame long (builds reading ``endFrame`` as
    inclusive). A wrong placement is removed before giving up."""
    end = clip_start + count
    item = duration = None
    for _ in range(3):
        session.media_pool.AppendToTimeline([{
            "mediaPoolItem": clip, "startFrame": clip_start, "endFrame": end,
            "mediaType": 1, "trackIndex": track, "recordFrame": record}])
        item = _placed(session.timeline, track, record, clip)
        duration = item.GetDuration() if item is not None else None
        if item is not None and (duration == expect or (expect is None and duration)):
            return item
        if item is None:
            continue
        if expect is not None and duration == expect + 1 and end == clip_start + count:
            log.info("endFrame was read as inclusive; placing again one frame shorter")
            _delete(session, [item])
            end -= 1
            continue
        break
    got = f"{duration} frames" if item is not None else "nothing"
    if item is not None:
        _delete(session, [item])
    raise HostError(f"Resolve did not place the result: V{track} at {where} held "
                    f"{got}, expected {expect} frames (AppendToTimeline fails silently "
                    "when the range is occupied or the track is locked). Free the "
                    "range and import again.")


def _plan(host: Mapping[str, Any], media: ResultMedia, item: Any, same_rate: bool,
          warnings: list[str], partial: bool = False
          ) -> tuple[int, int, int, int | None]:
    """(record frame, first clip frame, frames to use, expected timeline duration).

    ``item``: the shot on the timeline now (None: gone). With equal rates the result
    follows it where it is now (moved or trimmed within the processed frames);
    otherwise, and for rendered exports, it goes where the shot was when sent."""
    first, end = media.first_frame, media.end_frame
    record, s_in, s_out = (int(host["record_start"]), int(host["source_in"]),
                           int(host["source_out"]))
    rendered = host.get("export") == "render"
    if item is not None and same_rate and not rendered:
        span, left = _span(item), item.GetLeftOffset()
        if span is not None and left is not None:
            record, s_in, s_out = span[0], int(left), int(left) + span[1] - span[0]
    elif item is None and not rendered:
        warnings.append("the original clip was not found on the timeline; the result "
                        "was placed where the clip was when it was sent")
    use_in, use_out = max(s_in, first), min(s_out, end)
    if use_out <= use_in:
        raise HostError("the shot was trimmed outside the frames that were processed "
                        "(handles included); send it again")
    if (use_in, use_out) != (s_in, s_out) and not partial:
        warnings.append(f"the shot now shows source frames {s_in}-{s_out - 1}, the "
                        f"result covers {use_in}-{use_out - 1}; send it again to cover "
                        "the rest")
    count = use_out - use_in
    return record + use_in - s_in, use_in - first, count, count if same_rate else None


def place_result(session: ResolveSession, host: Mapping[str, Any], media: ResultMedia,
                 job_id: str, *, opacity: float = 100.0, bin_name: str = BIN_NAME,
                 replace_previous: bool = True, label: str = "",
                 partial: bool = False) -> Placement:
    """Import ``media`` and place it above the shot described by ``host`` (Job.host).

    Replaces any earlier FaceStitch result on the same shot (unless
    ``replace_previous`` is False: the further frames of one draft). Works on the
    job's timeline (switching to it for the append, then back). ``label`` tells
    the pieces of one job apart (the imported clip's note, the marker);
    ``partial``: the media covers only some of the shot's frames on purpose (a
    draft), so that is not worth a warning.

    Raises:
        HostError: the timeline is gone, the import or the placement failed (with
            what to do).
    """
    warnings: list[str] = []
    timeline = _find_timeline(session, str(host.get("timeline_id", "")))
    if timeline is None:
        raise HostError(f"the timeline '{host.get('timeline_name')}' of job {job_id} "
                        "is not in this project; open its project and import again")
    original = session.timeline
    switched = timeline is not original
    if switched and not session.project.SetCurrentTimeline(timeline):
        raise HostError(f"could not open the timeline '{host.get('timeline_name')}'")
    session.timeline = timeline
    try:
        tl_rate = parse_rate(host.get("timeline_rate") or [24, 1], "host.timeline_rate")
        media_rate = parse_rate(host.get("media_rate") or rate_to_list(tl_rate),
                                "host.media_rate")
        shot_item = _find_item(timeline, str(host.get("item_id", "")),
                               int(host.get("track_index", 1)))
        record, clip_start, count, expect = _plan(host, media, shot_item,
                                                  media_rate == tl_rate, warnings,
                                                  partial)
        previous = [item for _, item, tag in find_results(timeline)
                    if tag.get("item") == host.get("item_id")] \
            if replace_previous else []
        if previous:
            _delete(session, previous)
        clip = _import(session, media, job_id, bin_name, label)
        shot_clip = shot_item.GetMediaPoolItem() if shot_item is not None else None
        source = (shot_clip.GetClipProperty() or {}) if shot_clip is not None else {}
        _copy_clip_properties(clip, source, media, media_rate, warnings)
        timecode = frames_to_timecode(record, tl_rate, bool(host.get("drop_frame")))
        track = _target_track(session, int(host.get("track_index", 1)), record,
                              record + (expect or count))
        item = _append(session, clip, clip_start, count, track, record, expect,
                       timecode)
        if not item.SetProperty("CompositeMode",
                                constant(session.resolve, "COMPOSITE_NORMAL", 0)):
            warnings.append("could not set the composite mode to Normal")
        if not item.SetProperty("Opacity", float(opacity)):
            warnings.append("could not set the opacity")
        if not item.AddMarker(0, MARKER_COLOR, "FaceStitch",
                              f"FaceStitch job {job_id} for '{host.get('item_name')}'"
                              + (f" ({label})" if label else ""), 1,
                              result_tag(job_id, host)):
            warnings.append("could not tag the result with a marker: a re-run will not "
                            "replace it automatically")
        placement = Placement(job_id, item, clip, track, record,
                              int(item.GetDuration()), clip_start, len(previous),
                              timecode, tuple(warnings))
        log.info("%s", placement.describe())
        return placement
    finally:
        session.timeline = original
        if switched:
            session.project.SetCurrentTimeline(original)


def place_stills(session: ResolveSession, host: Mapping[str, Any],
                 job_folder: str | Path, job_id: str,
                 frames: Sequence[FrameOutput], *, opacity: float = 100.0,
                 label: str = "", bin_name: str = BIN_NAME) -> list[Placement]:
    """A draft's frames above its shot: each frame a one-frame clip at its own
    record frame (a draft renders a few frames spread over the shot), replacing
    earlier results of the shot once, before the first.

    Raises:
        HostError: as :func:`place_result`; frames placed before it stay (they
            carry the job's marker, so the next placement replaces them).
    """
    out = []
    for i, f in enumerate(sorted(frames, key=lambda f: f.frame)):
        media = ResultMedia.from_frames(job_folder, job_id, [f])
        out.append(place_result(session, host, media, job_id, opacity=opacity,
                                bin_name=bin_name, replace_previous=i == 0,
                                label=" ".join(p for p in (label, f"frame {f.frame}")
                                               if p), partial=True))
    return out
