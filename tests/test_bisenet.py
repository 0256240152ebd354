"""engine.nets.bisenet: official key names, strict safe loading, shapes, offline."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fsexchange.options import MaskConfig  # noqa: E402
from engine.stages.mask import MaskBuilder  # noqa: E402
from engine.nets.bisenet import BiSeNet, load_bisenet  # noqa: E402
from fsexchange.errors import ModelFormatError, ModelMissing  # noqa: E402

# Keys and shapes of the official 79999_iter.pth (docs/models.md "BiSeNet face parser").
OFFICIAL_KEYS = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer2.0.downsample.1.num_batches_tracked": (),
    "cp.resnet.layer4.1.bn2.weight": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.running_mean": (128,),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.bn.bias": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    net = BiSeNet()
    for m in net.modules():  # non-trivial BN statistics, so the load is checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "79999_iter.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def test_state_dict_has_the_official_names():
    sd = BiSeNet().state_dict()
    for key, shape in OFFICIAL_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert not [k for k in sd if k.startswith(("sp.", "cp.resnet.fc", "module."))]


def test_strict_reload_without_network(no_network, weights):
    path, original = weights
    net = load_bisenet(path)
    for key, value in net.state_dict().items():
        assert torch.equal(value, original[key]), key
    x = torch.rand(2, 3, 96, 96)
    main, aux16, aux32 = net(x)
    assert main.shape == aux16.shape == aux32.shape == (2, 19, 96, 96)
    labels = net.parse(x)
    assert labels.shape == (2, 96, 96) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) <= 18


def test_constructor_needs_no_torchvision():
    code = ("import sys, engine.nets.bisenet as b; b.BiSeNet(); "
            "assert 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ModelMissing):
        load_bisenet(tmp_path / "absent.pth")
    partial = {k: v for k, v in BiSeNet().state_dict().items() if "conv_out32" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ModelFormatError, match="does not match"):
        load_bisenet(tmp_path / "partial.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"x": Evil()}, fh, protocol=2)
    with pytest.raises(ModelFormatError):
        load_bisenet(tmp_path / "evil.pth")


def test_mask_builder_uses_the_parser(no_network, weights):
    path, _ = weights
    builder = MaskBuilder(MaskConfig(), 64, parser_path=path)
    assert builder.source == "bisenet"
    crops = [np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    masks = builder.masks(crops, [None])
    assert [m.shape for m in masks] == [(64, 64)]
    assert all(m.dtype == bool for m in masks)
