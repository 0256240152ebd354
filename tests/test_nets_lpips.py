"""Our LPIPS against the real ``lpips`` package, and backbone resolution."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from engine.nets.lpips import BACKBONE_FILES, LPIPS, backbone_path, heads_path
from fsexchange.errors import ModelMissing


pytestmark = pytest.mark.usefixtures("one_thread")


def test_engine_modules_do_not_import_torchvision_or_lpips():
    import subprocess

    code = ("import sys; import engine.nets.lpips, engine.models.modelset; "
            "m = engine.models.modelset.load_models('tiny'); "
            "print('torchvision' in sys.modules, 'lpips' in sys.modules)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True, env=env)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("net,size", [("alex", 64), ("vgg", 32)])
def test_matches_lpips_package_with_same_random_backbone(net, size):
    lpips = pytest.importorskip("lpips")  # conftest made torchvision importable
    torch.manual_seed(0)
    ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    ours = LPIPS(net, backbone="random", heads="pretrained")
    with torch.no_grad():  # copy the package's random backbone into ours
        for name, p in ref.net.named_parameters():
            _, idx, leaf = name.split(".")  # slice{k}.{index}.{weight|bias}
            getattr(ours.features[int(idx)], leaf).copy_(p)
    a = torch.rand(3, 3, size, size) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    want = ref(a, b).reshape(-1)
    got = ours(a, b)
    assert got.shape == (3,)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    assert torch.all(ours(a, a) == 0)


def test_heads_come_from_the_installed_package_files():
    p = heads_path("alex")
    assert p.name == "alex.pth" and p.parent.name == "v0.1"
    ours = LPIPS("alex", backbone="random", heads="pretrained")
    assert ours.source["heads"] == str(p)
    assert ours.lin0.shape == (1, 64, 1, 1) and ours.lin4.shape == (1, 256, 1, 1)
    assert not torch.allclose(ours.lin0, torch.full_like(ours.lin0, 1 / 64))


def test_backbone_from_torch_hub_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    # missing: the error names the file and the folder
    with pytest.raises(ModelMissing) as ei:
        LPIPS("alex")
    msg = str(ei.value)
    assert BACKBONE_FILES["alex"] in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints") in msg
    # a torchvision-layout file (features.* + classifier.*) is loaded from there
    src = LPIPS("alex", backbone="random", seed=7)
    sd = {f"features.{k}": v for k, v in src.features.state_dict().items()}
    sd["classifier.1.weight"] = torch.zeros(4, 4)
    path = backbone_path("alex")
    assert path == tmp_path / "th" / "hub" / "checkpoints" / BACKBONE_FILES["alex"]
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    net = LPIPS("alex")
    for k, v in src.features.state_dict().items():
        assert torch.equal(net.features.state_dict()[k], v)
    a, b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    assert torch.allclose(net(a, b), src(a, b))


def test_gradients_flow_to_inputs_not_weights():
    net = LPIPS("alex", backbone="random")
    a = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    b = torch.rand(1, 3, 64, 64) * 2 - 1
    net(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
