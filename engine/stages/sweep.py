"""A draft's edit at every strength of its sweep: rendered, pasted back, on a sheet.

The last stage of a ``draft`` job (docs/pipeline.md "Drafts"). For each row of the
sweep (``options.draft.sweep``, :func:`fsexchange.grammar.sweep_rows`: every
combination of the swept strengths, the first edit varying slowest; one row of
the job's own edits without a sweep) the pivots get that row's edits
(:func:`engine.stages.edit.apply_w_edits`, S-space ones on the styles as the edit
stage applies them), the generator renders them untuned (the cached original, or
the draft's short PTI when ``--draft-pti`` ran), and each face is pasted back
naively with the face mask (:func:`engine.stages.render.naive_alpha`,
:func:`engine.stages.paste.paste_back`).

Writes into ``output/``:

- ``sweep/r<row:02d>_<strengths>/<name>.<number>.<ext>``: one folder per row, a
  full-resolution RGBA frame per draft frame in the job's frame format (png16
  for ``prores4444`` jobs), numbered like every output (by source frame,
  ``engine.media.video.output_name``); frames without the face are the source
  with alpha 0;
- ``sweep.png``: the sheet. A header row of frame numbers, then the aligned source
  faces, then one row per strength in sweep order, each labelled on the left;
  each tile is the edited face pasted into the aligned crop with the same alpha
  (what the full-resolution frame shows there, at face scale);
- ``sweep.json``: the sheet's layout (each row's label, strengths, folder and
  pixel rows; each column's frame and pixel columns).

Facts for ``Result/1``: ``variants`` (one per row, :class:`fsexchange.documents.
Variant`), ``frames`` (the middle row's), ``outputs`` (``sheet``,
``sheet_layout``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from fsexchange.documents import Edit, FrameOutput, Job, Variant
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.grammar import (check_sweep_edits, format_sweep, parse_sweep,
                                sweep_row_folder, sweep_row_label, sweep_rows)

from engine.stages.contract import Stage, StageContext
from engine.stages.crops import chunks, tensor_to_image
from engine.stages.draft import check_sweep_installed, draft_frames
from engine.stages.edit import apply_s_edits, apply_w_edits, check_edits, freeze_fine
from engine.stages.paste import FORMAT_EXT, paste_back
from engine.stages.render import RENDER_BATCH, naive_alpha

__all__ = ["SweepStage", "sheet"]

log = logging.getLogger(__name__)

SHEET_LABEL_WIDTH = 170  # pixels of the label column
SHEET_HEADER = 28  # pixels of the frame-number row
_BG = 32  # sheet background grey


Row = tuple[tuple[str, float], ...]  # (edit name, strength) per swept edit


def _tile(img: np.ndarray | None, size: int) -> np.ndarray:
    import cv2

    from engine.media.video import to_depth

    if img is None:  # no face at this frame
        return np.full((size, size, 3), 64, np.uint8)
    a = to_depth(np.ascontiguousarray(img[..., :3]), 8)
    interp = cv2.INTER_AREA if a.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(a, (size, size), interpolation=interp)


def _text(img: np.ndarray, text: str, x: int, y: int) -> None:
    import cv2

    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1,
                cv2.LINE_AA)


def sheet(frames: Sequence[int], rows: Sequence[tuple[str, Sequence[Any]]],
          tile: int, *, banner: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """The sweep sheet: ``rows`` of ``(label, one image or None per frame)``;
    ``banner`` (the tiny networks' warning) in red in the top-left corner.

    Returns:
        RGB uint8 ``[SHEET_HEADER + len(rows)·tile, SHEET_LABEL_WIDTH +
        len(frames)·tile]`` and its layout (``rows[i]``: ``label``, ``y0``, ``y1``;
        ``columns[j]``: ``frame``, ``x0``, ``x1``; half-open pixel ranges).
    """
    h = SHEET_HEADER + len(rows) * tile
    w = SHEET_LABEL_WIDTH + len(frames) * tile
    out = np.full((h, w, 3), _BG, np.uint8)
    if banner:
        import cv2

        cv2.putText(out, banner, (6, SHEET_HEADER - 9), cv2.FONT_HERSHEY_SIMPLEX,
                    0.42, (255, 60, 60), 1, cv2.LINE_AA)
    columns = []
    for j, f in enumerate(frames):
        x0 = SHEET_LABEL_WIDTH + j * tile
        columns.append({"frame": int(f), "x0": x0, "x1": x0 + tile})
        _text(out, f"frame {f}", x0 + 6, SHEET_HEADER - 9)
    layout_rows = []
    for i, (label, images) in enumerate(rows):
        y0 = SHEET_HEADER + i * tile
        layout_rows.append({"label": label, "y0": y0, "y1": y0 + tile})
        _text(out, label, 8, y0 + tile // 2 + 5)
        for j, img in enumerate(images):
            x0 = SHEET_LABEL_WIDTH + j * tile
            out[y0:y0 + tile, x0:x0 + tile] = _tile(img, tile)
    return out, {"tile": tile, "rows": layout_rows, "columns": columns}


class SweepStage(Stage):
    """Every strength rendered, pasted back per frame, and the sheet."""

    name = "sweep"
    weight = 2.0

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import dataclasses

        from engine.media.video import encode_png, read_frames_at
        from fsexchange.media import probe

        job, cfg = ctx.job, ctx.config
        axes = parse_sweep(cfg.draft.sweep)
        check_sweep_edits(axes, job.edits)
        models = dataclasses.replace(ctx, reuse_models=True).load_models()
        installed = models.directions
        check_edits(job.edits, installed)
        check_sweep_installed(axes, installed)  # again: another engine may resume
        pti = ctx.files.pti
        G = pti.generator(ctx.device) if pti.done_path.exists() else models.generator
        clip = ctx.files.align.clip()
        faces = ctx.files.invert.frames()  # the draft frames with a face
        all_frames = draft_frames(job.range.start, job.range.end, cfg.draft)
        rows = sweep_rows(axes)
        edited_ws = self._latents(ctx, rows, faces, installed)
        # faces rendered together: every row of as many faces as one forward pass
        # takes (one face per pass at 1024 px, every face at once when tiny)
        per_group = max(1, _per_pass(G.img_resolution) // len(rows))
        rendered: dict[int, list[np.ndarray]] = {}
        alphas = {f: naive_alpha(clip.mask(f), cfg.mask) for f in faces}

        out_dir = ctx.output_dir()
        ext = FORMAT_EXT.get(job.output.format, "png")
        folders = [sweep_row_folder(r, row) for r, row in enumerate(rows)]
        for name in folders:
            (out_dir / "sweep" / name).mkdir(parents=True, exist_ok=True)
        outputs: list[list[dict[str, Any]]] = [[] for _ in rows]
        tiles: list[list[np.ndarray | None]] = [[] for _ in range(len(rows) + 1)]
        depth = 16 if probe(ctx.source_path(), job.range.rate).bit_depth > 8 else 8
        # Frame by frame, every row rendered in batches. Encoding full-resolution
        # frames dominates on a GPU machine: cv2 and OpenEXR release the GIL, so
        # frames encode in parallel, at most 2 per thread waiting (memory).
        threads = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pending = []
            waited = 0
            for k, (index, src) in enumerate(read_frames_at(
                    ctx.source_path(), all_frames, depth=depth)):
                ctx.check_abort()
                face = faces.index(index) if index in faces else None
                real = clip.crop(index) if face is not None else None
                tiles[0].append(real)
                if face is not None and index not in rendered:  # this face and
                    # the next ones, as many as fill a forward pass
                    todo = list(range(face, min(face + per_group, len(faces))))
                    rendered.update(self._render(ctx, G, edited_ws, todo, faces,
                                                 installed, clip.resolution))
                crops = rendered.pop(index, [])
                for r in range(len(rows)):
                    if face is None:
                        edited = None
                        rgba = np.concatenate([_depth16(src), np.zeros(
                            src.shape[:2] + (1,), np.uint16)], axis=2)
                    else:
                        a = alphas[index]
                        rgba = paste_back(src, crops[r], a, clip.quad(index))
                        edited = _composite(crops[r], real, a)
                    tiles[r + 1].append(edited)
                    rel = f"output/sweep/{folders[r]}/{_output_name(job, index, ext)}"
                    pending.append((r, index, face is not None, rel,
                                    pool.submit(_write, ctx.job_dir / rel, ext, rgba)))
                while waited < len(pending) - 2 * threads:
                    pending[waited][-1].result()
                    waited += 1
                ctx.report((k + 1) / len(all_frames),
                           f"frame {index} at {len(rows)} strength(s)")
            for r, index, edited, rel, fut in pending:
                outputs[r].append(FrameOutput(index, rel, fut.result(),
                                              edited).to_dict())
        labels = [sweep_row_label(row, job.edits) for row in rows]
        img, layout = sheet(all_frames, [("source", tiles[0])]
                            + list(zip(labels, tiles[1:])), cfg.draft.tile,
                            banner="TINY TEST NETWORKS" if models.tiny else "")
        for entry, row, folder in zip(layout["rows"][1:], rows, folders):
            entry.update(strengths=[[n, s] for n, s in row],
                         folder=f"output/sweep/{folder}")
        atomic_write_bytes(out_dir / "sweep.png", encode_png(img))
        atomic_write_bytes(out_dir / "sweep.json", json.dumps(layout, indent=1)
                           .encode())
        variants = [Variant(label, row, f"output/sweep/{folder}", tuple(
            FrameOutput(**f) for f in frames)).to_dict()
            for label, row, folder, frames in zip(labels, rows, folders, outputs)]
        ctx.info["sweep"] = format_sweep(axes)
        ctx.report(1.0, f"{len(rows)} strength(s) on {len(all_frames)} frames")
        return {"frames": outputs[len(rows) // 2], "variants": variants,
                "rows": len(rows),
                "outputs": {"sheet": "output/sweep.png",
                            "sheet_layout": "output/sweep.json"}}

    def _latents(self, ctx: StageContext, rows: Sequence[Row], faces: Sequence[int],
                 installed: Any) -> list[tuple[np.ndarray, list[Edit]]]:
        """Per row: its edited W+ latents ``[faces, num_ws, w_dim]`` (the pivots
        after ``edit.freeze_fine_layers`` plus the job's and the row's W edits) and
        its S-space edits (applied when rendering)."""
        base = freeze_fine(ctx.files.invert.pivots(),
                           ctx.config.edit.freeze_fine_layers)
        out = []
        for row in rows:
            edits = list(ctx.job.edits) + [
                Edit(n, s, space=installed[n].space) for n, s in row]
            out.append((apply_w_edits(base, edits, installed, faces),
                        [e for e in edits if e.space == "s"]))
        return out

    def _render(self, ctx: StageContext, G: Any,
                edited_ws: Sequence[tuple[np.ndarray, list[Edit]]],
                todo: Sequence[int], faces: Sequence[int], installed: Any,
                size: int) -> dict[int, list[np.ndarray]]:
        """Faces ``todo`` (indices into ``faces``) at every row's edit, untuned:
        frame -> 16-bit ``[size, size, 3]`` per row (resized when the crops are
        not at the generator's resolution)."""
        import cv2
        import torch

        pairs = [(r, i) for i in todo for r in range(len(edited_ws))]
        images: list[np.ndarray] = []
        for part in chunks(pairs, _per_pass(G.img_resolution)):
            ctx.check_abort()
            ws = torch.from_numpy(np.stack([edited_ws[r][0][i] for r, i in part])
                                  ).to(ctx.device)
            with torch.no_grad():
                if any(edited_ws[r][1] for r, _ in part):
                    # S edits as the edit stage applies them: on G's styles of w
                    styles = [s.cpu().numpy() for s in G.styles(ws)]
                    per = [apply_s_edits([s[j:j + 1] for s in styles],
                                         edited_ws[r][1], installed, [faces[i]],
                                         G.style_is_torgb)
                           for j, (r, i) in enumerate(part)]
                    x = G.synthesis_from_styles([
                        torch.from_numpy(np.concatenate([p[k] for p in per])
                                         ).to(ctx.device)
                        for k in range(len(styles))])
                else:
                    x = G.synthesis(ws)  # [B, 3, R, R]
            for img in x:
                crop = tensor_to_image(img, depth=16)
                if crop.shape[0] != size:
                    crop = cv2.resize(crop, (size, size), interpolation=(
                        cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR))
                images.append(crop)
        out: dict[int, list[np.ndarray]] = {}
        for (_, i), crop in zip(pairs, images):
            out.setdefault(faces[i], []).append(crop)
        return out


def _per_pass(resolution: int) -> int:
    """Images per generator forward pass: :data:`RENDER_BATCH` at 1024 px, more
    for smaller generators (same pixels; a tiny network spends its time in the
    per-call overhead, not in the arithmetic)."""
    return max(1, RENDER_BATCH * (1024 // max(resolution, 1)) ** 2)


def _depth16(img: np.ndarray) -> np.ndarray:
    from engine.media.video import to_depth

    return to_depth(img, 16)


def _output_name(job: Job, index: int, ext: str) -> str:
    from engine.media.video import output_name

    return output_name(job, index, ext)


def _composite(crop16: np.ndarray, real: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The edited crop over the real one with the paste alpha, uint8 (a tile)."""
    from engine.media.video import to_depth

    a = np.clip(alpha, 0, 1)[..., None]
    edit = to_depth(crop16, 8).astype(np.float32)
    base = to_depth(np.ascontiguousarray(real[..., :3]), 8).astype(np.float32)
    return np.rint(a * edit + (1 - a) * base).astype(np.uint8)


def _write(path: Any, ext: str, rgba: np.ndarray) -> str:
    """Encode and write one frame atomically; its sha256."""
    from engine.media.video import encode_rgba

    data = encode_rgba(ext, rgba)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
