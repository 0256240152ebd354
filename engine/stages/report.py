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
- per-stage timings (from each stage's ``DONE.msgpack``), the models used, warnings;
- the temporal metrics of :mod:`engine.quality.metrics` (TL-ID, TG-ID, warping error) of
  the composited result against the source, with their per-frame plot.

``align-preview`` jobs get the subset that exists (source, crop, alpha, final,
timings, metrics).
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
        if ctx.config.metrics.enabled and outputs:
            try:
                metrics, metrics_html = self._metrics(ctx, outputs)
            except Exception as exc:  # noqa: BLE001 - a report never fails a job
                log.warning("report: metrics failed: %s", exc, exc_info=True)
                ctx.warn(f"temporal metrics could not be computed: {exc}")
                metrics_html = f"<p>metrics failed: {html.escape(str(exc))}</p>"
        ctx.check_abort()
        models = dict(ctx.info.get("models") or {})
        tiny = bool(models.get("tiny")) or any("tiny test networks" in w
                                               for w in ctx.warnings)
        sections = [("Job", self._job_table(ctx, models))]
        sections.append(("Filmstrip", self._filmstrip(ctx, outputs)))
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

    def _metrics(self, ctx: StageContext, outputs: list[dict]) -> tuple[Any, str]:
        from engine.quality.charts import metrics_svg
        from engine.quality.metrics import temporal_metrics
        from engine.media.video import read_frames, read_image

        job = ctx.job
        start, end = job.range.start, job.range.end
        src = (f for _, f in read_frames(ctx.source_path(), start, end))
        paths = [ctx.job_dir / o["path"] for o in outputs]
        if paths and paths[0].suffix.lower() == ".mov":
            edited = (f for _, f in read_frames(paths[0], alpha=True))
        else:
            edited = (read_image(p) for p in paths)
        n = end - start

        def on_frame(i: int) -> None:
            ctx.check_abort()
            ctx.report(min(0.95, (i + 1) / max(n, 1)), f"metrics frame {i + 1}/{n}")

        m = temporal_metrics(src, edited, cfg=ctx.config.metrics, device=ctx.device,
                             premultiplied=job.output.format == "exr",
                             on_frame=on_frame)
        d = m.to_dict()
        rows = [[k, _num(d.get(k))] for k in
                ("tl_id", "tg_id", "tl_id_raw", "tg_id_raw", "tl_id_source_raw",
                 "tg_id_source_raw", "warp_error", "warp_error_source", "frames",
                 "frames_without_face")]
        body = (_table(rows, ["metric", "value"])
                + "<p class='small'>TL-ID / TG-ID: identity similarity of adjacent / "
                "all frame pairs, divided by the source's own (1 = as consistent as "
                "the source). Warping error: occlusion-masked, flow from the source. "
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

    def _filmstrip(self, ctx: StageContext, outputs: list[dict]) -> str:
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
                   ("stitched", files.stitch_tune.crops_dir),
                   ("alpha", files.stitch_tune.alpha_dir), ("final", None)]
        columns = [(n, p) for n, p in columns
                   if p is None or any((p / crop_name(f)).exists() for f in show)]
        if not any(n == "alpha" for n, _ in columns):
            columns.insert(2, ("alpha", "mask"))
        head = "".join(f"<th>{html.escape(n)}</th>" for n, _ in columns)
        rows = []
        src_path = ctx.source_path()
        for f in show:
            try:
                src = next(iter(read_frames(src_path, f, f + 1)))[1]
            except Exception:  # noqa: BLE001
                src = None
            cells = []
            for name, p in columns:
                img = None
                try:
                    if name == "source":
                        img = src
                    elif name == "final":
                        out = by_frame.get(f)
                        if out is not None and out.suffix.lower() != ".mov" \
                                and src is not None:
                            img = composite_over(read_image(out), src,
                                                 premultiplied=out.suffix == ".exr")
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
                        f"{pti.get('batch_size')}, lr {pti.get('lr')}, "
                        f"{_num(pti.get('dtype'))}, frames {order}, formulation "
                        f"{_num(pti.get('formulation'))}</p>"))
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
