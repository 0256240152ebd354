"""The full STIT pipeline on a real-face clip (tiny profile, CPU): one job through
the engine, then each stage's output contract, PTI's and stitching's effect, the
paste-back invariant and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fsexchange.options import PTI_FORMULATIONS
from test_pipeline_helpers import (make_clip, make_job, read_rgba, run_engine_inprocess,
                                   source_frames, submit)

pytestmark = pytest.mark.slow  # real engines / whole pipelines

N = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from fsexchange.client import job_status
    from fsexchange.documents import Edit, Keyframe

    work = tmp_path_factory.mktemp("stitch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESTITCH_HOME", str(work / "home"))
        clip = make_clip(work, N)
        edits = (Edit("age", keyframes=(Keyframe(1, 0.0), Keyframe(4, -6.0)),
                      ease="smooth"),
                 Edit("smile", 2.0),
                 Edit("lipstick", 4.0, space="s"))
        ex = work / "ex"
        jid = submit(ex, make_job("stitch1", N, edits=edits), clip)
        assert run_engine_inprocess(ex) == 1
        st = job_status(ex, jid)
        assert st.state == "done", st.error
        yield {"status": st, "folder": st.folder, "clip": clip, "edits": edits,
               "home": work / "home"}


def _stage(job, name: str) -> Path:
    return job["folder"] / "stages" / name


def test_invert_contract(job):
    from engine.stages.outputs import AlignedClip

    clip = AlignedClip(_stage(job, "align"))
    pivots = np.load(_stage(job, "invert") / "pivots.npy")
    frames = json.loads((_stage(job, "invert") / "frames.json").read_text())["frames"]
    assert frames == clip.frames == list(range(N))
    assert pivots.dtype == np.float32 and pivots.shape == (N, 10, 64)
    assert np.isfinite(pivots).all()
    assert not (_stage(job, "invert") / "parts").exists()  # checkpoint cleaned up
    assert len(list((_stage(job, "invert") / "preview").glob("*.png"))) == 4


PLAN_KEYS = ("recipe", "batch_size", "dtype", "lr", "shuffle", "formulation")


def test_pti_contract_and_effect(job):
    from engine.models.checkpoints import load_generator

    loss = json.loads((_stage(job, "pti") / "loss.json").read_text())
    assert len(loss["passes"]) == 12
    b, a = loss["before"], loss["after"]
    print(f"\nPTI reconstruction over {N} frames: MSE {b['mse']:.4f} -> {a['mse']:.4f},"
          f" LPIPS {b['lpips']:.4f} -> {a['lpips']:.4f}, PSNR {b['psnr']:.2f} -> "
          f"{a['psnr']:.2f} dB")
    assert a["mse"] < 0.5 * b["mse"]
    assert a["lpips"] < 0.7 * b["lpips"]
    assert loss["passes"][-1]["loss"] < loss["passes"][0]["loss"]
    G = load_generator(_stage(job, "pti") / "generator.pt")
    assert G.img_resolution == 64
    assert not (_stage(job, "pti") / "checkpoint.pt").exists()
    # the plan (recipe auto = fast on the tiny profile, batch, precision, lr,
    # order, formulation) resolved once and recorded with the stage
    from engine.devices import resolve_dtype

    settings = json.loads((_stage(job, "pti") / "settings.json").read_text())
    assert settings == {k: loss[k] for k in PLAN_KEYS}
    assert loss["recipe"] == "fast" and loss["shuffle"] is True
    assert loss["batch_size"] == 3 and loss["lr"] == pytest.approx(3e-3)
    assert loss["dtype"] == resolve_dtype("auto", "cpu")
    assert loss["formulation"] in PTI_FORMULATIONS
    config = json.loads((job["folder"] / "config.json").read_text())
    assert config["recipe"] == "fast"


def test_edit_contract(job):
    from engine.models.directions import available_edits
    from engine.stages.edit import strength_curve

    pivots = np.load(_stage(job, "invert") / "pivots.npy")
    lat = np.load(_stage(job, "edit") / "latents.npy")
    assert lat.shape == pivots.shape and lat.dtype == np.float32
    dirs = available_edits("tiny")
    age, smile = job["edits"][0], job["edits"][1]
    k = strength_curve(age, range(N))
    assert k.tolist()[:2] == [0.0, 0.0] and k[4] == -6.0 and k[5] == -6.0
    # w + (strength/2)·d for each W edit, summed (STIT; docs/reference.md)
    for i in range(N):
        want = (pivots[i] + k[i] / 2 * dirs["age"].vector
                + smile.strength / 2 * dirs["smile"].vector)
        np.testing.assert_allclose(lat[i], want, atol=1e-5)
    with np.load(_stage(job, "edit") / "styles.npz") as z:  # the S-space edit
        assert len(z.files) == 14 and z["s00"].shape == (N, 64)
    curves = json.loads((_stage(job, "edit") / "curves.json").read_text())
    assert [e["name"] for e in curves["edits"]] == ["age", "smile", "lipstick"]


def test_refine_with_an_s_space_edit(job):
    """The refinement carries S-space edits: its styles are the refined generator's
    styles of the refined latents plus the edit's S offsets, which stitching tuning
    then renders."""
    import torch

    rf = _stage(job, "refine")
    from engine.models.checkpoints import load_generator

    G0 = load_generator(_stage(job, "pti") / "generator.pt")
    G = load_generator(rf / "generator.pt")
    lat0 = np.load(_stage(job, "edit") / "latents.npy")
    lat = np.load(rf / "latents.npy")
    with np.load(_stage(job, "edit") / "styles.npz") as z0, \
            np.load(rf / "styles.npz") as z:
        assert sorted(z.files) == sorted(z0.files)
        with torch.no_grad():
            s0 = G0.styles(torch.from_numpy(lat0))
            s = G.styles(torch.from_numpy(lat))
        for k in range(len(z.files)):
            np.testing.assert_allclose(z[f"s{k:02d}"] - s[k].numpy(),
                                       z0[f"s{k:02d}"] - s0[k].numpy(), atol=1e-4)


def test_stitch_contract_and_border(job):
    from engine.stages.outputs import crop_name

    st = _stage(job, "stitch_tune")
    for f in range(N):
        crop = read_rgba(st / "crops" / crop_name(f))
        alpha = read_rgba(st / "alpha" / crop_name(f))
        assert crop.shape == (64, 64, 3) and crop.dtype == np.uint16
        assert alpha.shape == (64, 64) and alpha.dtype == np.uint8
        assert alpha.max() > 0 and alpha.min() == 0
    s = json.loads((st / "summary.json").read_text())
    print(f"\nBorder error, mean over {N} frames: naive paste {s['border_before']:.4f} "
          f"-> stitching-tuned {s['border_after']:.4f}")
    assert s["border_after"] < 0.8 * s["border_before"]
    assert all(a < b for a, b in zip(s["after"], s["before"]))
    assert s["steps"] == [16] * N
    assert not (st / "parts").exists()
    settings = json.loads((st / "settings.json").read_text())
    assert settings == {k: s[k] for k in PLAN_KEYS}
    assert s["recipe"] == "fast" and s["formulation"] in ("grouped", "loop", "vmap")


def test_outside_alpha_is_source(job):
    """Outside the alpha mask every output pixel is the source pixel, exactly."""
    res = job["status"].result
    src = source_frames(job["clip"], N)
    assert len(res.frames) == N and all(f.edited for f in res.frames)
    inside = 0
    for fo, s in zip(res.frames, src):
        out = read_rgba(job["folder"] / fo.path)
        assert out.shape == s.shape[:2] + (4,) and out.dtype == np.uint16
        zero = out[..., 3] == 0
        assert zero.any() and (~zero).any()
        assert np.array_equal(out[zero][:, :3], s[zero])
        inside += int((~zero).sum())
    assert inside > 0


def test_result_and_report(job):
    res = job["status"].result
    assert [s.name for s in res.stages] == ["track", "align", "invert", "pti", "edit",
                                           "refine", "stitch_tune", "paste", "report"]
    assert res.outputs["report"] == "output/report.html"
    for key in ("tl_id", "tg_id", "warp_error", "warp_error_source",
                "refine_warp_error_before", "refine_warp_error_after",
                "refine_lpips_to_direct_edit"):
        assert key in res.metrics
    assert res.models.get("tiny") is True
    assert any("tiny test networks" in w for w in res.warnings)
    html = (job["folder"] / "output" / "report.html").read_text()
    assert "tiny test networks — not a real edit" in html
    assert html.count("data:image/png;base64,") >= 4 * 7  # filmstrip: 4 frames
    assert html.count("<svg") >= 5  # PTI, refinement, stitching, strengths, metrics
    for word in ("inversion (e4e)", "PTI reconstruction", "refined", "stitched",
                 "alpha", "final", "Stage timings", "stitch_tune", "TL-ID",
                 "Temporal refinement", "x-t slice direct edit",
                 "fast (mini-batches", "recipe fast"):
        assert word in html, word
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
