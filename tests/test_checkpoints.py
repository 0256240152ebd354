"""Checkpoint round trips in every format we read, and refusal of unsafe files.

The NVIDIA pickle is produced the way stylegan2-ada-pytorch's persistence writes it:
every network is a call to ``torch_utils.persistence._reconstruct_persistent_obj``
with a meta dict holding ``module_src``, ``class_name`` and the module's state. The
fake ``torch_utils`` / ``dnnlib`` modules exist only here, to write that pickle.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import io
import math
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.models.checkpoints import (inspect_checkpoint, load_encoder,
                                       load_generator, sniff_format)
from engine.models.formats.bisenet import read_bisenet_state
from engine.models.formats.native import load_network, save_network
from engine.models.formats.nvidia import read_nvidia_pickle
from engine.models.formats.rosinality import nvidia_to_rosinality, rosinality_to_nvidia
from engine.nets.e4e import E4EEncoder
from engine.nets.lpips import LPIPS
from engine.nets.ops import upfirdn2d
from engine.nets.stylegan2 import Generator
from engine.models.store import TINY_ENCODER_KWARGS
from fsexchange.errors import ModelFormatError, ModelUnsafe

GEN_KW = dict(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16,
              mapping_layers=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    g = Generator(**GEN_KW).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "affine" in name else 0.0))
        g.mapping.w_avg.copy_(torch.randn(16))
    return g


# --- writing an NVIDIA-style pickle ---------------------------------------------------

NV_CLASSES = {
    "Generator": "training.networks.Generator",
    "MappingNetwork": "training.networks.MappingNetwork",
    "SynthesisNetwork": "training.networks.SynthesisNetwork",
    "SynthesisBlock": "training.networks.SynthesisBlock",
    "SynthesisLayer": "training.networks.SynthesisLayer",
    "ToRGBLayer": "training.networks.ToRGBLayer",
    "FullyConnectedLayer": "training.networks.FullyConnectedLayer",
}


@pytest.fixture
def nvidia_modules(monkeypatch, tmp_path):
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` (test only) + a marker
    file that embedded source would create if it ever ran."""
    marker = tmp_path / "module_src_ran"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - must never run
        raise AssertionError("the real reconstructor must never be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    for name, mod in (("torch_utils", torch_utils), ("torch_utils.persistence",
                                                     persistence),
                      ("dnnlib", dnnlib), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)
    src = (f"import os\nopen({str(marker)!r}, 'w').write('ran')\n"
           "os.system('echo pwned')\n# training/networks.py would be here\n")
    return types.SimpleNamespace(EasyDict=EasyDict,
                                 reconstruct=_reconstruct_persistent_obj,
                                 marker=marker, module_src=src)


class _Persistent:
    def __init__(self, meta, fn):
        self.meta, self.fn = meta, fn

    def __reduce__(self):
        return (self.fn, (self.meta,))


def _record(mod: torch.nn.Module, nv, init_kwargs=None, class_name=None):
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(mod._parameters),
        "_buffers": collections.OrderedDict(mod._buffers),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(
            (k, _record(c, nv)) for k, c in mod._modules.items()),
        "_init_args": (),
        "_init_kwargs": nv.EasyDict(init_kwargs or {}),
        "_orig_class_name": class_name or NV_CLASSES[type(mod).__name__],
    }
    for attr in ("w_dim", "z_dim", "num_ws", "img_resolution", "activation",
                 "weight_gain", "resolution"):
        if attr in mod.__dict__:
            state[attr] = mod.__dict__[attr]
    meta = {"type": "class", "version": 6, "module_src": nv.module_src,
            "class_name": class_name or NV_CLASSES[type(mod).__name__], "state": state}
    return _Persistent(meta, nv.reconstruct)


def _nvidia_kwargs(nv):
    return dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                mapping_kwargs=nv.EasyDict(num_layers=3, lr_multiplier=0.01,
                                           w_avg_beta=0.995),
                synthesis_kwargs=nv.EasyDict(channel_base=256, channel_max=16,
                                             num_fp16_res=0, conv_clamp=None,
                                             architecture="skip",
                                             resample_filter=[1, 3, 3, 1]))


def write_nvidia_pickle(path: Path, g: Generator, nv, protocol: int = 4) -> None:
    g_rec = _record(g, nv, _nvidia_kwargs(nv))
    # a non-persistent buffer at the top level must be skipped by the reader
    g_rec.meta["state"]["_buffers"]["scratch"] = torch.ones(2)
    g_rec.meta["state"]["_non_persistent_buffers_set"] = {"scratch"}
    d_rec = _record(_gen(9).synthesis.b4, nv,
                    class_name="training.networks.Discriminator")
    data = {"G": g_rec, "D": d_rec, "G_ema": g_rec,
            "training_set_kwargs": nv.EasyDict(path="ffhq.zip", resolution=32),
            "augment_pipe": None}
    path.write_bytes(pickle.dumps(data, protocol=protocol))


# --- an independent rosinality-semantics renderer -----------------------------


def _rosinality_render(g: dict, ws: torch.Tensor) -> torch.Tensor:
    """Render W+ with rosinality's layer semantics straight from its state dict:
    weights scaled by 1/sqrt(fan_in) at run time, blur/upsample kernels carrying the
    x4 gain, NoiseInjection + FusedLeakyReLU, skip ToRGB with Upsample."""
    def modconv(x, prefix, w, demod=True, up=False):
        wt = g[f"{prefix}.conv.weight"][0]  # [O, I, k, k]
        o, i, k, _ = wt.shape
        s = F.linear(w, g[f"{prefix}.conv.modulation.weight"] / math.sqrt(
            g[f"{prefix}.conv.modulation.weight"].shape[1]),
            g[f"{prefix}.conv.modulation.bias"])
        outs = []
        for n in range(x.shape[0]):
            wn = wt / math.sqrt(i * k * k) * s[n][None, :, None, None]
            if demod:
                wn = wn * torch.rsqrt(wn.pow(2).sum([1, 2, 3]) + 1e-8)[:, None, None,
                                                                     None]
            if up:
                y = F.conv_transpose2d(x[n:n + 1], wn.transpose(0, 1), stride=2)
                y = upfirdn2d(y, g[f"{prefix}.conv.blur.kernel"], padding=(1, 1, 1, 1))
            else:
                y = F.conv2d(x[n:n + 1], wn, padding=k // 2)
            outs.append(y)
        return torch.cat(outs)

    def styled(x, prefix, w, noise, up=False):
        y = modconv(x, prefix, w, up=up)
        y = y + g[f"{prefix}.noise.weight"] * noise
        return F.leaky_relu(y + g[f"{prefix}.activate.bias"][None, :, None, None],
                            0.2) * math.sqrt(2)

    def torgb(x, prefix, w, skip):
        y = modconv(x, prefix, w, demod=False) + g[f"{prefix}.bias"]
        if skip is not None:
            y = y + upfirdn2d(skip, g[f"{prefix}.upsample.kernel"], up=2,
                              padding=(2, 1, 2, 1))
        return y

    n = ws.shape[0]
    x = g["input.input"].repeat(n, 1, 1, 1)
    x = styled(x, "conv1", ws[:, 0], g["noises.noise_0"])
    skip = torgb(x, "to_rgb1", ws[:, 1], None)
    i, k = 1, 0
    while f"convs.{k}.conv.weight" in g:
        x = styled(x, f"convs.{k}", ws[:, i], g[f"noises.noise_{k + 1}"], up=True)
        x = styled(x, f"convs.{k + 1}", ws[:, i + 1], g[f"noises.noise_{k + 2}"])
        skip = torgb(x, f"to_rgbs.{k // 2}", ws[:, i + 2], skip)
        i, k = i + 2, k + 2
    return skip


# --- tests --------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_nvidia_pickle_round_trip_runs_no_embedded_code(tmp_path, nvidia_modules,
                                                       protocol):
    g = _gen()
    path = tmp_path / "ffhq.pkl"
    write_nvidia_pickle(path, g, nvidia_modules, protocol)
    assert sniff_format(path) == "pickle"
    data = read_nvidia_pickle(path)
    assert set(data) >= {"G", "D", "G_ema"}
    g2 = load_generator(path)
    assert not nvidia_modules.marker.exists()  # module_src never ran
    assert g2.init_kwargs == g.init_kwargs
    for k, v in g.state_dict().items():
        assert torch.equal(g2.state_dict()[k], v), k
    ws = g.mapping(torch.randn(2, 16), truncation_psi=0.7)
    assert torch.equal(g2.synthesis(ws), g.synthesis(ws))
    assert torch.equal(g2.mapping.w_avg, g.mapping.w_avg)


def test_nvidia_and_rosinality_paths_render_the_same_image(tmp_path, nvidia_modules):
    g = _gen(1)
    pkl = tmp_path / "ffhq.pkl"
    write_nvidia_pickle(pkl, g, nvidia_modules)
    ros_sd, la = nvidia_to_rosinality(g.state_dict(), 3, 32)
    pt = tmp_path / "stylegan2-ffhq-config-f.pt"
    torch.save({"g_ema": ros_sd, "latent_avg": la}, pt)
    g_nv, g_ro = load_generator(pkl), load_generator(pt)
    ws = g.mapping(torch.randn(3, 16), truncation_psi=0.5)
    img_nv, img_ro = g_nv.synthesis(ws), g_ro.synthesis(ws)
    assert torch.equal(img_nv, img_ro)
    assert torch.equal(g_nv.mapping(torch.ones(1, 16), 0.5),
                       g_ro.mapping(torch.ones(1, 16), 0.5))
    # and both equal rosinality's own layer semantics on its own keys
    ref = _rosinality_render(ros_sd, ws)
    assert torch.allclose(img_ro, ref, atol=1e-5)
    # a flipped up-sampling kernel (the classic conversion bug) would show
    bad = dict(ros_sd)
    bad["convs.2.conv.weight"] = bad["convs.2.conv.weight"].flip([-1, -2])
    assert not torch.allclose(_rosinality_render(bad, ws), ref, atol=1e-3)
    # the key table round-trips exactly
    back, kw = rosinality_to_nvidia(ros_sd, la)
    assert kw == {**g.init_kwargs, "mapping_layers": 3}
    assert set(back) == set(g.state_dict())


def test_rosinality_training_checkpoint_with_argparse_namespace(tmp_path):
    g = _gen(2)
    ros_sd, la = nvidia_to_rosinality(g.state_dict(), 3, 32)
    pt = tmp_path / "train.pt"
    torch.save({"g_ema": ros_sd, "latent_avg": la, "g": ros_sd,
                "args": argparse.Namespace(size=32, n_mlp=3, channel_multiplier=2)}, pt)
    g2 = load_generator(pt)
    ws = g.mapping(torch.randn(1, 16))
    assert torch.equal(g2.synthesis(ws), g.synthesis(ws))
    bad = dict(ros_sd)
    bad["something.else"] = torch.zeros(1)
    torch.save({"g_ema": bad, "latent_avg": la}, pt)
    with pytest.raises(ModelFormatError, match="something.else"):
        load_generator(pt)


class _Evil:
    """A pickle payload that would run a command if unpickled normally."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('x')",))


class _EvilStorage:
    """Looks like a tensor storage (allowed _load_from_bytes) whose inner bytes are a
    legacy torch.save of a code-running object."""

    def __init__(self, marker: Path):
        buf = io.BytesIO()
        torch.save(_Evil("system", marker), buf, _use_new_zipfile_serialization=False)
        self.payload = buf.getvalue()

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.payload,))


@pytest.mark.parametrize("how", ["system", "exec", "storage"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "marker"
    payload = _EvilStorage(marker) if how == "storage" else _Evil(how, marker)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": payload}, protocol=2))
    with pytest.raises(ModelUnsafe) as ei:
        load_generator(path)
    assert not marker.exists()
    msg = str(ei.value)
    if how == "system":
        assert "'system'" in msg and ("'posix'" in msg or "'nt'" in msg)
    elif how == "exec":
        assert "'exec')" in msg and "builtin" in msg
    with pytest.raises(ModelUnsafe):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_torch_zip_with_code_running_global_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "x": _Evil("system", marker)}, path)
    with pytest.raises(ModelUnsafe):
        load_generator(path)
    assert not marker.exists()


def _e4e_file(path: Path, enc: E4EEncoder, **extra) -> None:
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items() if k != "latent_avg"}
    sd["decoder.style.1.weight"] = torch.randn(4, 4)  # dropped by the reader
    torch.save({"state_dict": sd, "latent_avg": enc.latent_avg.clone(),
                "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 64,
                         "start_from_latent_avg": True, "lr": np.float64(1e-4),
                         **extra.pop("opts", {})}, **extra}, path)


def test_e4e_round_trip_with_numpy_scalar_in_opts(tmp_path):
    torch.manual_seed(0)
    enc = E4EEncoder(**TINY_ENCODER_KWARGS).eval()
    with torch.no_grad():
        enc.latent_avg.normal_()
    path = tmp_path / "e4e_ffhq_encode.pt"
    _e4e_file(path, enc, global_step=np.int64(5))
    enc2 = load_encoder(path)
    assert enc2.init_kwargs == enc.init_kwargs
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(enc2(img), enc(img))
    info = inspect_checkpoint(path)
    assert info["kind"] == "encoder" and info["num_ws"] == 10


class _Foreign:
    pass


def test_e4e_with_a_foreign_global_is_refused(tmp_path):
    torch.manual_seed(0)
    enc = E4EEncoder(**TINY_ENCODER_KWARGS).eval()
    path = tmp_path / "e4e.pt"
    _e4e_file(path, enc, opts={"thing": _Foreign()})
    with pytest.raises(ModelUnsafe, match="_Foreign"):
        load_encoder(path)


def test_own_format_round_trip_and_tamper_detection(tmp_path):
    g = _gen(4)
    meta = save_network(g, tmp_path / "g.pt", info={"note": "pti"})
    assert (tmp_path / "g.json").is_file() and meta["class"] == "Generator"
    g2 = load_network(tmp_path / "g.pt")
    ws = g.mapping(torch.randn(1, 16))
    assert torch.equal(g2.synthesis(ws), g.synthesis(ws))
    assert load_generator(tmp_path / "g.pt").init_kwargs == g.init_kwargs
    with pytest.raises(ModelFormatError, match="not a E4EEncoder|E4EEncoder"):
        load_network(tmp_path / "g.pt", expect="E4EEncoder")
    # LPIPS and the encoder too
    lp = LPIPS("alex", backbone="random", seed=3)
    save_network(lp, tmp_path / "lp.pt")
    lp2 = load_network(tmp_path / "lp.pt")
    a, b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    assert torch.equal(lp2(a, b), lp(a, b))
    enc = E4EEncoder(**TINY_ENCODER_KWARGS).eval()
    save_network(enc, tmp_path / "e.pt")
    assert torch.equal(load_encoder(tmp_path / "e.pt")(a * 0 + 0.1), enc(a * 0 + 0.1))
    # a changed tensor file is detected
    raw = bytearray((tmp_path / "g.pt").read_bytes())
    raw[-100] ^= 0xFF
    (tmp_path / "g.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError, match="hash"):
        load_network(tmp_path / "g.pt")


def test_bisenet_state_reader(tmp_path):
    sd = {"module.cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7),
          "module.conv_out.conv_out.weight": torch.zeros(19, 256, 1, 1)}
    torch.save(sd, tmp_path / "79999_iter.pth")
    out = read_bisenet_state(tmp_path / "79999_iter.pth")
    assert set(out) == {"cp.resnet.conv1.weight", "conv_out.conv_out.weight"}
    torch.save({k[7:]: v for k, v in sd.items()}, tmp_path / "p.pth")
    info = inspect_checkpoint(tmp_path / "p.pth")
    assert info == {"kind": "parser", "format": "bisenet", "config": {"classes": 19},
                    "tensors": 2}
    torch.save({"x": torch.zeros(1)}, tmp_path / "q.pth")
    with pytest.raises(ModelFormatError):
        read_bisenet_state(tmp_path / "q.pth")


def test_inspect_identifies_generators(tmp_path, nvidia_modules):
    g = _gen(5)
    write_nvidia_pickle(tmp_path / "a.pkl", g, nvidia_modules)
    info = inspect_checkpoint(tmp_path / "a.pkl")
    assert (info["kind"], info["format"], info["img_resolution"], info["num_ws"]) == \
        ("generator", "nvidia-pkl", 32, 8)
    ros, la = nvidia_to_rosinality(g.state_dict(), 3, 32)
    torch.save({"g_ema": ros, "latent_avg": la}, tmp_path / "b.pt")
    assert inspect_checkpoint(tmp_path / "b.pt")["format"] == "rosinality"
    (tmp_path / "c.bin").write_bytes(b"hello")
    with pytest.raises(ModelFormatError):
        inspect_checkpoint(tmp_path / "c.bin")
    assert not nvidia_modules.marker.exists()
