"""Cheap engine stages for the host-bridge tests: real runner, real exchange, real
files, but no face tracking. Referenced by ``serve(pipelines=...)`` as
``host_stages:SolidPasteStage``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from engine.stages.contract import Stage, StageContext
from fsexchange.documents import FrameOutput
from fsexchange.errors import NoFaceFound
from fsexchange.fsutil import atomic_write_bytes

__all__ = ["SolidPasteStage", "NoFaceStage", "result_pixel"]

EXT = {"png16": "png", "pam16": "pam", "exr": "exr"}


def result_pixel(frame: int) -> int:
    """The 16-bit red value SolidPasteStage writes for source frame ``frame``."""
    return (frame * 977) % 65536


class SolidPasteStage(Stage):
    """Writes one RGBA frame per source frame of the range, at the source size: red
    encodes the frame index, alpha is opaque in the centre quarter, 0 elsewhere."""

    name = "paste"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from engine.media.video import encode_rgba, output_name
        from fsexchange.media import probe

        job = ctx.job
        info = probe(ctx.source_path(), job.range.rate)
        out_dir = ctx.output_dir()
        frames = []
        for index in range(job.range.start, job.range.end):
            ctx.check_abort()
            rgba = np.zeros((info.height, info.width, 4), np.uint16)
            rgba[..., 0] = result_pixel(index)
            h, w = info.height, info.width
            rgba[h // 4:3 * h // 4, w // 4:3 * w // 4, 3] = 65535
            ext = EXT[job.output.format]
            name = output_name(job, index, ext)
            data = encode_rgba(ext, rgba)
            atomic_write_bytes(out_dir / name, data)
            frames.append(FrameOutput(index, f"output/{name}",
                                      hashlib.sha256(data).hexdigest()).to_dict())
        return {"frames": frames}


class NoFaceStage(Stage):
    name = "track"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NoFaceFound("no face was found in any frame of the range", stage="track")
