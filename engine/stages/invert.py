"""Inversion of the aligned crops to W+ pivots: e4e (STIT's default,
docs/reference.md "Inversion with e4e") or the W projector (STIT's optimisation-based
first inversion, docs/reference.md "Inversion by optimisation"), by
``invert.method``.

- ``e4e``: frames go through the encoder in batches of ``invert.batch_size`` (the
  reference: one at a time), read from disk batch by batch.
- ``projector``: per frame, one w in W (broadcast to every layer) is optimised so
  that ``G(w)`` matches the crop: ``lpips_weight · LPIPS + l2_weight · MSE`` (the
  job's LPIPS network; the reference uses NVIDIA's VGG16 LPIPS features at 256 px
  and no L2 term), Adam with the reference's schedule (50 steps, peak lr 0.01,
  cosine ramp-down over the last quarter, linear ramp-up over the first 5 %, a
  Gaussian perturbation of w of ``0.05 · w_std`` fading out by 75 %), starting from
  ``w_avg`` of 600 mapped samples, or, with ``invert.use_last_w_pivots``, from the
  previous frame's pivot. The reference also optimises a copy of the noise buffers
  and then throws the copy away, so its pivot was fitted to noise that PTI does not
  use; here w is fitted to the constant noise PTI trains with. Frames are independent
  without the warm start and run in batches of ``invert.batch_size`` (Adam works per
  element and the loss of one frame does not reach another's w, so a batch computes
  the same pivots as one frame at a time); the warm start runs one frame at a time.
  The perturbation of frame ``f`` is drawn from a generator seeded by ``(seed,
  f)``, so the pivots do not depend on the batching and a resumed stage computes
  exactly the pivots of an uninterrupted one.

Nothing grows with the clip but the pivots themselves, ``[N, num_ws, w_dim]`` floats.

``InvertStage`` writes into ``stages/invert/``:

- ``pivots.npy``: float32 ``[N, num_ws, w_dim]``, one row per frame with a face;
- ``frames.json``: ``{"frames": [...]}`` the source frame index of each row (the
  ``align`` stage's frames with crops, in order);
- ``projector.json`` (projector only): its settings and each frame's loss at the
  start and at the pivot;
- ``preview/<frame:07d>.png``: the inversion ``G(pivot)`` of a few frames for the
  report (:func:`engine.stages.crops.preview_frames`);
- ``parts/<row:07d>.npy`` (+ ``.json`` losses for the projector): the resumable
  checkpoint, one file per finished batch, removed when the stage completes.

(File names: :class:`engine.stages.outputs.InvertFiles`.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fsexchange.errors import DocumentFieldError
from fsexchange.fsutil import atomic_write_bytes

from engine.models.styleclip import text_edit_directions
from engine.stages.contract import Stage, StageContext
from engine.stages.crops import (chunks, crops_to_tensor, preview_frames, save_npy,
                                 write_previews)
from engine.stages.edit import check_edits

if TYPE_CHECKING:
    import torch

    from engine.nets.stylegan2 import Generator

__all__ = ["InvertStage", "INVERT_METHODS", "w_statistics", "projector_schedule",
           "project_w"]

log = logging.getLogger(__name__)

INVERT_METHODS = ("e4e", "projector")

# STIT's W projector schedule (its training/projectors/w_projector.py defaults;
# docs/reference.md "Inversion by optimisation").
LR_RAMPDOWN = 0.25  # cosine ramp-down over the last quarter of the steps
LR_RAMPUP = 0.05  # linear ramp-up over the first 5 %
W_NOISE_FACTOR = 0.05  # perturbation of w: 0.05 · w_std at the start ...
W_NOISE_RAMP = 0.75  # ... fading out quadratically by 75 % of the steps
W_STATS_SEED = 123  # numpy RandomState of the z samples for w_avg and w_std


def w_statistics(G: "Generator", samples: int, device: str = "cpu"
                 ) -> tuple["torch.Tensor", float]:
    """``(w_avg [w_dim], w_std)`` of ``samples`` mapped z drawn as the reference
    draws them (``numpy.random.RandomState(123)``); ``w_std`` is the root mean
    squared distance of a sample from ``w_avg``."""
    import torch

    z = np.random.RandomState(W_STATS_SEED).randn(max(int(samples), 1), G.z_dim)
    with torch.no_grad():
        w = G.mapping(torch.from_numpy(z).float().to(device))[:, 0]  # [S, w_dim]
    avg = w.mean(0)
    std = float(((w - avg).square().sum() / w.shape[0]).sqrt())
    return avg, std


def projector_schedule(step: int, steps: int, peak_lr: float
                       ) -> tuple[float, float]:
    """``(learning rate, w perturbation in units of w_std)`` at ``step`` of
    ``steps``: the reference's ramps (the first step has lr 0: Adam's moments are
    primed before w moves, as in the reference)."""
    t = step / max(steps, 1)
    noise = W_NOISE_FACTOR * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp *= min(1.0, t / LR_RAMPUP)
    return peak_lr * ramp, noise


def _frame_seed(seed: int, frame: int) -> int:
    h = hashlib.sha256(f"projector:{seed}:{frame}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def project_w(G: "Generator", lpips: Any, targets: "torch.Tensor",
              init: "torch.Tensor", *, steps: int, lr: float, w_std: float,
              lpips_weight: float = 1.0, l2_weight: float = 1.0,
              seeds: Sequence[int], abort: Callable[[], None] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit one w per target (W space, broadcast to every layer).

    Args:
        G: the generator (its weights are not changed).
        lpips: ``feature_maps`` / ``distance_from_features`` (engine.nets.lpips).
        targets: ``[B, 3, R, R]`` crops in [-1, 1] at the generator's resolution.
        init: ``[B, w_dim]`` starting points (w_avg, or the previous pivots).
        steps, lr: optimiser steps and the schedule's peak learning rate.
        w_std: scale of the perturbation (:func:`w_statistics`).
        lpips_weight, l2_weight: the loss ``lpips_weight · LPIPS + l2_weight ·
            MSE`` per frame (images in [-1, 1]).
        seeds: one per target: the perturbation's random stream.
        abort: called before every step (raises to stop).

    Returns:
        ``(pivots [B, num_ws, w_dim] float32, loss at init [B], loss at the pivot
        [B])``.
    """
    import torch

    dev = targets.device
    with torch.no_grad():
        feats = lpips.feature_maps(targets)

    def loss_of(w: "torch.Tensor") -> "torch.Tensor":  # [B, w_dim] -> [B]
        img = G.synthesis(w[:, None].expand(-1, G.num_ws, -1), noise_mode="const")
        lp = lpips.distance_from_features(lpips.feature_maps(img), feats).reshape(-1)
        mse = (img - targets).square().mean(dim=(1, 2, 3))
        return lpips_weight * lp + l2_weight * mse

    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    w_opt = init.detach().clone().float().to(dev).requires_grad_(True)
    with torch.no_grad():
        before = loss_of(w_opt).cpu().numpy()
    opt = torch.optim.Adam([w_opt], lr=lr, betas=(0.9, 0.999))
    for step in range(steps):
        if abort is not None:
            abort()
        step_lr, noise = projector_schedule(step, steps, lr)
        for group in opt.param_groups:
            group["lr"] = step_lr
        # one draw per frame from its own stream: independent of the batching
        eps = torch.stack([torch.randn(w_opt.shape[1], generator=g) for g in gens])
        loss = loss_of(w_opt + eps.to(dev) * (w_std * noise))
        opt.zero_grad(set_to_none=True)
        # the sum: each frame's w gets exactly its own loss's gradient
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        after = loss_of(w_opt).cpu().numpy()
        pivots = w_opt[:, None].expand(-1, G.num_ws, -1).cpu().numpy()
    return pivots.astype(np.float32), before, after


class InvertStage(Stage):
    """Aligned crops -> W+ pivots: e4e in batches, or the W projector."""

    name = "invert"
    split = "frames"  # shards of whole encoder batches (engine/stages/contract.py)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        cfg = ctx.config.invert
        if cfg.method not in INVERT_METHODS:
            raise DocumentFieldError(
                f"options.invert.method must be e4e or projector, got {cfg.method!r}",
                field="options.invert.method")
        clip = ctx.files.align.clip()
        frames = clip.frames
        ctx.stage_dir(self.name)
        files = ctx.files.invert
        parts = files.parts_dir
        parts.mkdir(exist_ok=True)
        models = ctx.load_models()
        # Fail fast (edit.unknown; text edits: their files, prompt and β) before
        # any tuning, not after PTI.
        check_edits(ctx.job.edits, models.directions)
        gen = models.generator
        text_edit_directions(ctx.job.edits, gen.style_channels, gen.style_is_torgb,
                             device=ctx.device)
        projector = cfg.method == "projector"
        batch = 1 if projector and cfg.use_last_w_pivots else cfg.batch_size
        facts: dict[str, Any] = {"frames": len(frames), "method": cfg.method,
                                 "batch_size": batch}
        if projector:
            invert_rows = self._projector(ctx, models, clip, frames, parts)
        else:
            invert_rows = self._encoder(ctx, models, clip, frames)
            facts["encoder_resolution"] = int(models.encoder_resolution)
        done = 0
        row_chunks = list(chunks(range(len(frames)), batch))
        # Work items are whole batches, so a shard computes each frame exactly as
        # a whole run does; a warm-started projector chains every frame to the
        # previous one, so it runs as one item (one shard does it all).
        chained = projector and cfg.use_last_w_pivots
        items = 1 if chained else len(row_chunks)
        mine = [k for k in range(len(row_chunks))
                if ctx.in_shard(0 if chained else k, items)]
        todo = sum(len(row_chunks[k]) for k in mine)  # frames of this unit
        for k in mine:
            rows = row_chunks[k]
            ctx.check_abort()
            part = parts / f"{rows[0]:07d}.npy"
            if not part.exists():
                invert_rows(list(rows), part)
            done += len(rows)
            ctx.report(done / max(todo, 1), f"inverted {done} frames")
        if ctx.shard is not None:  # the final unit merges the parts
            return {"frames": done}
        pivots = (np.concatenate([np.load(parts / f"{r[0]:07d}.npy")
                                  for r in row_chunks])
                  if frames else np.zeros((0, gen.num_ws, gen.w_dim), np.float32))
        if projector:
            facts.update(self._projector_record(ctx, frames, row_chunks, parts))
        show = preview_frames(frames)
        if show:
            idx = [frames.index(f) for f in show]
            with torch.no_grad():
                ws = torch.from_numpy(pivots[idx]).to(ctx.device)
                write_previews(files.preview_dir, show, gen.synthesis(ws))
        save_npy(files.pivots_path, pivots)
        atomic_write_bytes(files.frames_path, json.dumps({"frames": frames}).encode())
        shutil.rmtree(parts, ignore_errors=True)
        return facts

    # --- e4e -------------------------------------------------------------------

    @staticmethod
    def _encoder(ctx: StageContext, models: Any, clip: Any, frames: list[int]
                 ) -> Callable[[list[int], Any], None]:
        import torch

        enc, res = models.encoder, int(models.encoder_resolution)

        def invert_rows(rows: list[int], part: Any) -> None:
            x = crops_to_tensor([clip.crop(frames[i]) for i in rows], res,
                                device=ctx.device)
            with torch.no_grad():
                ws = enc(x).float()  # [B, num_ws, w_dim]
            save_npy(part, ws.cpu().numpy().astype(np.float32))

        return invert_rows

    # --- the W projector ---------------------------------------------------------

    @staticmethod
    def _projector(ctx: StageContext, models: Any, clip: Any, frames: list[int],
                   parts: Any) -> Callable[[list[int], Any], None]:
        import torch

        cfg = ctx.config.invert
        G = models.generator.eval().requires_grad_(False)
        w_avg, w_std = w_statistics(G, cfg.projector_w_samples, ctx.device)

        def invert_rows(rows: list[int], part: Any) -> None:
            init = w_avg[None].expand(len(rows), -1)
            if cfg.use_last_w_pivots and rows[0] > 0:
                # the previous frame's pivot (its part is on disk, also after a
                # resume); rows run one at a time with the warm start
                prev = np.load(parts / f"{rows[0] - 1:07d}.npy")[-1, 0]
                init = torch.from_numpy(prev)[None].to(ctx.device)
            targets = crops_to_tensor([clip.crop(frames[i]) for i in rows],
                                      G.img_resolution, device=ctx.device)
            pivots, before, after = project_w(
                G, models.lpips, targets, init, steps=cfg.projector_steps,
                lr=cfg.projector_lr, w_std=w_std,
                lpips_weight=cfg.projector_lpips_weight,
                l2_weight=cfg.projector_l2_weight,
                seeds=[_frame_seed(ctx.config.seed, frames[i]) for i in rows],
                abort=ctx.check_abort)
            # losses first: the .npy marks the batch done
            atomic_write_bytes(part.with_suffix(".json"), json.dumps(
                {"before": before.tolist(), "after": after.tolist()}).encode())
            save_npy(part, pivots)

        return invert_rows

    @staticmethod
    def _projector_record(ctx: StageContext, frames: list[int],
                          row_chunks: list[Sequence[int]], parts: Any
                          ) -> dict[str, Any]:
        cfg = ctx.config.invert
        before: list[float] = []
        after: list[float] = []
        for rows in row_chunks:
            rec = json.loads((parts / f"{rows[0]:07d}.json").read_text())
            before += rec["before"]
            after += rec["after"]
        record = {"method": "projector", "steps": cfg.projector_steps,
                  "lr": cfg.projector_lr, "lpips_weight": cfg.projector_lpips_weight,
                  "l2_weight": cfg.projector_l2_weight,
                  "w_samples": cfg.projector_w_samples,
                  "use_last_w_pivots": cfg.use_last_w_pivots, "seed": ctx.config.seed,
                  "frames": frames, "loss_before": before, "loss_after": after}
        atomic_write_bytes(ctx.files.invert.projector_path,
                           json.dumps(record, indent=1).encode())
        return {"projector_loss_before": float(np.mean(before)) if before else None,
                "projector_loss_after": float(np.mean(after)) if after else None,
                "use_last_w_pivots": cfg.use_last_w_pivots}
