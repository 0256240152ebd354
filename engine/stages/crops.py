"""Aligned crops as network tensors and back, and the per-stage previews.

Shared by the STIT stages (``invert``, ``pti``, ``edit``, ``stitch_tune``) and the
benchmark. Tensors are ``[N, 3, R, R]`` float32 in [-1, 1] (the generator's range);
images are HxWx3 uint8 or uint16 RGB.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from engine.stages.outputs import crop_name

if TYPE_CHECKING:
    import torch

__all__ = ["PREVIEW_COUNT", "chunks", "crops_to_tensor", "tensor_to_image",
           "write_png", "save_npy", "preview_frames", "write_previews"]

#: Frames per stage rendered into ``preview/`` for the report.
PREVIEW_COUNT = 4


def preview_frames(frames: Sequence[int], count: int = PREVIEW_COUNT) -> list[int]:
    """Up to ``count`` frames evenly spread over ``frames`` (first and last
    included); the stages write previews of exactly these for the report."""
    frames = list(frames)
    if len(frames) <= count:
        return frames
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in sorted(set(idx.tolist()))]


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, int(size))
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def crops_to_tensor(images: Sequence[np.ndarray], size: int | None = None, *,
                    device: str | "torch.device" = "cpu") -> "torch.Tensor":
    """HxWx3 uint8/uint16 RGB images -> ``[N, 3, size, size]`` float32 in [-1, 1]
    (bilinear with antialiasing when resized, docs/reference.md "Inversion with
    e4e")."""
    import torch
    import torch.nn.functional as F

    arr = np.stack([np.asarray(im)[..., :3] for im in images])
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    x = torch.from_numpy(arr.astype(np.float32)).to(device).permute(0, 3, 1, 2)
    x = x * (2.0 / scale) - 1.0
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x.contiguous()


def tensor_to_image(x: "torch.Tensor", depth: int = 8) -> np.ndarray:
    """``[3, R, R]`` in [-1, 1] -> RxRx3 uint8 (depth 8) or uint16 (depth 16)."""
    top = 65535.0 if depth == 16 else 255.0
    a = ((x.detach().float().clamp(-1, 1) + 1) * (top / 2)).round()
    a = a.permute(1, 2, 0).cpu().numpy()
    return a.astype(np.uint16 if depth == 16 else np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    """Atomically write an RGB or grey PNG (8 or 16 bit)."""
    from engine.media.video import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_png(img))


def save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_previews(folder: Path, frames: Sequence[int], images: "torch.Tensor") -> None:
    """Write ``[K, 3, R, R]`` images as ``folder/<frame:07d>.png`` (8-bit)."""
    for f, img in zip(frames, images):
        write_png(folder / crop_name(f), tensor_to_image(img))
