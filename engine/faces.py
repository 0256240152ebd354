"""Faces in frames: detection + 68 landmarks (two backends behind one interface).

- ``dlib`` (the default, the landmarks of STIT and of FFHQ): HOG frontal detector +
  the 68-point shape predictor from the ``face-recognition-models`` data files (CPU,
  offline; see docs/models.md);
- ``face-alignment`` (optional, STIT's ``--use_fa``): the FAN 2-D network
  (``2DFAN4-11f355bf06.pth.tar`` under ``$TORCH_HOME/hub/checkpoints``),
  GPU-capable, on boxes from the dlib detector.
  Its weights are checked before anything is constructed, so nothing is ever
  downloaded; a missing file is a ``model.missing`` error naming it and its place.

Used by the ``track`` stage (:mod:`engine.stages.track`), by the identity metrics
(:mod:`engine.quality.identity`) and by ``facestitch faces`` (the bridge's face
chooser). Imports numpy; dlib and face-alignment only when a backend is built.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from fsexchange.errors import DocumentFieldError, ModelMissing
from fsexchange.options import TrackConfig

__all__ = [
    "Detection",
    "iou",
    "LandmarkBackend",
    "DlibBackend",
    "FaceAlignmentBackend",
    "FAN_FILE",
    "fan_weights_path",
    "dlib_model_path",
    "make_backend",
]

log = logging.getLogger(__name__)

FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/" + FAN_FILE
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
#: Frames are shrunk to this long side for detection only (HOG cost grows with
#: pixels; landmarks are still fitted at full resolution).
DETECT_MAX_SIDE = 1280


@dataclass(frozen=True)
class Detection:
    """One face in one frame: box (x0, y0, x1, y1), detector score, 68 (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray  # [68, 2] float64, frame pixels

    @property
    def centre(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])

    @property
    def size(self) -> float:
        """Geometric mean of width and height."""
        return math.sqrt(max(self.box[2] - self.box[0], 1e-6)
                         * max(self.box[3] - self.box[1], 1e-6))

    @property
    def area(self) -> float:
        return self.size ** 2


class LandmarkBackend(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 frame."""
        ...


# --- dlib -------------------------------------------------------------------------


def dlib_model_path(name: str) -> Path:
    """A data file of the ``face-recognition-models`` package, located by path: the
    package itself fails to import on current setuptools (docs/models.md "dlib model
    files")."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelMissing(f"dlib model {name} not found: install it with "
                           "'pip install face-recognition-models==0.3.0'")
    path = Path(spec.origin).parent / "models" / name
    if not path.is_file():
        raise ModelMissing(f"dlib model {name} is missing from {path.parent}; "
                           "reinstall face-recognition-models==0.3.0")
    return path


class DlibBackend:
    """dlib HOG detector (``upsample`` times, score > ``min_score``) + 68 points."""

    name = "dlib"

    def __init__(self, upsample: int = 1, min_score: float = 0.0) -> None:
        import dlib

        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path(PREDICTOR_FILE)))

    def boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, ...], float]]:
        """``[(box, score)]`` in frame pixels."""
        import cv2

        img = np.ascontiguousarray(rgb[..., :3])
        h, w = img.shape[:2]
        s = min(1.0, DETECT_MAX_SIDE / max(h, w))
        if s < 1.0:
            img = cv2.resize(img, (round(w * s), round(h * s)),
                             interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._detector.run(img, self.upsample, self.min_score)
        return [((r.left() / s, r.top() / s, r.right() / s, r.bottom() / s), float(sc))
                for r, sc in zip(rects, scores)]

    def landmarks(self, rgb: np.ndarray, box: Sequence[float]) -> np.ndarray:
        import dlib

        rect = dlib.rectangle(*(int(round(v)) for v in box[:4]))
        shape = self._predictor(np.ascontiguousarray(rgb[..., :3]), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection(tuple(box), score, self.landmarks(rgb, box))  # type: ignore
                for box, score in self.boxes(rgb)]


# --- face-alignment ---------------------------------------------------------------


def _torch_home() -> Path:
    """torch.hub's cache root without importing torch (same rules as torch.hub)."""
    env = os.environ.get("TORCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(xdg).expanduser() / "torch"


def fan_weights_path() -> Path:
    """Where face-alignment looks for its 2-D FAN weights."""
    return _torch_home() / "hub" / "checkpoints" / FAN_FILE


class FaceAlignmentBackend:
    """face-alignment's FAN (``LandmarksType.TWO_D``, ``flip_input=True``,
    ``compile=False``) on faces found by the dlib HOG detector.

    The detector inside ``FaceAlignment`` is dlib's too (HOG on CPU, the CNN model
    from face-recognition-models on CUDA), so constructing it downloads nothing; we
    pass our own boxes so both backends see the same faces.
    """

    name = "face-alignment"

    def __init__(self, device: str = "cpu", upsample: int = 1,
                 min_score: float = 0.0) -> None:
        weights = fan_weights_path()
        if not weights.is_file():
            raise ModelMissing(
                f"face-alignment weights {FAN_FILE} are not installed: put the file "
                f"in {weights.parent} (from {FAN_URL}), or use track.backend 'dlib'")
        import face_alignment

        self._detector = DlibBackend(upsample, min_score)
        with warnings.catch_warnings():
            # its dlib detector is "deprecated"; it is a placeholder, never called
            warnings.filterwarnings("ignore", message=".*detector is deprecated.*")
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, flip_input=True,
                face_detector="dlib",
                face_detector_kwargs={"path_to_detector": str(
                    dlib_model_path(CNN_DETECTOR_FILE))},
                # compiling costs ~65 s, no faster (docs/environment.md
                # "face-alignment")
                compile=False)

    def landmarks(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]]
                  ) -> list[np.ndarray]:
        if not boxes:
            return []
        out = self._fa.get_landmarks_from_image(
            np.ascontiguousarray(rgb[..., :3]),
            # plain floats: face-alignment writes them into torch tensors
            detected_faces=[[float(v) for v in b[:4]] for b in boxes])
        return [np.asarray(lm, dtype=np.float64)[:, :2] for lm in out or []]

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        found = self._detector.boxes(rgb)
        lms = self.landmarks(rgb, [b for b, _ in found])
        return [Detection(tuple(b), s, lm)  # type: ignore[arg-type]
                for (b, s), lm in zip(found, lms)]


def make_backend(cfg: TrackConfig, device: str = "cpu") -> LandmarkBackend:
    """The backend ``cfg.backend`` names: ``dlib`` (the default, as STIT and FFHQ),
    ``face-alignment`` (STIT's ``--use_fa``), or ``auto`` (face-alignment when its
    weights are installed, else dlib)."""
    name = cfg.backend
    if name == "auto":
        name = "face-alignment" if fan_weights_path().is_file() else "dlib"
    if name == "dlib":
        return DlibBackend(cfg.detect_upsample, cfg.min_score)
    if name == "face-alignment":
        return FaceAlignmentBackend(device if device != "auto" else "cpu",
                                    cfg.detect_upsample, cfg.min_score)
    raise DocumentFieldError(f"options.track.backend must be auto, dlib or "
                             f"face-alignment, got {cfg.backend!r}",
                             field="options.track.backend")


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when disjoint)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    return inter / union if union > 0 else 0.0
