"""Pivotal Tuning (PTI, Roich et al. 2021) of one generator over all frames.

As in STIT (docs/reference.md "PTI"): the e4e pivots stay fixed and one copy of the
generator is tuned over the whole clip with ``l2_weight · MSE + lpips_weight ·
LPIPS`` (10 and 1), Adam (lr 3e-5, betas 0.9/0.999, no ramp), ``steps`` passes over
all frames (STIT's README uses 80), and the optional locality regulariser. The
reference runs batch 1 (one optimiser step per frame per pass); here frames go in
mini-batches of ``pti.batch_size`` in a seeded shuffled order, which makes a pass
several times faster (bench/pipeline.py). With B frames per step there are B times
fewer steps per pass, so the learning rate is scaled by B (``lr_batch_scaling``,
the linear scaling rule): on the tiny profile, 20 passes at batch 4 and lr 1.2e-4
reach the reconstruction of 20 batch-1 passes at 3e-5 (MSE 0.2821 vs 0.2827), while
batch 4 at 3e-5 stops at 0.4699.

Crops are read from disk batch by batch (a bounded number stays decoded in memory,
with their LPIPS features), so memory does not grow with the clip length.

Mapping gets no gradient (fixed pivots); all synthesis parameters train (convs,
biases, affines, noise strengths, the constant input, ToRGB).

``PTIStage`` writes into ``stages/pti/``:

- ``generator.pt`` + ``generator.json``: the tuned generator in our own format
  (:func:`engine.models.formats.native.save_network`; read it back with
  ``ctx.files.pti.generator()``);
- ``loss.json``: per-pass mean losses and the reconstruction error over all frames
  before (the original generator at the pivots) and after tuning;
- ``preview/<frame:07d>.png``: the tuned reconstruction of a few frames (report);
- ``checkpoint.pt``: generator + optimiser state + position, written atomically every
  ``checkpoint_every`` passes, every ``checkpoint_seconds`` and when the stage is
  stopped; the stage resumes from it and deletes it when done.

Determinism: the order of frames in pass ``p`` is a permutation seeded by
``(seed, p)`` and the regulariser's samples by ``(seed, p, batch)``, so a run resumed
from a checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from engine.devices import tensor_float32
from engine.stages.batching import resolve_batch
from engine.stages.formulation import PTI_FUSED, choose
from engine.stages.recipe import TrainingPlan, job_recipe, pti_plan
from engine.stages.contract import (Stage, StageAborted, StageContext, load_checkpoint,
                                    save_checkpoint)
from engine.stages.crops import chunks, crops_to_tensor, preview_frames, write_previews

if TYPE_CHECKING:
    import torch

    from engine.nets.stylegan2 import Generator

__all__ = ["PTIStage", "PTITuner", "reconstruction_error", "TargetCache", "autocast",
           "pti_candidates"]

log = logging.getLogger(__name__)


# --- forward helpers ----------------------------------------------------------------


def autocast(device: str, dtype: str):
    """bfloat16 autocast when ``options.dtype`` asks for it, else a no-op (``tf32``
    is float32 with TensorFloat-32 switched on around a whole step instead:
    :func:`engine.devices.tensor_float32`)."""
    import torch

    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


class TargetCache:
    """Aligned crops at the generator resolution and their LPIPS feature maps,
    read from disk on demand. Target features never change, so they are computed
    once per cached frame instead of at every step (a lever the reference leaves
    unused, docs/reference.md "Cost model"). At most ``limit`` frames, and at most
    ``budget`` bytes,
    stay in memory (the first ones asked for); the rest are re-read and recomputed,
    so memory is bounded whatever the clip length."""

    def __init__(self, clip: Any, size: int, device: str, lpips: Any, limit: int,
                 budget: int = 1 << 30) -> None:
        self.clip, self.size, self.device, self.lpips = clip, size, device, lpips
        self.limit, self.budget = limit, budget
        self.cache: dict[int, tuple["torch.Tensor", list["torch.Tensor"]]] = {}

    def _room(self, item: tuple["torch.Tensor", list["torch.Tensor"]]) -> bool:
        size = sum(t.numel() * t.element_size() for t in [item[0], *item[1]])
        return (len(self.cache) < self.limit
                and (len(self.cache) + 1) * size <= self.budget)

    def batch(self, frames: Sequence[int]
              ) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        """``(crops [B, 3, R, R] in [-1, 1], LPIPS feature maps of the crops)``."""
        import torch

        loaded = {}
        for f in frames:
            if f in self.cache:
                continue
            # One frame at a time: a frame's features must not depend on which
            # batch first asked for it (bit-identical resumes).
            x = crops_to_tensor([self.clip.crop(f)], self.size, device=self.device)
            with torch.no_grad():
                feats = self.lpips.feature_maps(x)
            item = (x[0], [t[0] for t in feats])
            loaded[f] = item
            if self._room(item):
                self.cache[f] = item
        items = [self.cache.get(f) or loaded[f] for f in frames]
        return (torch.stack([it[0] for it in items]),
                [torch.stack([it[1][k] for it in items])
                 for k in range(len(items[0][1]))])


def _lpips(lpips: Any, img: "torch.Tensor", target_feats: list["torch.Tensor"]
           ) -> "torch.Tensor":
    """LPIPS of ``img`` against cached target features, ``[B]``."""
    return lpips.distance_from_features(lpips.feature_maps(img),
                                        [t.to(img.dtype) for t in target_feats])


def reconstruction_error(G: "Generator", lpips: Any, pivots: np.ndarray,
                         frames: Sequence[int], crops: TargetCache, *, device: str,
                         batch_size: int, abort: Any = None) -> dict[str, float]:
    """Mean MSE (images in [-1, 1]), PSNR (dB, on [0, 1]) and LPIPS of ``G(pivot)``
    against the aligned crops over ``frames``, in float32 (whatever precision the
    tuning ran in: these are the figures reported)."""
    import torch

    mse_sum = lp_sum = 0.0
    with torch.no_grad():
        for rows in chunks(range(len(frames)), batch_size):
            if abort is not None:
                abort()
            ws = torch.from_numpy(pivots[list(rows)]).to(device)
            target, feats = crops.batch([frames[i] for i in rows])
            img = G.synthesis(ws)
            lp = _lpips(lpips, img, feats).reshape(-1)
            mse_sum += float((img - target).square().mean(dim=(1, 2, 3)).sum())
            lp_sum += float(lp.sum())
    n = max(len(frames), 1)
    mse = mse_sum / n
    return {"mse": mse, "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),
            "lpips": lp_sum / n}


# --- the tuning loop ----------------------------------------------------------------


class PTITuner:
    """The PTI loop, independent of job folders (the stage and the benchmark use it).

    Args:
        G0: the original generator (kept frozen; the locality regulariser's
            reference).
        lpips: the LPIPS module (``feature_maps`` / ``distance_from_features``).
        pivots: ``[N, num_ws, w_dim]`` float32.
        frames: the N frame numbers (keys of ``targets``).
        targets: a :class:`TargetCache`.
        cfg: ``PTIConfig``.
        seed: ``options.seed``; pass ``p`` visits frames in the order of a
            permutation seeded by ``(seed, p)``.

    Attributes:
        G: the generator being tuned. opt: its Adam. state: position and loss
        record (JSON-able): ``pass``, ``batch``, ``passes`` (per-pass means),
        ``acc`` (running sums of the current pass), ``before``.
    """

    def __init__(self, G0: "Generator", lpips: Any, pivots: np.ndarray,
                 frames: Sequence[int], targets: TargetCache, cfg: Any, *,
                 seed: int = 0, device: str = "cpu", dtype: str = "float32",
                 plan: "TrainingPlan | None" = None) -> None:
        import torch

        self.G0 = G0.eval().requires_grad_(False)
        self.lpips, self.pivots, self.frames = lpips, pivots, list(frames)
        self.targets, self.cfg, self.seed = targets, cfg, seed
        self.device = device
        self.G = copy.deepcopy(self.G0).train()
        self.G.synthesis.requires_grad_(True)  # mapping: no gradient (fixed pivots)
        # conv weights in their convolutions' memory order; Adam updates the
        # contiguous aliases (engine/nets/stylegan2.py)
        from engine.nets.stylegan2 import ConvOrderWeights

        self.conv_order = ConvOrderWeights(self.G.synthesis)
        if plan is None:  # the fast recipe from cfg (tests, tools)
            # 0 = auto: what the device's memory holds (engine/stages/batching.py)
            batch = max(1, resolve_batch(cfg.batch_size, "pti", G0.img_resolution,
                                         device, len(self.frames)))
            plan = TrainingPlan(
                recipe="fast", batch_size=batch, dtype=dtype,
                lr=cfg.lr * (batch if cfg.lr_batch_scaling else 1), shuffle=True,
                formulation="")  # "": the network's default per batch size
        self.plan = plan
        self.batch, self.lr, self.dtype = plan.batch_size, plan.lr, plan.dtype
        self.fused = PTI_FUSED.get(plan.formulation)
        # "loop": one batch-1 forward and backward per frame, gradients summed
        self.per_frame = plan.formulation == "loop"
        # fused: one kernel per parameter group instead of a dozen small ops per
        # tensor (about 10 % of a batch-4 step of the tiny profile on a CPU); the
        # same update as the for-loop Adam up to float rounding.
        self.opt = torch.optim.Adam(self.conv_order.optimised(
                                        self.G.synthesis.parameters()), lr=self.lr,
                                    betas=(0.9, 0.999),
                                    fused=_fused_adam_ok(self.device))
        self.n_batches = math.ceil(len(self.frames) / self.batch)
        self.state: dict[str, Any] = {"pass": 0, "batch": 0, "passes": [],
                                      "acc": None, "before": None}
        self.steps_run = 0
        self.frames_run = 0

    @property
    def total_steps(self) -> int:
        return self.cfg.steps * self.n_batches

    @property
    def done(self) -> bool:
        return self.state["pass"] >= self.cfg.steps or not self.frames

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.G.state_dict(), "optimizer": self.opt.state_dict(),
                "state": json.dumps(self.state)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.G.load_state_dict(saved["generator"])
        self.opt.load_state_dict(saved["optimizer"])
        self.conv_order.restore_moments(self.opt.state)
        self.state = json.loads(saved["state"])

    def error(self, G: "Generator", abort: Any = None) -> dict[str, float]:
        return reconstruction_error(G, self.lpips, self.pivots, self.frames,
                                    self.targets, device=self.device,
                                    batch_size=self.batch, abort=abort)

    def step(self) -> float:
        """One optimiser step on the next mini-batch; returns its loss."""
        st = self.state
        p, b = st["pass"], st["batch"]
        order = (np.random.default_rng([self.seed, p]).permutation(len(self.frames))
                 if self.plan.shuffle else np.arange(len(self.frames)))
        rows = [int(i) for i in order[b * self.batch:(b + 1) * self.batch]]
        if st["acc"] is None:
            st["acc"] = [0.0, 0.0, 0.0, 0]  # sums of loss, mse, lpips; frames
        with tensor_float32(self.device, self.dtype):  # forward and backward
            loss, mse, lp = self._step(rows, [self.seed, p, b])
        acc, k = st["acc"], len(rows)
        acc[0] += loss * k
        acc[1] += mse * k
        acc[2] += lp * k
        acc[3] += k
        st["batch"] = b + 1
        self.steps_run += 1
        self.frames_run += k
        if st["batch"] >= self.n_batches:  # end of a pass
            st["passes"].append({"loss": acc[0] / acc[3], "mse": acc[1] / acc[3],
                                 "lpips": acc[2] / acc[3]})
            st["pass"], st["batch"], st["acc"] = p + 1, 0, None
        return loss

    def _step(self, rows: list[int], seed: list[int]) -> tuple[float, float, float]:
        import torch

        cfg, G = self.cfg, self.G
        ws = torch.from_numpy(self.pivots[rows]).to(self.device)  # [B, num_ws, w_dim]
        target, feats = self.targets.batch([self.frames[i] for i in rows])
        B = len(rows)
        parts = _parts(B, self.per_frame)
        self.opt.zero_grad(set_to_none=True)
        self.conv_order.zero_grad()
        total = torch.zeros((), device=self.device)
        mses, lps = [], []
        for part in parts:
            with autocast(self.device, self.dtype):
                img = G.synthesis(ws[part], fused=self.fused,
                                  checkpointing=cfg.gradient_checkpointing).float()
                mse = (img - target[part]).square().mean(dim=(1, 2, 3))  # [b]
                lp = _lpips(self.lpips, img, [f[part] for f in feats]
                            ).float().reshape(-1)  # [b]
                # this part's share of the mean over the batch: the gradient of
                # the reference's per-frame loss
                loss = (cfg.l2_weight * mse + cfg.lpips_weight * lp).sum() / B
                if cfg.locality_reg and part is parts[-1]:
                    loss = loss + _locality_loss(G, self.G0, self.lpips, ws, cfg, seed)
            loss.backward()
            total = total + loss.detach()
            mses.append(mse.detach())
            lps.append(lp.detach())
        self.conv_order.hand_over_grads()
        self.opt.step()
        return (float(total), float(torch.cat(mses).mean()),
                float(torch.cat(lps).mean()))


def _parts(n: int, per_frame: bool) -> list[slice]:
    """How a mini-batch of ``n`` frames is run: at once, or (formulation
    ``loop``) one frame at a time with the gradients adding up, the same gradient
    of the batch's mean loss."""
    return [slice(i, i + 1) for i in range(n)] if per_frame and n > 1 \
        else [slice(None)]


def pti_candidates(G: "Generator", lpips: Any, device: str, dtype: str
                   ) -> Callable[[int], dict[str, Callable[[], None]]]:
    """For :func:`engine.stages.formulation.choose`: one whole PTI step of each
    formulation on ``n`` frames, on a copy of ``G``: synthesis, the MSE and LPIPS
    loss against a target, backward and the fused Adam step. Only the synthesis
    differs between formulations, but the loss and the optimiser step are timed
    too, since the fast recipe compares the per-frame seconds across batch sizes
    (engine/stages/recipe.py), where they do not cost the same per frame: Adam
    runs once per step whatever the batch."""
    import torch

    from engine.nets.stylegan2 import ConvOrderWeights

    def candidates(n: int) -> dict[str, Callable[[], None]]:
        Gc = copy.deepcopy(G).train().requires_grad_(False)
        Gc.synthesis.requires_grad_(True)
        order = ConvOrderWeights(Gc.synthesis)  # as PTITuner trains
        # one optimiser for all candidates, its step costs the same for each
        # (the copy's values do not matter)
        opt = torch.optim.Adam(order.optimised(Gc.synthesis.parameters()), lr=3e-5,
                               fused=_fused_adam_ok(device))
        gen = torch.Generator().manual_seed(0)
        R = G.img_resolution
        with torch.no_grad():
            ws = Gc.mapping(torch.randn(n, G.z_dim, generator=gen).to(device),
                            truncation_psi=0.7)
            target = (torch.rand(n, 3, R, R, generator=gen) * 2 - 1).to(device)
            feats = lpips.feature_maps(target)

        def step(name: str) -> None:
            opt.zero_grad(set_to_none=True)
            order.zero_grad()
            with tensor_float32(device, dtype):
                for part in _parts(n, name == "loop"):
                    with autocast(device, dtype):
                        img = Gc.synthesis(ws[part], fused=PTI_FUSED[name]).float()
                        mse = (img - target[part]).square().mean(dim=(1, 2, 3))
                        lp = _lpips(lpips, img, [f[part] for f in feats]).float()
                        loss = (mse + lp.reshape(-1)).sum() / n
                    loss.backward()
            order.hand_over_grads()
            opt.step()

        # at batch 1 "loop" is "autograd": not timed twice
        names = [k for k in PTI_FUSED if n > 1 or k != "loop"]
        return {name: (lambda k=name: step(k)) for name in names}

    return candidates


def _fused_adam_ok(device: str) -> bool:
    """Whether ``torch.optim.Adam(fused=True)`` runs on ``device`` (also asked by
    the stitcher's functional Adam, engine/stages/stitch_tune.py)."""
    import torch

    return torch.device(device).type in ("cpu", "cuda")


# --- the stage ----------------------------------------------------------------------


class PTIStage(Stage):
    """One generator tuned over all present frames, in mini-batches."""

    name = "pti"
    data_parallel = True  # over several devices: engine/stages/parallel.py
    weight = 10.0  # share of the job's progress bar

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        from engine.models.formats.native import save_network

        cfg = ctx.config.pti
        dev = ctx.device
        out = ctx.stage_dir(self.name)
        files = ctx.files.pti
        pivots = ctx.files.invert.pivots()
        frames = ctx.files.invert.frames()
        models = ctx.load_models()
        G0, lpips, tiny = models.generator, models.lpips, bool(models.info.get("tiny"))
        del models  # the encoder is not needed here: free its memory
        targets = TargetCache(ctx.files.align.clip(), G0.img_resolution, dev, lpips,
                              cfg.cache_frames)
        # resolved once and kept for a resumed attempt (engine/stages/recipe.py)
        recipe = job_recipe(ctx.config, "tiny" if tiny else "official")
        plan = pti_plan(ctx.config, recipe, resolution=G0.img_resolution,
                        device=dev, frames=len(frames), stage_dir=out,
                        choose=lambda d: choose("pti", G0, d, dev, pti_candidates(
                            G0, lpips, dev, d["dtype"])),
                        devices=ctx.parallel.world if ctx.parallel is not None else 1)
        cfg = replace(cfg, batch_size=plan.batch_size)
        tuner = PTITuner(G0, lpips, pivots, frames, targets, cfg,
                         seed=ctx.config.seed, device=dev, plan=plan)
        dtype = plan.dtype
        if ctx.parallel is not None:  # one rank of several (engine/stages/parallel.py)
            ctx.parallel.attach(tuner, {"_step": "opt"}, tuner.batch)
        ckpt_path = files.checkpoint_path
        if ckpt_path.exists():
            tuner.load_state_dict(load_checkpoint(ckpt_path))
            log.info("pti: resuming at pass %d batch %d", tuner.state["pass"],
                     tuner.state["batch"])
            ctx.info["pti_resumed_at_pass"] = tuner.state["pass"]

        def checkpoint() -> None:
            if ctx.parallel is None or ctx.parallel.writer:
                save_checkpoint(ckpt_path, tuner.state_dict(), fence=ctx.fence)

        if tuner.state["before"] is None and frames:
            ctx.report(0.0, "measuring the inversion error")
            tuner.state["before"] = tuner.error(G0, abort=ctx.check_abort)
        t_last = t0 = time.monotonic()
        try:
            while not tuner.done:
                ctx.check_abort()
                p = tuner.state["pass"]
                loss = tuner.step()
                done = tuner.state["pass"] * tuner.n_batches + tuner.state["batch"]
                ctx.report(done / max(tuner.total_steps, 1),
                           f"pass {p + 1}/{cfg.steps}, loss {loss:.4f}")
                passed = tuner.state["pass"]
                if (cfg.checkpoint_every and passed > p and not tuner.done
                        and passed % cfg.checkpoint_every == 0) or (
                        cfg.checkpoint_seconds
                        and time.monotonic() - t_last > cfg.checkpoint_seconds):
                    checkpoint()
                    t_last = time.monotonic()
        except StageAborted:
            if tuner.steps_run:  # keep the work done so far for the next attempt
                checkpoint()
            raise
        seconds = time.monotonic() - t0
        if ctx.parallel is not None and not ctx.parallel.writer:
            return {}  # rank 0 writes the outputs

        G = tuner.G.eval().requires_grad_(False)
        after = tuner.error(G, abort=ctx.check_abort) if frames else None
        save_network(G, files.generator_path, info={
            "stage": "pti", "frames": len(frames), "passes": cfg.steps, "tiny": tiny})
        show = preview_frames(frames)
        if show:
            with torch.no_grad():
                ws = torch.from_numpy(pivots[[frames.index(f) for f in show]]).to(dev)
                write_previews(files.preview_dir, show, G.synthesis(ws))
        before = tuner.state["before"]
        record = {"passes": tuner.state["passes"], "before": before, "after": after,
                  "frames": len(frames), **plan.to_dict(),
                  "l2_weight": cfg.l2_weight, "lpips_weight": cfg.lpips_weight,
                  "locality_reg": cfg.locality_reg}
        atomic_write_bytes(files.loss_path, json.dumps(record, indent=1).encode())
        ckpt_path.unlink(missing_ok=True)
        if before and after:
            log.info("pti: reconstruction MSE %.5f -> %.5f, LPIPS %.4f -> %.4f",
                     before["mse"], after["mse"], before["lpips"], after["lpips"])
        fps = tuner.frames_run / seconds if seconds > 0 and tuner.frames_run else None
        return {"frames": len(frames), "passes": cfg.steps, "batch_size": tuner.batch,
                "dtype": dtype, "recipe": plan.recipe,
                "formulation": plan.formulation, "before": before, "after": after,
                "frames_per_second": fps}


def _locality_loss(G: "Generator", G0: "Generator", lpips: Any, ws: "torch.Tensor",
                   cfg: Any, seed: list[int]) -> "torch.Tensor":
    """PTI's locality regulariser (docs/reference.md "PTI"), one sample per frame: w_r =
    pivot + α·(w_z − pivot)/‖w_z − pivot‖ with w_z = mapping(z, ψ 0.5); the tuned G
    must render w_r as the original G does (``noise_mode='none'``)."""
    import torch

    gen = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(
        2 ** 62)))
    z = torch.randn(ws.shape[0], G0.z_dim, generator=gen).to(ws.device)
    with torch.no_grad():
        w_z = G0.mapping(z, truncation_psi=0.5)
        d = w_z - ws
        w_r = ws + cfg.locality_alpha * d / d.flatten(1).norm(dim=1)[:, None, None]
        ref = G0.synthesis(w_r, noise_mode="none")
    img = G.synthesis(w_r, noise_mode="none")
    return (cfg.locality_l2 * (img - ref).square().mean()
            + cfg.locality_lpips * lpips(img, ref).mean())
