"""A fake DaVinci Resolve scripting object model for tests (docs/hosts.md "Facts the
bridge relies on").

Faithful to the documented API (Resolve 21.0 README) and to the measured quirks that
the bridge must survive:

- unknown API names resolve to a callable returning None, so ``hasattr`` is always
  True; ``dir(obj)`` lists only the implemented API (use ``name in dir(obj)``);
- None returns: ``GetCurrentVideoItem`` with nothing under the playhead,
  ``GetMediaPoolItem`` on generators, every getter of a broken item;
- timeline frames are absolute (01:00:00:00 at 24 fps starts at 86400); ``GetEnd``
  is exclusive; marker ``frameId`` is relative to the timeline (or clip) start;
- ``AppendToTimeline``: ``startFrame``/``endFrame`` are media frames, ``endFrame``
  exclusive (measured on 21.0; ``end_inclusive=True`` models older builds); an
  append overlapping an item on the same track is silently dropped and returns a
  ghost item whose getters return None; ``phantom_appends`` makes the next appends
  return a plausible item that never reaches the track;
- ``ImportMedia`` lands in the current folder; ``DeleteClips`` on a timeline needs
  the Edit page (and with ``flaky_delete`` fails on the first try);
- ``SetRenderSettings`` is all-or-nothing: one unknown (or rejected) key fails the
  whole call; render jobs really write PNG files of what the timeline shows;
- API added in a later Resolve is absent on an older one (``_SINCE``: not in
  ``dir``, a call returns None), e.g. ``DeleteRenderPreset`` before 19.1;
- a retimed item (``place(..., speed=2)``) shows ``ceil(duration * speed)`` source
  frames in ``duration`` record frames: ``GetSourceEndFrame - GetSourceStartFrame``
  and ``GetRightOffset`` say so, ``GetLeftOffset`` does not;
- on a mixed-rate item (media FPS != timeline rate) ``GetLeftOffset`` counts
  timeline frames (the one public measurement, docs/hosts.md 1.6) while
  ``GetSourceStartFrame`` counts media frames and ``GetSourceEndFrame`` is
  inclusive. Pixels of such items are not modelled.

Test helpers (lower-case names, not part of the API) build projects, media and
timelines. Pixels come from real files decoded with PyAV, or from a callable for
compound clips and generators.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fsexchange.timecode import frames_to_timecode, timecode_to_frames

if TYPE_CHECKING:  # numpy, cv2 and av are imported where pixels are made, so the
    import numpy as np  # fake also runs in a bridge-only Python (no numpy)

__all__ = ["FakeResolve", "FakeProject", "FakeTimeline", "FakeTimelineItem",
           "FakeMediaPoolItem", "FakeFolder", "FakeMediaPool", "FakeFusion",
           "RATE_NAMES"]

_ids = itertools.count(1)

#: Resolve's rate strings (project setting "timelineFrameRate", clip "FPS")
RATE_NAMES = {Fraction(24000, 1001): "23.976", Fraction(24): "24", Fraction(25): "25",
              Fraction(30000, 1001): "29.97", Fraction(30): "30", Fraction(50): "50",
              Fraction(60000, 1001): "59.94", Fraction(60): "60"}


def _uid(kind: str) -> str:
    return f"{kind}-{next(_ids):06d}-fake"


class _Api:
    """Base of every fake object: Capitalised names that are not implemented behave
    like the real bridge (a callable returning None). ``_SINCE`` names the first
    Resolve version of an API this fake implements; on an older fake it is missing."""

    _SINCE: dict[str, tuple[int, ...]] = {}

    def _api_version(self) -> tuple[int, ...] | None:
        return None  # objects that know their Resolve override this

    def _absent(self, name: str) -> bool:
        since = type(self)._SINCE.get(name)
        version = self._api_version() if since else None
        return version is not None and version < since  # type: ignore[operator]

    def __getattribute__(self, name: str) -> Any:
        if name[:1].isupper() and object.__getattribute__(self, "_absent")(name):
            return object.__getattribute__(self, "__getattr__")(name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not name[:1].isupper():
            raise AttributeError(name)

        def missing(*args: Any, **kwargs: Any) -> None:
            self._calls_missing.append(name)
            return None

        return missing

    @property
    def _calls_missing(self) -> list[str]:
        return self.__dict__.setdefault("_missing", [])

    def __dir__(self) -> list[str]:
        return sorted(n for n in dir(type(self)) if n[:1].isupper() and not
                      self._absent(n))


class _Markers:
    """Markers of a timeline or a timeline item: ``frameId`` relative to its start."""

    _markers: dict[int, dict[str, Any]]

    def _marker_frame_ok(self, frame_id: int) -> bool:  # pragma: no cover
        raise NotImplementedError

    def AddMarker(self, frame_id: int, color: str, name: str, note: str, duration: int,
                  custom_data: str = "") -> bool:
        if not self._marker_frame_ok(frame_id) or frame_id in self._markers:
            return False
        self._markers[int(frame_id)] = {"color": color, "duration": duration,
                                        "note": note, "name": name,
                                        "customData": custom_data}
        return True

    def GetMarkers(self) -> dict[int, dict[str, Any]]:
        return {k: dict(v) for k, v in self._markers.items()}

    def GetMarkerByCustomData(self, custom_data: str) -> dict[int, dict[str, Any]]:
        return {k: dict(v) for k, v in self._markers.items()
                if v["customData"] == custom_data}

    def DeleteMarkerByCustomData(self, custom_data: str) -> bool:
        keys = [k for k, v in self._markers.items() if v["customData"] == custom_data]
        for k in keys:
            del self._markers[k]
        return bool(keys)


# ---- media ---------------------------------------------------------------------------


class FakeMediaPoolItem(_Api):
    def __init__(self, name: str, props: dict[str, Any], *,
                 frames: Callable[[int], np.ndarray] | None = None) -> None:
        self._name = name
        self._props = dict(props)
        self._frames = frames
        self._metadata: dict[str, str] = {}
        self._third_party: dict[str, str] = {}
        self._id = _uid("mpi")

    def GetName(self) -> str:
        return self._name

    def GetUniqueId(self) -> str:
        return self._id

    def GetMediaId(self) -> str:
        return self._id

    def GetClipProperty(self, key: str | None = None) -> Any:
        if key is None:
            return dict(self._props)
        return self._props.get(key, "")

    def SetClipProperty(self, key: str, value: Any) -> bool:
        if key not in self._props:
            return False
        self._props[key] = value
        return True

    def GetMetadata(self, key: str | None = None) -> Any:
        return dict(self._metadata) if key is None else self._metadata.get(key, "")

    def SetMetadata(self, key: Any, value: Any = None) -> bool:
        if isinstance(key, dict):
            self._metadata.update({str(k): str(v) for k, v in key.items()})
        else:
            self._metadata[str(key)] = str(value)
        return True

    def SetThirdPartyMetadata(self, key: Any, value: Any = None) -> bool:
        if isinstance(key, dict):
            self._third_party.update(key)
        else:
            self._third_party[key] = value
        return True

    def GetThirdPartyMetadata(self, key: str | None = None) -> Any:
        return (dict(self._third_party) if key is None
                else self._third_party.get(key, ""))

    # -- test helpers --
    def frame(self, index: int) -> np.ndarray:
        """RGB uint8 of media frame ``index``."""
        if self._frames is None:
            raise RuntimeError(f"{self._name}: no pixels")
        return self._frames(index)

    @property
    def frame_count(self) -> int:
        return int(self._props.get("Frames") or 0)

    @property
    def rate(self) -> Fraction | None:
        """The clip's FPS property as a rate (None when it has none)."""
        fps = self._props.get("FPS")
        if not fps:
            return None
        for rate, text in RATE_NAMES.items():
            if abs(float(text) - float(fps)) < 0.001:
                return rate
        return Fraction(str(fps)).limit_denominator(1001)


def _decode_movie(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG header (stdlib), else by decoding."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", head[16:24])
    img = _read_image(path)
    return img.shape[1], img.shape[0]


def _read_image(path: Path) -> np.ndarray:
    import cv2
    import numpy as np

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(path)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return img[:, :, 2::-1] if img.ndim == 3 else np.dstack([img] * 3)


# ---- folders and the media pool ------------------------------------------------------


class FakeFolder(_Api):
    def __init__(self, name: str) -> None:
        self._name = name
        self._clips: list[FakeMediaPoolItem] = []
        self._subfolders: list[FakeFolder] = []
        self._id = _uid("folder")

    def GetName(self) -> str:
        return self._name

    def GetUniqueId(self) -> str:
        return self._id

    def GetClipList(self) -> list[FakeMediaPoolItem]:
        return list(self._clips)

    def GetSubFolderList(self) -> list["FakeFolder"]:
        return list(self._subfolders)

    def GetIsFolderStale(self) -> bool:
        return False


_SEQ_PATTERN = re.compile(r"%0(\d)d")


class FakeMediaPool(_Api):
    def __init__(self, project: "FakeProject") -> None:
        self._project = project
        self._root = FakeFolder("Master")
        self._current = self._root

    def GetRootFolder(self) -> FakeFolder:
        return self._root

    def GetCurrentFolder(self) -> FakeFolder:
        return self._current

    def SetCurrentFolder(self, folder: FakeFolder) -> bool:
        if not isinstance(folder, FakeFolder):
            return False
        self._current = folder
        return True

    def AddSubFolder(self, parent: FakeFolder, name: str) -> FakeFolder | None:
        if not isinstance(parent, FakeFolder) or not name:
            return None
        folder = FakeFolder(name)
        parent._subfolders.append(folder)
        return folder

    def ImportMedia(self, items: list[Any]) -> list[FakeMediaPoolItem]:
        out = []
        for item in items:
            mpi = (self._import_sequence(item) if isinstance(item, dict)
                   else self._project._media_from_file(Path(item)))
            if mpi is not None:
                self._current._clips.append(mpi)
                out.append(mpi)
        return out

    def _import_sequence(self, info: dict[str, Any]) -> FakeMediaPoolItem | None:
        pattern = str(info.get("FilePath", ""))
        m = _SEQ_PATTERN.search(pattern)
        if not m or "StartIndex" not in info or "EndIndex" not in info:
            return None
        width = int(m[1])
        first, last = int(info["StartIndex"]), int(info["EndIndex"])
        files = [Path(pattern % n) for n in range(first, last + 1)]
        if not files or not all(f.is_file() for f in files):
            return None
        width_px, height_px = _image_size(files[0])
        name = Path(pattern).name
        n = _SEQ_PATTERN.search(name)
        assert n is not None, "the number pattern must be in the file name"
        shown = (f"{name[:n.start()]}[{first:0{width}d}-{last:0{width}d}]"
                 f"{name[n.end():]}")
        rate = self._project._timeline_rate
        props = {
            "File Path": str(Path(pattern).parent / shown), "File Name": shown,
            "Clip Name": shown, "Type": "Still" if first == last else "Video",
            "FPS": float(RATE_NAMES.get(rate, str(float(rate)))),
            "Frames": str(len(files)), "Resolution": f"{width_px}x{height_px}",
            # a PNG has no embedded timecode: the frame count becomes the timecode
            "Start TC": frames_to_timecode(first, rate),
            "Alpha mode": "None", "Data Level": "Auto", "Input Color Space": "",
        }
        return FakeMediaPoolItem(shown, props,
                                 frames=lambda i, fs=tuple(files): _read_image(fs[i]))

    def AppendToTimeline(self, *clips: Any) -> list["FakeTimelineItem"]:
        """(clip, clip...), ([clips]) or ([clipInfo dicts])."""
        items = clips[0] if len(clips) == 1 and isinstance(clips[0], list) else clips
        timeline = self._project._current_timeline
        if timeline is None:
            return []
        return [timeline._append(info) for info in items]

    def DeleteClips(self, clips: list[FakeMediaPoolItem]) -> bool:
        def remove(folder: FakeFolder) -> None:
            folder._clips = [c for c in folder._clips if c not in clips]
            for sub in folder._subfolders:
                remove(sub)

        remove(self._root)
        return True

    def DeleteTimelines(self, timelines: list["FakeTimeline"]) -> bool:
        before = len(self._project._timelines)
        self._project._timelines = [t for t in self._project._timelines
                                    if t not in timelines]
        if self._project._current_timeline in timelines:
            self._project._current_timeline = (self._project._timelines[0]
                                               if self._project._timelines else None)
        return len(self._project._timelines) < before

    def CreateEmptyTimeline(self, name: str) -> "FakeTimeline":
        return self._project.add_timeline(name)


# ---- timeline items ------------------------------------------------------------------


class FakeTimelineItem(_Markers, _Api):
    _SINCE = {"GetSourceStartFrame": (19, 0, 2), "GetSourceEndFrame": (19, 0, 2),
              "GetTrackTypeAndIndex": (19, 0)}

    def __init__(self, timeline: "FakeTimeline", mpi: FakeMediaPoolItem | None, *,
                 track: int, start: int, duration: int, left_offset: int = 0,
                 name: str | None = None, broken: bool = False,
                 frames: Callable[[int], np.ndarray] | None = None,
                 speed: Fraction | int = 1) -> None:
        self._timeline = timeline
        self._mpi = mpi
        self._track = track
        self._start = start
        self._duration = duration
        self._left = left_offset  # media frames
        self._speed = Fraction(speed)
        self._name = name or (mpi.GetName() if mpi else "Solid Color")
        self._broken = broken
        self._frames = frames  # generators: record-relative pixels
        self._props: dict[str, Any] = {"CompositeMode": 0, "Opacity": 100.0,
                                       "ZoomX": 1.0, "ZoomY": 1.0, "Pan": 0.0,
                                       "Tilt": 0.0}
        self._markers: dict[int, dict[str, Any]] = {}
        self._flags: list[str] = []
        self._color = ""
        self._id = "" if broken else _uid("item")

    def _get(self, value: Any) -> Any:
        return None if self._broken else value

    def _api_version(self) -> tuple[int, ...]:
        return self._timeline._project._resolve._version

    @property
    def _span(self) -> int:
        """Media frames shown: the record duration scaled by the speed and, on a
        mixed-rate item, by media rate / timeline rate (real time is kept)."""
        return math.ceil(self._duration * self._speed / (self._mixed or 1))

    @property
    def _mixed(self) -> Fraction | None:
        """timeline rate / media rate where they differ, else None."""
        media = self._mpi.rate if self._mpi is not None else None
        timeline = self._timeline._rate
        return timeline / media if media and media != timeline else None

    def GetName(self) -> str | None:
        return self._get(self._name)

    def GetUniqueId(self) -> str | None:
        return self._get(self._id)

    def GetStart(self, subframe_precision: bool = False) -> int | None:
        return self._get(self._start)

    def GetEnd(self, subframe_precision: bool = False) -> int | None:
        return self._get(self._start + self._duration)

    def GetDuration(self, subframe_precision: bool = False) -> int | None:
        return self._get(self._duration)

    def GetLeftOffset(self, subframe_precision: bool = False) -> int | None:
        if self._mixed is not None:  # timeline frames (docs/hosts.md 1.6)
            return self._get(math.floor(self._left * self._mixed))
        return self._get(self._left)

    def GetRightOffset(self, subframe_precision: bool = False) -> int | None:
        if self._mpi is None:
            return self._get(0)
        right = self._mpi.frame_count - self._left - self._span
        if self._mixed is not None:
            return self._get(math.floor(right * self._mixed))
        return self._get(right)

    def GetSourceStartFrame(self) -> int | None:
        return self._get(self._left)

    def GetSourceEndFrame(self) -> int | None:
        inclusive = 1 if self._mixed is not None else 0  # docs/hosts.md 1.6
        return self._get(self._left + self._span - inclusive)

    def GetMediaPoolItem(self) -> FakeMediaPoolItem | None:
        return None if self._broken else self._mpi

    def GetTrackTypeAndIndex(self) -> list[Any] | None:
        return self._get(["video", self._track])

    def GetProperty(self, key: str | None = None) -> Any:
        if self._broken:
            return None
        return dict(self._props) if key is None else self._props.get(key)

    def SetProperty(self, key: str, value: Any) -> bool:
        if self._broken or key not in self._props:
            return False
        if key == "CompositeMode" and not isinstance(value, int):
            return False
        self._props[key] = value
        return True

    def _marker_frame_ok(self, frame_id: int) -> bool:
        # clip markers are relative to the clip start; beyond the clip: refused
        return not self._broken and 0 <= frame_id < self._duration

    def GetFlagList(self) -> list[str]:
        return list(self._flags)

    def AddFlag(self, color: str) -> bool:
        if color not in self._flags:
            self._flags.append(color)
        return True

    def ClearFlags(self, color: str = "All") -> bool:
        self._flags = [] if color == "All" else [f for f in self._flags if f != color]
        return True

    def GetClipColor(self) -> str:
        return self._color

    def SetClipColor(self, color: str) -> bool:
        self._color = color
        return True

    # -- test helper --
    def pixels_at(self, record_frame: int) -> np.ndarray:
        rel = record_frame - self._start
        if self._frames is not None:
            return self._frames(rel)
        assert self._mpi is not None
        return self._mpi.frame(self._left + math.floor(rel * self._speed))


# ---- timelines -----------------------------------------------------------------------


class FakeTimeline(_Markers, _Api):
    def __init__(self, project: "FakeProject", name: str, *,
                 start_timecode: str = "01:00:00:00") -> None:
        self._project = project
        self._name = name
        self._start_tc = start_timecode
        self._tracks: list[dict[str, Any]] = [{"name": "Video 1", "enabled": True,
                                               "locked": False, "items": []}]
        self._markers: dict[int, dict[str, Any]] = {}
        self._settings: dict[str, str] = {}
        self._playhead = self.GetStartFrame()
        self._id = _uid("timeline")
        self._deletes_tried = 0

    @property
    def _rate(self) -> Fraction:
        return self._project._timeline_rate

    def GetName(self) -> str:
        return self._name

    def GetUniqueId(self) -> str:
        return self._id

    def GetStartFrame(self) -> int:
        return timecode_to_frames(self._start_tc, self._rate)

    def GetEndFrame(self) -> int:
        ends = [it._start + it._duration for t in self._tracks for it in t["items"]]
        return max(ends, default=self.GetStartFrame())

    def GetStartTimecode(self) -> str:
        return self._start_tc

    def SetStartTimecode(self, tc: str) -> bool:
        shift = timecode_to_frames(tc, self._rate) - self.GetStartFrame()
        for t in self._tracks:
            for it in t["items"]:
                it._start += shift
        self._start_tc = tc
        return True

    def GetSetting(self, name: str | None = None) -> Any:
        merged = {**self._project._settings, **self._settings}
        return merged if name is None else merged.get(name, "")

    def GetTrackCount(self, track_type: str) -> int:
        return len(self._tracks) if track_type == "video" else 0

    def GetItemListInTrack(self, track_type: str,
                           index: int) -> list[FakeTimelineItem] | None:
        if track_type != "video" or not 1 <= index <= len(self._tracks):
            return None
        return sorted(self._tracks[index - 1]["items"], key=lambda it: it._start)

    def AddTrack(self, track_type: str, options: Any = None) -> bool:
        if track_type != "video":
            return False
        track = {"name": f"Video {len(self._tracks) + 1}", "enabled": True,
                 "locked": False, "items": []}
        index = options.get("index") if isinstance(options, dict) else None
        if index is not None and self._project._resolve._version >= (20, 3):
            if not 1 <= index <= len(self._tracks) + 1:
                return False
            self._tracks.insert(index - 1, track)
        else:  # older builds ignore the index option and add at the top
            self._tracks.append(track)
        for i, t in enumerate(self._tracks, 1):
            for it in t["items"]:
                it._track = i
        return True

    def GetTrackName(self, track_type: str, index: int) -> str | None:
        if track_type != "video" or not 1 <= index <= len(self._tracks):
            return None
        return self._tracks[index - 1]["name"]

    def SetTrackName(self, track_type: str, index: int, name: str) -> bool:
        if track_type != "video" or not 1 <= index <= len(self._tracks):
            return False
        self._tracks[index - 1]["name"] = name
        return True

    def SetTrackEnable(self, track_type: str, index: int, enabled: bool) -> bool:
        if track_type == "audio":
            return True
        if track_type != "video" or not 1 <= index <= len(self._tracks):
            return False
        self._tracks[index - 1]["enabled"] = bool(enabled)
        return True

    def GetIsTrackEnabled(self, track_type: str, index: int) -> bool:
        return bool(track_type == "video" and 1 <= index <= len(self._tracks)
                    and self._tracks[index - 1]["enabled"])

    def GetIsTrackLocked(self, track_type: str, index: int) -> bool:
        return bool(track_type == "video" and 1 <= index <= len(self._tracks)
                    and self._tracks[index - 1]["locked"])

    def GetCurrentTimecode(self) -> str:
        return frames_to_timecode(self._playhead, self._rate)

    def SetCurrentTimecode(self, tc: str) -> bool:
        self._playhead = timecode_to_frames(tc, self._rate)
        return True

    def GetCurrentVideoItem(self) -> FakeTimelineItem | None:
        return self._item_at(self._playhead)

    def _item_at(self, frame: int) -> FakeTimelineItem | None:
        """The top-most enabled video item covering absolute ``frame``."""
        for t in reversed(self._tracks):
            if not t["enabled"]:
                continue
            for it in t["items"]:
                if it._start <= frame < it._start + it._duration:
                    return it
        return None

    def DeleteClips(self, items: list[FakeTimelineItem], ripple: bool = False) -> bool:
        if self._project._resolve._page != "edit":
            return False
        self._deletes_tried += 1
        if self._project._resolve.flaky_delete and self._deletes_tried == 1:
            return False
        found = False
        for t in self._tracks:
            keep = [it for it in t["items"] if it not in items]
            found |= len(keep) != len(t["items"])
            t["items"] = keep
        return found

    def DuplicateTimeline(self, name: str | None = None) -> "FakeTimeline":
        dup = FakeTimeline(self._project, name or f"{self._name} copy",
                           start_timecode=self._start_tc)
        dup._settings = dict(self._settings)
        dup._tracks = []
        for i, t in enumerate(self._tracks, 1):
            items = []
            for it in t["items"]:
                copy = FakeTimelineItem(dup, it._mpi, track=i, start=it._start,
                                        duration=it._duration, left_offset=it._left,
                                        name=it._name, frames=it._frames,
                                        speed=it._speed)
                items.append(copy)
            dup._tracks.append({**t, "items": items})
        self._project._timelines.append(dup)
        return dup

    def _marker_frame_ok(self, frame_id: int) -> bool:
        return frame_id >= 0  # relative to the timeline start

    # -- appends (AppendToTimeline lands here) --
    def _append(self, info: Any) -> FakeTimelineItem:
        resolve = self._project._resolve
        ghost = FakeTimelineItem(self, None, track=0, start=0, duration=0, broken=True)
        if isinstance(info, FakeMediaPoolItem):
            info = {"mediaPoolItem": info}
        mpi = info.get("mediaPoolItem") if isinstance(info, dict) else None
        if not isinstance(mpi, FakeMediaPoolItem):
            return ghost
        start = int(info.get("startFrame", 0))
        end = int(info.get("endFrame", mpi.frame_count))
        duration = end - start + (1 if resolve.end_inclusive else 0)
        track = int(info.get("trackIndex", 1))
        record = int(info.get("recordFrame", self.GetEndFrame()))
        if (int(info.get("mediaType", 1)) != 1 or not 1 <= track <= len(self._tracks)
                or start < 0 or duration <= 0 or start + duration > mpi.frame_count):
            return ghost
        item = FakeTimelineItem(self, mpi, track=track, start=record, duration=duration,
                                left_offset=start)
        if resolve.phantom_appends > 0:  # returned, but it never reaches the track
            resolve.phantom_appends -= 1
            return item
        for other in self._tracks[track - 1]["items"]:
            if other._start < record + duration and \
                    record < other._start + other._duration:
                return ghost  # overlapping record: silently dropped, earlier item wins
        self._tracks[track - 1]["items"].append(item)
        return item

    # -- test helpers --
    def place(self, mpi: FakeMediaPoolItem | None, *, record: int, duration: int,
              left_offset: int = 0, track: int = 1, broken: bool = False,
              frames: Callable[[int], np.ndarray] | None = None,
              name: str | None = None, speed: Fraction | int = 1) -> FakeTimelineItem:
        """Cut a clip in as the editor would (absolute ``record`` frame;
        ``left_offset`` in media frames; ``speed`` 2 plays it twice as fast)."""
        while len(self._tracks) < track:
            self.AddTrack("video")
        item = FakeTimelineItem(self, mpi, track=track, start=record, duration=duration,
                                left_offset=left_offset, broken=broken, frames=frames,
                                name=name, speed=speed)
        self._tracks[track - 1]["items"].append(item)
        return item

    def set_playhead(self, frame: int) -> None:
        self._playhead = frame

    def items(self, track: int) -> list[FakeTimelineItem]:
        return sorted(self._tracks[track - 1]["items"], key=lambda it: it._start)

    def render_frame(self, frame: int, size: tuple[int, int]) -> np.ndarray:
        import numpy as np

        item = self._item_at(frame)
        if item is None:
            return np.zeros((size[1], size[0], 3), np.uint8)
        return item.pixels_at(frame)


# ---- project, rendering --------------------------------------------------------------

#: keys SetRenderSettings accepts (Resolve 21.0 README); the rest fail the whole call
RENDER_KEYS = frozenset({
    "SelectAllFrames", "MarkIn", "MarkOut", "TargetDir", "CustomName",
    "UniqueFilenameStyle", "ExportVideo", "ExportAudio", "FormatWidth", "FormatHeight",
    "FrameRate", "PixelAspectRatio", "VideoQuality", "AudioCodec", "AudioBitDepth",
    "AudioSampleRate", "ColorSpaceTag", "GammaTag", "ExportAlpha", "EncodingProfile",
    "MultiPassEncode", "AlphaMode", "NetworkOptimization", "ClipStartFrame",
    "TimelineStartTimecode", "UseFullExtents", "AddFrameHandles", "DataBurnIn"})
#: documented but rejected by Studio 21.0.4.5 (docs/hosts.md "Render-based export")
REJECTED_RENDER_KEYS = frozenset({"ReplaceExistingFilesInPlace"})

RENDER_FORMATS = {"PNG": "png", "EXR": "exr", "TIFF": "tif", "QuickTime": "mov"}
RENDER_CODECS = {
    "png": {"RGB 8 bit": "RGB8", "RGBA 8 bit": "RGBA8", "RGB 16 bit": "RGB16"},
    "exr": {"RGB half (no compression)": "RGBHalf", "RGB float (no compression)":
            "RGBFloat"},
    "tif": {"RGB 8 bit": "RGB8", "RGB 16 bit": "RGB16"},
    "mov": {"Apple ProRes 422 HQ": "ProRes422HQ", "H.264": "H264"},
}


class FakeProject(_Api):
    _SINCE = {"DeleteRenderPreset": (19, 1)}

    def __init__(self, resolve: "FakeResolve", name: str, rate: Fraction) -> None:
        self._resolve = resolve
        self._name = name
        self._timeline_rate = Fraction(rate)
        self._settings: dict[str, str] = {
            "timelineFrameRate": RATE_NAMES.get(self._timeline_rate,
                                                str(float(rate))),
            "timelineResolutionWidth": "320", "timelineResolutionHeight": "240",
            "timelineDropFrameTimecode": "0"}
        self._media_pool = FakeMediaPool(self)
        self._timelines: list[FakeTimeline] = []
        self._current_timeline: FakeTimeline | None = None
        self._id = _uid("project")
        # render state: what a render preset captures
        self._render = {"settings": {"TargetDir": "", "CustomName": "", "MarkIn": None,
                                     "MarkOut": None, "SelectAllFrames": True,
                                     "ExportVideo": True, "ExportAudio": True},
                        "format": "mov", "codec": "H264", "mode": 1}
        self._presets: dict[str, dict[str, Any]] = {"H.264 Master": self._snapshot()}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._polls_left = 0

    def _api_version(self) -> tuple[int, ...]:
        return self._resolve._version

    def _snapshot(self) -> dict[str, Any]:
        return {"settings": dict(self._render["settings"]),
                "format": self._render["format"], "codec": self._render["codec"],
                "mode": self._render["mode"]}

    def GetName(self) -> str:
        return self._name

    def GetUniqueId(self) -> str:
        return self._id

    def GetMediaPool(self) -> FakeMediaPool:
        return self._media_pool

    def GetTimelineCount(self) -> int:
        return len(self._timelines)

    def GetTimelineByIndex(self, index: int) -> FakeTimeline | None:
        return (self._timelines[index - 1] if 1 <= index <= len(self._timelines)
                else None)

    def GetCurrentTimeline(self) -> FakeTimeline | None:
        return self._current_timeline

    def SetCurrentTimeline(self, timeline: FakeTimeline) -> bool:
        if timeline not in self._timelines:
            return False
        self._current_timeline = timeline
        return True

    def GetSetting(self, name: str | None = None) -> Any:
        return dict(self._settings) if name is None else self._settings.get(name, "")

    def SetSetting(self, name: str, value: str) -> bool:
        self._settings[name] = value
        return True

    # -- rendering --
    def GetRenderFormats(self) -> dict[str, str]:
        return dict(RENDER_FORMATS)

    def GetRenderCodecs(self, fmt: str) -> dict[str, str]:
        return dict(RENDER_CODECS.get(fmt, {}))

    def GetCurrentRenderFormatAndCodec(self) -> dict[str, str]:
        return {"format": self._render["format"], "codec": self._render["codec"]}

    def SetCurrentRenderFormatAndCodec(self, fmt: str, codec: str) -> bool:
        if codec not in RENDER_CODECS.get(fmt, {}).values():  # only the id is accepted
            return False
        self._render["format"], self._render["codec"] = fmt, codec
        return True

    def GetCurrentRenderMode(self) -> int:
        return self._render["mode"]

    def SetCurrentRenderMode(self, mode: int) -> bool:
        if mode not in (0, 1):
            return False
        self._render["mode"] = mode
        return True

    def SetRenderSettings(self, settings: dict[str, Any]) -> bool:
        if any(k not in RENDER_KEYS or k in REJECTED_RENDER_KEYS for k in settings):
            return False  # all or nothing
        self._render["settings"].update(settings)
        return True

    def GetRenderPresetList(self) -> list[str]:
        return list(self._presets)

    def SaveAsNewRenderPreset(self, name: str) -> bool:
        if name in self._presets:
            return False
        self._presets[name] = self._snapshot()
        return True

    def LoadRenderPreset(self, name: str) -> bool:
        if name not in self._presets:
            return False
        snap = self._presets[name]
        self._render = {"settings": dict(snap["settings"]), "format": snap["format"],
                        "codec": snap["codec"], "mode": snap["mode"]}
        return True

    def DeleteRenderPreset(self, name: str) -> bool:
        return self._presets.pop(name, None) is not None

    def AddRenderJob(self) -> str | None:
        s = self._render["settings"]
        if not s.get("TargetDir") or self._current_timeline is None:
            return None
        job_id = _uid("render")
        self._jobs[job_id] = {"timeline": self._current_timeline,
                              "render": self._snapshot(), "status": "Ready"}
        return job_id

    def DeleteRenderJob(self, job_id: str) -> bool:
        return self._jobs.pop(job_id, None) is not None

    def DeleteAllRenderJobs(self) -> bool:
        self._jobs.clear()
        return True

    def GetRenderJobList(self) -> list[dict[str, Any]]:
        return [{"JobId": k, "TimelineName": v["timeline"].GetName(),
                 "TargetDir": v["render"]["settings"]["TargetDir"]}
                for k, v in self._jobs.items()]

    def StartRendering(self, *args: Any) -> bool:
        """The README's five forms: (id, id...), ([ids], interactive),
        (interactive), (index, index...), ([indexes]); indexes are 1-based."""
        first = args[0] if args else None
        if isinstance(first, list):
            wanted = list(first)
        elif not args or isinstance(first, bool):
            wanted = list(self._jobs)
        else:
            wanted = list(args)
        order = list(self._jobs)
        ids = [order[w - 1] if isinstance(w, int) and not isinstance(w, bool)
               and 1 <= w <= len(order) else w for w in wanted]
        for job_id in ids:
            if job_id not in self._jobs:
                return False
            self._render_job(self._jobs[job_id])
        self._polls_left = self._resolve.render_polls
        return True

    def IsRenderingInProgress(self) -> bool:
        if self._polls_left > 0:
            self._polls_left -= 1
            return True
        return False

    def GetRenderJobStatus(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            return {}
        return {"JobStatus": job["status"],
                "CompletionPercentage": 100 if job["status"] == "Complete" else 0}

    def _render_job(self, job: dict[str, Any]) -> None:
        import cv2
        import numpy as np

        snap = job["render"]
        s = snap["settings"]
        timeline: FakeTimeline = job["timeline"]
        if snap["format"] != "png" or not s.get("ExportVideo", True):
            job["status"] = "Failed"
            return
        if s.get("SelectAllFrames", True) or s.get("MarkIn") is None:
            first, last = timeline.GetStartFrame(), timeline.GetEndFrame() - 1
        else:
            first, last = int(s["MarkIn"]), int(s["MarkOut"])  # inclusive marks
        size = (int(self._settings["timelineResolutionWidth"]),
                int(self._settings["timelineResolutionHeight"]))
        target = Path(s["TargetDir"])
        target.mkdir(parents=True, exist_ok=True)
        skip = set(self._resolve.render_drop_frames)
        for frame in range(first, last + 1):
            if frame in skip:
                continue
            rgb = timeline.render_frame(frame, size)
            cv2.imwrite(
                str(target / f"{s.get('CustomName') or 'render'}{frame:08d}.png"),
                np.ascontiguousarray(rgb[:, :, ::-1]))
        job["status"] = "Complete"

    # -- test helpers --
    def add_timeline(self, name: str, *,
                     start_timecode: str = "01:00:00:00") -> FakeTimeline:
        tl = FakeTimeline(self, name, start_timecode=start_timecode)
        self._timelines.append(tl)
        if self._current_timeline is None:
            self._current_timeline = tl
        return tl

    def _media_from_file(self, path: Path, *, rate: Fraction | None = None,
                         start_timecode: str | None = None,
                         input_color_space: str | None = "Rec.709 Gamma 2.4",
                         ) -> FakeMediaPoolItem | None:
        if not path.is_file():
            return None
        frames = _decode_movie(path)
        rate = rate or self._timeline_rate
        h, w = frames[0].shape[:2]
        props = {"File Path": str(path), "File Name": path.name, "Clip Name": path.name,
                 "Type": "Video", "FPS": float(RATE_NAMES.get(rate, str(float(rate)))),
                 "Frames": str(len(frames)), "Resolution": f"{w}x{h}",
                 "Start TC": start_timecode or "00:00:00:00", "Alpha mode": "None",
                 "Data Level": "Auto", "Input Color Space": input_color_space}
        return FakeMediaPoolItem(path.name, props, frames=lambda i: frames[i])

    def add_media(self, path: str | Path, *, rate: Fraction | None = None,
                  start_timecode: str = "00:00:00:00",
                  input_color_space: str | None = "Rec.709 Gamma 2.4"
                  ) -> FakeMediaPoolItem:
        """Import a real movie into the media pool's root (as the editor did).
        ``input_color_space`` is what ``GetClipProperty`` returns for "Input Color
        Space", as given (None and "" included: Resolve returns "" for a clip that
        follows the project)."""
        mpi = self._media_from_file(Path(path), rate=rate,
                                    start_timecode=start_timecode,
                                    input_color_space=input_color_space)
        if mpi is None:
            raise FileNotFoundError(path)
        self._media_pool._root._clips.append(mpi)
        return mpi

    def add_virtual_media(self, name: str, props: dict[str, Any],
                          frames: Callable[[int], np.ndarray] | None = None
                          ) -> FakeMediaPoolItem:
        """Media without a readable file: compound clips, offline clips..."""
        mpi = FakeMediaPoolItem(name, props, frames=frames)
        self._media_pool._root._clips.append(mpi)
        return mpi

    def render_settings(self) -> dict[str, Any]:
        return self._snapshot()


class FakeProjectManager(_Api):
    def __init__(self, resolve: "FakeResolve") -> None:
        self._resolve = resolve
        self._current: FakeProject | None = None

    def GetCurrentProject(self) -> FakeProject | None:
        return self._current


class FakeUIManager(_Api):
    """Present on Studio; None on the free edition since 19.1."""


class FakeFusion(_Api):
    def __init__(self, resolve: "FakeResolve") -> None:
        self._resolve = resolve
        self.UIManager = FakeUIManager() if resolve._studio else None

    def GetResolve(self) -> "FakeResolve":
        return self._resolve


class FakeResolve(_Api):
    """The ``resolve`` object. Knobs (test-only attributes) model quirks:

    ``end_inclusive``: AppendToTimeline treats endFrame as inclusive (old builds).
    ``phantom_appends``: that many next appends return an item but place nothing.
    ``flaky_delete``: the first timeline DeleteClips fails.
    ``render_polls``: IsRenderingInProgress answers True that many times.
    ``render_drop_frames``: absolute frames a render silently skips.
    """

    COMPOSITE_NORMAL = 0
    COMPOSITE_ADD = 1
    EXPORT_OTIO = 14
    EXPORT_DRT = 2
    EXPORT_NONE = 0

    def __init__(self, *, studio: bool = True, version: tuple[int, ...] = (21, 0, 3, 5),
                 rate: Fraction = Fraction(24), project: str = "Project",
                 end_inclusive: bool = False, phantom_appends: int = 0,
                 flaky_delete: bool = False, render_polls: int = 2,
                 render_drop_frames: tuple[int, ...] = ()) -> None:
        self._studio = studio
        self._version = tuple(version)
        self._page = "edit"
        self.end_inclusive = end_inclusive
        self.phantom_appends = phantom_appends
        self.flaky_delete = flaky_delete
        self.render_polls = render_polls
        self.render_drop_frames = tuple(render_drop_frames)
        self._pm = FakeProjectManager(self)
        self._pm._current = FakeProject(self, project, rate)
        self.fusion = FakeFusion(self)

    def GetProductName(self) -> str:
        return "DaVinci Resolve Studio" if self._studio else "DaVinci Resolve"

    def GetVersion(self) -> list[Any]:
        return [*self._version, ""]

    def GetVersionString(self) -> str:
        return ".".join(str(v) for v in self._version)

    def GetProjectManager(self) -> FakeProjectManager:
        return self._pm

    def OpenPage(self, page: str) -> bool:
        if page not in ("media", "cut", "edit", "fusion", "color", "fairlight",
                        "deliver"):
            return False
        self._page = page
        return True

    def GetCurrentPage(self) -> str:
        return self._page

    def Fusion(self) -> FakeFusion:
        return self.fusion

    # -- test helpers --
    @property
    def project(self) -> FakeProject:
        assert self._pm._current is not None
        return self._pm._current
