"""Stitching tuning (STIT, docs/reference.md "Stitching tuning"), many frames at once.

Per frame, STIT deep-copies the PTI generator, renders the edited latent and tunes
the copy for up to 100 Adam steps (lr 3e-4) so that the border ring of the face mask
matches the real crop while the interior keeps the edit:

    loss = masked(G(w), crop, border) + 0.01 · masked(G(w), G_pti(w), content)
    masked(a, b, m) = Σ (a·m − b·m)² / Σ m     (3-channel sum over a 1-channel mask)

with early stop when the border loss drops below ``border_loss_threshold`` (checked
before that step's update). Every synthesis parameter trains. For W-space edits the
copy renders from the edited ``w``, so the per-layer style affines train too, as in
STIT; S-space (StyleCLIP global) edits render from styles, where the affines get no
gradient. The output is the tuned copy re-synthesised at the edit.

Here a batch of B frames tunes B independent copies together; each keeps its own
weights, loss, Adam state and early stop, so a frame's result does not depend on
its batch (up to the order of float sums). How the copies are computed is the
stitcher's *formulation* (the same arithmetic; engine/stages/formulation.py picks
the fastest for the device, precision and architecture):

- ``grouped``: the trainable parameters are stacked per frame (``[B, ...]``) and
  the network runs once with them as per-sample parameters
  (``torch.func.functional_call``; every modulated convolution becomes one grouped
  convolution on a channels-last layout, engine/nets/ops.py);
- ``loop``: each frame's copy runs its own batch-1 forward (the reference loop's
  path: plain convolutions of the modulated weights), one backward over the summed
  losses;
- ``hybrid``: ``loop`` where each layer modulates whichever is smaller, its
  weight or its activations (engine/nets/ops.py ``fused="hybrid"``);
- ``vmap``: ``torch.func.vmap`` over the stacked copies (PyTorch's batching rules
  turn the per-frame convolutions into grouped ones, in the default layout).

All three sum the per-frame losses (so each frame's gradient is its own) and run one
fused functional Adam over every frame's tensors (the update of
``torch.optim.Adam``). :func:`tune_reference` is the reference's loop (one deep
copy and one ``torch.optim.Adam`` per frame), kept as the exact slow path for tests
and ``bench/pipeline.py``.

``StitchTuneStage`` writes into ``stages/stitch_tune/``:

- ``crops/<frame:07d>.png``: the tuned edited crop, 16-bit RGB, ``R x R``;
- ``alpha/<frame:07d>.png``: 8-bit grey paste alpha
  (:func:`engine.stages.mask.paste_alpha`; the job-folder contract in
  docs/protocol.md);
- ``summary.json``: per-frame border error of the naive paste (the PTI generator at
  the edit, before tuning) and after tuning, steps used, border-loss curves, the
  recipe and formulation;
- ``settings.json``: the resolved plan (engine/stages/recipe.py);
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
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from fsexchange.options import STITCH_FORMULATIONS, StitchConfig
from engine.stages.crops import chunks, crops_to_tensor, tensor_to_image, write_png
from engine.stages.contract import Stage, StageContext
from engine.stages.mask import paste_alpha, stitch_masks
from engine.stages.outputs import EditFiles

if TYPE_CHECKING:
    import torch

    from engine.nets.stylegan2 import Generator

__all__ = ["StitchTuneStage", "masked_loss", "BatchedStitcher", "tune_reference",
           "TuneResult", "EditLatents", "load_edit_inputs", "load_edit_styles",
           "stitch_candidates"]

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


@dataclass
class EditLatents:
    """What each frame's copy renders: the edited W-space latents (``ws``,
    ``[B, num_ws, w_dim]``; STIT renders these, so the style affines train) or
    S-space styles (``styles``, per layer ``[B, C_l]``: StyleCLIP global edits,
    rendered from styles; the affines get no gradient). Exactly one is set."""

    ws: "torch.Tensor | None" = None
    styles: "list[torch.Tensor] | None" = None

    def __post_init__(self) -> None:
        if (self.ws is None) == (self.styles is None):
            raise ValueError("EditLatents needs exactly one of ws and styles")

    @classmethod
    def of(cls, x: Any) -> "EditLatents":
        """``x`` as EditLatents: itself, a ws tensor, or a list of styles."""
        if isinstance(x, EditLatents):
            return x
        if isinstance(x, (list, tuple)):
            return cls(styles=[s.detach() for s in x])
        return cls(ws=x.detach())

    @property
    def from_styles(self) -> bool:
        return self.styles is not None

    def __len__(self) -> int:
        return int(self.styles[0].shape[0] if self.styles is not None
                   else self.ws.shape[0])

    def select(self, idx: "torch.Tensor | slice") -> "EditLatents":
        """The frames ``idx`` (an index tensor or a slice)."""
        def take(t: "torch.Tensor") -> "torch.Tensor":
            return t[idx] if isinstance(idx, slice) else t.index_select(0, idx)

        if self.styles is not None:
            return EditLatents(styles=[take(s) for s in self.styles])
        return EditLatents(ws=take(self.ws))

    def arg(self) -> Any:
        """The rendering module's input (see :func:`_render_module`)."""
        return list(self.styles) if self.styles is not None else self.ws


def _render_module(G: "Generator", from_styles: bool, fused: str | None = None
                   ) -> "torch.nn.Module":
    """A module sharing G's synthesis parameters whose forward renders
    :meth:`EditLatents.arg`: ``synthesis_from_styles(styles)`` or
    ``synthesis(ws)`` (what ``functional_call`` needs), with the convolutions'
    ``fused`` mode (engine/nets/ops.py ``modulated_conv2d``)."""
    import torch

    class Render(torch.nn.Module):
        def __init__(self, syn: torch.nn.Module) -> None:
            super().__init__()
            self.syn = syn

        def forward(self, x: Any) -> torch.Tensor:
            if from_styles:
                return self.syn.synthesis_from_styles(x, fused=fused)
            return self.syn(x, fused=fused)

    return Render(G.synthesis)


def _trainable_names(module: Any, inputs: EditLatents) -> list[str]:
    """Parameters that receive a gradient when rendering ``inputs``: from ws every
    synthesis parameter, from styles all but the style affines (which the styles
    bypass). A rule, not a probe: a probe backward through the generator cost one
    more frame-update per stitcher (``tests/test_recipe.py`` checks the rule
    against a probe)."""
    return [k for k, _ in module.named_parameters()
            if not (inputs.from_styles and ".affine." in f".{k}")]


class _Stacked:
    """Per-frame copies as stacked tensors ``[B, ...]`` (``grouped`` and ``vmap``):
    conv weights stored contiguous in the grouped convolutions' memory order (so
    the fused Adam updates them without copies) and seen as ``[B, O, I, kh, kw]``
    (:func:`engine.nets.ops.weight_from_storage`)."""

    def __init__(self, st: "BatchedStitcher", B: int, vmap: bool) -> None:
        import torch

        self.st, self.vmap = st, vmap
        named = dict(st.module.named_parameters())
        self.params = {k: _stack(named[k].detach(), B, k in st.transposed)
                       for k in st.names}
        self.m1 = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.m2 = {k: torch.zeros_like(v) for k, v in self.params.items()}

    def views(self, params: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        from engine.nets.ops import weight_from_storage

        return {k: weight_from_storage(v, k in self.st.transposed) if v.ndim == 5
                else v for k, v in params.items()}

    def _call(self, p: dict[str, "torch.Tensor"], inputs: EditLatents
              ) -> "torch.Tensor":
        from torch.func import functional_call, vmap

        module, fixed = self.st.module, self.st.fixed
        if not self.vmap:
            return functional_call(module, {**fixed, **self.views(p)},
                                   (inputs.arg(),))
        from engine.nets.ops import plain_layout

        def one(params: dict, x: Any) -> "torch.Tensor":
            one_in = [s[None] for s in x] if isinstance(x, list) else x[None]
            return functional_call(module, {**fixed, **params}, (one_in,))[0]

        with plain_layout():
            return vmap(one)(self.views(p), inputs.arg())

    def forward(self, active: list[int], inputs: EditLatents, B: int
                ) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        import torch

        full = len(active) == B
        idx = None if full else torch.tensor(active, device=inputs.arg()[0].device)
        p = {k: (v if full else v.index_select(0, idx)).detach().requires_grad_(True)
             for k, v in self.params.items()}
        return self._call(p, inputs if full else inputs.select(idx)), list(p.values())

    def render(self, inputs: EditLatents) -> "torch.Tensor":
        return self._call(self.params, inputs)

    def update(self, active: list[int], keep: list[bool], grads: Sequence, t: int,
               lr: float, B: int) -> None:
        import torch

        st, names = self.st, list(self.params)
        kept = [f for f, k in zip(active, keep) if k]
        dev = next(iter(self.params.values())).device
        if len(kept) == B:  # everyone tunes: update the stacks in place
            _adam_step([self.params[k] for k in names], list(grads),
                       [self.m1[k] for k in names], [self.m2[k] for k in names], t,
                       lr, st.betas, st.eps)
            return
        # some frames stopped: update the others' rows only
        kidx = torch.tensor(kept, device=dev)
        sub = torch.tensor([j for j, k in enumerate(keep) if k], device=dev)
        rows = [[d[k].index_select(0, kidx) for k in names]
                for d in (self.params, self.m1, self.m2)]
        _adam_step(rows[0], [g.index_select(0, sub) for g in grads], rows[1],
                   rows[2], t, lr, st.betas, st.eps)
        for d, new in zip((self.params, self.m1, self.m2), rows):
            for k, v in zip(names, new):
                d[k].index_copy_(0, kidx, v)


class _PerFrame:
    """Per-frame copies as separate tensors (``loop``, ``hybrid``): frame ``j``'s
    copy renders through its own batch-1 forward with its parameters in their own
    shapes (conv weights as views of tensors kept in the convolution's memory
    order), so each convolution takes the batch-1 path of the reference loop
    (plain autograd modulation, engine/nets/ops.py ``modulated_conv2d``), the
    path that is fastest at batch 1; one fused Adam runs over every frame's
    tensors. (Stored as stacks of one, the weights took the per-sample
    closed-form path, which costs more per step at batch 1 and made this
    formulation slower than the reference loop, docs/pipeline.md "Speed".)"""

    def __init__(self, st: "BatchedStitcher", B: int) -> None:
        import torch

        from engine.nets.ops import stored_weight

        self.st = st
        named = dict(st.module.named_parameters())
        # conv weights stored in the order their batch-1 convolution reads
        # (channels-last; the up-sampling ones transposed), contiguous, so that
        # neither the cast into the convolution's layout forward, nor the
        # gradient's way back, nor the fused Adam copies them: 0.3 instead of
        # 1.1 ms (2.1 with the transposition) per 512-channel weight and pass
        self.stored = {k for k in st.names if named[k].ndim == 4
                       and named[k].shape[-2:] != (1, 1)}
        self.params = [{k: (stored_weight(named[k].detach(), k in st.transposed)
                            if k in self.stored else named[k].detach().clone()
                            ).requires_grad_(True)
                        for k in st.names} for _ in range(B)]
        self.m1 = [{k: torch.zeros_like(v) for k, v in p.items()}
                   for p in self.params]
        self.m2 = [{k: torch.zeros_like(v) for k, v in p.items()}
                   for p in self.params]

    def _one(self, j: int, inputs: EditLatents, i: int) -> "torch.Tensor":
        from torch.func import functional_call

        from engine.nets.ops import weight_from_storage

        views = {k: weight_from_storage(v, k in self.st.transposed)
                 if k in self.stored else v for k, v in self.params[j].items()}
        return functional_call(self.st.module, {**self.st.fixed, **views},
                               (inputs.select(slice(i, i + 1)).arg(),))

    def forward(self, active: list[int], inputs: EditLatents, B: int
                ) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        import torch

        img = torch.cat([self._one(j, inputs, j) for j in active])
        return img, [v for j in active for v in self.params[j].values()]

    def render(self, inputs: EditLatents) -> "torch.Tensor":
        import torch

        return torch.cat([self._one(j, inputs, j) for j in range(len(self.params))])

    def update(self, active: list[int], keep: list[bool], grads: Sequence, t: int,
               lr: float, B: int) -> None:
        n = len(self.st.names)
        ps, gs, m1, m2 = [], [], [], []
        for i, (j, k) in enumerate(zip(active, keep)):
            if not k:
                continue
            ps += list(self.params[j].values())
            gs += list(grads[i * n:(i + 1) * n])
            m1 += list(self.m1[j].values())
            m2 += list(self.m2[j].values())
        _adam_step(ps, gs, m1, m2, t, lr, self.st.betas, self.st.eps)


class BatchedStitcher:
    """Tunes B independent copies of a generator at once with per-frame Adam and
    early stop.

    Args:
        G: the PTI-tuned generator (not modified).
        cfg: ``StitchConfig`` (steps, lr, content_weight, threshold, l1).
        dtype: ``"float32"`` or ``"bfloat16"`` (autocast).
        formulation: ``"grouped"``, ``"loop"``, ``"hybrid"`` or ``"vmap"`` (module
            docstring).
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, G: "Generator", cfg: StitchConfig, dtype: str = "float32",
                 formulation: str = "grouped") -> None:
        if formulation not in STITCH_FORMULATIONS:
            raise ValueError(f"unknown stitching formulation {formulation!r}")
        self.G = G
        self.cfg = cfg
        self.dtype = dtype
        self.formulation = formulation
        self.module: Any = None
        self.from_styles: bool | None = None
        self.names: list[str] = []  # the trainable parameters
        self.transposed: set[str] = set()  # weights stored for a transposed conv
        self.fixed: dict[str, "torch.Tensor"] = {}  # shared: buffers (+ affines)

    def _setup(self, inputs: EditLatents) -> None:
        if self.module is not None and self.from_styles == inputs.from_styles:
            return
        self.from_styles = inputs.from_styles
        self.module = _render_module(
            self.G, inputs.from_styles,
            "hybrid" if self.formulation == "hybrid" else None)
        self.names = _trainable_names(self.module, inputs)
        # the up-sampling convs read their weights in the transposed layout
        self.transposed = {k for k in self.names if k.endswith(".weight") and getattr(
            self.module.get_submodule(k.rsplit(".", 1)[0]), "up", 1) != 1}
        named = dict(self.module.named_parameters())
        self.fixed = {k: v.detach() for k, v in named.items() if k not in self.names}
        self.fixed.update(dict(self.module.named_buffers()))

    def _copies(self, B: int) -> "_Stacked | _PerFrame":
        if self.formulation in ("loop", "hybrid"):
            return _PerFrame(self, B)
        return _Stacked(self, B, vmap=self.formulation == "vmap")

    def tune(self, inputs: Any, target: "torch.Tensor", border: "torch.Tensor",
             content: "torch.Tensor", abort: Any = None, progress: Any = None
             ) -> TuneResult:
        """Tune one batch.

        Args:
            inputs: :class:`EditLatents` (or ws ``[B, num_ws, w_dim]``, or a list of
                per-layer styles ``[B, C_l]``): the edit, on the PTI generator.
            target: the real aligned crops ``[B, 3, R, R]`` in [-1, 1].
            border, content: masks ``[B, R, R]``
            (:func:`engine.stages.mask.stitch_masks`).
            abort: called once per step (e.g. ``ctx.check_abort``).
            progress: called with the fraction of steps done after each step.
        """
        import torch

        from engine.devices import tensor_float32
        from engine.stages.pti import autocast

        cfg = self.cfg
        inputs = EditLatents.of(inputs)
        B = target.shape[0]
        self._setup(inputs)
        copies = self._copies(B)
        dev = str(target.device)

        with torch.no_grad():  # fixed interior target, in float32
            edited = copies.render(inputs).float()
        curves: list[list[float]] = [[] for _ in range(B)]
        steps = [0] * B
        active = list(range(B))
        t = 0
        # forward and backward (TensorFloat-32 when the precision is tf32)
        with tensor_float32(dev, self.dtype):
            while t < cfg.steps and active:
                if abort is not None:
                    abort()
                full = len(active) == B
                idx = torch.tensor(active, device=target.device)
                sel = (lambda x: x) if full else (lambda x, i=idx: x.index_select(0, i))
                with autocast(dev, self.dtype):
                    img, leaves = copies.forward(active, inputs, B)
                img = img.float()
                border_l = masked_loss(img, sel(target), sel(border), cfg.l1)
                content_l = masked_loss(img, sel(edited), sel(content), cfg.l1)
                bl = border_l.detach().cpu().tolist()
                keep = []
                for j, f in enumerate(active):
                    curves[f].append(bl[j])
                    # early stop: before this step's update (docs/reference.md
                    # "Stitching tuning")
                    keep.append(not (cfg.border_loss_threshold > 0
                                     and bl[j] < cfg.border_loss_threshold))
                if not any(keep):
                    break
                w = torch.tensor(keep, dtype=img.dtype, device=img.device)
                loss = ((border_l + cfg.content_weight * content_l) * w).sum()
                grads = torch.autograd.grad(loss, leaves)
                t += 1
                with torch.no_grad():
                    copies.update(active, keep, grads, t, cfg.lr, B)
                kept = [f for f, k in zip(active, keep) if k]
                for f in kept:
                    steps[f] += 1
                active = kept
                if progress is not None:
                    progress(t / cfg.steps)
        with torch.no_grad():  # the delivered crops: rendered in float32
            out = copies.render(inputs).float()
            after = masked_loss(out, target, border, cfg.l1).cpu().tolist()
        before = [c[0] if c else a for c, a in zip(curves, after)]
        return TuneResult(out, before, after, steps, curves)


def _stack(t: "torch.Tensor", n: int, transposed: bool = False) -> "torch.Tensor":
    """``n`` copies of a parameter along a new leading axis, contiguous; conv
    weights in the memory order the grouped convolutions read
    (:func:`engine.nets.ops.stored_weight`; :meth:`_Stacked.views` gives the
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

    if not params:
        return
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


def tune_reference(G: "Generator", inputs: Any, target: "torch.Tensor",
                   border: "torch.Tensor", content: "torch.Tensor",
                   cfg: StitchConfig) -> TuneResult:
    """The reference's loop structure, one frame at a time: a fresh deep copy of the
    generator and its own ``torch.optim.Adam`` over all its synthesis parameters
    per frame (docs/reference.md "Stitching tuning"), rendering from ws (the affines
    train) or, for S-space edits, from styles. Exact and slow; the batched
    stitcher must match it.

    Args:
        inputs: as :meth:`BatchedStitcher.tune`.
    """
    import torch

    inputs = EditLatents.of(inputs)
    images, before, after, steps, curves = [], [], [], [], []
    for i in range(target.shape[0]):
        x = inputs.select(slice(i, i + 1)).arg()
        Gi = copy.deepcopy(G).train()
        Gi.requires_grad_(False)
        Gi.synthesis.requires_grad_(True)
        opt = torch.optim.Adam(Gi.synthesis.parameters(), lr=cfg.lr)

        def render(G_: Any = Gi, x_: Any = x) -> torch.Tensor:
            return (G_.synthesis.synthesis_from_styles(x_) if inputs.from_styles
                    else G_.synthesis(x_))

        with torch.no_grad():
            edited = render()
        curve: list[float] = []
        n = 0
        for _ in range(cfg.steps):
            img = render()
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
            out = render()
            a = float(masked_loss(out, target[i:i + 1], border[i:i + 1], cfg.l1))
        images.append(out[0])
        before.append(curve[0] if curve else a)
        after.append(a)
        steps.append(n)
        curves.append(curve)
    return TuneResult(torch.stack(images), before, after, steps, curves)


def load_edit_inputs(G: "Generator", edit: EditFiles, rows: Sequence[int],
                     device: str) -> EditLatents:
    """What the edited frames ``rows`` render: stored S-space edits (styles) when
    the edit stage wrote ``styles.npz``, else the edited W-space latents."""
    import torch

    styles_path = edit.styles_path
    if styles_path.exists():
        with np.load(styles_path) as z:
            n = len(z.files)
            return EditLatents(styles=[torch.from_numpy(z[f"s{i:02d}"][list(rows)])
                                       .to(device) for i in range(n)])
    lat = np.load(edit.latents_path, mmap_mode="r")
    return EditLatents(ws=torch.from_numpy(np.ascontiguousarray(lat[list(rows)]))
                       .to(device))


def load_edit_styles(G: "Generator", edit: EditFiles, rows: Sequence[int],
                     device: str) -> list["torch.Tensor"]:
    """Styles of the edited frames ``rows`` (what the untuned generator renders
    from, engine/stages/render.py): stored S-space edits, else ``G.styles`` of the
    edited latents."""
    import torch

    inputs = load_edit_inputs(G, edit, rows, device)
    if inputs.styles is not None:
        return inputs.styles
    with torch.no_grad():
        return [s.detach() for s in G.styles(inputs.ws)]


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
        if ctx.files.refine.ready():  # the target: the refined generator and latents
            G, edit = ctx.files.refine.generator(dev), ctx.files.refine
        R = G.img_resolution
        # resolved once and kept for a resumed attempt (engine/stages/recipe.py)
        plan = _plan(ctx, out, G, edit, len(frames))
        cfg = replace(cfg, batch_size=plan.batch_size)
        stitcher = BatchedStitcher(G, cfg, plan.dtype, plan.formulation)
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
            inputs = load_edit_inputs(G, edit, rows, dev)

            def progress(f: float, bi: int = bi) -> None:
                ctx.report((mine.index(bi) + f) / len(mine),
                           f"batch {bi + 1}/{len(batches)}, "
                           f"step {round(f * cfg.steps)}/{cfg.steps}")

            res = stitcher.tune(inputs, target, border, content,
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
                        **plan.to_dict()})
        atomic_write_bytes(files.summary_path, json.dumps(summary).encode())
        shutil.rmtree(parts, ignore_errors=True)
        return {"frames": len(frames), "border_before": summary["border_before"],
                "border_after": summary["border_after"],
                "mean_steps": summary["mean_steps"], "dtype": plan.dtype,
                "recipe": plan.recipe, "formulation": plan.formulation,
                "frames_per_second": tuned / seconds if tuned and seconds > 0
                else None}


def _plan(ctx: StageContext, stage_dir: Any, G: "Generator", edit: EditFiles,
          frames: int) -> Any:
    """The stage's :class:`engine.stages.recipe.TrainingPlan`: the job's recipe;
    the formulation measured once for this device, precision and architecture
    unless the options name one (engine/stages/formulation.py)."""
    from engine.stages.formulation import choose
    from engine.stages.recipe import job_recipe, stitch_plan

    cfg = ctx.config
    styles = edit.styles_path.exists()
    # the recipe PTI resolved for this job (its loss.json), else the job's own
    recipe = (ctx.files.pti.loss() or {}).get("recipe") or job_recipe(cfg)
    return stitch_plan(
        cfg, recipe, resolution=G.img_resolution,
        device=ctx.device, frames=frames, stage_dir=stage_dir,
        choose=lambda d: choose("stitch", G, d, ctx.device, stitch_candidates(
            G, cfg.stitch, ctx.device, d["dtype"], styles), extra=(
                "styles" if styles else "ws")))


def stitch_candidates(G: "Generator", cfg: StitchConfig, device: str, dtype: str,
                      from_styles: bool = False
                      ) -> Callable[[int], dict[str, Callable[[], Any]]]:
    """For :func:`engine.stages.formulation.choose`: one tuning step (forward,
    backward, Adam) of ``n`` frames in each formulation, rendering from ws (or
    from styles)."""
    import torch

    def candidates(n: int) -> dict[str, Callable[[], Any]]:
        R = G.img_resolution
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            ws = G.mapping(torch.randn(n, G.z_dim, generator=gen).to(device),
                           truncation_psi=0.7)
            inputs = (EditLatents(styles=[s.detach() for s in G.styles(ws)])
                      if from_styles else EditLatents(ws=ws))
        target = (torch.rand(n, 3, R, R, generator=gen) * 2 - 1).to(device)
        top = (torch.arange(R)[:, None] < R // 2).float().expand(R, R).to(device)
        border, content = top.expand(n, R, R), (1 - top).expand(n, R, R)
        one = replace(cfg, steps=1, border_loss_threshold=0.0)
        return {name: (lambda st=BatchedStitcher(G, one, dtype, name):
                       st.tune(inputs, target, border, content))
                for name in STITCH_FORMULATIONS}

    return candidates


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
