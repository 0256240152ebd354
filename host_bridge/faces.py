"""Faces on the editor's workstation: list the faces at a shot's first frame so the
editor can choose the subject, and compute the subject's ``FaceTrack/1`` on the CPU.

Both use ``engine.stages.track`` (dlib backend) and ``engine.media.video`` when this Python has
them (numpy, OpenCV, PyAV, dlib: the ``engine`` extra); otherwise they return None and
the engine tracks, choosing the subject from ``Job.subject``. Nothing here is imported
at module level, so the bridge stays importable without numpy.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from fsexchange.documents import FaceTrack, Subject
from fsexchange.errors import ModelMissing

__all__ = ["DetectedFace", "FacesAt", "local_tracking_available", "list_faces",
           "describe_faces", "compute_track"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectedFace:
    """One face at one frame. ``index`` follows ``Subject.index``: 0 = largest."""

    index: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
    score: float

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    def subject(self, frame: int) -> Subject:
        """A subject that names this face by a point inside it, which does not depend
        on the engine's detector ordering faces exactly as ours does."""
        x, y = self.centre
        return Subject(point=(float(frame), round(x, 2), round(y, 2)))


@dataclass(frozen=True)
class FacesAt:
    frame: int  # media index where the faces were found
    faces: tuple[DetectedFace, ...]
    width: int
    height: int


def local_tracking_available() -> bool:
    """Whether this Python can track faces (engine extra installed)."""
    import importlib.util  # noqa: PLC0415

    try:
        return all(importlib.util.find_spec(m) is not None
                   for m in ("numpy", "cv2", "av", "dlib", "engine.stages.track"))
    except (ImportError, ValueError):  # a broken install refuses even the lookup
        return False


@functools.lru_cache(maxsize=1)
def _backend() -> Any:
    """One dlib backend per process: loading the 68-point predictor takes ~1 s."""
    from fsexchange.options import TrackConfig  # noqa: PLC0415
    from engine.stages.track import DlibBackend  # noqa: PLC0415

    cfg = TrackConfig()
    return DlibBackend(cfg.detect_upsample, cfg.min_score)


def _position(box: tuple[float, ...], width: int) -> str:
    centre = (box[0] + box[2]) / 2
    return "left" if centre < width / 3 else ("right" if centre > 2 * width / 3
                                             else "centre")


def list_faces(media: str | os.PathLike[str], frame: int, *, search: int = 12,
               rate: Fraction | None = None) -> FacesAt | None:
    """Faces at ``frame`` of a movie or sequence, largest first; if there are none,
    the next frames up to ``search`` are tried. None: cannot detect here (no engine
    extra, or the dlib data files are missing).

    Raises:
        MediaError, RangeOutOfBounds: the media cannot be read there.
    """
    if not local_tracking_available():
        return None
    from engine.media.video import probe, read_frames  # noqa: PLC0415

    try:
        backend = _backend()
    except ModelMissing as exc:
        log.warning("cannot list faces here: %s", exc.message)
        return None
    info = probe(media, rate)
    end = min(info.frame_count, frame + max(1, search))
    for index, rgb in read_frames(media, frame, end):
        found = backend.boxes(rgb)
        if found:
            found.sort(key=lambda bs: (-(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]),
                                       bs[0][0]))  # Subject.index order (engine.stages.track)
            faces = tuple(DetectedFace(i, tuple(float(v) for v in box), float(score))
                          for i, (box, score) in enumerate(found))
            return FacesAt(index, faces, info.width, info.height)  # type: ignore[arg-type]
    return FacesAt(frame, (), info.width, info.height)


def describe_faces(found: FacesAt) -> list[str]:
    """One line per face for a chooser: size and where it is in the frame."""
    out = []
    for face in found.faces:
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        out.append(f"Face {face.index + 1}: {_position(face.box, found.width)}, "
                   f"{x1 - x0}x{y1 - y0} px at ({x0}, {y0})")
    return out


def compute_track(media: str | os.PathLike[str], start: int, end: int, subject: Subject,
                  *, rate: Fraction | None = None) -> FaceTrack | None:
    """The subject's ``FaceTrack/1`` over ``start:end``, tracked with dlib on this
    CPU. None when this Python cannot track.

    Raises:
        NoFaceFound, SubjectInvalid: as the engine would (tell the editor now).
    """
    if not local_tracking_available():
        return None
    from fsexchange.options import TrackConfig  # noqa: PLC0415
    from engine.stages.track import track_media  # noqa: PLC0415

    try:
        return track_media(media, start, end, cfg=TrackConfig(backend="dlib"),
                           subject=subject, rate=rate, backend=_backend())
    except ModelMissing as exc:
        log.warning("cannot track here, the engine will: %s", exc.message)
        return None
