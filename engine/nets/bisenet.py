"""BiSeNet face parser (19 CelebAMask-HQ classes), written from the architecture of
zllrunning/face-parsing.PyTorch so that its ``79999_iter.pth`` loads **strictly**
with ``torch.load(weights_only=True)`` (docs/models.md "BiSeNet face parser").

Context path only (the face-parsing variant has no spatial path: the ResNet-18
stride-8 features stand in for it). Our ResNet-18 backbone is defined here, so the
constructor downloads nothing (the reference builds torchvision's and downloads
``resnet18-5c106cde.pth`` before the checkpoint overwrites every tensor); the
strict load proves that every tensor was replaced.

Class map (docs/reference.md "Stitching tuning"): 0 background, 1 skin, 2 l_brow, 3
r_brow, 4 l_eye,
5 r_eye, 6 eye_g, 7 l_ear, 8 r_ear, 9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip,
14 neck, 15 neck_l, 16 cloth, 17 hair, 18 hat.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


__all__ = ["BiSeNet", "load_bisenet", "NUM_CLASSES", "IMAGENET_MEAN",
           "IMAGENET_STD", "PARSE_RESOLUTION"]

NUM_CLASSES = 19
# the parser's training size; STIT parses at 512 (docs/reference.md)
PARSE_RESOLUTION = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # face-parsing.PyTorch normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BN -> ReLU. Keys: ``conv``, ``bn``."""

    def __init__(self, in_ch: int, out_ch: int, ks: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; ``downsample`` (1x1 conv + BN) when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if in_ch != out_ch or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch))


class ResNet18(nn.Module):
    """ResNet-18 trunk returning stride-8, -16 and -32 features (128/256/512 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x: torch.Tensor):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))  # [N, 128, H/8, W/8]
        feat16 = self.layer3(feat8)  # [N, 256, H/16, W/16]
        feat32 = self.layer4(feat16)  # [N, 512, H/32, W/32]
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = F.adaptive_avg_pool2d(feat, 1)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(atten)))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        avg_up = F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_sum = self.arm32(feat32) + avg_up
        feat32_up = self.conv_head32(
            F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(
            F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up  # 128 ch at /8, 128 at /8, 128 at /16


class FeatureFusionModule(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, ks=1, stride=1, padding=0)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = F.adaptive_avg_pool2d(feat, 1)
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(atten))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_ch: int, mid_ch: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch)
        self.conv_out = nn.Conv2d(mid_ch, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet. ``forward(x [N,3,H,W], ImageNet-normalised)`` returns
    ``(main, aux16, aux32)`` logits ``[N, 19, H, W]`` (bilinear, align_corners=True
    upsampling, as the reference); :meth:`parse` returns labels ``[N, H, W]``."""

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: torch.Tensor):
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        feat_fuse = self.ffm(feat8, feat_cp8)  # the res /8 features replace the SP

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size, mode="bilinear", align_corners=True)

        return (up(self.conv_out(feat_fuse)), up(self.conv_out16(feat_cp8)),
                up(self.conv_out32(feat_cp16)))

    @torch.no_grad()
    def parse(self, rgb: torch.Tensor) -> torch.Tensor:
        """Labels ``[N, H, W]`` (int64) from RGB ``[N, 3, H, W]`` in 0..1."""
        mean = torch.tensor(IMAGENET_MEAN, device=rgb.device, dtype=rgb.dtype)
        std = torch.tensor(IMAGENET_STD, device=rgb.device, dtype=rgb.dtype)
        x = (rgb - mean[:, None, None]) / std[:, None, None]
        return self(x)[0].argmax(dim=1)


def load_bisenet(path: str | os.PathLike[str], device: str = "cpu") -> BiSeNet:
    """Build :class:`BiSeNet` and load ``79999_iter.pth`` (or a file with the same
    keys) strictly, without running code from the file.

    Raises:
        ModelMissing: no file at ``path``.
        ModelFormatError: the file is not a BiSeNet state dict.
    """
    from fsexchange.errors import ModelFormatError, ModelMissing

    p = Path(path)
    if not p.is_file():
        raise ModelMissing(f"face-parser weights {p.name!r} not found at {p}; install "
                           f"them with 'facestitch models install'")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors of many types
        raise ModelFormatError(f"{p.name}: not a loadable state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(
            state["state_dict"], dict):
        state = state["state_dict"]
    net = BiSeNet(NUM_CLASSES)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelFormatError(f"{p.name}: does not match the BiSeNet face parser "
                               f"({str(exc).splitlines()[0]})") from None
    return net.to(device).eval()
