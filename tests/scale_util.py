"""Helpers for the scale-out tests (units, Ray, OpenJD); no tests here.

One small job (6 frames of the real-face clip, tiny profile, short PTI and
stitching, no metrics) is run single-process as the reference; the other
executors must deliver byte-identical frames and the same ``Result/1`` apart from
timings. Everything computes with one intra-op thread (recorded with the job,
engine/stages/compute.py): on the shared 2-core machine two OpenMP threads per
process are both slower and, with two Ray workers, oversubscribed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from test_pipeline_helpers import make_clip, make_job, submit

N = 6
#: 3 stitching batches of 2 and 3 encoder batches of 2: two shards split them
#: unevenly ([0], [1, 2]), which is what must not change a frame
OPTIONS: dict[str, Any] = {
    "profile": "tiny", "device": "cpu",
    "invert": {"batch_size": 2},
    "pti": {"steps": 3, "lr": 1e-3, "batch_size": 3},
    "stitch": {"steps": 40, "batch_size": 2},
    "metrics": {"enabled": False},
}


def edits() -> tuple:
    from fsexchange.documents import Edit

    return (Edit("age", -4.0), Edit("lipstick", 4.0, space="s"))


def scale_job(job_id: str, options: dict[str, Any] | None = None):
    return make_job(job_id, N, edits=edits(), options=options or OPTIONS)


def clip(work: Path) -> Path:
    return make_clip(work, N)


def reference(work: Path, clip_path: Path, job_id: str = "ref") -> Path:
    """The job run by a single-process engine in this process, one thread; returns
    its published folder."""
    import torch

    from engine.service.worker import EngineOptions, serve
    from fsexchange.client import job_status

    ex = work / "ref-exchange"
    submit(ex, scale_job(job_id), clip_path)
    threads = torch.get_num_threads()
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        serve(EngineOptions(exchange=ex, once=True, device="cpu", use_watchdog=False,
                            poll_interval=0.1, threads=1))
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    st = job_status(ex, job_id)
    assert st.state == "done", st.error
    return st.folder


def job_folder(work: Path, clip_path: Path, job_id: str) -> Path:
    """A bare job folder (not in an exchange) for running units directly."""
    folder = work / job_id
    (folder / "media").mkdir(parents=True)
    shutil.copy(clip_path, folder / "media" / "clip.mp4")
    (folder / "job.msgpack").write_bytes(scale_job(job_id).to_bytes())
    return folder


def frame_hashes(folder: Path) -> dict[int, str]:
    """sha256 of every delivered frame file, by source frame (read from disk)."""
    from fsexchange.documents import Result, load_document

    res = load_document(folder / "result.msgpack", Result)
    return {f.frame: hashlib.sha256((folder / f.path).read_bytes()).hexdigest()
            for f in res.frames}


def comparable(result) -> dict[str, Any]:
    """A ``Result/1`` as a dict without its timings and the job id."""
    d = result.to_dict()
    for key in ("started", "finished", "job_id"):
        d.pop(key, None)
    d["stages"] = [{k: v for k, v in s.items() if k != "seconds"}
                   for s in d["stages"]]
    return d


def result_of(folder: Path):
    from fsexchange.documents import Result, load_document

    return load_document(folder / "result.msgpack", Result)
