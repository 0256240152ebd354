"""e4e ``.pt``: encoder keys + ``latent_avg`` only; a numpy scalar global (or
argparse.Namespace in training checkpoints) is admitted explicitly, nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from engine.models.formats.safe_load import _ARGPARSE, _NUMPY_SCALAR, safe_torch_load
from fsexchange.errors import ModelFormatError

log = logging.getLogger(__name__)


def encoder_kwargs_from_state(sd: Mapping[str, Tensor],
                              input_resolution: int | None = None) -> dict[str, Any]:
    """Infer ``E4EEncoder`` kwargs from its (unprefixed) state dict.

    Stages are told apart by their widths (IR-SE-50: 64, 128, 256, 512), so two
    consecutive stages of equal width cannot be inferred; save such encoders in our
    own format instead."""
    if "input_layer.0.weight" not in sd or "styles.0.linear.weight" not in sd:
        raise ModelFormatError("not an e4e encoder state dict")
    units: list[int] = []
    widths: list[int] = []
    i = 0
    se = 16
    while f"body.{i}.res_layer.1.weight" in sd:
        depth = sd[f"body.{i}.res_layer.1.weight"].shape[0]
        se = depth // sd[f"body.{i}.res_layer.5.fc1.weight"].shape[0]
        if widths and widths[-1] == depth:
            units[-1] += 1
        else:
            widths.append(depth)
            units.append(1)
        i += 1
    if len(units) != 4:
        raise ModelFormatError(f"expected 4 IR-SE stages, found widths {widths}")
    num_ws = 0
    convs: list[int] = []
    while f"styles.{num_ws}.linear.weight" in sd:
        n = 0
        while f"styles.{num_ws}.convs.{2 * n}.weight" in sd:
            n += 1
        convs.append(n)
        num_ws += 1
    n0 = convs[0]
    coarse = sum(1 for c in convs if c == n0)
    middle = coarse + sum(1 for c in convs if c == n0 + 1)
    res = input_resolution or 16 * 2 ** n0
    return dict(num_ws=num_ws, w_dim=int(sd["styles.0.linear.weight"].shape[0]),
                input_resolution=int(res), stage_units=units, stage_widths=widths,
                input_width=int(sd["input_layer.0.weight"].shape[0]),
                coarse_index=coarse, middle_index=middle, se_reduction=int(se))


def read_e4e(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(encoder state dict incl. ``latent_avg``, E4EEncoder kwargs) from an e4e
    ``.pt``; the decoder and training state are dropped."""
    obj = safe_torch_load(path, allow=_NUMPY_SCALAR + _ARGPARSE, mmap=True)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ModelFormatError(f"{path} is not an e4e/pSp checkpoint (no state_dict)")
    opts = obj.get("opts") or {}
    if isinstance(opts, dict) and opts.get("encoder_type", "Encoder4Editing") != \
            "Encoder4Editing":
        raise ModelFormatError(f"{path}: encoder_type {opts.get('encoder_type')!r} is "
                               f"not supported (only Encoder4Editing)")
    sd = {k[len("encoder."):]: v for k, v in obj["state_dict"].items()
          if k.startswith("encoder.")}
    if not sd:
        raise ModelFormatError(f"{path} has no encoder.* tensors")
    kwargs = encoder_kwargs_from_state(sd)
    la = obj.get("latent_avg")
    n, w = kwargs["num_ws"], kwargs["w_dim"]
    if isinstance(la, Tensor):
        la = la.float().reshape(-1, w)
        la = la.expand(n, w).clone() if la.shape[0] == 1 else la
    else:
        log.warning("%s has no latent_avg; using zeros", path)
        la = torch.zeros(n, w)
    sd["latent_avg"] = la
    return sd, kwargs
