"""Per-stage throughput of the STIT pipeline, and a side-by-side ratio against the
reference's loop structure on the same inputs and networks.

What runs:

1. **The pipeline**, stage by stage in this process (track, align, invert, PTI,
   edit, stitching tuning, paste), on a real-face clip (scikit-image's astronaut,
   ``engine.commands.demo.astronaut_clip``) with the given profile: seconds and
   frames/s per stage.
2. **PTI, side by side**: our loop (:class:`engine.stages.pti.PTITuner`: mini-batches,
   cached LPIPS target features) against a faithful re-creation of the
   reference's (docs/reference.md "PTI": batch 1, in order, one Adam step per frame per
   pass, LPIPS on both images every step), same pivots, crops, generator, LPIPS,
   loss and number of passes.
3. **Temporal refinement, side by side**: our loop
   (:class:`engine.stages.refine.RefineTuner`: many (anchor, frame) pairs per step,
   cached source features, masks at the working size) against a re-creation of
   VideoEditGAN's (docs/reference.md "VideoEditGAN flow-based refinement": one pair
   per step, masks from LPIPS at the full resolution every step), same latents,
   crops, networks, flow (DIS) and epochs; frames (pairs) per minute per phase.
4. **Stitching tuning, side by side**: our batched per-frame generators
   (:class:`engine.stages.stitch_tune.BatchedStitcher`: stacked per-frame copies through
   one grouped forward) against
   the reference's loop (:func:`engine.stages.stitch_tune.tune_reference`: a deep copy
   of
   the generator and its own Adam per frame, docs/reference.md "Stitching tuning"),
   same edit styles,
   crops, masks and steps.

Ratios are reference seconds / our seconds for the same work (frames x passes,
frames x steps, or pairs x epochs). The loops run in turn, ``--repeat`` rounds
(default 3) after a short warm-up of each; printed are median seconds and the median
of the rounds' ratios, so a drift in the machine's speed between minutes does not
decide them.
FLOPs are counted with ``torch.utils.flop_counter`` on one reference step (the work
per frame-step is the same math in both), so achieved TFLOP/s = counted FLOPs x
frame-steps / seconds.

With ``--profile official`` and no official weights installed (or ``--synthetic``),
parts 2 to 4 run at the official size (1024 px generator, LPIPS AlexNet at 1024)
with random weights and random targets: speed does not depend on the weights. That
is the GPU measurement (frames per minute, TFLOP/s).

    python bench/pipeline.py --quick               # ~1.5 minutes on 2 idle CPU cores
    python bench/pipeline.py --quick --skip-pipeline --conv-time   # + the ceiling
    python bench/pipeline.py --frames 16 --pti-passes 10 --stitch-steps 30
    python bench/pipeline.py --refine-epochs 10,3       # the README's epochs
    python bench/pipeline.py --profile official --device cuda --frames 16

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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from engine.stages.batching import resolve_batch  # noqa: E402
from fsexchange.options import PipelineConfig  # noqa: E402
from engine.stages.pti import PTITuner, TargetCache, reconstruction_error  # noqa: E402
from engine.stages.stitch_tune import (BatchedStitcher, masked_loss,  # noqa: E402
                                tune_reference)



def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _side_by_side(ref: Callable[[], Any], ours: Callable[[str], Any],
                  warm: Callable[[str], Any], dtype: str, repeat: int, device: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference loop, ours in ``dtype`` and (when that is not float32) ours in
    float32 (the share of mixed precision), run in turn (A B C A B C ...) for
    ``repeat`` rounds after ``warm(dtype)`` of each of ours.

    Returns the last result of each (keys ``ref``, ``ours``, ``ours32``; ``ours32``
    is ``ours`` in a float32 run) and the timing figures: median seconds of each,
    and as ratios the median over rounds of the reference's seconds over ours in
    the same round. Rounds side by side keep a ratio honest when the machine's
    speed drifts (shared CPUs do, by 10-20 % between minutes)."""
    fns: dict[str, Callable[[], Any]] = {"ref": ref, "ours": lambda: ours(dtype)}
    if dtype != "float32":
        fns["ours32"] = lambda: ours("float32")
    for dt in ({dtype, "float32"} if "ours32" in fns else {dtype}):
        warm(dt)
    secs: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, Any] = {}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            last[name], t = _timed(fn, device)
            secs[name].append(t)
    secs.setdefault("ours32", secs["ours"])
    last.setdefault("ours32", last["ours"])
    med = {k: float(np.median(v)) for k, v in secs.items()}
    ratio = {k: float(np.median([a / b for a, b in zip(secs["ref"], v)]))
             for k, v in secs.items()}
    return last, {"rounds": repeat, "ref_seconds": med["ref"],
                  "ours_seconds": med["ours"], "ratio": ratio["ours"],
                  "ours_float32_seconds": med["ours32"],
                  "ratio_float32": ratio["ours32"]}


def _flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


class _ClockedConv(torch.autograd.Function):
    """One convolution (``conv2d`` or ``conv_transpose2d``) whose forward and
    backward add their seconds to ``clock.seconds``. Inputs arrive already in the
    autocast dtype (see :class:`timed_convolutions`)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                stride: list[int], padding: list[int], groups: int,
                transposed: bool, clock: "timed_convolutions") -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, groups, transposed, clock,
                    None if b is None else [b.shape[0]])
        conv = torch.nn.functional.conv_transpose2d if transposed else \
            torch.nn.functional.conv2d
        y, sec = _timed(lambda: conv(x, w, b, stride=stride, padding=padding,
                                     groups=groups), x.device.type)
        clock.seconds += sec
        return y

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

        # ops calls F.conv2d / F.conv_transpose2d through its module attribute F
        self._ops, self._F = ops, ops.F
        shim = types.SimpleNamespace(**{k: getattr(ops.F, k) for k in dir(ops.F)
                                        if not k.startswith("__")})
        shim.conv2d, shim.conv_transpose2d = self._conv(False), self._conv(True)
        ops.F = shim
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ops.F = self._F


# --- the reference's loops ---------------------------------------------------------


def reference_pti(G0: Any, lpips: Any, pivots: np.ndarray, targets: torch.Tensor,
                  passes: int, cfg: Any, device: str) -> Any:
    """STIT's PTI loop structure (docs/reference.md "PTI"): one in-order pass over all
    frames per step, batch 1, one Adam step per frame, LPIPS of both images."""
    G = copy.deepcopy(G0).train()
    G.synthesis.requires_grad_(True)
    opt = torch.optim.Adam(G.synthesis.parameters(), lr=cfg.lr)
    ws = torch.from_numpy(pivots).to(device)
    for _ in range(passes):
        for i in range(len(pivots)):
            img = G.synthesis(ws[i:i + 1])
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


def run_stages(work: Path, frames: int, options: dict[str, Any], device: str
               ) -> tuple[Path, list[dict[str, Any]]]:
    """The ``stitch`` pipeline up to paste-back on the astronaut clip, in a job
    folder, through the engine's own pipeline loop; per-stage timings."""
    from engine.media.samples import RATE, astronaut_clip
    from engine.stages.contract import StageContext
    from engine.stages.pipeline import run_pipeline, stages_for
    from fsexchange.client import build_job
    from fsexchange.documents import Edit, FrameRange, Source

    clip = astronaut_clip(work / "clip.mp4", frames)
    job = build_job(job_id="bench", source=Source(str(clip)),
                    range=FrameRange(0, frames, RATE), edits=(Edit("age", -4.0),),
                    options=options, host={"app": "bench/pipeline.py"})
    jd = work / "job"
    jd.mkdir()
    ctx = StageContext(job=job, job_dir=jd, config=PipelineConfig.from_options(
        options), device=device, media_roots=(work,))
    done = run_pipeline(stages_for("stitch", until="paste"), ctx)
    rows = [{"stage": doc.stage, "seconds": doc.seconds,
             "frames_per_second": frames / doc.seconds if doc.seconds else None,
             "loop_frames_per_second": doc.facts.get("frames_per_second")}
            for doc, _ in done]
    return jd, rows


def real_inputs(jd: Path, profile: str, device: str) -> dict[str, Any]:
    """Pivots, crops, masks, generators and edit styles from a finished job."""
    from engine.models.modelset import load_models
    from engine.stages.crops import crops_to_tensor
    from engine.stages.mask import stitch_masks
    from engine.stages.outputs import JobFiles
    from engine.stages.stitch_tune import load_edit_styles

    files = JobFiles(jd)
    models = load_models(profile, device=device)
    clip = files.align.clip()
    frames = files.invert.frames()
    pivots = files.invert.pivots()
    crops = [clip.crop(f) for f in frames]
    masks = [stitch_masks(clip.mask(f)) for f in frames]
    G_pti = files.pti.generator(device)
    styles = load_edit_styles(G_pti, files.edit, range(len(frames)), device)
    R = models.generator.img_resolution
    return {"G0": models.generator, "lpips": models.lpips, "pivots": pivots,
            "edit_latents": np.load(files.edit.latents_path).astype(np.float32),
            "crops": crops, "targets": crops_to_tensor(crops, R, device=device),
            "border": torch.from_numpy(np.stack([m[1] for m in masks])).to(device),
            "content": torch.from_numpy(np.stack([m[2] for m in masks])).to(device),
            "G_pti": G_pti, "styles": styles, "profile": models.profile}


def synthetic_inputs(frames: int, device: str, seed: int = 0) -> dict[str, Any]:
    """Official-size networks with random weights and random targets (speed only)."""
    from engine.nets.lpips import LPIPS
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

    torch.manual_seed(seed)
    G = Generator(**OFFICIAL_GENERATOR_KWARGS).to(device).eval().requires_grad_(False)
    lp = LPIPS("alex", backbone="random", heads="uniform", seed=seed).to(device)
    R = G.img_resolution
    with torch.no_grad():
        ws = G.mapping(torch.randn(frames, G.z_dim, device=device), truncation_psi=0.7)
        imgs = G.synthesis(ws).clamp(-1, 1)
    crops = [((im.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
             for im in imgs]
    yy, xx = np.mgrid[:R, :R]
    face = ((xx - R / 2) ** 2 / (0.3 * R) ** 2
            + (yy - R / 2) ** 2 / (0.38 * R) ** 2) < 1  # an oval "face" mask
    from engine.stages.mask import stitch_masks

    _, border, content = stitch_masks(face)
    with torch.no_grad():
        styles = [s.detach() for s in G.styles(ws + 0.3 * torch.randn_like(ws))]
    edit = 0.3 * torch.randn(1, G.num_ws, G.w_dim, device=device)  # one "direction"
    return {"G0": G, "lpips": lp, "pivots": ws.cpu().numpy().astype(np.float32),
            "edit_latents": (ws + edit).cpu().numpy().astype(np.float32),
            "crops": crops, "targets": imgs,
            "border": torch.from_numpy(np.stack([border] * frames)).to(device),
            "content": torch.from_numpy(np.stack([content] * frames)).to(device),
            "G_pti": G, "styles": styles, "profile": "official-size random"}


# --- side by side ------------------------------------------------------------------


def bench_pti(inp: dict[str, Any], cfg: Any, passes: int, device: str, dtype: str,
              repeat: int = 1) -> dict[str, Any]:
    n = len(inp["pivots"])
    cfg = replace(cfg, steps=passes)
    ref_cfg = replace(cfg, batch_size=1)

    def ours(dt: str) -> PTITuner:
        targets = TargetCache(_ArrayClip(inp["crops"]), inp["G0"].img_resolution,
                              device, inp["lpips"], limit=cfg.cache_frames)
        tuner = PTITuner(inp["G0"], inp["lpips"], inp["pivots"], range(n), targets,
                         cfg, device=device, dtype=dt)
        while not tuner.done:
            tuner.step()
        return tuner

    def ref() -> Any:
        return reference_pti(inp["G0"], inp["lpips"], inp["pivots"], inp["targets"],
                             passes, ref_cfg, device)

    # a short warm-up of each (allocator, kernels), then the timed rounds
    reference_pti(inp["G0"], inp["lpips"], inp["pivots"][:2], inp["targets"][:2], 1,
                  ref_cfg, device)
    last, timing = _side_by_side(ref, ours, lambda dt: _warm_pti(inp, cfg, device, dt),
                                 dtype, repeat, device)
    G_ref, tuner, tuner32 = last["ref"], last["ours"], last["ours32"]
    t_ref, t_ours = timing["ref_seconds"], timing["ours_seconds"]
    # the same reconstruction after the same passes: the speed-up is not bought with
    # a worse fit (lr scaled with the batch, engine/stages/pti.py); measured in float32
    err = {name: reconstruction_error(g, inp["lpips"], inp["pivots"], range(n),
                                      tuner.targets, device=device, batch_size=8)
           for name, g in (("before", inp["G0"]), ("ref", G_ref), ("ours", tuner.G),
                           ("ours_float32", tuner32.G))}
    G = copy.deepcopy(inp["G0"]).train()
    G.synthesis.requires_grad_(True)
    x = inp["targets"][:1]
    w = torch.from_numpy(inp["pivots"][:1]).to(device)

    def one_ref_step() -> None:
        img = G.synthesis(w)
        loss = (10 * (img - x).square().mean() + inp["lpips"](img, x).mean())
        loss.backward()

    flops = _flops(one_ref_step)
    work = n * passes
    return {"frames": n, "passes": passes, "batch": tuner.batch, "dtype": dtype,
            "lr_ref": ref_cfg.lr, "lr_ours": tuner.lr, "error": err, **timing,
            "ours_frames_per_minute": 60 * work / t_ours,
            "ref_frames_per_minute": 60 * work / t_ref,
            "flops_per_frame_step": flops,
            "ours_tflops": flops * work / t_ours / 1e12,
            "ref_tflops": flops * work / t_ref / 1e12}


def reference_refine(G0: Any, lp: Any, rin: Any, crops: torch.Tensor, cfg: Any,
                     device: str, seed: int = 0) -> tuple[Any, list[float]]:
    """VideoEditGAN's refinement loop structure (docs/reference.md "VideoEditGAN
    flow-based refinement"): one (anchor, frame) pair per optimiser step in a
    shuffled order per epoch; every step renders the frame and the anchor, takes
    their edited-region masks from spatial LPIPS against the aligned crops at the
    full resolution, and the sources' LPIPS features afresh. The losses are the
    engine's (:func:`engine.stages.refine.pair_losses`), so both loops do the same
    math per pair. Returns the tuned generator and the seconds of each phase."""
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


def _warm_pti(inp: dict[str, Any], cfg: Any, device: str, dtype: str) -> None:
    """One short pass of our PTI loop over one batch (allocator, kernels)."""
    b = min(len(inp["pivots"]), cfg.batch_size or 16)
    targets = TargetCache(_ArrayClip(inp["crops"][:b]), inp["G0"].img_resolution,
                          device, inp["lpips"], limit=cfg.cache_frames)
    tuner = PTITuner(inp["G0"], inp["lpips"], inp["pivots"][:b], range(b), targets,
                     replace(cfg, steps=1), device=device, dtype=dtype)
    while not tuner.done:
        tuner.step()


def bench_stitch(inp: dict[str, Any], cfg: Any, steps: int, device: str,
                 dtype: str, repeat: int = 1, conv_time: bool = False
                 ) -> dict[str, Any]:
    n = inp["targets"].shape[0]
    G = inp["G_pti"]
    cfg = replace(cfg, steps=steps, batch_size=resolve_batch(
        cfg.batch_size, "stitch", G.img_resolution, device, n))
    styles, target = inp["styles"], inp["targets"]
    border, content = inp["border"], inp["content"]

    def ours(dt: str) -> list[float]:
        stitcher = BatchedStitcher(G, cfg, dt)
        after: list[float] = []
        for i in range(0, n, cfg.batch_size):
            sl = slice(i, i + cfg.batch_size)
            r = stitcher.tune([s[sl] for s in styles], target[sl], border[sl],
                              content[sl])
            after += r.after
        return after

    def ref() -> list[float]:
        return tune_reference(G, styles, target, border, content, cfg).after

    # a 2-step warm-up of each on one batch, then the timed rounds
    tune_reference(G, [s[:1] for s in styles], target[:1], border[:1], content[:1],
                   replace(cfg, steps=2))
    b = slice(0, cfg.batch_size)

    def warm(dt: str) -> None:
        BatchedStitcher(G, replace(cfg, steps=2), dt).tune(
            [s[b] for s in styles], target[b], border[b], content[b])

    last, timing = _side_by_side(ref, ours, warm, dtype, repeat, device)
    ref_after, ours_after, ours32_after = last["ref"], last["ours"], last["ours32"]
    t_ref, t_ours = timing["ref_seconds"], timing["ours_seconds"]
    Gi = copy.deepcopy(G).train()
    Gi.synthesis.requires_grad_(True)
    st = [s[:1] for s in styles]

    def one_ref_step() -> None:
        img = Gi.synthesis_from_styles(st)
        (masked_loss(img, target[:1], border[:1])
         + 0.01 * masked_loss(img, target[:1], content[:1])).sum().backward()

    flops = _flops(one_ref_step)
    work = n * steps
    conv: dict[str, Any] = {}
    if conv_time:
        # one more run of each with its convolutions clocked: ms per frame-step
        for name, fn in (("ref", ref), ("ours", lambda: ours(dtype))):
            with timed_convolutions() as tc:
                after, total = _timed(fn, device)
            conv[f"{name}_conv_ms"] = 1e3 * tc.seconds / work
            conv[f"{name}_clocked_ms"] = 1e3 * total / work
            # the clock must not change the arithmetic
            conv[f"{name}_max_abs_diff_border_after"] = float(np.max(np.abs(
                np.array(after) - np.array(last[name]))))
        # the reference's step time (unclocked median) over our convolutions alone:
        # the ratio with every non-convolution cost of our step gone
        conv["ceiling_ratio"] = 1e3 * t_ref / work / conv["ours_conv_ms"]
    return {"frames": n, "steps": steps, "batch": cfg.batch_size, "dtype": dtype,
            **timing, **({"convolutions": conv} if conv else {}),
            "border_after": {"ref": float(np.mean(ref_after)),
                             "ours": float(np.mean(ours_after)),
                             "ours_float32": float(np.mean(ours32_after))},
            "max_abs_diff_border_after_float32": float(np.max(np.abs(
                np.array(ref_after) - np.array(ours32_after)))),
            "ours_frames_per_minute": 60 * n / t_ours,
            "ref_frames_per_minute": 60 * n / t_ref,
            "flops_per_frame_step": flops,
            "ours_tflops": flops * work / t_ours / 1e12,
            "ref_tflops": flops * work / t_ref / 1e12}


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


def _loop_rows(fig: dict[str, Any], ref: str, ours: str, dtype: str
               ) -> list[tuple[str, float, float]]:
    """``(name, median seconds, ratio)`` of the reference loop, ours in ``dtype``
    and ours in float32 (when ``dtype`` is not)."""
    rows = [(ref, fig["ref_seconds"], 1.0),
            (f"ours ({ours}, {dtype})", fig["ours_seconds"], fig["ratio"])]
    if dtype != "float32":
        rows.append((f"ours ({ours}, float32)", fig["ours_float32_seconds"],
                     fig["ratio_float32"]))
    return rows


def _print_rows(rows: list[tuple[str, float, float]], fig: dict[str, Any],
                work: int, unit: str, per_minute: int | None = None) -> None:
    """One line per loop ``(name, median seconds, ratio)``: seconds, ``unit`` per
    minute (``per_minute`` of them in the run, default ``work``), achieved TFLOP/s
    over ``work`` frame-steps, and the ratio to the reference loop (the median of
    the rounds' ratios)."""
    count = work if per_minute is None else per_minute
    for name, sec, ratio in rows:
        print(f"  {name:<44} {sec:7.2f} s  {60 * count / sec:8.1f} {unit}/min  "
              f"{fig['flops_per_frame_step'] * work / sec / 1e12:.4f} TFLOP/s  "
              f"ratio {ratio:.2f}x")


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
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--profile", choices=("tiny", "official", "auto"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pti-passes", type=int, default=10,
                   help="passes over all frames, both loops (reference default 80)")
    p.add_argument("--stitch-steps", type=int, default=30,
                   help="steps per frame, both loops (reference default 100)")
    p.add_argument("--refine-epochs", default="2,1", metavar="E1,E2",
                   help="temporal refinement epochs of phase 1 and 2, both loops "
                   "(the README's are 10,3)")
    p.add_argument("--pti-batch", type=int, help="our PTI mini-batch (default: "
                   "options default)")
    p.add_argument("--stitch-batch", type=int, help="our stitching batch (default: "
                   "options default)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"),
                   default="auto", help="our loops' precision (options.dtype; the "
                   "reference loops run float32)")
    p.add_argument("--synthetic", action="store_true",
                   help="official-size random networks for the side-by-side parts")
    p.add_argument("--skip-pipeline", action="store_true",
                   help="only the side-by-side loops")
    p.add_argument("--quick", action="store_true",
                   help="12 frames, 10 PTI passes, 30 stitching steps, refinement "
                   "2+1 epochs (about 2 minutes on 2 idle CPU cores)")
    p.add_argument("--memory", action="store_true",
                   help="also measure the memory of one PTI / stitching step at the "
                   "official size (batch 1 and 2; a few minutes on a CPU)")
    p.add_argument("--memory-probe", nargs=4, metavar=("KIND", "BATCH", "CKPT",
                                                       "DEVICE"),
                   help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=3,
                   help="timed rounds of the side-by-side loops, run in turn; "
                   "medians are printed (default 3)")
    p.add_argument("--conv-time", action="store_true",
                   help="also run each stitching loop once with its convolutions "
                   "clocked: their share of a step, and the ratio no loop "
                   "structure can pass (the reference's step over our convolutions)")
    p.add_argument("--json", type=Path, help="also write the figures here")
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
    if args.quick:
        args.frames, args.pti_passes, args.stitch_steps = 12, 10, 30
        args.refine_epochs = "2,1"
    try:
        e1, e2 = (int(v) for v in args.refine_epochs.split(","))
    except ValueError:
        p.error("--refine-epochs must be E1,E2, e.g. 10,3")
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if args.draft:
        return run_draft_bench(args, dev)
    os.environ.setdefault("FACESTITCH_HOME", str(Path(tempfile.gettempdir())
                                                 / "facestitch-bench-home"))
    from engine.models.store import resolve_profile

    profile = resolve_profile(args.profile)
    synthetic = args.synthetic or (args.profile == "official"
                                   and resolve_profile("auto") != "official")
    cfg = PipelineConfig.from_options({})
    pti_cfg, st_cfg = cfg.pti, cfg.stitch
    if args.pti_batch:
        pti_cfg = replace(pti_cfg, batch_size=args.pti_batch)
    if args.stitch_batch:
        st_cfg = replace(st_cfg, batch_size=args.stitch_batch)
    options = {"profile": profile, "pti": {"steps": args.pti_passes,
                                           "batch_size": pti_cfg.batch_size},
               "stitch": {"steps": args.stitch_steps,
                          "batch_size": st_cfg.batch_size},
               "refine": {"epochs_w": e1, "epochs_g": e2}}
    print(f"device {dev}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, networks: "
          + ("official size (1024 px), random weights" if synthetic
             else f"{profile} profile"))
    load = os.getloadavg()[0]
    if dev == "cpu" and load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other "
              "processes compete for the CPU, timings are noisy")
    out: dict[str, Any] = {"device": dev, "profile": profile, "frames": args.frames}
    work = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    try:
        if synthetic:
            inp = synthetic_inputs(args.frames, dev)
        else:
            jd, rows = run_stages(work, args.frames, options, dev)
            if not args.skip_pipeline:
                print(f"\nPipeline, {args.frames} frames, PTI {args.pti_passes} passes "
                      f"(batch {pti_cfg.batch_size or 'auto'}), stitching "
                      f"{args.stitch_steps} steps (batch "
                      f"{st_cfg.batch_size or 'auto'}):")
                print(f"  {'stage':<12} {'seconds':>8} {'frames/s':>9} "
                      f"{'loop frames/s':>14}")
                for r in rows:
                    lf = r["loop_frames_per_second"]
                    print(f"  {r['stage']:<12} {r['seconds']:8.2f} "
                          f"{r['frames_per_second']:9.2f} "
                          f"{(f'{lf:.1f}' if lf else ''):>14}")
                out["stages"] = rows
            inp = real_inputs(jd, profile, dev)
        from engine.devices import resolve_dtype

        dtype = resolve_dtype(args.dtype, dev)
        print(f"\nPTI, {args.frames} frames x {args.pti_passes} passes, same pivots, "
              f"crops, networks (medians of {args.repeat} rounds, loops in turn):")
        pr = bench_pti(inp, pti_cfg, args.pti_passes, dev, dtype, args.repeat)
        rows = _loop_rows(pr, "reference loop (batch 1, float32)",
                          f"batch {pr['batch']}, cached LPIPS", dtype)
        _print_rows(rows, pr, args.frames * args.pti_passes, "frame-passes")
        e = pr["error"]
        print("  reconstruction MSE / LPIPS (float32): "
              + "; ".join(f"{k} {v['mse']:.4f} / {v['lpips']:.4f}"
                          for k, v in e.items())
              + f"  (lr: reference {pr['lr_ref']:.1e}, ours {pr['lr_ours']:.1e})")
        print(f"\nTemporal refinement, {args.frames} frames ({args.frames - 1} "
              f"pairs) x {e1}+{e2} epochs, same latents, crops, networks, DIS flow "
              f"(medians of {args.repeat} rounds):")
        rr = bench_refine(inp, cfg.refine, (e1, e2), dev, dtype, args.repeat)
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
        print(f"\nStitching tuning, {args.frames} frames x {args.stitch_steps} steps "
              f"(medians of {args.repeat} rounds):")
        sr = bench_stitch(inp, st_cfg, args.stitch_steps, dev, dtype, args.repeat,
                          conv_time=args.conv_time)
        rows = _loop_rows(sr, "reference loop (deep copy + Adam per frame)",
                          f"stacked copies, batch {sr['batch']}", dtype)
        _print_rows(rows, sr, args.frames * args.stitch_steps, "frames",
                    per_minute=args.frames)
        b = sr["border_after"]
        print(f"  border loss after tuning (mean): reference {b['ref']:.5f}, ours "
              f"{b['ours']:.5f}, ours float32 {b['ours_float32']:.5f} (max |ours "
              f"float32 - reference| per frame "
              f"{sr['max_abs_diff_border_after_float32']:.1e})")
        if "convolutions" in sr:
            c = sr["convolutions"]
            print(f"  convolutions, clocked inside the loops (ms per frame-step): "
                  f"reference {c['ref_conv_ms']:.2f} of {c['ref_clocked_ms']:.2f}, "
                  f"ours {c['ours_conv_ms']:.2f} of {c['ours_clocked_ms']:.2f}; with "
                  f"nothing but our convolutions left: {c['ceiling_ratio']:.2f}x")
        both = (pr["ref_seconds"] + sr["ref_seconds"]) / (pr["ours_seconds"]
                                                         + sr["ours_seconds"])
        both32 = (pr["ref_seconds"] + sr["ref_seconds"]) / (
            pr["ours_float32_seconds"] + sr["ours_float32_seconds"])
        print(f"\nPTI + stitching together: ratio {both:.2f}x ({dtype})"
              + (f", {both32:.2f}x in float32" if dtype != "float32" else ""))
        out.update(pti=pr, stitch=sr, refine=rr, combined_ratio=both,
                   combined_ratio_float32=both32, dtype=dtype)
        if args.memory:
            print("\nMemory of one step at the official size (1024 px), above the "
                  "networks' own weights"
                  + (" (CPU: peak resident-set growth, an estimate of GPU memory)"
                     if dev == "cpu" else "") + ":")
            out["memory"] = memory_table(dev, [1, 2])
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
