"""TL-ID, TG-ID and warping error (engine/quality/metrics.py; docs/reference.md
"Warping error", "Identity metrics TL-ID and TG-ID")."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from clips import ClipSpec, render_frames
from fsexchange.options import MetricsConfig
from engine.media.composite import composite_over
from engine.quality.charts import metrics_svg
from fsexchange.errors import (MetricsFrameInvalid, MetricsLengthMismatch,
                               MetricsNoFrames, MetricsSizeMismatch)
from engine.quality.metrics import (
    TemporalMetrics,
    _global_means,
    temporal_metrics,
)
from fsexchange.errors import ERROR_CODES, MetricsError, ModelMissing

N = 10


@pytest.fixture(scope="module")
def source():
    return render_frames(ClipSpec(frames=N))


@pytest.fixture(scope="module")
def self_metrics(source):
    return temporal_metrics(iter(source), iter(source))


def _distort(frames, amount, seed=0):
    """Per-frame random affine wobble of the picture around the face: what an
    unstable per-frame edit does to the face's geometry."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        h, w = f.shape[:2]
        a = np.eye(2) + rng.normal(0, amount, (2, 2))
        c = np.array([w / 2, h / 2])
        m = np.hstack([a, (c - a @ c)[:, None]])
        out.append(cv2.warpAffine(f, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    return out


# --- compositing -------------------------------------------------------------------


def test_composite_over_straight_and_premultiplied():
    src = np.full((2, 3, 3), 100, np.uint8)
    rgba = np.zeros((2, 3, 4), np.uint8)
    np.testing.assert_array_equal(composite_over(rgba, src), src)  # alpha 0: the plate
    rgba[...] = (200, 50, 0, 255)
    np.testing.assert_array_equal(composite_over(rgba, src), rgba[..., :3])
    rgba[..., 3] = 128  # straight: 200 * a + 100 * (1 - a)
    a = 128 / 255
    assert composite_over(rgba, src)[0, 0, 0] == round(200 * a + 100 * (1 - a))
    pm = np.zeros((2, 3, 4), np.float32)
    pm[...] = (0.25, 0.0, 0.0, 0.5)  # premultiplied: 0.25 + 0.5 * src
    out = composite_over(pm, src, premultiplied=True)
    assert out[0, 0, 0] == round((0.25 + 0.5 * 100 / 255) * 255)
    # 16-bit layers over an 8-bit plate stay in the plate's dtype
    rgba16 = np.zeros((2, 3, 4), np.uint16)
    rgba16[...] = (65535, 0, 0, 65535)
    out = composite_over(rgba16, src)
    assert out.dtype == np.uint8 and tuple(out[0, 0]) == (255, 0, 0)


def test_composite_size_mismatch_is_a_clear_error():
    with pytest.raises(MetricsSizeMismatch, match="3x2 but the source is 4x2") as err:
        composite_over(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 4, 3), np.uint8))
    assert err.value.code == "metrics.size_mismatch"


# --- the metrics -------------------------------------------------------------------


def test_clip_against_itself_is_perfectly_consistent(self_metrics):
    m = self_metrics
    assert m.frames == N and m.frames_without_face == 0
    assert m.tl_id == pytest.approx(1.0, abs=1e-9)
    assert m.tg_id == pytest.approx(1.0, abs=1e-9)
    assert m.tl_id_raw == pytest.approx(m.tl_id_source_raw, abs=1e-12)
    assert m.tg_id_raw == pytest.approx(m.tg_id_source_raw, abs=1e-12)
    assert 0.99 < m.tl_id_source_raw <= 1.0 + 1e-6
    assert m.warp_error == m.warp_error_source
    assert 0 < m.warp_error_source < 2e-3
    assert m.backends == {"identity": "dlib-resnet-v1", "flow": "opencv-dis-medium",
                          "face_detector": "dlib-hog"}
    for key, series in m.per_frame.items():
        assert len(series) == N, key
    assert m.per_frame["identity_to_prev"][0] is None
    assert m.per_frame["warp_error"][0] is None
    assert all(v == pytest.approx(1.0) for v in m.per_frame["identity_to_prev"][1:])


@pytest.mark.slow
def test_jitter_scores_worse_on_tl_id_and_warping_error(source, self_metrics):
    m = temporal_metrics(source, _distort(source, 0.03))
    assert m.tl_id < 0.999 and m.tl_id < self_metrics.tl_id - 1e-3
    assert m.tg_id < 0.9995
    assert m.warp_error > 10 * m.warp_error_source
    assert m.warp_error_source == pytest.approx(self_metrics.warp_error_source)


@pytest.mark.slow
def test_flicker_scores_worse_on_warping_error_and_tl_id(source):
    flicker = [np.clip(f * (1.0 + 0.15 * (-1) ** i), 0, 255).astype(np.uint8)
               for i, f in enumerate(source)]
    m = temporal_metrics(source, flicker, cfg=MetricsConfig(flow="farneback"))
    assert m.backends["flow"] == "opencv-farneback"
    assert m.warp_error > 10 * m.warp_error_source
    assert m.tl_id < 0.9995


def test_replaced_face_scores_worse_on_tg_id(source, self_metrics):
    other = render_frames(ClipSpec(frames=N, face="grace_hopper"))
    edited = [other[i] if 4 <= i < 7 else f for i, f in enumerate(source)]
    m = temporal_metrics(source, edited)
    assert m.frames_without_face == 0
    assert m.tg_id < 0.97 and m.tg_id < m.tl_id < 1.0
    assert m.tg_id_raw < m.tg_id_source_raw - 0.03
    ratio = m.per_frame["identity_to_prev"]
    # the jumps in and out of the other face are the two lowest adjacent ratios
    low = sorted(range(1, N), key=lambda i: ratio[i])[:2]
    assert sorted(low) == [4, 7]
    to_mean = m.per_frame["identity_to_mean"]
    assert max(to_mean[4:7]) < min(to_mean[:4] + to_mean[7:])


def test_frames_without_a_face_are_counted_and_skipped():
    frames = render_frames(ClipSpec(frames=8, hide=(3, 5)))
    m = temporal_metrics(frames, frames)
    assert m.frames_without_face == 2
    assert m.per_frame["face"] == [1, 1, 1, 0, 0, 1, 1, 1]
    assert m.per_frame["identity_to_prev"][3:6] == [None, None, None]
    assert m.tl_id == pytest.approx(1.0) and m.tg_id == pytest.approx(1.0)
    assert m.per_frame["warp_error"][4] is not None  # the pixels still count


def test_no_face_anywhere_never_crashes():
    grey = [np.full((48, 64, 3), 90 + i, np.uint8) for i in range(3)]
    m = temporal_metrics(grey, grey)
    assert m.frames == 3 and m.frames_without_face == 3
    assert math.isnan(m.tl_id) and math.isnan(m.tg_id)
    d = m.to_dict()
    assert d["tl_id"] is None and d["tg_id_raw"] is None and d["warp_error"] >= 0
    json.dumps(d, allow_nan=False)
    ET.fromstring(metrics_svg(m))


@pytest.mark.slow
def test_rgba_results_are_composited_over_the_source(source, self_metrics):
    transparent = [np.zeros(f.shape[:2] + (4,), np.uint8) for f in source]
    m = temporal_metrics(source, transparent)
    assert m.tl_id == pytest.approx(1.0) and m.warp_error == m.warp_error_source
    assert m.warp_error == pytest.approx(self_metrics.warp_error)
    # premultiplied float RGBA (what EXR results read back as): opaque = the plate
    exr_like = [np.dstack([f / 255.0, np.ones(f.shape[:2])]).astype(np.float32)
                for f in source[:3]]
    m = temporal_metrics(source[:3], exr_like, premultiplied=True)
    assert m.tl_id == pytest.approx(1.0) and m.warp_error == m.warp_error_source


def test_broken_edit_uses_the_source_box():
    src = render_frames(ClipSpec(frames=4))
    edited = render_frames(ClipSpec(frames=4, hide=(1, 3)))  # face greyed out
    m = temporal_metrics(src, edited)
    assert m.frames_without_face == 0
    assert m.per_frame["edited_face_detected"] == [1, 0, 0, 1]
    assert m.to_dict()["edited_faces_not_detected"] == 2
    assert m.tl_id < 0.99


def test_length_mismatch_is_a_clear_error():
    f = [np.zeros((32, 48, 3), np.uint8)] * 3
    with pytest.raises(MetricsLengthMismatch, match="edited clip ends after 2") as e:
        temporal_metrics(iter(f), iter(f[:2]))
    assert e.value.code == "metrics.length_mismatch" and e.value.frame == 2
    with pytest.raises(MetricsLengthMismatch, match="source clip ends after 2"):
        temporal_metrics(f[:2], f)
    with pytest.raises(MetricsNoFrames):
        temporal_metrics([], [])


def test_size_and_format_mismatch_are_clear_errors():
    a = [np.zeros((32, 48, 3), np.uint8)] * 2
    b = [np.zeros((32, 48, 3), np.uint8), np.zeros((30, 48, 3), np.uint8)]
    with pytest.raises(MetricsSizeMismatch, match="edited frame 1 is 48x30, expected "
                                                  "48x32") as err:
        temporal_metrics(a, b)
    assert err.value.frame == 1
    with pytest.raises(MetricsFrameInvalid, match="source frame 0"):
        temporal_metrics([np.zeros((32, 48), np.uint8)], a[:1])
    with pytest.raises(MetricsFrameInvalid, match="float32"):
        temporal_metrics([np.zeros((32, 48, 3), np.float32)], a[:1])
    with pytest.raises(MetricsFrameInvalid, match="int32"):
        temporal_metrics(a[:1], [np.zeros((32, 48, 3), np.int32)])
    for code in ("metrics.length_mismatch", "metrics.size_mismatch",
                 "metrics.frame_invalid", "metrics.no_frames"):
        assert issubclass(ERROR_CODES[code], MetricsError)


def test_unknown_or_missing_backends():
    f = [np.zeros((32, 48, 3), np.uint8)] * 2
    with pytest.raises(MetricsError, match="unknown flow backend"):
        temporal_metrics(f, f, cfg=MetricsConfig(flow="flownet2"))
    with pytest.raises(ModelMissing, match="arcface"):
        temporal_metrics(f, f, cfg=MetricsConfig(identity="arcface"))


def test_global_means_in_blocks_match_the_full_matrix():
    rng = np.random.default_rng(0)
    es = rng.normal(size=(7, 5)) + 3
    ee = es + rng.normal(scale=0.3, size=es.shape)
    es /= np.linalg.norm(es, axis=1, keepdims=True)
    ee /= np.linalg.norm(ee, axis=1, keepdims=True)
    s_src, s_ed = es @ es.T, ee @ ee.T
    off = ~np.eye(7, dtype=bool)
    want = ((s_ed / s_src)[off].mean(), s_ed[off].mean(), s_src[off].mean())
    np.testing.assert_allclose(_global_means(es, ee, chunk=3), want, rtol=1e-12)


# --- serialisation and the plot -----------------------------------------------------


def test_to_dict_is_json_and_msgpack_ready(self_metrics):
    import msgpack

    d = self_metrics.to_dict()
    for key in ("tl_id", "tg_id", "tl_id_raw", "tg_id_raw", "tl_id_source_raw",
                "tg_id_source_raw", "warp_error", "warp_error_source", "frames",
                "frames_without_face", "per_frame", "backends"):
        assert key in d
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert msgpack.unpackb(msgpack.packb(d)) == d


def test_svg_is_self_contained_and_shows_gaps(self_metrics):
    svg = metrics_svg(self_metrics, first_frame=1001)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "<script" not in svg and "href" not in svg
    assert svg.count("<polyline") >= 3
    assert ">1001<" in svg and f">{1000 + N}<" in svg
    # a gap in a series splits its line; a lone value is drawn as a dot
    per = {k: list(v) for k, v in self_metrics.per_frame.items()}
    per["identity_to_prev"] = [None, 1.0, None, 1.0, 1.0] + [None] * (N - 5)
    per["face"] = [1.0, 1.0, 0.0] + [1.0] * (N - 3)
    m = TemporalMetrics(**{**self_metrics.__dict__, "per_frame": per,
                           "frames_without_face": 1})
    svg = metrics_svg(m)
    ET.fromstring(svg)
    assert "<circle" in svg and "no face (1)" in svg
