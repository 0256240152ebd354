"""Optical flow, occlusion mask and warping error (engine/quality/flow.py,
docs/reference.md "Warping error")."""

from __future__ import annotations

import numpy as np
import pytest

from clips import ClipSpec, render_frames
from engine.quality.flow import (
    OpenCVFlow,
    flow_backend,
    occlusion_mask,
    warp,
    warping_error,
)
from fsexchange.errors import MetricsError, ModelMissing


def _texture(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def _const_flow(h: int, w: int, u: float, v: float = 0.0) -> np.ndarray:
    f = np.zeros((h, w, 2), np.float32)
    f[..., 0], f[..., 1] = u, v
    return f


def test_warp_samples_at_p_plus_flow():
    img = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
    out = warp(img, _const_flow(5, 6, 2.0, 1.0))
    assert out[1, 1] == img[2, 3]
    assert out[0, 0] == img[1, 2]
    # outside the image: clamped to the border (FlowNet2 Resample2d)
    assert out[4, 5] == img[4, 5]


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_opencv_flow_recovers_translation(method):
    a = _texture()
    b = np.roll(a, 3, axis=1)  # b(x) = a(x - 3)  ->  a(p) = b(p + 3)
    fw, bw = flow_backend(method).pair(a, b)
    inner = (slice(10, -10), slice(10, -10))
    assert np.median(fw[inner][..., 0]) == pytest.approx(3.0, abs=0.2)
    assert np.median(bw[inner][..., 0]) == pytest.approx(-3.0, abs=0.2)
    assert abs(np.median(fw[inner][..., 1])) < 0.2


def test_forward_backward_threshold_constants():
    # fw = 0, bw = (d, 0): occluded iff d^2 > 0.01 * d^2 + 0.5
    h, w = 8, 8
    fw = _const_flow(h, w, 0.0)
    assert occlusion_mask(fw, _const_flow(h, w, 0.70)).min() == 1.0   # 0.49 < 0.5049
    assert occlusion_mask(fw, _const_flow(h, w, 0.72)).max() == 0.0   # 0.518 > 0.505
    # a consistent pair (bw = -fw) of a large uniform motion stays visible
    assert occlusion_mask(_const_flow(h, w, 5.0), _const_flow(h, w, -5.0)).min() == 1.0


def test_motion_boundary_constants():
    # u(x) = g * x on a consistent pair: |grad u|^2 = g^2 vs 0.01 |fw|^2 + 0.002
    h, w = 4, 6
    for g, visible in ((0.04, True), (0.05, False)):
        fw = np.zeros((h, w, 2), np.float32)
        fw[..., 0] = g * np.arange(w)
        bw = -fw  # consistent enough: the fb residual is far below 0.5
        m = occlusion_mask(fw, bw)
        # column 0: |fw|^2 = 0, so the threshold is exactly 0.002
        assert bool(m[0, 0]) is visible
        assert m[:, -1].min() == 1.0  # last column has no forward difference


def test_warping_error_definition():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 255, np.uint8)
    zero = _const_flow(4, 4, 0.0)
    full = np.ones((4, 4), np.float32)
    assert warping_error(a, b, zero, full) == pytest.approx(1.0)  # per-channel mean
    half = np.zeros((4, 4), np.float32)
    half[:, :2] = 1
    b2 = b.copy()
    b2[:, :2] = 0  # the masked half agrees exactly
    assert warping_error(a, b2, zero, half) == 0.0
    assert warping_error(a, b, zero, np.zeros((4, 4), np.float32)) == 0.0  # Lai: N=0
    # uint16 scales to [0, 1] the same way
    assert warping_error(a.astype(np.uint16), b.astype(np.uint16) * 257, zero,
                         full) == pytest.approx(1.0)


def test_source_warp_error_small_and_flow_compensates_motion():
    frames = render_frames(ClipSpec(frames=4, drift=(12.0, 6.0)))
    flow = OpenCVFlow("dis")
    h, w = frames[0].shape[:2]
    for t in range(3):
        fw, bw = flow.pair(frames[t], frames[t + 1])
        m = occlusion_mask(fw, bw)
        assert m.mean() > 0.8
        with_flow = warping_error(frames[t], frames[t + 1], fw, m)
        without = warping_error(frames[t], frames[t + 1], _const_flow(h, w, 0.0), m)
        assert with_flow < 2e-3
        assert without > 5 * with_flow


def test_unknown_and_missing_backends(tmp_path):
    with pytest.raises(MetricsError, match="unknown flow backend"):
        flow_backend("pwc")
    with pytest.raises(ModelMissing, match="raft-things.pth"):
        flow_backend("raft")
