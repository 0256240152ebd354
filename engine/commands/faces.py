"""``facestitch faces``: the faces in a clip, for a bridge's face chooser.

The bridge (an editor's Python, no torch) runs this in a child process when the
engine is installed next to it, and reads one JSON document from stdout:

    facestitch faces list MEDIA --frame N [--search 12] [--rate R]
        -> {"frame": F, "width": W, "height": H,
            "faces": [{"index": 0, "box": [x0, y0, x1, y1], "score": s}, ...]}
           (largest first; the first frame from N on, within --search frames,
           that has a face, else N with no faces)
    facestitch faces track MEDIA --range START:END --subject JSON --out FILE
        -> writes the subject's FaceTrack/1 to FILE (msgpack); prints {"frames": n}

On a FaceStitch error both print ``{"error": {"code", "message", ...}}`` and exit 2,
so the bridge can raise the same typed error. Tracking uses dlib on the CPU (the
engine may track again on its GPU; a given track saves it the work).
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

from fsexchange.documents import Subject
from fsexchange.errors import FaceStitchError
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.grammar import parse_range
from fsexchange.timecode import parse_rate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facestitch faces",
                                description="List or track the faces of a clip "
                                "(JSON on stdout; used by the editor bridges).")
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="the faces at a frame, largest first")
    ls.add_argument("media", type=Path)
    ls.add_argument("--frame", type=int, default=0, help="media index (default 0)")
    ls.add_argument("--search", type=int, default=12,
                    help="look this many frames on when frame has no face")
    ls.add_argument("--rate", help="frame rate of an image sequence")
    tr = sub.add_parser("track", help="the FaceTrack/1 of one subject")
    tr.add_argument("media", type=Path)
    tr.add_argument("--range", required=True, metavar="START:END")
    tr.add_argument("--subject", default="{}", help="Subject as JSON")
    tr.add_argument("--rate", help="frame rate of an image sequence")
    tr.add_argument("--out", type=Path, required=True, help="FaceTrack/1 file")
    return p


def _list(args: argparse.Namespace) -> dict:
    from engine.faces import DlibBackend
    from engine.media.video import read_frames
    from fsexchange.media import probe
    from fsexchange.options import TrackConfig

    rate = parse_rate(args.rate, "--rate") if args.rate else None
    cfg = TrackConfig()
    backend = DlibBackend(cfg.detect_upsample, cfg.min_score)
    info = probe(args.media, rate)
    start = max(0, args.frame)
    end = min(info.frame_count, start + max(1, args.search))
    for index, rgb in read_frames(args.media, start, end):
        found = backend.boxes(rgb)
        if found:
            # Subject.index order (engine.stages.track): largest first, then leftmost
            found.sort(key=lambda bs: (-(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]),
                                       bs[0][0]))
            return {"frame": index, "width": info.width, "height": info.height,
                    "faces": [{"index": i, "box": [float(v) for v in box],
                               "score": float(score)}
                              for i, (box, score) in enumerate(found)]}
    return {"frame": start, "width": info.width, "height": info.height, "faces": []}


def _track(args: argparse.Namespace) -> dict:
    from engine.faces import DlibBackend
    from engine.stages.track import track_media
    from fsexchange.media import probe
    from fsexchange.options import TrackConfig

    rate = parse_rate(args.rate, "--rate") if args.rate else None
    info = probe(args.media, rate)
    start, end = parse_range(args.range, info.frame_count)
    subject = Subject.from_dict(json.loads(args.subject))
    cfg = TrackConfig(backend="dlib")
    track = track_media(args.media, start, end, cfg=cfg, subject=subject,
                        rate=Fraction(info.rate),
                        backend=DlibBackend(cfg.detect_upsample, cfg.min_score))
    atomic_write_bytes(args.out, track.to_bytes())
    return {"frames": len(track.frames), "out": str(args.out)}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        out = _list(args) if args.action == "list" else _track(args)
    except FaceStitchError as exc:
        print(json.dumps({"error": exc.to_dict()}))
        return 2
    except ValueError as exc:  # a malformed --subject
        print(json.dumps({"error": {"code": "document.field", "message": str(exc),
                                    "field": "subject"}}))
        return 2
    json.dump(out, sys.stdout)
    print()
    return 0
