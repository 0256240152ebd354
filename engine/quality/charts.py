"""Small inline SVG charts for the report and ``facestitch metrics --svg``: no
scripts, no fonts or files to fetch, so a report stays one self-contained file.

- :func:`line_chart_svg`: named series over an index (losses per step or pass,
  edit strength per frame), optionally on a log axis;
- :func:`metrics_svg`: the temporal metrics' per-frame series in two panels
  (identity, warping error), frames without a face shaded.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from engine.quality.metrics import TemporalMetrics

__all__ = ["line_chart_svg", "metrics_svg"]


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


_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
            "#e377c2", "#7f7f7f"]


def line_chart_svg(series: dict[str, Sequence[float]], *, title: str,
                   xlabel: str = "", x0: float = 0.0, log_y: bool = False,
                   width: int = 640, height: int = 220) -> str:
    """A small inline SVG line chart (no scripts, no fonts to fetch).

    Args:
        series: label -> y values (x = ``x0 + index``). Non-finite values break a
            line.
        log_y: logarithmic y axis (losses spanning decades).
    """
    left, right, top, bottom = 62, 12, 28, 34
    pw, ph = width - left - right, height - top - bottom
    vals = [float(v) for ys in series.values() for v in ys
            if v is not None and math.isfinite(float(v)) and (not log_y or v > 0)]
    n = max((len(ys) for ys in series.values()), default=0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{_esc(title)}" font-family="sans-serif" '
           'font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="16" font-size="12" font-weight="bold">'
           f'{_esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" '
           'stroke="#bbb"/>']
    if not vals or n == 0:
        out.append(f'<text x="{left + 8}" y="{top + 20}">no data</text></svg>')
        return "".join(out)
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    lo, hi = f(min(vals)), f(max(vals))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 if log_y else lo - abs(lo) * 0.1 - 1e-6, hi + (
            0.5 if log_y else abs(hi) * 0.1 + 1e-6)
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (pw * i / (n - 1) if n > 1 else pw / 2)
        return x, top + ph - (f(v) - lo) / (hi - lo) * ph

    for k in range(5):  # y ticks
        t = lo + (hi - lo) * k / 4
        y = top + ph - ph * k / 4
        label = 10 ** t if log_y else t
        out.append(f'<line x1="{left - 3}" x2="{left}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#888"/>'
                   f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{_tick(label)}</text>')
    for i in sorted({0, n - 1, (n - 1) // 2}):
        x, _ = xy(i, vals[0])
        out.append(f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                   f'{_tick(x0 + i)}</text>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" '
                   f'text-anchor="middle">{_esc(xlabel)}</text>')
    for c, (label, ys) in enumerate(series.items()):
        colour = _COLOURS[c % len(_COLOURS)]
        out += _polylines(
            [v if v is not None and math.isfinite(float(v)) and (not log_y or v > 0)
             else None for v in ys],
            lambda i: xy(i, 1.0 if log_y else 0.0)[0],
            lambda v: xy(0, v)[1], colour)
        lx = left + 8 + 150 * (c % 4)
        ly = top + 14 + 14 * (c // 4)
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" '
                   f'fill="{colour}"/><text x="{lx + 14}" y="{ly - 4}">'
                   f'{_esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"
