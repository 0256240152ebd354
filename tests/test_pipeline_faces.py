"""Jobs that do not run straight through: a face hidden for a stretch, a cancel in
the middle of PTI, an edit that is not installed."""

from __future__ import annotations

import pytest

import threading
import time

import numpy as np

from test_pipeline_helpers import (FAST_OPTIONS, make_clip, make_job, read_rgba,
                                   run_engine_inprocess, source_frames, submit)

pytestmark = pytest.mark.slow  # real engines / whole pipelines


def test_face_hidden_for_a_stretch_passes_through(tmp_path):
    """Frames 2-4 have a grey card over the face: they come out as the source with
    alpha 0 (``edited`` False); invert/PTI/edit/stitching skip them."""
    import json

    from fsexchange.client import job_status
    from fsexchange.documents import Edit

    n = 7
    clip = make_clip(tmp_path, n, hide=(2, 5))
    opts = dict(FAST_OPTIONS, track={"max_gap": 1}, pti={"steps": 2},
                stitch={"steps": 2, "batch_size": 4}, metrics={"enabled": False})
    ex = tmp_path / "ex"
    jid = submit(ex, make_job("hidden", n, edits=(Edit("age", -4.0),), options=opts),
                 clip)
    run_engine_inprocess(ex)
    st = job_status(ex, jid)
    assert st.state == "done", st.error
    res = st.result
    edited = [f.frame for f in res.frames if f.edited]
    assert edited == [0, 1, 5, 6]
    frames = json.loads((st.folder / "stages" / "invert" / "frames.json").read_text())
    assert frames["frames"] == edited
    assert np.load(st.folder / "stages" / "edit" / "latents.npy").shape[0] == 4
    src = source_frames(clip, n)
    for f in res.frames:
        out = read_rgba(st.folder / f.path)
        if f.edited:
            assert out[..., 3].max() > 0
        else:  # passed through untouched
            assert out[..., 3].max() == 0
            assert np.array_equal(out[..., :3], src[f.frame])


def test_cancel_during_pti(tmp_path):
    from fsexchange.client import cancel_job, job_status

    clip = make_clip(tmp_path, 4)
    opts = dict(FAST_OPTIONS, pti=dict(FAST_OPTIONS["pti"], steps=100000))
    ex = tmp_path / "ex"
    jid = submit(ex, make_job("cancelme", 4, options=opts), clip)
    asked: dict[str, float] = {}

    def cancel_when_in_pti() -> None:
        ckpt = ex / "cur" / jid / "stages" / "pti" / "checkpoint.pt"
        t0 = time.monotonic()
        while not ckpt.exists() and time.monotonic() - t0 < 240:
            time.sleep(0.02)
        asked["t"] = time.monotonic()
        cancel_job(ex, jid)

    th = threading.Thread(target=cancel_when_in_pti, daemon=True)
    th.start()
    run_engine_inprocess(ex)
    took = time.monotonic() - asked["t"]
    th.join()
    st = job_status(ex, jid)
    assert st.state == "cancelled"
    assert st.error["code"] == "cancelled" and st.error["stage"] == "pti"
    print(f"\ncancelled during PTI; the engine stopped {took:.2f} s after the request")
    assert took < 10


def test_unknown_edit_fails_at_submit_and_at_run_time(tmp_path, capsys):
    from fsexchange.client import job_status
    from fsexchange.documents import Edit
    from host_bridge.cli import main

    clip = make_clip(tmp_path, 3)
    ex = tmp_path / "ex"
    rc = main(["submit", str(clip), "--exchange", str(ex), "--profile", "tiny",
               "--copy-media", "--edit", "wings=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "edit.unknown" in err and "wings" in err
    assert not any((ex / "new").glob("*")) if (ex / "new").exists() else True

    # written without the CLI's check: the engine refuses it before any tuning
    jid = submit(ex, make_job("wings", 3, edits=(Edit("wings", 3.0),)), clip)
    run_engine_inprocess(ex)
    st = job_status(ex, jid)
    assert st.state == "failed"
    assert st.error["code"] == "edit.unknown" and st.error["stage"] == "invert"
    assert "wings" in st.error["message"] and "age" in st.error["message"]
    assert not (st.folder / "stages" / "pti").exists()
