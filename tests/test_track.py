"""engine.stages.track: backends, identities across frames, subject choice,
gaps, no face."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from clips import FACE_CENTRES, ClipSpec, face_image, render_frames, write_clip
from engine import faces
from engine.stages import track as tr
from fsexchange.options import PipelineConfig, TrackConfig
from engine.stages.contract import StageContext
from fsexchange.documents import (FaceTrack, FrameRange, Job, Source, Subject,
                                  TrackFrame, load_document)
from fsexchange.errors import (DocumentFieldError, ModelMissing, NoFaceFound,
                               SubjectInvalid)


@pytest.fixture(scope="module")
def dlib_backend():
    return faces.DlibBackend(upsample=1, min_score=0.0)


@pytest.fixture(scope="module")
def two_faces(dlib_backend):
    """Astronaut (moving, rotating, zooming) + Grace Hopper's face in a corner."""
    spec = ClipSpec(frames=12, rotate=10, zoom=0.1, second_face=True)
    frames = render_frames(spec)
    return frames, tr.follow_identities(enumerate(frames), dlib_backend)


def _inter_ocular(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_dlib_finds_real_faces(dlib_backend, name):
    dets = [d for d in dlib_backend.detect(face_image(name)) if d.score > 0.5]
    assert len(dets) == 1
    d = dets[0]
    assert d.landmarks.shape == (68, 2)
    x0, y0, x1, y1 = d.box
    assert np.all(d.landmarks >= [x0 - 10, y0 - 20])
    assert np.all(d.landmarks <= [x1 + 10, y1 + 15])
    assert abs(d.centre[0] - FACE_CENTRES[name][0]) < 30


def test_identities_are_followed_and_chosen(two_faces):
    frames, identities = two_faces
    assert len(identities) == 2
    assert all(len(i.detections) == 12 for i in identities)
    biggest, facts = tr.choose_subject(identities)  # default: the largest
    assert facts["faces_at_first"] == 2 and facts["index"] == 0
    astro, _ = tr.choose_subject(identities, Subject(index=1))
    assert astro is not biggest
    # the astronaut sits near the clip centre, Grace Hopper in the lower-left corner
    assert astro.detections[5].centre[0] > biggest.detections[5].centre[0]
    c = astro.detections[7].centre
    by_point, _ = tr.choose_subject(identities, Subject(point=(7.0, c[0], c[1])))
    assert by_point is astro
    box = (3.0, *astro.detections[3].box)
    by_box, _ = tr.choose_subject(identities, Subject(box=box))
    assert by_box is astro
    with pytest.raises(SubjectInvalid) as exc:
        tr.choose_subject(identities, Subject(index=2))
    assert exc.value.code == "face.subject_invalid"
    assert "only 2 face" in exc.value.message
    with pytest.raises(SubjectInvalid):
        tr.choose_subject(identities, Subject(point=(7.0, 1.0, 1.0)))
    # identities never swap: the astronaut's box moves smoothly
    centres = np.stack([astro.detections[i].centre for i in range(12)])
    assert np.abs(np.diff(centres, axis=0)).max() < 15


def test_default_subject_first_is_the_detectors_first_face(two_faces):
    _, identities = two_faces
    first, facts = tr.choose_subject(identities, default="first")
    assert first.id == min(i.id for i in identities)  # numbered in detection order
    assert facts["default_subject"] == "first"
    largest, _ = tr.choose_subject(identities, default="largest")
    # an explicit index still counts by size, whatever the default
    assert tr.choose_subject(identities, Subject(index=0), default="first")[0] \
        is largest
    with pytest.raises(DocumentFieldError) as exc:
        tr.choose_subject(identities, default="biggest")
    assert exc.value.field == "options.track.default_subject"


def test_short_gap_interpolated_long_gap_passes_through(dlib_backend):
    frames = render_frames(ClipSpec(frames=20, hide=(4, 14)))
    (ident,) = tr.follow_identities(enumerate(frames), dlib_backend)
    raw = tr.subject_track(ident, 0, 20)
    assert [f.frame for f in raw if not f.present] == list(range(4, 14))
    kept = tr.fill_gaps(raw, max_gap=8)  # 10 frames: too long, untouched
    assert [f.frame for f in kept if not f.present] == list(range(4, 14))
    assert not any(f.interpolated for f in kept)
    filled = tr.fill_gaps(raw, max_gap=10)
    assert all(f.present for f in filled)
    assert [f.frame for f in filled if f.interpolated] == list(range(4, 14))
    mid = np.asarray(filled[9].landmarks)
    a, b = np.asarray(raw[3].landmarks), np.asarray(raw[14].landmarks)
    np.testing.assert_allclose(mid, a + (b - a) * 6 / 11)
    # no extrapolation at the ends
    ends = tr.fill_gaps([TrackFrame(0, False)] + raw[:3] + [TrackFrame(3, False)], 8)
    assert not ends[0].present and not ends[-1].present


def _stage(tmp_path, clip, start, end, **options):
    job = Job(id="t", source=Source(clip.name), range=FrameRange(start, end,
                                                                  Fraction(25)),
              subject=Subject(**options.pop("subject", {})))
    cfg = PipelineConfig.from_options({"track": {"backend": "dlib", **options}})
    return StageContext(job=job, job_dir=tmp_path, config=cfg)


def test_face_leaving_the_frame_never_crashes(tmp_path):
    frames = render_frames(ClipSpec(frames=16, exit_right=220, drift=(0.0, 0.0)))
    clip = write_clip(tmp_path / "exit.mp4", frames, Fraction(25))
    ctx = _stage(tmp_path, clip, 0, 16)
    facts = tr.TrackStage().run(ctx)
    doc = load_document(tmp_path / "stages" / "track" / "facetrack.msgpack", FaceTrack)
    present = [f.frame for f in doc.frames if f.present]
    assert present[0] == 0 and 16 > len(present) >= 8
    assert not doc.frames[-1].present  # it left the frame for good
    assert facts["frames"] == 16 and facts["backend"] == "dlib"
    assert any("missing" in w for w in ctx.warnings)
    assert doc.image_size == (320, 240) and doc.rate == Fraction(25)


def test_clip_without_a_face_fails_with_its_own_code(tmp_path):
    frames = render_frames(ClipSpec(frames=5, hide=(0, 5)))
    clip = write_clip(tmp_path / "none.mp4", frames, Fraction(25))
    with pytest.raises(NoFaceFound) as exc:
        tr.TrackStage().run(_stage(tmp_path, clip, 0, 5))
    assert exc.value.code == "face.not_found"


def test_stage_uses_a_given_track(tmp_path):
    lm = tuple((float(i), float(i)) for i in range(68))
    given = FaceTrack(rate=Fraction(25), image_size=(64, 48), frames=(
        TrackFrame(10, True, None, 1.0, lm), TrackFrame(12, True, None, 1.0, lm)),
        backend="bridge-dlib")
    (tmp_path / "ft.msgpack").write_bytes(given.to_bytes())
    ctx = _stage(tmp_path, tmp_path / "unused.mov", 9, 14,
                 subject={"track": "ft.msgpack"})
    facts = tr.TrackStage().run(ctx)
    doc = load_document(tmp_path / "stages" / "track" / "facetrack.msgpack", FaceTrack)
    assert [f.frame for f in doc.frames] == [9, 10, 11, 12, 13]
    assert [f.present for f in doc.frames] == [False, True, True, True, False]
    assert doc.frames[2].interpolated and doc.backend == "bridge-dlib"
    assert facts["interpolated"] == 1


# --- face-alignment ------------------------------------------------------------------


def test_face_alignment_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelMissing) as exc:
        faces.make_backend(TrackConfig(backend="face-alignment"))
    msg = exc.value.message
    assert faces.FAN_FILE in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert exc.value.code == "model.missing"
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / faces.FAN_FILE).exists()
    assert faces.make_backend(TrackConfig(backend="auto")).name == "dlib"


def test_dlib_is_the_default_even_with_face_alignment_weights(tmp_path, monkeypatch):
    # STIT and FFHQ use dlib's landmarks; face-alignment is only taken when asked for
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / faces.FAN_FILE).write_bytes(b"not a network")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert TrackConfig().backend == "dlib"
    assert faces.make_backend(TrackConfig()).name == "dlib"


@pytest.fixture
def test_built_fan(tmp_path, monkeypatch):
    """face-alignment's own FAN class with seeded random weights, placed where
    face-alignment looks; downloading anything fails the test. One hourglass stack
    instead of the released four keeps the test fast on 2 cores (the released
    network is FAN(4): same blocks, same input/output shapes)."""
    torch = pytest.importorskip("torch")
    fa = pytest.importorskip("face_alignment")
    from face_alignment import api as fa_api
    from face_alignment import utils as fa_utils
    from face_alignment.models import FAN

    def refuse(*args, **kwargs):
        raise AssertionError("face-alignment tried to download")

    monkeypatch.setattr(fa_utils, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dest = tmp_path / "torch" / "hub" / "checkpoints" / faces.FAN_FILE
    dest.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(1).state_dict(), dest)
    monkeypatch.setattr(fa_api, "FAN", lambda network_size: FAN(1))
    # face-alignment's two numba kernels take 5-20 s to JIT-compile; run their
    # Python originals instead (same arithmetic, 68 points per face).
    for name in ("_get_preds_fromhm", "transform_np"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name).py_func)
    return fa


def test_face_alignment_runs_with_test_built_weights(test_built_fan, dlib_backend):
    """The face-alignment path end to end (weights check, FaceAlignment built with
    compile=False and flip_input=True, dlib boxes in, 68 points out). Random
    weights give meaningless points: only the contract is checked here."""
    backend = faces.make_backend(TrackConfig(backend="auto", min_score=0.5), "cpu")
    assert backend.name == "face-alignment"
    img = face_image("astronaut")
    dets = backend.detect(img)
    boxes = [b for b, s in dlib_backend.boxes(img) if s > 0.5]
    assert len(boxes) == 1
    assert [d.box for d in dets] == boxes  # same faces as the dlib backend sees
    for d in dets:
        assert d.landmarks.shape == (68, 2) and np.isfinite(d.landmarks).all()
        x0, y0, x1, y1 = d.box
        w, h = x1 - x0, y1 - y0
        # FAN predicts inside its crop around the box (about 1.7 box sizes wide)
        assert np.all(d.landmarks >= [x0 - w, y0 - h]) and np.all(
            d.landmarks <= [x1 + w, y1 + h])
    frames = render_frames(ClipSpec(frames=2, size=(256, 192)))
    (ident,) = tr.follow_identities(enumerate(frames), backend)
    assert sorted(ident.detections) == [0, 1]


#: Agreement tolerance between the backends: mean point distance over the
#: inter-ocular distance (NME). 68-point methods differ by a few percent on frontal
#: faces; FAN's 64 px heatmaps alone quantise to ~2 % of this face size.
AGREEMENT_NME = 0.08


def test_backends_agree_on_real_faces(dlib_backend, monkeypatch):
    if not faces.fan_weights_path().is_file():
        pytest.skip(f"real face-alignment weights are not installed "
                    f"({faces.fan_weights_path()}); its code path is covered by "
                    "test_face_alignment_runs_with_test_built_weights")
    fa = faces.FaceAlignmentBackend("cpu")
    for name in ("astronaut", "grace_hopper"):
        img = face_image(name)
        a = max(dlib_backend.detect(img), key=lambda d: d.score)
        b = max(fa.detect(img), key=lambda d: d.score)
        nme = np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean() / _inter_ocular(
            a.landmarks)
        print(f"{name}: dlib vs face-alignment NME {nme:.3f}")
        assert nme < AGREEMENT_NME
