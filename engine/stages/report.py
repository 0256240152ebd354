"""The job report: ``output/report.html``, one self-contained file.

Everything is inline (PNG thumbnails as base64 data URIs, plots as inline SVG, CSS
in a ``<style>`` block; no scripts, no external fetches), so the file can be mailed,
archived next to the result or opened offline. Sections, for what exists in the
job folder:

- a loud banner when the tiny test profile was used ("tiny test networks — not a
  real edit");
- a filmstrip of a few frames: source, aligned crop, inversion (e4e), PTI
  reconstruction, edit, stitched (tuned) crop, the paste alpha, final composite;
- PTI loss per pass, stitching border loss per step, edit strength curves (SVG);
- reconstruction error before/after PTI, border error naive/tuned;
- the temporal refinement (``refine``): both phases' losses per step, the warping
  error and LPIPS to the direct edit of the aligned edited frames before and
  after, which flow ran, and x–t slices through the face (source, direct edit,
  refined) where flicker shows as ragged vertical streaks;
- per-stage timings (from each stage's ``DONE.msgpack``), the models used, warnings;
- the temporal metrics of :mod:`engine.quality.metrics` (TL-ID, TG-ID, warping error) of
  the composited result against the source, with their per-frame plot.

``align-preview`` jobs get the subset that exists (source, crop, alpha, final,
timings, metrics). For log, HDR and linear sources the filmstrip adds the
networks' rendering of the source frame ("network view") next to it, and a Colour
section says which encoding and view transform were used (docs/colour.md).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from typing import Any, Iterable, Sequence

import numpy as np

from fsexchange.fsutil import atomic_write_bytes

from engine.quality.charts import line_chart_svg
from engine.stages.contract import Stage, StageContext
from engine.stages.crops import preview_frames
from engine.stages.outputs import JobFiles, crop_name

__all__ = ["ReportStage", "png_data_uri",
           "TINY_BANNER", "render_report"]

log = logging.getLogger(__name__)

TINY_BANNER = "tiny test networks — not a real edit"
#: Frames shown in the filmstrip.
THUMB = 160  # filmstrip thumbnail height in pixels


def png_data_uri(img: np.ndarray, height: int | None = THUMB) -> str:
    """An image (HxW or HxWx3, uint8/uint16/float 0..1; alpha is dropped) as a
    ``data:image/png`` URI, resized to ``height`` when given."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 3:
        a = a[:, :, :3]
    if a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if height and a.shape[0] != height:
        w = max(1, round(a.shape[1] * height / a.shape[0]))
        interp = cv2.INTER_AREA if a.shape[0] > height else cv2.INTER_NEAREST
        a = cv2.resize(a, (w, height), interpolation=interp)
    from engine.media.video import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(a)).decode()


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _batching(pti: dict[str, Any]) -> str:
    """Why the fast recipe's PTI ran at its batch, when it measured whether a
    mini-batch pays (loss.json ``batching``, engine/stages/recipe.py); "" else."""
    b = pti.get("batching")
    try:
        batch, gain = int(b["batch"]), float(b["gain"])
    except (KeyError, TypeError, ValueError):
        return ""
    if not -1.0 < gain < float("inf"):  # NaN too
        return ""
    used = pti.get("batch_size") == batch
    return (f" (per frame, a mini-batch of {batch} measured "
            f"{1 / (1 + gain):.2f}&times; batch 1's seconds: "
            + ("used" if used else "not worth its other arithmetic") + ")")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;
padding:3px 8px;text-align:left}th{background:#f4f4f4}
.banner{background:#c00;color:#fff;font-size:20px;font-weight:bold;padding:14px;
margin:12px 0;border-radius:4px}
.warn{background:#fff4d6;border:1px solid #e0b400;padding:8px;margin:6px 0}
.strip td{text-align:center;vertical-align:top;font-size:12px}
.strip img{display:block;margin:auto;image-rendering:auto}
.small{color:#666;font-size:12px}
"""


def render_report(*, title: str, banner: str | None, warnings: Sequence[str],
                  sections: Iterable[tuple[str, str]]) -> str:
    """Assemble the HTML page from ``(heading, html body)`` sections."""
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f"<div class='banner'>&#9888; {html.escape(banner)}</div>")
    for w in warnings:
        parts.append(f"<div class='warn'>{html.escape(w)}</div>")
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    return "".join(parts)


def _strength_text(e: Any) -> str:
    """``-4`` or ``0@10,-4@20`` (STRENGTH@FRAME, the CLI's keyframe syntax)."""
    if not e.keyframes:
        return f"{e.strength:g}"
    return ",".join(f"{k.strength:g}@{k.frame}" for k in e.keyframes)


def _recipe_text(ctx: StageContext) -> str:
    """The recipe the job trained with (docs/pipeline.md "Recipes"), as PTI
    recorded it, else the job's option."""
    pti = ctx.files.pti.loss() or {}
    recipe = pti.get("recipe") or ctx.config.recipe
    what = {"reference": "STIT's arithmetic: float32, one update per frame in order",
            "fast": "mini-batches, lr scaled by the batch, shuffled frames"}
    return f"{recipe} ({what[recipe]})" if recipe in what else str(recipe)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


class ReportStage(Stage):
    """Writes ``output/report.html`` and returns the temporal metrics."""

    name = "report"
    weight = 1.0

    def run(self, ctx: StageContext) -> dict[str, Any]:
        job = ctx.job
        done = ctx.files.completed()
        paste = done.get("paste")
        outputs = [f for f in (paste.facts.get("frames") if paste else None) or []
                   if isinstance(f, dict)]
        metrics = None
        metrics_html = "<p>metrics are off for this job (options.metrics.enabled)</p>"
        colour = self._colour_pipeline(ctx)
        if ctx.config.metrics.enabled and outputs:
            try:
                metrics, metrics_html = self._metrics(ctx, outputs, colour)
            except Exception as exc:  # noqa: BLE001 - a report never fails a job
                log.warning("report: metrics failed: %s", exc, exc_info=True)
                ctx.warn(f"temporal metrics could not be computed: {exc}")
                metrics_html = f"<p>metrics failed: {html.escape(str(exc))}</p>"
        ctx.check_abort()
        models = dict(ctx.info.get("models") or {})
        tiny = bool(models.get("tiny")) or any("tiny test networks" in w
                                               for w in ctx.warnings)
        sections = [("Job", self._job_table(ctx, models))]
        if colour is not None:
            sections.append(("Colour", self._colour_table(colour)))
        sections.append(("Filmstrip", self._filmstrip(ctx, outputs, colour)))
        sections += self._tuning_sections(ctx.files)
        sections.append(("Temporal metrics", metrics_html))
        sections.append(("Stage timings", self._timings(done)))
        sections.append(("Models", self._models(models)))
        page = render_report(
            title=f"FaceStitch report — job {job.id}",
            banner=(TINY_BANNER + " (the official models are not installed; "
                    "results only show that the pipeline runs)") if tiny else None,
            warnings=[w for w in ctx.warnings if "tiny test networks" not in w],
            sections=sections)
        out = ctx.output_dir() / "report.html"
        atomic_write_bytes(out, page.encode("utf-8"))
        facts: dict[str, Any] = {"outputs": {"report": "output/report.html"}}
        if metrics is not None:
            facts["metrics"] = metrics.to_dict()
        return facts

    # --- sections ----------------------------------------------------------------

    @staticmethod
    def _colour_pipeline(ctx: StageContext) -> Any:
        from engine.media.colour import pipeline_for
        from fsexchange.errors import FaceStitchError
        from fsexchange.media import probe

        try:
            return pipeline_for(ctx.config.colour,
                                probe(ctx.source_path(), ctx.job.range.rate))[0]
        except (FaceStitchError, OSError) as exc:
            log.warning("report: no colour pipeline: %s", exc)
            return None

    @staticmethod
    def _colour_table(colour: Any) -> str:
        d = colour.describe()
        seen = ("the source as it is (Rec.709 / sRGB code values)"
                if colour.identity else f"{d['display']}, view {d['view']}")
        rows = [["source colour space", html.escape(d["source"])],
                ["what the networks see", html.escape(seen)],
                ["EXR output", html.escape(d["linear"])],
                ["OCIO config", html.escape(d["config"])]]
        return _table(rows, ["", ""]) + ("<p class='small'>docs/colour.md explains "
                                         "the conversions and their tolerances.</p>")

    @staticmethod
    def _as_source(img: np.ndarray, path: Any, colour: Any) -> tuple[np.ndarray, bool]:
        """A result frame in the source's encoding, and whether it is premultiplied:
        EXR results are scene-linear and premultiplied (paste stage)."""
        if path.suffix.lower() != ".exr" or colour is None:
            return img, path.suffix.lower() == ".exr"
        a = np.clip(img[..., 3:4], 0, 1)
        rgb = img[..., :3] / np.maximum(a, 1e-12)
        out = np.concatenate([colour.from_linear(rgb), a], axis=2)
        return out.astype(np.float32), False

    def _metrics(self, ctx: StageContext, outputs: list[dict],
                 colour: Any = None) -> tuple[Any, str]:
        from engine.quality.charts import metrics_svg
        from engine.quality.metrics import temporal_metrics
        from engine.media.video import read_frames, read_image, to_depth

        job = ctx.job
        start, end = job.range.start, job.range.end
        src = (f for _, f in read_frames(ctx.source_path(), start, end))
        paths = [ctx.job_dir / o["path"] for o in outputs]
        if paths and paths[0].suffix.lower() == ".mov":
            edited = (f for _, f in read_frames(paths[0], alpha=True))
        else:  # EXR results back in the source's encoding, straight alpha
            edited = (to_depth(self._as_source(read_image(p), p, colour)[0], 16)
                      if p.suffix.lower() == ".exr" and colour is not None
                      else read_image(p) for p in paths)
        n = end - start

        def on_frame(i: int) -> None:
            ctx.check_abort()
            ctx.report(min(0.95, (i + 1) / max(n, 1)), f"metrics frame {i + 1}/{n}")

        m = temporal_metrics(src, edited, cfg=ctx.config.metrics, device=ctx.device,
                             premultiplied=(job.output.format == "exr"
                                            and colour is None),
                             on_frame=on_frame)
        d = m.to_dict()
        rows = [[k, _num(d.get(k))] for k in
                ("tl_id", "tg_id", "tl_id_raw", "tg_id_raw", "tl_id_source_raw",
                 "tg_id_source_raw", "warp_error", "warp_error_source", "frames",
                 "frames_without_face")]
        body = (_table(rows, ["metric", "value"])
                + "<p class='small'>TL-ID / TG-ID: identity similarity of adjacent / "
                "all frame pairs, divided by the source's own (1 = as consistent as "
                "the source); identity network: "
                f"{html.escape(d.get('identity_network', ''))}. Warping error: "
                f"{html.escape(d['definitions']['warp_error'])} "
                f"Backends: {html.escape(json.dumps(d.get('backends', {})))}</p>"
                + metrics_svg(m, first_frame=start))
        return m, body

    def _job_table(self, ctx: StageContext, models: dict) -> str:
        job = ctx.job
        edits = ", ".join(f"{e.name}={_strength_text(e)} ({e.space}"
                          f"{', ' + e.ease if e.keyframes else ''})"
                          for e in job.edits) or "none"
        rows = [["kind", html.escape(job.kind)],
                ["source", html.escape(job.source.path)],
                ["range", f"{job.range.start}–{job.range.end - 1} "
                          f"({job.range.count} frames at {job.range.rate} fps)"],
                ["edits", html.escape(edits)],
                ["profile", html.escape(str(models.get("profile",
                                                       ctx.config.profile)))],
                ["recipe", html.escape(_recipe_text(ctx))],
                ["device", html.escape(ctx.device)]]
        return _table(rows, ["", ""])

    def _filmstrip(self, ctx: StageContext, outputs: list[dict],
                   colour: Any = None) -> str:
        from engine.stages.mask import paste_alpha
        from engine.media.composite import composite_over
        from engine.media.video import read_frames, read_image

        files = ctx.files
        try:
            clip = files.align.clip()
        except (OSError, ValueError):
            return "<p>no aligned frames</p>"
        show = preview_frames(clip.frames)
        if not show:
            return "<p>the face was not found in any frame</p>"
        by_frame = {int(o["frame"]): ctx.job_dir / o["path"] for o in outputs}
        columns = [("source", None), ("aligned crop", files.align.crops_dir),
                   ("inversion (e4e)", files.invert.preview_dir),
                   ("PTI reconstruction", files.pti.preview_dir),
                   ("edit", files.edit.preview_dir),
                   ("refined", files.refine.preview_dir),
                   ("stitched", files.stitch_tune.crops_dir),
                   ("alpha", files.stitch_tune.alpha_dir),
                   # --no-stitch: the edit as rendered, and its naive alpha
                   ("edit, untuned", files.render.crops_dir),
                   ("alpha", files.render.alpha_dir), ("final", None)]
        columns = [(n, p) for n, p in columns
                   if p is None or any((p / crop_name(f)).exists() for f in show)]
        convert = colour is not None and not colour.identity
        if convert:
            columns.insert(1, ("network view", None))
        if not any(n == "alpha" for n, _ in columns):
            columns.insert(2, ("alpha", "mask"))
        head = "".join(f"<th>{html.escape(n)}</th>" for n, _ in columns)
        rows = []
        src_path = ctx.source_path()
        for f in show:
            try:
                src = next(iter(read_frames(src_path, f, f + 1,
                                            depth=32 if convert else 8)))[1]
            except Exception:  # noqa: BLE001
                src = None
            cells = []
            for name, p in columns:
                img = None
                try:
                    if name == "source":
                        img = src
                    elif name == "network view" and src is not None:
                        img = colour.to_network(src)
                    elif name == "final":
                        out = by_frame.get(f)
                        if out is not None and out.suffix.lower() != ".mov" \
                                and src is not None:
                            layer, premul = self._as_source(read_image(out), out,
                                                            colour)
                            img = composite_over(layer, src, premultiplied=premul)
                    elif p == "mask":
                        img = paste_alpha(clip.mask(f), ctx.config.mask)
                    elif p is not None and (p / crop_name(f)).exists():
                        img = read_image(p / crop_name(f))
                except Exception as exc:  # noqa: BLE001 - show what exists
                    log.debug("report: %s of frame %d: %s", name, f, exc)
                cells.append(f"<img src='{png_data_uri(img)}' alt='{name} {f}'>"
                             if img is not None else "—")
            rows.append(f"<tr><th>frame {f}</th>"
                        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return (f"<table class='strip'><tr><th></th>{head}</tr>{''.join(rows)}"
                "</table>")

    def _tuning_sections(self, files: JobFiles) -> list[tuple[str, str]]:
        out = []
        pti = files.pti.loss()
        if pti:
            passes = pti.get("passes") or []
            chart = line_chart_svg(
                {"total": [p["loss"] for p in passes],
                 "10·MSE" if pti.get("l2_weight") == 10 else "MSE×λ":
                     [p["mse"] * pti.get("l2_weight", 1) for p in passes],
                 "LPIPS": [p["lpips"] for p in passes]},
                title="PTI loss per pass (mean over frames)", xlabel="pass", x0=1,
                log_y=True)
            b, a = pti.get("before") or {}, pti.get("after") or {}
            table = _table([[k, _num(b.get(k)), _num(a.get(k))]
                            for k in ("mse", "psnr", "lpips")],
                           ["reconstruction over all frames", "before PTI (e4e)",
                            "after PTI"])
            order = ("shuffled" if pti.get("shuffle") else "in order") \
                if "shuffle" in pti else "n/a"
            out.append(("PTI", chart + table + f"<p class='small'>{pti.get('frames')} "
                        f"frames, recipe {_num(pti.get('recipe'))}, batch "
                        f"{pti.get('batch_size')}{_batching(pti)}, lr {pti.get('lr')}, "
                        f"{_num(pti.get('dtype'))}, frames {order}, formulation "
                        f"{_num(pti.get('formulation'))}</p>"))
        refine = _refine_section(files)
        if refine:
            out.append(refine)
        sm = files.stitch_tune.summary()
        if sm:
            series = {"mean border loss": sm.get("mean_curve") or []}
            for f, c in list(zip(sm.get("frames", []), sm.get("curves", [])))[:4]:
                series[f"frame {f}"] = c
            chart = line_chart_svg(series, title="Stitching tuning: border loss per "
                                   "step", xlabel="step", log_y=True)
            table = _table([["border error (mean)", _num(sm.get("border_before")),
                             _num(sm.get("border_after"))],
                            ["steps (mean)", "", _num(sm.get("mean_steps"))]],
                           ["", "naive paste", "stitching-tuned"])
            note = (f"<p class='small'>recipe {_num(sm.get('recipe'))}, "
                    f"{_num(sm.get('dtype'))}, {_num(sm.get('batch_size'))} frames "
                    f"at once, formulation {_num(sm.get('formulation'))}</p>")
            out.append(("Stitching tuning", chart + table + note))
        curves = files.edit.curves()
        if curves and curves.get("edits"):
            series = {f"{e['name']} ({e['space']})": e["strength"]
                      for e in curves["edits"]}
            out.append(("Edit strength per frame", line_chart_svg(
                series, title="edit strength (STIT units)", xlabel="source frame",
                x0=curves["frames"][0])))
        return out

    def _timings(self, done: dict[str, Any]) -> str:
        rows, total = [], 0.0
        for name, doc in done.items():
            facts = doc.facts
            frames = facts.get("frames")
            n = len(frames) if isinstance(frames, list) else frames
            fps = facts.get("frames_per_second")
            rows.append([html.escape(name), f"{doc.seconds:.2f}", _num(n),
                         _num(fps, 3) if fps else ""])
            total += doc.seconds
        rows.append(["<b>total</b>", f"<b>{total:.2f}</b>", "", ""])
        return _table(rows, ["stage", "seconds", "frames", "frames/s (tuning)"]) + \
            "<p class='small'>The report stage itself is not listed.</p>"

    def _models(self, models: dict) -> str:
        if not models:
            return "<p>no networks were used (alignment only)</p>"
        rows = [[html.escape(str(k)), html.escape(json.dumps(v) if not isinstance(
            v, str) else v)] for k, v in models.items()]
        return _table(rows, ["", ""])


def _refine_section(files: JobFiles) -> tuple[str, str] | None:
    """The temporal refinement: losses, before/after figures, x–t slices."""
    done = files.done("refine")
    if done is None:
        return None
    if not done.facts.get("enabled", True) or done.facts.get("skipped"):
        why = done.facts.get("skipped") or "off for this job (options.refine.enabled)"
        return ("Temporal refinement", f"<p>{html.escape(str(why))}</p>")
    sm = files.refine.summary()
    if not sm:
        return None
    steps = sm.get("steps") or []
    series: dict[str, list[float | None]] = {}
    for phase, label in ((1, "phase 1 (latent mapper)"), (2, "phase 2 (generator)")):
        series[f"{label}: total"] = [s["loss"] if s.get("phase") == phase else None
                                     for s in steps]
    series["photometric (LPIPS)"] = [s.get("photo") for s in steps]
    series["preservation"] = [s.get("out") for s in steps]
    chart = line_chart_svg(series, title="Temporal refinement: loss per step (both "
                           "phases)", xlabel="step", x0=1, log_y=True)
    ev = sm.get("evaluation") or {}
    table = _table([
        ["warping error, aligned edited frames", _num(ev.get("warp_error_before")),
         _num(ev.get("warp_error_after"))],
        ["LPIPS to the direct edit", "0", _num(ev.get("lpips_to_direct_edit"))],
        ["warping error of the aligned source", _num(ev.get("warp_error_source")),
         ""]], ["", "direct edit", "refined"])
    st = sm.get("settings") or {}
    e1, e2 = (sm.get("epochs") or [None, None])[:2]
    lr1, lr2 = (sm.get("lr") or [None, None])[:2]
    note = (f"<p class='small'>Flow: {html.escape(str(sm.get('flow_name')))} at "
            f"{sm.get('working_size')} px; anchor frame {sm.get('anchor')}; "
            f"{e1} + {e2} epochs, {sm.get('batch_size')} pairs per step, lr "
            f"{_num(lr1)} / {_num(lr2)}"
            f"; photometric {_num(st.get('weight_photo'))}·LPIPS"
            + (f" + {_num(st.get('weight_photo_l1'))}·L1"
               if st.get("weight_photo_l1") else "")
            + f", cycle {_num(st.get('weight_cycle'))}, preservation "
            f"{_num(st.get('weight_out_mask_w'))} / {_num(st.get('weight_out_mask_g'))}"
            f", locality {_num(st.get('reg_g'))}. Warping error: consecutive aligned "
            f"frames, flow and occlusion from the aligned source "
            f"({html.escape(str(sm.get('metrics_flow')))}).</p>")
    cells = []
    for which, label in (("source", "source"), ("before", "direct edit"),
                         ("after", "refined")):
        p = files.refine.scanline_path(which)
        if p.exists():
            from engine.media.video import read_image

            img = read_image(p)
            h = max(THUMB, img.shape[0])
            cells.append(f"<td>{label}<br><img src='{png_data_uri(img, h)}' "
                         f"alt='x-t slice {label}'></td>")
    strip = ("<p class='small'>x–t slices: the middle row of the aligned face "
             "(across) in every frame (down); flicker shows as ragged streaks.</p>"
             f"<table class='strip'><tr>{''.join(cells)}</tr></table>") if cells else ""
    return ("Temporal refinement", chart + table + note + strip)
