"""Frame-accurate media I/O: stream an exact frame range, read and write images
and RGBA frames, write movies.

Sources are movie files (anything FFmpeg decodes, through PyAV) or folders of
numbered images (``.png .tif .tiff .exr .pam``). Frames are addressed by 0-based
**media index**; probing (frame list, rate, timecode) is
:mod:`fsexchange.media`, shared with the bridge. Decoding streams: memory stays
flat however long the clip. :func:`read_frames` seeks to the keyframe at or before
the first wanted pts and decodes forward, identifying each decoded frame by its
pts, never by counting from the seek point.

Handled: odd sizes, rotation metadata (the display matrix is applied, so frames come
out as a player shows them), 10/12-bit sources (decoded to uint16 when ``depth=16``),
float EXR (``depth=32``: float32 as stored, nothing clipped), full-range and
limited-range YUV. YUV is decoded with the matrix and range the file is tagged with,
and where it says nothing with what editors assume
(:func:`fsexchange.colour.assumed_tags`, docs/colour.md). Writers: 16-bit PNG
(straight alpha), half-float EXR (premultiplied, the EXR convention, with
``chromaticities``, ``framesPerSecond`` and ``timeCode`` attributes when given),
16-bit PAM ``RGB_ALPHA`` (what the OpenFX shim reads without libraries) and movies
(H.264 previews; ProRes 4444 with alpha), encoded with the source's matrix and range
and tagged with its matrix, primaries, transfer and range.

numpy + av + cv2 (+ OpenEXR for ``.exr``); no torch.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from fsexchange.colour import (MATRIX_NAMES, PRIMARIES_NAMES, RANGE_NAMES,
                               TRANSFER_NAMES, ColourTags, assumed_tags)
from fsexchange.documents import Job
from fsexchange.errors import (
    MediaCorrupt,
    MediaMissing,
    MediaUnsupported,
    RangeInvalid,
    RangeOutOfBounds,
)
from fsexchange.fsutil import atomic_write_bytes, check_regular, unique_name
from fsexchange.media import MediaIndex, MediaInfo, media_index, open_container

__all__ = [
    "read_frames",
    "read_files",
    "read_frames_at",
    "read_image",
    "write_rgba",
    "encode_png",
    "encode_rgba",
    "MovieWriter",
    "output_name",
    "to_depth",
    "to_float",
    "exr_attributes",
    "movie_tags",
]

log = logging.getLogger(__name__)


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


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in 0..1; float images as float32, unclipped."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32, copy=False)
    raise ValueError(f"unsupported image dtype {img.dtype}")


def _at_depth(img: np.ndarray, depth: int) -> np.ndarray:
    return to_float(img) if depth == 32 else to_depth(img, depth)


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
    sequence folder as ``(index, HxWx3 or HxWx4 RGB[A])`` uint8 (``depth=8``),
    uint16 (``depth=16``) or float32 (``depth=32``: 0..1 for integer sources, EXR
    values as stored, above 1 included). One frame is held at a time.

    The range is validated before anything is yielded (:class:`RangeInvalid`,
    :class:`RangeOutOfBounds`). Rotation metadata is applied. Without ``alpha`` an
    alpha channel is dropped; with it, sources without alpha get an opaque one.

    Example::

        for index, rgb in read_frames("plate.mov", 100, 148):
            ...
    """
    if depth not in (8, 16, 32):
        raise ValueError(f"depth must be 8, 16 or 32, got {depth}")
    idx = media_index(path)
    end = _check_range(idx.info, start, end)
    if idx.info.kind == "sequence":
        return _read_sequence(idx, start, end, alpha, depth)
    return _read_video(idx, start, end, alpha, depth)


def read_files(files: Sequence[str | os.PathLike[str]], *, alpha: bool = False,
               depth: int = 8) -> Iterator[tuple[int, np.ndarray]]:
    """Frames from a list of image files, in the list's order, as
    :func:`read_frames` gives a sequence's (``(position, image)``; one size, that
    of the first file). For frames a document lists, such as a job's
    ``Result/1`` frames, where a folder may hold other images too."""
    if depth not in (8, 16):
        raise ValueError(f"depth must be 8 or 16, got {depth}")
    paths = tuple(Path(f) for f in files)
    if not paths:
        return iter(())
    first = read_image(paths[0])
    h, w = first.shape[:2]
    info = MediaInfo(paths[0].parent, "sequence", w, h, len(paths), Fraction(24),
                     None, 16 if first.dtype != np.uint8 else 8,
                     first.ndim == 3 and first.shape[2] in (2, 4), 0)
    return _read_sequence(MediaIndex(info, files=paths), 0, len(paths), alpha, depth)


def read_frames_at(path: str | os.PathLike[str], frames: Iterable[int], *,
                   alpha: bool = False, depth: int = 8
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`read_frames` of a few chosen frames (increasing media indices), each
    reached by seeking: for frames spread over a long shot this decodes from the
    keyframes before them instead of every frame in between."""
    for f in frames:
        yield from read_frames(path, int(f), int(f) + 1, alpha=alpha, depth=depth)


def _read_sequence(idx: MediaIndex, start: int, end: int, alpha: bool,
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
        yield i, _channels(_at_depth(img, depth), alpha)


#: FFmpeg matrix name -> swscale's colour-space name (PyAV ``Colorspace``).
_SWS_MATRIX = {"bt709": "itu709", "smpte170m": "itu601", "bt470bg": "itu601",
               "smpte240m": "smpte240m", "fcc": "fcc", "bt2020nc": "bt2020",
               "bt2020c": "bt2020"}
_SWS_RANGE = {"tv": "MPEG", "pc": "JPEG"}


def _sws_flags():
    """Bicubic with accurate rounding and full-resolution chroma: swscale's default
    (bilinear, fast rounding) alone is off by up to 3 levels at 8 bits."""
    from av.video.reformatter import Interpolation as I

    return I.BICUBIC | I.ACCURATE_RND | I.FULL_CHR_H_INT | I.FULL_CHR_H_INP


def _frame_to_array(frame, alpha: bool, depth: int, rotation: int,
                    tags: ColourTags) -> np.ndarray:
    has_alpha = any(c.is_alpha for c in frame.format.components)
    if depth == 8:
        fmt = "rgba" if has_alpha else "rgb24"
    else:
        fmt = "rgba64le" if has_alpha else "rgb48le"
    if frame.format.is_rgb:
        arr = frame.to_ndarray(format=fmt)
    else:
        # Decode with the matrix and range the file is tagged with (or what
        # editors assume where it says nothing), never swscale's BT.601 default.
        arr = frame.to_ndarray(format=fmt,
                               src_colorspace=_SWS_MATRIX.get(tags.matrix, "itu709"),
                               src_color_range=_SWS_RANGE.get(tags.range, "MPEG"),
                               interpolation=_sws_flags())
    if depth == 32:
        arr = arr.astype(np.float32) / 65535.0
    if rotation:
        arr = np.rot90(arr, k=rotation // 90)  # display matrix: counter-clockwise
    return _channels(arr, alpha)


def _read_video(idx: MediaIndex, start: int, end: int, alpha: bool,
                depth: int) -> Iterator[tuple[int, np.ndarray]]:
    import av

    path = idx.info.path
    tags, _ = assumed_tags(idx.info.colour, idx.info.width, idx.info.height)
    want = {p: i for i, p in enumerate(idx.pts[start:end], start)}
    first_pts, last_pts = idx.pts[start], idx.pts[end - 1]
    container = open_container(path)
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
                yield index, _frame_to_array(frame, alpha, depth, idx.rotation,
                                             tags)
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
    check_regular(p)  # never hand a pipe to a decoder: it would block
    if ext == ".pam":
        return _read_pam(p)
    if ext == ".exr":
        return _read_exr(p)
    import cv2

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
    import OpenEXR

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
    except Exception as exc:  # noqa: BLE001 - OpenEXR raises plain exceptions
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
    import cv2

    if img.ndim == 3:
        img = img[:, :, ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def encode_rgba(ext: str, rgba: np.ndarray, *,
                attributes: dict | None = None) -> bytes:
    """Encode an RGB[A] image (uint8, uint16 or float, straight alpha) as
    ``.png`` (16-bit RGBA, straight; floats clipped to 0..1), ``.exr`` (half RGBA,
    premultiplied, floats as given, with the header ``attributes`` of
    :func:`exr_attributes`) or ``.pam`` (16-bit ``RGB_ALPHA``, straight,
    big-endian, rows top to bottom)."""
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext == ".png":
        import cv2

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
        return _encode_exr(rgba, attributes or {})
    raise ValueError(f"unsupported output extension {ext!r} (.png, .exr, .pam)")


def exr_attributes(*, chromaticities: tuple[float, ...] | None = None,
                   rate: Fraction | None = None,
                   timecode: str | None = None) -> dict:
    """EXR header attributes: ``chromaticities`` (red, green, blue, white xy),
    ``framesPerSecond`` (a rational) and ``timeCode`` (SMPTE, from ``HH:MM:SS:FF``;
    ``;`` before the frames marks drop-frame)."""
    import OpenEXR

    out: dict = {}
    if chromaticities is not None:
        out["chromaticities"] = tuple(float(v) for v in chromaticities)
    if rate is not None:
        out["framesPerSecond"] = Fraction(rate)  # written as a "rational"
    if timecode:
        hh, mm, ss, ff = (int(v) for v in timecode.replace(";", ":").split(":"))
        tc = OpenEXR.TimeCode()
        tc.hours, tc.minutes, tc.seconds, tc.frame = hh, mm, ss, ff
        tc.dropFrame = ";" in timecode
        out["timeCode"] = tc
    return out


def _encode_exr(rgba: np.ndarray, attributes: dict) -> bytes:
    import tempfile

    import OpenEXR

    if np.issubdtype(rgba.dtype, np.floating):
        img = _channels(rgba.astype(np.float32), alpha=True)
    else:
        img = _as_rgba16(rgba).astype(np.float32) / 65535.0
    img = img.copy()
    img[:, :, :3] *= img[:, :, 3:4]  # EXR convention: premultiplied alpha
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage,
              **attributes}
    # OpenEXR writes files only; go through a private temp file.
    fd, tmp = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        with OpenEXR.File(header, {"RGBA": img.astype(np.float16)}) as f:
            f.write(tmp)
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def write_rgba(path: str | os.PathLike[str], rgba: np.ndarray, *,
               attributes: dict | None = None) -> None:
    """Write an RGBA frame atomically, format by extension: ``.png`` (16-bit,
    straight alpha), ``.exr`` (half float, premultiplied, with ``attributes``),
    ``.pam`` (16-bit ``RGB_ALPHA``). RGB input gets an opaque alpha."""
    atomic_write_bytes(path, encode_rgba(Path(path).suffix, rgba,
                                         attributes=attributes))


_INT = {"matrix": {v: k for k, v in MATRIX_NAMES.items()},
        "primaries": {v: k for k, v in PRIMARIES_NAMES.items()},
        "transfer": {v: k for k, v in TRANSFER_NAMES.items()},
        "range": {v: k for k, v in RANGE_NAMES.items()}}


def movie_tags(source: ColourTags | None, size: tuple[int, int]) -> ColourTags:
    """The tags a YUV movie made from a source gets: the source's own (its
    assumptions filled in, docs/colour.md); for RGB-coded sources (image
    sequences, FFV1 RGB) the matrix editors assume for the size, video range."""
    w, h = size
    tags, _ = assumed_tags(source or ColourTags(), w, h)
    if tags.rgb or tags.matrix == "rgb":
        hd = w >= 1280 or h >= 720
        matrix = "bt2020nc" if tags.primaries == "bt2020" else (
            "bt709" if hd else "smpte170m")
        tags = ColourTags(matrix=matrix, primaries=tags.primaries,
                          transfer=tags.transfer, range="tv")
    return tags


class MovieWriter:
    """Write frames to a movie, published atomically when closed.

    H.264 (``codec="libx264"``, yuv420p, crf 18, or yuv420p10le when ``depth`` > 8;
    odd sizes are padded by repeating the last row/column) for previews;
    ``codec="prores_ks"`` with ``alpha=True`` writes ProRes 4444 with alpha
    (yuva444p10le; 12-bit sources keep 10 bits there, prores_ks' only 4444 depth).
    Frames are RGB or RGBA, uint8 or uint16, in the encoding ``colour`` describes:
    they are converted to YUV with its matrix and range (the matrix FFmpeg would
    otherwise pick is BT.601) and the stream is tagged with its matrix, primaries,
    transfer and range (:func:`movie_tags`; Rec.709 for untagged HD).

    Example::

        with MovieWriter("preview.mp4", Fraction(24000, 1001), (w, h)) as mw:
            for rgb in frames:
                mw.write(rgb)
    """

    def __init__(self, path: str | os.PathLike[str], rate: Fraction,
                 size: tuple[int, int], *, codec: str = "libx264",
                 alpha: bool = False, colour: ColourTags | None = None,
                 depth: int = 8) -> None:
        import av

        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.alpha = alpha
        self.tags = movie_tags(colour, self.size)
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
            self._stream.pix_fmt = "yuv420p10le" if depth > 8 else "yuv420p"
            self._stream.options = {"crf": "18", "preset": "veryfast"}
            self._pad = (w % 2, h % 2)  # 4:2:0 needs even sizes
        else:
            self._pad = (0, 0)
        self._stream.width, self._stream.height = w + self._pad[0], h + self._pad[1]
        cc = self._stream.codec_context
        self._tag_ints = {k: _INT[k].get(getattr(self.tags, k), 2 if k != "range"
                                         else 0) for k in _INT}
        cc.colorspace = self._tag_ints["matrix"]
        cc.color_primaries = self._tag_ints["primaries"]
        cc.color_trc = self._tag_ints["transfer"]
        cc.color_range = self._tag_ints["range"]
        self._count = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        import av

        w, h = self.size
        if frame.shape[:2] != (h, w):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, movie is "
                             f"{w}x{h}")
        img = _channels(frame, self.alpha)
        if any(self._pad):
            img = np.pad(img, ((0, self._pad[1]), (0, self._pad[0]), (0, 0)),
                         mode="edge")
        if img.dtype == np.uint8:
            fmt = "rgba" if self.alpha else "rgb24"
        else:  # uint16, or float (clipped to 0..1)
            img = to_depth(img, 16)
            fmt = "rgba64le" if self.alpha else "rgb48le"
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format=fmt)
        pix_fmt = self._stream.pix_fmt
        if pix_fmt and pix_fmt != fmt:
            vf = vf.reformat(format=pix_fmt,
                             dst_colorspace=_SWS_MATRIX.get(self.tags.matrix, "itu709"),
                             dst_color_range=_SWS_RANGE.get(self.tags.range, "MPEG"),
                             interpolation=_sws_flags())
        vf.colorspace = self._tag_ints["matrix"]
        vf.color_primaries = self._tag_ints["primaries"]
        vf.color_trc = self._tag_ints["transfer"]
        vf.color_range = self._tag_ints["range"]
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
