"""Our RAFT-large (engine/quality/flow.py) against torchvision's port of the same
network (through the loader's key mapping), and the ``raft`` backend's loading of
``raft-things.pth``-style weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.quality.flow import (RaftFlow, build_raft, flow_backend,  # noqa: E402
                                 torchvision_raft_keys)
from engine.models.store import models_root  # noqa: E402
from fsexchange.errors import ModelFormatError  # noqa: E402


def test_raft_matches_torchvision_port():
    flow_mod = pytest.importorskip("torchvision.models.optical_flow")
    torch.manual_seed(0)
    tv = flow_mod.raft_large(weights=None).eval()
    sd = tv.state_dict()
    for k in sd:  # make the batch-norm statistics matter
        if k.endswith("running_var"):
            sd[k] = torch.rand_like(sd[k]) + 0.5
        elif k.endswith("running_mean"):
            sd[k] = torch.randn_like(sd[k]) * 0.1
    tv.load_state_dict(sd)
    ours = build_raft().eval()
    ours.load_state_dict(torchvision_raft_keys(sd))  # strict: every key matches
    a = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 128, 128), 3, 1, 1) * 255
    b = torch.roll(a, 2, -1)
    with torch.no_grad():
        want = tv(2 * a / 255 - 1, 2 * b / 255 - 1, num_flow_updates=2)[-1]
        got = ours(a, b, 2)
    assert got.shape == (1, 2, 128, 128)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture
def installed_raft():
    torch.manual_seed(0)
    net = build_raft()
    path = models_root() / "raft-things.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    # saved from DataParallel upstream: every key carries 'module.'
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


def test_raft_backend_loads_the_official_layout(installed_raft):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)  # odd size: padded
    flow = flow_backend("raft")
    assert isinstance(flow, RaftFlow) and flow.name == "raft-large:raft-things.pth"
    flow.iters = 2
    fw, bw = flow.pair(a, a)
    assert fw.shape == bw.shape == (100, 130, 2) and fw.dtype == np.float32
    assert np.isfinite(fw).all()
    small = RaftFlow(installed_raft, iters=1, max_side=64)  # downscaled path
    fw, bw = small.pair(a, np.roll(a, 1, axis=1))
    assert fw.shape == (100, 130, 2) and np.isfinite(bw).all()


def test_raft_rejects_other_weights():
    path = models_root() / "raft-things.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module.conv.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelFormatError, match="RAFT-large"):
        flow_backend("raft")
