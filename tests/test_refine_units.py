"""The temporal refinement's pieces: the anchor rule, the working size, the frozen
layers, the levels mapper, spatial LPIPS, the tensor warp and forward–backward
error, RAFT inside the autograd graph, and the DIS fallback without RAFT weights."""

from __future__ import annotations

import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.nets.lpips import LPIPS  # noqa: E402
from engine.nets.mapper import LevelsMapper  # noqa: E402
from engine.quality.flow import (RAFT_FILES, build_raft, fb_error,  # noqa: E402
                                 load_raft, raft_flow, warp_tensor)
from engine.stages.refine import (anchor_index, frozen_layer_names,  # noqa: E402
                                  make_flow, working_size)
from fsexchange.options import RefineConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_anchor_is_the_references_middle_frame():
    # n/2 - 1 for even n, floor(n/2) for odd n (docs/reference.md "Anchor and masks")
    assert [anchor_index(n) for n in (2, 3, 4, 5, 14, 15)] == [0, 1, 1, 2, 6, 7]


def test_working_size():
    cfg = RefineConfig()
    assert working_size(1024, cfg) == 256  # the README's 1/4
    assert working_size(64, cfg) == 64  # the tiny profile reaches the floor
    assert working_size(512, RefineConfig(flow_scale=2)) == 256


def test_last_eight_w_layers_are_the_128px_and_finer_layers():
    from engine.nets.stylegan2 import Generator

    G = Generator(z_dim=8, w_dim=8, img_resolution=1024, channel_base=8192,
                  channel_max=8, mapping_layers=1)
    frozen = frozen_layer_names(G, 8)
    assert G.num_ws == 18
    assert "b128.conv0" not in frozen and "b64.torgb" not in frozen
    assert {"b128.conv1", "b128.torgb", "b256.conv0", "b1024.conv1",
            "b1024.torgb"} <= frozen
    assert frozen_layer_names(G, 0) == set()


def test_levels_mapper_groups_and_zero_start():
    torch.manual_seed(0)
    m = LevelsMapper(w_dim=16, num_ws=18)
    ws = torch.randn(3, 18, 16)
    out = m(ws)
    assert out.shape == ws.shape
    # each group sees only its own layers: changing a fine layer leaves coarse alone
    ws2 = ws.clone()
    ws2[:, 12] += 1
    out2 = m(ws2)
    assert torch.equal(out[:, :8], out2[:, :8]) and not torch.equal(out[:, 12],
                                                                     out2[:, 12])
    z = LevelsMapper(w_dim=16, num_ws=10, zero_last=True)
    assert z.bounds == [(0, 4), (4, 8), (8, 10)]
    assert torch.count_nonzero(z(torch.randn(2, 10, 16))) == 0
    with pytest.raises(ValueError, match="ws must be"):
        m(torch.randn(2, 10, 16))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_spatial_lpips_matches_the_package():
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, spatial=True,
                      verbose=False).eval()
    ours = LPIPS("alex", backbone="random", heads="pretrained")
    with torch.no_grad():
        for name, p in ref.net.named_parameters():
            _, idx, leaf = name.split(".")
            getattr(ours.features[int(idx)], leaf).copy_(p)
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    got = ours.spatial(a, b)
    assert got.shape == (2, 1, 64, 64)
    torch.testing.assert_close(got, ref(a, b), rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(ours.spatial(a, a)) == 0


def test_warp_and_forward_backward_error():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    shift = torch.zeros(2, 2, 8, 8)
    shift[:, 0] = 1.0  # sample one pixel to the right
    out, inside = warp_tensor(img, shift)
    torch.testing.assert_close(out[..., :-1], img[..., 1:])
    assert inside[..., :-1].min() == 1 and inside[..., -1].max() == 0
    # a consistent pair (+1, -1) has no error; an inconsistent one (+1, +1) has 2 px
    assert float(fb_error(shift, -shift)[..., :-1].max()) < 1e-3
    torch.testing.assert_close(fb_error(shift, shift)[..., :-1],
                               torch.full((2, 1, 8, 7), 2.0), rtol=0, atol=1e-3)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("flow", ["auto", "raft"])
def test_missing_raft_weights_fall_back_to_dis_with_a_warning(flow, no_network,
                                                              caplog):
    from engine.models.store import models_root

    warned: list[str] = []
    src = make_flow(RefineConfig(flow=flow), "cpu", warn=warned.append)
    assert src.kind == "dis" and "opencv-dis" in src.name
    assert len(warned) == 1 and "raft-things.pth" in warned[0]
    assert "nothing is downloaded" in warned[0]
    assert any("OpenCV DIS" in r.getMessage() for r in caplog.records)
    for name in RAFT_FILES:  # and nothing was fetched into the store
        assert not (models_root() / name).exists()
    assert make_flow(RefineConfig(flow="dis"), "cpu", warn=warned.append).kind == "dis"
    assert len(warned) == 1  # asking for DIS is not a fallback
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    fw, bw = src(a, torch.roll(a, 2, -1))
    assert fw.shape == bw.shape == (2, 2, 32, 32) and not fw.requires_grad


def _install_raft(layout: str) -> None:
    from engine.models.store import models_root

    torch.manual_seed(0)
    net = build_raft()
    root = models_root()
    root.mkdir(parents=True, exist_ok=True)
    sd = net.state_dict()
    if layout == "princeton":
        torch.save({f"module.{k}": v for k, v in sd.items()}, root / RAFT_FILES[0])
        return
    tv = pytest.importorskip("torchvision.models.optical_flow").raft_large(
        weights=None)
    torch.save(tv.state_dict(), root / RAFT_FILES[1])


@pytest.mark.parametrize("layout", ["princeton", "torchvision"])
def test_raft_runs_inside_the_autograd_graph(layout, no_network):
    _install_raft(layout)
    net, name = load_raft()
    assert name.startswith("raft-large:") and ("torchvision" in name) == (
        layout == "torchvision")
    src = make_flow(RefineConfig(raft_iters=2), "cpu")
    assert src.kind == "raft" and "autograd" in src.name
    a = (torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 64), 3, 1, 1) * 2 - 1)
    x = torch.roll(a, 2, -1).requires_grad_(True)
    fw, bw = src(a, x)
    assert fw.shape == (1, 2, 64, 64) and fw.requires_grad
    fw.square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # the graph flow is the metric backend's flow (same network, no autograd)
    with torch.no_grad():
        f2 = raft_flow(net, (a + 1) * 127.5, (x + 1) * 127.5, 2)
    torch.testing.assert_close(fw.detach(), f2, rtol=1e-4, atol=1e-4)
    assert np.isfinite(bw.detach().numpy()).all()
