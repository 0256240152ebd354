"""FFHQ alignment with STIT's temporal smoothing, and its exact inverse.

Per frame, the FFHQ recipe turns 68 landmarks into a centre ``c`` and two half-axes
``x``, ``y`` of an oriented square (docs/reference.md "Alignment"). STIT's trick is to
smooth
``c`` (σ 1) and ``x``, ``y`` (σ 3) along time before building the quad, so the crop
follows the face without jitter. Smoothing runs over runs of consecutive frames
that have landmarks: it never reaches across a gap where the face is missing.

Coordinates follow OpenCV: pixel ``(i, j)`` has its centre at ``x = j, y = i``. The
quad's corners map to the crop's outer corners ``(-0.5, -0.5)`` ... ``(R - 0.5,
R - 0.5)``, which is STIT's PIL mapping (``quad + 0.5`` -> ``(0, 0)`` ... ``(R, R)``)
written in OpenCV's convention. :func:`align_crop` and :func:`unalign` use the same
3x3 matrix (one with ``WARP_INVERSE_MAP``), so the round trip is exact up to
bilinear resampling. Unlike STIT, regions of the quad outside the frame are filled
by reflection (FFHQ-like), not black.

``AlignStage`` (the ``align`` pipeline stage) writes into ``stages/align/``:

- ``info.json``: resolution, frame size, range, which frames have crops, mask
  source, the smoothing settings;
- ``quads.npy``: float64 ``[N, 4, 2]`` (TL, BL, BR, TR) for the N frames of the
  range, NaN where the face is absent;
- ``crops/<frame:07d>.png``: 8-bit RGB aligned crops, ``R x R``, for frames with a
  face (``frame`` = media index), in the networks' colour space: the crop is warped
  in the source's encoding (16-bit or float), then converted with
  :meth:`engine.media.colour.ColourPipeline.to_network` (nothing is converted for
  Rec.709 and sRGB sources, docs/colour.md);
- ``masks/<frame:07d>.png``: 8-bit face masks (0/255) at ``R``, the input of
  :func:`engine.stages.mask.paste_alpha` and :func:`engine.stages.mask.stitch_masks`.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from engine.stages.contract import Stage, StageContext
from engine.stages.outputs import crop_name

__all__ = [
    "ffhq_quad_params",
    "smooth_params",
    "smooth_params_segments",
    "quad_from_params",
    "crop_transform",
    "align_crop",
    "unalign",
    "transform_points",
    "stit_qsize",
    "shrink_factor",
    "present_runs",
    "AlignStage",
    "resolve_resolution",
    "generator_resolution",
    "parser_weights",
]

log = logging.getLogger(__name__)


# --- the FFHQ quad ----------------------------------------------------------------


def ffhq_quad_params(lm68: np.ndarray, scale: float = 1.0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FFHQ centre and half-axes from 68 landmarks (docs/reference.md "Alignment").

    Args:
        lm68: ``[68, 2]`` or ``[N, 68, 2]`` landmarks (x, y) in frame pixels.
        scale: STIT ``--scale`` (1.0).

    Returns:
        ``(c, x, y)``, each ``[2]`` or ``[N, 2]`` float64: quad centre, half-axis
        pointing right and half-axis pointing down (``y = R(x)``, R = +90°).
    """
    lm = np.asarray(lm68, dtype=np.float64)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"expected [..., 68, 2] landmarks, got {lm.shape}")
    eye_left = lm[..., 36:42, :].mean(-2)
    eye_right = lm[..., 42:48, :].mean(-2)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[..., 48, :] + lm[..., 54, :]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    size = np.maximum(np.linalg.norm(eye_to_eye, axis=-1, keepdims=True) * 2.0,
                      np.linalg.norm(eye_to_mouth, axis=-1, keepdims=True) * 1.8)
    x = x / np.maximum(norm, 1e-12) * size * scale
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def _rot90(v: np.ndarray) -> np.ndarray:
    """R(vx, vy) = (-vy, vx) (docs/reference.md "Alignment")."""
    return np.stack([-v[..., 1], v[..., 0]], axis=-1)


def smooth_params(c: np.ndarray, x: np.ndarray, y: np.ndarray, center_sigma: float,
                  xy_sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """STIT temporal smoothing of one run of consecutive frames.

    Gaussian along time (``scipy.ndimage.gaussian_filter1d``, mode ``reflect``,
    truncate 4): ``c`` with ``center_sigma``, ``x`` and ``y`` with ``xy_sigma``. A
    sigma of 0 disables that part. Inputs and outputs are ``[N, 2]``.
    """
    from scipy.ndimage import gaussian_filter1d

    def smooth(a: np.ndarray, sigma: float) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        if sigma <= 0 or len(a) < 2:
            return a.copy()
        return gaussian_filter1d(a, sigma, axis=0, mode="reflect", truncate=4.0)

    return smooth(c, center_sigma), smooth(x, xy_sigma), smooth(y, xy_sigma)


def present_runs(present: np.ndarray) -> list[tuple[int, int]]:
    """``[(a, b), ...]`` half-open runs of consecutive True values."""
    p = np.concatenate([[False], np.asarray(present, bool), [False]])
    edges = np.flatnonzero(np.diff(p.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def smooth_params_segments(c: np.ndarray, x: np.ndarray, y: np.ndarray,
                           present: np.ndarray, center_sigma: float, xy_sigma: float
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`smooth_params` applied separately to each run of present frames, so
    nothing is smoothed across a gap. Absent frames keep their (NaN) values."""
    c, x, y = (np.array(a, dtype=np.float64) for a in (c, x, y))
    for a, b in present_runs(present):
        c[a:b], x[a:b], y[a:b] = smooth_params(c[a:b], x[a:b], y[a:b], center_sigma,
                                               xy_sigma)
    return c, x, y


def quad_from_params(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Quads ``[N, 4, 2]`` (or ``[4, 2]``): top-left, bottom-left, bottom-right,
    top-right = ``c - x - y, c - x + y, c + x + y, c + x - y``."""
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=-2)


# --- the warp ---------------------------------------------------------------------


def crop_transform(quad: np.ndarray, size: int) -> np.ndarray:
    """3x3 matrix taking frame pixel coordinates to crop pixel coordinates.

    The quad's corners (TL, BL, BR, TR) land on the crop's outer corners
    ``(-0.5, -0.5), (-0.5, R - 0.5), (R - 0.5, R - 0.5), (R - 0.5, -0.5)``.
    """
    q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    r = float(size) - 0.5
    dst = np.array([[-0.5, -0.5], [-0.5, r], [r, r], [r, -0.5]], dtype=np.float64)
    return _perspective(q, dst)


def _perspective(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Float64 homography from 4 point pairs (8x8 solve); cv2's version takes
    float32 points, which costs sub-pixel accuracy on large frames."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    h = np.linalg.solve(a, b)
    return np.append(h, 1.0).reshape(3, 3)


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to ``[..., 2]`` points."""
    p = np.asarray(pts, dtype=np.float64)
    h = p @ m[:2, :2].T + m[:2, 2]
    w = p @ m[2, :2] + m[2, 2]
    return h / w[..., None]


def stit_qsize(quad: np.ndarray) -> float:
    """STIT's ``qsize`` of a quad: ``2·|(quad[3] − quad[1]) / 2|``, the distance from
    the bottom-left to the top-right corner, i.e. the quad's *diagonal* (√2 times its
    side), not the side that NVIDIA's FFHQ script measures (docs/reference.md,
    "Quad and crop")."""
    q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    return float(np.linalg.norm(q[3] - q[1]))


def shrink_factor(quad: np.ndarray, size: int) -> int:
    """STIT's pre-shrink: ``floor(qsize / size · 0.5)`` with ``qsize`` the diagonal
    (:func:`stit_qsize`); the frame is reduced by this integer factor before the
    warp when it is above 1. At 1024 px that happens from a quad side of about
    2,897 px (diagonal 4,096) on, so faces with a 2,900–3,500 px side are shrunk by
    2 (docs/reference.md, "Quad and crop"). Returns 1 when no shrink applies.

    >>> shrink_factor([[0, 0], [0, 3000], [3000, 3000], [3000, 0]], 1024)
    2
    """
    shrink = int(np.floor(stit_qsize(quad) / size * 0.5))
    return shrink if shrink > 1 else 1


def align_crop(frame: np.ndarray, quad: np.ndarray, size: int,
               padding: str = "reflect") -> np.ndarray:
    """Warp the quad's region of ``frame`` to an ``size x size`` crop (bilinear).

    Args:
        frame: HxWxC image (uint8, uint16 or float32).
        quad: ``[4, 2]`` TL, BL, BR, TR in frame pixels.
        size: crop resolution R.
        padding: ``"reflect"`` (mirror the frame where the quad leaves it) or
            ``"black"`` (STIT's behaviour).

    Faces much larger than the crop are first reduced with area averaging by
    STIT's integer factor (:func:`shrink_factor`), which avoids aliasing from the
    bilinear warp. STIT divides the quad by the factor; here the quad follows the
    resize's pixel-centre mapping, which keeps the crop aligned to a fraction of a
    pixel.
    """
    import cv2

    q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    shrink = shrink_factor(q, size)
    src = frame
    if shrink > 1:
        h, w = frame.shape[:2]
        sw, sh = max(1, round(w / shrink)), max(1, round(h / shrink))
        src = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
        # pixel-centre mapping of a resize: u' = (u + 0.5) * sw / w - 0.5
        q = (q + 0.5) * np.array([sw / w, sh / h]) - 0.5
    m = crop_transform(q, size)
    border = {"reflect": cv2.BORDER_REFLECT, "black": cv2.BORDER_CONSTANT}.get(padding)
    if border is None:
        raise ValueError(f"padding must be 'reflect' or 'black', got {padding!r}")
    return cv2.warpPerspective(src, m, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=border, borderValue=0)


def unalign(crop: np.ndarray, quad: np.ndarray, frame_size: tuple[int, int]
            ) -> np.ndarray:
    """Warp a crop back into frame geometry (crop -> frame), bilinear; frame pixels
    outside the quad get 0.

    Args:
        crop: ``R x R [x C]`` (uint8, uint16 or float32).
        quad: the quad the crop was taken with.
        frame_size: ``(width, height)`` of the frame.
    """
    import cv2

    size = crop.shape[0]
    m = crop_transform(quad, size)  # frame -> crop: sample the crop at M @ p
    return cv2.warpPerspective(crop, m, (int(frame_size[0]), int(frame_size[1])),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# --- the stage --------------------------------------------------------------------


#: Crop size when no model module is installed to say the generator's resolution.
FALLBACK_RESOLUTION = 256


def resolve_resolution(resolution: int, profile: str) -> int:
    """The crop size R: ``resolution`` (``options.align.resolution``) when set, else
    the generator resolution of the model ``profile`` (1024 for the official
    weights, from ``engine.models.modelset``). R must be a power of two."""
    r = resolution or generator_resolution(profile)
    if r is None:
        log.warning("engine.models.modelset is not available; aligning at %d px",
                    FALLBACK_RESOLUTION)
        r = FALLBACK_RESOLUTION
    if r < 8 or r & (r - 1):
        from fsexchange.errors import DocumentFieldError

        raise DocumentFieldError(f"options.align.resolution {r} must be a power of two "
                                 ">= 8", field="options.align.resolution")
    return int(r)


def generator_resolution(profile: str) -> int | None:
    """``img_resolution`` of the profile's generator (None without
    ``engine.models.modelset``). Loads the profile's networks once, on the CPU, and
    drops
    them; not cached, since models may be installed while the engine runs."""
    try:
        from engine.models.modelset import load_models
    except ImportError:
        return None
    return int(load_models(profile, device="cpu").generator.img_resolution)


def parser_weights() -> Path | None:
    """The installed BiSeNet ``79999_iter.pth`` of the model store, if any."""
    try:
        from engine.models.store import Store
    except ImportError:
        return None
    from engine.models.store import PARSER_FILE

    return Store().installed(PARSER_FILE)


class AlignStage(Stage):
    """Smoothed FFHQ crops at the generator resolution, quads, and face masks.

    Every frame of the track with a face is aligned; a draft's track holds only
    its few frames (``engine.stages.draft``, which also overrides the three hooks
    below to reuse loaded networks and to read only those frames).
    """

    name = "align"
    split = "frames"  # shards of whole mask batches (engine/stages/contract.py)

    def resolution(self, ctx: StageContext) -> int:
        """The crop size R (:func:`resolve_resolution`)."""
        return resolve_resolution(ctx.config.align.resolution, ctx.config.profile)

    def mask_builder(self, ctx: StageContext, size: int) -> Any:
        """The job's :class:`engine.stages.mask.MaskBuilder`."""
        from engine.stages.mask import MaskBuilder

        return MaskBuilder(ctx.config.mask, size, device=ctx.device,
                           parser_path=parser_weights())

    def source_frames(self, ctx: StageContext, frames: list[int], depth: int = 8
                      ) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, RGB)`` covering ``frames`` (increasing media indices: the ones
        with a face this unit aligns), streamed from the first of them to the
        last, decoded at ``depth`` (8, 16 or 32 = float)."""
        from engine.media.video import read_frames

        if not frames:
            return iter(())
        return read_frames(ctx.source_path(), frames[0], frames[-1] + 1, depth=depth)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from engine.media.colour import pipeline_for
        from engine.media.video import encode_png, to_depth
        from fsexchange.media import probe

        cfg = ctx.config.align
        job = ctx.job
        track = ctx.files.track.facetrack()
        size = self.resolution(ctx)
        start, end = job.range.start, job.range.end
        n = end - start
        by_frame = {fr.frame: fr for fr in track.frames}
        lms = np.full((n, 68, 2), np.nan)
        for i in range(n):
            fr = by_frame.get(start + i)
            if fr is not None and fr.present and fr.landmarks is not None:
                lms[i] = np.asarray(fr.landmarks, dtype=np.float64)
        present = ~np.isnan(lms).any(axis=(1, 2))
        c, x, y = ffhq_quad_params(np.nan_to_num(lms), scale=cfg.scale)
        c[~present] = np.nan
        x[~present] = np.nan
        y[~present] = np.nan
        c, x, y = smooth_params_segments(c, x, y, present, cfg.center_sigma,
                                         cfg.xy_sigma)
        quads = quad_from_params(c, x, y)

        ctx.stage_dir(self.name)
        files = ctx.files.align
        files.crops_dir.mkdir(exist_ok=True)
        files.masks_dir.mkdir(exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, quads, allow_pickle=False)
        atomic_write_bytes(files.quads_path, buf.getvalue())

        masker = self.mask_builder(ctx, size)
        if masker.source == "hull":
            ctx.warn("Face masks come from the landmark hull: the BiSeNet face-parser "
                     "weights (79999_iter.pth) are not installed, so hair and neck are "
                     "covered only by the dilation. Install them with "
                     "'facestitch models install' for the reference masks.")
        info = probe(ctx.source_path(), job.range.rate)
        colour, notes = pipeline_for(ctx.config.colour, info)
        for note in notes:
            ctx.warn(note)
        ctx.info["colour"] = colour.describe()
        frames_done: list[int] = []
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        # Work items: the mask batches, runs of batch_size frames with a face; a
        # shard reads only the frames of its batches, the final unit lists the
        # batches that shards finished without redoing them.
        rank = np.cumsum(present) - 1  # [N] position among the present frames
        bs = masker.batch_size
        items = -(-int(present.sum()) // bs)
        mine = [k for k in range(items) if ctx.in_shard(k, items)]
        sharded = ctx.done_by_shards(self.name, items) if ctx.shard is None else set()
        first, last = 0, n
        if ctx.shard is not None:
            if not mine:
                return {"frames": 0}
            where = np.flatnonzero(present)
            first = int(where[mine[0] * bs])
            last = int(where[min((mine[-1] + 1) * bs, len(where)) - 1]) + 1

        def flush() -> None:
            masks = masker.masks([p[1] for p in pending], [p[2] for p in pending])
            for (frame, crop, _), mask in zip(pending, masks):
                atomic_write_bytes(files.crops_dir / crop_name(frame), encode_png(crop))
                atomic_write_bytes(files.masks_dir / crop_name(frame),
                                   encode_png(mask.astype(np.uint8) * 255))
                frames_done.append(frame)
            pending.clear()

        # Rec.709/sRGB: the 8-bit code values are the network space already.
        depth = 8 if colour.identity else 32
        wanted = [start + int(i) for i in np.flatnonzero(present)
                  if first <= i < last]
        for index, frame in self.source_frames(ctx, wanted, depth):
            ctx.check_abort()
            i = index - start
            if present[i] and int(rank[i]) // bs in sharded:
                frames_done.append(index)  # a shard wrote its crop and mask
            elif present[i] and ctx.in_shard(int(rank[i]) // bs, items):
                crop = align_crop(frame, quads[i], size, cfg.padding)
                if not colour.identity:
                    crop = to_depth(colour.to_network(crop), 8)
                m = crop_transform(quads[i], size)
                pending.append((index, crop, transform_points(m, lms[i])))
                if len(pending) >= masker.batch_size:
                    flush()
            ctx.report((i - first + 1) / (last - first), f"aligned frame {index}")
        flush()
        if ctx.shard is not None:  # the final unit writes info.json
            return {"frames": len(frames_done)}

        doc = {
            "schema": "facestitch.AlignInfo/1",
            "resolution": size,
            "frame_size": [info.width, info.height],
            "range": [start, end],
            "rate": [job.range.rate.numerator, job.range.rate.denominator],
            "frames": frames_done,
            "mask_source": masker.source,
            "center_sigma": cfg.center_sigma,
            "xy_sigma": cfg.xy_sigma,
            "scale": cfg.scale,
            "padding": cfg.padding,
            "colour": colour.describe(),
        }
        atomic_write_bytes(files.info_path, json.dumps(doc, indent=1).encode())
        ctx.info["mask_source"] = masker.source
        return {"frames": len(frames_done), "resolution": size,
                "mask_source": masker.source, "colour": colour.describe()}
