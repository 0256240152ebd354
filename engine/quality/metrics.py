"""Temporal quality metrics of an edited clip against its source: TL-ID, TG-ID and the
occlusion-masked warping error, with per-frame series and an inline SVG plot.

Definitions (docs/reference.md "Warping error" and "Identity metrics TL-ID and TG-ID"):

- Identity: L2-normalised face embeddings ``E`` per frame (``engine.quality.identity``);
  ``S = E·Eᵀ`` (cosine similarities) for the source and for the edited clip, and the
  elementwise ratio ``R = S_edit / S_src``. **TL-ID** = mean of ``R`` over adjacent
  frame pairs (t, t+1), **TG-ID** = mean of ``R`` over all pairs of distinct frames.
  1.0 means "as consistent as the source"; values can exceed 1. Only frames whose
  source shows a face count, and only pairs of such frames; the raw means of
  ``S_edit`` and ``S_src`` over the same pairs are reported too.
- Warping error E_warp as Lai et al. 2018 define it (``evaluate_WarpError.py``):
  flows on consecutive **source** frames t -> t+1, their occlusion test
  (forward-backward check and motion boundaries, ``engine.quality.flow``), and
  ``E_warp(t) = Σ M·‖V_t − warp(V_{t+1})‖² / Σ M`` with a 3-channel mask, i.e. the
  squared RGB error (in [0, 1]) averaged over the channels and the valid pixels; the
  score is the mean over pairs, for the edited clip and for the source itself.
  ``tests/test_metrics_formulas.py`` checks it against a direct implementation of
  their code's arithmetic.

The identity network is ArcFace when one is installed in the model store (the
papers' choice), else dlib's ResNet descriptor (``MetricsConfig.identity`` "auto");
every result names it (``backends["identity"]``, :func:`identity_network`), and
:data:`DEFINITIONS` states what each number is.

Frames stream through :func:`temporal_metrics`: only the previous frame of each clip
and the embeddings stay in memory. The face in the edited frame is looked for next to
the source's face; where no face is detected there (a broken edit) the source's box is
used, so a bad edit lowers the scores instead of dropping out of them.

Example::

    m = temporal_metrics(source_frames, edited_frames)
    print(m.tl_id, m.tg_id, m.warp_error, m.warp_error_source)
    html_fragment = metrics_svg(m)  # engine.quality.charts
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from fsexchange.errors import (MetricsError, MetricsFrameInvalid, MetricsLengthMismatch,
                               MetricsNoFrames, MetricsSizeMismatch)

from fsexchange.options import MetricsConfig

from engine.media.composite import composite_over

__all__ = [
    "MetricsError",
    "TemporalMetrics",
    "temporal_metrics",
    "DEFINITIONS",
    "identity_network",
]

log = logging.getLogger(__name__)


# --- the result -----------------------------------------------------------------------

#: What each reported number is, written into every result (``to_dict()``).
DEFINITIONS: dict[str, str] = {
    "warp_error": "E_warp as defined by Lai et al. 2018 (evaluate_WarpError.py): "
                  "flow from source frame t to t+1, pixels failing their "
                  "forward-backward or motion-boundary occlusion test left out, "
                  "squared RGB difference (values in [0, 1]) between frame t and "
                  "frame t+1 warped back, averaged over the 3 channels and the "
                  "valid pixels; mean over consecutive pairs. Computed on the "
                  "edited clip and on the source with the same flows and masks.",
    "tl_id": "TL-ID (Tzaban et al. 2022): mean over adjacent frame pairs of the "
             "identity cosine similarity in the edited clip divided by the same "
             "pair's in the source (1 = as consistent as the source)",
    "tg_id": "TG-ID (Tzaban et al. 2022): the same ratio averaged over all pairs "
             "of distinct frames",
}


def identity_network(backend_name: str) -> str:
    """A line naming the embedding network behind ``backends["identity"]``."""
    if backend_name.startswith("arcface"):
        return (f"ArcFace ({backend_name.partition(':')[2] or backend_name}), the "
                "network the papers use")
    if backend_name.startswith("dlib"):
        return ("dlib ResNet face descriptor v1 (128-d); the papers use ArcFace, so "
                "absolute values are not comparable with theirs")
    return backend_name



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
    # the face boxes measured, per frame (left, top, right, bottom) or None: "source"
    # and "edited"; kept for inspection, not serialised (long clips)
    boxes: dict[str, list[tuple[float, float, float, float] | None]] = field(
        default_factory=dict, compare=False, repr=False)

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
            "identity_network": identity_network(self.backends.get("identity", "")),
            "definitions": dict(DEFINITIONS),
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
        cfg: ``identity`` (``auto``: ArcFace when installed, else dlib |
            ``dlib`` | ``arcface``) and ``flow`` (``dis`` | ``farneback`` |
            ``raft``) backends.
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
    from engine.quality.flow import flow_backend, to_unit
    from engine.quality.identity import FaceFinder, identity_backend

    embedder = identity_backend(cfg.identity, device=device)
    flow = flow_backend(cfg.flow, device=device)
    finder = FaceFinder(subject=subject)

    emb_src: list[np.ndarray | None] = []
    emb_ed: list[np.ndarray | None] = []
    boxes: dict[str, list] = {"source": [], "edited": []}
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
            ebox = box
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
                    found = finder.near(e, box, window=finder.window)
                    edited_detected.append(0.0 if found is None else 1.0)
                    ebox = box if found is None else found
                    emb_ed.append(embedder.embed(e, ebox))
            boxes["source"].append(None if box is None else tuple(box.to_list()))
            boxes["edited"].append(None if ebox is None else tuple(ebox.to_list()))

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
    m = _summarise(emb_src, emb_ed, edited_detected, warp_ed, warp_src,
                   {"identity": embedder.name, "flow": flow.name,
                    "face_detector": "dlib-hog"})
    m.boxes.update(boxes)
    return m


def _pair_errors(flow, prev: tuple, cur: tuple) -> tuple[float, float]:
    """Warping errors of the source and the edited clip over one pair of frames,
    ``prev``/``cur`` = (source frame, source in [0, 1], edited in [0, 1]), with the
    flow and the occlusion mask from the source pair."""
    from engine.quality.flow import occlusion_mask, warping_error

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
