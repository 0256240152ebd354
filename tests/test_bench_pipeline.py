"""Smoke test of the pipeline benchmark: a few frames and steps, CPU, tiny profile.

Checks what the printed ratios rest on: both loops did the same work (float32
stitching gives the reference's border losses; PTI's fit moves the same way), the
rounds ran, and every figure is there."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # real engines / whole pipelines

ROOT = Path(__file__).resolve().parents[1]


def test_bench_pipeline_side_by_side_small(tmp_path):
    out = tmp_path / "figures.json"
    env_home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline.py"), "--frames", "3",
         "--pti-passes", "1", "--stitch-steps", "2", "--repeat", "2",
         "--device", "cpu", "--conv-time", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "FACESTITCH_HOME": str(env_home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig = json.loads(out.read_text())
    assert {r["stage"] for r in fig["stages"]} >= {"pti", "refine", "stitch_tune",
                                                   "paste"}
    rf = fig["refine"]  # the refinement against the one-pair-per-step loop
    assert rf["frames"] == 3 and rf["epochs"] == [2, 1] and rf["rounds"] == 2
    assert rf["ratio"] > 0 and rf["batch"] == 2
    for loop in ("ours", "ref"):
        assert len(rf[f"{loop}_pairs_per_minute"]) == 2
        assert all(v > 0 for v in rf[f"{loop}_pairs_per_minute"])
    for part in ("pti", "stitch"):
        f = fig[part]
        assert f["rounds"] == 2 and f["frames"] == 3
        assert f["ratio"] > 0 and f["ratio_float32"] > 0
        assert f["flops_per_frame_step"] > 1e6
    st = fig["stitch"]
    # float32 batched stitching is the reference's arithmetic, frame by frame
    assert st["max_abs_diff_border_after_float32"] < 1e-5
    conv = st["convolutions"]
    for loop in ("ref", "ours"):
        # the clocked convolutions are part of the same run's step, and the clock
        # leaves the arithmetic alone
        assert 0 < conv[f"{loop}_conv_ms"] < conv[f"{loop}_clocked_ms"]
        assert conv[f"{loop}_max_abs_diff_border_after"] < 1e-6
    assert conv["ceiling_ratio"] > 0
    err = fig["pti"]["error"]
    assert err["ref"]["mse"] < err["before"]["mse"]
    assert err["ours_float32"]["mse"] < err["before"]["mse"]
    assert "ratio" in proc.stdout and "medians of 2 rounds" in proc.stdout
    assert "Temporal refinement, 3 frames (2 pairs) x 2+1 epochs" in proc.stdout
    assert "nothing but our convolutions left" in proc.stdout


def test_bench_pipeline_draft_small(tmp_path):
    """``--draft``: a real engine process runs a cold and a warm draft; the figures
    say how long each took and that the warm one reused the networks."""
    out = tmp_path / "draft.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline.py"), "--draft",
         "--draft-frames", "2", "--draft-strengths", "3", "--device", "cpu",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "FACESTITCH_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig = json.loads(out.read_text())["tiny_engine"]
    assert (fig["rows"], fig["frames"]) == (3, 2)
    assert 0 < fig["warm_seconds"] and 0 < fig["cold_seconds"]
    for name in ("cold_stages", "warm_stages"):
        assert list(fig[name]) == ["track", "align", "invert", "sweep"]
    assert "cold (engine start included)" in proc.stdout
