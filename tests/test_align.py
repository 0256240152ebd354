"""engine.stages.align: FFHQ quad, smoothing, exact inverse, reflect padding,
the stage."""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest

from clips import ClipSpec, face_image, render_frames, write_clip
from engine.stages import align
from engine.stages.outputs import AlignedClip
from fsexchange.options import PipelineConfig
from engine.stages.contract import StageContext
from engine.faces import DlibBackend
from engine.stages.track import follow_identities
from fsexchange.documents import FaceTrack, FrameRange, Job, Source, TrackFrame


@pytest.fixture(scope="module")
def dlib_backend():
    return DlibBackend(upsample=1, min_score=0.5)


@pytest.fixture(scope="module")
def astronaut_landmarks(dlib_backend):
    (det,) = dlib_backend.detect(face_image("astronaut"))
    return det.landmarks


def test_ffhq_quad_by_hand():
    lm = np.zeros((68, 2))
    lm[36:42] = (40.0, 50.0)  # left eye centre
    lm[42:48] = (60.0, 50.0)  # right eye centre
    lm[48], lm[54] = (42.0, 80.0), (58.0, 80.0)  # mouth corners: centre (50, 80)
    c, x, y = align.ffhq_quad_params(lm)
    # eye_to_eye (20, 0), eye_to_mouth (0, 30): x = (20, 0) - R(0, 30) = (50, 0),
    # scaled to max(2*20, 1.8*30) = 54; y = R(x) = (0, 54); c = (50, 50) + 0.1*(0, 30)
    np.testing.assert_allclose(x, [54.0, 0.0])
    np.testing.assert_allclose(y, [0.0, 54.0])
    np.testing.assert_allclose(c, [50.0, 53.0])
    quad = align.quad_from_params(c, x, y)
    np.testing.assert_allclose(quad, [[-4, -1], [-4, 107], [104, 107], [104, -1]])
    # batched form agrees
    cb, xb, yb = align.ffhq_quad_params(np.stack([lm, lm + 5]))
    np.testing.assert_allclose(cb[1], c + 5)
    np.testing.assert_allclose(xb[1], x)


def test_crop_transform_is_exact_to_sub_pixel():
    quad = np.array([[103.3, 41.7], [88.1, 250.9], [297.3, 266.1], [312.5, 56.9]])
    for size in (64, 256, 1024):
        m = align.crop_transform(quad, size)
        corners = align.transform_points(m, quad)
        r = size - 0.5
        expect = [[-0.5, -0.5], [-0.5, r], [r, r], [r, -0.5]]
        np.testing.assert_allclose(corners, expect, atol=1e-9)
        pts = np.random.default_rng(0).uniform(0, 400, (50, 2))
        back = align.transform_points(np.linalg.inv(m), align.transform_points(m, pts))
        np.testing.assert_allclose(back, pts, atol=1e-9)


def _interior(quad, frame_size, size, erode=7):
    cover = align.unalign(np.ones((size, size), np.float32), quad, frame_size)
    return cv2.erode((cover >= 0.999).astype(np.uint8), np.ones((erode, erode))) > 0


def test_align_then_unalign_is_the_identity_away_from_borders(astronaut_landmarks):
    img = face_image("astronaut")
    quad = align.quad_from_params(*align.ffhq_quad_params(astronaut_landmarks))
    # a smooth image: bilinear resampling is nearly exact, so this checks geometry
    yy, xx = np.mgrid[0:512, 0:512]
    smooth = (127 + 100 * np.sin(xx / 23.0) * np.cos(yy / 31.0)).astype(np.float32)
    inner = _interior(quad, (512, 512), 512)
    back = align.unalign(align.align_crop(smooth, quad, 512), quad, (512, 512))
    smooth_err = np.abs(back - smooth)[inner].max()
    # the real face at 1024 (upsampled ~6x): only resampling blur remains
    back = align.unalign(align.align_crop(img, quad, 1024), quad, (512, 512))
    err = np.abs(back.astype(float) - img)[_interior(quad, (512, 512), 1024)]
    print(f"align -> unalign: smooth image max error {smooth_err:.3f} levels; "
          f"astronaut at 1024 mean {err.mean():.2f}, p99 {np.percentile(err, 99):.0f}")
    assert inner.sum() > 25000
    assert smooth_err < 0.25
    assert err.mean() < 1.0 and np.percentile(err, 99) < 8


def test_reflect_padding_where_the_quad_leaves_the_frame(astronaut_landmarks):
    img = face_image("astronaut")
    quad = align.quad_from_params(*align.ffhq_quad_params(astronaut_landmarks))
    quad = quad - [200.0, 0.0]  # the quad now sticks out of the left edge
    black = align.align_crop(img, quad, 128, padding="black")
    reflect = align.align_crop(img, quad, 128)
    assert (black.sum(axis=2) == 0).mean() > 0.2
    assert (reflect.sum(axis=2) == 0).mean() < 0.001
    with pytest.raises(ValueError):
        align.align_crop(img, quad, 128, padding="edge")


def _jitter(quads: np.ndarray) -> float:
    """Mean magnitude of the second difference of the quad corners (px/frame²):
    smooth motion scores ~0, frame-to-frame shake scores high."""
    return float(np.linalg.norm(np.diff(quads, n=2, axis=0), axis=-1).mean())


def test_smoothing_reduces_jitter_on_a_noisy_landmark_clip(dlib_backend):
    # Real faces, real detector: the clip shakes by 1.5 px per frame on top of a
    # smooth drift; dlib's landmarks add their own noise.
    spec = ClipSpec(frames=32, size=(320, 240), drift=(12.0, 6.0), jitter=1.5, seed=4)
    frames = render_frames(spec)
    (ident,) = follow_identities(enumerate(frames), dlib_backend)
    lms = np.stack([ident.detections[i].landmarks for i in range(spec.frames)])
    c, x, y = align.ffhq_quad_params(lms)
    raw = align.quad_from_params(c, x, y)
    smoothed = align.quad_from_params(*align.smooth_params(c, x, y, 1.0, 3.0))
    j_raw, j_smooth = _jitter(raw), _jitter(smoothed)
    print(f"crop-transform jitter on a shaking clip: raw {j_raw:.2f} px, "
          f"smoothed (sigma c 1, xy 3) {j_smooth:.2f} px "
          f"({j_raw / j_smooth:.1f}x less)")
    assert j_smooth < 0.5 * j_raw
    # sigma 0 disables smoothing
    same = align.smooth_params(c, x, y, 0.0, 0.0)
    np.testing.assert_array_equal(same[0], c)


def test_smoothing_never_crosses_a_gap():
    rng = np.random.default_rng(0)
    n = 20
    c, x, y = (rng.normal(size=(n, 2)) for _ in range(3))
    present = np.ones(n, bool)
    present[8:12] = False
    cs, xs, ys = align.smooth_params_segments(c, x, y, present, 1.0, 3.0)
    alone = align.smooth_params(c[:8], x[:8], y[:8], 1.0, 3.0)
    np.testing.assert_allclose(cs[:8], alone[0])
    np.testing.assert_allclose(xs[:8], alone[1])
    assert align.present_runs(present) == [(0, 8), (12, 20)]
    np.testing.assert_array_equal(cs[8:12], c[8:12])  # absent frames untouched


def test_align_stage_contract(tmp_path, dlib_backend):
    frames = render_frames(ClipSpec(frames=10, size=(256, 192)))
    write_clip(tmp_path / "clip.mkv", frames, Fraction(25), codec="ffv1")
    lms = [dlib_backend.detect(f)[0].landmarks for f in frames]
    track = FaceTrack(rate=Fraction(25), image_size=(256, 192), frames=tuple(
        TrackFrame(i, False) if i in (5, 6) else
        TrackFrame(i, True, None, 1.0, tuple(map(tuple, lms[i])))
        for i in range(2, 10)))
    (tmp_path / "stages" / "track").mkdir(parents=True)
    (tmp_path / "stages" / "track" / "facetrack.msgpack").write_bytes(track.to_bytes())
    job = Job(id="a", source=Source("clip.mkv"), range=FrameRange(2, 10, Fraction(25)))
    cfg = PipelineConfig.from_options({"align": {"resolution": 64}})
    ctx = StageContext(job=job, job_dir=tmp_path, config=cfg)
    facts = align.AlignStage().run(ctx)
    assert facts["colour"]["kind"] == "identity"  # Rec.709: crops as decoded
    assert facts == {"frames": 6, "resolution": 64, "mask_source": "hull",
                     "colour": facts["colour"]}
    out = tmp_path / "stages" / "align"
    info = json.loads((out / "info.json").read_text())
    assert info["frames"] == [2, 3, 4, 7, 8, 9] and info["frame_size"] == [256, 192]
    assert info["range"] == [2, 10] and info["mask_source"] == "hull"
    quads = np.load(out / "quads.npy")
    assert quads.shape == (8, 4, 2)
    assert np.isnan(quads[3:5]).all() and not np.isnan(quads[[0, 1, 2, 5, 6, 7]]).any()
    clip_view = AlignedClip(out)
    assert clip_view.quad(5) is None and clip_view.crop(7).shape == (64, 64, 3)
    assert clip_view.mask(7).dtype == bool and clip_view.mask(7).mean() > 0.2
    assert any("landmark hull" in w for w in ctx.warnings)
    # the first run was smoothed on its own: frames 7..9 do not pull on 2..4
    c, x, y = align.ffhq_quad_params(np.stack(lms[2:5]))
    alone = align.quad_from_params(*align.smooth_params(c, x, y, 1.0, 3.0))
    np.testing.assert_allclose(quads[:3], alone)


def test_resolution_must_be_a_power_of_two():
    from fsexchange.errors import DocumentFieldError

    assert align.resolve_resolution(128, "tiny") == 128
    with pytest.raises(DocumentFieldError):
        align.resolve_resolution(300, "tiny")


# --- STIT's pre-shrink (docs/reference.md "Quad and crop") ------------------------


@pytest.mark.parametrize("side, want", [(2000, 1), (2800, 1), (2900, 2), (3200, 2),
                                        (3500, 2), (4400, 3)])
@pytest.mark.parametrize("angle", [0.0, 0.3])
def test_shrink_rule_uses_the_quad_diagonal(side, want, angle):
    c = np.array([6000.0, 5000.0])
    x = side / 2 * np.array([np.cos(angle), np.sin(angle)])
    y = np.array([-x[1], x[0]])
    quad = align.quad_from_params(c, x, y)
    assert align.stit_qsize(quad) == pytest.approx(side * np.sqrt(2))
    assert align.shrink_factor(quad, 1024) == want
    if 2900 <= side <= 3500:  # the side-based rule would warp these unshrunk
        assert int(np.floor(side / 1024 * 0.5)) <= 1


def test_align_crop_shrinks_a_large_face_before_the_warp():
    # At a 256 px crop a quad side of 800 px is what a 3,200 px side is at 1024.
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    quad = align.quad_from_params(np.array([500.0, 490.0]), np.array([400.0, 30.0]),
                                  np.array([-30.0, 400.0]))
    assert align.shrink_factor(quad, 256) == 2
    got = align.align_crop(frame, quad, 256)
    small = cv2.resize(frame, (500, 500), interpolation=cv2.INTER_AREA)
    want = cv2.warpPerspective(small, align.crop_transform((quad + 0.5) / 2 - 0.5, 256),
                               (256, 256), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(got, want)
    direct = cv2.warpPerspective(frame, align.crop_transform(quad, 256), (256, 256),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # the unshrunk warp samples the noise every ~3 px without averaging it
    assert got.std() < 0.8 * direct.std()
