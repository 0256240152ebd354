"""StyleCLIP's levels mapper: a residual MLP over W+ latents, in three groups.

Written from the description in docs/reference.md "Phase 1: latent residual
mapper" (Patashnik et al. 2021, as VideoEditGAN uses it); no StyleCLIP code is
reproduced. Three sub-mappers act on the coarse, medium and fine W+ layers (0–3,
4–7 and 8 onwards at 1024 px); each normalises every W vector to unit second
moment and runs four equalised-learning-rate linear layers (``lr_mul`` 0.01,
leaky-ReLU 0.2 times √2 after every layer, the last one included: the StyleGAN2
mapping network's arithmetic, :class:`engine.nets.stylegan2.FullyConnectedLayer`).

The temporal refinement predicts ``w' = w + s · mapper(w)`` with ``s`` 0.04::

    m = LevelsMapper(w_dim=512, num_ws=18)
    delta = m(ws)                       # [N, 18, 512], ws [N, 18, 512]

One departure, on purpose: StyleCLIP's pixel norm of a ``[N, layers, 512]`` tensor
averages over the *layer* axis (``dim=1``); here each W vector is normalised over
its own 512 values, which is what the norm is meant to do and keeps a frame's
residual independent of the group's other layers (docs/pipeline.md "Temporal
refinement").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from engine.nets.ops import normalize_2nd_moment
from engine.nets.stylegan2 import FullyConnectedLayer

__all__ = ["LevelsMapper", "SubMapper", "LEVELS"]

#: W+ layer groups of the official 18-layer generator: coarse, medium, fine.
LEVELS = ((0, 4), (4, 8), (8, None))


class SubMapper(nn.Module):
    """Pixel norm + ``layers`` × FC(w_dim → w_dim, lr_mul 0.01, lrelu) on
    ``[..., w_dim]``."""

    def __init__(self, w_dim: int, layers: int = 4, lr_mul: float = 0.01,
                 zero_last: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(*[FullyConnectedLayer(w_dim, w_dim, lr_mul=lr_mul,
                                                       activation="lrelu")
                                   for _ in range(layers)])
        if zero_last:  # the residual starts at exactly zero
            with torch.no_grad():
                self.net[-1].weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(normalize_2nd_moment(x, dim=-1))


class LevelsMapper(nn.Module):
    """Three :class:`SubMapper` for the coarse, medium and fine W+ layers.

    Args:
        w_dim: 512 official.
        num_ws: 18 official; a smaller generator keeps the group bounds 4 and 8
            (clamped to ``num_ws``), so a 10-layer test generator has coarse 0–3,
            medium 4–7, fine 8–9.
        layers, lr_mul: of each sub-mapper (4 and 0.01, as StyleCLIP).
        zero_last: start each sub-mapper's last layer at zero, so the residual is
            zero before training (StyleCLIP starts from random weights).

    ``init_kwargs`` holds these arguments (JSON) for checkpoints.
    """

    def __init__(self, w_dim: int = 512, num_ws: int = 18, *, layers: int = 4,
                 lr_mul: float = 0.01, zero_last: bool = False) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(w_dim=w_dim, num_ws=num_ws,
                                                layers=layers, lr_mul=lr_mul,
                                                zero_last=zero_last)
        self.w_dim, self.num_ws = w_dim, num_ws
        self.bounds = [(min(a, num_ws), num_ws if b is None else min(b, num_ws))
                       for a, b in LEVELS]
        self.coarse = SubMapper(w_dim, layers, lr_mul, zero_last)
        self.medium = SubMapper(w_dim, layers, lr_mul, zero_last)
        self.fine = SubMapper(w_dim, layers, lr_mul, zero_last)

    def forward(self, ws: Tensor) -> Tensor:
        """``[N, num_ws, w_dim]`` -> residual ``[N, num_ws, w_dim]``."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got "
                             f"{tuple(ws.shape)}")
        parts = [m(ws[:, a:b]) for m, (a, b) in
                 zip((self.coarse, self.medium, self.fine), self.bounds) if b > a]
        out = torch.cat(parts, dim=1)
        assert out.shape == ws.shape
        return out
