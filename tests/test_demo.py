"""``facestitch demo``: the round trip on the astronaut clip, shortened."""

from __future__ import annotations

import pytest

from engine.commands.demo import run_demo
from engine.media.samples import astronaut_clip

pytestmark = pytest.mark.slow  # real engines / whole pipelines


def test_astronaut_clip_has_a_face(tmp_path):
    from fsexchange.media import probe

    clip = astronaut_clip(tmp_path / "c.mp4", frames=3)
    info = probe(clip)
    assert (info.width, info.height, info.frame_count) == (320, 240, 3)


def test_demo_round_trip_says_tiny_and_reports(tmp_path, capsys):
    res = run_demo(tmp_path / "out", frames=4, profile="tiny", device="cpu",
                   pti_steps=2, stitch_steps=2)
    out = capsys.readouterr().out
    st = res["status"]
    assert st.state == "done", st.error
    assert "TINY TEST PROFILE" in out and "not a real edit" in out
    assert "PTI 2 passes" in out and "stitching tuning 2 steps" in out
    for word in ("Stage timings:", "pti", "refine", "stitch_tune",
                 "PTI reconstruction", "Temporal refinement settings:",
                 "warping error of the aligned edited frames",
                 "LPIPS to the direct edit",
                 "Stitching border error", "tl_id", "Open the report"):
        assert word in out, word
    report = res["report"]
    assert report.is_file() and report.parent == st.folder / "output"
    assert "tiny test networks — not a real edit" in report.read_text()
    assert len(st.result.frames) == 4
    assert (tmp_path / "out" / "clip.mp4").is_file()
