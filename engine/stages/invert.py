"""e4e inversion of the aligned crops to W+ pivots (docs/reference.md "Inversion with
e4e").

The reference inverts one frame at a time; here frames go through the encoder in
batches of ``invert.batch_size``, read from disk batch by batch (nothing grows with
the clip but the pivots themselves, ``[N, num_ws, w_dim]`` floats).

``InvertStage`` writes into ``stages/invert/``:

- ``pivots.npy``: float32 ``[N, num_ws, w_dim]``, one row per frame with a face;
- ``frames.json``: ``{"frames": [...]}`` the source frame index of each row (the
  ``align`` stage's frames with crops, in order);
- ``preview/<frame:07d>.png``: the inversion ``G(pivot)`` of a few frames for the
  report (:func:`engine.stages.crops.preview_frames`);
- ``parts/<row:07d>.npy``: the resumable checkpoint, one file per finished batch,
  removed when the stage completes.

(File names: :class:`engine.stages.outputs.InvertFiles`.)
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from engine.stages.contract import Stage, StageContext
from engine.stages.crops import (chunks, crops_to_tensor, preview_frames, save_npy,
                                 write_previews)
from engine.stages.edit import check_edits

__all__ = ["InvertStage"]

log = logging.getLogger(__name__)


class InvertStage(Stage):
    """Aligned crops -> e4e W+ pivots, batched."""

    name = "invert"
    split = "frames"  # shards of whole encoder batches (engine/stages/contract.py)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        cfg = ctx.config.invert
        clip = ctx.files.align.clip()
        frames = clip.frames
        ctx.stage_dir(self.name)
        files = ctx.files.invert
        parts = files.parts_dir
        parts.mkdir(exist_ok=True)
        models = ctx.load_models()
        # Fail fast (edit.unknown) before any tuning, not after PTI.
        check_edits(ctx.job.edits, models.directions)
        enc, gen = models.encoder, models.generator
        res = int(models.encoder_resolution)
        done = 0
        batches = list(chunks(range(len(frames)), cfg.batch_size))
        mine = sum(len(b) for k, b in enumerate(batches)
                   if ctx.in_shard(k, len(batches)))  # frames of this unit
        with torch.no_grad():
            for k, rows in enumerate(batches):
                if not ctx.in_shard(k, len(batches)):
                    continue
                ctx.check_abort()
                part = parts / f"{rows[0]:07d}.npy"
                if not part.exists():
                    x = crops_to_tensor([clip.crop(frames[i]) for i in rows], res,
                                        device=ctx.device)
                    ws = enc(x).float()  # [B, num_ws, w_dim]
                    save_npy(part, ws.cpu().numpy().astype(np.float32))
                done += len(rows)
                ctx.report(done / max(mine, 1), f"inverted {done} frames")
            if ctx.shard is not None:  # the final unit merges the parts
                return {"frames": done}
            pivots = (np.concatenate([np.load(parts / f"{r[0]:07d}.npy")
                                      for r in chunks(range(len(frames)),
                                                      cfg.batch_size)])
                      if frames else
                      np.zeros((0, gen.num_ws, gen.w_dim), np.float32))
            show = preview_frames(frames)
            if show:
                idx = [frames.index(f) for f in show]
                ws = torch.from_numpy(pivots[idx]).to(ctx.device)
                write_previews(files.preview_dir, show, gen.synthesis(ws))
        save_npy(files.pivots_path, pivots)
        atomic_write_bytes(files.frames_path, json.dumps({"frames": frames}).encode())
        shutil.rmtree(parts, ignore_errors=True)
        return {"frames": len(frames), "encoder_resolution": res,
                "batch_size": cfg.batch_size}
