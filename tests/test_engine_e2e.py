"""End to end through the real CLI processes: ``facestitch submit`` an
``align-preview`` job of a real-face clip, ``facestitch engine --once`` runs the
real stages (track, align, paste, report), ``facestitch status --json`` reports."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

from engine.stages.pipeline import PIPELINES
from engine_harness_util import ROOT
from fsexchange.documents import Result, load_document
from fsexchange.fsutil import sha256_file

pytestmark = pytest.mark.slow  # real engines / whole pipelines


def facestitch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host_bridge.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_align_preview_job_through_the_real_engine(tmp_path):
    from clips import ClipSpec, render_frames, write_clip

    clip = write_clip(tmp_path / "plate.mp4", render_frames(ClipSpec(frames=5)))
    ex = tmp_path / "exchange"
    out = facestitch("submit", str(clip), "--exchange", str(ex), "--kind",
                     "align-preview", "--copy-media", "--range", "1:5")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    out = facestitch("engine", "--exchange", str(ex), "--once", "--device", "cpu",
                     "--no-watch")
    assert out.returncode == 0, out.stderr
    out = facestitch("status", "--exchange", str(ex), job_id, "--json")
    status = json.loads(out.stdout)
    assert (status["state"], status["progress"], status["error"]) == ("done", 1.0,
                                                                      None), status
    folder = Path(status["folder"])
    assert folder == ex / "done" / job_id
    result = load_document(folder / "result.msgpack", Result)
    assert len(result.stages) == len(PIPELINES["align-preview"])
    assert all(not s.resumed and s.seconds >= 0 for s in result.stages)
    assert [f.frame for f in result.frames] == [1, 2, 3, 4]
    for f in result.frames:
        assert sha256_file(folder / f.path) == f.sha256
    assert any(f.edited for f in result.frames)  # the astronaut's face was found
    for rel in result.outputs.values():
        assert (folder / rel).is_file()
    assert (folder / "config.json").is_file()
    assert list((ex / "cur").iterdir()) == [] and list((ex / "new").iterdir()) == []
