"""Stitching tuning (STIT, docs/reference.md "Stitching tuning"), many frames at once.

Per frame, STIT deep-copies the PTI generator, renders the edited latent and tunes
the copy for up to 100 Adam steps (lr 3e-4) so that the border ring of the face mask
matches the real crop while the interior keeps the edit:

    loss = masked(G(s), crop, border) + 0.01 · masked(G(s), G_pti(s), content)
    masked(a, b, m) = Σ (a·m − b·m)² / Σ m     (3-channel sum over a 1-channel mask)

with early stop when the border loss drops below ``border_loss_threshold`` (checked
before that step's update). The generator renders from styles (StyleGAN2 style-input
mode: mapping and affines get no gradient); the output is the tuned copy
re-synthesised at the edit.

Here a batch of B frames tunes B independent generators in one forward/backward:
the trainable synthesis parameters are stacked per frame (``[B, ...]``), the network
is evaluated with ``torch.func.functional_call`` on the stacks (per-sample
parameters: the modulated convolutions run as grouped convolutions on a
channels-last layout, engine/nets/ops.py), the per-frame losses are summed (so each
frame's gradient is its own), and Adam runs over the stacked tensors (the same
update as ``torch.optim.Adam``). Frames that stop early keep their weights and drop
out of the batch; the rest go on. :func:`tune_reference` is the reference's loop
(one deep copy and one ``torch.optim.Adam`` per frame), kept as the exact slow path
for tests and ``bench/pipeline.py``.

``StitchTuneStage`` writes into ``stages/stitch_tune/``:

- ``crops/<frame:07d>.png``: the tuned edited crop, 16-bit RGB, ``R x R``;
- ``alpha/<frame:07d>.png``: 8-bit grey paste alpha
(:func:`engine.stages.mask.paste_alpha`;
  the job-folder contract in docs/protocol.md);
- ``summary.json``: per-frame border error of the naive paste (the PTI generator at
  the edit, before tuning) and after tuning, steps used, border-loss curves;
- ``parts/<batch:05d>.json``: the checkpoint, one per finished batch (a killed job
  resumes at the next batch); folded into ``summary.json`` at the end.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from fsexchange.options import StitchConfig
from engine.stages.crops import chunks, crops_to_tensor, tensor_to_image, write_png
from engine.stages.batching import training_settings
from engine.stages.contract import Stage, StageContext
from engine.stages.mask import paste_alpha, stitch_masks
from engine.stages.outputs import EditFiles

if TYPE_CHECKING:
    import torch

    from engine.nets.stylegan2 import Generator

__all__ = ["StitchTuneStage", "masked_loss", "BatchedStitcher", "tune_reference",
           "TuneResult", "load_edit_styles"]

log = logging.getLogger(__name__)


def masked_loss(a: "torch.Tensor", b: "torch.Tensor", m: "torch.Tensor",
                l1: bool = False) -> "torch.Tensor":
    """``Σ (a·m − b·m)² / Σ m`` per image (``|·|`` with ``l1``), docs/reference.md
    "Stitching tuning".

    Args:
        a, b: ``[B, 3, R, R]``. m: ``[B, R, R]`` (or ``[B, 1, R, R]``).

    Returns:
        ``[B]``. The numerator sums the 3 channels, the denominator the 1-channel
        mask, as in the reference.
    """
    if m.ndim == 3:
        m = m[:, None]
    d = a * m - b * m
    d = d.abs() if l1 else d.square()
    return d.sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-8)


@dataclass
class TuneResult:
    """Per-frame outcome of stitching tuning.

    Attributes:
        images: ``[B, 3, R, R]`` the tuned generators at the edit.
        before: border loss of the untuned generator (naive paste), ``[B]``.
        after: border loss of the output, ``[B]``.
        steps: updates applied per frame.
        curves: border loss at each step evaluated, per frame.
    """

    images: "torch.Tensor"
    before: list[float]
    after: list[float]
    steps: list[int]
    curves: list[list[float]]


def _styles_module(G: "Generator") -> "torch.nn.Module":
    """A module whose forward is ``G.synthesis.synthesis_from_styles`` (what
    ``functional_call`` needs); it shares G's parameters."""
    import torch

    class FromStyles(torch.nn.Module):
        def __init__(self, syn: torch.nn.Module) -> None:
            super().__init__()
            self.syn = syn

        def forward(self, styles: list) -> torch.Tensor:
            return self.syn.synthesis_from_styles(styles)

    return FromStyles(G.synthesis)


def _trainable_names(module: Any, styles: Sequence["torch.Tensor"]) -> list[str]:
    """Parameters that receive a gradient when rendering from styles (all synthesis
    parameters but the affines), found with one probe backward."""
    import torch

    named = dict(module.named_parameters())
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in named.items()}
    out = torch.func.functional_call(module, leaves, ([s[:1] for s in styles],))
    grads = torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
    return [k for k, g in zip(leaves, grads) if g is not None]


class BatchedStitcher:
    """Tunes B independent copies of a generator at once (stacked per-frame
    parameters through one grouped forward) with per-frame Adam and early stop.

    Args:
        G: the PTI-tuned generator (not modified).
        cfg: ``StitchConfig`` (steps, lr, content_weight, threshold, l1).
        dtype: ``"float32"`` or ``"bfloat16"`` (autocast).
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, G: "Generator", cfg: StitchConfig, dtype: str = "float32"
                 ) -> None:
        self.G = G
        self.cfg = cfg
        self.dtype = dtype
        self.module = _styles_module(G)
        self.names: list[str] = []  # the stacked (trainable) parameters
        self.transposed: set[str] = set()  # weights stored for a transposed conv
        self.fixed: dict[str, "torch.Tensor"] = {}  # shared: affines, buffers

    def _setup(self, styles: Sequence["torch.Tensor"]) -> None:
        if self.names:
            return
        self.names = _trainable_names(self.module, styles)
        # the up-sampling convs read their weights in the transposed layout
        self.transposed = {k for k in self.names if k.endswith(".weight") and getattr(
            self.module.get_submodule(k.rsplit(".", 1)[0]), "up", 1) != 1}
        named = dict(self.module.named_parameters())
        self.fixed = {k: v.detach() for k, v in named.items() if k not in self.names}
        self.fixed.update(dict(self.module.named_buffers()))

    def render(self, params: dict[str, "torch.Tensor"],
               styles: Sequence["torch.Tensor"], dtype: str | None = None
               ) -> "torch.Tensor":
        """Images ``[B, 3, R, R]`` of B per-frame parameter sets (stacked along a
        leading axis; the network takes them as per-sample parameters and runs
        grouped convolutions, engine/nets/stylegan2.py), under ``dtype``
        (default: the stitcher's)."""
        from torch.func import functional_call

        from engine.stages.pti import autocast

        with autocast(str(styles[0].device), dtype or self.dtype):
            return functional_call(self.module, {**self.fixed, **self.views(params)},
                                   (list(styles),)).float()

    def views(self, params: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """The network's views of stacked parameters: conv weights are stored
        contiguous in the convolutions' memory order (so the fused Adam updates
        them without copies) and seen as ``[B, O, I, kh, kw]``."""
        from engine.nets.ops import weight_from_storage

        return {k: weight_from_storage(v, k in self.transposed) if v.ndim == 5 else v
                for k, v in params.items()}

    def tune(self, styles: Sequence["torch.Tensor"], target: "torch.Tensor",
             border: "torch.Tensor", content: "torch.Tensor",
             abort: Any = None, progress: Any = None) -> TuneResult:
        """Tune one batch.

        Args:
            styles: per layer ``[B, C_l]`` (the edit, from the PTI generator).
            target: the real aligned crops ``[B, 3, R, R]`` in [-1, 1].
            border, content: masks ``[B, R, R]``
            (:func:`engine.stages.mask.stitch_masks`).
            abort: called once per step (e.g. ``ctx.check_abort``).
            progress: called with the fraction of steps done after each step.
        """
        import torch

        cfg = self.cfg
        B = target.shape[0]
        styles = [s.detach() for s in styles]
        self._setup(styles)
        named = dict(self.module.named_parameters())
        params = {k: _stack(named[k].detach(), B, k in self.transposed)
                  for k in self.names}
        m1 = {k: torch.zeros_like(v) for k, v in params.items()}  # same layouts
        m2 = {k: torch.zeros_like(v) for k, v in params.items()}

        with torch.no_grad():
            edited = self.render(params, styles, "float32")  # fixed interior target
        curves: list[list[float]] = [[] for _ in range(B)]
        steps = [0] * B
        active = list(range(B))
        t = 0
        while t < cfg.steps and active:
            if abort is not None:
                abort()
            idx = torch.tensor(active, device=target.device)
            full = len(active) == B
            p = {k: (v if full else v.index_select(0, idx)).detach()
                 .requires_grad_(True) for k, v in params.items()}
            st = [s if full else s.index_select(0, idx) for s in styles]
            img = self.render(p, st)
            sel = (lambda x: x) if full else (lambda x, i=idx: x.index_select(0, i))
            border_l = masked_loss(img, sel(target), sel(border), cfg.l1)
            content_l = masked_loss(img, sel(edited), sel(content), cfg.l1)
            bl = border_l.detach().cpu().tolist()
            keep = []
            for j, f in enumerate(active):
                curves[f].append(bl[j])
                # early stop: before this step's update (docs/reference.md "Stitching
                # tuning")
                keep.append(not (cfg.border_loss_threshold > 0
                                 and bl[j] < cfg.border_loss_threshold))
            if not any(keep):
                break
            w = torch.tensor(keep, dtype=img.dtype, device=img.device)
            loss = ((border_l + cfg.content_weight * content_l) * w).sum()
            grads = torch.autograd.grad(loss, list(p.values()))
            t += 1
            kept = [f for f, k in zip(active, keep) if k]
            with torch.no_grad():
                names = list(p)
                if len(kept) == B:  # everyone tunes: update the stacks in place
                    _adam_step([params[k] for k in names], list(grads),
                               [m1[k] for k in names], [m2[k] for k in names], t,
                               cfg.lr, self.betas, self.eps)
                else:  # some frames stopped: update the others' rows only
                    kidx = torch.tensor(kept, device=target.device)
                    sub = torch.tensor([j for j, k in enumerate(keep) if k],
                                       device=target.device)
                    rows = [[d[k].index_select(0, kidx) for k in names]
                            for d in (params, m1, m2)]
                    _adam_step(rows[0], [g.index_select(0, sub) for g in grads],
                               rows[1], rows[2], t, cfg.lr, self.betas, self.eps)
                    for d, new in zip((params, m1, m2), rows):
                        for k, v in zip(names, new):
                            d[k].index_copy_(0, kidx, v)
            for f in kept:
                steps[f] += 1
            active = kept
            if progress is not None:
                progress(t / cfg.steps)
        with torch.no_grad():  # the delivered crops: rendered in float32
            out = self.render(params, styles, "float32")
            after = masked_loss(out, target, border, cfg.l1).cpu().tolist()
        before = [c[0] if c else a for c, a in zip(curves, after)]
        return TuneResult(out, before, after, steps, curves)


def _stack(t: "torch.Tensor", n: int, transposed: bool = False) -> "torch.Tensor":
    """``n`` copies of a parameter along a new leading axis, contiguous; conv
    weights in the memory order the grouped convolutions read
    (:func:`engine.nets.ops.stored_weight`; :meth:`BatchedStitcher.views` gives the
    network its ``[n, O, I, kh, kw]`` view without a copy)."""
    from engine.nets.ops import stored_weight

    out = t.unsqueeze(0).repeat(n, *([1] * t.ndim))
    return stored_weight(out, transposed) if out.ndim == 5 else out.contiguous()


def _like(t: "torch.Tensor", p: "torch.Tensor") -> "torch.Tensor":
    """``t`` with ``p``'s strides (``t`` itself when it has them)."""
    import torch

    return t if t.stride() == p.stride() else torch.empty_like(p).copy_(t)


def _adam_step(params: list, grads: list, m1: list, m2: list, t: int, lr: float,
               betas: tuple[float, float], eps: float) -> None:
    """In-place Adam step ``t`` (1-based) over lists of tensors: the update of
    ``torch.optim.Adam`` (no weight decay, no amsgrad) through its functional form,
    fused (one kernel per tensor instead of seven passes) on the CPU and CUDA."""
    import torch
    from torch.optim.adam import adam

    from engine.stages.pti import _fused_adam_ok

    dev = params[0].device
    # The fused kernel reads every tensor as if it were laid out like its
    # parameter: a gradient in another layout gives a silently wrong update (torch
    # 2.13, CPU), so gradients are brought to the parameter's layout. The moments
    # are updated in place and must already match.
    grads = [_like(g, p) for g, p in zip(grads, params)]
    if any(m.stride() != p.stride() for ms in (m1, m2) for m, p in zip(ms, params)):
        raise ValueError("Adam moments must have their parameters' layout")
    steps = [torch.tensor(float(t - 1), device=dev if dev.type == "cuda" else "cpu")
             for _ in params]  # the functional form counts the step itself
    adam(params, grads, m1, m2, [], steps, fused=_fused_adam_ok(str(dev)),
         amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=0.0,
         eps=eps, maximize=False)


def tune_reference(G: "Generator", styles: Sequence["torch.Tensor"],
                   target: "torch.Tensor", border: "torch.Tensor",
                   content: "torch.Tensor", cfg: StitchConfig) -> TuneResult:
    """The reference's loop structure, one frame at a time: a fresh deep copy of the
    generator and its own ``torch.optim.Adam`` per frame (docs/reference.md "Stitching
    tuning"). Exact
    and slow; the batched stitcher must match it."""
    import torch

    images, before, after, steps, curves = [], [], [], [], []
    for i in range(target.shape[0]):
        st = [s[i:i + 1].detach() for s in styles]
        Gi = copy.deepcopy(G).train()
        Gi.requires_grad_(False)
        Gi.synthesis.requires_grad_(True)
        opt = torch.optim.Adam(Gi.synthesis.parameters(), lr=cfg.lr)
        with torch.no_grad():
            edited = Gi.synthesis_from_styles(st)
        curve: list[float] = []
        n = 0
        for _ in range(cfg.steps):
            img = Gi.synthesis_from_styles(st)
            bl = masked_loss(img, target[i:i + 1], border[i:i + 1], cfg.l1)
            cl = masked_loss(img, edited, content[i:i + 1], cfg.l1)
            curve.append(float(bl.detach()))
            if cfg.border_loss_threshold > 0 and curve[-1] < cfg.border_loss_threshold:
                break
            opt.zero_grad(set_to_none=True)
            (bl + cfg.content_weight * cl).sum().backward()
            opt.step()
            n += 1
        with torch.no_grad():
            out = Gi.synthesis_from_styles(st)
            a = float(masked_loss(out, target[i:i + 1], border[i:i + 1], cfg.l1))
        images.append(out[0])
        before.append(curve[0] if curve else a)
        after.append(a)
        steps.append(n)
        curves.append(curve)
    return TuneResult(torch.stack(images), before, after, steps, curves)


def load_edit_styles(G: "Generator", edit: EditFiles, rows: Sequence[int],
                     device: str) -> list["torch.Tensor"]:
    """Styles of the edited frames ``rows``: stored S-space edits when the edit stage
    wrote ``styles.npz``, else ``G.styles(latents)``."""
    import torch

    styles_path = edit.styles_path
    if styles_path.exists():
        with np.load(styles_path) as z:
            n = len(z.files)
            return [torch.from_numpy(z[f"s{i:02d}"][list(rows)]).to(device)
                    for i in range(n)]
    lat = np.load(edit.latents_path, mmap_mode="r")
    ws = torch.from_numpy(np.ascontiguousarray(lat[list(rows)])).to(device)
    with torch.no_grad():
        return [s.detach() for s in G.styles(ws)]


class StitchTuneStage(Stage):
    """Batched per-frame stitching tuning; writes tuned crops and paste alphas."""

    name = "stitch_tune"
    weight = 10.0
    split = "frames"  # shards of whole tuning batches (engine/stages/contract.py)

    def applies(self, config: Any) -> bool:
        return config.stitch.tune  # off (--no-stitch): engine.stages.render instead

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        cfg = ctx.config.stitch
        mcfg = ctx.config.mask
        dev = ctx.device
        out = ctx.stage_dir(self.name)
        files = ctx.files.stitch_tune
        parts = files.parts_dir
        parts.mkdir(exist_ok=True)
        edit = ctx.files.edit
        frames = edit.frames()
        clip = ctx.files.align.clip()
        G = ctx.files.pti.generator(dev)
        R = G.img_resolution
        # resolved once and kept for a resumed attempt (engine/stages/batching.py)
        batch, dtype = training_settings(out, "stitch", cfg.batch_size,
                                         ctx.config.dtype, R, dev, len(frames))
        cfg = replace(cfg, batch_size=batch)
        stitcher = BatchedStitcher(G, cfg, dtype)
        batches = list(chunks(range(len(frames)), cfg.batch_size))
        mine = [bi for bi in range(len(batches)) if ctx.in_shard(bi, len(batches))]
        sharded = ctx.done_by_shards(self.name, len(batches))
        t0 = time.monotonic()
        tuned = 0
        resumed = 0
        for bi, rows in enumerate(batches):
            if bi not in mine:  # another shard's batch
                continue
            part = parts / f"{bi:05d}.json"
            if part.exists():  # finished before a crash or a shutdown
                # (or by a shard, before this final unit: not a resumed batch)
                resumed += bi not in sharded
                continue
            ctx.check_abort()
            fr = [frames[i] for i in rows]
            masks = [clip.mask(f) for f in fr]
            stm = [stitch_masks(m, mcfg) for m in masks]
            border = torch.from_numpy(np.stack([s[1] for s in stm])).to(dev)
            content = torch.from_numpy(np.stack([s[2] for s in stm])).to(dev)
            target = crops_to_tensor([clip.crop(f) for f in fr], R, device=dev)
            border, content = _fit(border, R), _fit(content, R)
            styles = load_edit_styles(G, edit, rows, dev)
            def progress(f: float, bi: int = bi) -> None:
                ctx.report((mine.index(bi) + f) / len(mine),
                           f"batch {bi + 1}/{len(batches)}, "
                           f"step {round(f * cfg.steps)}/{cfg.steps}")

            res = stitcher.tune(styles, target, border, content,
                                abort=ctx.check_abort, progress=progress)
            ctx.fence()  # this batch's results are a checkpoint: ours to write?
            for j, f in enumerate(fr):
                write_png(files.crop(f), tensor_to_image(res.images[j], depth=16))
                alpha = paste_alpha(masks[j], mcfg)
                write_png(files.alpha(f),
                          np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8))
            atomic_write_bytes(part, json.dumps({
                "frames": fr, "before": res.before, "after": res.after,
                "steps": res.steps, "curves": res.curves}).encode())
            tuned += len(fr)
            ctx.report((mine.index(bi) + 1) / len(mine),
                       f"tuned {sum(len(b) for b in batches[:bi + 1])}/{len(frames)} "
                       "frames")
        seconds = time.monotonic() - t0
        if ctx.shard is not None:  # the final unit merges the parts
            return {"frames": tuned}
        if resumed:
            ctx.info["stitch_resumed_batches"] = resumed
        summary = _summarise([json.loads((parts / f"{i:05d}.json").read_text())
                              for i in range(len(batches))])
        summary.update({"steps_max": cfg.steps, "lr": cfg.lr,
                        "content_weight": cfg.content_weight,
                        "border_loss_threshold": cfg.border_loss_threshold,
                        "batch_size": cfg.batch_size, "dtype": dtype})
        atomic_write_bytes(files.summary_path, json.dumps(summary).encode())
        shutil.rmtree(parts, ignore_errors=True)
        return {"frames": len(frames), "border_before": summary["border_before"],
                "border_after": summary["border_after"],
                "mean_steps": summary["mean_steps"], "dtype": dtype,
                "frames_per_second": tuned / seconds if tuned and seconds > 0
                else None}


def _fit(mask: "torch.Tensor", size: int) -> "torch.Tensor":
    """Masks at the crop size, resized (bilinear) if the align resolution differs."""
    import torch.nn.functional as F

    if mask.shape[-1] == size:
        return mask
    return F.interpolate(mask[:, None], size=(size, size), mode="bilinear",
                         align_corners=True)[:, 0]


def _summarise(records: list[dict]) -> dict[str, Any]:
    frames, before, after, steps, curves = [], [], [], [], []
    for r in records:
        frames += r["frames"]
        before += r["before"]
        after += r["after"]
        steps += r["steps"]
        curves += r["curves"]
    longest = max((len(c) for c in curves), default=0)
    # mean border-loss curve over the frames still tuning at each step
    mean_curve = [float(np.mean([c[i] for c in curves if len(c) > i]))
                  for i in range(longest)]
    return {"frames": frames, "before": before, "after": after, "steps": steps,
            "curves": curves, "mean_curve": mean_curve,
            "border_before": float(np.mean(before)) if before else None,
            "border_after": float(np.mean(after)) if after else None,
            "mean_steps": float(np.mean(steps)) if steps else None}
