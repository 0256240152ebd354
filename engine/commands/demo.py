"""``facestitch demo [--out DIR] [--frames N] [--profile auto|official|tiny]
[--device auto|cpu|cuda]``

The full round trip on a real face, in this process:

1. writes a short clip of scikit-image's ``astronaut`` (Eileen Collins, NASA,
   public domain) drifting and turning slightly (``DIR/clip.mp4``);
2. creates a local exchange folder (``DIR/exchange``) and submits a ``stitch`` job
   with an "age" edit that fades in over the clip (a keyframed strength curve),
   through :mod:`fsexchange.client` like any bridge would;
3. runs the engine on it (``engine.service.worker.serve(once=True)``): track, align, e4e
   inversion, PTI, edit, temporal refinement, stitching tuning, paste-back, report;
4. prints where the results are, the per-stage timings, the reconstruction and
   border errors, the warping error and LPIPS of the aligned edited frames before
   and after the refinement, and the temporal metrics.

It uses the official models when they are installed, otherwise the tiny test
profile, and says which, plainly: tiny networks are random, so their "edit" only
shows that every stage runs. The pipeline settings are the reference's (80 PTI
passes, 100 stitching steps, the refinement's README epochs); with the tiny profile
the demo takes about half a minute on 2 CPU cores. The one tiny-profile change: the
refinement's photometric loss gets an L1 term (``refine.weight_photo_l1`` 1), since
the tiny LPIPS has a random backbone that barely sees colour flicker; the demo says
so, and prints the refinement's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run_demo"]



def _profile(requested: str) -> str:
    from engine.models.store import Store, resolve_profile

    return resolve_profile(requested, Store())


def _options(profile: str, pti_steps: int | None = None,
             stitch_steps: int | None = None, refine: bool = True
             ) -> tuple[dict[str, Any], list[str]]:
    """Job options for the demo, and what differs from the reference settings."""
    opts: dict[str, Any] = {"profile": profile}
    notes: list[str] = []
    if not refine:
        opts["refine"] = {"enabled": False}
        notes.append("temporal refinement off (--no-refine)")
    elif profile == "tiny":
        # the tiny LPIPS (random backbone) hardly sees colour flicker
        opts["refine"] = {"weight_photo_l1": 1.0}
        notes.append("temporal refinement: photometric loss LPIPS + 1·L1 for the tiny "
                     "profile's non-perceptual LPIPS (reference: LPIPS only)")
    # The reference settings (80 PTI passes, 100 stitching steps) take about a
    # minute for 14 tiny frames on 2 CPU cores, so the demo keeps them.
    if pti_steps is not None:
        opts["pti"] = {"steps": pti_steps}
        notes.append(f"PTI {pti_steps} passes over all frames (reference: 80)")
    if stitch_steps is not None:
        opts["stitch"] = {"steps": stitch_steps}
        notes.append(f"stitching tuning {stitch_steps} steps per frame "
                     "(reference: 100)")
    return opts, notes


def run_demo(out: Path, *, frames: int = 14, profile: str = "auto",
             device: str = "auto", quiet: bool = False, pti_steps: int | None = None,
             stitch_steps: int | None = None, refine: bool = True) -> dict[str, Any]:
    """Run the demo; returns ``{"job_id", "status", "folder", "report", ...}``.

    ``pti_steps`` / ``stitch_steps`` override the passes and steps (and are
    printed as changed from the reference settings); ``refine`` False skips the
    temporal refinement."""
    from engine.devices import resolve_device
    from engine.media.samples import RATE, astronaut_clip
    from engine.service.worker import EngineOptions, serve
    from fsexchange.client import build_job, job_status, submit_job
    from fsexchange.documents import (Edit, FrameRange, Keyframe,
                                      Source)

    def say(text: str = "") -> None:
        if not quiet:
            print(text, flush=True)

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    resolved = _profile(profile)
    if resolved == "tiny":
        say("!" * 78)
        say("!! Official models are not installed: using the TINY TEST PROFILE.")
        say("!! tiny test networks — not a real edit. They are random networks; the")
        say("!! demo shows that every stage runs, not what an edit looks like.")
        say("!! Install the official models: facestitch models fetch / install.")
        say("!" * 78)
    else:
        say("Using the official FFHQ-1024 models.")
        if dev == "cpu":
            say("Note: the official 1024 px networks on a CPU take a long time "
                "(hours); use a GPU (--device cuda) or --profile tiny.")
    options, notes = _options(resolved, pti_steps, stitch_steps, refine)
    for n in notes:
        say(f"Demo setting changed from the reference: {n}.")
    say(_refine_settings(options))

    clip = astronaut_clip(out / "clip.mp4", frames)
    say(f"Clip: {clip} ({frames} frames at {RATE} fps, scikit-image astronaut)")
    exchange = out / "exchange"
    mid, last = frames // 2, frames - 1
    edit = Edit("age", keyframes=(Keyframe(0, 0.0), Keyframe(max(mid, 1), -6.0),
                                  Keyframe(max(last, 2), -6.0)), ease="smooth")
    job = build_job(id_prefix="demo", source=Source("media/clip.mp4"),
                    range=FrameRange(0, frames, RATE), edits=(edit,), options=options,
                    host={"app": "facestitch demo"})
    job_id = submit_job(exchange, job, attachments={"media/clip.mp4": clip})
    say(f"Submitted job {job_id} to {exchange} with edit age: 0 -> -6 "
        f"(smooth fade over frames 0-{max(mid, 1)}, held to {max(last, 2)})")

    stop_watch = threading.Event()

    def watch() -> None:  # progress while the engine runs in this thread
        last_stage, last_msg, last_time = None, "", 0.0
        while not stop_watch.wait(0.5):
            try:
                st = job_status(exchange, job_id)
            except Exception:  # noqa: BLE001 - the folder is moving between states
                continue
            now = time.monotonic()
            new_stage = st.stage != last_stage
            if st.stage and (new_stage or (now - last_time >= 10
                                           and st.message != last_msg)):
                if not quiet:
                    print(f"  {st.progress * 100:5.1f}%  {st.message}"[:100],
                          flush=True)
                last_stage, last_msg, last_time = st.stage, st.message, now

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        serve(EngineOptions(exchange=exchange, once=True, device=dev,
                            use_watchdog=False, poll_interval=0.2))
    finally:
        stop_watch.set()
        watcher.join()
    wall = time.monotonic() - t0
    st = job_status(exchange, job_id)
    res: dict[str, Any] = {"job_id": job_id, "status": st, "folder": st.folder,
                           "seconds": wall, "profile": resolved, "notes": notes}
    say("")
    say(f"Job {job_id}: {st.state} in {wall:.0f} s")
    if st.error:
        say(f"  error [{st.error.get('code')}]: {st.error.get('message')}")
        return res
    result = st.result
    folder = st.folder
    assert result is not None and folder is not None
    say(f"Results: {folder / 'output'}")
    for key, rel in sorted(result.outputs.items()):
        say(f"  {key}: {folder / rel}")
        if key == "report":
            res["report"] = folder / rel
    edited = sum(1 for f in result.frames if f.edited)
    say(f"  {len(result.frames)} RGBA frames (png16, {edited} with the face edited)")
    say("")
    say("Stage timings:")
    for s in result.stages:
        say(f"  {s.name:<12} {s.seconds:8.2f} s")
    facts = _stage_facts(folder)
    pti = facts.get("pti", {})
    if pti.get("before") and pti.get("after"):
        b, a = pti["before"], pti["after"]
        say(f"PTI reconstruction over all frames: MSE {b['mse']:.4f} -> {a['mse']:.4f}"
            f", LPIPS {b['lpips']:.4f} -> {a['lpips']:.4f}")
        res["pti"] = {"before": b, "after": a}
    rf = facts.get("refine", {})
    rm = rf.get("metrics") or {}
    if rm.get("refine_warp_error_before") is not None:
        b, a = rm["refine_warp_error_before"], rm["refine_warp_error_after"]
        say(f"Temporal refinement ({rf.get('flow_name')}, anchor frame "
            f"{rf.get('anchor')}, {'+'.join(str(e) for e in rf.get('epochs', []))} "
            f"epochs, {rf.get('batch_size')} pairs per step): warping error of the "
            f"aligned edited frames {b:.5f} -> {a:.5f} (aligned source "
            f"{rm.get('refine_warp_error_source', float('nan')):.5f}), LPIPS to the "
            f"direct edit {rm.get('refine_lpips_to_direct_edit', float('nan')):.4f}")
        res["refine"] = rm
    elif rf:
        say("Temporal refinement: " + ("off" if rf.get("enabled") is False
                                       else str(rf.get("skipped", "skipped"))))
    stt = facts.get("stitch_tune", {})
    if stt.get("border_before") is not None:
        say(f"Stitching border error (mean): naive paste {stt['border_before']:.4f} "
            f"-> tuned {stt['border_after']:.4f}")
        res["border"] = (stt["border_before"], stt["border_after"])
    m = result.metrics
    if m:
        say("Temporal metrics (1.0 = as consistent as the source):")
        for k in ("tl_id", "tg_id", "warp_error", "warp_error_source",
                  "frames_without_face"):
            if k in m:
                v = m[k]
                say(f"  {k:<20} {v:.4f}" if isinstance(v, float) else
                    f"  {k:<20} {v}")
    for w in result.warnings:
        say(f"Warning: {w}")
    if resolved == "tiny":
        say("Reminder: tiny test networks — not a real edit (see the report's banner).")
    if "report" in res:
        say(f"Open the report: {res['report']}")
    return res


def _stage_facts(folder: Path) -> dict[str, dict]:
    from engine.stages.outputs import JobFiles

    out = {}
    for name in ("pti", "refine", "stitch_tune"):
        doc = JobFiles(folder).done(name)
        if doc is not None:
            out[name] = doc.facts
    return out


def _refine_settings(options: dict[str, Any]) -> str:
    """One line: the refinement settings the demo job runs with."""
    from fsexchange.options import PipelineConfig

    r = PipelineConfig.from_options(options).refine
    if not r.enabled:
        return "Temporal refinement: off."
    photo = f"{r.weight_photo:g}·LPIPS" + (f" + {r.weight_photo_l1:g}·L1"
                                          if r.weight_photo_l1 else "")
    return (f"Temporal refinement settings: flow {r.flow} at 1/{r.flow_scale} of the "
            f"generator size (>= {r.min_flow_size} px); phase 1 (latent mapper) "
            f"{r.epochs_w} epochs, lr {r.lr_w:g}, s {r.residual_scale:g}, |MLP| "
            f"{r.reg_frame:g}; phase 2 (generator) {r.epochs_g} epochs, lr "
            f"{r.lr_g:g}, locality {r.reg_g:g}, last {r.freeze_fine_layers} W+ layers "
            f"frozen; photometric {photo}, cycle {r.weight_cycle:g}, preservation "
            f"{r.weight_out_mask_w:g} / {r.weight_out_mask_g:g}; pairs per step "
            f"{r.batch_size or 'auto'}.")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="facestitch demo",
        description="Run the full STIT round trip on a short real-face clip made "
        "from scikit-image's astronaut: a local exchange folder, a stitch job with "
        "an age edit, the engine in this process, then results and report.")
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help="folder for the clip, the exchange and the results "
                   "(default ./demo-out)")
    p.add_argument("--frames", type=int, default=14,
                   help="clip length in frames (default 14)")
    p.add_argument("--profile", choices=("auto", "official", "tiny"), default="auto",
                   help="models: official when installed (auto), or force one")
    p.add_argument("--device", default="auto",
                   help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="skip the temporal refinement")
    p.add_argument("--json", action="store_true",
                   help="also print a JSON summary at the end")
    args = p.parse_args(argv)
    if args.frames < 3:
        p.error("--frames must be at least 3")
    res = run_demo(args.out, frames=args.frames, profile=args.profile,
                   device=args.device, refine=args.refine)
    st = res["status"]
    if args.json:
        print(json.dumps({"job_id": res["job_id"], "state": st.state,
                          "folder": str(res["folder"]), "seconds": res["seconds"],
                          "profile": res["profile"],
                          "report": str(res.get("report", "")),
                          "pti": res.get("pti"), "border": res.get("border"),
                          "refine": res.get("refine"),
                          "metrics": st.result.metrics if st.result else None}))
    return 0 if st.state == "done" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
