"""LPIPS (Zhang et al. 2018) without importing ``lpips`` or ``torchvision``.

The backbone is our own AlexNet / VGG16 feature stack whose keys match torchvision's
``features.*`` names, so the standard torchvision weight files
(``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) load from
``torch.hub.get_dir()/checkpoints`` (= ``$TORCH_HOME/hub/checkpoints``). The
calibrated linear heads (v0.1) are read as data from the installed ``lpips``
package's files, located with ``importlib.util.find_spec`` without importing it
(importing it imports torchvision, which is broken next to CPU torch here;
docs/environment.md "torch and torchvision" and "The lpips package"). Numerics follow
the package: ScalingLayer, unit-normalised
features, squared difference, 1x1 heads, spatial mean, sum over layers.

``LPIPS(net)(a, b)`` takes images in [-1, 1] and returns distances ``[N]``;
``LPIPS(net).spatial(a, b)`` returns the distance map ``[N, 1, H, W]`` before the
spatial mean (the package's ``spatial=True``: each layer's map upsampled
bilinearly to the input size, then summed), which the temporal refinement uses as
a per-pixel loss and as its edited-region mask (docs/reference.md "Anchor and
masks").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsexchange.errors import ModelFormatError, ModelMissing

__all__ = [
    "LPIPS",
    "BACKBONE_FILES",
    "backbone_path",
    "heads_path",
    "load_backbone",
    "load_heads",
]

#: torchvision weight file of each backbone (docs/models.md "LPIPS weights").
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
BACKBONE_URLS = {k: f"https://download.pytorch.org/models/{v}"
                 for k, v in BACKBONE_FILES.items()}

# torchvision.models.alexnet().features / vgg16().features as (kind, args) rows:
# ("conv", in, out, kernel, stride, padding) | ("relu",) | ("pool", kernel, stride)
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2),
         ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool", 3, 2),
         ("conv", 192, 384, 3, 1, 1), ("relu",),
         ("conv", 384, 256, 3, 1, 1), ("relu",),
         ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool", 3, 2)]
_VGG: list[tuple] = []
_in = 3
for _n, _c in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]:
    for _i in range(_n):
        _VGG += [("conv", _in, _c, 3, 1, 1), ("relu",)]
        _in = _c
    _VGG.append(("pool", 2, 2))
# LPIPS taps: the ReLU outputs ending these feature slices (lpips pretrained_networks)
_SLICES = {"alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)],
           "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]}
_CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512]}


def _features(spec: list[tuple], upto: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for row in spec[:upto]:
        if row[0] == "conv":
            layers.append(nn.Conv2d(row[1], row[2], row[3], stride=row[4],
                                    padding=row[5]))
        elif row[0] == "relu":
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(row[1], row[2]))
    return nn.Sequential(*layers)


def backbone_path(net: str = "alex") -> Path:
    """Where the torchvision backbone file is looked up (may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def heads_path(net: str = "alex", version: str = "0.1") -> Path:
    """The ``lpips`` package's calibrated head file, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(
            "the LPIPS linear heads come from the 'lpips' package, which is not "
            "installed: pip install lpips==0.1.4 (with the torch pins)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / \
        f"v{version}" / f"{net}.pth"
    if not path.is_file():
        raise ModelMissing(f"LPIPS head file {path} is missing from the lpips package")
    return path


def load_heads(path: str | Path) -> dict[str, Tensor]:
    """``{"lin{k}.weight": [1, C_k, 1, 1]}`` from an lpips head file (weights only)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report as a model format problem
        raise ModelFormatError(f"cannot read LPIPS heads {path}: {exc}") from exc
    out = {}
    for k, v in sd.items():  # lpips names: lin{k}.model.1.weight (Dropout, Conv)
        if k.startswith("lin") and k.endswith(".weight"):
            out[f"{k.split('.')[0]}.weight"] = v
    return out


def load_backbone(path: str | Path) -> dict[str, Tensor]:
    """The ``features.*`` tensors of a torchvision AlexNet/VGG16 file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise ModelMissing(
            f"LPIPS backbone weights {path.name} not found in {path.parent}. Copy the "
            f"torchvision file there (it is at https://download.pytorch.org/models/"
            f"{path.name}) or run 'facestitch models fetch {path.name}'")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelFormatError(f"cannot read LPIPS backbone {path}: {exc}") from exc
    return {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}


class LPIPS(nn.Module):
    """Learned perceptual distance, v0.1 (linear heads on a frozen backbone).

    Args:
        net: "alex" (STIT's choice) or "vgg".
        backbone: "pretrained" (torchvision file from the hub folder, or the path
            given as ``backbone_file``) or "random" (deterministic from
            ``seed``; tests and the tiny profile only: not a perceptual metric).
        heads: "pretrained" (lpips package's calibrated heads, or ``heads_file``)
            or "uniform" (1/C; labelled fallback when lpips is not installed).

    ``forward(a, b)`` takes ``[N, 3, H, W]`` images in [-1, 1] and returns ``[N]``.
    Parameters are frozen (``requires_grad=False``) but gradients flow to inputs.
    """

    def __init__(self, net: str = "alex", *, backbone: str = "pretrained",
                 heads: str = "pretrained", seed: int = 0,
                 backbone_file: str | Path | None = None,
                 heads_file: str | Path | None = None) -> None:
        super().__init__()
        if net not in _SLICES:
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.init_kwargs: dict[str, Any] = dict(net=net, backbone=backbone,
                                                heads=heads, seed=seed)
        self.net = net
        spec = _ALEX if net == "alex" else _VGG
        self.slices = _SLICES[net]
        self.features = _features(spec, self.slices[-1][1])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])
                             .view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])
                             .view(1, 3, 1, 1), persistent=False)
        for k, c in enumerate(_CHANNELS[net]):
            self.register_parameter(f"lin{k}", nn.Parameter(torch.full((1, c, 1, 1),
                                                                       1.0 / c)))
        self.source: dict[str, str] = {}
        if backbone == "pretrained":
            path = Path(backbone_file) if backbone_file else backbone_path(net)
            self.features.load_state_dict(load_backbone(path), strict=True)
            self.source["backbone"] = str(path)
        elif backbone == "random":
            gen = torch.Generator().manual_seed(seed)
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    with torch.no_grad():
                        m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                                       * (2.0 / fan_in) ** 0.5)
                        m.bias.zero_()
            self.source["backbone"] = f"random(seed={seed}) - test only"
        else:
            raise ValueError(f"backbone must be 'pretrained' or 'random', got "
                             f"{backbone!r}")
        if heads == "pretrained":
            path = Path(heads_file) if heads_file else heads_path(net)
            sd = load_heads(path)
            with torch.no_grad():
                for k in range(len(_CHANNELS[net])):
                    w = sd.get(f"lin{k}.weight")
                    lin = getattr(self, f"lin{k}")
                    if w is None or w.shape != lin.shape:
                        raise ModelFormatError(f"LPIPS head file {path} lacks lin{k} "
                                               f"of shape {tuple(lin.shape)}")
                    lin.copy_(w)
            self.source["heads"] = str(path)
        elif heads == "uniform":
            self.source["heads"] = "uniform 1/C - not calibrated"
        else:
            raise ValueError(f"heads must be 'pretrained' or 'uniform', got {heads!r}")
        self.requires_grad_(False)
        self.eval()

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised (over channels) feature maps of an image in [-1, 1]."""
        x = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        start = 0
        for _, end in self.slices:
            for m in self.features[start:end]:
                x = m(x)
            start = end
            norm = x.square().sum(dim=1, keepdim=True).sqrt()
            out.append(x / (norm + 1e-10))
        return out

    def distance_from_features(self, fa: list[Tensor], fb: list[Tensor]) -> Tensor:
        """LPIPS from :meth:`feature_maps` outputs (lets callers cache targets)."""
        total = None
        for k, (a, b) in enumerate(zip(fa, fb)):
            d = F.conv2d((a - b).square(), getattr(self, f"lin{k}").to(a.dtype))
            d = d.mean(dim=(1, 2, 3))
            total = d if total is None else total + d
        assert total is not None
        return total

    def spatial_from_features(self, fa: list[Tensor], fb: list[Tensor],
                              size: tuple[int, int]) -> Tensor:
        """The per-pixel distance map ``[N, 1, *size]`` from :meth:`feature_maps`
        outputs: each layer's head output upsampled (bilinear, ``align_corners``
        False, as the ``lpips`` package's spatial mode) to ``size`` and summed. Its
        mean over the pixels is close to, not equal to, :meth:`distance_from_features`
        (upsampling is not mean-preserving at the borders)."""
        total = None
        for k, (a, b) in enumerate(zip(fa, fb)):
            d = F.conv2d((a - b).square(), getattr(self, f"lin{k}").to(a.dtype))
            d = F.interpolate(d, size=size, mode="bilinear", align_corners=False)
            total = d if total is None else total + d
        assert total is not None
        return total

    def spatial(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS distance map ``[N, 1, H, W]`` of images ``[N, 3, H, W]`` in [-1, 1]."""
        self._check(a, b)
        return self.spatial_from_features(self.feature_maps(a), self.feature_maps(b),
                                          (a.shape[-2], a.shape[-1]))

    @staticmethod
    def _check(a: Tensor, b: Tensor) -> None:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS inputs must be equal [N, 3, H, W], got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        self._check(a, b)
        return self.distance_from_features(self.feature_maps(a), self.feature_maps(b))
