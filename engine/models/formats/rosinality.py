"""rosinality StyleGAN2 ``.pt`` (and the e4e decoder, which uses its key names):
``weights_only`` load, keys converted to and from NVIDIA's ``G_ema`` names.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from engine.models.formats.safe_load import _ARGPARSE, _NUMPY_SCALAR, safe_torch_load
from engine.nets.ops import setup_filter
from fsexchange.errors import ModelFormatError

log = logging.getLogger(__name__)


def _squeeze0(t: Tensor) -> Tensor:
    return t.reshape(t.shape[1:]) if t.ndim and t.shape[0] == 1 else t


def rosinality_to_nvidia(g: Mapping[str, Tensor], latent_avg: Tensor | None
                         ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Convert a rosinality ``g_ema`` state dict (docs/models.md "NVIDIA to rosinality
    key mapping").

    Returns our state dict and ``Generator`` kwargs (inferred from the shapes).
    Every rosinality key must be used, or :class:`ModelFormatError` is raised.
    """
    g = dict(g)
    used: set[str] = set()

    def take(k: str) -> Tensor:
        if k not in g:
            raise ModelFormatError(f"rosinality state dict lacks {k}")
        used.add(k)
        return g[k]

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in g:
        n_mlp += 1
    n_rgbs = 0
    while f"to_rgbs.{n_rgbs}.conv.weight" in g:
        n_rgbs += 1
    if n_mlp == 0 or "input.input" not in g:
        raise ModelFormatError("not a rosinality StyleGAN2 generator state dict")
    log2 = n_rgbs + 2
    res = 2 ** log2
    out: dict[str, Tensor] = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    w_dim = out["mapping.fc0.weight"].shape[0]
    z_dim = out["mapping.fc0.weight"].shape[1]
    if latent_avg is None:
        log.warning("rosinality checkpoint without latent_avg: w_avg = 0 (truncation "
                    "will pull towards 0)")
        latent_avg = torch.zeros(w_dim)
    out["mapping.w_avg"] = latent_avg.reshape(-1, w_dim)[0].float()

    default_f = None
    for k in g:
        if k.endswith("blur.kernel") or k.endswith("upsample.kernel"):
            default_f = g[k] / 4.0  # rosinality bakes the x4 up-sampling gain in
            break
    if default_f is None:
        default_f = setup_filter([1, 3, 3, 1])

    def conv(prefix: str, dst: str, noise_key: str, up: bool) -> None:
        out[f"{dst}.weight"] = _squeeze0(take(f"{prefix}.conv.weight"))
        out[f"{dst}.affine.weight"] = take(f"{prefix}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{prefix}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = take(f"{prefix}.noise.weight").reshape([])
        out[f"{dst}.bias"] = take(f"{prefix}.activate.bias")
        out[f"{dst}.noise_const"] = take(noise_key).reshape(take(noise_key).shape[-2:])
        out[f"{dst}.resample_filter"] = (take(f"{prefix}.conv.blur.kernel") / 4.0
                                         if up else default_f.clone())

    def torgb(prefix: str, dst: str) -> None:
        out[f"{dst}.weight"] = _squeeze0(take(f"{prefix}.conv.weight"))
        out[f"{dst}.affine.weight"] = take(f"{prefix}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{prefix}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{prefix}.bias").reshape(-1)

    out["synthesis.b4.const"] = _squeeze0(take("input.input"))
    out["synthesis.b4.resample_filter"] = default_f.clone()
    conv("conv1", "synthesis.b4.conv1", "noises.noise_0", up=False)
    torgb("to_rgb1", "synthesis.b4.torgb")
    channels = {4: out["synthesis.b4.const"].shape[0]}
    for j in range(3, log2 + 1):
        r = 2 ** j
        for c in (0, 1):
            k = 2 * (j - 3) + c
            conv(f"convs.{k}", f"synthesis.b{r}.conv{c}", f"noises.noise_{k + 1}",
                 up=(c == 0))
        torgb(f"to_rgbs.{j - 3}", f"synthesis.b{r}.torgb")
        up_key = f"to_rgbs.{j - 3}.upsample.kernel"
        out[f"synthesis.b{r}.resample_filter"] = (take(up_key) / 4.0 if up_key in g
                                                  else default_f.clone())
        channels[r] = out[f"synthesis.b{r}.conv1.weight"].shape[0]
    extra = sorted(set(g) - used)
    if extra:
        raise ModelFormatError(f"rosinality state dict has keys we do not understand: "
                               f"{', '.join(extra[:8])}")
    cmax = max(channels.values())
    cbase = channels[res] * res
    if any(min(cbase // r, cmax) != c for r, c in channels.items()):
        raise ModelFormatError(f"channel widths {channels} do not follow "
                               f"min(base / r, max)")
    kwargs = dict(z_dim=int(z_dim), w_dim=int(w_dim), img_resolution=res,
                  img_channels=int(out["synthesis.b4.torgb.weight"].shape[0]),
                  channel_base=int(cbase), channel_max=int(cmax), mapping_layers=n_mlp,
                  mapping_lr_mul=0.01, conv_clamp=None,
                  resample_filter=[1.0, 3.0, 3.0, 1.0], use_noise=True,
                  w_avg_beta=0.995)
    return out, kwargs


def nvidia_to_rosinality(sd: Mapping[str, Tensor], num_mapping: int,
                         resolution: int) -> tuple[dict[str, Tensor], Tensor]:
    """Inverse of :func:`rosinality_to_nvidia`: (``g_ema`` dict, ``latent_avg``)."""
    g: dict[str, Tensor] = {}
    for i in range(num_mapping):
        g[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"].clone()
        g[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"].clone()
    g["input.input"] = sd["synthesis.b4.const"][None].clone()

    def conv(src: str, dst: str, noise_key: str, up: bool) -> None:
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        g[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1).clone()
        g[f"{dst}.activate.bias"] = sd[f"{src}.bias"].clone()
        g[noise_key] = sd[f"{src}.noise_const"][None, None].clone()
        if up:
            g[f"{dst}.conv.blur.kernel"] = sd[f"{src}.resample_filter"] * 4.0

    def torgb(src: str, dst: str, up_filter: Tensor | None) -> None:
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        g[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1).clone()
        if up_filter is not None:
            g[f"{dst}.upsample.kernel"] = up_filter * 4.0

    conv("synthesis.b4.conv1", "conv1", "noises.noise_0", False)
    torgb("synthesis.b4.torgb", "to_rgb1", None)
    for j in range(3, int(round(math.log2(resolution))) + 1):
        r = 2 ** j
        for c in (0, 1):
            k = 2 * (j - 3) + c
            conv(f"synthesis.b{r}.conv{c}", f"convs.{k}", f"noises.noise_{k + 1}",
                 c == 0)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{j - 3}",
              sd[f"synthesis.b{r}.resample_filter"])
    return g, sd["mapping.w_avg"].clone()


def read_rosinality(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(our state dict, Generator kwargs) from a rosinality ``.pt``."""
    obj = safe_torch_load(path, allow=_ARGPARSE + _NUMPY_SCALAR, mmap=True)
    if not isinstance(obj, dict) or "g_ema" not in obj:
        raise ModelFormatError(f"{path} has no g_ema generator (rosinality layout)")
    la = obj.get("latent_avg")
    return rosinality_to_nvidia(obj["g_ema"], la if isinstance(la, Tensor) else None)
