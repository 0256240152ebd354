"""``facestitch metrics``: temporal identity (TL-ID, TG-ID) and warping-error metrics
of an edited clip against its source.

Each side is a movie file or an image-sequence folder. RGBA results (FaceStitch's
matte layer) are composited over the source first. ``--range START:END`` is in source
media indices, END exclusive; the edited side is read over the same range when it is
as long as the source, or whole when it is exactly as long as the range (a FaceStitch
output covers only the job's range). A finished job's folder or its ``output``
folder (``X/done/JOB/output``) is read through the job's ``Result/1``: exactly the
frames it lists, in frame order (the folder also holds a preview, a contact sheet,
a report); without ``--range`` the range is the job's.

Example::

    facestitch metrics --source plate.mov --edited out/ --range 100:148 --json
    facestitch metrics --source plate.mov --edited out/ --compare-paper

The warping error is E_warp as Lai et al. 2018 define it; TL-ID/TG-ID use ArcFace
when it is installed (the papers' network), else dlib, and the output names the
network. ``--compare-paper`` prints the published figures beside ours with the
caveats (:mod:`engine.quality.paper`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fsexchange.grammar import parse_range

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch metrics",
        description="Temporal consistency of an edited clip against its source: "
                    "TL-ID and TG-ID (identity similarity between adjacent / all "
                    "frames, edited divided by source, 1 = as consistent as the "
                    "source) and the occlusion-masked warping error (flow from the "
                    "source).")
    p.add_argument("--source", required=True, type=Path,
                   help="the original clip: a movie file or an image-sequence folder")
    p.add_argument("--edited", required=True, type=Path,
                   help="the edited clip or FaceStitch result (RGBA is composited over "
                        "the source)")
    p.add_argument("--range", dest="range_", metavar="START:END",
                   help="source frames START..END-1 (0-based media indices)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--identity", choices=("auto", "dlib", "arcface"), default="auto",
                   help="face embedding network (default auto: ArcFace, the papers' "
                        "network, when its weights are in the model store, else "
                        "dlib)")
    p.add_argument("--flow", choices=("dis", "farneback", "raft"), default="dis",
                   help="optical flow (default dis; raft needs raft-things.pth in the "
                        "model store)")
    p.add_argument("--device", default="cpu",
                   help="torch device for arcface/raft (default cpu)")
    p.add_argument("--subject", metavar="X,Y",
                   help="a point on the face to measure in the first frame with faces "
                        "(default: the largest face)")
    p.add_argument("--svg", type=Path,
                   help="also write the per-frame plot (SVG) to this file")
    p.add_argument("--compare-paper", action="store_true",
                   help="also print the published TL-ID, TG-ID and E_warp figures "
                        "(STIT, VideoEditGAN) beside ours, with the caveats")
    return p


def _job_frames(edited: Path) -> tuple[list[Path], int] | None:
    """The frame files a finished job's ``Result/1`` lists (``edited`` is the job
    folder or its ``output/``), and the first source frame; None for other paths."""
    from fsexchange.exchange import RESULT_FILE, read_result
    from fsexchange.errors import MetricsNoFrames

    folder = edited.parent if edited.name == "output" else edited
    if not edited.is_dir() or not (folder / RESULT_FILE).exists():
        return None
    result = read_result(folder)
    if result is None:
        raise MetricsNoFrames(f"{folder / RESULT_FILE} cannot be read")
    frames = sorted(result.frames, key=lambda f: f.frame)
    if not frames:
        raise MetricsNoFrames(f"job {result.job_id} ({result.state}) delivered no "
                              "frames")
    return [folder / f.path for f in frames], frames[0].frame


def _is_premultiplied(path: Path) -> bool:
    """EXR results carry premultiplied colour (the EXR convention,
    engine/media/video.py)."""
    if path.is_dir():
        return any(p.suffix.lower() == ".exr" for p in path.iterdir())
    return path.suffix.lower() == ".exr"


def _summary(d: dict, src: Path, ed: Path, rng: tuple[int, int]) -> str:
    def f(v, spec=".4f"):
        return "n/a" if v is None else format(v, spec)

    ratio = ""
    if d["warp_error"] is not None and d["warp_error_source"]:
        ratio = f", x{d['warp_error'] / d['warp_error_source']:.2f} the source's"
    lines = [
        f"source {src}  edited {ed}  frames {rng[0]}..{rng[1] - 1} ({d['frames']})",
        f"  TL-ID          {f(d['tl_id'])}   (edited {f(d['tl_id_raw'])}, "
        f"source {f(d['tl_id_source_raw'])})",
        f"  TG-ID          {f(d['tg_id'])}   (edited {f(d['tg_id_raw'])}, "
        f"source {f(d['tg_id_source_raw'])})",
        f"  E_warp         {f(d['warp_error'], '.5f')}  (source "
        f"{f(d['warp_error_source'], '.5f')}{ratio}; as defined by Lai et al. 2018)",
        f"  frames without a face: {d['frames_without_face']} of {d['frames']}"
        + (f"; edited face not detected in {d['edited_faces_not_detected']} "
           "(source box used)" if d["edited_faces_not_detected"] else ""),
        f"  identity {d['backends']['identity']}, flow {d['backends']['flow']}",
        f"  identity network: {d['identity_network']}",
        "  (TL-ID/TG-ID: 1 = as consistent as the source; lower E_warp is "
        "smoother)",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    subject = None
    if args.subject:
        try:
            x, y = (float(v) for v in args.subject.split(","))
        except ValueError:
            parser.error(f"--subject must be X,Y in pixels, got {args.subject!r}")
        subject = (x, y)

    from fsexchange.paths import check_output

    if args.svg:
        check_output(args.svg, flag="--svg")  # not after the whole computation

    from fsexchange.options import MetricsConfig
    from engine.quality.charts import metrics_svg
    from engine.quality.metrics import temporal_metrics
    from fsexchange.errors import (MetricsLengthMismatch,
                                   MetricsSizeMismatch)
    from engine.media.video import read_frames
    from fsexchange.media import probe

    from engine.media.video import read_files

    job = _job_frames(args.edited)
    job_files: list[Path] | None = None
    if job is not None and len({str(p) for p in job[0]}) > 1:
        job_files = job[0]  # one file per frame; else one movie (prores4444)
    src_info = probe(args.source)
    ed_info = probe(job_files[0] if job_files else job[0][0] if job else args.edited)
    ed_count = len(job_files) if job_files else ed_info.frame_count
    if job is not None and args.range_ is None:
        args.range_ = f"{job[1]}:{job[1] + len(job[0])}"
    if (src_info.width, src_info.height) != (ed_info.width, ed_info.height):
        raise MetricsSizeMismatch(
            f"{args.edited.name} is {ed_info.width}x{ed_info.height} but "
            f"{args.source.name} is {src_info.width}x{src_info.height}; compare clips "
            "of the same frame size")
    start, end = parse_range(args.range_, src_info.frame_count)
    n = end - start
    if ed_count == src_info.frame_count:
        ed_start, ed_end = start, end
    elif ed_count == n:
        ed_start, ed_end = 0, n
    else:
        raise MetricsLengthMismatch(
            f"{args.edited.name} has {ed_count} frames; expected "
            f"{src_info.frame_count} (the whole source) or {n} (the range "
            f"{start}:{end})")

    source = (rgb for _, rgb in read_frames(args.source, start, end))
    depth = 16 if ed_info.bit_depth > 8 else 8
    if job_files:
        edited = (img for _, img in read_files(job_files[ed_start:ed_end],
                                               alpha=ed_info.has_alpha, depth=depth))
    else:
        edited = (img for _, img in read_frames(
            job[0][0] if job else args.edited, ed_start, ed_end,
            alpha=ed_info.has_alpha, depth=depth))

    tty = sys.stderr.isatty()

    def progress(done: int) -> None:
        if tty:
            print(f"\rframe {done}/{n}", end="", file=sys.stderr, flush=True)

    cfg = MetricsConfig(identity=args.identity, flow=args.flow)
    m = temporal_metrics(source, edited, cfg=cfg, device=args.device,
                         premultiplied=_is_premultiplied(
                             job_files[0] if job_files else args.edited),
                         subject=subject,
                         on_frame=progress)
    if tty:
        print(file=sys.stderr)
    if args.svg:
        args.svg.write_text(metrics_svg(m, first_frame=start), encoding="utf-8")
    d = m.to_dict()
    if args.json:
        out = {"source": str(args.source), "edited": str(args.edited),
               "range": [start, end], **d}
        if args.compare_paper:
            from engine.quality.paper import comparison

            out["paper"] = comparison(d)
        print(json.dumps(out, indent=2))
    else:
        print(_summary(d, args.source, args.edited, (start, end)))
        if args.compare_paper:
            from engine.quality.paper import comparison_text

            print(comparison_text(d))
    return 0
