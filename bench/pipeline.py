"""Training speed at the real size: our PTI and stitching loops, per recipe and
precision, against a re-creation of the reference's loops in the same run.

What runs (docs/pipeline.md "Speed"):

1. **Inputs.** ``--arch official`` (the headline): random weights of the official
   architecture (z/w 512, 8 mapping layers, channel base 32768, max 512) at the
   generator resolution ``--size`` (256 fits a 2-core CPU; 1024 is the official
   size), the astronaut's face as the target crops, an oval face mask, W-space
   edits; speed does not depend on the weights. ``--arch tiny``: the pipeline runs
   stage by stage on a 12-frame astronaut clip with the tiny profile (seconds and
   frames/s per stage), and its pivots, crops, masks and edits are used.
2. **PTI, side by side:** the re-creation of the reference's loop (docs/reference.md
   "PTI": batch 1, frames in order, one ``torch.optim.Adam`` step per frame per
   pass, LPIPS of both images each step, float32) against
   :class:`engine.stages.pti.PTITuner` under each recipe (engine/stages/recipe.py)
   in each precision, same pivots, crops, generator, LPIPS and number of passes.
3. **Stitching tuning, side by side:** the reference's loop
   (:func:`engine.stages.stitch_tune.tune_reference`: a deep copy and a torch Adam
   per frame, rendering from w so that the affines train) against
   :class:`engine.stages.stitch_tune.BatchedStitcher` per recipe and precision.
4. **Temporal refinement, side by side** (``--arch tiny``): our loop
   (:class:`engine.stages.refine.RefineTuner`: many (anchor, frame) pairs per step,
   cached source features, masks at the working size) against a re-creation of
   VideoEditGAN's (docs/reference.md "VideoEditGAN flow-based refinement": one pair
   per step, masks from LPIPS at the full resolution every step), same latents,
   crops, networks, flow (DIS) and ``--refine-epochs``; frames (pairs) per minute
   per phase.

Each of our rows uses the formulation recorded for this device, precision and
architecture (engine/stages/formulation.py; measured first if there is none; the
record lives in ``$FACESTITCH_HOME``) unless ``--pti-formulation`` /
``--stitch-formulation`` name one. The loops run in turn (re-creation first) for
``--rounds`` rounds after a short warm-up of each; printed are median
frame-updates per second and, as the ratio, the median over rounds of the
re-creation's seconds over ours in the same round (with the range over rounds), so
a drift in a shared machine's speed does not decide them. A frame-update is one
frame's share of one optimiser step (PTI: frames x passes; stitching: frames x
steps).

**Throughput.** Each row also prints its achieved TFLOP/s (the reference step's
FLOPs per frame-update, counted by torch's FLOP counter, times the row's rate: every
row is credited with the same useful work, so a row that computes less cannot look
faster) and the frames per minute a job's stage would process at the default 80
PTI passes and 100 stitching steps (stitching's per-frame renders are timed apart
in one more run of each loop at 0 steps, so that they weigh once per frame); the
header gives the generator's GMAC per forward (74.3 at 1024 px), and the end the
minutes a 300-frame shot would take in PTI and stitching at these rates.

**Same arithmetic or labelled.** Beside each row are the losses it reached after
the same frame-updates: PTI's reconstruction MSE and LPIPS over all frames (float32)
and stitching's mean border loss after tuning. A row that computes what the
re-creation computes (the reference recipe in float32) must reach the same losses
within ``--tolerance`` (relative, default 1e-3): otherwise the benchmark prints
``FAIL`` with both figures and exits with status 1. Rows that differ by design
(bfloat16; tf32, which ``--dtypes auto`` adds on a GPU that computes it; the fast
recipe's mini-batches) are labelled so and not checked.

**Against the reference code itself** (``--reference-code DIR``, a checkout of
``rotemtzaban/STIT``; bench/reference_code.py): STIT's own networks, LPIPS
package, losses and stitching function run as one more loop in the same rounds
(row ``STIT code``), on the same weights; each row then also prints its ratio
against it, and the STIT row is checked against the re-creation like a
same-arithmetic row.

``--fidelity`` instead runs the whole pipeline on a real clip with the official
weights once per recipe (and, on a GPU that computes TensorFloat-32, once more for
the reference recipe in tf32), and prints reconstruction MSE and LPIPS, identity
similarity and stitching border loss of each against the reference recipe in
float32 (the comparison that decides the defaults, docs/pipeline.md "Recipes").

    python bench/pipeline.py --arch official --size 256             # headline
    python bench/pipeline.py --arch official --size 1024 --frames 2 --pti-passes 1
    python bench/pipeline.py --arch official --device cuda --size 1024
    python bench/pipeline.py --arch tiny --quick                    # tiny profile
    python bench/pipeline.py --arch tiny --refine-epochs 10,3       # README's epochs
    python bench/pipeline.py --fidelity --frames 24                 # official weights

**Drafts** (``--draft``, docs/pipeline.md "Drafts"): a 5-frame x 5-strength draft
(``age=-8:8:5`` on 5 frames of a 48-frame astronaut clip):

1. through a real ``facestitch engine`` process on the tiny profile: the job is
   queued, the engine started, and the clock stops when the result is published
   (*cold*: engine start, imports, network loading included); then a second draft
   to the same running engine (*warm*: networks from the worker's cache);
2. at the official size (1024 px generator, e4e at 256, a 1920x1080 clip) in this
   process, with random weights seeded into the model cache (speed does not depend
   on the weights), on ``--device`` when it is a GPU, or anywhere with
   ``--official``: a first and a second draft.

    python bench/pipeline.py --draft                       # tiny, CPU: ~20 s
    python bench/pipeline.py --draft --device cuda         # + official size, GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from engine.devices import check_dtype, exact_float32, tf32_capable  # noqa: E402
from engine.nets import epilogue  # noqa: E402
from engine.stages.batching import resolve_batch  # noqa: E402
from engine.nets.ops import reference_ops  # noqa: E402
from engine.stages.compute import keep_freed_memory, reserve_heap  # noqa: E402
from engine.stages.formulation import choose  # noqa: E402
from engine.stages.pti import (PTITuner, TargetCache, pti_candidates,  # noqa: E402
                               reconstruction_error)
from engine.stages.recipe import BATCHING_GAIN, pti_plan, stitch_plan  # noqa: E402
from engine.stages.stitch_tune import (BatchedStitcher, EditLatents,  # noqa: E402
                                       masked_loss, stitch_candidates,
                                       tune_reference)
from fsexchange.errors import PrecisionUnsupported  # noqa: E402
from fsexchange.options import DTYPES, PipelineConfig  # noqa: E402

import reference_code  # noqa: E402  (bench/reference_code.py)

#: default relative tolerance on the losses of a same-arithmetic row
TOLERANCE = 1e-3


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


class _ConvMacs(TorchDispatchMode):
    """Multiply-accumulates of every convolution dispatched inside, split into the
    FIR filters of the resampling (depthwise, one input channel per group) and the
    rest (the modulated convolutions and ToRGB)."""

    def __init__(self) -> None:
        super().__init__()
        self.fir = self.other = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.convolution:
            w = args[1]  # [O, I/groups, kh, kw]; transposed: [I, O/groups, kh, kw]
            transposed = args[6]
            # each output element reads I/groups x kh x kw inputs; transposed,
            # each input element meets O/groups x kh x kw outputs
            macs = (args[0] if transposed else out).numel() * w[0].numel()
            if w.shape[1] == 1 and not transposed:
                self.fir += macs
            else:
                self.other += macs
        return out


def generator_macs(size: int) -> dict[str, float]:
    """GMAC of one forward of the official synthesis network at ``size`` px, one
    frame: ``convolutions`` (the modulated convolutions and ToRGB: 74.3 at 1024
    px, the figure the architecture is usually quoted by) and ``fir`` (the FIR
    filters of the up-sampling, which torch's FLOP counter adds: 1.1 at 1024 px).
    Counted from shapes on the meta device, with the reference's operations."""
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

    with torch.device("meta"):
        G = Generator(**dict(OFFICIAL_GENERATOR_KWARGS, img_resolution=size))
        ws = torch.zeros(1, G.num_ws, G.w_dim)
    with torch.no_grad(), reference_ops(), _ConvMacs() as m:
        G.synthesis(ws)
    return {"convolutions": m.other / 1e9, "fir": m.fir / 1e9}


class _ClockedConv(torch.autograd.Function):
    """One convolution (``conv2d`` or ``conv_transpose2d``) whose forward and
    backward add their seconds to ``clock.seconds``. Inputs arrive already in the
    autocast dtype (see :class:`timed_convolutions`). ``generate_vmap_rule``: the
    stitcher's ``vmap`` formulation calls it under ``torch.func.vmap``, where the
    clocked call is the batched convolution itself."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                stride: list[int], padding: list[int], groups: int,
                transposed: bool, clock: "timed_convolutions") -> torch.Tensor:
        import engine.nets.ops as ops

        if transposed and b is None and padding == [0, 0] and stride[0] == stride[1] \
                and ops.own_operations():
            # ours: the strided convolution's input gradient (ops._TransposedConv)
            def conv(x: Any, w: Any, b: Any, stride: list[int], padding: list[int],
                     groups: int) -> torch.Tensor:
                return ops._TransposedConv.forward(x, w, stride[0], groups)
        else:
            conv = torch.nn.functional.conv_transpose2d if transposed else \
                torch.nn.functional.conv2d
        y, sec = _timed(lambda: conv(x, w, b, stride=stride, padding=padding,
                                     groups=groups), x.device.type)
        clock.seconds += sec
        return y

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, w, b, stride, padding, groups, transposed, clock = inputs
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, groups, transposed, clock,
                    None if b is None else [b.shape[0]])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        x, w = ctx.saved_tensors
        stride, padding, groups, transposed, clock, bias_sizes = ctx.conf
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bias_sizes is not None and ctx.needs_input_grad[2]]
        (gx, gw, gb), sec = _timed(lambda: torch.ops.aten.convolution_backward(
            g, x, w, bias_sizes, stride, padding, [1, 1], transposed, [0, 0], groups,
            need), x.device.type)
        clock.seconds += sec
        return gx, gw, gb, None, None, None, None, None


def _pair(v: int | tuple[int, ...] | list[int]) -> list[int]:
    return [int(v)] * 2 if isinstance(v, int) else [int(a) for a in v]


class timed_convolutions:
    """Context: every convolution of the generator's layers (``engine.nets.ops``'s
    ``conv2d`` / ``conv_transpose2d`` calls: modulated convs, ToRGB, FIR filters)
    goes through :class:`_ClockedConv`, so ``self.seconds`` is the time spent in
    convolutions, forward and backward, measured inside the loop (a profiler's own
    per-op cost would inflate it). The rest of a step's time is what batching and
    fusion can still remove; this bounds the ratio any loop structure can reach."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def _conv(self, transposed: bool) -> Callable[..., torch.Tensor]:
        def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                 stride: Any = 1, padding: Any = 0, *rest: Any,
                 groups: int = 1, **kw: Any) -> torch.Tensor:
            if rest or kw.get("dilation", 1) != 1 or kw.get("output_padding", 0):
                raise ValueError("timed_convolutions: unsupported convolution args")
            dev = x.device.type
            if torch.is_autocast_enabled(dev):  # convolutions run in autocast dtype
                dt = torch.get_autocast_dtype(dev)
                x, w = x.to(dt), w.to(dt)
                b = None if b is None else b.to(dt)
            with torch.autocast(dev, enabled=False):
                return _ClockedConv.apply(x, w, b, _pair(stride), _pair(padding),
                                          groups, transposed, self)
        return conv

    def __enter__(self) -> "timed_convolutions":
        import types

        import engine.nets.ops as ops

        # ops calls F.conv2d / F.conv_transpose2d through its module attribute F,
        # and its up-sampling convolutions through conv_transpose
        self._ops, self._F, self._ct = ops, ops.F, ops.conv_transpose
        shim = types.SimpleNamespace(**{k: getattr(ops.F, k) for k in dir(ops.F)
                                        if not k.startswith("__")})
        shim.conv2d, shim.conv_transpose2d = self._conv(False), self._conv(True)
        ops.F = shim
        ops.conv_transpose = lambda x, w, stride, groups=1: self._conv(True)(
            x, w, None, stride, 0, groups=groups)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ops.F, self._ops.conv_transpose = self._F, self._ct


# --- the reference's loops ---------------------------------------------------------


def reference_pti(G0: Any, lpips: Any, pivots: np.ndarray, targets: torch.Tensor,
                  passes: int, cfg: Any, device: str) -> Any:
    """The re-creation of STIT's PTI loop (docs/reference.md "PTI"): one in-order
    pass over all frames per step, batch 1, one ``torch.optim.Adam`` (its default
    for-loop form on a CPU) step per frame, LPIPS of both images every step,
    float32. It runs on our network code, with the batch-1 formulation pinned
    (per-sample modulated weights through plain autograd ops, ``fused=True``) and
    the reference's own operations where ours differ only in speed
    (``reference_ops``: ``conv_transpose2d`` for the up-sampling convolutions), so
    that changes to our formulations never move the yardstick."""
    G = copy.deepcopy(G0).train()
    G.synthesis.requires_grad_(True)
    opt = torch.optim.Adam(G.synthesis.parameters(), lr=cfg.lr)
    ws = torch.from_numpy(pivots).to(device)
    for _ in range(passes):
        for i in range(len(pivots)):
            with reference_ops():  # the reference's own convolutions
                img = G.synthesis(ws[i:i + 1], fused=True)
            x = targets[i:i + 1]
            loss = (cfg.l2_weight * (img - x).square().mean()
                    + cfg.lpips_weight * lpips(img, x).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return G


class _ArrayClip:
    """``crop(frame)`` over in-memory crops (uint8 HxWx3), for TargetCache."""

    def __init__(self, crops: list[np.ndarray]) -> None:
        self.crops = crops

    def crop(self, frame: int) -> np.ndarray:
        return self.crops[frame]


# --- inputs ------------------------------------------------------------------------


def run_stages(work: Path, frames: int, options: dict[str, Any], device: str,
               clip_path: Path | None = None, name: str = "job"
               ) -> tuple[Path, list[dict[str, Any]]]:
    """The ``stitch`` pipeline up to paste-back on the astronaut clip (or
    ``clip_path``), in a job folder, through the engine's own pipeline loop;
    per-stage timings."""
    from engine.media.samples import RATE, astronaut_clip
    from engine.stages.contract import StageContext
    from engine.stages.pipeline import run_pipeline, stages_for
    from fsexchange.client import build_job
    from fsexchange.documents import Edit, FrameRange, Source

    if clip_path is None:
        clip_path, rate = astronaut_clip(work / "clip.mp4", frames), RATE
    else:
        from fsexchange.media import probe

        rate = probe(clip_path).rate
    job = build_job(job_id=name, source=Source(str(clip_path)),
                    range=FrameRange(0, frames, rate), edits=(Edit("age", -4.0),),
                    options=options, host={"app": "bench/pipeline.py"})
    jd = work / name
    jd.mkdir()
    ctx = StageContext(job=job, job_dir=jd, config=PipelineConfig.from_options(
        options), device=device, media_roots=(work, clip_path.parent))
    done = run_pipeline(stages_for("stitch", until="paste"), ctx)
    rows = [{"stage": doc.stage, "seconds": doc.seconds,
             "frames_per_second": frames / doc.seconds if doc.seconds else None,
             "loop_frames_per_second": doc.facts.get("frames_per_second")}
            for doc, _ in done]
    return jd, rows


def real_inputs(jd: Path, profile: str, device: str) -> dict[str, Any]:
    """Pivots, crops, masks, generators and edits from a finished job."""
    from engine.models.modelset import load_models
    from engine.stages.crops import crops_to_tensor
    from engine.stages.mask import stitch_masks
    from engine.stages.outputs import JobFiles
    from engine.stages.stitch_tune import load_edit_inputs

    files = JobFiles(jd)
    models = load_models(profile, device=device)
    clip = files.align.clip()
    frames = files.invert.frames()
    pivots = files.invert.pivots()
    crops = [clip.crop(f) for f in frames]
    masks = [stitch_masks(clip.mask(f)) for f in frames]
    G_pti = files.pti.generator(device)
    edits = load_edit_inputs(G_pti, files.edit, range(len(frames)), device)
    R = models.generator.img_resolution
    return {"G0": models.generator, "lpips": models.lpips, "pivots": pivots,
            "edit_latents": np.load(files.edit.latents_path).astype(np.float32),
            "crops": crops, "targets": crops_to_tensor(crops, R, device=device),
            "border": torch.from_numpy(np.stack([m[1] for m in masks])).to(device),
            "content": torch.from_numpy(np.stack([m[2] for m in masks])).to(device),
            "G_pti": G_pti, "edits": edits, "arch": f"{profile} profile"}


def official_inputs(frames: int, size: int, device: str, seed: int = 0
                    ) -> dict[str, Any]:
    """Random weights of the official architecture at generator resolution
    ``size`` (and LPIPS-alex with a random backbone), the astronaut's face as the
    target crops (a few pixels' drift from frame to frame), an oval face mask and a
    W-space edit of strength 4 along a random unit direction."""
    import cv2

    from engine.media.samples import FACE_CENTRES, face_image
    from engine.nets.lpips import LPIPS
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator
    from engine.stages.crops import crops_to_tensor
    from engine.stages.mask import stitch_masks

    torch.manual_seed(seed)
    G = Generator(**dict(OFFICIAL_GENERATOR_KWARGS, img_resolution=size)).to(
        device).eval().requires_grad_(False)
    lp = LPIPS("alex", backbone="random", heads="uniform", seed=seed).to(device)
    img = face_image("astronaut")
    cx, cy = FACE_CENTRES["astronaut"]
    crops = []
    for t in range(frames):  # a 200 px square around the face, drifting
        x0, y0 = int(cx - 100 + 3 * math.sin(t)), int(cy - 90 + 2 * math.cos(t))
        crops.append(cv2.resize(img[y0:y0 + 200, x0:x0 + 200], (size, size),
                                interpolation=cv2.INTER_AREA))
    with torch.no_grad():
        ws = G.mapping(torch.randn(frames, G.z_dim, device=device),
                       truncation_psi=0.7)
        d = torch.randn(G.w_dim, device=device)
        edits = EditLatents(ws=ws + 2.0 * d / d.norm())  # STIT units: strength 4
    R = size
    yy, xx = np.mgrid[:R, :R]
    face = ((xx - R / 2) ** 2 / (0.3 * R) ** 2
            + (yy - R / 2) ** 2 / (0.38 * R) ** 2) < 1  # an oval "face" mask
    _, border, content = stitch_masks(face)
    with torch.no_grad():
        edit = 0.3 * torch.randn(1, G.num_ws, G.w_dim, device=device)  # "direction"
    return {"G0": G, "lpips": lp, "pivots": ws.cpu().numpy().astype(np.float32),
            "edit_latents": (ws + edit).cpu().numpy().astype(np.float32),
            "crops": crops, "targets": crops_to_tensor(crops, R, device=device),
            "border": torch.from_numpy(np.stack([border] * frames)).to(device),
            "content": torch.from_numpy(np.stack([content] * frames)).to(device),
            "G_pti": G, "edits": edits,
            "arch": f"official architecture at {size} px, random weights"}


# --- side by side ------------------------------------------------------------------


def _rounds(fns: dict[str, Callable[[], Any]], warm: dict[str, Callable[[], Any]],
            rounds: int, device: str) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Warm each up, then ``rounds`` rounds of every loop in turn (dict order, the
    re-creation ``ref`` first). Returns the last result and all seconds of each."""
    for fn in warm.values():
        fn()
    secs: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, Any] = {}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            last[name], t = _timed(fn, device)
            secs[name].append(t)
    return last, secs


def _recipe_rounds(ref: Callable[..., Any], ours: Callable[..., Any],
                   plans: dict[tuple[str, str], Any], n: int, rounds: int,
                   device: str, code: Callable[..., Any] | None = None
                   ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any],
                              dict[str, list[float]]]:
    """The re-creation ``ref(frames, steps)``, the reference code ``code(frames,
    steps)`` when given (named ``code``), and ``ours(key, frames, steps)`` for
    every (recipe, dtype) plan, named ``recipe/dtype``, each warmed up on one step
    of as many frames as one of its batches, then timed by :func:`_rounds`.
    Returns the loops, their last results and their seconds."""
    fns: dict[str, Callable[[], Any]] = {"ref": ref}
    warm: dict[str, Callable[[], Any]] = {"ref": lambda: ref(1, 1)}
    if code is not None:
        fns["code"], warm["code"] = code, lambda: code(1, 1)
    for key in plans:
        name = "/".join(key)
        fns[name] = lambda key=key: ours(key)
        warm[name] = lambda key=key: ours(key, min(n, plans[key].batch_size), 1)
    return (fns, *_rounds(fns, warm, rounds, device))


#: the row of the reference code itself (``--reference-code``)
CODE_ROW = "STIT code"


def _without_code(fns: dict[str, Callable[[], Any]]) -> dict[str, Callable[[], Any]]:
    """The loops but the reference code's (the convolution clock and the loss
    readers know our networks only)."""
    return {k: v for k, v in fns.items() if k != "code"}


def _timing(secs: dict[str, list[float]], work: int) -> dict[str, dict[str, Any]]:
    """Per loop: median seconds, median frame-updates/s, and the median (and range)
    over rounds of the re-creation's seconds over the loop's in the same round;
    with the reference code timed (``code``), the same against it
    (``code_ratio``)."""
    out = {}
    for k, v in secs.items():
        r = [a / b for a, b in zip(secs["ref"], v)]
        out[k] = {"seconds": v, "median_seconds": float(np.median(v)),
                  "updates_per_second": work / float(np.median(v)),
                  "ratio": float(np.median(r)), "ratio_min": float(min(r)),
                  "ratio_max": float(max(r))}
        if "code" in secs:
            c = [a / b for a, b in zip(secs["code"], v)]
            out[k].update(code_ratio=float(np.median(c)),
                          code_ratio_min=float(min(c)), code_ratio_max=float(max(c)))
    return out


def _throughput(fig: dict[str, Any], updates_per_frame: int,
                fixed: dict[str, float] | None = None) -> None:
    """Adds to each row its achieved TFLOP/s (the reference step's FLOPs per
    frame-update, so every row is credited with the same useful work) and the
    frames per minute a job's stage would process at ``updates_per_frame`` (the
    default PTI passes or stitching steps). ``fixed``: per row (its ``loop``), the
    seconds a frame costs besides its updates (stitching's renders), measured
    apart, so that the projection weighs them once per frame and not once per
    benchmark step."""
    fig["job_updates_per_frame"] = updates_per_frame
    per_frame = fig["work"] // fig["frames"]  # the benchmark's updates per frame
    for row in fig["rows"]:
        ups = row["updates_per_second"]
        row["tflops"] = fig["flops_per_update"] * ups / 1e12
        frame = row["median_seconds"] / fig["frames"]
        if fixed is not None and row["loop"] in fixed:
            f = min(fixed[row["loop"]], frame)
            row["frame_fixed_seconds"] = f
            row["update_seconds"] = (frame - f) / per_frame
            job = f + updates_per_frame * row["update_seconds"]
        else:
            job = updates_per_frame / ups
        row["job_frames_per_minute"] = 60.0 / job


def shot_minutes(out: dict[str, Any], frames: int = 300) -> dict[str, dict[str, float]]:
    """Per row name present in both parts: minutes of PTI and of stitching for a
    ``frames``-frame shot at the rows' measured rates and a job's settings
    (stitching at its full step count; early stops only shorten it)."""
    rows = {part: {r["loop"]: r for r in out[part]["rows"]}
            for part in ("pti", "stitch") if part in out}
    if len(rows) < 2:
        return {}
    return {name: {"pti": frames / r["job_frames_per_minute"],
                   "stitch": frames / rows["stitch"][name]["job_frames_per_minute"]}
            for name, r in rows["pti"].items() if name in rows["stitch"]}


def bench_dtypes(spec: str, device: str) -> list[str]:
    """``--dtypes``: ``auto`` is float32 and bfloat16, and tf32 where ``device``
    computes it (a labelled row: it differs from float32 by design)."""
    if spec == "auto":
        return ["float32", "bfloat16"] + (["tf32"] if tf32_capable(device) else [])
    dtypes = spec.split(",")
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"bench/pipeline.py: --dtypes: {d!r} is not one of "
                             f"{', '.join(DTYPES)}")
        try:
            check_dtype(d, device)
        except PrecisionUnsupported as exc:
            raise SystemExit(f"bench/pipeline.py: --dtypes: {exc.message}") from None
    return dtypes


def _variants(recipes: list[str], dtypes: list[str]) -> list[tuple[str, str]]:
    return [(r, d) for r in recipes for d in dtypes]


def _label(part: str, recipe: str, dtype: str, plan: Any) -> str:
    """'' for a row that computes what the re-creation computes, else why not
    (stitching's recipes differ in precision only: every frame keeps its copy)."""
    why = []
    if part == "stitch":
        pass
    elif recipe == "fast" and plan.batch_size > 1:
        why.append(f"mini-batches of {plan.batch_size}, lr x{plan.batch_size}, "
                   "shuffled")
    elif recipe == "fast":
        why.append("shuffled")
    if dtype != "float32":
        why.append(dtype)
    return "differs by design: " + ", ".join(why) if why else ""


def bench_pti(inp: dict[str, Any], cfg: PipelineConfig, passes: int, device: str,
              variants: list[tuple[str, str]], rounds: int,
              formulation: str | None, conv_time: bool = False,
              code: Any = None) -> dict[str, Any]:
    """PTI side by side; ``code``: STIT's modules (bench/reference_code.py), whose
    own loop then runs in the same rounds."""
    n = len(inp["pivots"])
    G0, lp = inp["G0"], inp["lpips"]
    pcfg = replace(cfg.pti, steps=passes)
    plans = {}
    for recipe, dt in variants:
        c = replace(cfg, dtype=dt, pti=replace(pcfg, formulation=formulation
                                               or pcfg.formulation))
        plans[(recipe, dt)] = pti_plan(
            c, recipe, resolution=G0.img_resolution, device=device, frames=n,
            choose=lambda d: choose("pti", G0, d, device,
                                    pti_candidates(G0, lp, device, d["dtype"])))

    def ours(key: tuple[str, str], frames: int = n, steps: int = passes) -> PTITuner:
        targets = TargetCache(_ArrayClip(inp["crops"][:frames]), G0.img_resolution,
                              device, lp, limit=pcfg.cache_frames)
        plan = plans[key]
        plan = replace(plan, batch_size=min(plan.batch_size, frames))
        tuner = PTITuner(G0, lp, inp["pivots"][:frames], range(frames), targets,
                         replace(pcfg, steps=steps), device=device, plan=plan)
        while not tuner.done:
            tuner.step()
        return tuner

    def ref(frames: int = n, steps: int = passes) -> Any:
        return reference_pti(G0, lp, inp["pivots"][:frames], inp["targets"][:frames],
                             steps, pcfg, device)

    stit = None
    if code is not None:
        R0 = reference_code.generator(code, G0, device)
        lp_code = reference_code.lpips_net(code, lp, device)

        def stit(frames: int = n, steps: int = passes) -> Any:
            return reference_code.pti(code, R0, lp_code, inp["pivots"][:frames],
                                      inp["targets"][:frames], steps, pcfg, device)

    fns, last, secs = _recipe_rounds(ref, ours, plans, n, rounds, device, stit)
    work = n * passes
    timing = _timing(secs, work)
    cache = TargetCache(_ArrayClip(inp["crops"]), G0.img_resolution, device, lp,
                        limit=n)

    def err(G: Any) -> dict[str, float]:
        return reconstruction_error(G, lp, inp["pivots"], range(n), cache,
                                    device=device, batch_size=1)

    G = copy.deepcopy(G0).train()
    G.synthesis.requires_grad_(True)
    x, w = inp["targets"][:1], torch.from_numpy(inp["pivots"][:1]).to(device)

    def one_ref_step() -> None:
        img = G.synthesis(w, fused=True)
        (10 * (img - x).square().mean() + lp(img, x).mean()).backward()

    rows = [{"loop": "re-creation", "recipe": "reference loop", "dtype": "float32",
             "formulation": "modulated (pinned)", "batch": 1, **timing["ref"],
             "loss": err(last["ref"]), "label": ""}]
    if "code" in last:  # STIT's tuned generator, read back into ours to measure
        Gc = copy.deepcopy(G0)
        Gc.load_state_dict(last["code"].state_dict())
        rows.append({"loop": CODE_ROW, "recipe": "reference code",
                     "dtype": "float32", "formulation": "STIT's networks",
                     "batch": 1, **timing["code"], "loss": err(Gc), "label": ""})
    for key, plan in plans.items():
        name = "/".join(key)
        rows.append({"loop": name, "recipe": key[0], "dtype": key[1],
                     "formulation": plan.formulation, "batch": plan.batch_size,
                     "lr": plan.lr, **timing[name], "loss": err(last[name].G),
                     "label": _label("pti", key[0], key[1], plan),
                     **({"batching": plan.batching} if plan.batching else {})})
    out = {"frames": n, "passes": passes, "work": work, "rows": rows,
           "before": err(G0), "flops_per_update": _flops(one_ref_step)}
    _throughput(out, PipelineConfig().pti.steps)
    if conv_time:
        # the generator's convolutions only (LPIPS's are not clocked): the
        # ceiling printed is then an upper bound
        out["convolutions"] = _conv_time(
            _without_code(fns), last, work, secs, device,
            lambda r: [err(r if isinstance(r, torch.nn.Module) else r.G)["mse"]])
    return out


def _side_by_side(ref: Callable[[], Any], ours: Callable[[str], Any],
                  warm: Callable[[str], Any], dtype: str, repeat: int, device: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference loop, ours in ``dtype`` and (when that is not float32) ours in
    float32 (the share of mixed precision), run in turn (A B C A B C ...) for
    ``repeat`` rounds after ``warm(dtype)`` of each of ours (the refinement part).

    Returns the last result of each (keys ``ref``, ``ours``, ``ours32``; ``ours32``
    is ``ours`` in a float32 run) and the timing figures: median seconds of each,
    and as ratios the median over rounds of the reference's seconds over ours in
    the same round. Rounds side by side keep a ratio honest when the machine's
    speed drifts (shared CPUs do, by 10-20 % between minutes)."""
    fns: dict[str, Callable[[], Any]] = {"ref": ref, "ours": lambda: ours(dtype)}
    if dtype != "float32":
        fns["ours32"] = lambda: ours("float32")
    warms = {dt: (lambda d=dt: warm(d))
             for dt in ({dtype, "float32"} if "ours32" in fns else {dtype})}
    last, secs = _rounds(fns, warms, repeat, device)
    secs.setdefault("ours32", secs["ours"])
    last.setdefault("ours32", last["ours"])
    med = {k: float(np.median(v)) for k, v in secs.items()}
    ratio = {k: float(np.median([a / b for a, b in zip(secs["ref"], v)]))
             for k, v in secs.items()}
    return last, {"rounds": repeat, "ref_seconds": med["ref"],
                  "ours_seconds": med["ours"], "ratio": ratio["ours"],
                  "ours_float32_seconds": med["ours32"],
                  "ratio_float32": ratio["ours32"]}


def reference_refine(G0: Any, lp: Any, rin: Any, crops: torch.Tensor, cfg: Any,
                     device: str, seed: int = 0) -> tuple[Any, list[float]]:
    """VideoEditGAN's refinement loop structure (docs/reference.md "VideoEditGAN
    flow-based refinement"): one (anchor, frame) pair per optimiser step in a
    shuffled order per epoch; every step renders the frame and the anchor, takes
    their edited-region masks from spatial LPIPS against the aligned crops at the
    full resolution, and the sources' LPIPS features afresh. The losses are the
    engine's (:func:`engine.stages.refine.pair_losses`), so both loops do the same
    math per pair, and the reference's own operations (``reference_ops``).
    Returns the tuned generator and the seconds of each phase."""
    with reference_ops():
        return _reference_refine(G0, lp, rin, crops, cfg, device, seed)


def _reference_refine(G0: Any, lp: Any, rin: Any, crops: torch.Tensor, cfg: Any,
                      device: str, seed: int) -> tuple[Any, list[float]]:
    import torch.nn.functional as F

    from engine.nets.mapper import LevelsMapper
    from engine.stages.pti import _locality_loss
    from engine.stages.refine import (FlowSource, frozen_layer_names, pair_losses,
                                      working_size)

    size = working_size(G0.img_resolution, cfg)
    flow = FlowSource("dis", "dis")
    a = rin.anchor
    others = [i for i in range(len(rin.frames)) if i != a]
    torch.manual_seed(seed)
    mapper = LevelsMapper(G0.w_dim, G0.num_ws, zero_last=cfg.mapper_zero_init).to(
        device)
    opt = torch.optim.Adam(mapper.parameters(), lr=cfg.lr_w)
    seconds = [0.0, 0.0]

    def shrink(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="area")

    def source(i: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = shrink(crops[i:i + 1])
        return s, lp.feature_maps(s)

    def mask(img: torch.Tensor, i: int) -> torch.Tensor:  # full resolution, nearest
        return F.interpolate(lp.spatial(img, crops[i:i + 1]).detach(),
                             size=(size, size), mode="nearest")

    def w(i: int) -> torch.Tensor:
        return torch.from_numpy(rin.latents[i:i + 1]).to(device)

    for epoch in range(cfg.epochs_w):
        t0 = time.perf_counter()
        for i in np.random.default_rng([seed, 1, epoch]).permutation(others):
            d_x, d_a = mapper(w(int(i))), mapper(w(a))
            X = G0.synthesis(w(int(i)) + cfg.residual_scale * d_x)
            A = G0.synthesis(w(a) + cfg.residual_scale * d_a)
            terms = pair_losses(lp, cfg, 1, shrink(X), shrink(A), source(int(i)),
                                source(a), flow, mask_a=mask(A, a))
            loss = (cfg.weight_photo * terms["photo"] + cfg.weight_photo_l1
                    * terms["photo_l1"] + cfg.reg_frame * (d_x.abs().mean()
                                                           + d_a.abs().mean())
                    + cfg.weight_cycle * terms["cycle"]
                    + cfg.weight_out_mask_w * terms["out"]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds[0] += time.perf_counter() - t0
    with torch.no_grad():
        lat = [w(i) + cfg.residual_scale * mapper(w(i)) for i in range(len(rin.frames))]
    G = copy.deepcopy(G0).requires_grad_(False)
    frozen = frozen_layer_names(G, cfg.freeze_fine_layers)
    for name, p in G.synthesis.named_parameters():
        p.requires_grad_(".".join(name.split(".")[:2]) not in frozen)
    opt = torch.optim.Adam([p for p in G.synthesis.parameters() if p.requires_grad],
                           lr=cfg.lr_g)
    t0 = time.perf_counter()
    with torch.no_grad():  # the frozen generator's anchor mask, once (as there)
        mask_a = mask(G0.synthesis(lat[a]), a)
    seconds[1] += time.perf_counter() - t0
    for epoch in range(cfg.epochs_g):
        t0 = time.perf_counter()
        for b, i in enumerate(np.random.default_rng([seed, 2, epoch]).permutation(
                others)):
            X, A = G.synthesis(lat[int(i)]), G.synthesis(lat[a])
            terms = pair_losses(lp, cfg, 2, shrink(X), shrink(A), source(int(i)),
                                source(a), flow, mask_a=mask_a,
                                mask_x=mask(X, int(i)))
            loss = (cfg.weight_photo * terms["photo"] + cfg.weight_photo_l1
                    * terms["photo_l1"] + cfg.weight_cycle * terms["cycle"]
                    + cfg.weight_out_mask_g * terms["out"]).sum()
            loss = loss + cfg.reg_g * _locality_loss(G, G0, lp, lat[a], cfg,
                                                     [seed, 2, epoch, b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds[1] += time.perf_counter() - t0
    return G, seconds


def bench_refine(inp: dict[str, Any], cfg: Any, epochs: tuple[int, int], device: str,
                 dtype: str, repeat: int = 1) -> dict[str, Any]:
    """Our refinement loop against :func:`reference_refine`, same inputs and
    epochs, DIS flow (the default without RAFT weights)."""
    from engine.stages.refine import (FlowSource, RefineInputs, RefineTuner,
                                      anchor_index, working_size)

    G, lp = inp["G_pti"], inp["lpips"]
    n = len(inp["pivots"])
    lat = inp["edit_latents"]
    rin = RefineInputs(list(range(n)), lat, lat - inp["pivots"], None,
                       anchor_index(n))
    cfg = replace(cfg, flow="dis", epochs_w=epochs[0], epochs_g=epochs[1],
                  strength_matched_anchor=False,  # one anchor, as the reference
                  batch_size=resolve_batch(cfg.batch_size, "refine",
                                           G.img_resolution, device, n - 1))
    size = working_size(G.img_resolution, cfg)
    secs: dict[str, list[float]] = {}

    def ours(dt: str) -> RefineTuner:
        sources = TargetCache(_ArrayClip(inp["crops"]), size, device, lp,
                              limit=cfg.cache_frames)
        tuner = RefineTuner(G, lp, rin, sources, cfg, FlowSource("dis", "dis"),
                            device=device, dtype=dt)
        while not tuner.done:
            tuner.step()
        secs[f"ours_{dt}"] = list(tuner.state["seconds"])
        return tuner

    def ref() -> Any:
        G_ref, s = reference_refine(G, lp, rin, inp["targets"], cfg, device)
        secs["ref"] = s
        return G_ref

    def warm(dt: str) -> None:
        sources = TargetCache(_ArrayClip(inp["crops"]), size, device, lp, limit=4)
        tuner = RefineTuner(G, lp, rin, sources, replace(cfg, epochs_w=1, epochs_g=1),
                            FlowSource("dis", "dis"), device=device, dtype=dt)
        tuner.step()

    reference_refine(G, lp, RefineInputs([0, 1], lat[:2], (lat - inp["pivots"])[:2],
                                         None, 0), inp["targets"][:2],
                     replace(cfg, epochs_w=1, epochs_g=1), device)
    last, timing = _side_by_side(ref, ours, warm, dtype, repeat, device)
    pairs = (n - 1) * np.array(epochs, dtype=float)

    def per_min(s: list[float]) -> list[float | None]:
        return [60 * p / x if x > 0 else None for p, x in zip(pairs, s)]

    return {"frames": n, "epochs": list(epochs), "batch": cfg.batch_size,
            "working_size": size, "dtype": dtype, **timing,
            "ours_pairs_per_minute": per_min(secs[f"ours_{dtype}"]),
            "ours_float32_pairs_per_minute": per_min(secs["ours_float32"]),
            "ref_pairs_per_minute": per_min(secs["ref"]),
            "ours_seconds_per_phase": secs[f"ours_{dtype}"],
            "ref_seconds_per_phase": secs["ref"]}


def bench_stitch(inp: dict[str, Any], cfg: PipelineConfig, steps: int, device: str,
                 variants: list[tuple[str, str]], rounds: int,
                 formulation: str | None, conv_time: bool = False,
                 code: Any = None) -> dict[str, Any]:
    """Stitching tuning side by side; ``code`` as in :func:`bench_pti` (W-space
    edits only: STIT's function takes the edited latents)."""
    n = inp["targets"].shape[0]
    G = inp["G_pti"]
    edits, target = inp["edits"], inp["targets"]
    border, content = inp["border"], inp["content"]
    scfg = replace(cfg.stitch, steps=steps)
    from_styles = edits.from_styles
    plans = {}
    for recipe, dt in variants:
        c = replace(cfg, dtype=dt, stitch=replace(scfg, formulation=formulation
                                                  or scfg.formulation))
        plans[(recipe, dt)] = stitch_plan(
            c, recipe, resolution=G.img_resolution, device=device, frames=n,
            choose=lambda d: choose("stitch", G, d, device, stitch_candidates(
                G, scfg, device, d["dtype"], from_styles),
                extra="styles" if from_styles else "ws"))

    def ours(key: tuple[str, str], frames: int = n, st: int = steps) -> list[float]:
        plan = plans[key]
        b = plan.batch_size
        stitcher = BatchedStitcher(G, replace(scfg, steps=st, batch_size=b),
                                   plan.dtype, plan.formulation)
        after: list[float] = []
        for i in range(0, frames, b):
            sl = slice(i, min(i + b, frames))
            after += stitcher.tune(edits.select(sl), target[sl], border[sl],
                                   content[sl]).after
        return after

    def ref(frames: int = n, st: int = steps) -> list[float]:
        sl = slice(0, frames)
        with reference_ops():  # the reference's own convolutions
            return tune_reference(G, edits.select(sl), target[sl], border[sl],
                                  content[sl], replace(scfg, steps=st)).after

    stit = None
    if code is not None and from_styles:
        print("note: STIT's optimize_border takes W-space latents; these edits are "
              "S-space, so its stitching is not timed")
    elif code is not None:
        R = reference_code.generator(code, G, device)
        edit_ws = edits.arg()

        def stit(frames: int = n, st: int = steps) -> list[float]:
            return reference_code.stitch(code, R, edit_ws[:frames], target[:frames],
                                         border[:frames], content[:frames], st, scfg)

    fns, last, secs = _recipe_rounds(ref, ours, plans, n, rounds, device, stit)
    work = n * steps
    timing = _timing(secs, work)
    # what a frame costs besides its steps (the float32 renders before and after
    # tuning, the copies), one run of each loop at 0 steps: a job's frames per
    # minute weighs it once per 100 steps, the benchmark once per --stitch-steps
    fixed = {"re-creation": _timed(lambda: ref(n, 0), device)[1] / n}
    if stit is not None:
        fixed[CODE_ROW] = _timed(lambda: stit(n, 0), device)[1] / n
    for key in plans:
        fixed["/".join(key)] = _timed(lambda key=key: ours(key, n, 0), device)[1] / n
    Gi = copy.deepcopy(G).train()
    Gi.synthesis.requires_grad_(True)
    x1 = edits.select(slice(0, 1)).arg()

    def one_ref_step() -> None:
        img = Gi.synthesis(x1) if not from_styles else \
            Gi.synthesis.synthesis_from_styles(x1)
        (masked_loss(img, target[:1], border[:1])
         + 0.01 * masked_loss(img, target[:1], content[:1])).sum().backward()

    rows = [{"loop": "re-creation", "recipe": "reference loop", "dtype": "float32",
             "formulation": "deep copy per frame", "batch": 1, **timing["ref"],
             "border_after": float(np.mean(last["ref"])), "label": ""}]

    def versus_ref(after: list[float]) -> float:  # worst frame, relative
        return float(np.max(np.abs(np.array(after) - np.array(last["ref"]))
                            / np.maximum(np.abs(np.array(last["ref"])), 1e-12)))

    if "code" in last:
        rows.append({"loop": CODE_ROW, "recipe": "reference code", "dtype": "float32",
                     "formulation": "STIT's optimize_border", "batch": 1,
                     **timing["code"], "border_after": float(np.mean(last["code"])),
                     "max_rel_diff_per_frame": versus_ref(last["code"]), "label": ""})
    for key, plan in plans.items():
        name = "/".join(key)
        rows.append({"loop": name, "recipe": key[0], "dtype": key[1],
                     "formulation": plan.formulation, "batch": plan.batch_size,
                     **timing[name], "border_after": float(np.mean(last[name])),
                     "max_rel_diff_per_frame": versus_ref(last[name]),
                     "label": _label("stitch", key[0], key[1], plan)})
    out = {"frames": n, "steps": steps, "work": work, "rows": rows,
           "flops_per_update": _flops(one_ref_step)}
    _throughput(out, PipelineConfig().stitch.steps, fixed)
    if conv_time:
        out["convolutions"] = _conv_time(_without_code(fns), last, work, secs, device,
                                         lambda after: after)
    return out


def _conv_time(fns: dict[str, Callable[[], Any]], last: dict[str, Any], work: int,
               secs: dict[str, list[float]], device: str,
               losses: Callable[[Any], list[float]]) -> dict[str, Any]:
    """One more run of each loop with its generator's convolutions clocked: ms per
    frame-update in convolutions and in all, and the ratio no loop structure can
    pass (the re-creation's update over our convolutions alone). ``losses(result)``
    are the loop's losses reached (stitching: per-frame border losses; PTI: the
    reconstruction MSE), compared with the unclocked run's."""
    conv: dict[str, Any] = {}
    for name, fn in fns.items():
        with timed_convolutions() as tc:
            result, total = _timed(fn, device)
        conv[f"{name}_conv_ms"] = 1e3 * tc.seconds / work
        conv[f"{name}_clocked_ms"] = 1e3 * total / work
        # the clock must not change the arithmetic
        conv[f"{name}_max_abs_diff_loss"] = float(np.max(np.abs(
            np.array(losses(result)) - np.array(losses(last[name])))))
        if name != "ref":
            conv[f"{name}_ceiling_ratio"] = (1e3 * float(np.median(secs["ref"]))
                                             / work / conv[f"{name}_conv_ms"])
    return conv


def _print_conv_time(fig: dict[str, Any]) -> None:
    if "convolutions" not in fig:
        return
    c = fig["convolutions"]
    print("  convolutions, clocked inside the loops (ms per frame-update): "
          + "; ".join(f"{k} {c[f'{k}_conv_ms']:.1f} of {c[f'{k}_clocked_ms']:.1f}"
                      for k in ["ref"] + [r["loop"] for r in fig["rows"][1:]])
          + "; with nothing but our convolutions left: "
          + ", ".join(f"{r['loop']} {c[r['loop'] + '_ceiling_ratio']:.2f}x"
                      for r in fig["rows"][1:]))


def check_rows(part: str, fig: dict[str, Any], tol: float) -> list[str]:
    """Failures of same-arithmetic rows (no label): PTI's reconstruction MSE and
    LPIPS, stitching's per-frame border losses, against the re-creation's,
    relative."""
    ref, fails = fig["rows"][0], []
    for row in fig["rows"][1:]:
        if row["label"]:
            continue
        if part == "pti":
            checks = {f"reconstruction {k.upper()}": (
                abs(row["loss"][k] - ref["loss"][k]) / max(abs(ref["loss"][k]),
                                                           1e-12),
                f"{row['loss'][k]:.6g} vs re-creation {ref['loss'][k]:.6g}")
                for k in ("mse", "lpips")}
        else:
            rel = row["max_rel_diff_per_frame"]
            checks = {"border loss after tuning": (
                rel, f"differs from the re-creation's by up to {rel:.2e} (relative, "
                "worst frame)")}
        row["check"] = {k: v[0] for k, v in checks.items()}
        for what, (rel, text) in checks.items():
            if rel > tol:
                fails.append(f"FAIL {part} {row['loop']} ({row['formulation']}): "
                             f"{what} {text}: {rel:.2e} > tolerance {tol:.0e}, "
                             "although this row claims the reference's arithmetic")
    return fails


def print_rows(title: str, part: str, fig: dict[str, Any], unit: str) -> None:
    print(f"\n{title}")
    code = "code_ratio" in fig["rows"][0]
    print(f"  {'loop':<20} {'formulation':<20} {'batch':>5} {unit + '/s':>14} "
          f"{'TFLOP/s':>8} {'job fr/min':>10} {'ratio (range)':>20}  "
          + (f"{'vs STIT code':>20}  " if code else "")
          + f"{'loss reached':<28} note")
    for row in fig["rows"]:
        if part == "pti":
            loss = f"MSE {row['loss']['mse']:.5f} LPIPS {row['loss']['lpips']:.4f}"
        else:
            loss = f"border {row['border_after']:.6f}"
        rng = f"{row['ratio']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        note = row["label"] or ("same arithmetic" if row["loop"] != "re-creation"
                                else "")
        vs = (f"{row['code_ratio']:.2f}x ({row['code_ratio_min']:.2f}-"
              f"{row['code_ratio_max']:.2f})" if code else "")
        print(f"  {row['loop']:<20} {str(row['formulation']):<20} {row['batch']:>5} "
              f"{row['updates_per_second']:>14.3f} {row['tflops']:>8.3f} "
              f"{row['job_frames_per_minute']:>10.2f} {rng:>20}  "
              + (f"{vs:>20}  " if code else "") + f"{loss:<28} {note}")
    if "job_updates_per_frame" in fig:
        fixed = [r for r in fig["rows"] if "frame_fixed_seconds" in r]
        print(f"  (TFLOP/s: the reference step's {fig['flops_per_update'] / 1e9:.0f} "
              "GFLOP per frame-update, forward and backward, at each row's rate; job "
              f"fr/min: frames a job's stage processes per minute at "
              f"{fig['job_updates_per_frame']} updates per frame"
              + (", each frame's renders timed apart at 0 steps: "
                 + ", ".join(f"{r['loop']} {r['frame_fixed_seconds']:.2f} s + "
                             f"{r['update_seconds']:.2f} s a step" for r in fixed)
                 if fixed else "") + ")")
    for row in fig["rows"]:
        b = row.get("batching")
        if b:  # the fast recipe's PTI measured whether its mini-batch pays
            print(f"  {row['loop']}: batch {row['batch']}: a whole step measured "
                  f"{b['frame_seconds']:.3f} s a frame at batch {b['batch']}, "
                  f"{b['batch_1_frame_seconds']:.3f} at batch 1 (gain "
                  f"{b['gain']:+.1%}; a mini-batch needs "
                  f"{BATCHING_GAIN:+.0%})")


# --- fidelity of the fast recipe on the official weights --------------------------


def identity_similarity(jd: Path, device: str, backend: str = "dlib") -> float:
    """Mean cosine similarity of the face identity (engine/quality/identity.py)
    between each aligned crop and the tuned generator's reconstruction of it."""
    from engine.quality.identity import FaceFinder, identity_backend
    from engine.stages.crops import tensor_to_image
    from engine.stages.outputs import JobFiles

    files = JobFiles(jd)
    clip, frames = files.align.clip(), files.invert.frames()
    pivots = files.invert.pivots()
    G = files.pti.generator(device)
    emb, finder = identity_backend(backend, device=device), FaceFinder()
    sims = []
    for i, f in enumerate(frames):
        crop = np.asarray(clip.crop(f))[..., :3]
        with torch.no_grad():
            rec = G.synthesis(torch.from_numpy(pivots[i:i + 1]).to(device))
        rec = tensor_to_image(rec[0], depth=8)
        box = finder.detect(crop)
        box = box[0] if isinstance(box, list) and box else box
        if not box:
            continue
        sims.append(float(np.dot(emb.embed(crop, box), emb.embed(rec, box))))
    return float(np.mean(sims)) if sims else float("nan")


def fidelity_variants(device: str) -> list[tuple[str, str, str]]:
    """``(name, recipe, dtype)`` the fidelity table runs: the reference recipe in
    float32 (the baseline), the fast recipe at its own precision, and where the
    device computes TensorFloat-32 the reference recipe in ``tf32`` (the labelled
    precision a user may choose; docs/pipeline.md "Batches and precision")."""
    rows = [("reference", "reference", "float32"), ("fast", "fast", "auto")]
    if tf32_capable(device):
        rows.append(("reference tf32", "reference", "tf32"))
    return rows


def fidelity(args: argparse.Namespace, dev: str, work: Path) -> int:
    """The whole pipeline on a real clip with the official weights, once per
    :func:`fidelity_variants` row; the table that decides the defaults
    (docs/pipeline.md "Recipes")."""
    from engine.models.store import resolve_profile
    from engine.stages.outputs import JobFiles

    if resolve_profile("auto") != "official":
        print("bench/pipeline.py --fidelity needs the official models installed "
              "(facestitch models install); on random weights a comparison says "
              "nothing about quality", file=sys.stderr)
        return 2
    variants = fidelity_variants(dev)
    res = {}
    for name, recipe, dtype in variants:
        opts = {"profile": "official", "recipe": recipe, "dtype": dtype,
                "pti": {"steps": args.pti_passes},
                "stitch": {"steps": args.stitch_steps}, "metrics": {"enabled": False}}
        jd, _ = run_stages(work, args.frames, opts, dev, args.clip,
                           name=name.replace(" ", "-"))
        files = JobFiles(jd)
        loss, summary = files.pti.loss() or {}, files.stitch_tune.summary() or {}
        res[name] = {"mse": loss["after"]["mse"], "lpips": loss["after"]["lpips"],
                     "identity": identity_similarity(jd, dev),
                     "border_after": summary.get("border_after"),
                     "dtype": loss.get("dtype")}
    names = [v[0] for v in variants]
    ok = {n: True for n in names[1:]}
    print(f"\nRecipes on the official weights, {args.frames} frames of "
          f"{args.clip or 'the astronaut clip'}, PTI {args.pti_passes} passes, "
          f"stitching {args.stitch_steps} steps:")
    print(f"  {'':<30}" + "".join(f" {n:>15}" for n in names)
          + "".join(f" {n + ' vs ref':>22}" for n in names[1:]))
    for k, what, lower in (("mse", "reconstruction MSE", True),
                           ("lpips", "reconstruction LPIPS", True),
                           ("identity", "identity similarity", False),
                           ("border_after", "stitching border loss", True)):
        a = res["reference"][k]
        line = f"  {what:<30}" + "".join(f" {res[n][k]:>15.5f}" for n in names)
        for n in names[1:]:
            b = res[n][k]
            rel = (b - a) / abs(a) if a else float("nan")
            worse = rel > 0.02 if lower else rel < -0.02
            if k != "border_after":
                ok[n] = ok[n] and not worse
            line += f" {rel:>+21.1%}" + ("!" if worse else " ")
        print(line)
    print("  (! = worse than the reference by more than 2 %)")
    for n in names[1:]:
        print(f"{n} (trained in {res[n]['dtype']}) within 2 % of reference in MSE, "
              f"LPIPS and identity: " + ("yes" if ok[n] else "no"))
    if args.json:
        args.json.write_text(json.dumps({"fidelity": res, "within_2_percent": ok},
                                        indent=2))
    return 0


# --- memory at the official size ------------------------------------------------------


def memory_probe(kind: str, batch: int, checkpointing: bool, device: str) -> float:
    """Peak memory (GiB) of one PTI or stitching step at the official size, batch
    ``batch``, above what the networks themselves take: CUDA's peak allocation on a
    GPU; on a CPU the growth of the peak resident set, an estimate of the same.
    Runs in a fresh process (see ``--memory``)."""
    import resource

    from engine.nets.lpips import LPIPS
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

    torch.manual_seed(0)
    cuda = torch.device(device).type == "cuda"
    G = Generator(**OFFICIAL_GENERATOR_KWARGS).to(device).requires_grad_(False)
    lp = LPIPS("alex", backbone="random", heads="uniform").to(device)
    R = G.img_resolution
    x = torch.rand(batch, 3, R, R, device=device) * 2 - 1
    ws = torch.randn(batch, G.num_ws, G.w_dim, device=device)
    with torch.no_grad():
        feats = [t.detach() for t in lp.feature_maps(x)]
        styles = [s.detach() for s in G.styles(ws)]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kind == "pti":
        G.synthesis.requires_grad_(True)
        img = G.synthesis(ws, checkpointing=checkpointing)
        loss = (10 * (img - x).square().mean(dim=(1, 2, 3))
                + lp.distance_from_features(lp.feature_maps(img), feats)).mean()
        loss.backward()
    else:
        stitcher = BatchedStitcher(G, replace(PipelineConfig().stitch, steps=1))
        m = torch.ones(batch, R, R, device=device)
        stitcher.tune(styles, x, m, m)
    if cuda:
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2 ** 30


def memory_table(device: str, batches: list[int]) -> list[dict[str, Any]]:
    import subprocess

    rows = []
    for kind, ckpt in (("pti", False), ("pti", True), ("stitch", False)):
        for b in batches:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-probe", kind, str(b),
                 str(int(ckpt)), device], capture_output=True, text=True,
                check=False)
            try:
                gib = float(out.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                gib = float("nan")
                print(out.stderr[-2000:], file=sys.stderr)
            rows.append({"kind": kind, "batch": b, "checkpointing": ckpt,
                         "gib": gib})
            print(f"  {kind:<7} batch {b}  gradient checkpointing "
                  f"{'on ' if ckpt else 'off'}  {gib:6.2f} GiB")
    return rows


# --- drafts -------------------------------------------------------------------------


def _draft_job(clip: Path, frames: int, count: int, strengths: int, profile: str,
               device: str, job_id: str) -> Any:
    from engine.media.samples import RATE
    from fsexchange.client import build_job
    from fsexchange.documents import FrameRange, Source

    return build_job(job_id=job_id, kind="draft", source=Source(str(clip)),
                     range=FrameRange(0, frames, RATE),
                     options={"profile": profile, "device": device,
                              "draft": {"count": count,
                                        "sweep": f"age=-8:8:{strengths}"}},
                     host={"app": "bench/pipeline.py --draft"})


def _stage_rows(result: Any) -> dict[str, float]:
    return {s.name: s.seconds for s in result.stages}


def bench_draft_engine(work: Path, device: str, count: int, strengths: int
                       ) -> dict[str, Any]:
    """A cold and a warm draft through a real engine process (tiny profile)."""
    import signal
    import subprocess

    from engine.media.samples import astronaut_clip
    from engine.models.modelset import load_models
    from fsexchange.client import job_status, submit_job

    home = work / "home"
    env = {**os.environ, "FACESTITCH_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                    "")])}
    os.environ["FACESTITCH_HOME"] = str(home)
    load_models("tiny")  # an installed store: the tiny networks exist (not timed)
    clip = astronaut_clip(work / "clip.mp4", 48)
    ex = work / "ex"
    jobs = [_draft_job(clip, 48, count, strengths, "tiny", device, f"draft-{i}")
            for i in range(2)]

    def wait(job_id: str) -> Any:
        while True:
            st = job_status(ex, job_id)
            if st.final:
                if st.state != "done":
                    raise RuntimeError(f"draft {job_id} {st.state}: {st.error}")
                return st.result
            time.sleep(0.02)

    submit_job(ex, jobs[0])
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "host_bridge.cli", "engine", "--exchange", str(ex),
         "--device", device, "--no-watch", "--poll", "0.05", "--media-root",
         str(work)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        cold = wait(jobs[0].id)
        t_cold = time.perf_counter() - t0
        submit_job(ex, jobs[1])
        t1 = time.perf_counter()
        warm = wait(jobs[1].id)
        t_warm = time.perf_counter() - t1
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
    if proc.returncode not in (0, -signal.SIGTERM):
        print(err[-2000:], file=sys.stderr)
    return {"cold_seconds": t_cold, "warm_seconds": t_warm,
            "cold_stages": _stage_rows(cold), "warm_stages": _stage_rows(warm),
            "rows": len(warm.variants),
            "frames": len(warm.variants[0].frames) if warm.variants else 0}


def _random_official_models(device: str) -> Any:
    """Official-size networks with random weights, as a ModelSet (speed only)."""
    from engine.models.directions import Direction
    from engine.models.modelset import ModelSet
    from engine.nets.e4e import OFFICIAL_ENCODER_KWARGS, E4EEncoder
    from engine.nets.lpips import LPIPS
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

    torch.manual_seed(0)
    G = Generator(**OFFICIAL_GENERATOR_KWARGS).to(device).eval().requires_grad_(False)
    E = E4EEncoder(**OFFICIAL_ENCODER_KWARGS).to(device).eval().requires_grad_(False)
    lp = LPIPS("alex", backbone="random", heads="uniform", seed=0).to(device)
    v = np.random.default_rng(0).standard_normal(G.w_dim)
    age = Direction(name="age", vector=v / np.linalg.norm(v), layers=None,
                    recommended=(-8.0, 8.0), space="w", source="random (bench)",
                    licence="none", test_data=True)
    return ModelSet(profile="official", generator=G, encoder=E,
                    encoder_resolution=int(E.input_resolution), lpips=lp,
                    parser_path=None, directions={"age": age},
                    info={"profile": "official", "tiny": False, "files": {},
                          "label": "official-size random weights (bench)"})


def bench_draft_official(work: Path, device: str, count: int, strengths: int
                         ) -> dict[str, Any]:
    """Two drafts at the official size in this process (random weights seeded
    into the model cache), on a 1920x1080 clip."""
    from engine.media.samples import astronaut_clip
    from engine.models.modelset import cached_models
    from engine.stages.contract import StageContext
    from engine.stages.pipeline import run_pipeline, stages_for

    os.environ["FACESTITCH_HOME"] = str(work / "home-official")
    ms = _random_official_models(device)
    cached_models("official", device, loader=lambda: ms)  # seed the cache
    clip = astronaut_clip(work / "hd.mp4", 48, size=(1920, 1080), face_scale=1.4)
    out: dict[str, Any] = {}
    for run in ("first", "second"):
        job = _draft_job(clip, 48, count, strengths, "official", device,
                         f"official-{run}")
        cfg = PipelineConfig.from_options(job.options, device=device)
        jd = work / job.id
        jd.mkdir()
        ctx = StageContext(job=job, job_dir=jd, config=cfg, device=device,
                           media_roots=(work,))
        _sync(device)
        t0 = time.perf_counter()
        done = run_pipeline(stages_for("draft", config=cfg), ctx)
        _sync(device)
        out[f"{run}_seconds"] = time.perf_counter() - t0
        out[f"{run}_stages"] = {d.stage: d.seconds for d, _ in done}
    return out


def run_draft_bench(args: argparse.Namespace, dev: str) -> int:
    out: dict[str, Any] = {"device": dev, "frames": args.draft_frames,
                           "strengths": args.draft_strengths}
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other "
              "processes compete for the CPU, timings are noisy")
    work = Path(tempfile.mkdtemp(prefix="fs-bench-draft-"))
    try:
        print(f"Draft, {args.draft_frames} frames x {args.draft_strengths} strengths, "
              f"tiny profile, a real engine process on {dev} "
              f"({os.cpu_count()} cores):")
        e = bench_draft_engine(work, dev, args.draft_frames, args.draft_strengths)
        out["tiny_engine"] = e
        print(f"  cold (engine start included): {e['cold_seconds']:.2f} s  "
              f"(target < 20 s on 2 CPU cores)")
        print(f"  warm (the same engine, networks cached): {e['warm_seconds']:.2f} s")
        for name in ("cold", "warm"):
            print(f"  {name} stages: " + ", ".join(
                f"{k} {v:.2f}" for k, v in e[f"{name}_stages"].items()))
        if dev.startswith("cuda") or args.official:
            print(f"\nDraft at the official size (1024 px, random weights), 1920x1080 "
                  f"clip, in this process on {dev}:")
            o = bench_draft_official(work, dev, args.draft_frames,
                                     args.draft_strengths)
            out["official"] = o
            for run in ("first", "second"):
                print(f"  {run}: {o[f'{run}_seconds']:.2f} s  (" + ", ".join(
                    f"{k} {v:.2f}" for k, v in o[f"{run}_stages"].items()) + ")"
                    + ("  (target < 10 s on a GPU)" if run == "second" else ""))
        else:
            print("\n(official size: no GPU here; --device cuda on a GPU machine, or "
                  "--official to run it on this CPU)")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("official", "tiny"), default="tiny",
                   help="official: random official-architecture weights at --size "
                   "(the headline); tiny: the tiny profile on a real clip")
    p.add_argument("--size", type=int, default=256,
                   help="generator resolution of --arch official (1024 = official)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames (default 4 official, 12 tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pti-passes", type=int, default=None,
                   help="passes over all frames, every loop (reference default 80; "
                   "bench default 2 official, 10 tiny)")
    p.add_argument("--stitch-steps", type=int, default=None,
                   help="steps per frame, every loop (reference default 100; bench "
                   "default 3 official, 30 tiny)")
    p.add_argument("--recipes", default="reference,fast")
    p.add_argument("--dtypes", default="auto",
                   help="comma-separated float32, tf32, bfloat16; auto = float32 and "
                   "bfloat16, plus tf32 on a GPU that computes it")
    p.add_argument("--pti-formulation", help="force one (default: the recorded one)")
    p.add_argument("--stitch-formulation", help="force one (default: the recorded "
                   "one)")
    p.add_argument("--pti-batch", type=int, help="the fast recipe's PTI batch "
                   "(default: options default, auto)")
    p.add_argument("--stitch-batch", type=int, help="frames tuned at once (default: "
                   "options default, auto)")
    p.add_argument("--rounds", "--repeat", type=int, default=3, dest="rounds",
                   help="timed rounds of every loop, in turn; medians are printed")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="relative loss tolerance of same-arithmetic rows")
    p.add_argument("--refine-epochs", default="2,1", metavar="E1,E2",
                   help="--arch tiny: temporal refinement epochs of phase 1 and 2, "
                   "both loops (the README's are 10,3)")
    p.add_argument("--skip-pipeline", action="store_true",
                   help="--arch tiny: do not print the stage-by-stage table")
    p.add_argument("--only", choices=("pti", "refine", "stitch"),
                   help="one part only (refine: --arch tiny)")
    p.add_argument("--quick", action="store_true",
                   help="--arch tiny with 12 frames, 10 PTI passes, 30 steps")
    p.add_argument("--conv-time", action="store_true",
                   help="also run each PTI and stitching loop once with its "
                   "generator's convolutions clocked: their share of an update, "
                   "and the ratio no loop structure can pass")
    p.add_argument("--reference-code", type=Path, metavar="DIR",
                   help="--arch official: also time STIT's own code from this "
                   "checkout of rotemtzaban/STIT, in the same rounds")
    p.add_argument("--fidelity", action="store_true",
                   help="compare the recipes end to end on the official weights")
    p.add_argument("--clip", type=Path, help="--fidelity: the clip (default: the "
                   "astronaut clip)")
    p.add_argument("--reserve-gib", type=float, default=None, metavar="GIB",
                   help="grow the kept heap by this much (every page touched) before "
                   "any timing, so that no loop pays for the heap's growth "
                   "(default: 10 with --arch official on a CPU, else 0; not with "
                   "--system-malloc)")
    p.add_argument("--memory", action="store_true",
                   help="also measure the memory of one PTI / stitching step at the "
                   "official size (batch 1 and 2; a few minutes on a CPU)")
    p.add_argument("--memory-probe", nargs=4, metavar=("KIND", "BATCH", "CKPT",
                                                       "DEVICE"),
                   help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave the C allocator as it is (default: keep freed memory "
                   "for reuse, as the engine's compute processes do; both sides of "
                   "every comparison share the process and the setting)")
    p.add_argument("--draft", action="store_true",
                   help="time a draft instead (a real engine, tiny profile; the "
                   "official size too on a GPU); see the module docstring")
    p.add_argument("--draft-frames", type=int, default=5, help="with --draft")
    p.add_argument("--draft-strengths", type=int, default=5, help="with --draft")
    p.add_argument("--official", action="store_true",
                   help="with --draft: the official-size part on a CPU as well")
    args = p.parse_args(argv)
    if args.memory_probe:
        kind, b, ck, d = args.memory_probe
        print(memory_probe(kind, int(b), bool(int(ck)), d))
        return 0
    official = args.arch == "official"
    if args.quick:
        args.arch, official = "tiny", False
        args.frames, args.pti_passes, args.stitch_steps = 12, 10, 30
    if args.frames is None:
        args.frames = 4 if official or args.fidelity else 12
    if args.pti_passes is None:
        args.pti_passes = 2 if official else 10
    if args.stitch_steps is None:
        args.stitch_steps = 3 if official else 30
    try:
        args.refine_epochs = tuple(int(v) for v in args.refine_epochs.split(","))
    except ValueError:
        p.error("--refine-epochs must be E1,E2, e.g. 10,3")
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if args.draft:
        return run_draft_bench(args, dev)
    os.environ.setdefault("FACESTITCH_HOME", str(Path(tempfile.gettempdir())
                                                 / "facestitch-bench-home"))
    work = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    try:
        if args.fidelity:
            return fidelity(args, dev, work)
        return _speed(args, dev, work, official)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _speed(args: argparse.Namespace, dev: str, work: Path, official: bool) -> int:
    e1, e2 = args.refine_epochs
    options: dict[str, Any] = {"pti": {"steps": args.pti_passes},
                               "stitch": {"steps": args.stitch_steps},
                               "refine": {"epochs_w": e1, "epochs_g": e2}}
    if args.pti_batch:
        options["pti"]["batch_size"] = args.pti_batch
    if args.stitch_batch:
        options["stitch"]["batch_size"] = args.stitch_batch
    cfg = PipelineConfig.from_options(options)
    variants = _variants(args.recipes.split(","), bench_dtypes(args.dtypes, dev))
    kept = False if args.system_malloc else keep_freed_memory()
    exact_float32()  # as the engine's compute processes: float32 is never TF32
    reserve = args.reserve_gib if args.reserve_gib is not None else (
        10.0 if official and dev == "cpu" else 0.0)
    t0 = time.perf_counter()
    reserved = reserve_heap(int(reserve * 2 ** 30)) if kept else 0
    print(f"device {dev}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, freed memory kept for reuse: "
          f"{'yes' if kept else 'no'}"
          + (f", {reserved / 2 ** 30:g} GiB of heap reserved in "
             f"{time.perf_counter() - t0:.0f} s" if reserved else "")
          + ", fused epilogue: " + (
              f"on (layers of {epilogue.MIN_ELEMENTS / 2 ** 20:g} Mi elements "
              "and up)" if epilogue.enabled(dev) else "off"))
    load = os.getloadavg()[0]
    if dev == "cpu" and load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other "
              "processes compete for the CPU, timings are noisy")
    out: dict[str, Any] = {"device": dev, "arch": args.arch, "frames": args.frames,
                           "load_average_start": list(os.getloadavg()),
                           "freed_memory_kept": kept,
                           "heap_reserved_gib": reserved / 2 ** 30}
    if official:
        inp = official_inputs(args.frames, args.size, dev)
        out["size"] = args.size
    else:
        from engine.models.store import resolve_profile

        profile = resolve_profile("tiny")
        jd, rows = run_stages(work, args.frames, dict(options, profile=profile,
                                                     recipe="fast"), dev)
        if not args.skip_pipeline:
            print(f"\nPipeline, {args.frames} frames, PTI {args.pti_passes} passes, "
                  f"stitching {args.stitch_steps} steps (recipe fast):")
            print(f"  {'stage':<12} {'seconds':>8} {'frames/s':>9} "
                  f"{'loop frames/s':>14}")
            for r in rows:
                lf = r["loop_frames_per_second"]
                print(f"  {r['stage']:<12} {r['seconds']:8.2f} "
                      f"{r['frames_per_second']:9.2f} "
                      f"{(f'{lf:.1f}' if lf else ''):>14}")
            out["stages"] = rows
        inp = real_inputs(jd, profile, dev)
    print(f"networks: {inp['arch']}")
    if official:
        macs = generator_macs(args.size)
        out["generator_gmac"] = macs
        print(f"generator forward: {macs['convolutions']:.1f} GMAC in its "
              f"convolutions (+{macs['fir']:.2f} in the FIR filters) per frame at "
              f"{args.size} px"
              + (f"; at 1024 px: {generator_macs(1024)['convolutions']:.1f}"
                 if args.size != 1024 else ""))
    fails: list[str] = []
    code = None
    if args.reference_code is not None:
        if not official:
            raise SystemExit("bench/pipeline.py: --reference-code needs --arch "
                             "official")
        code = reference_code.load(args.reference_code)
        print(f"reference code: STIT at {code.root}")
    if args.only in (None, "pti"):
        pr = bench_pti(inp, cfg, args.pti_passes, dev, variants, args.rounds,
                       args.pti_formulation, conv_time=args.conv_time, code=code)
        fails += check_rows("pti", pr, args.tolerance)
        print_rows(f"PTI, {args.frames} frames x {args.pti_passes} passes "
                   f"(medians of {args.rounds} rounds, loops in turn; reconstruction "
                   f"before: MSE {pr['before']['mse']:.5f} LPIPS "
                   f"{pr['before']['lpips']:.4f}):", "pti", pr, "frame-updates")
        _print_conv_time(pr)
        out["pti"] = pr
    if args.only in (None, "refine") and not official:
        from engine.devices import resolve_dtype

        dtype = resolve_dtype("auto", dev)
        print(f"\nTemporal refinement, {args.frames} frames ({args.frames - 1} "
              f"pairs) x {e1}+{e2} epochs, same latents, crops, networks, DIS flow "
              f"(medians of {args.rounds} rounds):")
        rr = bench_refine(inp, cfg.refine, (e1, e2), dev, dtype, args.rounds)
        loops = [("reference loop (1 pair per step, float32)", rr["ref_seconds"], 1.0,
                  rr["ref_pairs_per_minute"]),
                 (f"ours ({rr['batch']} pairs per step, {dtype})", rr["ours_seconds"],
                  rr["ratio"], rr["ours_pairs_per_minute"])]
        if dtype != "float32":
            loops.append((f"ours ({rr['batch']} pairs per step, float32)",
                          rr["ours_float32_seconds"], rr["ratio_float32"],
                          rr["ours_float32_pairs_per_minute"]))
        for name, sec, ratio, pm in loops:
            per = ", ".join(f"phase {k + 1} {v:.0f}" if v else f"phase {k + 1} -"
                            for k, v in enumerate(pm))
            print(f"  {name:<44} {sec:7.2f} s  frames/min: {per}  ratio "
                  f"{ratio:.2f}x")
        out["refine"] = rr
    if args.only in (None, "stitch"):
        sr = bench_stitch(inp, cfg, args.stitch_steps, dev, variants, args.rounds,
                          args.stitch_formulation, conv_time=args.conv_time,
                          code=code)
        fails += check_rows("stitch", sr, args.tolerance)
        print_rows(f"Stitching tuning, {args.frames} frames x {args.stitch_steps} "
                   f"steps (medians of {args.rounds} rounds):", "stitch", sr,
                   "frame-updates")
        _print_conv_time(sr)
        out["stitch"] = sr
    shot = shot_minutes(out)
    if shot:
        out["shot_minutes_300_frames"] = shot
        print(f"\nA 300-frame shot at {inp['G0'].img_resolution} px at these "
              f"rates, {PipelineConfig().pti.steps} PTI passes and up to "
              f"{PipelineConfig().stitch.steps} stitching steps per frame (minutes; "
              "alignment, inversion, edits and writing not included):")
        ref = shot.get("re-creation")
        for name, m in shot.items():
            vs = ""
            if ref and name != "re-creation":
                both = (ref["pti"] + ref["stitch"]) / (m["pti"] + m["stitch"])
                vs = (f"  ({ref['pti'] / m['pti']:.2f}x, "
                      f"{ref['stitch'] / m['stitch']:.2f}x, {both:.2f}x the "
                      "re-creation's")
                c = shot.get(CODE_ROW)
                if c and name != CODE_ROW:
                    code_x = (c["pti"] + c["stitch"]) / (m["pti"] + m["stitch"])
                    vs += f"; {code_x:.2f}x the STIT code's"
                vs += ")"
            print(f"  {name:<20} PTI {m['pti']:9.1f}  stitching {m['stitch']:9.1f}  "
                  f"both {m['pti'] + m['stitch']:9.1f}{vs}")
    out["load_average_end"] = list(os.getloadavg())
    out["failures"] = fails
    out["fused_epilogue"] = epilogue.enabled(dev)
    if epilogue.failure():  # the rows ran eagerly from the failure on
        print(f"warning: the fused epilogue failed and the rows ran it eagerly "
              f"from then on: {epilogue.failure()}")
    if args.memory:
        print("\nMemory of one step at the official size (1024 px), above the "
              "networks' own weights"
              + (" (CPU: peak resident-set growth, an estimate of GPU memory)"
                 if dev == "cpu" else "") + ":")
        out["memory"] = memory_table(dev, [1, 2])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    for f in fails:
        print(f, file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
