"""The edit rendered without stitching tuning, for a naive paste-back: STIT's
``edit_video.py`` (docs/reference.md "Paste-back"), our ``--no-stitch``.

A full job with ``stitch.tune`` off runs this stage instead of stitching tuning:
per frame the PTI generator renders the edited latents (or the edited styles of
an S-space edit; the refined generator and latents when the refinement ran), and
the paste alpha is the face mask itself, undilated, as
``edit_video.py`` pastes (feathered when ``mask.feather`` is on). The seams that
stitching tuning exists to hide stay visible: this is the fast path, and the
paper's ablation, not the recommended output.

``RenderStage`` writes into ``stages/render/`` (:class:`engine.stages.outputs.
RenderFiles`): ``crops/<frame:07d>.png`` 16-bit RGB and ``alpha/<frame:07d>.png``
8-bit grey, which ``PasteStage`` reads as it reads stitching tuning's.

:func:`naive_alpha` is shared with the draft's sweep (``engine.stages.sweep``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from fsexchange.options import MaskConfig, PipelineConfig

from engine.stages.contract import Stage, StageContext
from engine.stages.crops import chunks, tensor_to_image, write_png
from engine.stages.mask import paste_alpha

__all__ = ["naive_alpha", "RenderStage", "RENDER_BATCH"]

log = logging.getLogger(__name__)

#: Frames per generator forward (inference only: small at any resolution).
RENDER_BATCH = 8


def naive_alpha(face_mask: np.ndarray, cfg: MaskConfig = MaskConfig()) -> np.ndarray:
    """Alpha of a naive paste, float32 ``[R, R]`` in 0..1: the face mask without
    dilation (STIT's ``edit_video.py``), feathered with ``cfg.feather`` the way
    :func:`engine.stages.mask.paste_alpha` feathers."""
    return paste_alpha(face_mask, replace(cfg, inner_dilation=0, outer_dilation=0))


class RenderStage(Stage):
    """The PTI generator at the edit, untuned, and naive alphas (``--no-stitch``)."""

    name = "render"
    weight = 1.0

    def applies(self, config: PipelineConfig) -> bool:
        return not config.stitch.tune

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        from engine.stages.stitch_tune import load_edit_styles

        edit = ctx.files.edit
        frames = edit.frames()
        clip = ctx.files.align.clip()
        G = ctx.files.pti.generator(ctx.device)
        if ctx.files.refine.ready():  # the refined generator and latents, as stitching
            G, edit = ctx.files.refine.generator(ctx.device), ctx.files.refine
        ctx.stage_dir(self.name)
        files = ctx.files.render
        done = 0
        for rows in chunks(range(len(frames)), RENDER_BATCH):
            ctx.check_abort()
            styles = load_edit_styles(G, edit, rows, ctx.device)
            with torch.no_grad():
                images = G.synthesis_from_styles(styles)  # [B, 3, R, R]
            for j, i in enumerate(rows):
                f = frames[i]
                write_png(files.crop(f), tensor_to_image(images[j], depth=16))
                alpha = naive_alpha(clip.mask(f), ctx.config.mask)
                write_png(files.alpha(f),
                          np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8))
            done += len(rows)
            ctx.report(done / max(len(frames), 1), f"rendered {done} edited frames")
        ctx.warn("Stitching tuning was off (--no-stitch): the edited faces are pasted "
                 "back with the face mask as they come from the generator, so seams "
                 "at the mask's edge may show.")
        return {"frames": len(frames)}
