"""Temporal refinement: VideoEditGAN's flow-based two-phase optimisation (Xu,
AlBahar, Huang, ECCV 2022; docs/reference.md "VideoEditGAN flow-based refinement"),
between ``edit`` and ``stitch_tune``.

The edited clip flickers where the per-frame inversions differ. Every frame is
paired with an anchor (the middle frame, the reference's index rule), the flow
between the two *generated* aligned frames is computed in both directions at
``1/flow_scale`` of the generator resolution, and a masked photometric loss pulls
each frame towards the anchor warped onto it (and back):

- **phase 1** trains a StyleCLIP levels mapper (:class:`engine.nets.mapper.
  LevelsMapper`): ``w' = w_edit + s · mapper(w_edit)`` with ``s`` 0.04; the PTI
  generator is frozen. Loss ``photo + λ_reg · (mean|mapper(w)| + mean|mapper(w_a)|)
  + λ_cycle · cycle + λ_out · preservation`` (+ flow TV, weight 0 by default).
- **phase 2** tunes a copy of the PTI generator at the fixed latents of phase 1
  (its last ``freeze_fine_layers`` W+ layers frozen) with ``photo + λ_cycle · cycle
  + λ_out · preservation + λ_G · R``, R being PTI's locality regulariser around
  the anchor latent (α 30, ψ 0.5, 0.1·L2 + 0.1·LPIPS).

Terms, for a pair (anchor ``A``, frame ``X``) at the working size (per pair,
then averaged over the pairs of a step):

- flows ``F_ax = flow(A, X)``, ``F_xa = flow(X, A)`` (``a(p) ≈ b(p + f(p))``);
  forward–backward errors ``e_x = ‖F_xa + F_ax∘(p + F_xa)‖`` on X's grid and
  ``e_a`` on A's; visibility ``exp(-k·e)`` (k 5);
- edited-region masks: spatial LPIPS of a generated frame against its aligned
  source crop (a soft weight, detached), ``m_a`` for the anchor, ``m_x`` for the
  frame; ``V_x = clamp(exp(-k e_x) + warp(m_a → X), 0, 1)`` in phase 1 and
  ``clamp(exp(-k e_x) + m_x, 0, 1)`` in phase 2; ``V_a = clamp(exp(-k e_a) + m_a,
  0, 1)``; samples warped from outside the image get weight 0;
- ``photo = Σ LPIPS(X, warp(A → X))·V_x / Σ V_x + Σ LPIPS(A, warp(X → A))·V_a /
  Σ V_a`` (spatial LPIPS);
- ``preservation = Σ LPIPS(X, src_x)·(1 − warp(m_a → X))⁴ / Σ (…)⁴`` (phase 2 adds
  the anchor's own term with ``(1 − m_a)⁴``);
- ``cycle = Σ V·|e| / Σ V`` in both directions.

With RAFT weights installed (``raft-things.pth`` or torchvision's port,
:func:`engine.quality.flow.load_raft`) the flows run inside the autograd graph as
in the reference; without them OpenCV DIS runs on the detached frames, recomputed
every step (then the cycle and TV terms carry no gradient). Which one ran is in
the stage's facts, ``summary.json`` and the report.

What FaceStitch does differently (docs/pipeline.md "Temporal refinement"): many
pairs per optimiser step (``batch_size``, learning rates scaled by it), the
anchor re-rendered at each frame's edit strength so that keyframed edits keep
their curve, masks and losses at the working size, images in [-1, 1] for LPIPS.

``RefineStage`` writes into ``stages/refine/`` (read back through
``ctx.files.refine``): ``latents.npy`` (refined W+, rows as ``frames.json``),
``styles.npz`` (S-space edits: the refined generator's styles plus the edit),
``generator.pt`` (+ ``.json``), ``summary.json`` (losses per step, settings, and
the warping error and LPIPS-to-direct-edit of the aligned edited frames before and
after), ``scanline_{source,before,after}.png`` (x–t slices through the middle row
of the face) and ``preview/``. ``checkpoint.pt`` holds the resumable state while it
runs (every ``checkpoint_every`` epochs, every ``checkpoint_seconds``, at the phase
boundary and when stopped).

Determinism: the mapper starts from ``options.seed``; epoch ``e`` of phase ``p``
visits the pairs in a permutation seeded by ``(seed, p, e)`` and the regulariser's
samples are seeded by ``(seed, p, e, batch)``, so a resumed run takes the steps an
uninterrupted one takes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes
from fsexchange.options import RefineConfig

from engine.stages.batching import training_settings
from engine.stages.contract import (Stage, StageAborted, StageContext, load_checkpoint,
                                    save_checkpoint)
from engine.stages.crops import (chunks, preview_frames, save_npy, tensor_to_image,
                                 write_png, write_previews)
from engine.stages.recipe import job_recipe, recipe_dtype

if TYPE_CHECKING:
    import torch

    from engine.nets.stylegan2 import Generator

__all__ = ["RefineStage", "RefineTuner", "RefineInputs", "anchor_index",
           "working_size", "frozen_layer_names", "evaluate_refinement",
           "FlowSource", "make_flow", "pair_losses"]

log = logging.getLogger(__name__)

SCANLINE_ROW = 0.5  # fraction of the crop height: the x–t slice's row


def anchor_index(n: int) -> int:
    """The reference's anchor: ``n/2 − 1`` for even ``n``, ``⌊n/2⌋`` for odd
    (docs/reference.md "Anchor and masks")."""
    return n // 2 - 1 if n % 2 == 0 else n // 2


def working_size(resolution: int, cfg: RefineConfig) -> int:
    """Flow and loss size: ``R / flow_scale``, at least ``min_flow_size`` (LPIPS-alex
    and DIS need room; only the 64 px tiny profile reaches the floor), at most R."""
    return int(min(resolution, max(resolution // max(cfg.flow_scale, 1),
                                   cfg.min_flow_size)))


def frozen_layer_names(G: "Generator", k: int) -> set[str]:
    """``block.layer`` names (``b256.conv0``…) of the synthesis layers whose style
    comes from one of the last ``k`` W+ layers (ToRGB layers share the index of
    the next block's first conv, NVIDIA's indexing)."""
    first = G.num_ws - max(int(k), 0)
    return {f"{block}.{name}" for block, name, _, idx in G.synthesis.style_layers
            if idx >= first}


# --- inputs ---------------------------------------------------------------------------


@dataclass
class RefineInputs:
    """What the refinement works on, one row per frame (``frames``).

    Attributes:
        frames: source frame numbers of the rows.
        latents: the direct edit's W+ latents ``[N, num_ws, w_dim]`` float32.
        offsets: each row's edit offset in W+ (``latents − pivots`` after
            ``freeze_fine_layers``), ``[N, num_ws, w_dim]``.
        style_offsets: S-space edits per style layer ``[N, C_l]`` (None without).
        anchor: the anchor's row.
    """

    frames: list[int]
    latents: np.ndarray
    offsets: np.ndarray
    style_offsets: list[np.ndarray] | None
    anchor: int

    def anchor_groups(self, rows: Sequence[int], matched: bool
                      ) -> tuple[list[int], np.ndarray]:
        """The anchors that pairs ``rows`` need, de-duplicated.

        With ``matched`` the anchor is rendered at each frame's edit strength (the
        anchor's pivot plus that frame's offsets), so frames with the same offsets
        share one; else every pair has the anchor's own edit (the reference).

        Returns:
            ``(key rows, index [B])``: the row whose offsets each distinct anchor
            takes, and which of them pair ``j`` uses.
        """
        if not matched:
            return [self.anchor], np.zeros(len(rows), dtype=np.int64)
        _, first, inverse = self.unique_keys(rows)
        return [int(r) for r in first], inverse

    def anchor_latents(self, key_rows: Sequence[int]) -> np.ndarray:
        """The anchor's pivot plus the offsets of ``key_rows`` ``[U, L, D]`` (the
        anchor's own latent for its own row)."""
        base = self.latents[self.anchor] - self.offsets[self.anchor]
        return base[None] + self.offsets[list(key_rows)]

    def unique_keys(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray,
                                                        np.ndarray]:
        """Rows with distinct edit offsets (W and S): ``(keys, first row of each,
        inverse index [B])``."""
        parts = [self.offsets[list(rows)].reshape(len(rows), -1)]
        if self.style_offsets is not None:
            parts += [s[list(rows)] for s in self.style_offsets]
        flat = np.concatenate(parts, axis=1)
        keys, idx, inverse = np.unique(flat, axis=0, return_index=True,
                                       return_inverse=True)
        return keys, np.asarray(rows)[idx], inverse.reshape(-1).astype(np.int64)

    def styles_of(self, rows: Sequence[int]) -> list[np.ndarray] | None:
        if self.style_offsets is None:
            return None
        return [s[list(rows)] for s in self.style_offsets]


def _render(G: "Generator", ws: "torch.Tensor", ds: list[np.ndarray] | None,
            dtype: str = "float32") -> "torch.Tensor":
    """``G`` at ``ws`` ``[B, L, D]``, plus S-space offsets ``ds`` (per layer
    ``[B, C_l]``) when the job has S edits; float32 ``[B, 3, R, R]``."""
    import torch

    from engine.stages.pti import autocast

    with autocast(str(ws.device), dtype):
        if ds is None:
            img = G.synthesis(ws)
        else:
            styles = [s + torch.from_numpy(d).to(s.device, s.dtype)
                      for s, d in zip(G.styles(ws), ds)]
            img = G.synthesis_from_styles(styles)
    return img.float()


def _shrink(img: "torch.Tensor", size: int) -> "torch.Tensor":
    """``[B, C, R, R]`` -> ``[B, C, size, size]`` (area: the mean of each cell)."""
    import torch.nn.functional as F

    if img.shape[-1] == size:
        return img
    return F.interpolate(img, size=(size, size), mode="area")


# --- flow -----------------------------------------------------------------------------


class FlowSource:
    """Flows both ways between batched image tensors at the working size.

    ``kind`` "raft": RAFT-large inside the autograd graph (``iters`` updates);
    "dis": OpenCV DIS (preset MEDIUM) on the detached frames as 8-bit grey.
    ``name`` says which (results and the report)."""

    def __init__(self, kind: str, name: str, net: Any = None, iters: int = 20
                 ) -> None:
        self.kind, self.name, self.net, self.iters = kind, name, net, iters
        self._dis = None

    def __call__(self, a: "torch.Tensor", x: "torch.Tensor"
                 ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(flow(a, x), flow(x, a))``, ``[B, 2, S, S]`` each, for ``a, x``
        ``[B, 3, S, S]`` in [-1, 1]."""
        import torch

        if self.kind == "raft":
            from engine.quality.flow import raft_flow

            a255, x255 = (a + 1) * 127.5, (x + 1) * 127.5  # RAFT takes [0, 255]
            both = raft_flow(self.net, torch.cat([a255, x255]),
                             torch.cat([x255, a255]), self.iters)
            return both[:a.shape[0]], both[a.shape[0]:]
        from engine.quality.flow import OpenCVFlow

        if self._dis is None:
            self._dis = OpenCVFlow("dis")
        fw, bw = [], []
        for ai, xi in zip(_to_uint8(a), _to_uint8(x)):
            f, b = self._dis.pair(ai, xi)
            fw.append(f)
            bw.append(b)
        dev = a.device
        return (torch.from_numpy(np.stack(fw)).permute(0, 3, 1, 2).to(dev),
                torch.from_numpy(np.stack(bw)).permute(0, 3, 1, 2).to(dev))


def _to_uint8(x: "torch.Tensor") -> list[np.ndarray]:
    """``[B, 3, S, S]`` in [-1, 1] -> B HxWx3 uint8 images (detached)."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return list(a.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8))


def make_flow(cfg: RefineConfig, device: str,
              warn: Callable[[str], None] | None = None) -> FlowSource:
    """The flow of ``cfg.flow``: "auto" and "raft" take RAFT when its weights are
    installed; without them both fall back to DIS with a warning (nothing is ever
    downloaded); "dis" is DIS."""
    from fsexchange.errors import ModelMissing

    from engine.quality.flow import load_raft

    if cfg.flow in ("auto", "raft"):
        try:
            net, name = load_raft(device=device)
            return FlowSource("raft", name + " (in the autograd graph)", net,
                              cfg.raft_iters)
        except ModelMissing:
            msg = ("temporal refinement used OpenCV DIS flow on detached frames: RAFT "
                   "weights (raft-things.pth) are not installed in the model store, "
                   "so the flow could not run inside the autograd graph as in the "
                   "reference (nothing is downloaded; see docs/models.md)")
            log.warning(msg)
            if warn is not None:
                warn(msg)
    return FlowSource("dis", "opencv-dis-medium (detached, every step)")


# --- losses ---------------------------------------------------------------------------


def _masked_mean(values: "torch.Tensor", weight: "torch.Tensor") -> "torch.Tensor":
    """``Σ values·weight / Σ weight`` per pair, ``[B]``."""
    return ((values * weight).sum(dim=(1, 2, 3))
            / weight.sum(dim=(1, 2, 3)).clamp_min(1e-8))


def _tv(flow: "torch.Tensor") -> "torch.Tensor":
    return ((flow[..., 1:, :] - flow[..., :-1, :]).abs().mean(dim=(1, 2, 3))
            + (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean(dim=(1, 2, 3)))


def pair_losses(lpips: Any, cfg: RefineConfig, phase: int, X: "torch.Tensor",
                A: "torch.Tensor", src_x: tuple["torch.Tensor", list["torch.Tensor"]],
                src_a: tuple["torch.Tensor", list["torch.Tensor"]],
                flow: FlowSource, mask_a: "torch.Tensor | None" = None,
                X0: "torch.Tensor | None" = None, A0: "torch.Tensor | None" = None,
                mask_x: "torch.Tensor | None" = None) -> dict[str, "torch.Tensor"]:
    """The flow-based terms for B pairs at the working size, each ``[B]``.

    Args:
        X, A: the frames and their anchors ``[B, 3, S, S]`` in [-1, 1] (in the
            graph).
        src_x, src_a: aligned source crops at S and their LPIPS feature maps.
        mask_a: the anchors' edited-region masks ``[B, 1, S, S]``; None: from
            ``A`` itself (phase 1). Phase 2 passes the frozen generator's.
        X0, A0: the frozen generator's frames and anchors, for the in-mask term.
        mask_x: the frames' masks in phase 2; None: from ``X`` at the working size
            (the reference computes them at the full resolution).

    Returns:
        ``photo``, ``photo_l1``, ``cycle``, ``tv``, ``out`` (preservation) and
        ``inmask`` (terms whose weight is 0 are zeros, not computed).
    """
    import torch

    from engine.quality.flow import fb_error, warp_tensor

    size = (X.shape[-2], X.shape[-1])
    fx, fa = lpips.feature_maps(X), lpips.feature_maps(A)
    lp_x_src = lpips.spatial_from_features(fx, src_x[1], size)  # [B, 1, S, S]
    lp_a_src = lpips.spatial_from_features(fa, src_a[1], size)
    if mask_a is None:
        mask_a = lp_a_src.detach()
    mask_a = mask_a.clamp(0, 1)
    f_ax, f_xa = flow(A, X)
    A_on_x, in_x = warp_tensor(A, f_xa)  # the anchor seen from frame X
    X_on_a, in_a = warp_tensor(X, f_ax)
    mask_a_x, _ = warp_tensor(mask_a, f_xa)
    e_x, e_a = fb_error(f_xa, f_ax), fb_error(f_ax, f_xa)
    k = cfg.visibility_k
    if phase == 1:
        extra = mask_a_x
    else:
        extra = (lp_x_src if mask_x is None else mask_x).detach().clamp(0, 1)
    v_x = (torch.exp(-k * e_x) + extra).clamp(0, 1) * in_x
    v_a = (torch.exp(-k * e_a) + mask_a).clamp(0, 1) * in_a
    lp_x = lpips.spatial_from_features(fx, lpips.feature_maps(A_on_x), size)
    lp_a = lpips.spatial_from_features(fa, lpips.feature_maps(X_on_a), size)
    out: dict[str, torch.Tensor] = {
        "photo": _masked_mean(lp_x, v_x) + _masked_mean(lp_a, v_a),
        "photo_l1": X.new_zeros(X.shape[0]),
        "cycle": _masked_mean(e_a.abs(), v_a) + _masked_mean(e_x.abs(), v_x)}
    if cfg.weight_photo_l1 > 0:
        out["photo_l1"] = (
            _masked_mean((X - A_on_x).abs().mean(dim=1, keepdim=True), v_x)
            + _masked_mean((A - X_on_a).abs().mean(dim=1, keepdim=True), v_a))
    zero = X.new_zeros(X.shape[0])
    out["tv"] = _tv(f_ax) + _tv(f_xa) if cfg.weight_tv_flow > 0 else zero
    keep_x = (1 - mask_a_x.clamp(0, 1)) ** 4
    pres = _masked_mean(lp_x_src, keep_x)
    if phase == 2:
        pres = pres + _masked_mean(lp_a_src, (1 - mask_a) ** 4)
    out["out"] = pres
    if phase == 2 and cfg.weight_in_mask > 0 and X0 is not None and A0 is not None:
        lx0 = lpips.spatial_from_features(fx, lpips.feature_maps(X0), size)
        la0 = lpips.spatial_from_features(fa, lpips.feature_maps(A0), size)
        out["inmask"] = _masked_mean(lx0, mask_a_x ** 4) + _masked_mean(la0,
                                                                         mask_a ** 4)
    else:
        out["inmask"] = zero
    return out


def _record(loss: "torch.Tensor", terms: dict[str, "torch.Tensor"],
            reg: "torch.Tensor") -> dict[str, float]:
    """A step's loss terms as floats (means over its pairs) for ``summary.json``."""
    out = {"loss": float(loss.detach()), "reg": float(reg.detach())}
    out.update({k: float(v.detach().mean()) for k, v in terms.items()})
    return out


# --- the loop -------------------------------------------------------------------------


class RefineTuner:
    """Both phases over one clip, independent of job folders (the stage and the
    benchmark use it).

    Args:
        G: the PTI generator (not modified; phase 2 tunes a copy).
        lpips: LPIPS with ``feature_maps`` / ``spatial_from_features``.
        inputs: :class:`RefineInputs`.
        sources: ``batch(frames) -> (crops [B, 3, S, S], LPIPS feature maps)`` at
            the working size (a :class:`engine.stages.pti.TargetCache`).
        cfg: ``RefineConfig`` (its ``batch_size`` resolved, > 0).
        flow: :class:`FlowSource`.
        seed: ``options.seed``.

    Attributes:
        state: position and loss record (JSON-able): ``phase`` (1, 2, 3 = done),
        ``epoch``, ``batch``, ``steps`` (per step: phase, epoch, loss terms),
        ``seconds`` and ``pairs`` per phase.
    """

    def __init__(self, G: "Generator", lpips: Any, inputs: RefineInputs, sources: Any,
                 cfg: RefineConfig, flow: FlowSource, *, seed: int = 0,
                 device: str = "cpu", dtype: str = "float32") -> None:
        import torch

        from engine.nets.mapper import LevelsMapper

        self.G0 = G.eval().requires_grad_(False)
        self.lpips, self.inputs, self.sources = lpips, inputs, sources
        self.cfg, self.flow, self.seed = cfg, flow, seed
        self.device, self.dtype = device, dtype
        self.size = working_size(G.img_resolution, cfg)
        self.batch = max(1, int(cfg.batch_size))
        n = len(inputs.frames)
        self.others = [i for i in range(n) if i != inputs.anchor]
        self.n_batches = math.ceil(len(self.others) / self.batch) if self.others else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mapper = LevelsMapper(G.w_dim, G.num_ws,
                                       zero_last=cfg.mapper_zero_init).to(device)
        self.opt_w = torch.optim.Adam(self.mapper.parameters(), lr=self._lr(1, 0))
        self.G: "Generator | None" = None  # phase 2's copy
        self.opt_g: Any = None
        self.latents: np.ndarray | None = None  # phase 1's output, frames' rows
        self.anchors: np.ndarray | None = None  # phase 1's output, matched anchors
        self.state: dict[str, Any] = {"phase": 1, "epoch": 0, "batch": 0,
                                      "steps": [], "seconds": [0.0, 0.0],
                                      "pairs": [0, 0]}
        self._masks: dict[int, "torch.Tensor"] = {}
        if not self.others or self.n_batches == 0:
            self.state["phase"] = 3

    # -- bookkeeping --

    @property
    def epochs(self) -> tuple[int, int]:
        return self.cfg.epochs_w, self.cfg.epochs_g

    @property
    def total_steps(self) -> int:
        return sum(self.epochs) * self.n_batches

    @property
    def steps_done(self) -> int:
        st = self.state
        if st["phase"] >= 3:
            return self.total_steps
        before = self.epochs[0] * self.n_batches if st["phase"] == 2 else 0
        return before + st["epoch"] * self.n_batches + st["batch"]

    @property
    def done(self) -> bool:
        return self.state["phase"] >= 3

    def _lr(self, phase: int, epoch: int) -> float:
        """Base lr x pairs per step (linear scaling) x StepLR's decay at ``epoch``."""
        cfg = self.cfg
        base, step = ((cfg.lr_w, cfg.lr_step_epochs_w) if phase == 1
                      else (cfg.lr_g, cfg.lr_step_epochs_g))
        scale = self.batch if cfg.lr_batch_scaling else 1
        return base * scale * cfg.lr_gamma ** (epoch // max(step, 1))

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": json.dumps(self.state),
                               "mapper": self.mapper.state_dict(),
                               "opt_w": self.opt_w.state_dict()}
        if self.G is not None:
            out["generator"] = self.G.state_dict()
            out["opt_g"] = self.opt_g.state_dict()
        return out

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.state = json.loads(saved["state"])
        self.mapper.load_state_dict(saved["mapper"])
        self.opt_w.load_state_dict(saved["opt_w"])
        if self.state["phase"] >= 2:
            self._start_phase2()
            if "generator" in saved:
                self.G.load_state_dict(saved["generator"])  # type: ignore[union-attr]
                self.opt_g.load_state_dict(saved["opt_g"])
                self.conv_order.restore_moments(self.opt_g.state)

    # -- phase 1 --

    def _mapped(self, lat: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(w + s·mapper(w), mapper(w))`` for latents ``[B, L, D]``."""
        import torch

        w = torch.from_numpy(np.ascontiguousarray(lat)).to(self.device)
        delta = self.mapper(w)
        return w + self.cfg.residual_scale * delta, delta

    def _step1(self, rows: list[int]) -> dict[str, float]:
        import torch

        cfg, inp = self.cfg, self.inputs
        keys, a_idx = inp.anchor_groups(rows, cfg.strength_matched_anchor)
        w_x, d_x = self._mapped(inp.latents[rows])
        w_a, d_a = self._mapped(inp.anchor_latents(keys))
        X = _shrink(_render(self.G0, w_x, inp.styles_of(rows), self.dtype), self.size)
        A = _shrink(_render(self.G0, w_a, inp.styles_of(keys), self.dtype),
                    self.size)[torch.from_numpy(a_idx).to(self.device)]
        src_x = self.sources.batch([inp.frames[i] for i in rows])
        src_a = self._anchor_source(len(rows))
        terms = pair_losses(self.lpips, cfg, 1, X, A, src_x, src_a, self.flow)
        reg = d_x.abs().mean() + d_a.abs().mean()
        loss = (cfg.weight_photo * terms["photo"].mean()
                + cfg.weight_photo_l1 * terms["photo_l1"].mean()
                + cfg.reg_frame * reg + cfg.weight_cycle * terms["cycle"].mean()
                + cfg.weight_tv_flow * terms["tv"].mean()
                + cfg.weight_out_mask_w * terms["out"].mean())
        self.opt_w.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_w.step()
        return _record(loss, terms, reg)

    def _anchor_source(self, b: int) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        crop, feats = self.sources.batch([self.inputs.frames[self.inputs.anchor]])
        return (crop.expand(b, -1, -1, -1),
                [t.expand(b, *t.shape[1:]) for t in feats])

    def _finish_phase1(self) -> None:
        """Phase 1's latents for every frame and, in the same rows, every
        strength-matched anchor (the edit latents themselves when phase 1 has no
        epochs: an untrained mapper is not applied)."""
        import torch

        inp, n = self.inputs, len(self.inputs.frames)
        lat = inp.latents.copy()
        anc = inp.anchor_latents(range(n)).astype(np.float32)
        if self.cfg.epochs_w > 0:
            with torch.no_grad():
                for rows in chunks(range(n), 64):
                    rows = list(rows)
                    lat[rows] = self._mapped(lat[rows])[0].cpu().numpy()
                    anc[rows] = self._mapped(anc[rows])[0].cpu().numpy()
        if not self.cfg.strength_matched_anchor:
            anc[:] = lat[inp.anchor]
        self.latents, self.anchors = lat, anc

    # -- phase 2 --

    def _start_phase2(self) -> None:
        import torch

        from engine.nets.stylegan2 import ConvOrderWeights
        from engine.stages.pti import _fused_adam_ok

        self._finish_phase1()
        self.G = copy.deepcopy(self.G0)
        self.G.requires_grad_(False)
        frozen = frozen_layer_names(self.G, self.cfg.freeze_fine_layers)
        for name, p in self.G.synthesis.named_parameters():
            layer = ".".join(name.split(".")[:2])
            p.requires_grad_(layer not in frozen)
        # conv weights in their convolutions' memory order, Adam over the
        # contiguous aliases (as PTI; engine/nets/stylegan2.py)
        self.conv_order = ConvOrderWeights(self.G.synthesis)
        params = self.conv_order.optimised(
            [p for p in self.G.synthesis.parameters() if p.requires_grad])
        self.opt_g = torch.optim.Adam(params, lr=self._lr(2, 0), betas=(0.9, 0.999),
                                      fused=_fused_adam_ok(self.device))

    def _anchor_mask(self, keys: list[int]) -> "torch.Tensor":
        """Phase 2's anchor masks: the frozen generator at the anchor latents of
        ``keys`` against the anchor's source crop, ``[U, 1, S, S]``. Constant in
        phase 2, so the first ``cache_frames`` are kept."""
        import torch

        assert self.anchors is not None
        need = [r for r in keys if r not in self._masks]
        fresh: dict[int, torch.Tensor] = {}
        if need:
            with torch.no_grad():
                ws = torch.from_numpy(self.anchors[need]).to(self.device)
                A0 = _shrink(_render(self.G0, ws, self.inputs.styles_of(
                    self._style_keys(need)), self.dtype), self.size)
                _, feats = self._anchor_source(len(need))
                m = self.lpips.spatial_from_features(self.lpips.feature_maps(A0),
                                                     feats, (self.size, self.size))
            for r, mi in zip(need, m):
                fresh[r] = mi
                if len(self._masks) < self.cfg.cache_frames:
                    self._masks[r] = mi
        return torch.stack([self._masks[r] if r in self._masks else fresh[r]
                            for r in keys])

    def _style_keys(self, keys: list[int]) -> list[int]:
        """Rows whose S offsets the anchors of ``keys`` take."""
        return keys if self.cfg.strength_matched_anchor else [self.inputs.anchor] * len(
            keys)

    def _step2(self, rows: list[int], seed: list[int]) -> dict[str, float]:
        import torch

        from engine.stages.pti import _locality_loss

        cfg, inp, G = self.cfg, self.inputs, self.G
        assert G is not None and self.latents is not None and self.anchors is not None
        keys, a_idx = inp.anchor_groups(rows, cfg.strength_matched_anchor)
        sel = torch.from_numpy(a_idx).to(self.device)
        ws_x = torch.from_numpy(self.latents[rows]).to(self.device)
        ws_a = torch.from_numpy(self.anchors[keys]).to(self.device)
        ds_x, ds_a = inp.styles_of(rows), inp.styles_of(self._style_keys(keys))
        X = _shrink(_render(G, ws_x, ds_x, self.dtype), self.size)
        A = _shrink(_render(G, ws_a, ds_a, self.dtype), self.size)[sel]
        mask_a = self._anchor_mask(keys)[sel]
        X0 = A0 = None
        if cfg.weight_in_mask > 0:
            with torch.no_grad():
                X0 = _shrink(_render(self.G0, ws_x, ds_x, self.dtype), self.size)
                A0 = _shrink(_render(self.G0, ws_a, ds_a, self.dtype), self.size)[sel]
        src_x = self.sources.batch([inp.frames[i] for i in rows])
        src_a = self._anchor_source(len(rows))
        terms = pair_losses(self.lpips, cfg, 2, X, A, src_x, src_a, self.flow,
                            mask_a=mask_a, X0=X0, A0=A0)
        loss = (cfg.weight_photo * terms["photo"].mean()
                + cfg.weight_photo_l1 * terms["photo_l1"].mean()
                + cfg.weight_cycle * terms["cycle"].mean()
                + cfg.weight_tv_flow * terms["tv"].mean()
                + cfg.weight_out_mask_g * terms["out"].mean()
                + cfg.weight_in_mask * terms["inmask"].mean())
        reg = X.new_zeros(())
        if cfg.reg_g > 0:  # around the anchor's own latent, one sample per step
            w_anchor = torch.from_numpy(self.anchors[[inp.anchor]]).to(self.device)
            reg = _locality_loss(G, self.G0, self.lpips, w_anchor, cfg, seed)
            loss = loss + cfg.reg_g * reg
        self.opt_g.zero_grad(set_to_none=True)
        self.conv_order.zero_grad()
        loss.backward()
        self.conv_order.hand_over_grads()
        self.opt_g.step()
        return _record(loss, terms, reg)

    # -- driving --

    def step(self) -> dict[str, Any]:
        """One optimiser step on the next batch of pairs; returns its record."""
        from engine.devices import tensor_float32

        with tensor_float32(self.device, self.dtype):  # forward and backward
            return self._advance()

    def _advance(self) -> dict[str, Any]:
        st = self.state
        phase, epoch, b = st["phase"], st["epoch"], st["batch"]
        if phase == 1 and self.epochs[0] == 0:
            self._enter_phase2()
            return self._advance() if not self.done else {}
        order = np.random.default_rng([self.seed, phase, epoch]).permutation(
            len(self.others))
        rows = [self.others[int(i)] for i in order[b * self.batch:(b + 1) * self.batch]]
        for g in (self.opt_w if phase == 1 else self.opt_g).param_groups:
            g["lr"] = self._lr(phase, epoch)
        t0 = time.monotonic()
        rec = (self._step1(rows) if phase == 1
               else self._step2(rows, [self.seed, 2, epoch, b]))
        st["seconds"][phase - 1] += time.monotonic() - t0
        st["pairs"][phase - 1] += len(rows)
        rec.update(phase=phase, epoch=epoch)
        st["steps"].append(rec)
        st["batch"] = b + 1
        if st["batch"] >= self.n_batches:
            st["epoch"], st["batch"] = epoch + 1, 0
            if st["epoch"] >= self.epochs[phase - 1]:
                if phase == 1:
                    self._enter_phase2()
                else:
                    st["phase"] = 3
        return rec

    def _enter_phase2(self) -> None:
        st = self.state
        st["phase"], st["epoch"], st["batch"] = 2, 0, 0
        self._start_phase2()
        if self.epochs[1] == 0:
            st["phase"] = 3

    def result(self) -> tuple["Generator", np.ndarray]:
        """The refined generator (eval, frozen) and latents ``[N, L, D]``."""
        if self.latents is None:
            self._finish_phase1()
        G = self.G if self.G is not None else copy.deepcopy(self.G0)
        assert self.latents is not None
        return G.eval().requires_grad_(False), self.latents


# --- evaluation -----------------------------------------------------------------------


def evaluate_refinement(G_before: "Generator", lat_before: np.ndarray,
                        G_after: "Generator", lat_after: np.ndarray,
                        style_offsets: list[np.ndarray] | None, frames: Sequence[int],
                        crop: Callable[[int], np.ndarray], lpips: Any, *,
                        device: str, batch: int = 8, flow: str = "dis",
                        abort: Callable[[], None] | None = None
                        ) -> dict[str, Any]:
    """Warping error (Lai et al. 2018, docs/reference.md "Warping error") of the
    aligned edited frames before (the direct edit) and after refinement, with the
    flows and occlusion masks of the aligned source crops between consecutive
    frames, and LPIPS of each refined frame to its direct edit. Frames stream in
    batches; only the x–t slices (one row per frame) are kept.

    Returns:
        ``warp_error_before``, ``warp_error_after``, ``warp_error_source`` (the
        aligned source's own), ``lpips_to_direct_edit`` (means), their per-frame
        lists, ``pairs`` and ``scanlines`` (``source``, ``before``, ``after``:
        uint8 ``[N, R, 3]``).
    """
    import cv2
    import torch

    from engine.quality.flow import flow_backend, occlusion_mask, warping_error

    fb = flow_backend(flow, device=device)
    R = G_after.img_resolution
    row = int(R * SCANLINE_ROW)
    we = {"before": [], "after": [], "source": []}
    lp_all: list[float] = []
    scan: dict[str, list[np.ndarray]] = {"source": [], "before": [], "after": []}
    prev: tuple[int, dict[str, np.ndarray]] | None = None
    with torch.no_grad():
        for rows in chunks(range(len(frames)), batch):
            if abort is not None:
                abort()
            rows = list(rows)
            ds = None if style_offsets is None else [s[rows] for s in style_offsets]
            b = _render(G_before, torch.from_numpy(lat_before[rows]).to(device), ds)
            a = _render(G_after, torch.from_numpy(lat_after[rows]).to(device), ds)
            lp_all += [float(v) for v in lpips(a, b).reshape(-1)]
            for j, i in enumerate(rows):
                src = np.asarray(crop(frames[i]))[..., :3]
                if src.shape[0] != R:
                    src = cv2.resize(src, (R, R), interpolation=cv2.INTER_AREA)
                src = src if src.dtype == np.uint8 else (src / 257).round().astype(
                    np.uint8)
                cur = {"source": src, "before": tensor_to_image(b[j]),
                       "after": tensor_to_image(a[j])}
                for k, img in cur.items():
                    scan[k].append(img[row].copy())
                if prev is not None and prev[0] + 1 == frames[i]:
                    fw, bw = fb.pair(prev[1]["source"], src)
                    m = occlusion_mask(fw, bw)
                    for k in we:
                        we[k].append(warping_error(prev[1][k], cur[k], fw, m))
                prev = (frames[i], cur)

    def mean(v: list[float]) -> float | None:
        return float(np.mean(v)) if v else None

    return {"warp_error_before": mean(we["before"]),
            "warp_error_after": mean(we["after"]),
            "warp_error_source": mean(we["source"]),
            "lpips_to_direct_edit": mean(lp_all), "pairs": len(we["before"]),
            "per_pair": we, "lpips_per_frame": lp_all, "flow": fb.name,
            "scanlines": {k: np.stack(v) for k, v in scan.items() if v}}


# --- the stage ------------------------------------------------------------------------


def _style_offsets(G: "Generator", edit: Any, latents: np.ndarray, device: str
                   ) -> list[np.ndarray] | None:
    """S-space edit offsets per layer ``[N, C_l]``: the edit stage's styles minus
    the PTI generator's styles of the edited latents (``strength · direction``)."""
    import torch

    if not edit.styles_path.exists():
        return None
    with np.load(edit.styles_path) as z:
        stored = [z[f"s{i:02d}"] for i in range(len(z.files))]
    out = [np.empty_like(s) for s in stored]
    with torch.no_grad():
        for rows in chunks(range(len(latents)), 64):
            rows = list(rows)
            ws = torch.from_numpy(latents[rows]).to(device)
            for k, s in enumerate(G.styles(ws)):
                out[k][rows] = stored[k][rows] - s.cpu().numpy()
    return out


class RefineStage(Stage):
    """Flow-based temporal refinement of the edited latents and the generator."""

    name = "refine"
    data_parallel = True  # over several devices: engine/stages/parallel.py
    weight = 3.0  # share of the job's progress bar

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        from engine.models.formats.native import save_network
        from engine.quality.flow import raft_weights_path
        from engine.stages.edit import freeze_fine
        from engine.stages.pti import TargetCache

        cfg = ctx.config.refine
        if not cfg.enabled:
            ctx.report(1.0, "off for this job (options.refine.enabled)")
            return {"enabled": False}
        dev = ctx.device
        out = ctx.stage_dir(self.name)
        files = ctx.files.refine
        edit = ctx.files.edit
        frames = edit.frames()
        if len(frames) < 2:
            ctx.report(1.0, "fewer than two frames with a face: nothing to refine")
            return {"enabled": True, "skipped": "fewer than two frames with a face",
                    "frames": len(frames)}
        lat_edit = np.load(edit.latents_path).astype(np.float32)
        pivots = freeze_fine(ctx.files.invert.pivots(),
                             ctx.config.edit.freeze_fine_layers)
        models = ctx.load_models()
        lpips, tiny = models.lpips, bool(models.info.get("tiny"))
        del models  # the encoder and the original generator are not needed here
        G = ctx.files.pti.generator(dev)
        R = G.img_resolution
        inputs = RefineInputs(frames=frames, latents=lat_edit,
                              offsets=(lat_edit - pivots).astype(np.float32),
                              style_offsets=_style_offsets(G, edit, lat_edit, dev),
                              anchor=anchor_index(len(frames)))
        size = working_size(R, cfg)
        clip = ctx.files.align.clip()
        sources = TargetCache(clip, size, dev, lpips, cfg.cache_frames)
        # resolved once and kept for a resumed attempt (engine/stages/batching.py);
        # the precision follows the job's recipe as PTI's and stitching's do
        # (float32 under `reference` unless options.dtype names one)
        recipe = job_recipe(ctx.config, "tiny" if tiny else "official")
        batch, dtype = training_settings(out, "refine", cfg.batch_size,
                                         recipe_dtype(recipe, ctx.config.dtype, dev),
                                         R, dev, len(frames) - 1)
        cfg = replace(cfg, batch_size=batch)
        flow = make_flow(cfg, dev, warn=ctx.warn)
        tuner = RefineTuner(G, lpips, inputs, sources, cfg, flow,
                            seed=ctx.config.seed, device=dev, dtype=dtype)
        if ctx.parallel is not None:  # one rank of several (engine/stages/parallel.py)
            ctx.parallel.attach(tuner, {"_step1": "opt_w", "_step2": "opt_g"}, batch)
        ckpt = files.checkpoint_path
        if ckpt.exists():
            tuner.load_state_dict(load_checkpoint(ckpt))
            st = tuner.state
            log.info("refine: resuming in phase %d at epoch %d batch %d",
                     st["phase"], st["epoch"], st["batch"])
            ctx.info["refine_resumed_at"] = [st["phase"], st["epoch"]]

        def checkpoint() -> None:
            if ctx.parallel is None or ctx.parallel.writer:
                save_checkpoint(ckpt, tuner.state_dict())

        t_last = time.monotonic()
        steps_run = 0
        total = max(tuner.total_steps, 1)
        try:
            while not tuner.done:
                ctx.check_abort()
                before = (tuner.state["phase"], tuner.state["epoch"])
                rec = tuner.step()
                steps_run += 1
                st = tuner.state
                ctx.report(0.9 * tuner.steps_done / total,
                           f"phase {before[0]} epoch {before[1] + 1}/"
                           f"{tuner.epochs[before[0] - 1]}, loss "
                           f"{rec.get('loss', 0.0):.4f}")
                new_epoch = (st["phase"], st["epoch"]) != before
                if not tuner.done and ((st["phase"] != before[0]) or (
                        new_epoch and cfg.checkpoint_every
                        and st["epoch"] % cfg.checkpoint_every == 0) or (
                        cfg.checkpoint_seconds
                        and time.monotonic() - t_last > cfg.checkpoint_seconds)):
                    checkpoint()
                    t_last = time.monotonic()
        except StageAborted:
            if steps_run:  # keep the work done so far for the next attempt
                checkpoint()
            raise
        if ctx.parallel is not None and not ctx.parallel.writer:
            return {}  # rank 0 writes the outputs

        G_ref, lat_ref = tuner.result()
        ctx.report(0.9, "measuring the warping error before and after")
        metrics_flow = ctx.config.metrics.flow
        if metrics_flow == "raft" and raft_weights_path() is None:
            ctx.warn("the refinement's warping error was measured with DIS flow: "
                     "options.metrics.flow asks for RAFT, whose weights are not "
                     "installed")
            metrics_flow = "dis"
        ev = evaluate_refinement(G, lat_edit, G_ref, lat_ref, inputs.style_offsets,
                                 frames, clip.crop, lpips, device=dev,
                                 batch=max(1, min(batch, 16)), flow=metrics_flow,
                                 abort=ctx.check_abort)
        save_npy(files.latents_path, lat_ref.astype(np.float32))
        atomic_write_bytes(files.frames_path, json.dumps({"frames": frames}).encode())
        if inputs.style_offsets is not None:
            self._write_styles(files, G_ref, lat_ref, inputs.style_offsets, dev)
        save_network(G_ref, files.generator_path, info={
            "stage": "refine", "frames": len(frames), "tiny": tiny,
            "epochs": list(tuner.epochs)})
        for k, img in ev.pop("scanlines").items():
            write_png(files.scanline_path(k), img)
        show = preview_frames(frames)
        with torch.no_grad():
            rows = [frames.index(f) for f in show]
            write_previews(files.preview_dir, show, _render(
                G_ref, torch.from_numpy(lat_ref[rows]).to(dev), inputs.styles_of(rows)))
        st = tuner.state
        per_min = [60 * p / s if s > 0 else None
                   for p, s in zip(st["pairs"], st["seconds"])]
        metrics = {"refine_warp_error_before": ev["warp_error_before"],
                   "refine_warp_error_after": ev["warp_error_after"],
                   "refine_warp_error_source": ev["warp_error_source"],
                   "refine_lpips_to_direct_edit": ev["lpips_to_direct_edit"],
                   "refine_flow": flow.kind}
        summary = {
            "frames": frames, "anchor": frames[inputs.anchor], "flow": flow.kind,
            "flow_name": flow.name, "metrics_flow": ev["flow"],
            "working_size": tuner.size, "resolution": R, "batch_size": batch,
            "dtype": dtype, "epochs": list(tuner.epochs),
            "lr": [tuner._lr(1, 0), tuner._lr(2, 0)], "steps": st["steps"],
            "seconds": st["seconds"], "pairs": st["pairs"],
            "pairs_per_minute": per_min, "settings": _settings(cfg),
            "evaluation": {k: v for k, v in ev.items()}, "metrics": metrics}
        atomic_write_bytes(files.summary_path, json.dumps(summary).encode())
        ckpt.unlink(missing_ok=True)
        b, a = ev["warp_error_before"], ev["warp_error_after"]
        log.info("refine (%s): warping error %s -> %s, LPIPS to the direct edit %s",
                 flow.kind, b, a, ev["lpips_to_direct_edit"])
        ctx.report(1.0, f"warping error {b if b is None else round(b, 5)} -> "
                        f"{a if a is None else round(a, 5)}")
        return {"enabled": True, "frames": len(frames), "anchor": frames[inputs.anchor],
                "flow": flow.kind, "flow_name": flow.name, "batch_size": batch,
                "dtype": dtype, "epochs": list(tuner.epochs),
                "working_size": tuner.size, "seconds_per_phase": st["seconds"],
                "pairs_per_minute": per_min, "metrics": metrics,
                "frames_per_second": (sum(st["pairs"]) / sum(st["seconds"])
                                      if sum(st["seconds"]) > 0 else None)}

    @staticmethod
    def _write_styles(files: Any, G: "Generator", lat: np.ndarray,
                      style_offsets: list[np.ndarray], device: str) -> None:
        """``styles.npz`` for stitching tuning: the refined generator's styles of
        the refined latents plus the S-space edit (layer keys as the edit stage's)."""
        import io

        import torch

        out = [np.empty_like(s) for s in style_offsets]
        with torch.no_grad():
            for rows in chunks(range(len(lat)), 64):
                rows = list(rows)
                ws = torch.from_numpy(lat[rows]).to(device)
                for k, s in enumerate(G.styles(ws)):
                    out[k][rows] = s.cpu().numpy() + style_offsets[k][rows]
        buf = io.BytesIO()
        np.savez(buf, **{f"s{i:02d}": s for i, s in enumerate(out)})
        atomic_write_bytes(files.styles_path, buf.getvalue())


def _settings(cfg: RefineConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)
