"""bench/gpu_check.sh, the GPU checks in one call of a lent machine: every default
part has a case, the parts' time limits fit one 10-minute call, and where torch
sees no GPU it says so and runs nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import torch

    HAS_GPU = torch.cuda.is_available()
except ImportError:  # the bridge-only environment
    HAS_GPU = False

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_every_part_has_a_time_limit_and_all_fit_one_call():
    text = SCRIPT.read_text()
    parts = re.search(r"GPU_CHECK_PARTS:-([a-z ]+)\}", text).group(1).split()
    assert parts == ["tests", "bench", "memory", "epilogue"]
    limits = {}
    for part in parts:
        case = re.search(rf"^\s+{part}\)\n\s+timeout (\d+) ", text, re.M)
        assert case, f"part {part} has no case with a time limit"
        limits[part] = int(case.group(1))
    # a lent machine's call runs at most 10 minutes; leave the interpreter
    # start-ups and the GPU's first use some room
    assert sum(limits.values()) <= 570, limits


@pytest.mark.skipif(HAS_GPU, reason="on a GPU machine the script runs the checks")
def test_without_a_gpu_it_runs_nothing(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OUT": str(tmp_path),
                                           "PYTHON": sys.executable})
    assert run.returncode == 2
    assert "has no torch that sees a CUDA GPU" in run.stderr
    assert list(tmp_path.iterdir()) == []
