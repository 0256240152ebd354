"""bench/pipeline.py run as the tests run it: a fresh process with its own model
store, which must exit 0 (shared by the CPU and GPU benchmark tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pipeline_bench(args: list[str], home: Path, timeout: int = 900,
                       **env: str) -> subprocess.CompletedProcess:
    """``python bench/pipeline.py *args`` with ``FACESTITCH_HOME=home`` (and
    ``env``); fails the test with the ends of its output unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "FACESTITCH_HOME": str(home), **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
