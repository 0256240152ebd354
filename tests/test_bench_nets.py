"""Smoke test of the network benchmark (tiny size only, CPU)."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # real engines / whole pipelines

ROOT = Path(__file__).resolve().parents[1]


def test_bench_nets_quick_tiny_only(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "nets.py"), "--quick", "--tiny-only",
         "--device", "cpu", "--iters", "1", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    seen = {(r["net"].split()[0], r["mode"]) for r in rows}
    assert seen == {("generator", "forward"), ("generator", "forward+backward"),
                    ("e4e", "forward"), ("e4e", "forward+backward")}
    for r in rows:
        assert r["images_per_s"] > 0 and r["gflop_per_s"] > 0
        assert r["gflop_per_image"] > 0
    assert "img/s" in proc.stdout and "GFLOP/s" in proc.stdout
