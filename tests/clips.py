"""Real-face test clips: public-domain stills animated with affine motion, written
with PyAV, so every test runs offline on real footage-like input.

Faces: scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain) and
matplotlib's ``grace_hopper.jpg`` (US Navy, public domain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import cv2
import numpy as np

from engine.media.samples import FACE_CENTRES, face_image

__all__ = ["face_image", "FACE_CENTRES", "ClipSpec", "render_frames", "write_clip",
           "write_sequence", "stamp_index", "read_stamp"]



@dataclass(frozen=True)
class ClipSpec:
    """An animated clip. Motion is a smooth function of the frame index.

    Attributes:
        frames: number of frames.
        size: (width, height) of the clip.
        face: which still.
        face_scale: scale of the still in the clip (1 = original pixels).
        drift: peak translation in clip pixels (x, y) over the clip (sinusoidal).
        rotate: peak in-plane rotation in degrees.
        zoom: peak relative scale change (0.1 = +-10 %).
        exit_right: pixels the face moves right over the clip (to leave the frame).
        hide: frame indices [a, b) where a grey card covers the face.
        second_face: paste a second real face (the other still) in a corner.
        jitter: std-dev in pixels of per-frame random translation (noisy tracks).
        seed: for the jitter.
        stamp: draw the frame index as a binary code in the top-left corner
            (:func:`read_stamp` reads it back, even after lossy compression).
    """

    frames: int = 12
    size: tuple[int, int] = (320, 240)
    face: str = "astronaut"
    face_scale: float = 0.75
    drift: tuple[float, float] = (8.0, 4.0)
    rotate: float = 0.0
    zoom: float = 0.0
    exit_right: float = 0.0
    hide: tuple[int, int] | None = None
    second_face: bool = False
    jitter: float = 0.0
    seed: int = 0
    stamp: bool = False


def _affine(spec: ClipSpec, t: int, rng: np.random.Generator) -> np.ndarray:
    w, h = spec.size
    cx, cy = FACE_CENTRES[spec.face]
    phase = 2 * math.pi * t / max(spec.frames, 1)
    s = spec.face_scale * (1 + spec.zoom * math.sin(phase))
    ang = spec.rotate * math.sin(phase)
    tx = w / 2 + spec.drift[0] * math.sin(phase) + spec.exit_right * t / max(
        spec.frames - 1, 1)
    ty = h / 2 + spec.drift[1] * math.cos(phase)
    if spec.jitter:
        tx += rng.normal(0, spec.jitter)
        ty += rng.normal(0, spec.jitter)
    m = cv2.getRotationMatrix2D((cx, cy), ang, s)
    m[0, 2] += tx - cx
    m[1, 2] += ty - cy
    return m


def render_frames(spec: ClipSpec) -> list[np.ndarray]:
    """The clip's frames as HxWx3 uint8 RGB arrays."""
    img = face_image(spec.face)
    other = face_image("grace_hopper" if spec.face == "astronaut" else "astronaut")
    rng = np.random.default_rng(spec.seed)
    w, h = spec.size
    out = []
    for t in range(spec.frames):
        m = _affine(spec, t, rng)
        frame = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        if spec.second_face:
            ox, oy = FACE_CENTRES["grace_hopper" if spec.face == "astronaut"
                                  else "astronaut"]
            s2 = spec.face_scale * 0.9
            half = int(70 / 0.75 * s2)
            patch = cv2.resize(other[int(oy - 100):int(oy + 100),
                                     int(ox - 100):int(ox + 100)], (2 * half, 2 * half))
            frame[h - 2 * half - 4:h - 4, 4:4 + 2 * half] = patch
        if spec.hide and spec.hide[0] <= t < spec.hide[1]:
            pts = cv2.transform(np.array([[FACE_CENTRES[spec.face]]]), m)[0, 0]
            r = int(90 * spec.face_scale)
            x0, y0 = int(pts[0] - r), int(pts[1] - r)
            frame[max(0, y0):y0 + 2 * r, max(0, x0):x0 + 2 * r] = 128
        if spec.stamp:
            stamp_index(frame, t)
        out.append(frame)
    return out


_STAMP_BITS = 12
_STAMP_CELL = 8  # px per bit; survives 4:2:0 chroma and H.264 at crf 12


def stamp_index(frame: np.ndarray, index: int) -> np.ndarray:
    """Draw ``index`` (< 4096) as 12 black/white cells along the top-left edge,
    in place. Cells are 8x8 px, so the clip must be at least 96 px wide."""
    c = _STAMP_CELL
    for bit in range(_STAMP_BITS):
        frame[0:c, bit * c:(bit + 1) * c] = 255 if (index >> bit) & 1 else 0
    return frame


def read_stamp(frame: np.ndarray) -> int:
    """The index :func:`stamp_index` drew (reads cell centres; uint8 or uint16)."""
    c = _STAMP_CELL
    top = 65535 if frame.dtype == np.uint16 else 255
    value = 0
    for bit in range(_STAMP_BITS):
        cell = frame[2:c - 2, bit * c + 2:(bit + 1) * c - 2, :3]
        if cell.mean() > top / 2:
            value |= 1 << bit
    return value


def write_clip(
    path: str | Path,
    frames: Sequence[np.ndarray],
    rate: Fraction = Fraction(25),
    *,
    codec: str = "libx264",
    start_timecode: str | None = None,
) -> Path:
    """Write RGB frames as a movie with PyAV. ``libx264`` is lossy (crf 12);
    ``ffv1`` is lossless. ``start_timecode`` is stored as container/stream metadata
    (``timecode``), the way cameras and NLE exports carry it."""
    path = Path(path)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        if start_timecode:
            out.metadata["timecode"] = start_timecode
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        if codec == "libx264":
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "12", "preset": "veryfast"}
        elif codec == "ffv1":
            stream.pix_fmt = "bgr0"
        if start_timecode:
            stream.metadata["timecode"] = start_timecode
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr),
                                               format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_sequence(folder: str | Path, frames: Sequence[np.ndarray], *,
                   name: str = "plate", start: int = 1001, ext: str = "png") -> Path:
    """Write RGB frames as ``name.%07d.ext`` numbered from ``start``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(frames):
        cv2.imwrite(str(folder / f"{name}.{start + i:07d}.{ext}"), arr[:, :, ::-1])
    return folder
