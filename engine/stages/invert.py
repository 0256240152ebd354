"""e4e inversion of the aligned crops to W+ pivots (pipeline.md §1.2).

The reference inverts one frame at a time; here frames go through the encoder in
batches of ``invert.batch_size``, read from disk batch by batch (nothing grows with
the clip but the pivots themselves, ``[N, num_ws, w_dim]`` floats).

``InvertStage`` writes into ``stages/invert/``:

- ``pivots.npy``: float32 ``[N, num_ws, w_dim]``, one row per frame with a face;
- ``frames.json``: ``{"frames": [...]}`` the source frame index of each row (the
  ``align`` stage's frames with crops, in order);
- ``preview/<frame:07d>.png``: the inversion ``G(pivot)`` of a few frames for the
  report (:func:`engine.stages.report.preview_frames`);
- ``parts/<row:07d>.npy``: the resumable checkpoint, one file per finished batch,
  removed when the stage completes.

The helpers here (model loading, crops <-> tensors) are shared by the other STIT
stages (``pti``, ``edit``, ``stitch_tune``).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from engine.stages.contract import Stage, StageContext

if TYPE_CHECKING:
    import torch

    from engine.stages.align import AlignedClip
    from engine.models.modelset import ModelSet

__all__ = ["InvertStage", "stage_models", "aligned_clip", "crops_to_tensor",
           "tensor_to_image", "write_png", "save_npy", "chunks", "read_frames_json",
           "write_previews"]

log = logging.getLogger(__name__)


# --- helpers shared by the STIT stages ---------------------------------------------


def stage_models(ctx: StageContext) -> "ModelSet":
    """The job's model set on the job's device; records what was used in the
    result (``Result/1.models``) and warns loudly for the tiny profile."""
    from engine.models.modelset import load_models  # noqa: PLC0415

    models = load_models(ctx.config.profile, device=ctx.device)
    ctx.info["models"] = dict(models.info)  # the runner stores it msgpack-safe
    if models.profile == "tiny" or models.info.get("tiny"):
        ctx.warn("tiny test networks — not a real edit: the official models are not "
                 "installed (facestitch models install), so this job ran on small "
                 "randomly initialised networks.")
    return models


def aligned_clip(ctx: StageContext) -> "AlignedClip":
    from engine.stages.align import AlignedClip  # noqa: PLC0415

    return AlignedClip(ctx.job_dir / "stages" / "align")


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, int(size))
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def crops_to_tensor(images: Sequence[np.ndarray], size: int | None = None, *,
                    device: str | "torch.device" = "cpu") -> "torch.Tensor":
    """HxWx3 uint8/uint16 RGB images -> ``[N, 3, size, size]`` float32 in [-1, 1]
    (bilinear with antialiasing when resized, pipeline.md §1.2)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    arr = np.stack([np.asarray(im)[..., :3] for im in images])
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    x = torch.from_numpy(arr.astype(np.float32)).to(device).permute(0, 3, 1, 2)
    x = x * (2.0 / scale) - 1.0
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x.contiguous()


def tensor_to_image(x: "torch.Tensor", depth: int = 8) -> np.ndarray:
    """``[3, R, R]`` in [-1, 1] -> RxRx3 uint8 (depth 8) or uint16 (depth 16)."""
    top = 65535.0 if depth == 16 else 255.0
    a = ((x.detach().float().clamp(-1, 1) + 1) * (top / 2)).round()
    a = a.permute(1, 2, 0).cpu().numpy()
    return a.astype(np.uint16 if depth == 16 else np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    """Atomically write an RGB or grey PNG (8 or 16 bit)."""
    from engine.media.video import encode_png  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_png(img))


def save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_frames_json(path: Path) -> list[int]:
    return [int(f) for f in json.loads(path.read_text())["frames"]]


def write_previews(folder: Path, frames: Sequence[int], images: "torch.Tensor") -> None:
    """Write ``[K, 3, R, R]`` images as ``folder/<frame:07d>.png`` (8-bit)."""
    from engine.stages.align import crop_name  # noqa: PLC0415

    for f, img in zip(frames, images):
        write_png(folder / crop_name(f), tensor_to_image(img))


# --- the stage ----------------------------------------------------------------------


class InvertStage(Stage):
    """Aligned crops -> e4e W+ pivots, batched."""

    name = "invert"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch  # noqa: PLC0415

        from engine.stages.edit import check_edits  # noqa: PLC0415
        from engine.stages.report import preview_frames  # noqa: PLC0415

        cfg = ctx.config.invert
        clip = aligned_clip(ctx)
        frames = clip.frames
        out = ctx.stage_dir(self.name)
        parts = out / "parts"
        parts.mkdir(exist_ok=True)
        models = stage_models(ctx)
        # Fail fast (edit.unknown) before any tuning, not after PTI.
        check_edits(ctx.job.edits, models.directions)
        enc, gen = models.encoder, models.generator
        res = int(models.encoder_resolution)
        done = 0
        with torch.no_grad():
            for rows in chunks(range(len(frames)), cfg.batch_size):
                ctx.check_abort()
                part = parts / f"{rows[0]:07d}.npy"
                if not part.exists():
                    x = crops_to_tensor([clip.crop(frames[i]) for i in rows], res,
                                        device=ctx.device)
                    ws = enc(x).float()  # [B, num_ws, w_dim]
                    save_npy(part, ws.cpu().numpy().astype(np.float32))
                done += len(rows)
                ctx.report(done / max(len(frames), 1), f"inverted {done} frames")
            pivots = (np.concatenate([np.load(parts / f"{r[0]:07d}.npy")
                                      for r in chunks(range(len(frames)),
                                                      cfg.batch_size)])
                      if frames else
                      np.zeros((0, gen.num_ws, gen.w_dim), np.float32))
            show = preview_frames(frames)
            if show:
                idx = [frames.index(f) for f in show]
                ws = torch.from_numpy(pivots[idx]).to(ctx.device)
                write_previews(out / "preview", show, gen.synthesis(ws))
        save_npy(out / "pivots.npy", pivots)
        atomic_write_bytes(out / "frames.json",
                           json.dumps({"frames": frames}).encode())
        shutil.rmtree(parts, ignore_errors=True)
        return {"frames": len(frames), "encoder_resolution": res,
                "batch_size": cfg.batch_size}
