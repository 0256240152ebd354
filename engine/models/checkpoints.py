"""One front door to model files: sniff a file's format and load the network it
holds. Weights are data, never code.

The readers live one per format in :mod:`engine.models.formats` (see
docs/models.md for each format): ``nvidia`` (stylegan2-ada-pytorch ``.pkl``, an
allow-listed unpickler that never runs the embedded source), ``rosinality``
(StyleGAN2 ``.pt``), ``e4e`` (encoder ``.pt``), ``bisenet`` (face parser ``.pth``),
``native`` (our own ``state dict + JSON`` format) and ``safe_load`` (the
``weights_only`` loader they share).

Example::

    G = load_generator("ffhq.pkl", device="cuda")      # any supported format
    info = inspect_checkpoint("user_model.pt")           # {"kind": "generator", ...}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from fsexchange.errors import ModelFormatError, ModelMissing
from fsexchange.fsutil import check_regular, open_regular

from engine.models.formats.bisenet import read_bisenet_state
from engine.models.formats.e4e import read_e4e
from engine.models.formats.native import (NETWORK_FORMAT, _materialise, _sidecar,
                                          load_network, read_network_meta)
from engine.models.formats.nvidia import (generator_kwargs_from_nvidia,
                                          nvidia_generator_state, read_nvidia_pickle)
from engine.models.formats.rosinality import read_rosinality
from engine.models.formats.safe_load import (_ARGPARSE, _NUMPY_SCALAR,
                                             safe_torch_load)

__all__ = ["sniff_format", "load_generator", "load_encoder", "inspect_checkpoint"]

log = logging.getLogger(__name__)

# --- dispatch -----------------------------------------------------------------------

_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def sniff_format(path: str | Path) -> str:
    """"facestitch" | "torch-zip" | "torch-legacy" | "pickle" | "npy" | "unknown"."""
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(
            f"{path} is a folder, not a model file: give the checkpoint file itself "
            f"(official files from a folder: facestitch models install --from {path})")
    if not path.is_file():
        if os.path.lexists(path):
            check_regular(path)  # says what it is instead (a pipe, a socket...)
        raise ModelMissing(f"{path} not found")
    side = _sidecar(path)
    if side.is_file():
        try:
            if json.loads(side.read_text("utf-8")).get("format") == NETWORK_FORMAT:
                return "facestitch"
        except (ValueError, OSError, AttributeError):
            pass
    with open_regular(path, follow_symlinks=True) as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80" and head[2:14] == _LEGACY_TORCH_MAGIC:
        return "torch-legacy"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _build_generator(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any], what: str,
                     device: str | torch.device) -> nn.Module:
    from engine.nets.stylegan2 import Generator

    g = _materialise(Generator, kwargs, {k: v.float() for k, v in sd.items()}, what)
    return g.to(device).eval().requires_grad_(False)


def load_generator(path: str | Path, *,
                   device: str | torch.device = "cpu") -> nn.Module:
    """A ``Generator`` from an NVIDIA ``.pkl``, a rosinality ``.pt`` or our format."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "facestitch":
        return load_network(path, device=device, expect="Generator"
                            ).requires_grad_(False)
    if fmt == "pickle":
        sd, raw = nvidia_generator_state(read_nvidia_pickle(path))
        return _build_generator(sd, generator_kwargs_from_nvidia(raw), str(path),
                                device)
    if fmt in ("torch-zip", "torch-legacy"):
        sd, kwargs = read_rosinality(path)
        return _build_generator(sd, kwargs, str(path), device)
    raise ModelFormatError(f"{path}: not a StyleGAN2 checkpoint we can read "
                           f"(format {fmt})")


def load_encoder(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """An ``E4EEncoder`` from an e4e ``.pt`` or our format."""
    from engine.nets.e4e import E4EEncoder

    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "facestitch":
        return load_network(path, device=device, expect="E4EEncoder")
    if fmt not in ("torch-zip", "torch-legacy"):
        raise ModelFormatError(f"{path}: not an e4e checkpoint (format {fmt})")
    sd, kwargs = read_e4e(path)
    enc = _materialise(E4EEncoder, kwargs, {k: v.float() if v.is_floating_point()
                                            else v for k, v in sd.items()}, str(path))
    return enc.to(device).eval().requires_grad_(False)


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """Identify a checkpoint with the safe loaders only and check that it builds.

    Returns ``{"kind": "generator"|"encoder"|"parser"|"lpips"|"direction",
    "format": ..., "config": {...}, ...}``; raises :class:`ModelUnsafe` for files
    that would need code to load, :class:`ModelFormatError` for anything else we
    cannot read.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "facestitch":
        meta = read_network_meta(path)
        net = load_network(path)
        kind = {"Generator": "generator", "E4EEncoder": "encoder",
                "LPIPS": "lpips"}[meta["class"]]
        return _describe(kind, "facestitch", net, meta.get("init_kwargs", {}))
    if fmt == "npy":
        from engine.models.directions import load_direction

        d = load_direction(path)
        return {"kind": "direction", "format": "npy", "config": d.to_dict()}
    if fmt == "pickle":
        sd, raw = nvidia_generator_state(read_nvidia_pickle(path))
        kwargs = generator_kwargs_from_nvidia(raw)
        g = _build_generator(sd, kwargs, str(path), "cpu")
        return _describe("generator", "nvidia-pkl", g, kwargs)
    if fmt in ("torch-zip", "torch-legacy"):
        obj = safe_torch_load(path, allow=_ARGPARSE + _NUMPY_SCALAR, mmap=True)
        if isinstance(obj, dict) and "g_ema" in obj:
            sd, kwargs = read_rosinality(path)
            return _describe("generator", "rosinality",
                             _build_generator(sd, kwargs, str(path), "cpu"), kwargs)
        if isinstance(obj, dict) and "state_dict" in obj:
            enc = load_encoder(path)
            return _describe("encoder", "e4e", enc, getattr(enc, "init_kwargs", {}))
        if isinstance(obj, dict) and "cp.resnet.conv1.weight" in obj:
            sd = read_bisenet_state(path)
            n_cls = int(sd["conv_out.conv_out.weight"].shape[0])
            return {"kind": "parser", "format": "bisenet",
                    "config": {"classes": n_cls}, "tensors": len(sd)}
        raise ModelFormatError(f"{path}: a torch file, but not a generator, e4e "
                               f"encoder or BiSeNet parser we recognise")
    raise ModelFormatError(f"{path}: unrecognised file format")


def _describe(kind: str, fmt: str, net: nn.Module, kwargs: Mapping[str, Any]
              ) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind, "format": fmt, "config": dict(kwargs),
                            "parameters": int(sum(p.numel() for p in net.parameters()))}
    for attr in ("num_ws", "w_dim", "img_resolution", "input_resolution"):
        if hasattr(net, attr):
            info[attr] = getattr(net, attr)
    return info

