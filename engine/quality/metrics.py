"""Temporal quality metrics of an edited clip against its source: TL-ID, TG-ID and the
occlusion-masked warping error, with per-frame series and an inline SVG plot.

Definitions (pipeline.md §2.6 and §3):

- Identity: L2-normalised face embeddings ``E`` per frame (``engine.quality.identity``);
  ``S = E·Eᵀ`` (cosine similarities) for the source and for the edited clip, and the
  elementwise ratio ``R = S_edit / S_src``. **TL-ID** = mean of ``R`` over adjacent
  frame pairs (t, t+1), **TG-ID** = mean of ``R`` over all pairs of distinct frames.
  1.0 means "as consistent as the source"; values can exceed 1. Only frames whose
  source shows a face count, and only pairs of such frames; the raw means of
  ``S_edit`` and ``S_src`` over the same pairs are reported too.
- Warping error (Lai et al. 2018): flows on consecutive **source** frames, occlusion
  mask from the forward-backward check and motion boundaries (``engine.quality.flow``),
  ``E_warp(t) = Σ M·‖V_t − warp(V_{t+1})‖² / Σ M`` per channel, RGB in [0, 1]; the
  score is the mean over pairs, for the edited clip and for the source itself.

Frames stream through :func:`temporal_metrics`: only the previous frame of each clip
and the embeddings stay in memory. The face in the edited frame is looked for next to
the source's face; where no face is detected there (a broken edit) the source's box is
used, so a bad edit lowers the scores instead of dropping out of them.

Example::

    m = temporal_metrics(source_frames, edited_frames)
    print(m.tl_id, m.tg_id, m.warp_error, m.warp_error_source)
    html_fragment = metrics_svg(m)
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from fsexchange.errors import MetricsError

from fsexchange.options import MetricsConfig

__all__ = [
    "MetricsError",
    "MetricsLengthMismatch",
    "MetricsSizeMismatch",
    "MetricsFrameInvalid",
    "MetricsNoFrames",
    "TemporalMetrics",
    "composite_over",
    "temporal_metrics",
    "metrics_svg",
]

log = logging.getLogger(__name__)


class MetricsLengthMismatch(MetricsError):
    """The source and the edited clip have different numbers of frames."""

    code = "metrics.length_mismatch"


class MetricsSizeMismatch(MetricsError):
    """The source and the edited frames differ in width or height."""

    code = "metrics.size_mismatch"


class MetricsFrameInvalid(MetricsError):
    """A frame is not an HxWx3 / HxWx4 uint8 or uint16 image."""

    code = "metrics.frame_invalid"


class MetricsNoFrames(MetricsError):
    code = "metrics.no_frames"


# --- compositing ----------------------------------------------------------------------


def _top(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise MetricsFrameInvalid(f"unsupported image dtype {dtype}")


def composite_over(rgba: np.ndarray, source_rgb: np.ndarray, *,
                   premultiplied: bool = False) -> np.ndarray:
    """``rgba`` over ``source_rgb``: the frame a viewer sees when the result layer
    sits on the plate. Returns HxWx3 in ``source_rgb``'s dtype.

    Args:
        rgba: HxWx4 (straight alpha unless ``premultiplied``; EXR results are
            premultiplied); uint8, uint16 or float in [0, 1]. HxWx3 is taken as opaque.
        source_rgb: HxWx3 (or HxWx4, alpha ignored) uint8, uint16 or float.

    Raises:
        MetricsSizeMismatch: the two differ in width or height.
    """
    if rgba.ndim != 3 or source_rgb.ndim != 3 or rgba.shape[2] not in (3, 4) \
            or source_rgb.shape[2] not in (3, 4):
        raise MetricsFrameInvalid(
            f"expected HxWx4 over HxWx3 images, got {rgba.shape} over "
            f"{source_rgb.shape}")
    if rgba.shape[:2] != source_rgb.shape[:2]:
        raise MetricsSizeMismatch(
            f"result is {rgba.shape[1]}x{rgba.shape[0]} but the source is "
            f"{source_rgb.shape[1]}x{source_rgb.shape[0]}")
    out_dtype = source_rgb.dtype
    top_out = _top(out_dtype)
    src = source_rgb[:, :, :3].astype(np.float32) / top_out
    top_in = _top(rgba.dtype)
    fg = rgba[:, :, :3].astype(np.float32) / top_in
    if rgba.shape[2] == 3:
        out = fg
    else:
        a = rgba[:, :, 3:].astype(np.float32) / top_in
        out = (fg if premultiplied else fg * a) + src * (1.0 - a)
    if np.issubdtype(out_dtype, np.floating):
        return out.astype(out_dtype)
    return np.rint(np.clip(out, 0.0, 1.0) * top_out).astype(out_dtype)


# --- the result -----------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass(frozen=True)
class TemporalMetrics:
    """Temporal metrics of one edited clip against its source.

    ``per_frame`` series have one entry per frame (``None`` where undefined):
    ``identity_to_prev`` (S_edit / S_src for the pair ending at the frame; also
    ``_raw`` = S_edit and ``_source`` = S_src), ``identity_to_mean`` (cosine to the
    clip's mean embedding, edited / source; also ``_raw`` and ``_source``),
    ``warp_error`` and ``warp_error_source`` (pair ending at the frame),
    ``face`` (1 = source face found) and ``edited_face_detected`` (1 = detected in
    the edited frame, 0 = the source's box was used).
    NaN means "not defined" (e.g. no pair of frames with a face).
    """

    tl_id: float
    tg_id: float
    tl_id_raw: float
    tg_id_raw: float
    tl_id_source_raw: float
    tg_id_source_raw: float
    warp_error: float
    warp_error_source: float
    frames: int
    frames_without_face: int
    per_frame: dict[str, list[float | None]] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON- and msgpack-ready (NaN becomes ``None``)."""
        detected = self.per_frame.get("edited_face_detected", [])
        missed = sum(1 for v in detected if v == 0)
        return {
            "tl_id": _num(self.tl_id), "tg_id": _num(self.tg_id),
            "tl_id_raw": _num(self.tl_id_raw), "tg_id_raw": _num(self.tg_id_raw),
            "tl_id_source_raw": _num(self.tl_id_source_raw),
            "tg_id_source_raw": _num(self.tg_id_source_raw),
            "warp_error": _num(self.warp_error),
            "warp_error_source": _num(self.warp_error_source),
            "frames": self.frames, "frames_without_face": self.frames_without_face,
            "edited_faces_not_detected": missed,
            "per_frame": {k: [_num(v) for v in vs] for k, vs in self.per_frame.items()},
            "backends": dict(self.backends),
        }


# --- computation ----------------------------------------------------------------------


def _check_frame(frame: Any, what: str, t: int, floats: bool = False) -> np.ndarray:
    arr = np.asarray(frame)
    ok_dtype = arr.dtype in (np.uint8, np.uint16) or (
        floats and np.issubdtype(arr.dtype, np.floating))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or not ok_dtype:
        kinds = "uint8/uint16/float" if floats else "uint8/uint16"
        raise MetricsFrameInvalid(
            f"{what} frame {t} must be an HxWx3 or HxWx4 {kinds} RGB[A] image, "
            f"got shape {arr.shape} dtype {arr.dtype}", frame=t)
    return arr


_END = object()


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _global_means(es: np.ndarray, ee: np.ndarray,
                  chunk: int = 1024) -> tuple[float, float, float]:
    """Means over all ordered pairs i != j of S_edit/S_src, S_edit and S_src, in row
    blocks so that long clips never build the full N x N matrices."""
    n = len(es)
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    ratio = raw = src = 0.0
    for a in range(0, n, chunk):
        s_src = es[a:a + chunk] @ es.T  # [chunk, N]
        s_ed = ee[a:a + chunk] @ ee.T
        r = s_ed / np.maximum(s_src, 1e-6)
        off = np.ones_like(s_src, bool)
        rows = np.arange(s_src.shape[0])
        off[rows, a + rows] = False  # drop the diagonal
        ratio += float(r[off].sum())
        raw += float(s_ed[off].sum())
        src += float(s_src[off].sum())
    count = n * (n - 1)
    return ratio / count, raw / count, src / count


def temporal_metrics(source: Iterable[np.ndarray], edited: Iterable[np.ndarray], *,
                     cfg: MetricsConfig = MetricsConfig(), device: str = "cpu",
                     premultiplied: bool = False,
                     subject: tuple[float, float] | None = None,
                     on_frame: Callable[[int], None] | None = None) -> TemporalMetrics:
    """TL-ID, TG-ID and warping errors of ``edited`` against ``source``.

    Args:
        source: RGB frames, HxWx3 uint8 (or uint16).
        edited: the same number of frames of the same size, uint8, uint16 or float
            in [0, 1] (EXR); HxWx4 RGBA results are composited over the source frame
            first (:func:`composite_over`).
        cfg: ``identity`` (``dlib`` | ``arcface``) and ``flow`` (``dis`` |
            ``farneback`` | ``raft``) backends.
        device: torch device for the torch backends (ArcFace ``.pth``, RAFT).
        premultiplied: RGBA frames carry premultiplied colour (EXR).
        subject: (x, y) in the first frame with a face: measure the face nearest this
            point (the job's subject) rather than the largest one.
        on_frame: called with the number of frames done after each frame (progress;
            an exception raised there aborts).

    Raises:
        MetricsLengthMismatch, MetricsSizeMismatch, MetricsFrameInvalid,
        MetricsNoFrames; ModelMissing for a backend whose weights are not installed.
    """
    from engine.quality.flow import flow_backend, to_unit  # noqa: PLC0415
    from engine.quality.identity import FaceFinder, identity_backend  # noqa: PLC0415

    embedder = identity_backend(cfg.identity, device=device)
    flow = flow_backend(cfg.flow, device=device)
    finder = FaceFinder(subject=subject)

    emb_src: list[np.ndarray | None] = []
    emb_ed: list[np.ndarray | None] = []
    edited_detected: list[float | None] = []
    warp_ed: list[float | None] = [None]
    warp_src: list[float | None] = [None]
    prev = None  # (source, source in [0, 1], edited in [0, 1]) of frame t-1
    size = None
    src_it, ed_it = iter(source), iter(edited)
    t = 0
    # The flow and warping errors of pair (t-1, t) run on a worker thread (OpenCV and
    # torch release the GIL) while this thread finds and embeds frame t's faces.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-flow") as pool:
        while True:
            s = next(src_it, _END)
            e = next(ed_it, _END)
            if s is _END or e is _END:
                if s is not e:
                    longer, shorter = (("source", "edited") if e is _END
                                       else ("edited", "source"))
                    raise MetricsLengthMismatch(
                        f"the {shorter} clip ends after {t} frames but the {longer} "
                        "clip has more; compare clips of the same length (or the same "
                        "range)", frame=t)
                break
            s = _check_frame(s, "source", t)[:, :, :3]
            e = _check_frame(e, "edited", t, floats=True)
            if size is None:
                size = s.shape[:2]
            for what, arr in (("source", s), ("edited", e)):
                if arr.shape[:2] != size:
                    raise MetricsSizeMismatch(
                        f"{what} frame {t} is {arr.shape[1]}x{arr.shape[0]}, expected "
                        f"{size[1]}x{size[0]} (both clips must have the same frame "
                        "size)", frame=t)
            if e.shape[2] == 4 or e.dtype != s.dtype:  # also brings e to s's dtype
                e = composite_over(e, s, premultiplied=premultiplied)
            same = e is s or np.array_equal(e, s)
            s_unit = to_unit(s)
            cur = (s, s_unit, s_unit if same else to_unit(e))
            pair = None if prev is None else pool.submit(_pair_errors, flow, prev, cur)

            # identity
            box = finder.track(s)
            if box is None:
                emb_src.append(None)
                emb_ed.append(None)
                edited_detected.append(None)
            else:
                es = embedder.embed(s, box)
                emb_src.append(es)
                if same:
                    emb_ed.append(es)
                    edited_detected.append(1.0)
                else:
                    ebox = finder.near(e, box, window=finder.window)
                    edited_detected.append(0.0 if ebox is None else 1.0)
                    emb_ed.append(embedder.embed(e, box if ebox is None else ebox))

            if pair is not None:
                ws, we = pair.result()
                warp_src.append(ws)
                warp_ed.append(we)
            prev = cur
            t += 1
            if on_frame is not None:
                on_frame(t)

    if t == 0:
        raise MetricsNoFrames("no frames to compare")
    return _summarise(emb_src, emb_ed, edited_detected, warp_ed, warp_src,
                      {"identity": embedder.name, "flow": flow.name,
                       "face_detector": "dlib-hog"})


def _pair_errors(flow, prev: tuple, cur: tuple) -> tuple[float, float]:
    """Warping errors of the source and the edited clip over one pair of frames,
    ``prev``/``cur`` = (source frame, source in [0, 1], edited in [0, 1]), with the
    flow and the occlusion mask from the source pair."""
    from engine.quality.flow import occlusion_mask, warping_error  # noqa: PLC0415

    fw, bw = flow.pair(prev[0], cur[0])
    mask = occlusion_mask(fw, bw)
    ws = warping_error(prev[1], cur[1], fw, mask)
    if prev[2] is prev[1] and cur[2] is cur[1]:  # the edited pair is the source pair
        return ws, ws
    return ws, warping_error(prev[2], cur[2], fw, mask)


def _summarise(emb_src: list[np.ndarray | None], emb_ed: list[np.ndarray | None],
               edited_detected: list[float | None], warp_ed: list[float | None],
               warp_src: list[float | None],
               backends: dict[str, str]) -> TemporalMetrics:
    n = len(emb_src)
    valid = [i for i in range(n) if emb_src[i] is not None]
    nan = float("nan")
    per: dict[str, list[float | None]] = {
        k: [None] * n for k in ("identity_to_prev", "identity_to_prev_raw",
                                "identity_to_prev_source", "identity_to_mean",
                                "identity_to_mean_raw", "identity_to_mean_source")}

    tl_ratio, tl_raw, tl_src = [], [], []
    for i in range(1, n):
        a_s, b_s, a_e, b_e = emb_src[i - 1], emb_src[i], emb_ed[i - 1], emb_ed[i]
        if a_s is None or b_s is None:
            continue
        ss, se = float(a_s @ b_s), float(a_e @ b_e)
        r = se / max(ss, 1e-6)
        tl_ratio.append(r)
        tl_raw.append(se)
        tl_src.append(ss)
        per["identity_to_prev"][i] = r
        per["identity_to_prev_raw"][i] = se
        per["identity_to_prev_source"][i] = ss

    tg, tg_raw, tg_src = nan, nan, nan
    if valid:
        es = np.stack([emb_src[i] for i in valid]).astype(np.float64)  # [V, d]
        ee = np.stack([emb_ed[i] for i in valid]).astype(np.float64)
        tg, tg_raw, tg_src = _global_means(es, ee)
        mean_s = es.mean(0)
        mean_s /= max(np.linalg.norm(mean_s), 1e-12)
        mean_e = ee.mean(0)
        mean_e /= max(np.linalg.norm(mean_e), 1e-12)
        for k, i in enumerate(valid):
            cs, ce = float(es[k] @ mean_s), float(ee[k] @ mean_e)
            per["identity_to_mean"][i] = ce / max(cs, 1e-6)
            per["identity_to_mean_raw"][i] = ce
            per["identity_to_mean_source"][i] = cs

    per["warp_error"] = list(warp_ed)
    per["warp_error_source"] = list(warp_src)
    per["face"] = [0.0 if e is None else 1.0 for e in emb_src]
    per["edited_face_detected"] = list(edited_detected)
    return TemporalMetrics(
        tl_id=_mean(tl_ratio), tg_id=tg, tl_id_raw=_mean(tl_raw), tg_id_raw=tg_raw,
        tl_id_source_raw=_mean(tl_src), tg_id_source_raw=tg_src,
        warp_error=_mean([w for w in warp_ed if w is not None]),
        warp_error_source=_mean([w for w in warp_src if w is not None]),
        frames=n, frames_without_face=n - len(valid), per_frame=per,
        backends=dict(backends))


# --- the plot -------------------------------------------------------------------------

_SVG_W, _PANEL_H, _LEFT, _RIGHT, _TOP, _GAP = 640, 120, 58, 12, 40, 44


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 0.01:
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return f"{v:.1e}"


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _polylines(values: Sequence[float | None], x_of: Callable[[int], float],
               y_of: Callable[[float], float], colour: str,
               dash: str = "") -> list[str]:
    """One <polyline> per run of defined values (gaps stay gaps); lone points get a
    dot so that an isolated value is still visible."""
    out, run = [], []
    style = f' stroke-dasharray="{dash}"' if dash else ""
    for i, v in enumerate(list(values) + [None]):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            run.append((x_of(i), y_of(float(v))))
            continue
        if len(run) == 1:
            out.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="2" '
                       f'fill="{colour}"/>')
        elif run:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                       f'stroke-width="1.5"{style}/>')
        run = []
    return out


def metrics_svg(m: TemporalMetrics, *, first_frame: int = 0) -> str:
    """A small self-contained inline SVG (no scripts, no external fonts) of the
    per-frame series: identity similarity edited/source (to the previous frame and to
    the clip's mean face; 1 = as consistent as the source) and the warping error of
    the edited clip against the source's own. Frames without a face are marked grey.

    Args:
        first_frame: source frame number of the first frame, for the x axis labels.
    """
    n = max(m.frames, 1)
    plot_w = _SVG_W - _LEFT - _RIGHT
    height = _TOP + 2 * _PANEL_H + _GAP + 28

    def x_of(i: int) -> float:
        return _LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    d = m.to_dict()
    title = (f"TL-ID {_fmt(d['tl_id']) if d['tl_id'] is not None else 'n/a'} · "
             f"TG-ID {_fmt(d['tg_id']) if d['tg_id'] is not None else 'n/a'} · "
             "warping error "
             + (f"{_fmt(d['warp_error'])} (source {_fmt(d['warp_error_source'])})"
                if d["warp_error"] is not None else "n/a"))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_W}" '
             f'height="{height}" viewBox="0 0 {_SVG_W} {height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="sans-serif" font-size="11">',
             f'<rect width="{_SVG_W}" height="{height}" fill="white"/>',
             f'<text x="{_LEFT}" y="16" font-size="12" font-weight="bold">'
             f'{_esc(title)}</text>']

    panels = [
        ("identity, edited / source", [
            ("identity_to_prev", "#1f77b4", "", "to previous frame"),
            ("identity_to_mean", "#ff7f0e", "", "to clip mean")], True),
        ("warping error", [
            ("warp_error", "#d62728", "", "edited"),
            ("warp_error_source", "#7f7f7f", "4 3", "source")], False),
    ]
    for p, (label, series, ratio) in enumerate(panels):
        top = _TOP + p * (_PANEL_H + _GAP)
        vals = [float(v) for key, *_ in series for v in m.per_frame.get(key, [])
                if v is not None and not math.isnan(float(v))]
        if ratio:
            lo, hi = min(vals + [1.0]), max(vals + [1.0])
        else:
            lo, hi = 0.0, max(vals + [0.0])
        if hi - lo < 1e-9:
            hi = lo + (1e-3 if not ratio else 0.01)
            lo = lo - (0.01 if ratio else 0.0)
        pad = (hi - lo) * 0.08
        lo, hi = (lo - pad if ratio else lo), hi + pad

        def y_of(v: float, top: int = top, lo: float = lo, hi: float = hi) -> float:
            return top + _PANEL_H - (v - lo) / (hi - lo) * _PANEL_H

        parts.append(f'<rect x="{_LEFT}" y="{top}" width="{plot_w}" '
                     f'height="{_PANEL_H}" fill="#fafafa" stroke="#bbb"/>')
        if ratio:  # runs of frames without a face, one grey band each
            step = plot_w / max(n - 1, 1)
            faces = list(m.per_frame.get("face", [])) + [1.0]
            start = None
            for i, f in enumerate(faces):
                if f == 0 and start is None:
                    start = i
                elif f != 0 and start is not None:
                    x0 = max(x_of(start) - step / 2, _LEFT)
                    x1 = min(x_of(i - 1) + step / 2, _LEFT + plot_w)
                    first, last = first_frame + start, first_frame + i - 1
                    parts.append(
                        f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2.0):.1f}" '
                        f'height="{_PANEL_H}" fill="#ddd">'
                        f'<title>frames {first}-{last}: no face</title></rect>')
                    start = None
            y1 = y_of(1.0)
            parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y1:.1f}" '
                         f'y2="{y1:.1f}" stroke="#999" stroke-dasharray="2 2"/>')
        for v in (lo, hi):
            parts.append(f'<text x="{_LEFT - 4}" y="{y_of(v) + 4:.1f}" '
                         f'text-anchor="end">{_fmt(v)}</text>')
        parts.append(f'<text x="{_LEFT}" y="{top - 5}" font-weight="bold">'
                     f'{_esc(label)}</text>')
        legend = [(colour, dash, name) for _, colour, dash, name in series]
        if ratio and m.frames_without_face:
            legend.append(("#ddd", "box", f"no face ({m.frames_without_face})"))
        lx = _LEFT + plot_w - sum(28 + 6 * len(name) for *_, name in legend)
        for key, colour, dash, _ in series:
            parts += _polylines(m.per_frame.get(key, []), x_of, y_of, colour, dash)
        for colour, dash, name in legend:  # right-aligned legend above the panel
            if dash == "box":
                parts.append(f'<rect x="{lx + 4:.1f}" y="{top - 14}" width="10" '
                             f'height="10" fill="{colour}"/>')
            else:
                style = f' stroke-dasharray="{dash}"' if dash else ""
                parts.append(f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" '
                             f'y1="{top - 9}" y2="{top - 9}" stroke="{colour}" '
                             f'stroke-width="2"{style}/>')
            parts.append(f'<text x="{lx + 22:.1f}" y="{top - 5}">{_esc(name)}</text>')
            lx += 28 + 6 * len(name)
    base = _TOP + 2 * _PANEL_H + _GAP
    for i in sorted({0, (n - 1) // 2, n - 1}):
        parts.append(f'<text x="{x_of(i):.1f}" y="{base + 14}" text-anchor="middle">'
                     f'{first_frame + i}</text>')
    parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{base + 26}" '
                 'text-anchor="middle" fill="#555">frame</text>')
    parts.append("</svg>")
    return "\n".join(parts)
