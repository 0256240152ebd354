"""Inputs of the training-loop tests on the tiny profile, shared by the CPU tests
(test_recipe.py) and their GPU counterparts (test_cuda.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.models.modelset import build_tiny
from engine.nets.lpips import LPIPS
from engine.stages.mask import stitch_masks


class CropClip:
    """Aligned crops by frame index, as TargetCache reads them from a clip."""

    def __init__(self, crops: list[np.ndarray]) -> None:
        self.crops = crops

    def crop(self, f: int) -> np.ndarray:
        return self.crops[f]


def pti_nets() -> tuple[Any, Any, np.ndarray, list[np.ndarray]]:
    """The tiny generator, LPIPS (random backbone), 4 pivots and 4 target crops
    (other samples of the generator), on the CPU."""
    G, _ = build_tiny()
    lp = LPIPS("alex", backbone="random", heads="uniform", seed=1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ws = G.mapping(torch.randn(4, G.z_dim, generator=gen), truncation_psi=0.7)
        imgs = G.synthesis(G.mapping(torch.randn(4, G.z_dim, generator=gen))
                           ).clamp(-1, 1)
    crops = [((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
             for im in imgs]
    return G, lp, ws.numpy().astype(np.float32), crops


def stitch_inputs(device: str = "cpu") -> tuple[Any, ...]:
    """The tiny generator (frozen) on ``device``, 3 edited latents, 3 targets, and
    the border and content masks of an oval face."""
    torch.manual_seed(0)
    G = build_tiny()[0].requires_grad_(False).to(device)
    R = G.img_resolution
    with torch.no_grad():
        ws = G.mapping(torch.randn(3, G.z_dim, device=device), truncation_psi=0.7)
        target = G.synthesis(G.mapping(torch.randn(3, G.z_dim, device=device))
                             ).clamp(-1, 1)
    yy, xx = np.mgrid[:R, :R]
    face = ((xx - R / 2) ** 2 / (0.3 * R) ** 2 + (yy - R / 2) ** 2 / (0.4 * R) ** 2) < 1
    _, border, content = (torch.from_numpy(np.stack([m] * 3)).to(device)
                          for m in stitch_masks(face))
    return G, ws, target, border, content


def pti_tuner(G: Any, lp: Any, ws: np.ndarray, crops: list[np.ndarray], device: str,
              plan: Any, passes: int = 2, lr: float = 2e-3) -> Any:
    """A PTI tuner over copies of ``G`` and ``lp`` on ``device``, one frame per
    crop, under ``plan``."""
    import copy

    from fsexchange.options import PTIConfig
    from engine.stages.pti import PTITuner, TargetCache

    G, lp = copy.deepcopy(G).to(device), copy.deepcopy(lp).to(device)
    n = len(crops)
    return PTITuner(G, lp, ws[:n], range(n),
                    TargetCache(CropClip(crops), G.img_resolution, device, lp, 8),
                    PTIConfig(steps=passes, lr=lr), device=device, plan=plan)
