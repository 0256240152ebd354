"""Faces on the editor's workstation: list the faces at a shot's first frame so the
editor can choose the subject, and compute the subject's ``FaceTrack/1`` on the CPU.

Both run the engine's ``facestitch faces`` command in a child process
(:mod:`host_bridge.engine_cli`) when the engine is installed on this machine;
otherwise they return None and the engine tracks, choosing the subject from
``Job.subject``. Nothing here imports the engine or numpy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from fsexchange.documents import FaceTrack, Subject, load_document
from fsexchange.errors import ModelMissing

from host_bridge.engine_cli import engine_python, run_engine_command

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
    """Whether this machine can track faces (the engine is installed here)."""
    return engine_python() is not None


def list_faces(media: str | os.PathLike[str], frame: int, *, search: int = 12,
               rate: Fraction | None = None) -> FacesAt | None:
    """Faces at ``frame`` of a movie or sequence, largest first; if there are none,
    the next frames up to ``search`` are tried. None: cannot detect here (no engine
    here, or its dlib data files are missing).

    Raises:
        MediaError, RangeOutOfBounds: the media cannot be read there.
    """
    args = ["faces", "list", str(media), "--frame", str(int(frame)),
            "--search", str(int(search))]
    if rate is not None:
        args += ["--rate", str(rate)]
    try:
        data = run_engine_command(args)
    except ModelMissing as exc:
        log.warning("cannot list faces here: %s", exc.message)
        return None
    if data is None:
        return None
    faces = tuple(DetectedFace(int(f["index"]), tuple(float(v) for v in f["box"]),
                               float(f["score"])) for f in data["faces"])
    return FacesAt(int(data["frame"]), faces, int(data["width"]),  # type: ignore[arg-type]
                   int(data["height"]))


def _position(box: tuple[float, ...], width: int) -> str:
    centre = (box[0] + box[2]) / 2
    return "left" if centre < width / 3 else ("right" if centre > 2 * width / 3
                                             else "centre")


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
    CPU. None when this machine cannot track.

    Raises:
        NoFaceFound, SubjectInvalid: as the engine would (tell the editor now).
    """
    with tempfile.TemporaryDirectory(prefix="facestitch-track-") as tmp:
        out = Path(tmp) / "facetrack.msgpack"
        args = ["faces", "track", str(media), "--range", f"{int(start)}:{int(end)}",
                "--subject", json.dumps(subject.to_dict()), "--out", str(out)]
        if rate is not None:
            args += ["--rate", str(rate)]
        try:
            data = run_engine_command(args)
        except ModelMissing as exc:
            log.warning("cannot track here, the engine will: %s", exc.message)
            return None
        if data is None:
            return None
        return load_document(out, FaceTrack)
