"""Paste-back: the (edited) aligned crop, warped into the full frame as an RGBA layer.

:func:`paste_back` is the one paste in the tree. It warps the crop's premultiplied
colour and its alpha into frame geometry with the inverse of the alignment
transform (bilinear, the same 3x3 matrix the crop was taken with), un-premultiplies,
and returns a 16-bit straight-alpha RGBA frame at the source resolution. Wherever
the 16-bit alpha is 0 the RGB is the source pixel itself, bit for bit, so the layer
can be composited over the plate in any editor: ``a·rgb + (1 - a)·source``.

``PasteStage`` (the ``paste`` pipeline stage) writes every frame of the range into
``output/`` named per :func:`engine.media.video.output_name` (``png16`` default,
``exr``,
``pam16``; ``prores4444`` writes one movie ``output/<name>.mov``), plus the
composited preview movie ``output/preview.mp4`` and, for ``align-preview`` jobs, a
contact sheet of the aligned crops ``output/contact_sheet.png``. Frames without the
face are the source with alpha 0 (``edited`` False).

Colour (docs/colour.md "Where colour is converted"): crops are in the networks'
space; each is converted back to the source's encoding
(:meth:`engine.media.colour.ColourPipeline.from_network`) before it is pasted, so
PNG16, PAM and ProRes frames carry the source's own encoding (ProRes and the
preview tagged with the source's matrix, primaries, transfer and range). EXR frames
are scene-linear (:meth:`~engine.media.colour.ColourPipeline.to_linear`) with
``chromaticities``, ``framesPerSecond`` and ``timeCode`` attributes; an EXR source
keeps values above 1. For align-preview jobs ``output/network_view.png`` shows a
source frame next to what the networks see of it.

Crop sources, in order: ``stages/stitch_tune/`` when that stage finished
(``crops/<frame:07d>.png`` 16-bit RGB and ``alpha/<frame:07d>.png`` 16-bit grey; a
missing alpha falls back to the align mask), else ``stages/render/`` when it
finished (``--no-stitch``: the edit rendered untuned, naive alphas, the same
layout), else the align crops pasted back unedited (identity paste, for checking a
track).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterable

import numpy as np

from fsexchange.documents import FrameOutput

from engine.stages.contract import Stage, StageContext

__all__ = ["paste_back", "contact_sheet", "network_view", "PasteStage",
           "FORMAT_EXT"]

log = logging.getLogger(__name__)

#: OutputSpec.format -> frame file extension (prores4444 is one movie).
FORMAT_EXT = {"png16": "png", "exr": "exr", "pam16": "pam"}


def paste_back(frame_rgb: np.ndarray, crop_rgb: np.ndarray, crop_alpha: np.ndarray,
               quad: np.ndarray) -> np.ndarray:
    """RGBA layer at frame size from a crop, its alpha and its quad.

    Args:
        frame_rgb: source ``H x W x 3`` uint8, uint16 or float32 (EXR, any value).
        crop_rgb: ``R x R x 3`` uint8, uint16 or float (0..1; any value for a
            float frame), in the frame's encoding.
        crop_alpha: ``R x R`` float in 0..1 (or uint8/uint16).
        quad: ``[4, 2]`` the crop's quad in frame pixels.

    Returns:
        ``H x W x 4`` uint16, straight alpha (float32 for a float frame, RGB not
        clipped). Where alpha is 0 the RGB equals the source (uint8 sources scaled
        by 257, i.e. exactly the same values; float sources as they are).
    """
    from engine.stages.align import unalign
    from engine.media.video import to_depth, to_float

    floating = np.issubdtype(frame_rgb.dtype, np.floating)
    if floating:
        src16 = np.ascontiguousarray(frame_rgb[..., :3], dtype=np.float32)
        crop = to_float(np.ascontiguousarray(crop_rgb[..., :3]))
    else:
        src16 = to_depth(np.ascontiguousarray(frame_rgb[..., :3]), 16)
        crop = to_depth(np.ascontiguousarray(crop_rgb[..., :3]), 16).astype(
            np.float32) / 65535.0
    h, w = src16.shape[:2]
    a = np.asarray(crop_alpha)
    if a.dtype.kind == "u":
        a = a.astype(np.float32) / np.iinfo(a.dtype).max
    a = np.clip(a.astype(np.float32), 0, 1)
    if a.shape != crop.shape[:2]:
        raise ValueError(f"alpha {a.shape} does not match the crop {crop.shape[:2]}")
    # Premultiplied warp: bilinear weights at the crop's edge then fade colour and
    # alpha together instead of darkening the colour.
    premul = np.concatenate([crop * a[..., None], a[..., None]], axis=2)
    warped = unalign(premul, quad, (w, h))  # [H, W, 4] float32
    if floating:
        out = np.empty((h, w, 4), np.float32)
        out[..., :3] = src16
        out[..., 3] = np.clip(warped[..., 3], 0, 1)
        on = out[..., 3] > 0
        out[on, :3] = warped[on, :3] / np.maximum(warped[on, 3:4], 1e-12)
        return out
    alpha16 = np.rint(np.clip(warped[..., 3], 0, 1) * 65535).astype(np.uint16)
    out = np.empty((h, w, 4), np.uint16)
    out[..., :3] = src16
    out[..., 3] = alpha16
    on = alpha16 > 0
    if on.any():
        rgb = warped[on, :3] / np.maximum(warped[on, 3:4], 1e-12)
        out[on, :3] = np.rint(np.clip(rgb, 0, 1) * 65535).astype(np.uint16)
    return out


def contact_sheet(tiles: Iterable[tuple[int, np.ndarray | None]], *, tile: int = 128,
                  columns: int = 8) -> np.ndarray:
    """A grid of ``(frame, crop or None)`` tiles as RGB uint8; a crop of None (no
    face at that frame) is a dark grey tile. The frame number is drawn in a corner."""
    import cv2

    from engine.media.video import to_depth

    items = list(tiles)
    rows = max(1, -(-len(items) // columns))
    cols = min(columns, max(1, len(items)))
    sheet = np.full((rows * tile, cols * tile, 3), 24, np.uint8)
    for k, (frame, crop) in enumerate(items):
        r, c = divmod(k, cols)
        if crop is None:
            img = np.full((tile, tile, 3), 64, np.uint8)
        else:
            img = cv2.resize(to_depth(crop[..., :3], 8), (tile, tile),
                             interpolation=cv2.INTER_AREA)
        img = np.ascontiguousarray(img)
        cv2.putText(img, str(frame), (3, tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(img, str(frame), (3, tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = img
    return sheet


def network_view(source: np.ndarray, network: np.ndarray, *,
                 height: int = 360) -> np.ndarray:
    """The source frame (its code values, as an untransformed viewer shows them)
    and the networks' rendering of it side by side, RGB uint8, with labels."""
    import cv2

    from engine.media.video import to_depth

    tiles = []
    for img, label in ((source, "source"), (network, "what the networks see")):
        a = to_depth(np.clip(np.nan_to_num(img[..., :3].astype(np.float32))
                             if img.dtype.kind == "f" else img[..., :3], 0, None), 8)
        w = max(1, round(a.shape[1] * height / a.shape[0]))
        a = np.ascontiguousarray(cv2.resize(a, (w, height),
                                            interpolation=cv2.INTER_AREA))
        cv2.putText(a, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(a, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(a)
    return np.concatenate(tiles, axis=1)


def _frame_timecode(job, index: int) -> str | None:
    from fsexchange.timecode import frames_to_timecode

    if not job.range.start_timecode:
        return None
    return frames_to_timecode(job.range.start_frame_number + index, job.range.rate,
                              drop_frame=";" in job.range.start_timecode)


def _sample(frames: list[int], limit: int) -> list[int]:
    if len(frames) <= limit:
        return list(frames)
    idx = np.linspace(0, len(frames) - 1, limit).round().astype(int)
    return [frames[i] for i in sorted(set(idx.tolist()))]


class PasteStage(Stage):
    """RGBA frames at source resolution, a composited preview and a contact sheet."""

    name = "paste"

    #: Most tiles on a contact sheet (evenly spread over the range).
    CONTACT_TILES = 48
    #: shards of frames (engine/stages/contract.py); a movie output cannot be
    #: split: its shards do nothing and the final unit writes it all
    split = "frames"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from engine.media.colour import pipeline_for
        from engine.media.composite import composite_over
        from engine.stages.mask import paste_alpha
        from engine.media.video import (
            MovieWriter,
            encode_png,
            encode_rgba,
            exr_attributes,
            output_name,
            read_frames,
            read_image,
            to_depth,
            to_float,
        )
        from fsexchange.fsutil import atomic_write_bytes
        from fsexchange.media import probe

        job = ctx.job
        aligned = ctx.files.align.clip()
        tuned: Any = ctx.files.stitch_tune
        if not tuned.done_path.exists() and ctx.files.render.done_path.exists():
            tuned = ctx.files.render  # --no-stitch: the naive edit
        use_tuned = tuned.done_path.exists()
        out_dir = ctx.output_dir()
        fmt = job.output.format
        start, end = job.range.start, job.range.end
        n = end - start
        width, height = aligned.info["frame_size"]
        rate = job.range.rate
        info = probe(ctx.source_path(), rate)
        # The align stage already warned about the colour choice.
        colour, _ = pipeline_for(ctx.config.colour, info)
        # 8-bit sources are decoded at 8 bits (then scaled by 257), so the layer's
        # pass-through pixels equal the 8-bit decode bit for bit; deeper sources
        # keep their precision; float (EXR) sources stay float, unclipped.
        floating = info.colour.transfer == "linear"
        depth = 32 if floating else (16 if info.bit_depth > 8 else 8)
        if floating and fmt != "exr":
            ctx.warn(f"the source is floating-point EXR but the output is {fmt}: "
                     "values outside 0..1 are clipped; choose --format exr to keep "
                     "them")
        shard = range(n) if ctx.shard is None else ctx.shard.items(n)
        if ctx.shard is not None and (fmt == "prores4444" or not shard):
            return {"frames": []}
        # frames finished by shards before this final unit: listed, not redone
        sharded = {f["frame"]: f for r in ctx.files.paste.shard_records()
                   for f in r["facts"].get("frames", [])
                   } if ctx.shard is None and fmt != "prores4444" else {}
        movie = None
        if fmt == "prores4444":
            movie = MovieWriter(out_dir / f"{job.output.name}.mov", rate,
                                (width, height), codec="prores_ks", alpha=True,
                                colour=info.colour)
        preview = None
        outputs: dict[str, str] = {}
        if job.output.preview and ctx.shard is None:
            # A float source is previewed as the networks' display rendering
            # (Rec.709); others in their own encoding, tagged as the source is.
            preview = MovieWriter(out_dir / "preview.mp4", rate, (width, height),
                                  codec=ctx.config.paste.preview_codec,
                                  colour=None if floating else info.colour,
                                  depth=8 if depth == 8 else 16)
            outputs["preview"] = "output/preview.mp4"
        frames: list[dict[str, Any]] = []
        have = set(aligned.frames)
        try:
            for index, src in read_frames(ctx.source_path(), start + shard.start,
                                          start + shard.stop, depth=depth):
                ctx.check_abort()
                if index in sharded:
                    frames.append(sharded[index])
                    if preview is not None:
                        preview.write(read_image(ctx.files.paste.composite(index)))
                    continue
                quad = aligned.quad(index)
                edited = quad is not None and index in have
                if edited:
                    if use_tuned:
                        crop = read_image(tuned.crop(index))
                        alpha_file = tuned.alpha(index)
                        alpha = (read_image(alpha_file) if alpha_file.exists()
                                 else paste_alpha(aligned.mask(index), ctx.config.mask))
                        if alpha.ndim == 3:
                            alpha = alpha[..., 0]
                    else:
                        crop = aligned.crop(index)
                        alpha = paste_alpha(aligned.mask(index), ctx.config.mask)
                    if not colour.identity:  # network space -> the source's
                        crop = colour.from_network(to_float(crop))
                    rgba = paste_back(src, crop, alpha, quad)
                elif floating:
                    rgba = np.concatenate([src, np.zeros(src.shape[:2] + (1,),
                                                         np.float32)], axis=2)
                else:
                    rgba = np.concatenate([to_depth(src, 16), np.zeros(
                        src.shape[:2] + (1,), np.uint16)], axis=2)
                if movie is not None:
                    movie.write(rgba)
                    path = f"output/{movie.path.name}"
                    digest = ""
                else:
                    name = output_name(job, index, FORMAT_EXT[fmt])
                    layer, attributes = rgba, None
                    if fmt == "exr":  # scene-linear, the EXR convention
                        layer = to_float(rgba)
                        layer[..., :3] = colour.to_linear(layer)
                        attributes = exr_attributes(
                            chromaticities=colour.chromaticities, rate=rate,
                            timecode=_frame_timecode(job, index))
                    data = encode_rgba(FORMAT_EXT[fmt], layer, attributes=attributes)
                    atomic_write_bytes(out_dir / name, data)
                    path, digest = f"output/{name}", hashlib.sha256(data).hexdigest()
                frames.append(FrameOutput(index, path, digest, edited).to_dict())
                if job.output.preview:  # composited in the source's encoding
                    comp = composite_over(rgba, src)
                    if floating:
                        comp = colour.to_network(comp)
                    comp = to_depth(comp, 8 if depth == 8 else 16)
                    if preview is not None:
                        preview.write(comp)
                    else:  # a shard: the final unit encodes the movie from these
                        from engine.stages.crops import write_png

                        write_png(ctx.files.paste.composite(index), comp)
                ctx.report((index - start - shard.start + 1) / len(shard),
                           f"pasted frame {index}")
        except BaseException:
            for writer in (movie, preview):
                if writer is not None:
                    writer.abort()
            raise
        if ctx.shard is not None:  # the final unit writes the movies and lists
            return {"frames": frames}
        if movie is not None:
            movie.close()
            from fsexchange.fsutil import sha256_file

            digest = sha256_file(movie.path)
            frames = [dict(f, sha256=digest) for f in frames]
            outputs["movie"] = f"output/{movie.path.name}"
        if preview is not None:
            preview.close()
        if job.kind == "align-preview":
            import cv2

            picks = _sample(list(range(start, end)), self.CONTACT_TILES)
            sheet = contact_sheet((f, aligned.crop(f) if f in have else None)
                                  for f in picks)
            ok, buf = cv2.imencode(".png", sheet[:, :, ::-1])
            if not ok:
                raise OSError("PNG encoding failed")
            atomic_write_bytes(out_dir / "contact_sheet.png", buf.tobytes())
            outputs["contact_sheet"] = "output/contact_sheet.png"
            if have:
                f = sorted(have)[len(have) // 2]
                src = next(iter(read_frames(ctx.source_path(), f, f + 1,
                                            depth=32)))[1]
                view = network_view(src, colour.to_network(src))
                atomic_write_bytes(out_dir / "network_view.png",
                                   encode_png(view))
                outputs["network_view"] = "output/network_view.png"
        return {"frames": frames, "outputs": outputs}
