"""``facestitch preview MEDIA --out DIR [--range START:END] [--face N]``

Track -> smoothed alignment -> identity paste-back (the aligned crop pasted back
unedited) -> report, in this process: the ``align-preview`` pipeline an engine runs
(:mod:`engine.stages.pipeline`), in a temporary job folder inside DIR that is removed
afterwards. Delivers into DIR:

- ``frames/<name>.<number:07d>.png``: RGBA frames at the source resolution (alpha =
  the dilated face mask; numbered by source timecode frame, or from
  ``--start-number``);
- ``preview.mp4``: the composited movie at the source rate;
- ``contact_sheet.png``: the aligned crops (what the networks see), to check the
  track at a glance;
- ``network_view.png``: a source frame next to the networks' rendering of it
  (log and HDR sources are shown through the view transform, docs/colour.md);
- ``facetrack.msgpack``: the ``FaceTrack/1`` of the chosen face;
- ``report.html``: the job report (temporal metrics off unless asked for).

The input media is never written: DIR may not be the media or inside a sequence.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

from engine.devices import resolve_device
from fsexchange.grammar import is_timecode_range, parse_range, timecode_range
from fsexchange.media import probe

__all__ = ["main", "run_preview"]


def _check_out(media: Path, out: Path) -> None:
    from fsexchange.errors import DocumentFieldError
    from fsexchange.paths import is_within

    if out == media or (media.is_dir() and is_within(out, media)):
        raise DocumentFieldError(
            f"--out {out} is the input media or inside it; choose another folder so "
            "the source is never written", field="out")
    for sub in ("frames", "preview.mp4", "contact_sheet.png", "network_view.png",
                "facetrack.msgpack", "report.html"):
        dest = out / sub
        if dest == media or is_within(media, dest):
            raise DocumentFieldError(
                f"--out {out} would write {dest}, which holds the input media",
                field="out")


def run_preview(media: str | Path, out: str | Path, *, start: int = 0,
                end: int | None = None, face: int | None = None,
                options: dict | None = None, output_format: str = "png16",
                start_number: int | None = None, rate=None, device: str = "auto",
                progress=None, ocio_config: str | None = None) -> dict:
    """Run the preview and return ``{"frames": [paths], "preview", "contact_sheet",
    "network_view", "facetrack", "warnings", "edited"}`` (paths inside ``out``).
    ``ocio_config``: an OpenColorIO config file for a job that names none (default
    ``$OCIO``, else the built-in config)."""
    from engine.stages.contract import StageContext
    from engine.stages.pipeline import run_pipeline, stages_for
    from fsexchange.options import PipelineConfig
    from fsexchange.client import build_job
    from fsexchange.documents import (
        FrameRange,
        OutputSpec,
        Source,
        Subject,
    )
    from fsexchange.errors import RangeInvalid, RangeOutOfBounds

    media = Path(media).resolve()
    out = Path(out).resolve()
    info = probe(media, Fraction(rate) if rate else None)
    end = info.frame_count if end is None else end
    if start < 0 or end <= start:
        raise RangeInvalid(f"range {start}:{end} is empty or reversed", field="range")
    if end > info.frame_count:
        raise RangeOutOfBounds(f"range {start}:{end} reaches past the end of "
                               f"{media.name} ({info.frame_count} frames)",
                               field="range.end")
    _check_out(media, out)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(options or {})
    # Temporal metrics take longer than the preview itself; ask for them with
    # options {"metrics": {"enabled": true}}.
    options.setdefault("metrics", {"enabled": False})
    config = PipelineConfig.from_options(options)
    ocio = ocio_config if ocio_config is not None else os.environ.get("OCIO", "")
    if ocio and not config.colour.config:
        config = dataclasses.replace(config, colour=dataclasses.replace(
            config.colour, config=str(ocio)))
    job = build_job(id_prefix="preview", kind="align-preview",
                    source=Source(str(media), info.kind),
                    range=FrameRange(start, end, info.rate, info.start_timecode),
                    subject=Subject(index=face), options=options,
                    output=OutputSpec(format=output_format, start_number=start_number),
                    host={"app": "facestitch preview"})
    job_dir = Path(tempfile.mkdtemp(prefix=".facestitch-preview-", dir=out))
    try:
        ctx = StageContext(job=job, job_dir=job_dir, config=config,
                           device=resolve_device(device),
                           media_roots=(media.parent,),
                           progress_fn=progress or (lambda f, m: None))
        stages = stages_for(job.kind)
        done = run_pipeline(stages, ctx, progress=lambda i, f, m: ctx.report(
            (i + f) / len(stages), m))
        facts = {doc.stage: doc.facts for doc, _ in done}
        frames_dir = out / "frames"
        frames_dir.mkdir(exist_ok=True)
        name = re.escape(job.output.name)
        ours = re.compile(rf"^{name}(\.\d{{7}}\.\w+|\.mov)$")
        for old in frames_dir.iterdir():  # a previous preview's frames only
            if ours.match(old.name):
                old.unlink()
        delivered = []
        for item in facts["paste"]["frames"]:
            src = job_dir / item["path"]
            if src.exists():  # prores4444: one movie listed for every frame
                dest = frames_dir / src.name
                src.replace(dest)
                delivered.append(dest)
        result = {"frames": delivered, "warnings": list(ctx.warnings),
                  "edited": sum(1 for f in facts["paste"]["frames"] if f["edited"]),
                  "count": len(facts["paste"]["frames"])}
        for key, name in (("preview", "preview.mp4"),
                          ("contact_sheet", "contact_sheet.png"),
                          ("network_view", "network_view.png"),
                          ("report", "report.html")):
            src = job_dir / "output" / name
            if src.exists():
                src.replace(out / name)
                result[key] = out / name
        ctx.files.track.facetrack_path.replace(out / "facetrack.msgpack")
        result["facetrack"] = out / "facetrack.msgpack"
        return result
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="facestitch preview",
        description="Track, align and paste back a clip unedited, to check the face "
                    "track before a long job.")
    parser.add_argument("media", help="movie file or image-sequence folder")
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument("--range", metavar="START:END",
                        help="media frame indices, END exclusive (default: all), or "
                        "source timecodes TC-TC")
    parser.add_argument("--face", type=int, default=None, metavar="N",
                        help="the N-th largest face at the first frame with faces "
                             "(0 = largest, the default)")
    parser.add_argument("--backend", choices=("auto", "dlib", "face-alignment"),
                        default="auto", help="landmark backend (default: auto)")
    parser.add_argument("--resolution", type=int, default=0,
                        help="crop size (power of two; default: the generator's)")
    parser.add_argument("--format", choices=("png16", "exr", "pam16", "prores4444"),
                        default="png16", help="RGBA frame format (default png16)")
    parser.add_argument("--start-number", type=int, default=None,
                        help="number the first output frame N (default: its source "
                             "timecode frame number)")
    parser.add_argument("--rate", default=None,
                        help="frame rate of an image sequence (default 24)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--colour", "--color", metavar="NAME", default=None,
                        help="the source's colour space (Rec.709, sRGB, Rec.2020, "
                        "Rec.2100 PQ, Rec.2100 HLG, ARRI LogC3, ARRI LogC4, S-Log3, "
                        "V-Log, ACEScct, ACEScg... or an OCIO colour-space name); "
                        "default: from the media's tags")
    parser.add_argument("--ocio-config", metavar="FILE", default=None,
                        help="OpenColorIO config (default $OCIO, else the built-in "
                        "ACES studio config)")
    args = parser.parse_args(argv)
    from fsexchange.paths import check_output

    check_output(args.out, folder=True)  # before any work: a file there, no rights

    options = {"track": {"backend": args.backend}}
    if args.colour:
        options["colour"] = {"source": args.colour}
    if args.resolution:
        options["align"] = {"resolution": args.resolution}

    def progress(fraction: float, message: str) -> None:
        if sys.stderr.isatty():
            print(f"\r{message:<60.60} {fraction * 100:5.1f}%", end="", file=sys.stderr)

    info = probe(Path(args.media), Fraction(args.rate) if args.rate else None)
    range_text = args.range
    if is_timecode_range(range_text):
        range_text = timecode_range(range_text, info.rate, info.start_timecode)
    start, end = parse_range(range_text, info.frame_count)
    res = run_preview(args.media, args.out, start=start, end=end, face=args.face,
                      options=options, output_format=args.format,
                      start_number=args.start_number, rate=args.rate,
                      device=args.device, progress=progress,
                      ocio_config=args.ocio_config)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    frames = res["frames"]
    if frames:
        print(f"RGBA frames:    {frames[0].parent}/ ({frames[0].name} .. "
              f"{frames[-1].name}; the face in {res['edited']} of {res['count']})")
    if "preview" in res:
        print(f"preview movie:  {res['preview']}")
    if "contact_sheet" in res:
        print(f"contact sheet:  {res['contact_sheet']}")
    if "network_view" in res:
        print(f"network view:   {res['network_view']} (source | what the networks "
              "see)")
    if "report" in res:
        print(f"report:         {res['report']}")
    print(f"face track:     {res['facetrack']}")
    for w in res["warnings"]:
        print(f"note: {w}")
    return 0
