"""Draft jobs through the real engine (tiny profile, CPU): the output contract
(sheet, a folder per strength, frames numbered by source frame), the strengths in
order on the sheet, networks loaded once for several drafts; and ``--no-stitch``
full jobs, whose frames are the edit pasted back naively."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from test_pipeline_helpers import (FAST_OPTIONS, make_clip, make_job, read_rgba,
                                   run_engine_inprocess, source_frames, submit)

pytestmark = pytest.mark.slow  # real engines / whole pipelines

N = 8
TILE = 96
TC = "00:00:10:00"  # 250 frames at 25 fps: output numbers are 250 + frame


def _draft_job(job_id: str, draft: dict, edits=()):
    from fsexchange.documents import FrameRange, Job, Source

    return Job(id=job_id, kind="draft", source=Source("media/clip.mp4"),
               range=FrameRange(0, N, Fraction(25), TC), edits=tuple(edits),
               options={"profile": "tiny", "device": "cpu",
                        "draft": {"tile": TILE, **draft}})


@pytest.fixture(scope="module")
def drafts(tmp_path_factory):
    """Two drafts run by one engine: a 3-strength sweep on the default 5 frames,
    and a 2x2 grid with a short PTI on chosen frames."""
    from engine.models import cache
    from fsexchange.client import job_status

    work = tmp_path_factory.mktemp("draft")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESTITCH_HOME", str(work / "home"))
        clip = make_clip(work, N)
        ex = work / "ex"
        first = submit(ex, _draft_job("draft1", {"sweep": "age=-8:8:3"}), clip)
        second = submit(ex, _draft_job("draft2", {
            "sweep": "age=-4:4:2; smile=0:2:2", "frames": [1, 6], "pti_steps": 2}),
            clip)
        # sent without the bridge's checks: the engine refuses it as data
        bad = submit(ex, _draft_job("draft3", {"sweep": "no_such_edit=-1:1:2"}), clip)
        before = cache.stats()
        assert run_engine_inprocess(ex) == 3
        after = cache.stats()
        out = {}
        for jid in (first, second, bad):
            st = job_status(ex, jid)
            assert st.state == ("failed" if jid == bad else "done"), st.error
            out[jid] = st
        yield {"jobs": out, "clip": clip, "loads": after["loads"] - before["loads"],
               "hits": after["hits"] - before["hits"]}


def test_draft_output_contract(drafts):
    from fsexchange.fsutil import sha256_file

    st = drafts["jobs"]["draft1"]
    res, folder = st.result, st.folder
    assert [s.name for s in res.stages] == ["track", "align", "invert", "sweep"]
    assert [v.label for v in res.variants] == ["age -8", "age 0", "age 8"]
    assert [v.strengths for v in res.variants] == [(("age", -8.0),), (("age", 0.0),),
                                                   (("age", 8.0),)]
    assert [v.folder for v in res.variants] == [
        "output/sweep/r00_age-8", "output/sweep/r01_age0", "output/sweep/r02_age+8"]
    frames = [0, 2, 4, 5, 7]  # 5 spread over 0..7, first and last included
    src = dict(zip(range(N), source_frames(drafts["clip"], N)))
    for v in res.variants:
        assert [f.frame for f in v.frames] == frames
        assert [f.path for f in v.frames] == [
            f"{v.folder}/facestitch.{250 + f:07d}.png" for f in frames]
        assert sorted(p.name for p in (folder / v.folder).iterdir()) == [
            Path(f.path).name for f in v.frames]
        for f in v.frames:
            assert f.edited and sha256_file(folder / f.path) == f.sha256
            rgba = read_rgba(folder / f.path)
            assert rgba.shape == (144, 192, 4) and rgba.dtype == np.uint16
            off = rgba[..., 3] == 0
            assert 0.3 < off.mean() < 0.99  # a face-sized layer, the rest clear
            # where the layer is clear it is the source, bit for bit
            assert np.array_equal(rgba[off][:, :3], src[f.frame][off])
    assert res.frames == res.variants[1].frames  # the middle row
    # the strengths really differ inside the face
    a, b = (read_rgba(folder / v.frames[2].path) for v in res.variants[::2])
    inside = (a[..., 3] == 65535) & (b[..., 3] == 65535)
    assert np.abs(a[inside, :3].astype(float) - b[inside, :3]).mean() > 300
    assert res.outputs == {"sheet": "output/sweep.png",
                           "sheet_layout": "output/sweep.json"}
    assert any("tiny test networks" in w for w in res.warnings)
    layout = json.loads((folder / "output" / "sweep.json").read_text())
    assert [r["label"] for r in layout["rows"]] == ["source", "age -8", "age 0",
                                                    "age 8"]
    assert [c["frame"] for c in layout["columns"]] == frames
    from engine.media.video import read_image

    sheet = read_image(folder / "output" / "sweep.png")
    assert sheet.shape == (layout["rows"][-1]["y1"], layout["columns"][-1]["x1"], 3)
    assert layout["rows"][-1]["y1"] == 28 + 4 * TILE


def test_the_sweeps_strengths_appear_in_order_on_the_sheet(drafts):
    """Each sheet row shows its own strength: every tile is closest to the face
    cut back out of that strength's full-resolution frame."""
    import cv2

    from engine.media.composite import composite_over
    from engine.media.video import read_image
    from engine.stages.align import align_crop
    from engine.stages.outputs import JobFiles

    st = drafts["jobs"]["draft1"]
    folder, res = st.folder, st.result
    layout = json.loads((folder / "output" / "sweep.json").read_text())
    sheet = read_image(folder / "output" / "sweep.png").astype(np.float32)
    clip = JobFiles(folder).align.clip()
    src = dict(zip(range(N), source_frames(drafts["clip"], N)))
    for j, col in enumerate(layout["columns"]):
        f = col["frame"]
        cut = []
        for v in res.variants:  # the strength's own frame, cut back to face scale
            frame = composite_over(read_rgba(folder / v.frames[j].path), src[f])
            face = align_crop(frame, clip.quad(f), clip.resolution)
            cut.append(cv2.resize(face.astype(np.float32) / 257.0 if face.dtype ==
                                  np.uint16 else face.astype(np.float32),
                                  (TILE, TILE), interpolation=cv2.INTER_LINEAR))
        for i, row in enumerate(layout["rows"][1:]):
            assert row["folder"] == res.variants[i].folder
            assert row["strengths"] == [list(s) for s in res.variants[i].strengths]
            tile = sheet[row["y0"]:row["y1"], col["x0"]:col["x1"]]
            errors = [float(np.abs(tile - c).mean()) for c in cut]
            assert int(np.argmin(errors)) == i, (f, row["label"], errors)
            assert errors[i] < 12  # two bilinear warps apart, out of 255


def test_a_grid_sweep_on_chosen_frames_with_a_short_pti(drafts):
    from engine.stages.outputs import JobFiles

    st = drafts["jobs"]["draft2"]
    res = st.result
    assert [s.name for s in res.stages] == ["track", "align", "invert", "pti",
                                            "sweep"]
    assert [v.label for v in res.variants] == [
        "age -4, smile 0", "age -4, smile 2", "age 4, smile 0", "age 4, smile 2"]
    assert res.variants[3].folder == "output/sweep/r03_age+4_smile+2"
    files = JobFiles(st.folder)
    assert [fr.frame for fr in files.track.facetrack().frames] == [1, 6]
    assert files.align.clip().frames == [1, 6] == files.invert.frames()
    assert len(files.pti.loss()["passes"]) == 2  # draft.pti_steps, not pti.steps
    for v in res.variants:
        assert [f.frame for f in v.frames] == [1, 6]


def test_a_swept_edit_that_is_not_installed_fails_the_draft_as_data(drafts):
    st = drafts["jobs"]["draft3"]
    assert (st.error["code"], st.error["stage"]) == ("edit.unknown", "invert")
    assert "no_such_edit" in st.error["message"] and "age" in st.error["message"]


def test_a_running_engine_loads_the_networks_once_for_several_drafts(drafts):
    # the model set, the face masker and the face detector, once, for both
    # drafts; every other stage of either draft took them from the cache
    assert drafts["loads"] == 3
    assert drafts["hits"] >= 8


def test_the_model_cache_reloads_when_a_store_file_changes(tmp_path, monkeypatch):
    import os

    from engine.models.modelset import cached_models
    from engine.models.store import Store

    monkeypatch.setenv("FACESTITCH_HOME", str(tmp_path / "home"))
    a = cached_models("tiny", "cpu")
    assert cached_models("tiny", "cpu") is a
    gen = Store().tiny_dir / "generator.pt"
    st = gen.stat()
    os.utime(gen, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    b = cached_models("tiny", "cpu")
    assert b is not a  # replaced underneath: loaded again
    assert cached_models("tiny", "cpu") is b
    # a new direction installed: the edit list must not be the stale one
    d = Store().directions_dir("tiny")
    (d / "age.json").write_text((d / "age.json").read_text())
    assert cached_models("tiny", "cpu") is not b


# --- --no-stitch --------------------------------------------------------------------


@pytest.fixture(scope="module")
def naive(tmp_path_factory):
    from fsexchange.client import job_status
    from fsexchange.documents import Edit

    work = tmp_path_factory.mktemp("nostitch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESTITCH_HOME", str(work / "home"))
        clip = make_clip(work, 4)
        options = {**FAST_OPTIONS, "pti": {**FAST_OPTIONS["pti"], "steps": 1},
                   "stitch": {"tune": False}, "metrics": {"enabled": False},
                   "refine": {"enabled": False}}  # STIT's edit_video.py, unrefined
        ex = work / "ex"
        jid = submit(ex, make_job("naive1", 4, edits=(Edit("age", -8.0),),
                                  options=options), clip)
        assert run_engine_inprocess(ex) == 1
        st = job_status(ex, jid)
        assert st.state == "done", st.error
        yield {"status": st, "clip": clip, "home": work / "home"}


def test_no_stitch_pastes_the_edited_faces_naively(naive):
    import torch

    from engine.stages.outputs import JobFiles
    from engine.stages.paste import paste_back
    from engine.stages.render import naive_alpha
    from engine.stages.stitch_tune import load_edit_styles

    st = naive["status"]
    folder = st.folder
    assert [s.name for s in st.result.stages] == [
        "track", "align", "invert", "pti", "edit", "refine", "render", "paste",
        "report"]
    files = JobFiles(folder)
    assert not files.stitch_tune.folder.exists()
    clip = files.align.clip()
    frames = files.edit.frames()
    # the render is the PTI generator at the edited latents, untuned
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESTITCH_HOME", str(naive["home"]))
        G = files.pti.generator()
        with torch.no_grad():
            want = G.synthesis_from_styles(load_edit_styles(G, files.edit,
                                                            range(len(frames)), "cpu"))
    from engine.media.video import read_image
    from engine.stages.crops import tensor_to_image

    src = dict(zip(range(4), source_frames(naive["clip"], 4)))
    by_frame = {f.frame: f for f in st.result.frames}
    for i, f in enumerate(frames):
        got = read_image(files.render.crop(f))
        assert np.array_equal(got, tensor_to_image(want[i], depth=16))
        alpha = read_image(files.render.alpha(f))  # 8-bit, as paste reads it
        assert np.array_equal(alpha, np.round(naive_alpha(clip.mask(f)) * 255
                                              ).astype(np.uint8))
        out = read_rgba(folder / by_frame[f].path)
        assert np.array_equal(out, paste_back(src[f], got, alpha, clip.quad(f)))
        # and it is the edit, not the source: it differs from an identity paste
        # of the aligned crop inside the face
        identity = paste_back(src[f], clip.crop(f), alpha, clip.quad(f))
        inside = out[..., 3] > 60000
        assert inside.mean() > 0.05
        diff = np.abs(out[inside, :3].astype(float) - identity[inside, :3]).mean()
        assert diff > 2000, diff  # out of 65535
    assert any("--no-stitch" in w for w in st.result.warnings)
    report = (folder / "output" / "report.html").read_text()
    assert "edit, untuned" in report
