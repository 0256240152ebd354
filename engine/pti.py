"""Pivotal Tuning (PTI, Roich et al. 2021) of one generator over all frames.

As in STIT (pipeline.md §1.4): the e4e pivots stay fixed and one copy of the
generator is tuned over the whole clip with ``l2_weight · MSE + lpips_weight ·
LPIPS`` (10 and 1), Adam (lr 3e-5, betas 0.9/0.999, no ramp), ``steps`` passes over
all frames (STIT's README uses 80), and the optional locality regulariser. The
reference runs batch 1 (one optimiser step per frame per pass); here frames go in
mini-batches of ``pti.batch_size`` in a seeded shuffled order, which is what makes a
pass several times faster (bench/pipeline.py). Crops are read from disk batch by
batch (a bounded number stays decoded in memory), so memory does not grow with the
clip length.

Mapping gets no gradient (fixed pivots); all synthesis parameters train (convs,
biases, affines, noise strengths, the constant input, ToRGB).

``PTIStage`` writes into ``stages/pti/``:

- ``generator.pt`` + ``generator.json``: the tuned generator (:func:`save_generator`);
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from .invert import (aligned_clip, chunks, crops_to_tensor, read_frames_json,
                     stage_models, write_previews)
from .stage import Stage, StageAborted, StageContext, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    import torch

    from .nets.stylegan2 import Generator

__all__ = ["PTIStage", "synthesize", "save_generator", "load_generator",
           "reconstruction_error", "CropCache", "autocast"]

log = logging.getLogger(__name__)

def save_generator(path: Path, G: "Generator", **info: Any) -> None:
    """The tuned generator in our own format (state dict + constructor JSON + hash,
    ``engine.checkpoints.save_network``); no code is pickled."""
    from .checkpoints import save_network  # noqa: PLC0415

    save_network(G, path, info=info)


def load_generator(path: Path, device: str = "cpu") -> "Generator":
    """A generator written by :func:`save_generator` (eval, no gradients)."""
    from .checkpoints import load_network  # noqa: PLC0415

    return load_network(path, device=device, expect="Generator").requires_grad_(False)


# --- forward helpers --------------------------------------------------------------------


def autocast(device: str, dtype: str):
    """bfloat16 autocast when ``options.dtype`` asks for it, else a no-op."""
    import torch  # noqa: PLC0415

    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def synthesize(G: "Generator", ws: "torch.Tensor", *, noise_mode: str = "const",
               checkpointing: bool = False) -> "torch.Tensor":
    """``G.synthesis(ws)``; with ``checkpointing`` each synthesis block runs under
    ``torch.utils.checkpoint`` (activations recomputed in backward: about a third
    more compute for a fraction of the activation memory, for 6–8 GB GPUs)."""
    if not checkpointing:
        return G.synthesis(ws, noise_mode=noise_mode)
    from torch.utils.checkpoint import checkpoint  # noqa: PLC0415

    syn = G.synthesis
    styles = syn.styles(ws)
    x = img = None
    k = 0
    for r in syn.block_resolutions:  # the block loop of synthesis_from_styles
        block = getattr(syn, f"b{r}")
        n = block.num_conv + block.num_torgb
        x, img = checkpoint(block.forward_styles, x, img, styles[k:k + n],
                            ws.shape[0], noise_mode, use_reentrant=False)
        k += n
    return img


class CropCache:
    """Aligned crops as tensors at the generator resolution, read from disk on
    demand; at most ``limit`` stay decoded (the first ones asked for), so memory is
    bounded whatever the clip length."""

    def __init__(self, clip: Any, size: int, device: str, limit: int) -> None:
        self.clip, self.size, self.device, self.limit = clip, size, device, limit
        self.cache: dict[int, "torch.Tensor"] = {}

    def batch(self, frames: Sequence[int]) -> "torch.Tensor":
        import torch  # noqa: PLC0415

        missing = [f for f in frames if f not in self.cache]
        loaded = {}
        if missing:
            x = crops_to_tensor([self.clip.crop(f) for f in missing], self.size,
                                device=self.device)
            loaded = dict(zip(missing, x))
            for f in missing:
                if len(self.cache) < self.limit:
                    self.cache[f] = loaded[f]
        return torch.stack([self.cache[f] if f in self.cache else loaded[f]
                            for f in frames])


def reconstruction_error(G: "Generator", lpips: Any, pivots: np.ndarray,
                         frames: Sequence[int], crops: CropCache, *, device: str,
                         batch_size: int, dtype: str = "float32",
                         ctx: StageContext | None = None) -> dict[str, float]:
    """Mean MSE (images in [-1, 1]), PSNR (dB, on [0, 1]) and LPIPS of ``G(pivot)``
    against the aligned crops over ``frames``."""
    import torch  # noqa: PLC0415

    mse_sum = lp_sum = 0.0
    with torch.no_grad():
        for rows in chunks(range(len(frames)), batch_size):
            if ctx is not None:
                ctx.check_abort()
            ws = torch.from_numpy(pivots[list(rows)]).to(device)
            target = crops.batch([frames[i] for i in rows])
            with autocast(device, dtype):
                img = G.synthesis(ws).float()
                lp = lpips(img, target).float().reshape(-1)
            mse_sum += float((img - target).square().mean(dim=(1, 2, 3)).sum())
            lp_sum += float(lp.sum())
    n = max(len(frames), 1)
    mse = mse_sum / n
    return {"mse": mse, "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),
            "lpips": lp_sum / n}


# --- the stage --------------------------------------------------------------------------


class PTIStage(Stage):
    """One generator tuned over all present frames, in mini-batches."""

    name = "pti"
    weight = 10.0  # share of the job's progress bar

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch  # noqa: PLC0415

        from .report import preview_frames  # noqa: PLC0415

        cfg = ctx.config.pti
        seed = ctx.config.seed
        dev = ctx.device
        out = ctx.stage_dir(self.name)
        inv = ctx.job_dir / "stages" / "invert"
        pivots = np.load(inv / "pivots.npy").astype(np.float32)
        frames = read_frames_json(inv / "frames.json")
        models = stage_models(ctx)
        G0 = models.generator.eval().requires_grad_(False)
        lpips = models.lpips
        G = copy.deepcopy(G0).train()
        G.synthesis.requires_grad_(True)
        params = list(G.synthesis.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        crops = CropCache(aligned_clip(ctx), G.img_resolution, dev, cfg.cache_frames)
        batch = max(1, cfg.batch_size)
        n_batches = math.ceil(len(frames) / batch)
        total = max(cfg.steps * n_batches, 1)

        ckpt_path = out / "checkpoint.pt"
        state: dict[str, Any] = {"pass": 0, "batch": 0, "passes": [], "acc": None,
                                 "before": None}
        if ckpt_path.exists():
            saved = load_checkpoint(ckpt_path)
            G.load_state_dict(saved["generator"])
            opt.load_state_dict(saved["optimizer"])
            state = json.loads(saved["state"])
            log.info("pti: resuming at pass %d batch %d", state["pass"], state["batch"])
            ctx.info["pti_resumed_at_pass"] = state["pass"]

        def checkpoint() -> None:
            save_checkpoint(ckpt_path, {"generator": G.state_dict(),
                                        "optimizer": opt.state_dict(),
                                        "state": json.dumps(state)})

        if state["before"] is None and frames:
            ctx.report(0.0, "measuring the inversion error")
            state["before"] = reconstruction_error(
                G0, lpips, pivots, frames, crops, device=dev, batch_size=batch,
                dtype=ctx.config.dtype, ctx=ctx)
        t_last = time.monotonic()
        t0 = time.monotonic()
        steps_run = 0
        try:
            while state["pass"] < cfg.steps and frames:
                p = state["pass"]
                order = np.random.default_rng([seed, p]).permutation(len(frames))
                groups = list(chunks(order, batch))
                if state["acc"] is None:
                    state["acc"] = [0.0, 0.0, 0.0, 0]  # loss, mse, lpips, frames
                while state["batch"] < len(groups):
                    ctx.check_abort()
                    b = state["batch"]
                    rows = [int(i) for i in groups[b]]
                    loss, mse, lp = self._step(G, G0, lpips, opt, pivots, frames, rows,
                                               crops, cfg, ctx, [seed, p, b])
                    acc = state["acc"]
                    k = len(rows)
                    acc[0] += loss * k
                    acc[1] += mse * k
                    acc[2] += lp * k
                    acc[3] += k
                    state["batch"] = b + 1
                    steps_run += 1
                    done = p * n_batches + b + 1
                    ctx.report(done / total, f"pass {p + 1}/{cfg.steps}, "
                                             f"loss {loss:.4f}")
                    if (cfg.checkpoint_seconds
                            and time.monotonic() - t_last > cfg.checkpoint_seconds):
                        checkpoint()
                        t_last = time.monotonic()
                acc = state["acc"]
                state["passes"].append({"loss": acc[0] / acc[3], "mse": acc[1] / acc[3],
                                        "lpips": acc[2] / acc[3]})
                state["pass"], state["batch"], state["acc"] = p + 1, 0, None
                if cfg.checkpoint_every and (p + 1) % cfg.checkpoint_every == 0 \
                        and p + 1 < cfg.steps:
                    checkpoint()
                    t_last = time.monotonic()
        except StageAborted:
            if steps_run:  # keep the work done so far for the next attempt
                checkpoint()
            raise
        seconds = time.monotonic() - t0

        G.eval().requires_grad_(False)
        after = (reconstruction_error(G, lpips, pivots, frames, crops, device=dev,
                                      batch_size=batch, dtype=ctx.config.dtype,
                                      ctx=ctx)
                 if frames else None)
        save_generator(out / "generator.pt", G, stage="pti", frames=len(frames),
                       passes=cfg.steps, tiny=bool(models.info.get("tiny")))
        show = preview_frames(frames)
        if show:
            with torch.no_grad():
                ws = torch.from_numpy(pivots[[frames.index(f) for f in show]]).to(dev)
                write_previews(out / "preview", show, G.synthesis(ws))
        before = state["before"]
        record = {"passes": state["passes"], "before": before, "after": after,
                  "frames": len(frames), "batch_size": batch, "lr": cfg.lr,
                  "l2_weight": cfg.l2_weight, "lpips_weight": cfg.lpips_weight,
                  "locality_reg": cfg.locality_reg}
        atomic_write_bytes(out / "loss.json", json.dumps(record, indent=1).encode())
        ckpt_path.unlink(missing_ok=True)
        if before and after:
            log.info("pti: reconstruction MSE %.5f -> %.5f, LPIPS %.4f -> %.4f",
                     before["mse"], after["mse"], before["lpips"], after["lpips"])
        fps = (steps_run * batch) / seconds if seconds > 0 and steps_run else None
        return {"frames": len(frames), "passes": cfg.steps, "batch_size": batch,
                "before": before, "after": after,
                "frames_per_second": fps}

    @staticmethod
    def _step(G: "Generator", G0: "Generator", lpips: Any, opt: Any,
              pivots: np.ndarray, frames: Sequence[int], rows: list[int],
              crops: CropCache, cfg: Any, ctx: StageContext,
              seed: list[int]) -> tuple[float, float, float]:
        import torch  # noqa: PLC0415

        dev = ctx.device
        ws = torch.from_numpy(pivots[rows]).to(dev)  # [B, num_ws, w_dim]
        target = crops.batch([frames[i] for i in rows])
        with autocast(dev, ctx.config.dtype):
            img = synthesize(G, ws, checkpointing=cfg.gradient_checkpointing).float()
            mse = (img - target).square().mean(dim=(1, 2, 3))  # [B]
            lp = lpips(img, target).float().reshape(-1)  # [B]
            loss = (cfg.l2_weight * mse + cfg.lpips_weight * lp).mean()
            if cfg.locality_reg:
                loss = loss + _locality_loss(G, G0, lpips, ws, cfg, seed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss), float(mse.mean()), float(lp.mean())


def _locality_loss(G: "Generator", G0: "Generator", lpips: Any, ws: "torch.Tensor",
                   cfg: Any, seed: list[int]) -> "torch.Tensor":
    """PTI's locality regulariser (pipeline.md §1.4), one sample per frame: w_r =
    pivot + α·(w_z − pivot)/‖w_z − pivot‖ with w_z = mapping(z, ψ 0.5); the tuned G
    must render w_r as the original G does (``noise_mode='none'``)."""
    import torch  # noqa: PLC0415

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
