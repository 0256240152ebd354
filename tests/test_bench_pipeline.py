"""Smoke test of the training benchmark at the official architecture, at a tiny
generator resolution (32 px: the official channel counts, 4-32 px blocks), and of
its same-arithmetic check.

Checks what the printed ratios rest on: every loop did the same work, the rows
that claim the reference's arithmetic reached the re-creation's losses, the others
are labelled, the rounds ran, and every figure is there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import pipeline as bench  # noqa: E402  (bench/pipeline.py)
from bench_run import run_pipeline_bench  # noqa: E402


@pytest.mark.slow
def test_bench_official_architecture_small(tmp_path):
    out = tmp_path / "figures.json"
    proc = run_pipeline_bench(
        ["--arch", "official", "--size", "32", "--frames", "2", "--pti-passes", "1",
         "--stitch-steps", "2", "--rounds", "2", "--device", "cpu", "--conv-time",
         "--json", str(out),
         # a small reserve (the default 10 GiB is for the real size)
         "--reserve-gib", "0.0625",
         # pinned: the one-time measurement has its own tests, and at the official
         # channel counts it would take longer than the loops; hybrid is the
         # formulation that mixes both modulation paths in one network
         "--pti-formulation", "hybrid", "--stitch-formulation", "hybrid"],
        tmp_path / "home", OMP_NUM_THREADS="1")
    fig = json.loads(out.read_text())
    assert fig["arch"] == "official" and fig["size"] == 32 and not fig["failures"]
    assert fig["heap_reserved_gib"] == (0.0625 if fig["freed_memory_kept"] else 0)
    # on the CPU, and it did not fail (at 32 px no layer is large enough to use it)
    assert fig["fused_epilogue"] is True
    for part in ("pti", "stitch"):
        f = fig[part]
        rows = {r["loop"]: r for r in f["rows"]}
        assert set(rows) == {"re-creation", "reference/float32", "reference/bfloat16",
                             "fast/float32", "fast/bfloat16"}
        assert f["work"] == 2 * (1 if part == "pti" else 2)
        assert f["flops_per_update"] > 1e9  # official channel counts
        for r in f["rows"]:
            assert len(r["seconds"]) == 2 and r["updates_per_second"] > 0
            assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert {r["formulation"] for r in f["rows"][1:]} == {"hybrid"}
        # the reference recipe in float32 is checked against the re-creation
        assert rows["reference/float32"]["label"] == ""
        assert all(v <= bench.TOLERANCE for v in rows["reference/float32"]["check"]
                   .values())
        assert "bfloat16" in rows["reference/bfloat16"]["label"]
    pti = {r["loop"]: r for r in fig["pti"]["rows"]}
    assert "mini-batches of 2" in pti["fast/float32"]["label"]
    assert pti["reference/float32"]["batch"] == 1
    assert pti["re-creation"]["loss"]["mse"] < fig["pti"]["before"]["mse"]
    st = {r["loop"]: r for r in fig["stitch"]["rows"]}
    # stitching's recipes differ in precision only: fast in float32 is checked too
    assert st["fast/float32"]["label"] == "" and "check" in st["fast/float32"]
    for part in ("pti", "stitch"):
        conv = fig[part]["convolutions"]
        for loop in ("ref", "reference/float32"):
            # the clocked convolutions are part of the same run's update, and the
            # clock leaves the arithmetic alone
            assert 0 < conv[f"{loop}_conv_ms"] < conv[f"{loop}_clocked_ms"]
            assert conv[f"{loop}_max_abs_diff_loss"] < 1e-6
            assert conv[f"{loop}_ceiling_ratio" if loop != "ref" else "ref_conv_ms"] > 0
    assert "ratio (range)" in proc.stdout and "same arithmetic" in proc.stdout
    # the GPU figures of issue 17: achieved TFLOP/s and a job's frames per minute
    # per row, the generator's MACs, and a 300-frame shot's minutes
    assert fig["generator_gmac"]["convolutions"] == pytest.approx(4.0, abs=0.01)
    for part, per_frame in (("pti", 80), ("stitch", 100)):
        f = fig[part]
        assert f["job_updates_per_frame"] == per_frame
        for r in f["rows"]:
            assert r["tflops"] == pytest.approx(
                f["flops_per_update"] * r["updates_per_second"] / 1e12)
            if part == "pti":
                assert r["job_frames_per_minute"] == pytest.approx(
                    60 * r["updates_per_second"] / per_frame)
                continue
            # stitching's renders, timed apart, weigh once per frame: a frame of
            # the benchmark is renders + 2 steps, a job's renders + 100 steps
            fixed, step = r["frame_fixed_seconds"], r["update_seconds"]
            assert fixed > 0 and step > 0
            assert fixed + 2 * step == pytest.approx(r["median_seconds"] / 2)
            assert r["job_frames_per_minute"] == pytest.approx(
                60 / (fixed + 100 * step))
            assert r["job_frames_per_minute"] > 60 * r["updates_per_second"] / 100
    shot = fig["shot_minutes_300_frames"]
    assert set(shot) == {r["loop"] for r in fig["pti"]["rows"]}
    assert shot["fast/bfloat16"]["pti"] == pytest.approx(
        300 / {r["loop"]: r for r in fig["pti"]["rows"]}["fast/bfloat16"][
            "job_frames_per_minute"])
    assert "TFLOP/s" in proc.stdout and "A 300-frame shot at 32 px" in proc.stdout
    assert "x the re-creation's)" in proc.stdout


def test_generator_macs_at_the_official_size():
    """74.3 GMAC per forward at 1024 px (the architecture's published figure) in
    the convolutions, and with the FIR filters what torch's FLOP counter counts."""
    macs = bench.generator_macs(1024)
    assert macs["convolutions"] == pytest.approx(74.26, abs=0.01)
    assert macs["fir"] == pytest.approx(1.12, abs=0.01)
    from torch.utils.flop_counter import FlopCounterMode

    from engine.nets.ops import reference_ops
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

    with torch.device("meta"):
        G = Generator(**dict(OFFICIAL_GENERATOR_KWARGS, img_resolution=64))
        ws = torch.zeros(1, G.num_ws, G.w_dim)
    with FlopCounterMode(display=False) as fc, torch.no_grad(), reference_ops():
        G.synthesis(ws)
    convs = fc.get_flop_counts()["Global"][torch.ops.aten.convolution]
    m = bench.generator_macs(64)
    assert 2e9 * (m["convolutions"] + m["fir"]) == pytest.approx(convs, rel=1e-9)


def _fig(mse, lpips, label=""):
    row = {"loop": "reference/float32", "formulation": "scaled", "label": label,
           "loss": {"mse": mse, "lpips": lpips}}
    return {"rows": [{"loop": "re-creation", "loss": {"mse": 0.5, "lpips": 0.2}},
                     row]}


def test_a_measured_batch_choice_is_printed_with_its_row(capsys):
    """A fast PTI row whose batch was chosen by measurement (engine/stages/recipe.py)
    prints the per-frame seconds behind the choice."""
    row = {"loop": "fast/float32", "formulation": "hybrid", "batch": 1,
           "updates_per_second": 0.8, "tflops": 0.22, "job_frames_per_minute": 0.6,
           "ratio": 1.08, "ratio_min": 1.06, "ratio_max": 1.09,
           "loss": {"mse": 1.8, "lpips": 0.03},
           "label": "differs by design: shuffled",
           "batching": {"batch": 4, "frame_seconds": 1.137,
                        "batch_1_frame_seconds": 1.169, "gain": 0.0281}}
    bench.print_rows("PTI", "pti", {"rows": [row]}, "frame-updates")
    out = capsys.readouterr().out
    assert ("fast/float32: batch 1: a whole step measured 1.137 s a frame at batch "
            "4, 1.169 at batch 1 (gain +2.8%; a mini-batch needs +10%)") in out


def test_a_row_that_computes_something_else_fails():
    assert bench.check_rows("pti", _fig(0.5002, 0.2), 1e-3) == []
    fails = bench.check_rows("pti", _fig(0.51, 0.2), 1e-3)
    assert len(fails) == 1 and "reconstruction MSE 0.51 vs re-creation 0.5" in fails[0]
    assert "claims the reference's arithmetic" in fails[0]
    # a row labelled as different by design is shown, not checked
    assert bench.check_rows("pti", _fig(0.9, 0.9, "differs by design: bfloat16"),
                            1e-3) == []
    st = {"rows": [{"loop": "re-creation"},
                   {"loop": "fast/float32", "formulation": "loop", "label": "",
                    "max_rel_diff_per_frame": 0.02}]}
    assert "border loss" in bench.check_rows("stitch", st, 1e-3)[0]


def test_precisions_benchmarked_and_compared_per_device():
    """``--dtypes auto`` adds the labelled tf32 rows only where the device
    computes TensorFloat-32 (the fidelity table its column likewise); an explicit
    precision the device cannot compute, or an unknown one, stops the benchmark
    with the reason before anything runs."""
    assert bench.bench_dtypes("auto", "cpu") == ["float32", "bfloat16"]
    assert bench.bench_dtypes("bfloat16,float32", "cpu") == ["bfloat16", "float32"]
    with pytest.raises(SystemExit, match="compute capability 8.0"):
        bench.bench_dtypes("float32,tf32", "cpu")
    with pytest.raises(SystemExit, match="'float16' is not one of"):
        bench.bench_dtypes("float16", "cpu")
    assert bench.fidelity_variants("cpu") == [
        ("reference", "reference", "float32"), ("fast", "fast", "auto")]
    row = {"loop": "reference/tf32", "label": bench._label("pti", "reference",
                                                           "tf32", None)}
    assert row["label"] == "differs by design: tf32"
    assert bench.check_rows("pti", _fig(0.9, 0.9, row["label"]), 1e-3) == []


@pytest.mark.slow
def test_bench_refine_side_by_side_tiny(tmp_path):
    """``--arch tiny --only refine``: the pipeline (with its refine stage) on a real
    clip, then the refinement loop against the one-pair-per-step loop."""
    out = tmp_path / "figures.json"
    proc = run_pipeline_bench(
        ["--arch", "tiny", "--frames", "3", "--pti-passes", "1", "--stitch-steps",
         "2", "--rounds", "2", "--only", "refine", "--device", "cpu", "--json",
         str(out)], tmp_path / "home", timeout=600)
    fig = json.loads(out.read_text())
    assert {r["stage"] for r in fig["stages"]} >= {"pti", "refine", "stitch_tune",
                                                   "paste"}
    rf = fig["refine"]  # the refinement against the one-pair-per-step loop
    assert rf["frames"] == 3 and rf["epochs"] == [2, 1] and rf["rounds"] == 2
    assert rf["ratio"] > 0 and rf["batch"] == 2
    for loop in ("ours", "ref"):
        assert len(rf[f"{loop}_pairs_per_minute"]) == 2
        assert all(v > 0 for v in rf[f"{loop}_pairs_per_minute"])
    assert "Temporal refinement, 3 frames (2 pairs) x 2+1 epochs" in proc.stdout


@pytest.mark.slow
def test_bench_pipeline_draft_small(tmp_path):
    """``--draft``: a real engine process runs a cold and a warm draft; the figures
    say how long each took and that the warm one reused the networks."""
    out = tmp_path / "draft.json"
    proc = run_pipeline_bench(
        ["--draft", "--draft-frames", "2", "--draft-strengths", "3", "--device",
         "cpu", "--json", str(out)], tmp_path / "home", timeout=600)
    fig = json.loads(out.read_text())["tiny_engine"]
    assert (fig["rows"], fig["frames"]) == (3, 2)
    assert 0 < fig["warm_seconds"] and 0 < fig["cold_seconds"]
    for name in ("cold_stages", "warm_stages"):
        assert list(fig[name]) == ["track", "align", "invert", "sweep"]
    assert "cold (engine start included)" in proc.stdout
