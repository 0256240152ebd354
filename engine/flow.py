"""Optical flow and the occlusion-masked warping error E_warp (Lai et al. 2018).

Flow convention everywhere: ``flow(a, b)`` is an ``[H, W, 2]`` float32 field ``f`` in
pixels (x, y) with ``a(p) ≈ b(p + f(p))`` (OpenCV's and RAFT's convention).

Backends (``flow_backend(name)``):

- ``dis``: OpenCV DIS, preset MEDIUM, on grey levels. No weights. The default.
- ``farneback``: OpenCV Farnebäck (pyramid 0.5, 5 levels, window 15). No weights.
- ``raft``: RAFT-large (Teed & Deng 2020, ``engine/nets/raft.py``) from the official
  ``raft-things.pth`` when it is installed in the model store; torch, any device.

The warping error follows the canonical evaluation code of Lai et al. 2018
(``evaluate_WarpError.py`` / ``utils.detect_occlusion``, pipeline.md §2.6): flows on
the *source* pair (t, t+1), occlusion from the forward-backward check and motion
boundaries, ``E_warp(t) = Σ M·‖V_t − warp(V_{t+1})‖² / Σ M`` per channel, RGB in
[0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from fsexchange.errors import MetricsError, ModelMissing

__all__ = ["FlowBackend", "OpenCVFlow", "RaftFlow", "flow_backend", "warp",
           "occlusion_mask", "warping_error", "to_gray", "to_unit"]

log = logging.getLogger(__name__)

# Lai et al. 2018 occlusion constants (pipeline.md §2.6, utils.detect_occlusion).
FB_REL = 0.01  # forward-backward: |f + b_w|^2 > 0.01 (|f|^2 + |b_w|^2) + 0.5
FB_ABS = 0.5
MB_REL = 0.01  # motion boundary: |grad u|^2 + |grad v|^2 > 0.01 |f|^2 + 0.002
MB_ABS = 0.002


class FlowBackend(Protocol):
    """Computes forward and backward flow for a pair of RGB frames."""

    name: str

    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(flow(a, b), flow(b, a))`` for two HxWx3 RGB frames (uint8 or uint16)."""


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB (uint8 or uint16) -> HxW uint8 grey levels."""
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    elif rgb.dtype != np.uint8:
        rgb = np.clip(np.asarray(rgb, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


class OpenCVFlow:
    """OpenCV DIS (preset MEDIUM) or Farnebäck flow; deterministic, CPU, no weights."""

    def __init__(self, method: str = "dis") -> None:
        if method == "dis":
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            self.name = "opencv-dis-medium"
        elif method == "farneback":
            self._dis = None
            self.name = "opencv-farneback"
        else:  # pragma: no cover - guarded by flow_backend
            raise ValueError(method)
        self.method = method
        self._cache: tuple[int, np.ndarray] | None = None  # (id(frame), grey)

    def _gray(self, rgb: np.ndarray) -> np.ndarray:
        # Streaming callers pass frame t+1 now and as frame t next time: reuse its grey.
        if self._cache is not None and self._cache[0] == id(rgb):
            return self._cache[1]
        return to_gray(rgb)

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._dis is not None:
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 3, 5, 1.2, 0)

    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ga, gb = self._gray(a), to_gray(b)
        self._cache = (id(b), gb)
        return self._flow(ga, gb), self._flow(gb, ga)


def flow_backend(name: str = "dis", *, device: str = "cpu") -> FlowBackend:
    """The flow backend called ``name`` (``dis``, ``farneback`` or ``raft``).

    Raises:
        ModelMissing: ``raft`` without ``raft-things.pth`` in the model store.
        MetricsError: an unknown name.
    """
    if name in ("dis", "farneback"):
        return OpenCVFlow(name)
    if name == "raft":
        return RaftFlow(device=device)
    raise MetricsError(f"unknown flow backend {name!r}; use dis, farneback or raft",
                       field="metrics.flow")


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` at ``p + flow(p)`` (bilinear, coordinates clamped to the border
    like FlowNet2's Resample2d that Lai et al. use). ``img`` HxW or HxWxC float32."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def occlusion_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Non-occlusion mask M (HxW float32, 1 = valid) in frame t's pixels.

    Args:
        fw: flow(t, t+1); bw: flow(t+1, t). [H, W, 2] each.

    Occluded where the forward-backward check fails,
    ``|fw + bw_w|² > 0.01·(|fw|² + |bw_w|²) + 0.5`` with ``bw_w(p) = bw(p + fw(p))``,
    or on a motion boundary, ``|∇u|² + |∇v|² > 0.01·|fw|² + 0.002`` with forward
    differences of ``fw`` (Lai et al.'s ``detect_occlusion(bw, fw)`` call order).
    """
    bw_w = warp(bw, fw)
    fb = fw + bw_w
    fb_mag = (fb ** 2).sum(-1)
    fw_mag = (fw ** 2).sum(-1)
    bw_w_mag = (bw_w ** 2).sum(-1)
    occluded = fb_mag > FB_REL * (fw_mag + bw_w_mag) + FB_ABS
    du = np.zeros_like(fw)
    dv = np.zeros_like(fw)
    du[:, :-1] = fw[:, :-1] - fw[:, 1:]
    dv[:-1, :] = fw[:-1, :] - fw[1:, :]
    grad_mag = (du ** 2).sum(-1) + (dv ** 2).sum(-1)
    occluded |= grad_mag > MB_REL * fw_mag + MB_ABS
    return (~occluded).astype(np.float32)


def to_unit(rgb: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float RGB -> float32 in [0, 1]."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) * (1.0 / 255.0)
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) * (1.0 / 65535.0)
    return np.asarray(rgb, np.float32)


def warping_error(frame_t: np.ndarray, frame_t1: np.ndarray, fw: np.ndarray,
                  mask: np.ndarray) -> float:
    """``Σ M·‖V_t − warp(V_{t+1}, fw)‖² / (3·Σ M)`` for RGB frames (any dtype, scaled
    to [0, 1]). Like Lai et al., a fully occluded pair scores 0."""
    a = to_unit(frame_t)
    b = warp(to_unit(frame_t1), fw)
    if a.shape != b.shape:
        raise MetricsError(f"frame shapes differ: {a.shape} vs {b.shape}")
    n = float(mask.sum()) * a.shape[2]
    if n == 0:
        return 0.0
    sq = ((a - b) ** 2).sum(-1)
    return float((sq * mask).sum() / n)


# --- RAFT -----------------------------------------------------------------------------

RAFT_FILE = "raft-things.pth"


class RaftFlow:
    """RAFT-large flow from the official ``raft-things.pth`` (princeton-vl/RAFT,
    FlyingChairs + FlyingThings; pipeline.md §2.2), installed as
    ``models/raft-things.pth`` in the model store.

    Args:
        path: the weights; default: the model store's copy.
        device: torch device.
        iters: refinement iterations (20, as VideoEditGAN and RAFT's evaluation).
    """

    def __init__(self, path: str | None = None, device: str = "cpu",
                 iters: int = 20) -> None:
        from .metrics import models_root  # noqa: PLC0415

        p = Path(path) if path else models_root() / RAFT_FILE
        if not p.is_file():
            raise ModelMissing(
                f"RAFT weights are not installed: copy the official {RAFT_FILE} "
                f"(princeton-vl/RAFT, models.zip) to {p}; nothing is downloaded. The "
                "default flow backend 'dis' needs no weights.", field="metrics.flow")
        raise MetricsError("the RAFT flow backend is not available in this version; "
                           "use --flow dis or farneback", field="metrics.flow")
