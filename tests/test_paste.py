"""engine.stages.paste: exact pass-through outside alpha, compositing,
formats, stage."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from fractions import Fraction

import cv2
import numpy as np
import pytest

from clips import ClipSpec, render_frames, write_clip
from engine.media import video
from fsexchange import media
from engine.stages.align import AlignStage
from fsexchange.options import PipelineConfig
from engine.stages.mask import paste_alpha
from engine.media.composite import composite_over
from engine.stages.paste import PasteStage, paste_back
from engine.stages.contract import StageContext
from engine.stages.track import TrackStage
from fsexchange.documents import FrameRange, Job, OutputSpec, Source

RATE = Fraction(24000, 1001)
TC = "01:00:00:00"


def test_paste_back_passes_the_source_through_exactly():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (181, 243, 3), dtype=np.uint8)
    crop = np.zeros((128, 128, 3), np.uint8)
    crop[:] = (200, 30, 90)
    m = np.zeros((128, 128), bool)
    m[30:100, 35:95] = True
    alpha = paste_alpha(m)
    # a rotated quad that leaves the frame on the left
    c, x = np.array([40.0, 90.0]), np.array([70.0, 25.0])
    y = np.array([-x[1], x[0]])
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    rgba = paste_back(frame, crop, alpha, quad)
    assert rgba.shape == (181, 243, 4) and rgba.dtype == np.uint16
    off = rgba[..., 3] == 0
    assert off.mean() > 0.5
    np.testing.assert_array_equal(rgba[off, :3], frame[off].astype(np.uint16) * 257)
    on = rgba[..., 3] > 0
    # premultiplied warp: a flat colour stays that colour even where alpha fades
    assert np.abs(rgba[on, :3].astype(int) - crop[0, 0].astype(int) * 257).max() <= 257
    # compositing reproduces a·layer + (1 - a)·source
    comp = composite_over(rgba, frame)
    a = rgba[..., 3:4] / 65535.0
    expect = a * rgba[..., :3] / 65535.0 * 255 + (1 - a) * frame
    assert np.abs(comp.astype(float) - expect).max() <= 0.51
    np.testing.assert_array_equal(comp[off], frame[off])


@pytest.fixture(scope="module")
def preview_job(tmp_path_factory):
    """An align-preview job on a hard real-face clip: the astronaut moves, rotates,
    zooms and partly leaves the frame on the right, a second face sits in a
    corner, and a grey card hides the face for 10 frames (longer than max_gap)."""
    d = tmp_path_factory.mktemp("pastejob")
    spec = ClipSpec(frames=26, rotate=12, zoom=0.12, exit_right=90, second_face=True,
                    hide=(8, 18), stamp=True)
    write_clip(d / "shot.mov", render_frames(spec), RATE, start_timecode=TC)
    job = Job(id="p", kind="align-preview", source=Source("shot.mov"),
              range=FrameRange(2, 26, RATE, TC), options={})
    cfg = PipelineConfig.from_options({"align": {"resolution": 128},
                                       "track": {"backend": "dlib", "max_gap": 4}})
    # --face 1: the astronaut (Grace Hopper's face in the corner is larger)
    job = replace(job, subject=replace(job.subject, index=1))
    ctx = StageContext(job=job, job_dir=d, config=cfg)
    facts = {}
    for stage in (TrackStage(), AlignStage(), PasteStage()):
        facts[stage.name] = stage.run(ctx)
    return d, job, cfg, facts, ctx


def test_outside_alpha_the_output_is_the_source_exactly(preview_job):
    d, job, _, facts, ctx = preview_job
    frames = facts["paste"]["frames"]
    assert [f["frame"] for f in frames] == list(range(2, 26))
    source = dict(video.read_frames(d / "shot.mov", 2, 26))
    edited = {f["frame"]: f["edited"] for f in frames}
    assert not any(edited[i] for i in range(8, 18))  # the hidden stretch
    assert all(edited[i] for i in range(2, 8))
    worst_inside = 0.0
    for f in frames:
        path = d / f["path"]
        assert path.name == video.output_name(job, f["frame"], "png")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
        rgba = video.read_image(path)
        src = source[f["frame"]]
        assert rgba.shape == src.shape[:2] + (4,) and rgba.dtype == np.uint16
        off = rgba[..., 3] == 0
        # exact: the 16-bit RGB is the 8-bit source scaled by 257
        np.testing.assert_array_equal(rgba[off, :3], src[off].astype(np.uint16) * 257)
        if not f["edited"]:
            assert off.all()
        else:
            on = rgba[..., 3] > 0
            assert 0.02 < on.mean() < 0.5
            # identity paste: compositing the layer gives back the source
            diff = np.abs(composite_over(rgba, src).astype(float) - src)[on].mean()
            worst_inside = max(worst_inside, diff)
    print(f"identity paste, worst mean |composite - source| inside alpha: "
          f"{worst_inside:.2f} levels")
    assert worst_inside < 4.0
    assert any("missing in 10" in w for w in ctx.warnings)


def test_preview_movie_and_contact_sheet(preview_job):
    d, _, _, facts, _ = preview_job
    outputs = facts["paste"]["outputs"]
    assert outputs == {"preview": "output/preview.mp4",
                       "contact_sheet": "output/contact_sheet.png",
                       "network_view": "output/network_view.png"}
    info = media.probe(d / outputs["preview"])
    assert info.frame_count == 24 and info.rate == RATE
    sheet = cv2.imread(str(d / outputs["contact_sheet"]))
    assert sheet.shape == (3 * 128, 8 * 128, 3)


def _rerun(preview_job, tmp_path, output: OutputSpec):
    d, job, cfg, _, _ = preview_job
    shutil.copytree(d / "stages", tmp_path / "stages")
    shutil.copy(d / "shot.mov", tmp_path / "shot.mov")
    job = replace(job, output=output, kind="stitch")
    ctx = StageContext(job=job, job_dir=tmp_path, config=cfg)
    return job, PasteStage().run(ctx)


def test_exr_and_pam_outputs(preview_job, tmp_path):
    job, facts = _rerun(preview_job, tmp_path / "exr", OutputSpec(format="exr",
                                                                  start_number=1001))
    first = facts["frames"][0]
    assert first["path"] == "output/facestitch.0001001.exr"
    exr = video.read_image(tmp_path / "exr" / first["path"])
    png_path = preview_job[0] / preview_job[3]["paste"]["frames"][0]["path"]
    png = video.read_image(png_path)
    straight = png.astype(np.float64) / 65535
    # EXR is scene-linear: Rec.709 video linearised by its BT.1886 EOTF (a pure
    # 2.4 power for a display with black at 0), premultiplied
    premul = straight[..., :3] ** 2.4 * straight[..., 3:]
    assert np.abs(exr[..., :3] - premul).max() < 2e-3
    import OpenEXR

    with OpenEXR.File(str(tmp_path / "exr" / first["path"])) as f:
        header = f.header()  # valid while the file is open
        assert header["framesPerSecond"] == RATE
        tc = header["timeCode"]
        assert (tc.hours, tc.minutes, tc.seconds, tc.frame) == (1, 0, 0, 2)
        np.testing.assert_allclose(
            header["chromaticities"],
            (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290), atol=1e-6)
    assert "contact_sheet" not in facts["outputs"]  # only align-preview jobs
    _, facts = _rerun(preview_job, tmp_path / "pam", OutputSpec(format="pam16",
                                                                preview=False))
    first = facts["frames"][0]
    pam = video.read_image(tmp_path / "pam" / first["path"])
    np.testing.assert_array_equal(pam, png)
    assert facts["outputs"] == {}


def test_prores4444_is_one_movie(preview_job, tmp_path):
    _, facts = _rerun(preview_job, tmp_path, OutputSpec(format="prores4444",
                                                        preview=False))
    movie = tmp_path / "output" / "facestitch.mov"
    assert facts["outputs"] == {"movie": "output/facestitch.mov"}
    assert {f["path"] for f in facts["frames"]} == {"output/facestitch.mov"}
    info = media.probe(movie)
    assert info.has_alpha and info.frame_count == 24 and info.rate == RATE


def test_stitch_tune_crops_are_pasted_when_present(preview_job, tmp_path):
    d = preview_job[0]
    tuned = tmp_path / "stages" / "stitch_tune"
    (tuned / "crops").mkdir(parents=True)
    for f in range(2, 8):
        crop = np.zeros((128, 128, 3), np.uint16)
        crop[:] = (65535, 0, 0)
        video.write_rgba(tuned / "crops" / f"{f:07d}.png", crop)  # RGBA is fine too
    (tuned / "DONE.msgpack").write_bytes(b"\x80")
    shutil.copytree(d / "stages" / "align", tmp_path / "stages" / "align")
    shutil.copytree(d / "stages" / "track", tmp_path / "stages" / "track")
    shutil.copy(d / "shot.mov", tmp_path / "shot.mov")
    job, cfg = preview_job[1], preview_job[2]
    ctx = StageContext(job=replace(job, range=FrameRange(2, 8, RATE, TC)),
                       job_dir=tmp_path, config=cfg)
    facts = PasteStage().run(ctx)
    rgba = video.read_image(tmp_path / facts["frames"][3]["path"])
    full = rgba[..., 3] == 65535
    assert full.sum() > 500
    assert np.all(rgba[full, 0] > 65000) and np.all(rgba[full, 1] < 500)
