"""Face identity embeddings for the temporal identity metrics (TL-ID, TG-ID).

Two backends, both L2-normalised so that similarity = cosine = dot product; ``auto``
(the default) takes ArcFace when it is installed, else dlib:

- ``dlib``: dlib's ResNet face descriptor
  (``dlib_face_recognition_resnet_model_v1.dat``, 128-d) on the 150 px face chip that
  the 5-point shape predictor aligns, from the ``face-recognition-models`` data files
  (docs/models.md "dlib model files", docs/environment.md "dlib and its data files").
  Works offline everywhere the engine runs.
- ``arcface`` (the papers' network, used when installed): an ArcFace network
  (512-d) on the standard 112 px five-point alignment (eye centres, nose tip and
  mouth corners from the 68-point predictor), loaded only when its weights are
  installed in the model store under ``models/arcface/``: an insightface ``.onnx``
  (e.g. ``w600k_r50.onnx``, run by OpenCV's DNN module) or an ``arcface_torch``
  IResNet state dict ``.pth`` (``backbone.pth``). Nothing is downloaded.

Faces are found with dlib's HOG detector. :class:`FaceFinder` picks the same face
from frame to frame: the largest confident detection when it has nothing to go on,
else the detection that overlaps (or lies nearest) the previous frame's box, searched
first in a window around that box, which is also much cheaper than a full-frame search
on large frames.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np

from fsexchange.errors import MetricsError, ModelFormatError, ModelMissing

from engine.models.store import models_root, store_files
from engine.faces import dlib_model_path, iou
from engine.media.video import to_depth

__all__ = ["Box", "FaceFinder", "Embedder", "DlibEmbedder", "ArcFaceEmbedder",
           "identity_backend", "arcface_installed", "build_iresnet", "load_iresnet",
           "similarity_transform", "five_points"]

log = logging.getLogger(__name__)

MIN_SCORE = 0.3  # HOG detections below this only count when nothing else is found
# (the astronaut's mission patch scores 0.12 at upsample 1, the face 1.16;
# docs/environment.md "dlib and its data files")
FULL_MAX_SIDE = 960  # full-frame search on frames downscaled to this long side
REACQUIRE_AFTER = 12  # frames without the face before any face may be taken again
ROI_FACE_SIDE = 120  # window search rescaled so the previous face is ~120 px (HOG
# finds >= 80 px at upsample 0, so a face may shrink by a third between frames)


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels (left, top, right, bottom)."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def size(self) -> float:
        w, h = max(self.right - self.left, 0), max(self.bottom - self.top, 0)
        return math.sqrt(w * h)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    def iou(self, other: "Box") -> float:
        return iou((self.left, self.top, self.right, self.bottom),
                   (other.left, other.top, other.right, other.bottom))

    def distance(self, other: "Box") -> float:
        """Centre distance in units of this box's size."""
        (ax, ay), (bx, by) = self.centre, other.centre
        return math.hypot(ax - bx, ay - by) / max(self.size, 1.0)

    def to_dlib(self):
        import dlib

        return dlib.rectangle(int(round(self.left)), int(round(self.top)),
                              int(round(self.right)), int(round(self.bottom)))

    def to_list(self) -> list[float]:
        return [self.left, self.top, self.right, self.bottom]


def _as_u8(frame: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB, contiguous (dlib's input)."""
    return np.ascontiguousarray(to_depth(frame[:, :, :3], 8))


class FaceFinder:
    """dlib HOG face detection with a consistent choice of face over a clip.

    Args:
        upsample: HOG upsampling for full-frame searches (1 finds faces down to
            ~40 px at :data:`FULL_MAX_SIDE`).
        subject: (x, y) in frame pixels: until a face has been chosen, take the one
            nearest this point instead of the largest (the job's subject).
    """

    def __init__(self, upsample: int = 1,
                 subject: tuple[float, float] | None = None) -> None:
        import dlib

        self._hog = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.subject = subject
        self.previous: Box | None = None  # the last face chosen by :meth:`track`
        self.window: Box | None = None  # where it was found (None = whole frame)
        self.misses = 0  # consecutive frames without the face

    def detect(self, frame: np.ndarray, window: Box | None = None,
               upsample: int | None = None) -> list[tuple[Box, float]]:
        """All detections ``(box, score)`` in frame pixels, optionally only inside
        ``window`` (a region rescaled so that it is searched at face size)."""
        h, w = frame.shape[:2]
        if window is None:
            x0, y0, x1, y1 = 0, 0, w, h
            scale = min(1.0, FULL_MAX_SIDE / max(w, h))
            up = self.upsample if upsample is None else upsample
        else:
            x0, y0 = max(int(window.left), 0), max(int(window.top), 0)
            x1 = min(int(math.ceil(window.right)), w)
            y1 = min(int(math.ceil(window.bottom)), h)
            if x1 - x0 < 16 or y1 - y0 < 16:
                return []
            scale = ROI_FACE_SIDE * 3 / max(window.size, 1.0)
            up = 0 if upsample is None else upsample
        crop = frame[y0:y1, x0:x1]
        if scale != 1.0:
            size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            crop = cv2.resize(crop, size, interpolation=interp)
        rects, scores, _ = self._hog.run(np.ascontiguousarray(crop), up, 0.0)
        return [(Box(x0 + r.left() / scale, y0 + r.top() / scale,
                     x0 + (r.right() + 1) / scale, y0 + (r.bottom() + 1) / scale),
                 float(s)) for r, s in zip(rects, scores)]

    @staticmethod
    def _confident(dets: list[tuple[Box, float]]) -> list[Box]:
        good = [b for b, s in dets if s >= MIN_SCORE]
        return good or [b for b, _ in dets]

    @staticmethod
    def window_around(ref: Box) -> Box:
        """The search window of three face sizes centred on ``ref``."""
        pad = ref.size
        return Box(ref.left - pad, ref.top - pad, ref.right + pad, ref.bottom + pad)

    def _near(self, frame: np.ndarray, ref: Box,
              windows: Sequence[Box | None]) -> tuple[Box | None, Box | None]:
        for win in windows:
            boxes = self._confident(self.detect(frame, win))
            if not boxes:
                continue
            best = max(boxes, key=lambda b: (b.iou(ref), -ref.distance(b)))
            if best.iou(ref) > 0 or ref.distance(best) <= 2.0:
                return best, win
        return None, None

    def near(self, frame: np.ndarray, ref: Box, *,
             window: Box | None | str = "around") -> Box | None:
        """The face at ``ref`` in ``frame``: the detection that overlaps ``ref`` most
        (or, failing that, lies nearest, within two face sizes), searched first in
        ``window`` (default: :meth:`window_around` ``ref``; ``None``: the whole frame),
        then in the whole frame. Searching another clip's frame in the window that
        :meth:`track` used (``self.window``) finds the identical box where the two
        frames agree around the face."""
        first = self.window_around(ref) if window == "around" else window
        windows = [first] if first is None else [first, None]
        return self._near(_as_u8(frame), ref, windows)[0]

    def track(self, frame: np.ndarray) -> Box | None:
        """The clip's face in this frame: near the previous choice when there is one,
        else the one nearest ``subject``, else the largest confident detection (also
        after :data:`REACQUIRE_AFTER` frames without the face: a cut or an exit).
        Remembers the choice (``previous``) and the window it was found in
        (``window``; ``None`` = the whole frame)."""
        frame = _as_u8(frame)
        box, window = None, None
        if self.previous is not None and self.misses < REACQUIRE_AFTER:
            prev = self.previous
            box, window = self._near(frame, prev, [self.window_around(prev), None])
        else:
            boxes = self._confident(self.detect(frame))
            if boxes and self.subject is not None and self.previous is None:
                sx, sy = self.subject
                box = min(boxes, key=lambda b: math.hypot(b.centre[0] - sx,
                                                          b.centre[1] - sy))
            elif boxes:
                box = max(boxes, key=lambda b: b.size)
        if box is None:
            self.misses += 1
        else:
            self.previous, self.window, self.misses = box, window, 0
        return box


class Embedder(Protocol):
    """Identity embedding of the face in ``box``; L2-normalised float32 [dim]."""

    name: str
    dim: int

    def embed(self, frame: np.ndarray, box: Box) -> np.ndarray: ...


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class DlibEmbedder:
    """dlib ResNet face descriptor (128-d) on the 5-point-aligned 150 px chip."""

    name = "dlib-resnet-v1"
    dim = 128

    def __init__(self) -> None:
        import dlib

        self._shape = dlib.shape_predictor(
            str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
        self._net = dlib.face_recognition_model_v1(
            str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))

    def embed(self, frame: np.ndarray, box: Box) -> np.ndarray:
        frame = _as_u8(frame)
        shape = self._shape(frame, box.to_dlib())
        # dlib's own chip: 150 px, padding 0.25 (what the network was trained on).
        return _normalise(self._net.compute_face_descriptor(frame, shape, 0, 0.25))


# --- ArcFace --------------------------------------------------------------------------

# insightface's 112 px five-point template (arcface_dst): eye centres, nose tip, mouth
# corners, in image left-to-right order.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
ARCFACE_DIR = "arcface"


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping ``src`` [N,2] onto ``dst``;
    returns the 2x3 matrix (what insightface's ``SimilarityTransform`` estimates)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - scale * rot @ ms
    return m


def five_points(lm68: np.ndarray) -> np.ndarray:
    """ArcFace's five points from dlib's 68 landmarks [68, 2]."""
    return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48],
                     lm68[54]]).astype(np.float32)


def build_iresnet(layers: Sequence[int], features: int = 512):
    """An ``arcface_torch`` IResNet (Deng et al. 2019) for 112 px faces, with
    ``layers`` blocks per stage ([3, 4, 14, 3] = r50, [3, 13, 30, 3] = r100) and a
    ``features``-d output; same parameter names as arcface_torch's ``iresnet.py``."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
            self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
            self.prelu = nn.PReLU(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False),
                    nn.BatchNorm2d(cout, eps=1e-5))

        def forward(self, x):
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return out + (x if self.downsample is None else self.downsample(x))

    class IResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
            self.prelu = nn.PReLU(64)
            cin = 64
            for i, (n, cout) in enumerate(zip(layers, (64, 128, 256, 512)), 1):
                blocks = [Block(cin, cout, 2)]
                blocks += [Block(cout, cout, 1) for _ in range(n - 1)]
                setattr(self, f"layer{i}", nn.Sequential(*blocks))
                cin = cout
            self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
            self.fc = nn.Linear(512 * 7 * 7, features)  # 112 px input -> 7 x 7
            self.features = nn.BatchNorm1d(features, eps=1e-5)

        def forward(self, x):  # [N, 3, 112, 112] in [-1, 1] -> [N, features]
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    return IResNet()


def load_iresnet(state: dict):
    """Rebuild an IResNet matching ``state`` -> (net, layers). Block counts per stage
    and the embedding size are read from the keys, so r18/r34/r50/r100 all load."""
    layers = []
    for i in range(1, 5):
        ids = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")}
        if not ids:
            raise ModelFormatError(f"not an arcface_torch IResNet: no layer{i} weights")
        layers.append(max(ids) + 1)
    if "fc.weight" not in state:
        raise ModelFormatError("not an arcface_torch IResNet: no fc.weight")
    net = build_iresnet(layers, int(state["fc.weight"].shape[0]))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFormatError("the ArcFace state dict does not match an arcface_torch "
                               f"IResNet: {str(exc).splitlines()[0][:300]}") from None
    return net.eval(), layers


class ArcFaceEmbedder:
    """ArcFace embedding (512-d) of the five-point-aligned 112 px face.

    Args:
        path: weights; default: the single ``.onnx`` or ``.pth`` file under
            ``models/arcface/`` in the model store.
        device: torch device for ``.pth`` weights.
    """

    dim = 512

    def __init__(self, path: str | Path | None = None, device: str = "cpu") -> None:
        import dlib

        if path is None:
            found = store_files(ARCFACE_DIR, ("*.onnx", "*.pth", "*.pt"))
            if not found:
                raise ModelMissing(
                    "ArcFace weights are not installed: put an insightface ArcFace "
                    "model (e.g. w600k_r50.onnx from buffalo_l) or an arcface_torch "
                    "IResNet state dict (backbone.pth) into "
                    f"{models_root() / ARCFACE_DIR}; nothing is downloaded. "
                    "The default identity backend 'dlib' needs no extra files.",
                    field="metrics.identity")
            if len(found) > 1:
                log.info("several ArcFace files installed; using %s", found[0].name)
            path = found[0]
        self.path = Path(path)
        self._shape = dlib.shape_predictor(
            str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self.device = device
        if self.path.suffix == ".onnx":
            try:
                self._net = cv2.dnn.readNetFromONNX(str(self.path))
            except cv2.error as exc:
                raise ModelFormatError(
                    f"{self.path.name}: OpenCV cannot read this ONNX model "
                    f"({str(exc).strip()[:200]})") from None
            self._torch = False
            self.name = f"arcface-onnx:{self.path.name}"
        else:
            import torch

            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            state = {k.removeprefix("module."): v for k, v in state.items()}
            net, layers = load_iresnet(state)
            self._net = net.to(device)
            self.dim = int(state["fc.weight"].shape[0])
            self._torch = True
            self.name = f"arcface-iresnet{sum(layers) * 2 + 2}:{self.path.name}"

    def align(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """The 112x112 RGB uint8 aligned face."""
        frame = _as_u8(frame)
        shape = self._shape(frame, box.to_dlib())
        lm = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        m = similarity_transform(five_points(lm), ARCFACE_TEMPLATE)
        return cv2.warpAffine(frame, m, (112, 112), borderValue=0)

    def embed(self, frame: np.ndarray, box: Box) -> np.ndarray:
        face = self.align(frame, box)
        # insightface / arcface_torch input: RGB, (x - 127.5) / 127.5, NCHW
        x = (face.astype(np.float32) - 127.5) / 127.5
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        if self._torch:
            import torch

            with torch.no_grad():
                out = self._net(torch.from_numpy(x).to(self.device)).cpu().numpy()
        else:
            self._net.setInput(x)
            out = self._net.forward()
        return _normalise(out)


def arcface_installed() -> bool:
    """Whether ArcFace weights are installed under ``models/arcface/`` in the model
    store (what ``identity_backend("auto")`` looks for)."""
    return bool(store_files(ARCFACE_DIR, ("*.onnx", "*.pth", "*.pt")))


def identity_backend(name: str = "auto", *, device: str = "cpu") -> Embedder:
    """The embedding backend called ``name``: ``arcface``, ``dlib``, or ``auto`` =
    ArcFace when its weights are installed (the network of the papers' TL-ID /
    TG-ID), else dlib's descriptor, which needs no extra files."""
    if name == "auto":
        name = "arcface" if arcface_installed() else "dlib"
    if name == "dlib":
        return DlibEmbedder()
    if name == "arcface":
        return ArcFaceEmbedder(device=device)
    raise MetricsError(f"unknown identity backend {name!r}; use auto, dlib or "
                       "arcface",
                       field="metrics.identity")
