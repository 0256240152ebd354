"""Optical flow and the occlusion-masked warping error E_warp (Lai et al. 2018).

Flow convention everywhere: ``flow(a, b)`` is an ``[H, W, 2]`` float32 field ``f`` in
pixels (x, y) with ``a(p) ≈ b(p + f(p))`` (OpenCV's and RAFT's convention).

Backends (``flow_backend(name)``):

- ``dis``: OpenCV DIS, preset MEDIUM, on grey levels. No weights. The default.
- ``farneback``: OpenCV Farnebäck (pyramid 0.5, 5 levels, window 15). No weights.
- ``raft``: RAFT-large (Teed & Deng 2020, :func:`build_raft`) from the official
  ``raft-things.pth`` when it is installed in the model store (or torchvision's
  ``raft_large`` port of the same weights, its keys mapped by :func:`load_raft`);
  torch, any device.

The temporal refinement (``engine/stages/refine.py``) uses the same pieces on
tensors: :func:`raft_flow` (RAFT inside the autograd graph), :func:`warp_tensor`
and :func:`fb_error` (the forward–backward error in pixels).

The warping error follows the canonical evaluation code of Lai et al. 2018
(``evaluate_WarpError.py`` / ``utils.detect_occlusion``, docs/reference.md "Warping
error"): flows on
the *source* pair (t, t+1), occlusion from the forward-backward check and motion
boundaries, ``E_warp(t) = Σ M·‖V_t − warp(V_{t+1})‖² / Σ M`` per channel, RGB in
[0, 1].
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from fsexchange.errors import MetricsError, ModelFormatError, ModelMissing

from engine.media.video import to_depth

__all__ = ["FlowBackend", "OpenCVFlow", "RaftFlow", "build_raft", "flow_backend",
           "warp", "occlusion_mask", "warping_error", "to_gray", "to_unit",
           "RAFT_FILES", "raft_weights_path", "load_raft", "torchvision_raft_keys",
           "raft_flow", "warp_tensor", "fb_error"]

log = logging.getLogger(__name__)

# Lai et al. 2018 occlusion constants (docs/reference.md "Warping error",
# utils.detect_occlusion).
FB_REL = 0.01  # forward-backward: |f + b_w|^2 > 0.01 (|f|^2 + |b_w|^2) + 0.5
FB_ABS = 0.5
MB_REL = 0.01  # motion boundary: |grad u|^2 + |grad v|^2 > 0.01 |f|^2 + 0.002
MB_ABS = 0.002


class FlowBackend(Protocol):
    """Computes forward and backward flow for a pair of RGB frames."""

    name: str

    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(flow(a, b), flow(b, a))`` for two HxWx3 RGB frames (uint8 or uint16)."""


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB (uint8, uint16 or float in [0, 1]) -> HxW uint8 grey levels."""
    return cv2.cvtColor(np.ascontiguousarray(to_depth(rgb, 8)), cv2.COLOR_RGB2GRAY)


class OpenCVFlow:
    """OpenCV DIS (preset MEDIUM) or Farnebäck flow; deterministic, CPU, no weights."""

    def __init__(self, method: str = "dis") -> None:
        if method == "dis":
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            self.name = "opencv-dis-medium"
        elif method == "farneback":
            self._dis = None
            self.name = "opencv-farneback"
        else:  # pragma: no cover - guarded by flow_backend
            raise ValueError(method)
        self.method = method
        # (frame, its grey): the frame itself is kept, so identity cannot be mistaken
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def _gray(self, rgb: np.ndarray) -> np.ndarray:
        # Streaming callers pass frame t+1 now and as frame t next time: reuse its grey.
        if self._cache is not None and self._cache[0] is rgb:
            return self._cache[1]
        return to_gray(rgb)

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._dis is not None:
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 3, 5, 1.2, 0)

    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ga, gb = self._gray(a), to_gray(b)
        self._cache = (b, gb)
        return self._flow(ga, gb), self._flow(gb, ga)


def flow_backend(name: str = "dis", *, device: str = "cpu") -> FlowBackend:
    """The flow backend called ``name`` (``dis``, ``farneback`` or ``raft``).

    Raises:
        ModelMissing: ``raft`` without ``raft-things.pth`` in the model store.
        MetricsError: an unknown name.
    """
    if name in ("dis", "farneback"):
        return OpenCVFlow(name)
    if name == "raft":
        return RaftFlow(device=device)
    raise MetricsError(f"unknown flow backend {name!r}; use dis, farneback or raft",
                       field="metrics.flow")


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` at ``p + flow(p)`` (bilinear, coordinates clamped to the border
    like FlowNet2's Resample2d that Lai et al. use). ``img`` HxW or HxWxC float32."""
    gx, gy = _pixel_grid(*flow.shape[:2])
    fx, fy = cv2.split(flow)
    return cv2.remap(img, cv2.add(gx, fx), cv2.add(gy, fy), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False  # shared between calls
    return gx, gy


def _sq_norm(flow: np.ndarray) -> np.ndarray:
    """|f|² per pixel of an [H, W, 2] field."""
    x, y = cv2.split(flow)
    return cv2.add(cv2.multiply(x, x), cv2.multiply(y, y))


def occlusion_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Non-occlusion mask M (HxW float32, 1 = valid) in frame t's pixels.

    Args:
        fw: flow(t, t+1); bw: flow(t+1, t). [H, W, 2] each.

    Occluded where the forward-backward check fails,
    ``|fw + bw_w|² > 0.01·(|fw|² + |bw_w|²) + 0.5`` with ``bw_w(p) = bw(p + fw(p))``,
    or on a motion boundary, ``|∇u|² + |∇v|² > 0.01·|fw|² + 0.002`` with forward
    differences of ``fw`` (Lai et al.'s ``detect_occlusion(bw, fw)`` call order).
    """
    # (OpenCV per-channel ops: ~5x faster than the numpy expression at 1080p)
    bw_w = warp(bw, fw)
    fw_mag = _sq_norm(fw)
    occluded = _sq_norm(cv2.add(fw, bw_w)) > FB_REL * (fw_mag + _sq_norm(bw_w)) + FB_ABS
    grad_mag = np.zeros(fw.shape[:2], np.float32)
    for c in cv2.split(fw):  # forward differences, last column / row stay 0
        d = c[:, :-1] - c[:, 1:]
        grad_mag[:, :-1] += d * d
        d = c[:-1, :] - c[1:, :]
        grad_mag[:-1, :] += d * d
    occluded |= grad_mag > MB_REL * fw_mag + MB_ABS
    return (~occluded).astype(np.float32)


def to_unit(rgb: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float RGB -> float32 in [0, 1] (float32 passes unchanged)."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) * (1.0 / 255.0)
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) * (1.0 / 65535.0)
    return np.asarray(rgb, np.float32)


def warping_error(frame_t: np.ndarray, frame_t1: np.ndarray, fw: np.ndarray,
                  mask: np.ndarray) -> float:
    """``Σ M·‖V_t − warp(V_{t+1}, fw)‖² / (3·Σ M)`` for RGB frames (uint8, uint16 or
    float32 already in [0, 1], which streaming callers convert once per frame with
    :func:`to_unit`). Like Lai et al., a fully occluded pair scores 0."""
    a = to_unit(frame_t)
    b = warp(to_unit(frame_t1), fw)
    if a.shape != b.shape or a.ndim != 3:
        raise MetricsError(f"frame shapes differ: {a.shape} vs {b.shape}")
    c = a.shape[2]
    n = float(mask.sum()) * c
    if n == 0:
        return 0.0
    d = cv2.subtract(a, b)
    sums = cv2.sumElems(cv2.multiply(cv2.multiply(d, d), cv2.merge([mask] * c)))
    return float(sum(sums[:c]) / n)


# --- RAFT -----------------------------------------------------------------------------

RAFT_FILE = "raft-things.pth"
#: Where the model store's ``models/`` folder may hold RAFT-large weights, in order
#: of preference: the official file, then torchvision's port of it (``C_T_V1``,
#: the name torch.hub gives it).
RAFT_FILES = (RAFT_FILE, "raft_large_C_T_V1-22a6c225.pth")
RAFT_MIN_SIDE = 128


def raft_weights_path() -> Path | None:
    """The first of :data:`RAFT_FILES` installed in the model store, or None."""
    from engine.models.store import models_root

    for name in RAFT_FILES:
        p = models_root() / name
        if p.is_file():
            return p
    return None


def torchvision_raft_keys(sd: dict) -> dict:
    """torchvision ``raft_large`` state-dict keys -> princeton-vl/RAFT's (what
    ``raft-things.pth`` and :func:`build_raft` use). The encoders' residual blocks
    keep upstream's shared ``norm3`` (= ``downsample.1``), so it is written twice."""
    import re

    out = {}
    for k, v in sd.items():
        n = k
        for enc, short in (("feature_encoder", "fnet"), ("context_encoder", "cnet")):
            if n.startswith(enc + "."):
                n = short + n[len(enc):]
                n = n.replace(".convnormrelu.0.", ".conv1.")
                n = n.replace(".convnormrelu.1.", ".norm1.")
                n = re.sub(r"\.convnormrelu([12])\.0\.", r".conv\1.", n)
                n = re.sub(r"\.convnormrelu([12])\.1\.", r".norm\1.", n)
                n = re.sub(rf"^{short}\.conv\.", f"{short}.conv2.", n)
        for a, b in (("convcorr1", "convc1"), ("convcorr2", "convc2"), ("conv", "conv"),
                     ("convflow1", "convf1"), ("convflow2", "convf2")):
            n = n.replace(f"update_block.motion_encoder.{a}.0.",
                          f"update_block.encoder.{b}.")
        m = re.match(r"update_block\.recurrent_block\.convgru(\d)\.conv([zrq])\.(.*)",
                     n)
        if m:
            n = f"update_block.gru.conv{m[2]}{m[1]}.{m[3]}"
        n = n.replace("mask_predictor.convrelu.0.", "update_block.mask.0.")
        n = n.replace("mask_predictor.conv.", "update_block.mask.2.")
        out[n] = v
        if ".downsample.1." in n:
            out[n.replace(".downsample.1.", ".norm3.")] = v
    return out


def load_raft(path: str | Path | None = None, device: str = "cpu"):
    """RAFT-large in eval mode with frozen weights, and a name for results.

    Reads (``weights_only``) princeton-vl's layout, with or without DataParallel's
    ``module.`` prefix, or torchvision's ``raft_large`` layout (keys mapped by
    :func:`torchvision_raft_keys`). Nothing is ever downloaded.

    Args:
        path: the weights; default: the first of :data:`RAFT_FILES` in the store.

    Raises:
        ModelMissing: no weights at ``path`` / in the store.
        ModelFormatError: a file that is not RAFT-large.
    """
    import torch

    from engine.models.store import models_root

    p = Path(path) if path else raft_weights_path()
    if p is None or not p.is_file():
        where = p if p is not None else models_root() / RAFT_FILE
        raise ModelMissing(
            f"RAFT weights are not installed: copy the official {RAFT_FILE} "
            f"(princeton-vl/RAFT, models.zip) to {where}; nothing is downloaded. The "
            "default flow backend 'dis' needs no weights.", field="metrics.flow")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a format problem
        raise ModelFormatError(f"{p.name} cannot be read as a state dict: "
                               f"{str(exc).splitlines()[0][:300]}") from None
    if not isinstance(state, dict):
        raise ModelFormatError(f"{p.name} is not a RAFT-large state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    layout = "princeton-vl"
    if any(k.startswith("feature_encoder.") for k in state):
        state, layout = torchvision_raft_keys(state), "torchvision"
    net = build_raft()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFormatError(
            f"{p.name} is not a princeton-vl RAFT-large state dict: "
            f"{str(exc).splitlines()[0][:300]}") from None
    net = net.eval().requires_grad_(False).to(device)
    return net, f"raft-large:{p.name}" + (" (torchvision layout)"
                                          if layout == "torchvision" else "")


def raft_flow(net, a, b, iters: int = 20):
    """Flow ``a -> b`` of image tensors ``[N, 3, H, W]`` in [0, 255] through RAFT,
    differentiable with respect to the images (VideoEditGAN computes its flows
    inside the autograd graph, docs/reference.md "Flow network").

    Sides under 128 px are upsampled (bilinear) for the network and the flow is
    brought back (the correlation pyramid needs >= 16 cells a side); sizes are
    padded to multiples of 8 by edge replication, as RAFT's ``InputPadder``.

    Returns:
        ``[N, 2, H, W]`` in pixels of the input, ``a(p) ≈ b(p + f(p))``.
    """
    import torch.nn.functional as F

    h, w = a.shape[-2:]
    scale = max(1.0, RAFT_MIN_SIDE / min(h, w))
    if scale != 1.0:
        size = (round(h * scale), round(w * scale))
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    sh, sw = a.shape[-2:]
    ph, pw = (-sh) % 8, (-sw) % 8
    pad = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
    if ph or pw:
        a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
    flow = net(a, b, iters)[:, :, ph // 2:ph // 2 + sh, pw // 2:pw // 2 + sw]
    if scale != 1.0:
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flow = flow * flow.new_tensor([w / sw, h / sh]).view(1, 2, 1, 1)
    return flow


def _sample_grid(flow):
    """``grid_sample`` coordinates of ``p + flow(p)`` for ``flow [N, 2, H, W]``
    (pixel centres at -1 and 1: ``align_corners=True``)."""
    import torch

    n, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype),
                            indexing="ij")
    x = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    y = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack([x, y], dim=-1)  # [N, H, W, 2]


def warp_tensor(img, flow):
    """``img`` sampled at ``p + flow(p)``: bilinear, zero outside; and where the
    sample's footprint stayed inside the image.

    Args:
        img: ``[N, C, H, W]``. flow: ``[N, 2, H, W]`` in pixels.

    Returns:
        ``(warped [N, C, H, W], inside [N, 1, H, W] in {0, 1})``.
    """
    import torch.nn.functional as F

    grid = _sample_grid(flow)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    x, y = grid[..., 0], grid[..., 1]
    inside = ((x >= -1) & (x <= 1) & (y >= -1) & (y <= 1)).unsqueeze(1)
    return out, inside.to(img.dtype)


def fb_error(f1, f2):
    """Forward–backward error ``e(p) = ‖f1(p) + f2(p + f1(p))‖`` in pixels,
    ``[N, 1, H, W]`` on ``f1``'s grid (docs/reference.md "Anchor and masks";
    ``f2`` sampled bilinearly, edge values outside)."""
    import torch.nn.functional as F

    f2w = F.grid_sample(f2, _sample_grid(f1), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return (f1 + f2w).square().sum(dim=1, keepdim=True).add(1e-12).sqrt()


def build_raft():
    """RAFT-large (Teed & Deng 2020) with princeton-vl/RAFT's parameter names, so
    ``raft-things.pth`` loads as it is (after dropping DataParallel's ``module.``).

    ``net(image1, image2, iters)``: images ``[N, 3, H, W]`` RGB in [0, 255], H and W
    multiples of 8 -> flow ``[N, 2, H, W]`` (image1 -> image2, test mode, convex
    upsampling). The correlation lookup keeps the reference's quirk of adding the
    (dy, dx) meshgrid to (x, y) coordinates; the weights were trained with it.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def norm(kind: str, ch: int) -> nn.Module:
        return nn.BatchNorm2d(ch) if kind == "batch" else nn.InstanceNorm2d(ch)

    class ResidualBlock(nn.Module):
        def __init__(self, cin: int, cout: int, kind: str, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.norm1, self.norm2 = norm(kind, cout), norm(kind, cout)
            self.downsample = None
            if stride != 1:
                self.norm3 = norm(kind, cout)  # shared with downsample.1, as upstream
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride),
                                                self.norm3)

        def forward(self, x):
            y = self.relu(self.norm1(self.conv1(x)))
            y = self.relu(self.norm2(self.conv2(y)))
            if self.downsample is not None:
                x = self.downsample(x)
            return self.relu(x + y)

    class BasicEncoder(nn.Module):  # [N, 3, H, W] -> [N, out, H/8, W/8]
        def __init__(self, out: int, kind: str) -> None:
            super().__init__()
            self.norm1 = norm(kind, 64)
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
            self.relu1 = nn.ReLU(inplace=True)
            dims, cin = [], 64
            for dim, stride in ((64, 1), (96, 2), (128, 2)):
                dims.append(nn.Sequential(ResidualBlock(cin, dim, kind, stride),
                                          ResidualBlock(dim, dim, kind, 1)))
                cin = dim
            self.layer1, self.layer2, self.layer3 = dims
            self.conv2 = nn.Conv2d(128, out, 1)

        def forward(self, x):
            x = self.relu1(self.norm1(self.conv1(x)))
            return self.conv2(self.layer3(self.layer2(self.layer1(x))))

    class BasicMotionEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convc1 = nn.Conv2d(4 * 81, 256, 1)  # 4 levels x (2 * 4 + 1)^2
            self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
            self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
            self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
            self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

        def forward(self, flow, corr):
            cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
            flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
            out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
            return torch.cat([out, flow], dim=1)

    class SepConvGRU(nn.Module):
        def __init__(self, hidden: int = 128, inp: int = 128 + 128) -> None:
            super().__init__()
            for i, (k, pad) in enumerate((((1, 5), (0, 2)), ((5, 1), (2, 0))), 1):
                for gate in "zrq":
                    setattr(self, f"conv{gate}{i}",
                            nn.Conv2d(hidden + inp, hidden, k, padding=pad))

        def forward(self, h, x):
            for i in (1, 2):  # horizontal, then vertical
                hx = torch.cat([h, x], dim=1)
                z = torch.sigmoid(getattr(self, f"convz{i}")(hx))
                r = torch.sigmoid(getattr(self, f"convr{i}")(hx))
                q = torch.tanh(getattr(self, f"convq{i}")(torch.cat([r * h, x], dim=1)))
                h = (1 - z) * h + z * q
            return h

    class FlowHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(128, 256, 3, padding=1)
            self.conv2 = nn.Conv2d(256, 2, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.conv2(self.relu(self.conv1(x)))

    class BasicUpdateBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = BasicMotionEncoder()
            self.gru = SepConvGRU()
            self.flow_head = FlowHead()
            self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1),
                                      nn.ReLU(inplace=True), nn.Conv2d(256, 64 * 9, 1))

        def forward(self, net, inp, corr, flow):
            inp = torch.cat([inp, self.encoder(flow, corr)], dim=1)
            net = self.gru(net, inp)
            return net, 0.25 * self.mask(net), self.flow_head(net)

    def coords_grid(n: int, h: int, w: int, device) -> torch.Tensor:  # [N, 2, h, w]
        ys, xs = torch.meshgrid(torch.arange(h, device=device),
                                torch.arange(w, device=device), indexing="ij")
        return torch.stack([xs, ys]).float()[None].repeat(n, 1, 1, 1)

    def lookup(pyramid: list, coords: torch.Tensor, r: int = 4) -> torch.Tensor:
        n, _, h, w = coords.shape
        d = torch.linspace(-r, r, 2 * r + 1, device=coords.device)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)  # (dy, dx)
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(pyramid):
            pts = centre / 2 ** i + delta.view(1, 2 * r + 1, 2 * r + 1, 2)
            hh, ww = corr.shape[-2:]
            grid = torch.cat([2 * pts[..., :1] / (ww - 1) - 1,
                              2 * pts[..., 1:] / (hh - 1) - 1], dim=-1)
            out.append(F.grid_sample(corr, grid, align_corners=True).view(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()

    class RAFT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fnet = BasicEncoder(256, "instance")
            self.cnet = BasicEncoder(128 + 128, "batch")  # hidden + context
            self.update_block = BasicUpdateBlock()

        def forward(self, image1, image2, iters: int = 20):
            image1 = 2 * (image1 / 255.0) - 1.0
            image2 = 2 * (image2 / 255.0) - 1.0
            n, _, h, w = image1.shape
            fmap1, fmap2 = self.fnet(torch.cat([image1, image2])).float().split(n)
            # all-pairs correlation [N*h*w, 1, h, w] and its 4-level pyramid
            c, fh, fw = fmap1.shape[1:]
            corr = fmap1.view(n, c, fh * fw).transpose(1, 2) @ fmap2.view(n, c, fh * fw)
            corr = (corr / math.sqrt(c)).reshape(n * fh * fw, 1, fh, fw)
            pyramid = [corr]
            for _ in range(3):
                pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
            net, inp = self.cnet(image1).split([128, 128], dim=1)
            net, inp = torch.tanh(net), torch.relu(inp)
            coords0 = coords_grid(n, fh, fw, image1.device)
            coords1 = coords0.clone()
            for _ in range(iters):
                # as upstream: each update sees its start point as a constant, so a
                # gradient through the flow (the temporal refinement) takes the
                # path RAFT was trained with; no effect without autograd
                coords1 = coords1.detach()
                flow = coords1 - coords0
                net, mask, delta = self.update_block(net, inp, lookup(pyramid, coords1),
                                                     flow)
                coords1 = coords1 + delta
            # convex upsampling by 8 with the last mask
            flow = coords1 - coords0
            mask = torch.softmax(mask.view(n, 1, 9, 8, 8, fh, fw), dim=2)
            up = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, fh, fw)
            up = torch.sum(mask * up, dim=2).permute(0, 1, 4, 2, 5, 3)
            return up.reshape(n, 2, 8 * fh, 8 * fw)

    return RAFT()


class RaftFlow:
    """RAFT-large flow from the official ``raft-things.pth`` (princeton-vl/RAFT,
    FlyingChairs + FlyingThings; docs/reference.md "Flow network"), installed as
    ``models/raft-things.pth`` in the model store (or torchvision's port,
    :data:`RAFT_FILES`).

    Frames larger than ``max_side`` are downscaled for the network and the flow is
    scaled back (the all-pairs correlation volume grows with the fourth power of the
    side: ~0.7 GB at 1024 x 576 for a forward + backward pair); frames with a side
    under 128 px are upscaled (the correlation pyramid needs it). Inputs are padded
    to a multiple of 8 by edge replication as RAFT's own ``InputPadder`` does.

    Args:
        path: the weights; default: the model store's copy.
        device: torch device.
        iters: refinement iterations (20, as VideoEditGAN and RAFT's evaluation).
        max_side: longest side the network sees.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu",
                 iters: int = 20, max_side: int = 1024) -> None:
        net, self.name = load_raft(path, device)
        self._net = net
        self.device, self.iters, self.max_side = device, iters, max_side

    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        h, w = a.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        # the 4-level pyramid needs feature maps of >= 16 cells: >= 128 px a side
        scale = max(scale, RAFT_MIN_SIDE / min(h, w))
        imgs = [to_unit(x[:, :, :3]) * 255.0 for x in (a, b)]
        if scale != 1.0:
            size = (round(w * scale), round(h * scale))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            imgs = [cv2.resize(x, size, interpolation=interp) for x in imgs]
        t = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(self.device)
        sh, sw = t.shape[-2:]
        ph, pw = (-sh) % 8, (-sw) % 8
        t = F.pad(t, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")
        with torch.no_grad():  # forward and backward in one batch of two
            flows = self._net(t[[0, 1]], t[[1, 0]], self.iters)
        flows = flows[:, :, ph // 2:ph // 2 + sh, pw // 2:pw // 2 + sw]
        out = flows.permute(0, 2, 3, 1).float().cpu().numpy()
        if scale != 1.0:  # back to frame pixels: resize the field, scale the vectors
            sx, sy = w / sw, h / sh
            out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
                            for f in out]) * np.array([sx, sy], np.float32)
        return np.ascontiguousarray(out[0]), np.ascontiguousarray(out[1])
