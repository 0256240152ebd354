"""Compositing a result layer over its plate: what a viewer sees when the RGBA
layer sits above the shot in the editor. Used by the paste-back preview movie, the
report's filmstrip and the temporal metrics (which judge the composited frames).
numpy only."""

from __future__ import annotations

import numpy as np

from fsexchange.errors import MetricsFrameInvalid, MetricsSizeMismatch

__all__ = ["composite_over"]


def _top(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise MetricsFrameInvalid(f"unsupported image dtype {dtype}")


def composite_over(rgba: np.ndarray, source_rgb: np.ndarray, *,
                   premultiplied: bool = False) -> np.ndarray:
    """``rgba`` over ``source_rgb``: the frame a viewer sees when the result layer
    sits on the plate. Returns HxWx3 in ``source_rgb``'s dtype.

    Args:
        rgba: HxWx4 (straight alpha unless ``premultiplied``; EXR results are
            premultiplied); uint8, uint16 or float in [0, 1]. HxWx3 is taken as opaque.
        source_rgb: HxWx3 (or HxWx4, alpha ignored) uint8, uint16 or float.

    Raises:
        MetricsSizeMismatch: the two differ in width or height.
    """
    if rgba.ndim != 3 or source_rgb.ndim != 3 or rgba.shape[2] not in (3, 4) \
            or source_rgb.shape[2] not in (3, 4):
        raise MetricsFrameInvalid(
            f"expected HxWx4 over HxWx3 images, got {rgba.shape} over "
            f"{source_rgb.shape}")
    if rgba.shape[:2] != source_rgb.shape[:2]:
        raise MetricsSizeMismatch(
            f"result is {rgba.shape[1]}x{rgba.shape[0]} but the source is "
            f"{source_rgb.shape[1]}x{source_rgb.shape[0]}")
    out_dtype = source_rgb.dtype
    top_out = _top(out_dtype)
    src = source_rgb[:, :, :3].astype(np.float32) / top_out
    top_in = _top(rgba.dtype)
    fg = rgba[:, :, :3].astype(np.float32) / top_in
    if rgba.shape[2] == 3:
        out = fg
    else:
        a = rgba[:, :, 3:].astype(np.float32) / top_in
        out = (fg if premultiplied else fg * a) + src * (1.0 - a)
    if np.issubdtype(out_dtype, np.floating):
        return out.astype(out_dtype)
    return np.rint(np.clip(out, 0.0, 1.0) * top_out).astype(out_dtype)
