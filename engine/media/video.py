"""Frame-accurate media I/O: probe, stream an exact frame range, write RGBA frames.

Sources are movie files (anything FFmpeg decodes, through PyAV) or folders of
numbered images (``.png .tif .tiff .exr .pam``). Frames are addressed by 0-based
**media index**; :func:`timecode_to_index` converts a source timecode. Decoding
streams: memory stays flat however long the clip.

How a frame index is found in a movie: :func:`probe` demuxes the video stream once
(packets only, no decoding) and keeps the sorted presentation timestamps, so index
``i`` is the ``i``-th pts in the stream's rational time base. :func:`read_frames`
seeks to the keyframe at or before the first wanted pts and decodes forward,
identifying each decoded frame by its pts, never by counting from the seek point.
The same pts list exposes variable frame rate, which is refused (``media.unsupported``)
with an explanation: conform the clip to a constant rate first.

Handled: odd sizes, rotation metadata (the display matrix is applied, so frames come
out as a player shows them), 10/12-bit sources (decoded to uint16 when ``depth=16``),
full-range and limited-range YUV. Writers: 16-bit PNG (straight alpha), half-float
EXR (premultiplied, the EXR convention), 16-bit PAM ``RGB_ALPHA`` (what the OpenFX
shim reads without libraries) and movies (H.264 previews; ProRes 4444 with alpha).

numpy + av + cv2 (+ OpenEXR for ``.exr``); no torch.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from fsexchange.documents import Job
from fsexchange.errors import (
    DocumentFieldError,
    MediaCorrupt,
    MediaMissing,
    MediaUnsupported,
    RangeInvalid,
    RangeOutOfBounds,
)
from fsexchange.fsutil import atomic_write_bytes, unique_name
from fsexchange.timecode import frames_to_timecode, timecode_to_frames

__all__ = [
    "SEQUENCE_EXTENSIONS",
    "MediaInfo",
    "probe",
    "read_frames",
    "read_image",
    "write_rgba",
    "encode_png",
    "encode_rgba",
    "MovieWriter",
    "output_name",
    "timecode_to_index",
    "index_to_timecode",
    "to_depth",
]

log = logging.getLogger(__name__)

SEQUENCE_EXTENSIONS = (".png", ".tif", ".tiff", ".exr", ".pam")
DEFAULT_SEQUENCE_RATE = Fraction(24)  # sequences carry no rate (APIS.md)

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


@dataclass(frozen=True)
class _Index:
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
    return _index(path, rate).info


def _index(path: str | os.PathLike[str], rate: Fraction | None = None) -> _Index:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaMissing(f"media {str(p)!r} does not exist") from None
    except OSError as exc:
        raise MediaMissing(f"media {str(p)!r} cannot be read: {exc}") from None
    # Cached per file version: the engine probes once per stage, not per frame.
    return _index_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, rate)


@functools.lru_cache(maxsize=16)
def _index_cached(path: str, mtime_ns: int, size: int, rate: Fraction | None) -> _Index:
    p = Path(path)
    if p.is_dir():
        return _index_sequence(p, Fraction(rate) if rate else DEFAULT_SEQUENCE_RATE)
    return _index_video(p)


def _open(path: Path):
    import av  # noqa: PLC0415

    try:
        return av.open(str(path), "r")
    except FileNotFoundError:
        raise MediaMissing(f"media {path.name!r} does not exist") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaCorrupt(f"{path.name}: not a readable media file ({exc})") from None


def _metadata_get(md: dict, key: str) -> str | None:
    for k, v in md.items():
        if k.lower() == key:
            return v
    return None


def _index_video(path: Path) -> _Index:
    import av  # noqa: PLC0415

    container = _open(path)
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
                         has_alpha, None)
        return _Index(info, tuple(pts), rotation)
    finally:
        container.close()


def _check_constant_rate(path: Path, pts: list[int], rate: Fraction,
                         tb: Fraction) -> None:
    step = 1 / (rate * tb)  # ticks per frame, a Fraction
    if len(pts) < 2:
        return
    deltas = np.diff(np.asarray(pts, dtype=np.int64)).astype(np.float64)
    bad = np.flatnonzero(np.abs(deltas - float(step)) > _VFR_TOLERANCE * float(step))
    if bad.size:
        i = int(bad[0])
        raise MediaUnsupported(
            f"{path.name}: variable frame rate (frame {i + 1} comes "
            f"{float(deltas[i] / step):.2f} frames after frame {i} at the nominal "
            f"{rate} fps). FaceStitch addresses frames by index and needs a constant "
            f"rate: conform the clip first, e.g. ffmpeg -i {path.name} -vf "
            f"fps={rate} -c:v prores_ks -profile:v 3 conformed.mov")


_SEQ_NAME = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<ext>\.[A-Za-z]+)$")


def _index_sequence(folder: Path, rate: Fraction) -> _Index:
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
    img = read_image(files[0])
    h, w = img.shape[:2]
    depth = 8 if img.dtype == np.uint8 else 16
    info = MediaInfo(folder, "sequence", w, h, len(files), rate, None, depth,
                     img.shape[2] == 4, first)
    return _Index(info, files=files)


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


# --- reading ------------------------------------------------------------------------


def _check_range(info: MediaInfo, start: int, end: int | None) -> int:
    end = info.frame_count if end is None else end
    if start < 0 or end <= start:
        raise RangeInvalid(
            f"frame range {start}:{end} is empty or reversed (end is exclusive and "
            "must be greater than start, start >= 0)", field="range")
    if end > info.frame_count:
        raise RangeOutOfBounds(
            f"frame range {start}:{end} reaches past the end of {info.path.name}, "
            f"which has {info.frame_count} frames (0..{info.frame_count - 1})",
            field="range.end")
    return end


def to_depth(img: np.ndarray, depth: int) -> np.ndarray:
    """Convert uint8/uint16/float images to uint8 (depth 8) or uint16 (depth 16).
    Floats are clipped to 0..1 (no transfer function is applied)."""
    if depth not in (8, 16):
        raise ValueError(f"depth must be 8 or 16, got {depth}")
    if img.dtype == np.uint8:
        return img if depth == 8 else img.astype(np.uint16) * 257
    if img.dtype == np.uint16:
        if depth == 16:
            return img
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        top = 255 if depth == 8 else 65535
        out = np.rint(np.clip(np.nan_to_num(img.astype(np.float32)), 0, 1) * top)
        return out.astype(np.uint8 if depth == 8 else np.uint16)
    raise ValueError(f"unsupported image dtype {img.dtype}")


def _channels(img: np.ndarray, alpha: bool) -> np.ndarray:
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    elif c == 2:  # grey + alpha
        img = np.concatenate([np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:]], 2)
    c = img.shape[2]
    if alpha and c == 3:
        top = np.iinfo(img.dtype).max if img.dtype.kind == "u" else 1.0
        img = np.concatenate([img, np.full(img.shape[:2] + (1,), top, img.dtype)], 2)
    elif not alpha and c == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def read_frames(
    path: str | os.PathLike[str],
    start: int = 0,
    end: int | None = None,
    *,
    alpha: bool = False,
    depth: int = 8,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream frames ``start`` (inclusive) to ``end`` (exclusive) of a movie or a
    sequence folder as ``(index, HxWx3 or HxWx4 RGB[A])`` uint8 (``depth=8``) or
    uint16 (``depth=16``). One frame is held at a time.

    The range is validated before anything is yielded (:class:`RangeInvalid`,
    :class:`RangeOutOfBounds`). Rotation metadata is applied. Without ``alpha`` an
    alpha channel is dropped; with it, sources without alpha get an opaque one.

    Example::

        for index, rgb in read_frames("plate.mov", 100, 148):
            ...
    """
    if depth not in (8, 16):
        raise ValueError(f"depth must be 8 or 16, got {depth}")
    idx = _index(path)
    end = _check_range(idx.info, start, end)
    if idx.info.kind == "sequence":
        return _read_sequence(idx, start, end, alpha, depth)
    return _read_video(idx, start, end, alpha, depth)


def _read_sequence(idx: _Index, start: int, end: int, alpha: bool,
                   depth: int) -> Iterator[tuple[int, np.ndarray]]:
    for i in range(start, end):
        try:
            img = read_image(idx.files[i])
        except MediaCorrupt as exc:
            exc.frame = i
            raise
        if img.shape[:2] != (idx.info.height, idx.info.width):
            raise MediaUnsupported(
                f"{idx.files[i].name}: is {img.shape[1]}x{img.shape[0]}, the sequence "
                f"is {idx.info.width}x{idx.info.height}", frame=i)
        yield i, _channels(to_depth(img, depth), alpha)


def _frame_to_array(frame, alpha: bool, depth: int, rotation: int) -> np.ndarray:
    has_alpha = any(c.is_alpha for c in frame.format.components)
    if depth == 8:
        fmt = "rgba" if has_alpha else "rgb24"
    else:
        fmt = "rgba64le" if has_alpha else "rgb48le"
    # Honour the stream's range (full-range "yuvj" sources) and colour matrix.
    range_ = frame.color_range if frame.color_range else None
    arr = frame.to_ndarray(format=fmt, src_color_range=range_)
    if rotation:
        arr = np.rot90(arr, k=rotation // 90)  # display matrix: counter-clockwise
    return _channels(arr, alpha)


def _read_video(idx: _Index, start: int, end: int, alpha: bool,
                depth: int) -> Iterator[tuple[int, np.ndarray]]:
    import av  # noqa: PLC0415

    path = idx.info.path
    want = {p: i for i, p in enumerate(idx.pts[start:end], start)}
    first_pts, last_pts = idx.pts[start], idx.pts[end - 1]
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_index = start
        # Seek to the keyframe at or before the first wanted frame. A demuxer may
        # land after it (broken index): then decode from the very beginning.
        for attempt, target in enumerate((first_pts, idx.pts[0])):
            container.seek(target, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                raise MediaCorrupt(f"{path.name}: cannot decode near frame {start} "
                                   f"({exc})", frame=start) from None
            if frame is not None and frame.pts is not None and frame.pts <= first_pts:
                break
            if attempt == 1:
                raise MediaCorrupt(f"{path.name}: cannot find frame {start} by seeking",
                                   frame=start)
            log.debug("%s: seek overshot frame %d; decoding from the start",
                      path.name, start)
        while frame is not None:
            if frame.pts is None:
                raise MediaUnsupported(f"{path.name}: decoded frames carry no "
                                       "timestamps", frame=next_index)
            if frame.pts > last_pts:
                break
            index = want.get(frame.pts)
            if index is not None:
                if index != next_index:
                    raise MediaCorrupt(f"{path.name}: frame {next_index} could not be "
                                       "decoded", frame=next_index)
                yield index, _frame_to_array(frame, alpha, depth, idx.rotation)
                next_index += 1
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                raise MediaCorrupt(f"{path.name}: decoding failed at frame "
                                   f"{next_index} ({exc})", frame=next_index) from None
        if next_index != end:
            raise MediaCorrupt(f"{path.name}: frame {next_index} could not be decoded "
                               f"(the file may be truncated or damaged)",
                               frame=next_index)
    finally:
        container.close()


# --- single images ------------------------------------------------------------------


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image as RGB[A]: uint8/uint16 for PNG/TIFF/PAM, float32 for EXR
    (as stored; EXR alpha is premultiplied by convention)."""
    p = Path(path)
    ext = p.suffix.lower()
    if not p.exists():
        raise MediaMissing(f"image {p.name!r} does not exist")
    if ext == ".pam":
        return _read_pam(p)
    if ext == ".exr":
        return _read_exr(p)
    import cv2  # noqa: PLC0415

    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MediaCorrupt(f"{p.name}: cannot be decoded as an image")
    if img.ndim == 3:
        img = img[:, :, [2, 1, 0, 3][: img.shape[2]]] if img.shape[2] >= 3 else img
    return np.ascontiguousarray(img)


_PAM_TUPLES = {"GRAYSCALE": 1, "GRAYSCALE_ALPHA": 2, "RGB": 3, "RGB_ALPHA": 4}


def _read_pam(p: Path) -> np.ndarray:
    data = p.read_bytes()
    if not data.startswith(b"P7\n"):
        raise MediaCorrupt(f"{p.name}: not a PAM file (no P7 header)")
    end = data.find(b"ENDHDR\n")
    if end < 0:
        raise MediaCorrupt(f"{p.name}: PAM header has no ENDHDR")
    fields: dict[str, str] = {}
    for line in data[3:end].decode("ascii", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    try:
        w, h = int(fields["WIDTH"]), int(fields["HEIGHT"])
        depth, maxval = int(fields["DEPTH"]), int(fields["MAXVAL"])
    except (KeyError, ValueError):
        raise MediaCorrupt(f"{p.name}: PAM header lacks WIDTH/HEIGHT/DEPTH/MAXVAL"
                           ) from None
    tupl = fields.get("TUPLTYPE")
    if tupl in _PAM_TUPLES and _PAM_TUPLES[tupl] != depth:
        raise MediaCorrupt(f"{p.name}: TUPLTYPE {tupl} does not match DEPTH {depth}")
    if depth not in (1, 2, 3, 4) or maxval not in (255, 65535):
        raise MediaUnsupported(f"{p.name}: PAM depth {depth} / maxval {maxval} is not "
                               "supported (1-4 channels, 8 or 16 bits)")
    dtype = np.dtype(">u2") if maxval == 65535 else np.dtype(np.uint8)
    body = data[end + 7:]
    need = w * h * depth * dtype.itemsize
    if len(body) < need:
        raise MediaCorrupt(f"{p.name}: truncated PAM ({len(body)} of {need} bytes)")
    arr = np.frombuffer(body, dtype, w * h * depth).reshape(h, w, depth)
    return np.ascontiguousarray(arr.astype(dtype.newbyteorder("=")))


def _read_exr(p: Path) -> np.ndarray:
    import OpenEXR  # noqa: PLC0415

    try:
        with OpenEXR.File(str(p)) as f:
            channels = f.channels()
            if "RGBA" in channels:
                arr = np.asarray(channels["RGBA"].pixels)
            elif "RGB" in channels:
                arr = np.asarray(channels["RGB"].pixels)
            else:
                names = [n for n in ("R", "G", "B", "A") if n in channels]
                if len(names) < 3:
                    raise MediaUnsupported(f"{p.name}: EXR has no R, G, B channels")
                arr = np.stack([np.asarray(channels[n].pixels) for n in names], -1)
    except MediaUnsupported:
        raise
    except Exception as exc:  # OpenEXR raises plain exceptions
        raise MediaCorrupt(f"{p.name}: cannot be read as EXR ({exc})") from None
    return np.ascontiguousarray(arr.astype(np.float32))


# --- writing ------------------------------------------------------------------------


def _as_rgba16(rgba: np.ndarray) -> np.ndarray:
    if rgba.ndim != 3 or rgba.shape[2] not in (3, 4):
        raise ValueError(f"expected HxWx3 or HxWx4, got {rgba.shape}")
    return _channels(to_depth(rgba, 16), alpha=True)


def encode_png(img: np.ndarray) -> bytes:
    """Encode an RGB ``[H, W, 3]`` or grey ``[H, W]`` uint8/uint16 image as PNG at its
    own bit depth (stage crops, masks, report thumbnails)."""
    import cv2  # noqa: PLC0415

    if img.ndim == 3:
        img = img[:, :, ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def encode_rgba(ext: str, rgba: np.ndarray) -> bytes:
    """Encode an RGB[A] image (uint8, uint16 or float in 0..1, straight alpha) as
    ``.png`` (16-bit RGBA, straight), ``.exr`` (half RGBA, premultiplied) or
    ``.pam`` (16-bit ``RGB_ALPHA``, straight, big-endian, rows top to bottom)."""
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext == ".png":
        import cv2  # noqa: PLC0415

        img = _as_rgba16(rgba)
        ok, buf = cv2.imencode(".png", img[:, :, [2, 1, 0, 3]])
        if not ok:
            raise OSError("PNG encoding failed")
        return buf.tobytes()
    if ext == ".pam":
        img = _as_rgba16(rgba)
        h, w = img.shape[:2]
        header = (f"P7\nWIDTH {w}\nHEIGHT {h}\nDEPTH 4\nMAXVAL 65535\n"
                  "TUPLTYPE RGB_ALPHA\nENDHDR\n").encode("ascii")
        return header + img.astype(">u2").tobytes()
    if ext == ".exr":
        return _encode_exr(rgba)
    raise ValueError(f"unsupported output extension {ext!r} (.png, .exr, .pam)")


def _encode_exr(rgba: np.ndarray) -> bytes:
    import tempfile  # noqa: PLC0415

    import OpenEXR  # noqa: PLC0415

    if np.issubdtype(rgba.dtype, np.floating):
        img = _channels(rgba.astype(np.float32), alpha=True)
    else:
        img = _as_rgba16(rgba).astype(np.float32) / 65535.0
    img = img.copy()
    img[:, :, :3] *= img[:, :, 3:4]  # EXR convention: premultiplied alpha
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    # OpenEXR writes files only; go through a private temp file.
    fd, tmp = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        with OpenEXR.File(header, {"RGBA": img.astype(np.float16)}) as f:
            f.write(tmp)
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def write_rgba(path: str | os.PathLike[str], rgba: np.ndarray) -> None:
    """Write an RGBA frame atomically, format by extension: ``.png`` (16-bit,
    straight alpha), ``.exr`` (half float, premultiplied), ``.pam`` (16-bit
    ``RGB_ALPHA``). RGB input gets an opaque alpha."""
    atomic_write_bytes(path, encode_rgba(Path(path).suffix, rgba))


class MovieWriter:
    """Write frames to a movie, published atomically when closed.

    H.264 (``codec="libx264"``, yuv420p, crf 18; odd sizes are padded by repeating
    the last row/column) for previews; ``codec="prores_ks"`` with ``alpha=True``
    writes ProRes 4444 with alpha (yuva444p10le). Frames are RGB or RGBA, uint8 or
    uint16.

    Example::

        with MovieWriter("preview.mp4", Fraction(24000, 1001), (w, h)) as mw:
            for rgb in frames:
                mw.write(rgb)
    """

    def __init__(self, path: str | os.PathLike[str], rate: Fraction,
                 size: tuple[int, int], *, codec: str = "libx264",
                 alpha: bool = False) -> None:
        import av  # noqa: PLC0415

        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.alpha = alpha
        self._tmp = self.path.with_name(f".{self.path.stem}.{unique_name()}"
                                        f"{self.path.suffix}")
        fmt = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(
            self.path.suffix.lower())
        if fmt is None:
            raise ValueError(f"unsupported movie extension {self.path.suffix!r}")
        self._out = av.open(str(self._tmp), "w", format=fmt)
        self._stream = self._out.add_stream(codec, rate=Fraction(rate))
        self._time_base = 1 / Fraction(rate)
        w, h = self.size
        if codec in ("prores_ks", "prores"):
            self._stream.pix_fmt = "yuva444p10le" if alpha else "yuv422p10le"
            self._stream.options = {"profile": "4" if alpha else "3"}  # 4444 / HQ
            # One encoder thread: with several, prores_ks (FFmpeg in PyAV's wheel)
            # now and then writes a wrong alpha value under CPU load (one pixel off
            # by 9863 of 65535 in 1 of ~20 encodes of the same frame; two distinct
            # bitstreams from identical input, tests/test_video.py). Deterministic
            # output matters more than speed for a delivery format.
            self._stream.thread_count = 1
            self._pad = (0, 0)
        elif codec in ("libx264", "h264"):
            if alpha:
                raise ValueError("H.264 has no alpha; use codec='prores_ks'")
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "18", "preset": "veryfast"}
            self._pad = (w % 2, h % 2)  # 4:2:0 needs even sizes
        else:
            self._pad = (0, 0)
        self._stream.width, self._stream.height = w + self._pad[0], h + self._pad[1]
        self._count = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        import av  # noqa: PLC0415

        w, h = self.size
        if frame.shape[:2] != (h, w):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, movie is "
                             f"{w}x{h}")
        img = _channels(frame, self.alpha)
        if any(self._pad):
            img = np.pad(img, ((0, self._pad[1]), (0, self._pad[0]), (0, 0)),
                         mode="edge")
        if img.dtype == np.uint16:
            fmt = "rgba64le" if self.alpha else "rgb48le"
        else:
            img = to_depth(img, 8)
            fmt = "rgba" if self.alpha else "rgb24"
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format=fmt)
        vf.pts = self._count
        vf.time_base = self._time_base
        self._count += 1
        for packet in self._stream.encode(vf):
            self._out.mux(packet)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode():
                self._out.mux(packet)
        finally:
            self._out.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Close without publishing."""
        if not self._closed:
            self._closed = True
            try:
                self._out.close()
            finally:
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "MovieWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --- naming -------------------------------------------------------------------------


def output_name(job: Job, frame_index: int, ext: str) -> str:
    """File name of the output for media index ``frame_index`` (OutputSpec rules):
    ``<name>.<number:07d>.<ext>`` with number ``start_number + (frame - range.start)``
    when the job sets ``output.start_number``, else the source frame's timecode
    frame number ``range.start_frame_number + frame``.

    Example: range 0:48 at 24 fps from 01:00:00:00, frame 5 ->
    ``facestitch.0086405.png``.
    """
    spec = job.output
    if spec.start_number is not None:
        number = spec.start_number + (frame_index - job.range.start)
    else:
        number = job.range.start_frame_number + frame_index
    return f"{spec.name}.{number:07d}.{ext.lstrip('.')}"
