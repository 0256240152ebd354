"""Media probing: what a movie file or an image-sequence folder holds, exactly.

Shared by the engine (which reads frames by index, :mod:`engine.media.video`) and
the bridge (which checks ranges and timecodes at submit time, before a job is
queued), so both sides agree on frame counts, rates and timecodes.

How a frame index is found in a movie: :func:`probe` demuxes the video stream once
(packets only, no decoding) and keeps the sorted presentation timestamps, so index
``i`` is the ``i``-th pts in the stream's rational time base. The same pts list
exposes variable frame rate, which is refused (``media.unsupported``) with an
explanation: conform the clip to a constant rate first. Sequences are folders of
numbered images (``.png .tif .tiff .exr .pam``), one sequence per folder, no gaps.

Needs PyAV (``av``), imported when a probe runs: this module imports with the
standard library alone, and :func:`probe_available` tells whether this Python can
probe (an editor's Python may not have PyAV; the bridge then checks syntax only).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from fsexchange.colour import (MATRIX_NAMES, PRIMARIES_NAMES, RANGE_NAMES,
                               TRANSFER_NAMES, ColourTags)
from fsexchange.errors import (DocumentFieldError, MediaCorrupt, MediaMissing,
                               MediaUnreadable, MediaUnsupported, NotRegularFile,
                               RangeOutOfBounds)
from fsexchange.fsutil import describe_mode, open_regular
from fsexchange.timecode import frames_to_timecode, timecode_to_frames

__all__ = ["SEQUENCE_EXTENSIONS", "DEFAULT_SEQUENCE_RATE", "MediaInfo", "MediaIndex",
           "probe", "probe_available", "media_index", "open_container",
           "check_media",
           "timecode_to_index",
           "index_to_timecode"]

log = logging.getLogger(__name__)


def probe_available() -> bool:
    """Whether this Python has PyAV, which :func:`probe` needs."""
    try:
        return importlib.util.find_spec("av") is not None
    except (ImportError, ValueError):
        return False


SEQUENCE_EXTENSIONS = (".png", ".tif", ".tiff", ".exr", ".pam")
DEFAULT_SEQUENCE_RATE = Fraction(24)  # image files carry no frame rate

# A frame whose pts is this far (in frames) from its neighbours' spacing makes a clip
# variable-rate. Half a frame tolerates millisecond time bases (Matroska 23.976).
_VFR_TOLERANCE = 0.5


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found.

    Attributes:
        path: the resolved media path.
        kind: ``"video"`` or ``"sequence"``.
        width, height: display size (after rotation metadata is applied).
        frame_count: number of frames (exact: counted, not estimated).
        rate: constant frame rate; for sequences the one given (default 24).
        start_timecode: source timecode of index 0, if the media carries one.
        bit_depth: bits per component of the source (8, 10, 12, 16).
        has_alpha: the source has an alpha channel.
        first_number: sequences: the file number of index 0 (else None).
        colour: the colour tags the source carries (``""`` where it says nothing;
            :func:`fsexchange.colour.assumed_tags` fills them in).
    """

    path: Path
    kind: str
    width: int
    height: int
    frame_count: int
    rate: Fraction
    start_timecode: str | None
    bit_depth: int
    has_alpha: bool
    first_number: int | None = None
    colour: ColourTags = ColourTags()


@dataclass(frozen=True)
class MediaIndex:
    """Internal per-media facts :func:`read_frames` needs besides :class:`MediaInfo`."""

    info: MediaInfo
    pts: tuple[int, ...] = ()  # video: sorted presentation timestamps, one per frame
    rotation: int = 0  # video: counter-clockwise degrees to apply (0/90/180/270)
    files: tuple[Path, ...] = ()  # sequence: files in frame order


# --- probing ----------------------------------------------------------------------


def probe(path: str | os.PathLike[str], rate: Fraction | None = None) -> MediaInfo:
    """Describe a movie file or an image-sequence folder.

    Args:
        path: a movie file or a folder of numbered images.
        rate: sequences: the frame rate to report (default 24); movies: ignored.

    Raises:
        MediaMissing: nothing at ``path``.
        MediaCorrupt: the file cannot be opened or its first frame not decoded.
        MediaUnsupported: no video stream, variable frame rate, an unusual rotation,
            a sequence with gaps or mixed names.
    """
    return media_index(path, rate).info


def check_media(path: str | os.PathLike[str], *, field: str | None = None
                ) -> os.stat_result:
    """What is at a media path, checked before anything opens it.

    A movie must be a regular file we may read, a sequence a folder we may list;
    a named pipe, socket or device is refused unopened (a pipe would block the
    reader forever). Symbolic links are followed (confinement is
    :mod:`fsexchange.paths`' business).

    Raises:
        MediaMissing: nothing there (or a dangling link).
        MediaUnreadable: there, but not readable by this process.
        NotRegularFile: neither a regular file nor a folder.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaMissing(f"media {str(p)!r} does not exist", field=field) from None
    except PermissionError:
        raise MediaUnreadable(f"media {str(p)!r} cannot be reached: permission "
                              "denied on a folder on its way", field=field) from None
    except OSError as exc:
        raise MediaUnreadable(f"media {str(p)!r} cannot be read: {exc.strerror}",
                              field=field) from None
    try:
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(p):
                pass
        elif stat.S_ISREG(st.st_mode):
            open_regular(p, follow_symlinks=True, field=field).close()
        else:
            raise NotRegularFile(f"media {str(p)!r} is {describe_mode(st.st_mode)}, "
                                 "not a movie file or a folder of images; it was not "
                                 "opened", field=field)
    except PermissionError:
        raise MediaUnreadable(f"media {str(p)!r} exists but this process may not "
                              "read it (permission denied); check its owner and "
                              "permissions", field=field) from None
    return st


def media_index(path: str | os.PathLike[str], rate: Fraction | None = None
                ) -> MediaIndex:
    p = Path(path)
    st = check_media(p)
    # Cached per file version: the engine probes once per stage, not per frame.
    return _index_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, rate)


@functools.lru_cache(maxsize=16)
def _index_cached(path: str, mtime_ns: int, size: int, rate: Fraction | None
                  ) -> MediaIndex:
    p = Path(path)
    if p.is_dir():
        return _index_sequence(p, Fraction(rate) if rate else DEFAULT_SEQUENCE_RATE)
    return _index_video(p)


def open_container(path: Path):
    """``av.open`` for reading, its errors as ``media.*`` errors."""
    import av

    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaMissing(f"media {path.name!r} does not exist") from None
    except OSError:
        st = None  # av.open says what is wrong
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(f"media {path.name!r} is {describe_mode(st.st_mode)}, "
                             "not a media file; it was not opened")
    try:
        return av.open(str(path), "r")
    except FileNotFoundError:
        raise MediaMissing(f"media {path.name!r} does not exist") from None
    except PermissionError:
        raise MediaUnreadable(f"media {path.name!r} exists but this process may not "
                              "read it (permission denied)") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaCorrupt(f"{path.name}: not a readable media file ({exc})") from None


def _metadata_get(md: dict, key: str) -> str | None:
    for k, v in md.items():
        if k.lower() == key:
            return v
    return None


def _index_video(path: Path) -> MediaIndex:
    import av

    container = open_container(path)
    try:
        if not container.streams.video:
            raise MediaUnsupported(f"{path.name}: has no video stream")
        stream = container.streams.video[0]
        tb = stream.time_base
        if tb is None:
            raise MediaUnsupported(f"{path.name}: the video stream has no time base")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        guess = stream.guessed_rate
        if guess and rate and abs(guess - rate) < rate / 500:
            rate = guess  # FFmpeg snaps this one to 24000/1001 etc.
        if not rate:
            raise MediaUnsupported(f"{path.name}: the video stream has no frame rate")
        rate = Fraction(rate)
        # Packet pts, demuxed without decoding: the exact frame list.
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    raise MediaUnsupported(
                        f"{path.name}: the video stream has packets without "
                        "timestamps (a raw elementary stream?); wrap it in a container "
                        "first, e.g. ffmpeg -i in.h264 -c copy out.mp4")
                pts.append(int(packet.pts))
        except av.error.FFmpegError as exc:
            raise MediaCorrupt(f"{path.name}: cannot be read to the end ({exc})"
                               ) from None
        if not pts:
            raise MediaCorrupt(f"{path.name}: the video stream holds no frames")
        pts.sort()
        _check_constant_rate(path, pts, rate, tb)
        # Decode the first frame: proves the stream decodes and gives the rotation.
        container.seek(pts[0], stream=stream, backward=True)
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.error.FFmpegError as exc:
            raise MediaCorrupt(f"{path.name}: the first frame does not decode ({exc})"
                               ) from None
        if first is None:
            raise MediaCorrupt(f"{path.name}: no frame could be decoded")
        rotation = int(round(first.rotation)) % 360
        if rotation % 90:
            raise MediaUnsupported(
                f"{path.name}: rotation metadata of {rotation} degrees is not a "
                "multiple of 90; render the clip upright first")
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        fmt = av.VideoFormat(first.format.name)
        bit_depth = max(c.bits for c in fmt.components)
        has_alpha = any(c.is_alpha for c in fmt.components)
        tc = _metadata_get(stream.metadata, "timecode") or _metadata_get(
            container.metadata, "timecode")
        if tc is None:
            for other in container.streams:
                tc = _metadata_get(other.metadata, "timecode")
                if tc:
                    break
        if tc is not None:
            try:
                timecode_to_frames(tc, rate)
            except DocumentFieldError:
                log.warning("%s: ignoring unreadable timecode %r", path.name, tc)
                tc = None
        info = MediaInfo(path, "video", width, height, len(pts), rate, tc, bit_depth,
                         has_alpha, None, _video_tags(stream, first, fmt))
        return MediaIndex(info, tuple(pts), rotation)
    finally:
        container.close()


def _video_tags(stream, frame, fmt) -> ColourTags:
    """The stream's colour tags: the codec's (VUI, ProRes header), else the
    container's (``colr`` atom), as FFmpeg names; 0/2 (unspecified) read as ""."""
    cc = stream.codec_context

    def pick(name: str, names: dict[int, str]) -> str:
        for obj in (frame, cc):
            value = getattr(obj, name, None)
            if value is not None and int(value) in names:
                return names[int(value)]
        return ""

    return ColourTags(matrix=pick("colorspace", MATRIX_NAMES),
                      primaries=pick("color_primaries", PRIMARIES_NAMES),
                      transfer=pick("color_trc", TRANSFER_NAMES),
                      range=pick("color_range", RANGE_NAMES), rgb=bool(fmt.is_rgb))


def _check_constant_rate(path: Path, pts: list[int], rate: Fraction,
                         tb: Fraction) -> None:
    step = float(1 / (rate * tb))  # ticks per frame
    for i in range(len(pts) - 1):
        delta = pts[i + 1] - pts[i]
        if abs(delta - step) <= _VFR_TOLERANCE * step:
            continue
        raise MediaUnsupported(
            f"{path.name}: variable frame rate (frame {i + 1} comes "
            f"{delta / step:.2f} frames after frame {i} at the nominal "
            f"{rate} fps). FaceStitch addresses frames by index and needs a constant "
            f"rate: conform the clip first, e.g. ffmpeg -i {path.name} -vf "
            f"fps={rate} -c:v prores_ks -profile:v 3 conformed.mov")


_SEQ_NAME = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<ext>\.[A-Za-z]+)$")


def _index_sequence(folder: Path, rate: Fraction) -> MediaIndex:
    numbered: dict[int, Path] = {}
    patterns: set[tuple[str, str]] = set()
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() not in SEQUENCE_EXTENSIONS:
            continue  # sidecars (.txt, Thumbs.db...) are not frames
        m = _SEQ_NAME.match(entry.name)
        if not m:
            raise MediaUnsupported(
                f"{folder.name}: {entry.name!r} has no frame number; an image sequence "
                "needs names like plate.0001001.png")
        number = int(m["number"])
        if number in numbered:
            raise MediaUnsupported(
                f"{folder.name}: frame number {number} appears twice "
                f"({numbered[number].name}, {entry.name})")
        numbered[number] = entry
        patterns.add((m["prefix"], m["ext"].lower()))
    if not numbered:
        raise MediaMissing(f"{folder.name}: no image frames "
                           f"({', '.join(SEQUENCE_EXTENSIONS)}) in the folder")
    if len(patterns) > 1:
        shown = ", ".join(sorted(f"{p}####{e}" for p, e in patterns)[:4])
        raise MediaUnsupported(
            f"{folder.name}: mixed file names ({shown}); put one sequence per folder")
    numbers = sorted(numbered)
    first, last = numbers[0], numbers[-1]
    if last - first + 1 != len(numbers):
        missing = sorted(set(range(first, last + 1)) - set(numbers))
        shown = ", ".join(str(n) for n in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise MediaUnsupported(
            f"{folder.name}: the sequence has gaps: frame number(s) {shown}{more} are "
            "missing between "
            f"{first} and {last}; render the missing frames or split the sequence")
    files = tuple(numbered[n] for n in numbers)
    w, h, depth, alpha = _image_facts(files[0])
    info = MediaInfo(folder, "sequence", w, h, len(files), rate, None, depth, alpha,
                     first, _image_tags(files[0], depth))
    return MediaIndex(info, files=files)


def _image_facts(path: Path) -> tuple[int, int, int, bool]:
    """(width, height, bits per component, has alpha) of one image file, decoded
    by FFmpeg (PNG, TIFF, EXR, PAM)."""
    import av

    container = open_container(path)
    try:
        frame = next(container.decode(video=0), None)
    except av.error.FFmpegError as exc:
        raise MediaCorrupt(f"{path.name}: the image does not decode ({exc})") from None
    finally:
        container.close()
    if frame is None:
        raise MediaCorrupt(f"{path.name}: holds no image")
    fmt = av.VideoFormat(frame.format.name)
    depth = 8 if max(c.bits for c in fmt.components) <= 8 else 16
    return frame.width, frame.height, depth, any(c.is_alpha for c in fmt.components)


def _image_tags(path: Path, depth: int) -> ColourTags:
    """Colour tags of an image file: EXR is linear (the format's convention) with
    its ``chromaticities`` attribute when it has one; other images say nothing
    here (PNG's default is sRGB, :func:`fsexchange.colour.assumed_tags`)."""
    if path.suffix.lower() != ".exr":
        return ColourTags(matrix="rgb", range="pc", rgb=True)
    chroma = None
    try:
        import OpenEXR

        with OpenEXR.File(str(path), header_only=True) as f:
            value = f.header().get("chromaticities")  # valid while open
            if value is not None and len(value) == 8:
                chroma = tuple(round(float(v), 6) for v in value)
    except ImportError:
        pass  # the bridge without OpenEXR: no chromaticities
    except Exception as exc:  # noqa: BLE001 - OpenEXR raises plain exceptions
        log.warning("%s: cannot read the EXR header (%s)", path.name, exc)
    return ColourTags(matrix="rgb", range="pc", transfer="linear",
                      chromaticities=chroma, rgb=True)


# --- timecode ---------------------------------------------------------------------


def timecode_to_index(info: MediaInfo, timecode: str) -> int:
    """The media index of the frame shown at source ``timecode``.

    Raises:
        MediaUnsupported: the media carries no start timecode.
        RangeOutOfBounds: the timecode lies before the media's first frame.
    """
    if not info.start_timecode:
        raise MediaUnsupported(f"{info.path.name}: carries no start timecode; "
                               "address frames by index")
    index = (timecode_to_frames(timecode, info.rate)
             - timecode_to_frames(info.start_timecode, info.rate))
    if index < 0:
        raise RangeOutOfBounds(f"timecode {timecode} lies before the first frame of "
                               f"{info.path.name} ({info.start_timecode})")
    return index


def index_to_timecode(info: MediaInfo, index: int) -> str:
    """Source timecode of media index ``index`` (non-drop-frame unless the start
    timecode uses ``;``)."""
    start = info.start_timecode or "00:00:00:00"
    drop = ";" in start
    return frames_to_timecode(timecode_to_frames(start, info.rate) + index, info.rate,
                              drop_frame=drop)
