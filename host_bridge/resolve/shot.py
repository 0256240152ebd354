"""From a Resolve timeline item to a :class:`Shot`: media path, source in/out with
handles, rates and timecodes, and the record position needed to put results back.

Frame conventions (docs/hosts.md, "Frame numbers and placement traps"):
``GetStart``/``GetEnd`` are absolute timeline frames (a timeline at 01:00:00:00, 24 fps,
starts at 86400), ``GetEnd`` exclusive.
``GetLeftOffset`` is documented as "the maximum extension by frame for clip from left
side", and at least one public measurement found it counting timeline frames. Only
where one timeline frame is one media frame (same rate, no speed change) is it
therefore the media index of the first visible frame, which is the only case this
module reads a source range from: mixed-rate and retimed items are refused with what
to do (render a conformed clip) until real Resolve has been measured, never sent with
a guessed range. Media indices are 0-based (``Job.range`` convention).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from fsexchange.colour import from_resolve_name
from fsexchange.errors import DocumentFieldError, HostError, MediaMissing
from fsexchange.timecode import frames_to_timecode, rate_to_list, timecode_to_frames

from host_bridge.resolve.connect import ResolveSession, has_api

__all__ = ["Shot", "resolve_rate", "timeline_rate", "read_shot", "pick_items",
           "is_result_item", "retime_evidence", "RAW_EXTENSIONS", "RESULT_TAG"]

log = logging.getLogger(__name__)

#: Camera-raw formats PyAV cannot decode: such shots are exported by rendering.
RAW_EXTENSIONS = frozenset({".braw", ".r3d", ".ari", ".arx", ".crm", ".cine", ".dng"})
#: Image sequences the engine reads (engine.media.video); others (DPX...) are rendered.
SEQUENCE_EXTENSIONS = frozenset({".png", ".tif", ".tiff", ".exr", ".pam"})
#: Media-pool item types without a file of their own.
_VIRTUAL_TYPES = ("compound", "timeline", "generator", "fusion", "title", "multicam",
                  "adjustment")
#: Prefix of the marker customData that tags a placed FaceStitch result.
RESULT_TAG = "facestitch:"
_SEQUENCE = re.compile(r"^(?P<head>.*?)\[(?P<first>\d+)-(?P<last>\d+)\]"
                       r"(?P<tail>[^/\\]*)$")


def resolve_rate(value: Any) -> Fraction:
    """Resolve's rate (``"23.976"``, ``23.976``, ``"29.97 DF"``, ``25``) as an exact
    rational: the NTSC family becomes ``N*1000/1001``.

    >>> resolve_rate("23.976"), resolve_rate(29.97), resolve_rate("25")
    (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(25, 1))
    """
    text = re.sub(r"[^0-9.]", "", str(value).strip().split()[0] if str(value).strip()
                  else "")
    try:
        rate = float(text)
    except ValueError:
        raise HostError(
            f"Resolve reported an unreadable frame rate {value!r}") from None
    if not 0 < rate <= 1000:
        raise HostError(f"Resolve reported an implausible frame rate {value!r}")
    for nominal in (24, 30, 48, 60, 96, 120, 240):
        if abs(rate - nominal * 1000 / 1001) < 0.005:
            return Fraction(nominal * 1000, 1001)
    if abs(rate - round(rate)) < 0.001:
        return Fraction(round(rate))
    return Fraction(text).limit_denominator(1001)


def timeline_rate(session: ResolveSession) -> tuple[Fraction, bool]:
    """The timeline's rate and whether it counts drop-frame timecode. Per-timeline
    settings win where the timeline has them (``useCustomSettings``)."""
    value = session.timeline.GetSetting("timelineFrameRate") or \
        session.project.GetSetting("timelineFrameRate")
    if not value:
        raise HostError("Resolve returned no timeline frame rate")
    drop_setting = session.timeline.GetSetting("timelineDropFrameTimecode") or \
        session.project.GetSetting("timelineDropFrameTimecode")
    rate = resolve_rate(value)
    drop = ("DF" in str(value).upper().split() or str(drop_setting) == "1") and \
        rate.denominator == 1001 and round(rate) in (30, 60)
    return rate, drop


@dataclass(frozen=True)
class Shot:
    """One timeline item, resolved to what a job needs.

    ``source_in``/``source_out`` (exclusive) are the visible frames as indices into
    the job's source (the media file, or the rendered export); ``range_start`` /
    ``range_end`` add the handles, clamped to the media. Record frames are absolute.
    A rendered export (``export == "render"``) is its own media: frames 0..N-1 of
    the record range at the timeline rate, from the record timecode, no handles.
    """

    item_name: str
    item_id: str
    media_pool_item_id: str
    track_index: int
    record_start: int
    record_end: int
    timeline_id: str
    timeline_name: str
    timeline_start_frame: int
    timeline_start_timecode: str
    timeline_rate: Fraction
    drop_frame: bool
    project_id: str
    project_name: str
    export: str  # "direct": the engine reads media_path | "render": export by rendering
    export_reason: str
    media_path: str | None
    media_kind: str  # "video" | "sequence"
    media_rate: Fraction
    media_start_timecode: str | None
    media_frames: int | None
    source_in: int
    source_out: int
    handle_in: int = 0
    handle_out: int = 0
    warnings: tuple[str, ...] = ()
    # the clip's "Input Color Space" as Resolve reports it (None: not reported)
    input_colour: str | None = None
    # what it means (fsexchange.colour.SOURCE_NAMES), None: unknown or "Project"
    colour_source: str | None = None

    @property
    def range_start(self) -> int:
        return self.source_in - self.handle_in

    @property
    def range_end(self) -> int:
        return self.source_out + self.handle_out

    @property
    def record_duration(self) -> int:
        return self.record_end - self.record_start

    @property
    def record_timecode(self) -> str:
        return frames_to_timecode(self.record_start, self.timeline_rate,
                                  self.drop_frame)

    def host_dict(self, product: str = "",
                  version: tuple[int, ...] = ()) -> dict[str, Any]:
        """``Job.host``: everything re-import needs, in plain msgpack types."""
        return {
            "app": "resolve", "product": product, "version": list(version),
            "project_id": self.project_id, "project_name": self.project_name,
            "timeline_id": self.timeline_id, "timeline_name": self.timeline_name,
            "timeline_start_frame": self.timeline_start_frame,
            "timeline_start_timecode": self.timeline_start_timecode,
            "timeline_rate": rate_to_list(self.timeline_rate),
            "drop_frame": self.drop_frame,
            "item_id": self.item_id, "item_name": self.item_name,
            "media_pool_item_id": self.media_pool_item_id,
            "track_index": self.track_index,
            "record_start": self.record_start, "record_end": self.record_end,
            "source_in": self.source_in, "source_out": self.source_out,
            "handles": [self.handle_in, self.handle_out],
            "media_rate": rate_to_list(self.media_rate), "export": self.export,
            "media_path": self.media_path, "input_color_space": self.input_colour,
        }

    def describe(self) -> str:
        return (f"'{self.item_name}' on V{self.track_index} at {self.record_timecode}, "
                f"{self.record_duration} frames")


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _classify_media(props: dict[str, Any] | None) -> tuple[str | None, str, str]:
    """(path, kind, reason to render or "") for a media-pool item's properties."""
    if props is None:
        return None, "video", "the clip has no media-pool item (a generator or title)"
    kind = str(props.get("Type", "")).lower()
    path = str(props.get("File Path") or "").strip()
    if any(v in kind for v in _VIRTUAL_TYPES) or not path:
        what = props.get("Type") or "clip without a file"
        return None, "video", f"it is a {what} with no file of its own"
    # "/shots/plate.[1001-1100].exr": the folder is the source
    if _SEQUENCE.match(path):
        suffix = Path(path).suffix.lower()
        if suffix not in SEQUENCE_EXTENSIONS:
            return str(Path(path).parent), "sequence", (
                f"the engine does not read {suffix} sequences")
        return str(Path(path).parent), "sequence", ""
    if Path(path).suffix.lower() in RAW_EXTENSIONS:
        return path, "video", f"the engine cannot decode {Path(path).suffix} camera raw"
    return path, "video", ""


def _input_colour(props: dict[str, Any] | None, warnings: list[str], name: str
                  ) -> tuple[str | None, str | None]:
    """The clip's "Input Color Space" (docs/hosts.md "Putting results back") and
    the colour space it means for the engine (docs/colour.md "Resolve"). None,
    "" and "Project" leave the choice to the engine (the media's tags)."""
    if props is None:
        return None, None
    raw = props.get("Input Color Space")
    value = raw.strip() if isinstance(raw, str) else None
    source = from_resolve_name(value)
    if value and source is None and value.lower() not in ("project", "timeline"):
        warnings.append(f"'{name}': Resolve's Input Color Space {value!r} has no "
                        "equivalent in FaceStitch; the engine reads the colour space "
                        "from the file's tags (send with --colour to choose one)")
    return (value if value else None), source


def _track_index(session: ResolveSession, item: Any) -> int:
    info = (item.GetTrackTypeAndIndex() if has_api(item, "GetTrackTypeAndIndex")
            else None)
    if isinstance(info, (list, tuple)) and len(info) == 2 and info[0] == "video":
        return int(info[1])
    # before 19.0: find it by scanning the video tracks
    uid = item.GetUniqueId()
    for index in range(1, (session.timeline.GetTrackCount("video") or 0) + 1):
        for other in session.timeline.GetItemListInTrack("video", index) or []:
            if other is item or (uid and other.GetUniqueId() == uid):
                return index
    raise HostError(f"'{item.GetName()}' is not on a video track of this timeline")


def _check_tc(tc: Any, rate: Fraction) -> str | None:
    if not tc or not isinstance(tc, str):
        return None
    try:
        timecode_to_frames(tc, rate)
    except DocumentFieldError:
        return None
    return tc


def read_shot(session: ResolveSession, item: Any, *, handles: int = 0) -> Shot:
    """Resolve ``item`` (a TimelineItem) into a :class:`Shot`.

    Args:
        handles: extra source frames wanted on each side (clamped to the media; a
            rendered export has none).

    Raises:
        HostError: a broken item (getters returning None), an item off the video
            tracks, unreadable rates.
        MediaMissing: the clip's media file is offline.
    """
    if handles < 0:
        raise ValueError("handles must be >= 0")
    name = item.GetName() if item is not None else None
    start, duration = item.GetStart(), item.GetDuration()
    left, uid = item.GetLeftOffset(), item.GetUniqueId()
    if None in (name, start, duration, left) or not uid or duration <= 0:
        raise HostError("Resolve returned no position for this clip (a broken or "
                        "half-deleted item). Save the project, reopen the timeline and "
                        "try again.")
    start, duration, left = int(start), int(duration), int(left)
    tl = session.timeline
    rate, drop = timeline_rate(session)
    tl_start = int(tl.GetStartFrame())
    tl_tc = tl.GetStartTimecode() or frames_to_timecode(tl_start, rate, drop)
    mpi = item.GetMediaPoolItem()
    props = (mpi.GetClipProperty() or {}) if mpi is not None else None
    path, kind, reason = _classify_media(props)
    warnings: list[str] = []
    input_colour, colour_source = _input_colour(props, warnings, str(name))
    common = dict(
        item_name=str(name), item_id=str(uid),
        media_pool_item_id=str(mpi.GetUniqueId() or "") if mpi is not None else "",
        track_index=_track_index(session, item), record_start=start,
        record_end=start + duration, timeline_id=str(tl.GetUniqueId() or ""),
        timeline_name=str(tl.GetName() or ""), timeline_start_frame=tl_start,
        timeline_start_timecode=str(tl_tc), timeline_rate=rate, drop_frame=drop,
        project_id=str(session.project.GetUniqueId() or ""),
        project_name=str(session.project.GetName() or ""),
        input_colour=input_colour, colour_source=colour_source,
    )

    if path and not os.path.exists(path):
        raise MediaMissing(
            f"The media of '{name}' is offline: {path} does not exist on this machine. "
            "Relink the clip in Resolve (or mount its drive), then send it again.")
    if path and not reason and not os.access(path, os.R_OK):
        reason = f"{path} is not readable by this user"
    if reason:  # export by rendering: the source is the record range itself
        log.info("'%s' will be exported by rendering: %s", name, reason)
        return Shot(**common, export="render", export_reason=reason, media_path=None,
                    media_kind="sequence", media_rate=rate,
                    media_start_timecode=frames_to_timecode(start, rate, drop),
                    media_frames=duration, source_in=0, source_out=duration)

    media_rate = resolve_rate(props.get("FPS")) if props.get("FPS") else rate
    frames = _int(props.get("Frames"))
    count = duration
    _refuse_unconformed(item, str(name), rate, media_rate, left, duration, frames)
    source_in, source_out = left, left + count
    if frames is not None and source_out > frames:
        source_out = frames
    if source_out <= source_in:
        raise HostError(f"'{name}' shows no frames of its media (left offset {left}, "
                        f"{frames} media frames)")
    handle_in = min(handles, source_in)
    handle_out = min(handles, frames - source_out) if frames is not None else 0
    if frames is None and handles:
        warnings.append("Resolve did not report the media length: no tail handles")
    return Shot(**common, export="direct", export_reason="", media_path=path,
                media_kind=kind, media_rate=media_rate,
                media_start_timecode=_check_tc(props.get("Start TC"), media_rate),
                media_frames=frames, source_in=source_in, source_out=source_out,
                handle_in=handle_in, handle_out=handle_out, warnings=tuple(warnings))


_CONFORM = ("Render a conformed clip and send that instead: right-click the clip > "
            "Render in Place (it renders at the timeline rate with the speed change "
            "baked in), or render the shot from the Deliver page and cut it in.")


def _fps(rate: Fraction) -> str:
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def retime_evidence(item: Any, left: int, duration: int, frames: int | None
                    ) -> str | None:
    """Why ``item`` looks retimed (a speed change, a freeze frame, a reverse), or
    None when nothing says so. Call it only for a same-rate item, where one timeline
    frame shows one media frame.

    Two independent readings, each used where this Resolve has it: the source span
    ``GetSourceEndFrame - GetSourceStartFrame`` (19.0.2+; end exclusive at equal
    rates, docs/hosts.md section 1.6) against the record duration, and
    ``left + duration + GetRightOffset`` against the media's frame count.
    """
    if has_api(item, "GetSourceStartFrame") and has_api(item, "GetSourceEndFrame"):
        start, end = _int(item.GetSourceStartFrame()), _int(item.GetSourceEndFrame())
        if start is not None and end is not None and end - start != duration:
            return (f"it shows {end - start} source frames in {duration} timeline "
                    "frames")
    right = _int(item.GetRightOffset()) if has_api(item, "GetRightOffset") else None
    if right is not None and frames is not None and left + duration + right != frames:
        return (f"its offsets ({left} + {duration} + {right} frames) do not add up to "
                f"the media's {frames} frames")
    return None


def _refuse_unconformed(item: Any, name: str, rate: Fraction, media_rate: Fraction,
                        left: int, duration: int, frames: int | None) -> None:
    """Refuse what this bridge cannot map to source frames with certainty."""
    if media_rate != rate:
        raise HostError(
            f"'{name}' runs at {_fps(media_rate)} fps on a {_fps(rate)} fps timeline. "
            "Which source frames Resolve shows for a mixed-rate clip is not confirmed "
            "(its left offset may count timeline frames), so FaceStitch does not guess "
            f"them. {_CONFORM}")
    why = retime_evidence(item, left, duration, frames)
    if why is not None:
        raise HostError(
            f"'{name}' has a speed change ({why}). FaceStitch cannot tell which source "
            f"frames a retimed clip shows, so it does not guess them. {_CONFORM}")


def is_result_item(item: Any) -> bool:
    """Whether a timeline item is a FaceStitch result we placed (tagged by marker)."""
    markers = item.GetMarkers() if has_api(item, "GetMarkers") else None
    return any(str(m.get("customData", "")).startswith(RESULT_TAG)
               for m in (markers or {}).values() if isinstance(m, dict))


def _beneath_results(session: ResolveSession) -> Any:
    """The top-most video item under the playhead that is not one of our results."""
    tl = session.timeline
    rate, _ = timeline_rate(session)
    tc = tl.GetCurrentTimecode()
    if not tc:
        return None
    frame = timecode_to_frames(str(tc), rate)
    for index in range((tl.GetTrackCount("video") or 0), 0, -1):
        for item in tl.GetItemListInTrack("video", index) or []:
            start, end = item.GetStart(), item.GetEnd()
            if (start is not None and end is not None and start <= frame < end
                    and not is_result_item(item)):
                return item
    return None


def pick_items(session: ResolveSession, which: str = "playhead") -> list[Any]:
    """Timeline items to send.

    Resolve's API exposes no timeline selection, so "selected" means marked:

    - ``"playhead"``: the top-most video item under the playhead;
    - ``"flagged"`` or ``"flagged:<Color>"``: every video item with a flag (of that
      colour);
    - ``"color:<Name>"``: every video item whose clip colour is ``Name``.

    Our own result layers are never picked (under the playhead: the clip beneath
    them, e.g. under a draft's one-frame layers).
    """
    tl = session.timeline
    if which == "playhead":
        item = tl.GetCurrentVideoItem()
        if item is not None and is_result_item(item):
            item = _beneath_results(session)
        if item is None:
            raise HostError("No clip under the playhead: park the playhead over the "
                            "shot (the top-most video clip there is sent) and try "
                            "again.")
        return [item]
    kind, _, value = which.partition(":")
    if kind not in ("flagged", "color") or (kind == "color" and not value):
        raise ValueError(f"unknown selection {which!r}: use playhead, flagged[:Color] "
                         "or color:Name")
    out = []
    for index in range(1, (tl.GetTrackCount("video") or 0) + 1):
        for item in tl.GetItemListInTrack("video", index) or []:
            if is_result_item(item):
                continue
            if kind == "flagged":
                flags = item.GetFlagList() or []
                if flags and (not value or value in flags):
                    out.append(item)
            elif (item.GetClipColor() or "") == value:
                out.append(item)
    if not out:
        what = f"{value} flag" if kind == "flagged" and value else (
            "flag" if kind == "flagged" else f"{value} clip colour")
        raise HostError(f"No clip on this timeline has a {what}. Mark the shots to "
                        "send with it, or send the clip under the playhead.")
    return out
