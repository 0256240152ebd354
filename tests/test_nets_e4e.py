"""e4e encoder: official key layout, progressive W+ semantics, shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.nets.e4e import OFFICIAL_ENCODER_KWARGS, E4EEncoder
from engine.models.store import TINY_ENCODER_KWARGS


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0) -> E4EEncoder:
    torch.manual_seed(seed)
    e = E4EEncoder(**TINY_ENCODER_KWARGS)
    with torch.no_grad():  # BN statistics that are not the identity
        for m in e.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
        e.latent_avg.copy_(torch.randn_like(e.latent_avg))
    return e.eval()


def test_official_key_layout():
    """docs/models.md "e4e checkpoint": keys of e4e_ffhq_encode.pt without the
    'encoder.' prefix."""
    with torch.device("meta"):
        e = E4EEncoder(**OFFICIAL_ENCODER_KWARGS)
    sd = {k: tuple(v.shape) for k, v in e.state_dict().items()}
    assert sd["input_layer.0.weight"] == (64, 3, 3, 3)
    assert "input_layer.1.running_var" in sd and sd["input_layer.2.weight"] == (64,)
    bodies = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert bodies == set(range(24))
    for i in range(24):
        for leaf in ("res_layer.0.weight", "res_layer.1.weight", "res_layer.2.weight",
                     "res_layer.3.weight", "res_layer.4.weight",
                     "res_layer.5.fc1.weight", "res_layer.5.fc2.weight"):
            assert f"body.{i}.{leaf}" in sd
    # shortcut convs only where the depth changes (units 3, 7, 21)
    shortcut = sorted(i for i in range(24) if f"body.{i}.shortcut_layer.0.weight" in sd)
    assert shortcut == [3, 7, 21]
    assert sd["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert "body.3.shortcut_layer.1.running_mean" in sd
    assert sd["body.23.res_layer.5.fc1.weight"] == (32, 512, 1, 1)  # SE reduction 16
    assert sd["latlayer1.weight"] == (512, 256, 1, 1)
    assert sd["latlayer2.weight"] == (512, 128, 1, 1)
    assert "latlayer1.bias" in sd
    n_convs = {i: len({k for k in sd if k.startswith(f"styles.{i}.convs.")
                       and k.endswith("weight")}) for i in range(18)}
    assert [n_convs[i] for i in range(18)] == [4] * 3 + [5] * 4 + [6] * 11
    assert sd["styles.17.convs.10.weight"] == (512, 512, 3, 3)
    assert sd["styles.0.linear.weight"] == (512, 512)
    assert sd["latent_avg"] == (18, 512)


def test_forward_shapes_and_taps():
    e = _tiny()
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    ws = e(img)
    assert ws.shape == (2, TINY_ENCODER_KWARGS["num_ws"], TINY_ENCODER_KWARGS["w_dim"])
    # taps at the ends of stages 2, 3, 4 (indices 6, 20, 23 for IR-SE-50)
    assert e.taps == [0, 1, 2, 3]
    with torch.device("meta"):
        off = E4EEncoder(**OFFICIAL_ENCODER_KWARGS)
    assert off.taps[1:] == [6, 20, 23]


def test_progressive_deltas_and_latent_avg():
    """w = style0(c3) on every layer, + style_i(features_i) for i >= 1, + latent_avg
    (docs/reference.md "Inversion with e4e"), recomputed by hand from the submodules."""
    e = _tiny()
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    x = e.input_layer(img)
    feats = []
    for i, unit in enumerate(e.body):
        x = unit(x)
        if i in e.taps[1:]:
            feats.append(x)
    c1, c2, c3 = feats

    def up_add(a, b):
        return F.interpolate(a, size=b.shape[2:], mode="bilinear",
                             align_corners=True) + b

    p2 = up_add(c3, e.latlayer1(c2))
    p1 = up_add(p2, e.latlayer2(c1))
    w0 = e.styles[0](c3)
    rows = [w0]
    for i in range(1, e.num_ws):
        f = c3 if i < 3 else (p2 if i < 7 else p1)
        rows.append(w0 + e.styles[i](f))
    want = torch.stack(rows, 1) + e.latent_avg
    assert torch.allclose(e(img), want, atol=1e-5)


def test_resizes_other_input_sizes_and_is_deterministic():
    e1, e2 = _tiny(3), _tiny(3)
    img = torch.rand(1, 3, 128, 128) * 2 - 1
    a = e1(img)
    assert torch.equal(a, e2(img))
    small = F.interpolate(img, size=(64, 64), mode="bilinear", align_corners=False,
                          antialias=True)
    assert torch.allclose(a, e1(small), atol=1e-6)
    with pytest.raises(ValueError):
        e1(torch.rand(1, 4, 64, 64))


def test_gradients_reach_the_input():
    e = _tiny()
    img = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    e(img).square().mean().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
