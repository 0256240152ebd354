"""e4e encoder (Tov et al. 2021, "Designing an Encoder for StyleGAN Image
Manipulation"): IR-SE-50 backbone + FPN + gradual style blocks with progressive W+
deltas, written from the description in docs/reference.md "Inversion with e4e".

Key names match the ``encoder.``-prefixed keys of ``e4e_ffhq_encode.pt`` with the
prefix removed (docs/models.md "e4e checkpoint"), plus our ``latent_avg`` buffer, so
the official
tensors load with ``strict=True``. Parameterised (units and widths per stage, number
of style blocks, input resolution) so that a tiny instance builds in milliseconds::

    enc = E4EEncoder(num_ws=10, w_dim=64, input_resolution=64,
                     stage_units=(1, 1, 1, 1), stage_widths=(16, 24, 32, 64))
    ws = enc(img)            # img [N, 3, 64, 64] in [-1, 1] -> [N, 10, 64]
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["E4EEncoder", "OFFICIAL_ENCODER_KWARGS"]

#: e4e_ffhq_encode.pt: IR-SE-50 at 256 px, 18 styles of 512 (docs/reference.md
# "Inversion with e4e").
OFFICIAL_ENCODER_KWARGS: dict[str, Any] = dict(
    num_ws=18, w_dim=512, input_resolution=256, stage_units=[3, 4, 14, 3],
    stage_widths=[64, 128, 256, 512], input_width=64, coarse_index=3,
    middle_index=7, se_reduction=16,
)


class SEModule(nn.Module):
    """Squeeze-excitation: channel gates from the global average (no biases)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
        return x * g


class BottleneckIRSE(nn.Module):
    """IR-SE unit: BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN -> SE, + shortcut
    (MaxPool(1, stride) when the width is unchanged, else conv1x1(stride) + BN)."""

    def __init__(self, in_channels: int, depth: int, stride: int,
                 se_reduction: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, se_reduction))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """Equalised-LR linear (weight scaled by ``lr_mul/sqrt(in)``), no activation."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 conv3x3 + LeakyReLU(0.01) to 1x1, then EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        num_pools = int(round(math.log2(spatial)))
        layers: list[nn.Module] = []
        for i in range(num_pools):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels,
                                 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], self.out_channels))


def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
    # pSp/e4e FPN merge: bilinear, align_corners=True (docs/reference.md "Inversion
    # with e4e")
    return F.interpolate(x, size=y.shape[2:], mode="bilinear",
                         align_corners=True) + y


class E4EEncoder(nn.Module):
    """Image ``[N, 3, R, R]`` in [-1, 1] -> W+ codes ``[N, num_ws, w_dim]``.

    ``latent_avg`` (``[num_ws, w_dim]``) is added at the end, as pSp does with
    ``start_from_latent_avg``. An input of another size is resized bilinearly (with
    antialiasing when shrinking) to ``input_resolution`` first, like the reference's
    tensor ``Resize``.

    Args:
        num_ws, w_dim: output code shape (18, 512 official).
        input_resolution: 256 official; a power of two >= 64 (the style blocks
            halve R/16, R/8 and R/4 down to 1x1).
        stage_units: IR-SE units per stage ([3, 4, 14, 3] = IR-SE-50).
        stage_widths: channels per stage ([64, 128, 256, 512]); the last one is the
            FPN width that the style blocks read.
        input_width: channels of the input layer (64).
        coarse_index, middle_index: first style read from p2 / p1 (3, 7).
    """

    def __init__(self, num_ws: int = 18, w_dim: int = 512, input_resolution: int = 256,
                 *, stage_units: Sequence[int] = (3, 4, 14, 3),
                 stage_widths: Sequence[int] = (64, 128, 256, 512),
                 input_width: int = 64, coarse_index: int = 3, middle_index: int = 7,
                 se_reduction: int = 16) -> None:
        super().__init__()
        if len(stage_units) != 4 or len(stage_widths) != 4:
            raise ValueError("stage_units and stage_widths need 4 entries")
        if input_resolution < 64 or input_resolution & (input_resolution - 1):
            raise ValueError("input_resolution must be a power of two >= 64")
        self.init_kwargs: dict[str, Any] = dict(
            num_ws=num_ws, w_dim=w_dim, input_resolution=input_resolution,
            stage_units=list(stage_units), stage_widths=list(stage_widths),
            input_width=input_width, coarse_index=coarse_index,
            middle_index=middle_index, se_reduction=se_reduction)
        self.num_ws, self.w_dim = num_ws, w_dim
        self.input_resolution = input_resolution
        self.coarse_index = min(coarse_index, num_ws)
        self.middle_index = min(middle_index, num_ws)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, input_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(input_width), nn.PReLU(input_width))
        units: list[nn.Module] = []
        in_c = input_width
        self.taps: list[int] = []
        for n, depth in zip(stage_units, stage_widths):
            for i in range(n):
                units.append(BottleneckIRSE(in_c, depth, 2 if i == 0 else 1,
                                            se_reduction))
                in_c = depth
            self.taps.append(len(units) - 1)
        self.body = nn.Sequential(*units)
        # c1: end of stage 2 (R/4), c2: stage 3 (R/8), c3: stage 4 (R/16)
        fpn = stage_widths[3]
        s3 = input_resolution // 16
        self.styles = nn.ModuleList()
        for i in range(num_ws):
            if i < self.coarse_index:
                spatial, in_ch = s3, fpn
            elif i < self.middle_index:
                spatial, in_ch = s3 * 2, fpn
            else:
                spatial, in_ch = s3 * 4, fpn
            self.styles.append(GradualStyleBlock(in_ch, w_dim, spatial))
        self.latlayer1 = nn.Conv2d(stage_widths[2], fpn, 1)
        self.latlayer2 = nn.Conv2d(stage_widths[1], fpn, 1)
        self.register_buffer("latent_avg", torch.zeros(num_ws, w_dim))

    def forward(self, img: Tensor) -> Tensor:
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"encoder input must be [N, 3, H, W], got "
                             f"{tuple(img.shape)}")
        r = self.input_resolution
        if img.shape[2:] != (r, r):
            img = F.interpolate(img, size=(r, r), mode="bilinear", align_corners=False,
                                antialias=img.shape[2] > r or img.shape[3] > r)
        x = self.input_layer(img)
        feats = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps[1:]:
                feats[i] = x
        c1, c2, c3 = (feats[t] for t in self.taps[1:])
        w0 = self.styles[0](c3)  # [N, w_dim]
        deltas = [w0]
        features = c3
        p2 = None
        for i in range(1, self.num_ws):
            if i == self.coarse_index:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            if i == self.middle_index:
                assert p2 is not None
                features = _upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](features))
        # Progressive W+: every layer starts from w0, layer i adds its own delta.
        ws = torch.stack([deltas[0]] + [deltas[0] + d for d in deltas[1:]], dim=1)
        return ws + self.latent_avg.to(ws.dtype)
