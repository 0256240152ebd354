"""Test bootstrap.

The PyPI torchvision 0.28.0 wheel is a CUDA build whose ops fail to load next to
CPU torch; its import then dies registering fake kernels for ``torchvision::nms``.
Declaring the two operator schemas first makes ``import torchvision`` work for the
parts we use in tests (docs/environment.md "torch and torchvision"). Here, and in
bench/reference_code.py (STIT's code imports the ``lpips`` package, which imports
torchvision) only where the import fails; the engine itself never imports
torchvision.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("OMP_NUM_THREADS", "2")

try:  # pragma: no cover - depends on the installed torch
    import torch

    _TV_LIB = torch.library.Library("torchvision", "DEF")  # keep referenced
    for _op in ("nms", "qnms"):
        try:
            _TV_LIB.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold)"
                           " -> Tensor")
        except RuntimeError:
            pass
except ImportError:  # the bridge-only environment
    torch = None


def pytest_collection_modifyitems(config, items):
    has_gpu = bool(torch is not None and torch.cuda.is_available())
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _shared_speed_records(tmp_path_factory):
    return tmp_path_factory.mktemp("fsspeed")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch, _shared_speed_records):
    """Each test gets its own FaceStitch model store (never the user's). Its
    ``speed/`` folder (the measured formulations, engine/models/formulations.py)
    is one for the whole session, as on a user's machine, where each (device,
    precision, architecture, batch) is measured once: otherwise every test job
    would measure again (docs/pipeline.md "Formulations"). Tests of the
    measurement itself pass their own records folder."""
    home = tmp_path_factory.mktemp("fshome")
    (home / "speed").symlink_to(_shared_speed_records, target_is_directory=True)
    monkeypatch.setenv("FACESTITCH_HOME", str(home))
    yield


@pytest.fixture
def one_thread():
    """Tiny networks: one torch thread avoids OpenMP barrier stalls that made a 32 px
    generator forward take ~1 s instead of ~7 ms on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
