"""Face masks for paste-back and stitching tuning (docs/reference.md "Stitching
tuning").

A *face mask* is a boolean ``[R, R]`` foreground map on the aligned crop: BiSeNet
labels not in {0 background, 16 cloth, 18 hat} (so hair, neck and accessories count
as face), or, when no parser weights are installed, the convex hull of the 68
landmarks extended over the forehead. The align stage stores one per frame.

From it, as the reference does at 1024 (morphology at 512 with half the CLI values,
square structuring elements, geodesic borders, bilinear ``align_corners=True``
upsampling), scaled linearly to any crop size R:

- :func:`paste_alpha`: the dilated mask used as alpha for paste-back, optionally
  feathered (erode 51, Gaussian 51, at 1024);
- :func:`stitch_masks`: ``(full, border, content)`` for stitching tuning.

numpy + cv2; the parser (:class:`FaceParser`) imports torch lazily.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fsexchange.errors import DocumentFieldError, ModelMissing

from fsexchange.options import MaskConfig

from engine.models.store import PARSER_FILE

__all__ = [
    "BACKGROUND_CLASSES",
    "foreground_from_labels",
    "hull_mask",
    "paste_alpha",
    "feather_radius",
    "stitch_masks",
    "FaceParser",
    "MaskBuilder",
]

log = logging.getLogger(__name__)

#: BiSeNet classes that are not face: background, cloth, hat (docs/reference.md
#: "Stitching tuning").
BACKGROUND_CLASSES = (0, 16, 18)
_REFERENCE_SIZE = 1024  # the reference's crop size; CLI values are at this size


def foreground_from_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean face mask from BiSeNet labels (label not in {0, 16, 18})."""
    return ~np.isin(labels, BACKGROUND_CLASSES)


def hull_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Landmark-hull face mask ``[size, size]`` bool from 68 points in crop pixels.

    The 68 points stop at the brows, so the brows are raised by half the
    eye-to-chin distance along the face's up direction to cover the forehead.
    """
    import cv2

    lm = np.asarray(landmarks, dtype=np.float64).reshape(68, 2)
    eyes = lm[36:48].mean(0)
    chin = lm[8]
    up = eyes - chin
    up /= max(np.linalg.norm(up), 1e-6)
    forehead = lm[17:27] + up * 0.5 * np.linalg.norm(eyes - chin)
    pts = np.concatenate([lm[0:17], forehead])
    hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
    out = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(out, hull, 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def _radius(value_at_1024: int, size: int) -> int:
    """A CLI pixel value at 1024, halved for the 512 work size, scaled to ``size``."""
    return int(round(value_at_1024 // 2 * size / _REFERENCE_SIZE))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation with a flat square of side 2r+1; outside pixels are ignored."""
    import cv2

    if radius <= 0:
        return mask.copy()
    return cv2.dilate(mask, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _upsample_align_corners(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with ``align_corners=True`` (torch semantics), float32."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        w = np.zeros((n_out, n_in), np.float32)
        if n_in == 1 or n_out == 1:
            w[:, 0] = 1
            return w
        pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
        lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
        frac = (pos - lo).astype(np.float32)
        w[np.arange(n_out), lo] = 1 - frac
        w[np.arange(n_out), lo + 1] += frac
        return w

    wy = weights(img.shape[0], size)
    wx = weights(img.shape[1], size)
    return wy @ img.astype(np.float32) @ wx.T


def _work_mask(face_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Nearest-downsample the R mask to the R/2 work size (512 at 1024)."""
    import cv2

    size = face_mask.shape[0]
    if face_mask.shape != (size, size):
        raise ValueError(f"face mask must be square, got {face_mask.shape}")
    work = max(1, size // 2)
    m = cv2.resize((np.asarray(face_mask) > 0).astype(np.float32), (work, work),
                   interpolation=cv2.INTER_NEAREST)
    return m, size


def feather_radius(cfg: MaskConfig, size: int) -> int:
    """STIT's feathering radius at crop size R: ``outer_mask_dilation // 2`` pixels
    at 1024 (25, a 51 x 51 kernel, for the default 50), scaled by R/1024."""
    return int(round(cfg.outer_dilation // 2 * size / _REFERENCE_SIZE))


def paste_alpha(face_mask: np.ndarray, cfg: MaskConfig = MaskConfig()) -> np.ndarray:
    """Alpha for paste-back: the dilated face mask (STIT's main output, no blur),
    float32 ``[R, R]`` in 0..1.

    With ``cfg.feather``: STIT's feathering variant (docs/reference.md "Paste-back"):
    the alpha is eroded by a square of side ``2r + 1`` (:func:`feather_radius`, 51 at
    1024) with **border value 0**, so a mask that runs into the crop's edge (a neck)
    fades out towards the edge instead of staying opaque there, then blurred by a
    Gaussian of the same size with OpenCV's automatic sigma (8 px at 51) and its
    default reflected border.
    """
    import cv2

    m, size = _work_mask(face_mask)
    work = m.shape[0]
    inner = _dilate(m, _radius(cfg.inner_dilation, work * 2))
    full = _dilate(inner, _radius(cfg.outer_dilation, work * 2))
    alpha = np.clip(_upsample_align_corners(full, size), 0, 1)
    if cfg.feather:
        r = feather_radius(cfg, size)
        if r > 0:
            k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
            alpha = cv2.erode(alpha, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            alpha = cv2.GaussianBlur(alpha, (2 * r + 1, 2 * r + 1), 0)
    return np.ascontiguousarray(alpha, dtype=np.float32)


def stitch_masks(face_mask: np.ndarray, cfg: MaskConfig = MaskConfig()
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(full, border, content)`` float32 ``[R, R]`` in 0..1 (docs/reference.md
    "Stitching tuning").

    At the R/2 work size: M = foreground (dilated by ``inner_dilation``), full =
    dilate(M, ``outer_dilation``), E = pixels within ``border_band`` of the crop
    edge (``None``: the outer dilation, as STIT), border = max(min(E, M), full - M)
    (``whole_image_border``: max(min(E, M), 1 - M), STIT's flag), content =
    clip(M_orig - border, 0, 1); then bilinear ``align_corners=True`` upsampling to
    R. Radii are the 1024 CLI values halved and scaled by R/1024 (25, 0, 25 at
    1024).
    """
    m_orig, size = _work_mask(face_mask)
    work = m_orig.shape[0]
    m = _dilate(m_orig, _radius(cfg.inner_dilation, work * 2))
    full = _dilate(m, _radius(cfg.outer_dilation, work * 2))
    band_1024 = cfg.outer_dilation if cfg.border_band is None else cfg.border_band
    band = _radius(band_1024, work * 2)
    idx = np.arange(work)
    dist = np.minimum(idx, work - 1 - idx)
    edge = (np.minimum(dist[:, None], dist[None, :]) < band).astype(np.float32)
    ring = 1.0 - m if cfg.whole_image_border else full - m
    border = np.maximum(np.minimum(edge, m), ring)
    content = np.clip(m_orig - border, 0, 1)
    return tuple(np.ascontiguousarray(np.clip(_upsample_align_corners(a, size), 0, 1),
                                      dtype=np.float32)
                 for a in (full, border, content))  # type: ignore[return-value]


class FaceParser:
    """BiSeNet labels for aligned crops: resized to 512 (nearest when shrinking, as
    STIT does 1024 -> 512; bilinear when enlarging), parsed, labels resized back to
    R with nearest. Loads ``79999_iter.pth`` strictly; downloads nothing."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        from engine.nets.bisenet import load_bisenet

        self.device = device
        self.net = load_bisenet(path, device)

    def labels(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 labels ``[R, R]`` for RGB uint8 crops ``[R, R, 3]``."""
        import cv2
        import torch

        from engine.nets.bisenet import PARSE_RESOLUTION as P

        if not crops:
            return []
        size = crops[0].shape[0]
        interp = cv2.INTER_NEAREST if size >= P else cv2.INTER_LINEAR
        batch = np.stack([cv2.resize(c[..., :3], (P, P), interpolation=interp)
                          for c in crops])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255
        labels = self.net.parse(x).to("cpu", torch.uint8).numpy()
        return [cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
                for lab in labels]


class MaskBuilder:
    """Face masks per :class:`MaskConfig`: the BiSeNet parser when its weights are
    given (``parser`` "auto" or "bisenet"), else the landmark hull.

    Attributes:
        source: ``"bisenet"`` or ``"hull"``, recorded in the align stage's info.
        batch_size: crops per parser call.
    """

    def __init__(self, cfg: MaskConfig, size: int, *, device: str = "cpu",
                 parser_path: Path | None = None) -> None:
        if cfg.parser not in ("auto", "bisenet", "hull"):
            raise DocumentFieldError(
                "options.mask.parser must be auto, bisenet or hull, got "
                f"{cfg.parser!r}",
                field="options.mask.parser")
        self.size = size
        self.parser: FaceParser | None = None
        have = parser_path is not None and Path(parser_path).is_file()
        if cfg.parser == "bisenet" and not have:
            raise ModelMissing(
                f"options.mask.parser is 'bisenet' but the face-parser weights "
                f"{PARSER_FILE} are not installed; install them with 'facestitch "
                "models install --from DIR' or use mask.parser 'auto'")
        if cfg.parser != "hull" and have:
            self.parser = FaceParser(parser_path, device)  # type: ignore[arg-type]
        self.source = "bisenet" if self.parser is not None else "hull"
        self.batch_size = 8 if self.parser is not None else 1

    def masks(self, crops: Sequence[np.ndarray],
              crop_landmarks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Boolean ``[R, R]`` masks for crops and their landmarks in crop pixels."""
        if self.parser is not None:
            return [foreground_from_labels(lab) for lab in self.parser.labels(crops)]
        return [hull_mask(lm, self.size) for lm in crop_landmarks]
