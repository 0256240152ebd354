"""Face tracking: detection + 68 landmarks per frame, identities followed across
frames, one chosen subject written as ``FaceTrack/1``.

Two landmark backends behind one interface (:class:`LandmarkBackend`):

- ``dlib``: HOG frontal detector + the 68-point shape predictor from the
  ``face-recognition-models`` data files (CPU, offline; checkpoints.md §7);
- ``face-alignment``: the FAN 2-D network (``2DFAN4-11f355bf06.pth.tar`` under
  ``$TORCH_HOME/hub/checkpoints``), GPU-capable, on boxes from the dlib detector.
  Its weights are checked before anything is constructed, so nothing is ever
  downloaded; a missing file is a ``model.missing`` error naming it and its place.

``backend="auto"`` uses face-alignment when its weights are present, else dlib.

Unlike the reference (first detection wins, a frame without a face aborts the run),
every detection joins an identity by box overlap and centre distance; the subject is
chosen once (``Subject.index``: N-th largest at the first frame with faces; a point
or a box at a given frame; default the largest) and followed. Frames where it is
missing are marked ``present=False``; gaps of at most ``TrackConfig.max_gap`` frames
between two sightings are interpolated (``interpolated=True``); longer gaps pass
through untouched. Only a range with no face at all fails (``face.not_found``).

The ``track`` stage writes ``stages/track/facetrack.msgpack``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from fsexchange.documents import FaceTrack, Subject, TrackFrame, load_document
from fsexchange.errors import (DocumentFieldError, ModelMissing, NoFaceFound,
                               SubjectInvalid)
from fsexchange.fsutil import atomic_write_bytes

from fsexchange.options import TrackConfig
from engine.stages.contract import Stage, StageContext

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
    "Identity",
    "follow_identities",
    "choose_subject",
    "subject_track",
    "fill_gaps",
    "track_media",
    "TrackStage",
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
    package itself fails to import on current setuptools (checkpoints.md §7)."""
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
        import dlib  # noqa: PLC0415

        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path(PREDICTOR_FILE)))

    def boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, ...], float]]:
        """``[(box, score)]`` in frame pixels."""
        import cv2  # noqa: PLC0415

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
        import dlib  # noqa: PLC0415

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
        import face_alignment  # noqa: PLC0415

        self._detector = DlibBackend(upsample, min_score)
        with warnings.catch_warnings():
            # its dlib detector is "deprecated"; it is a placeholder, never called
            warnings.filterwarnings("ignore", message=".*detector is deprecated.*")
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, flip_input=True,
                face_detector="dlib",
                face_detector_kwargs={"path_to_detector": str(
                    dlib_model_path(CNN_DETECTOR_FILE))},
                compile=False)  # compiling costs ~65 s, no faster (environment.md §4)

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
    """The backend ``cfg.backend`` names (``auto``: face-alignment when its weights
    are installed, else dlib)."""
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


# --- identities -------------------------------------------------------------------


@dataclass
class Identity:
    """One face followed across frames: ``detections`` keyed by media index."""

    id: int
    detections: dict[int, Detection] = field(default_factory=dict)

    @property
    def last_frame(self) -> int:
        return max(self.detections)

    @property
    def last(self) -> Detection:
        return self.detections[self.last_frame]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when disjoint)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    return inter / union if union > 0 else 0.0


def _contains(box: Sequence[float], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


#: Largest centre jump (in face sizes) accepted after a long gap.
MAX_REACQUIRE_JUMP = 2.0


def _associate(identities: list[Identity], dets: list[Detection], frame: int,
               cfg: TrackConfig) -> list[Identity]:
    """Attach ``dets`` to identities (greedy by centre distance; the allowed jump
    grows with the frames since the identity was last seen), start new ones for the
    rest. Returns the identities that got a detection."""
    pairs = []
    for ident in identities:
        last = ident.last
        gap = frame - ident.last_frame
        limit = min(max(cfg.identity_max_jump * gap, cfg.identity_max_jump),
                    max(MAX_REACQUIRE_JUMP, cfg.identity_max_jump))
        for j, det in enumerate(dets):
            ratio = det.size / last.size
            if not 0.5 <= ratio <= 2.0:
                continue
            dist = float(np.linalg.norm(det.centre - last.centre)) / last.size
            if dist <= limit or iou(det.box, last.box) >= 0.5:
                pairs.append((dist, ident.id, j))
    pairs.sort()
    used_ids: set[int] = set()
    used_dets: set[int] = set()
    by_id = {ident.id: ident for ident in identities}
    touched = []
    for _, ident_id, j in pairs:
        if ident_id in used_ids or j in used_dets:
            continue
        by_id[ident_id].detections[frame] = dets[j]
        used_ids.add(ident_id)
        used_dets.add(j)
        touched.append(by_id[ident_id])
    for j, det in enumerate(dets):
        if j not in used_dets:
            ident = Identity(len(identities), {frame: det})
            identities.append(ident)
            touched.append(ident)
    return touched


def follow_identities(
    frames: Iterable[tuple[int, np.ndarray]],
    backend: LandmarkBackend,
    cfg: TrackConfig = TrackConfig(),
    *,
    on_frame: Callable[[int], None] | None = None,
) -> list[Identity]:
    """Detect faces in every frame and link them into identities.

    Args:
        frames: ``(media index, RGB uint8)`` in increasing order.
        backend: a :class:`LandmarkBackend`.
        cfg: ``identity_max_jump`` bounds the per-frame centre jump.
        on_frame: called after each frame with its index (progress, abort).
    """
    identities: list[Identity] = []
    for index, rgb in frames:
        _associate(identities, backend.detect(rgb), index, cfg)
        if on_frame is not None:
            on_frame(index)
    return identities


def choose_subject(identities: Sequence[Identity], subject: Subject = Subject()
                   ) -> tuple[Identity, dict[str, Any]]:
    """The identity the job asks for, and facts about the choice.

    ``subject.index``: N-th largest (0 = largest) among the faces at the first frame
    with any face. ``point`` (frame, x, y): the face whose box holds the point (the
    nearest centre if several). ``box`` (frame, x0, y0, x1, y1): the face overlapping
    it most. None of them: the largest at the first frame with faces.

    Raises:
        NoFaceFound: no face in any frame.
        SubjectInvalid: the requested face does not exist.
    """
    if not identities:
        raise NoFaceFound("no face was found in any frame of the range; check the "
                          "range, or the shot has no detectable frontal face")
    first = min(min(i.detections) for i in identities)
    at_first = sorted((i for i in identities if first in i.detections),
                      key=lambda i: (-i.detections[first].area,
                                     i.detections[first].box[0]))
    facts: dict[str, Any] = {"first_face_frame": first, "faces_at_first": len(at_first),
                             "identities": len(identities)}
    if subject.point is not None:
        frame, px, py = int(subject.point[0]), subject.point[1], subject.point[2]
        here = [i for i in identities if frame in i.detections]
        inside = [i for i in here if _contains(i.detections[frame].box, px, py)]
        if not inside:
            raise SubjectInvalid(
                f"no face contains the point ({px:g}, {py:g}) at frame {frame} "
                f"({len(here)} face(s) found there)", frame=frame,
                field="subject.point")
        chosen = min(inside, key=lambda i: float(np.linalg.norm(
            i.detections[frame].centre - np.array([px, py]))))
        facts["point"] = list(subject.point)
    elif subject.box is not None:
        frame, box = int(subject.box[0]), subject.box[1:]
        here = [(i, iou(i.detections[frame].box, box)) for i in identities
                if frame in i.detections]
        best = max(here, key=lambda t: t[1], default=(None, 0.0))
        if best[0] is None or best[1] < 0.1:
            raise SubjectInvalid(f"no face overlaps the box {list(box)} at frame "
                                 f"{frame} ({len(here)} face(s) found there)",
                                 frame=frame, field="subject.box")
        chosen = best[0]
        facts["box"] = list(subject.box)
    else:
        n = subject.index or 0
        if n >= len(at_first):
            raise SubjectInvalid(
                f"face {n} was asked for, but only {len(at_first)} face(s) are found "
                f"at frame {first}, the first frame with faces (faces count from 0, "
                "largest first)", frame=first, field="subject.index")
        chosen = at_first[n]
        facts["index"] = n
    facts["identity"] = chosen.id
    return chosen, facts


def subject_track(identity: Identity, start: int, end: int) -> list[TrackFrame]:
    """One :class:`TrackFrame` per frame of ``start:end`` (no gap filling)."""
    out = []
    for f in range(start, end):
        det = identity.detections.get(f)
        if det is None:
            out.append(TrackFrame(f, False))
        else:
            out.append(TrackFrame(
                f, True, tuple(float(v) for v in det.box), float(det.score),
                tuple((float(x), float(y)) for x, y in det.landmarks)))
    return out


def fill_gaps(frames: Sequence[TrackFrame], max_gap: int) -> list[TrackFrame]:
    """Interpolate landmarks and boxes linearly across runs of at most ``max_gap``
    absent frames that lie between two present frames; others stay absent."""
    out = list(frames)
    present = [i for i, fr in enumerate(out) if fr.present]
    for a, b in zip(present, present[1:]):
        gap = b - a - 1
        if gap == 0 or gap > max_gap:
            continue
        fa, fb = out[a], out[b]
        la, lb = np.asarray(fa.landmarks), np.asarray(fb.landmarks)
        ba = np.asarray(fa.box if fa.box else la.min(0).tolist() + la.max(0).tolist())
        bb = np.asarray(fb.box if fb.box else lb.min(0).tolist() + lb.max(0).tolist())
        for k in range(1, gap + 1):
            t = k / (gap + 1)
            lm = (1 - t) * la + t * lb
            box = (1 - t) * ba + t * bb
            out[a + k] = TrackFrame(
                out[a + k].frame, True, tuple(float(v) for v in box), None,
                tuple((float(x), float(y)) for x, y in lm), interpolated=True)
    return out


def track_media(
    path: str | os.PathLike[str],
    start: int = 0,
    end: int | None = None,
    *,
    cfg: TrackConfig = TrackConfig(),
    subject: Subject = Subject(),
    backend: LandmarkBackend | None = None,
    device: str = "cpu",
    rate: Fraction | None = None,
    progress: Callable[[float, str], None] | None = None,
    abort: Callable[[], None] | None = None,
) -> FaceTrack:
    """Track the chosen face over ``start:end`` of a movie or sequence.

    Raises:
        NoFaceFound: no face anywhere in the range.
        SubjectInvalid: the requested subject does not exist.
        ModelMissing: the backend's weights are not installed.
    """
    from engine.media.video import probe, read_frames  # noqa: PLC0415

    info = probe(path, rate)
    end = info.frame_count if end is None else end
    frames = read_frames(path, start, end)  # validates the range first
    backend = backend or make_backend(cfg, device)
    n = end - start

    def on_frame(index: int) -> None:
        if abort is not None:
            abort()
        if progress is not None:
            progress((index - start + 1) / n, f"tracked frame {index}")

    identities = follow_identities(frames, backend, cfg, on_frame=on_frame)
    chosen, facts = choose_subject(identities, subject)
    track = fill_gaps(subject_track(chosen, start, end), cfg.max_gap)
    return FaceTrack(rate=rate or info.rate, image_size=(info.width, info.height),
                     frames=tuple(track), backend=backend.name, subject=facts)


def _describe_gaps(frames: Sequence[TrackFrame]) -> str:
    runs: list[tuple[int, int]] = []
    for fr in frames:
        if not fr.present:
            if runs and runs[-1][1] == fr.frame - 1:
                runs[-1] = (runs[-1][0], fr.frame)
            else:
                runs.append((fr.frame, fr.frame))
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:6])
    return shown + (" ..." if len(runs) > 6 else "")


class TrackStage(Stage):
    """Writes ``stages/track/facetrack.msgpack`` (``FaceTrack/1``)."""

    name = "track"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        job = ctx.job
        out = ctx.stage_dir(self.name) / "facetrack.msgpack"
        if job.subject.track:
            from fsexchange.paths import confine  # noqa: PLC0415

            given = confine(job.subject.track, ctx.job_dir, (), field="subject.track")
            track = load_document(given, FaceTrack)
            wanted = range(job.range.start, job.range.end)
            by_frame = {fr.frame: fr for fr in track.frames}
            frames = [by_frame.get(f, TrackFrame(f, False)) for f in wanted]
            if not any(fr.present for fr in frames):
                raise NoFaceFound(f"the face track {given.name} has no face in frames "
                                  f"{job.range.start}..{job.range.end - 1}")
            track = FaceTrack(rate=track.rate, image_size=track.image_size,
                              frames=tuple(fill_gaps(frames, ctx.config.track.max_gap)),
                              backend=track.backend or "given",
                              subject=dict(track.subject, source=given.name))
        else:
            track = track_media(
                ctx.source_path(), job.range.start, job.range.end,
                cfg=ctx.config.track, subject=job.subject, device=ctx.device,
                rate=job.range.rate, progress=ctx.report,
                abort=ctx.check_abort)
        atomic_write_bytes(out, track.to_bytes())
        missing = [fr for fr in track.frames if not fr.present]
        interpolated = sum(1 for fr in track.frames if fr.interpolated)
        if missing:
            ctx.warn(f"The face is missing in {len(missing)} of {len(track.frames)} "
                     f"frames ({_describe_gaps(track.frames)}); those frames pass "
                     "through untouched (alpha 0).")
        ctx.info["track_backend"] = track.backend
        return {"frames": len(track.frames),
                "present": len(track.frames) - len(missing),
                "interpolated": interpolated, "backend": track.backend}
