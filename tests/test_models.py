"""load_models: the tiny profile end to end, official resolution, user generators."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.formats.native import save_network
from engine.models.formats.rosinality import nvidia_to_rosinality
from engine.models.modelset import TINY_LABEL, build_tiny, load_models
from engine.nets.e4e import E4EEncoder
from engine.nets.lpips import LPIPS
from engine.nets.stylegan2 import Generator
from engine.models.store import MANIFEST, TINY_GENERATOR_KWARGS, Store
from fsexchange.errors import ModelFormatError, ModelHashMismatch, ModelMissing


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_profile_end_to_end_on_cpu():
    ms = load_models("tiny")
    assert ms.profile == "tiny" and ms.tiny and ms.info["tiny"] is True
    assert ms.label == TINY_LABEL and "TINY" in ms.info["label"]
    g, enc = ms.generator, ms.encoder
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    z = torch.randn(2, g.z_dim, generator=torch.Generator().manual_seed(0))
    ws = g.mapping(z, truncation_psi=0.7)
    img = g.synthesis(ws)  # generator
    assert img.shape == (2, 3, 64, 64) and img.abs().mean() < 1.0
    ws2 = enc(img)  # encoder
    assert ws2.shape == ws.shape == (2, g.num_ws, g.w_dim)
    assert ms.encoder_resolution == 64
    rec = g.synthesis(ws2)
    d = ms.lpips(rec, img)  # LPIPS
    assert d.shape == (2,) and torch.all(d > 0) and torch.all(ms.lpips(img, img) == 0)
    # gradients flow from LPIPS through the generator into the latents (PTI/invert)
    w = ws2.detach().clone().requires_grad_(True)
    ms.lpips(g.synthesis(w), img).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    # S-space path
    styles = g.styles(ws2)
    lip = ms.directions["lipstick"]
    deltas = lip.delta_s(5.0, g.style_channels, g.style_is_torgb)
    edited = g.synthesis_from_styles([s + torch.from_numpy(d_) for s, d_ in
                                      zip(styles, deltas)])
    assert edited.shape == img.shape and not torch.allclose(edited, rec)
    # W path
    age = ms.directions["age"]
    we = ws2 + torch.from_numpy(age.delta_w(4.0, g.num_ws))
    assert not torch.allclose(g.synthesis(we), rec)
    assert ms.info["files"]["generator"]["format"] == "facestitch"
    assert ms.info["directions_test_data"] is True


def test_tiny_models_are_deterministic_across_stores(tmp_path):
    a = load_models("tiny", store=Store(tmp_path / "a"))
    b = load_models("tiny", store=Store(tmp_path / "b"))
    sha = [m.info["files"]["generator"]["sha256"] for m in (a, b)]
    assert sha[0] == sha[1]
    z = torch.randn(1, a.generator.z_dim)
    assert torch.equal(a.generator(z), b.generator(z))
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(a.encoder(img), b.encoder(img))
    assert torch.equal(a.lpips(img, img * 0.5), b.lpips(img, img * 0.5))
    # a second load reads the saved files (and still matches a fresh build)
    g, _ = build_tiny()
    assert torch.equal(load_models("tiny", store=Store(tmp_path / "a")).generator(z),
                       g(z))


def test_damaged_tiny_file_is_rebuilt(tmp_path):
    store = Store(tmp_path)
    first = load_models("tiny", store=store)
    p = tmp_path / "tiny" / "generator.pt"
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    again = load_models("tiny", store=store)
    z = torch.randn(1, 64)
    assert torch.equal(first.generator(z), again.generator(z))


def test_official_missing_names_files_and_commands(tmp_path):
    with pytest.raises(ModelMissing) as ei:
        load_models("official", store=Store(tmp_path))
    msg = str(ei.value)
    for name in ("ffhq.pkl", "e4e_ffhq_encode.pt", "79999_iter.pth",
                 "alexnet-owt-7be5be79.pth", "facestitch models fetch",
                 "facestitch models install"):
        assert name in msg
    ms = load_models("auto", store=Store(tmp_path))
    assert ms.profile == "tiny" and ms.info["auto_fallback"] is True
    assert "e4e_ffhq_encode.pt" in ms.info["missing"]


def _small_official_set(home: Path) -> tuple[Generator, E4EEncoder]:
    """Small stand-ins written under the official names and formats."""
    models = home / "models"
    models.mkdir(parents=True)
    torch.manual_seed(0)
    g = Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=256,
                  channel_max=16, mapping_layers=2).eval()
    ros, la = nvidia_to_rosinality(g.state_dict(), 2, 32)
    torch.save({"g_ema": ros, "latent_avg": la}, models / "stylegan2-ffhq-config-f.pt")
    enc = E4EEncoder(num_ws=8, w_dim=16, input_resolution=64,
                     stage_units=(1, 2, 1, 1), stage_widths=(8, 12, 16, 24),
                     input_width=8, se_reduction=4).eval()
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items() if k != "latent_avg"}
    torch.save({"state_dict": sd, "latent_avg": enc.latent_avg,
                "opts": {"encoder_type": "Encoder4Editing", "lr": np.float64(1e-4)}},
               models / "e4e_ffhq_encode.pt")
    lp = LPIPS("alex", backbone="random", seed=1)
    torch.save({f"features.{k}": v for k, v in lp.features.state_dict().items()},
               models / "alexnet-owt-7be5be79.pth")
    torch.save({"cp.resnet.conv1.weight": torch.zeros(1)}, models / "79999_iter.pth")
    return g, enc


def test_official_profile_loads_with_the_safe_loaders(tmp_path):
    g, enc = _small_official_set(tmp_path)
    # our stand-in AlexNet cannot match the hash prefix in the official name
    with pytest.raises(ModelHashMismatch, match="7be5be79"):
        load_models("official", store=Store(tmp_path))
    manifest = tuple(dataclasses.replace(m, sha256_prefix=None)
                     if m.name == "alexnet-owt-7be5be79.pth" else m for m in MANIFEST)
    store = Store(tmp_path, manifest)
    assert store.official_complete()
    ms = load_models("auto", store=store)
    assert ms.profile == "official" and not ms.tiny
    assert ms.info["auto_fallback"] is False
    ws = g.mapping(torch.randn(2, 16))
    assert torch.equal(ms.generator.synthesis(ws), g.synthesis(ws))
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(ms.encoder(img), enc(img))
    assert ms.parser_path == tmp_path / "models" / "79999_iter.pth"
    assert ms.info["files"]["generator"]["licence"] == "NVIDIA Source Code License-NC"
    assert "NVIDIA Source Code License-NC" in ms.info["licences"]
    assert ms.directions == {}  # no official directions installed in this store
    assert ms.info["files"]["encoder"]["sha256"]  # hashed once (placed by hand)


def test_user_generator_add_and_use(tmp_path, capsys):
    from host_bridge.cli import main

    torch.manual_seed(3)
    g = Generator(**TINY_GENERATOR_KWARGS).eval()
    src = tmp_path / "mine.pt"
    save_network(g, src)
    assert main(["models", "add", "cartoon", str(src)]) == 0
    assert "cartoon: generator 64 px, 10 ws" in capsys.readouterr().out
    users = Store().user_models()
    assert users["cartoon"]["kind"] == "generator"
    ms = load_models("tiny", generator="cartoon")
    z = torch.randn(1, 64)
    assert torch.equal(ms.generator(z), g(z))
    assert "user generator cartoon" in ms.info["label"]
    # a generator that does not fit the encoder is refused
    small = Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=256,
                      channel_max=16, mapping_layers=2)
    save_network(small, tmp_path / "small.pt")
    with pytest.raises(ModelFormatError, match="ws"):
        load_models("tiny", generator=tmp_path / "small.pt")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_models_add_refuses_code_and_registers_nothing(tmp_path, capsys):
    from host_bridge.cli import main

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}))
    assert main(["models", "add", "evil", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "model.unsafe" in err and "system" in err
    assert not marker.exists()
    assert "evil" not in Store().user_models()
