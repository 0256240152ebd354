"""Latent edits: W-space (and optional S-space) directions with per-frame strength.

STIT applies one direction at one constant strength per output (docs/reference.md
"Editing");
here several edits combine (their scaled directions are summed, the workaround users
of the reference found for "age + gender", docs/reference.md) and each edit's strength
can follow
keyframes across the shot, so an edit can fade in and out.

Strength convention (STIT CLI, docs/reference.md "Editing"): ``w_edit = w + (strength /
2) · d``
for W directions (``Direction.step_scale`` 0.5), ``s + strength · d`` for S-space
(StyleCLIP global) directions, installed ones or those computed from a text prompt
(``Edit.space == "text"``, :mod:`engine.models.styleclip`).

Strength curves (:func:`strength_curve`), for an edit with keyframes
``(f_0, s_0) … (f_k, s_k)`` (frame numbers are source frame indices, the same
numbers as ``Job.range``):

- before the first keyframe the strength holds at ``s_0``; after the last at ``s_k``;
- between two keyframes it moves from one to the next by the edit's ``ease``:
  ``"smooth"`` (default) = smoothstep ``3t² − 2t³`` (ease in and out: zero slope at
  each keyframe, so a fade starts and lands gently), ``"linear"`` = ``t``,
  ``"hold"`` = stays at the earlier keyframe's value until the next keyframe;
- an edit without keyframes has its constant ``strength`` on every frame.

Example: ``--edit age=0@1001,-4@1024,-4@1080,0@1100`` fades "younger" in over
frames 1001–1024, holds it to 1080 and fades it out by 1100.
"""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from fsexchange.documents import Edit
from fsexchange.errors import EditInvalid, EditUnknown
from fsexchange.fsutil import atomic_write_bytes

from engine.stages.contract import Stage, StageContext
from engine.stages.crops import chunks, preview_frames, save_npy, write_previews

if TYPE_CHECKING:
    from engine.models.directions import Direction

__all__ = ["strength_curve", "edit_offsets", "apply_w_edits", "apply_s_edits",
           "freeze_fine", "check_edits", "EditStage"]

log = logging.getLogger(__name__)


def _ease(t: np.ndarray, ease: str) -> np.ndarray:
    if ease == "smooth":
        return t * t * (3.0 - 2.0 * t)
    if ease == "linear":
        return t
    if ease == "hold":
        return np.zeros_like(t)
    raise EditInvalid(f"unknown ease {ease!r}; use smooth, linear or hold",
                      field="edits.ease")


def strength_curve(edit: Edit, frames: Sequence[int]) -> np.ndarray:
    """Per-frame strength of ``edit`` at source frame indices ``frames``.

    Args:
        edit: the edit; its ``keyframes`` (increasing frame numbers) and ``ease``
            shape the curve, without keyframes ``strength`` is constant.
        frames: source frame indices (any order).

    Returns:
        float64 ``[len(frames)]``.

    >>> from fsexchange.documents import Keyframe
    >>> e = Edit("age", keyframes=(Keyframe(10, 0.0), Keyframe(20, -4.0)))
    >>> strength_curve(e, [0, 10, 15, 20, 30]).tolist()
    [0.0, 0.0, -2.0, -4.0, -4.0]
    """
    f = np.asarray(list(frames), dtype=np.float64)
    if not edit.keyframes:
        return np.full(f.shape, float(edit.strength))
    kf = np.array([k.frame for k in edit.keyframes], dtype=np.float64)
    ks = np.array([k.strength for k in edit.keyframes], dtype=np.float64)
    if len(kf) == 1:
        return np.full(f.shape, ks[0])
    # Segment j spans [kf[j], kf[j+1]); frames outside hold the end values.
    j = np.clip(np.searchsorted(kf, f, side="right") - 1, 0, len(kf) - 2)
    t = np.clip((f - kf[j]) / (kf[j + 1] - kf[j]), 0.0, 1.0)
    u = _ease(t, edit.ease)
    out = ks[j] + (ks[j + 1] - ks[j]) * u
    # "hold" jumps exactly at the next keyframe; smooth/linear reach it anyway.
    out = np.where(f >= kf[-1], ks[-1], out)
    return out


def check_edits(edits: Sequence[Edit], installed: Mapping[str, "Direction"]) -> None:
    """Fail with :class:`EditUnknown` (``edit.unknown``) naming the installed edits
    when an edit is not installed, or not installed in the space it asks for."""
    for i, e in enumerate(edits):
        if e.space == "text":  # computed from its prompt (engine.models.styleclip)
            continue
        d = installed.get(e.name)
        if d is None or d.space != e.space:
            names = sorted(n for n, x in installed.items() if x.space == e.space)
            what = "S-space (StyleCLIP) edit" if e.space == "s" else "edit"
            raise EditUnknown(
                f"{what} {e.name!r} is not installed; installed: "
                f"{', '.join(names) or 'none'}"
                + (" (S-space edits need their data installed: facestitch models)"
                   if e.space == "s" and not names else ""),
                field=f"edits[{i}].name")


def edit_offsets(edits: Sequence[Edit], installed: Mapping[str, "Direction"],
                 frames: Sequence[int], num_ws: int, w_dim: int) -> np.ndarray:
    """Summed W+ offsets ``Σ_e strength_e(f) · step_scale · d_e`` per frame
    (``step_scale`` 0.5 for STIT's files: ``w + (strength/2)·d``).

    ``Direction.delta_w`` broadcasts a ``[w_dim]`` direction (or STIT's identical
    rows) to all layers and applies ``Direction.layers``.

    Returns:
        float32 ``[len(frames), num_ws, w_dim]``.
    """
    out = np.zeros((len(frames), num_ws, w_dim), dtype=np.float64)
    for e in edits:
        if e.space != "w":
            continue
        try:
            unit = installed[e.name].delta_w(1.0, num_ws).astype(np.float64)
        except ValueError as exc:
            raise EditInvalid(f"edit {e.name!r}: {exc}", stage="edit") from None
        if unit.shape != (num_ws, w_dim):
            raise EditInvalid(f"edit {e.name!r}: direction shape {unit.shape} does "
                              f"not fit this generator's W+ [{num_ws}, {w_dim}]",
                              stage="edit")
        out += strength_curve(e, frames)[:, None, None] * unit[None]
    return out.astype(np.float32)


def apply_w_edits(pivots: np.ndarray, edits: Sequence[Edit],
                  installed: Mapping[str, "Direction"],
                  frames: Sequence[int]) -> np.ndarray:
    """Edited latents ``[N, num_ws, w_dim]`` float32: pivots plus
    :func:`edit_offsets`."""
    n, num_ws, w_dim = pivots.shape
    return (pivots.astype(np.float32)
            + edit_offsets(edits, installed, frames, num_ws, w_dim))


def apply_s_edits(styles: Sequence[np.ndarray], edits: Sequence[Edit],
                  installed: Mapping[str, "Direction"], frames: Sequence[int],
                  style_is_torgb: Sequence[bool]) -> list[np.ndarray]:
    """``s_l + strength(f) · dir_l`` per style layer (StyleCLIP global directions,
    no per-channel std scaling, ToRGB styles untouched; docs/reference.md "Editing").

    Args:
        styles: per layer ``[N, C_l]`` (the tuned generator's styles of the
            latents).
        style_is_torgb: ``Generator.style_is_torgb``.
    """
    dims = [s.shape[1] for s in styles]
    out = [s.astype(np.float64) for s in styles]
    for e in edits:
        if e.space != "s":
            continue
        try:
            pieces = installed[e.name].delta_s(1.0, dims, style_is_torgb)
        except ValueError as exc:
            raise EditInvalid(f"edit {e.name!r}: {exc}", stage="edit") from None
        k = strength_curve(e, frames)  # [N]
        for layer, piece in enumerate(pieces):
            if np.any(piece):
                out[layer] = out[layer] + k[:, None] * piece[None].astype(np.float64)
    return [s.astype(np.float32) for s in out]


def freeze_fine(pivots: np.ndarray, k: int | None) -> np.ndarray:
    """STIT ``--freeze_fine_layers K``: W+ layers ≥ K replaced by their mean over
    frames (docs/reference.md "Editing"). ``None`` leaves the pivots unchanged."""
    if k is None or k >= pivots.shape[1] or len(pivots) == 0:
        return pivots
    out = pivots.copy()
    out[:, k:] = pivots[:, k:].mean(axis=0, keepdims=True)
    return out


class EditStage(Stage):
    """Pivots -> edited latents (``stages/edit/latents.npy``), or edited styles
    (``styles.npz``) when an S-space edit is asked for.

    Writes into ``stages/edit/``: ``latents.npy`` float32 ``[N, num_ws, w_dim]``
    (rows as ``frames.json``; the pivots after ``freeze_fine_layers`` plus the W
    edits), ``styles.npz`` (``s00``, ``s01``, ... ``[N, C_l]``, only with S-space
    edits: the tuned generator's styles of the latents plus the S edits),
    ``frames.json``, ``curves.json`` (each edit's strength on every frame of the
    range) and ``preview/`` (the edit rendered by the PTI generator, a few frames).
    """

    name = "edit"
    weight = 0.5

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        cfg = ctx.config.edit
        edits = ctx.job.edits
        ctx.stage_dir(self.name)
        files = ctx.files.edit
        pivots = ctx.files.invert.pivots()
        frames = ctx.files.invert.frames()
        installed = _installed(ctx)
        check_edits(edits, installed)
        pivots = freeze_fine(pivots, cfg.freeze_fine_layers)
        latents = apply_w_edits(pivots, edits, installed, frames)
        G = ctx.files.pti.generator(ctx.device)
        s_edits, s_installed = _style_edits(ctx, edits, installed, G)
        styles: list[np.ndarray] | None = None
        if s_edits and frames:
            per_layer: list[list[np.ndarray]] = [[] for _ in range(G.num_styles)]
            with torch.no_grad():
                for rows in chunks(range(len(frames)), 64):
                    ctx.check_abort()
                    ws = torch.from_numpy(latents[list(rows)]).to(ctx.device)
                    for i, s in enumerate(G.styles(ws)):
                        per_layer[i].append(s.cpu().numpy())
            styles = apply_s_edits([np.concatenate(p) for p in per_layer], s_edits,
                                   s_installed, frames, G.style_is_torgb)
            buf = io.BytesIO()
            np.savez(buf, **{f"s{i:02d}": s for i, s in enumerate(styles)})
            atomic_write_bytes(files.styles_path, buf.getvalue())
        save_npy(files.latents_path, latents)
        atomic_write_bytes(files.frames_path, json.dumps({"frames": frames}).encode())
        rng = range(ctx.job.range.start, ctx.job.range.end)
        curves = {"frames": [rng.start, rng.stop], "edits": [
            {"name": e.name, "space": e.space, "ease": e.ease,
             "keyframes": [[k.frame, k.strength] for k in e.keyframes],
             "strength": strength_curve(e, rng).tolist(),
             **({"text": e.text, "neutral": e.neutral, "beta": e.beta}
                if e.space == "text" else {})} for e in edits]}
        atomic_write_bytes(files.curves_path, json.dumps(curves).encode())
        show = preview_frames(frames)
        if show:
            rows = [frames.index(f) for f in show]
            with torch.no_grad():
                if styles is not None:
                    img = G.synthesis_from_styles(
                        [torch.from_numpy(s[rows]).to(ctx.device) for s in styles])
                else:
                    img = G.synthesis(torch.from_numpy(latents[rows]).to(ctx.device))
            write_previews(files.preview_dir, show, img)
        ctx.report(1.0, f"{len(edits)} edit(s) on {len(frames)} frames")
        return {"frames": len(frames),
                "edits": [{"name": e.name, "space": e.space,
                           "keyframes": len(e.keyframes)} for e in edits]}


def _style_edits(ctx: StageContext, edits: Sequence[Edit],
                 installed: Mapping[str, "Direction"], G: Any
                 ) -> tuple[list[Edit], dict[str, "Direction"]]:
    """The S-space edits to apply and their directions: installed S edits as they
    are, text edits as S edits with the direction computed from their prompt
    (``engine.models.styleclip``; written to ``text_directions.npz`` for the
    record) under a key of their own, so two text edits never share one."""
    import dataclasses

    from engine.models.styleclip import text_edit_directions

    text = text_edit_directions(edits, G.style_channels, G.style_is_torgb,
                                device=ctx.device)
    table = dict(installed)
    out = []
    for i, e in enumerate(edits):
        if e.space == "s":
            out.append(e)
        elif e.space == "text":
            key = f"{e.name}#{i}"
            table[key] = text[i]
            out.append(dataclasses.replace(e, name=key, space="s"))
    if text:
        buf = io.BytesIO()
        np.savez(buf, **{f"e{i:02d}": d.vector for i, d in text.items()})
        atomic_write_bytes(ctx.files.edit.text_directions_path, buf.getvalue())
    return out, table


def _installed(ctx: StageContext) -> dict[str, "Direction"]:
    """The edits installed for the job's model profile (the profile the earlier
    stages resolved, so "auto" cannot change its mind mid-job)."""
    from engine.models.directions import available_edits

    profile = (ctx.info.get("models") or {}).get("profile") or ctx.config.profile
    return available_edits(profile)
