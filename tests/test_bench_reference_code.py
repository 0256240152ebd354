"""The benchmark's loop of the reference code itself (bench/reference_code.py):
our LPIPS weights carried into the ``lpips`` package compute our distances, a
folder that is not a STIT checkout is refused by name, and, where a checkout is
at hand (``FACESTITCH_STIT_DIR``; CI has none, the code cannot be downloaded
there), STIT's own loops run in the benchmark's rounds on our weights and reach
the re-creation's losses."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import reference_code  # noqa: E402  (bench/reference_code.py)
from bench_run import run_pipeline_bench  # noqa: E402

STIT = os.environ.get("FACESTITCH_STIT_DIR")


def test_our_lpips_weights_in_the_lpips_package_give_our_distances():
    import lpips

    from engine.nets.lpips import LPIPS

    ours = LPIPS("alex", backbone="random", heads="uniform", seed=3).eval()
    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    ref.load_state_dict(reference_code.lpips_state(ours), strict=True)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    b = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        d_ours, d_ref = ours(a, b), ref(a, b).flatten()
    assert d_ours.shape == d_ref.shape == (2,)
    assert torch.allclose(d_ours, d_ref, rtol=1e-5, atol=1e-7), (d_ours, d_ref)
    # and not by accident: other heads give other distances
    other = LPIPS("alex", backbone="random", heads="uniform", seed=4).eval()
    with torch.no_grad():
        assert not torch.allclose(other(a, b), d_ref, rtol=1e-3)


def test_a_folder_that_is_not_stit_is_refused(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "networks.py").write_text("")
    with pytest.raises(SystemExit, match="is not a checkout of STIT .*missing "
                       "edit_video_stitching_tuning.py"):
        reference_code.load(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not STIT, reason="no STIT checkout (set FACESTITCH_STIT_DIR)")
def test_stit_code_in_the_rounds(tmp_path):
    out = tmp_path / "figures.json"
    run_pipeline_bench(
        ["--arch", "official", "--size", "32", "--frames", "2", "--pti-passes", "1",
         "--stitch-steps", "2", "--rounds", "1", "--device", "cpu",
         "--dtypes", "float32", "--recipes", "reference", "--reserve-gib", "0",
         "--pti-formulation", "hybrid", "--stitch-formulation", "hybrid",
         "--reference-code", STIT, "--json", str(out)],
        tmp_path / "home", OMP_NUM_THREADS="1")
    fig = json.loads(out.read_text())
    assert not fig["failures"]
    for part in ("pti", "stitch"):
        rows = {r["loop"]: r for r in fig[part]["rows"]}
        code = rows["STIT code"]
        assert code["recipe"] == "reference code" and code["label"] == ""
        # checked like a same-arithmetic row against the re-creation
        assert max(code["check"].values()) < 1e-3
        for r in rows.values():
            assert r["code_ratio"] > 0 and r["ratio"] > 0
    assert "STIT code" in fig["shot_minutes_300_frames"]
