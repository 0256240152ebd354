"""The fused-against-eager epilogue benchmark (bench/epilogue.py) on the CPU: a
real run at the official architecture's channels (128 px, where the 128 px layers
reach the size threshold), and the checks that keep a row from standing for what
it did not compute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import epilogue as bench  # noqa: E402  (bench/epilogue.py)

from engine.nets import epilogue  # noqa: E402

pytestmark = pytest.mark.slow  # official channel counts: a few seconds a step


def test_fused_and_eager_side_by_side(tmp_path):
    out = tmp_path / "rows.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "epilogue.py"), "--device", "cpu",
         "--size", "128", "--rounds", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["problems"] == []
    rows = {r["dtype"]: r for r in doc["rows"]}
    assert set(rows) == {"bfloat16", "float32"}
    for r in rows.values():
        # the two 128 px layers, one kernel each way; none in the eager row
        assert r["kernel_calls_per_step"] == 4 and r["eager_kernel_calls_per_step"] == 0
        assert r["fused_s"] > 0 and r["eager_s"] > 0 and r["ratio"] > 0
    assert rows["float32"]["image_rel_diff"] < 1e-6
    assert rows["float32"]["grad_rel_diff"] < bench.FLOAT32_TOLERANCE
    assert "ratio" in run.stdout and "FAILED" not in run.stdout


def test_a_row_without_kernels_fails(monkeypatch):
    """No layer reaches the threshold: the fused row ran eagerly and says so."""
    monkeypatch.setattr(epilogue, "MIN_ELEMENTS", 1 << 60)
    row = bench.measure(64, 1, "float32", torch.device("cpu"), 1, "hybrid")
    assert row["kernel_calls_per_step"] == 0
    assert any("ran no generated kernel" in p for p in bench.check(row))


def test_the_float32_check_fails_a_different_result():
    row = {"dtype": "float32", "kernel_calls_per_step": 4,
           "eager_kernel_calls_per_step": 0, "image_rel_diff": 0.0,
           "grad_rel_diff": 10 * bench.FLOAT32_TOLERANCE}
    assert bench.check(row) and "differs from eager" in bench.check(row)[0]
    assert bench.check(dict(row, grad_rel_diff=0.0)) == []
