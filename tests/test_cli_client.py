"""``facestitch submit``, ``status`` and ``cancel`` on real clips and folders."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from engine_harness_util import (ROOT, engine_env, start_engine, stop, wait_until,
                                 write_test_clip)
from fsexchange.documents import Job, Keyframe, load_document
from fsexchange.exchange import Exchange
from host_bridge.cli import main


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=12)


@pytest.fixture
def ex(tmp_path) -> Path:
    return tmp_path / "ex"


def the_job(ex: Path) -> Job:
    (folder,) = (ex / "new").iterdir()
    return load_document(folder / "job.msgpack", Job)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host_bridge.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args,code", [
    (["MISSING"], "media.missing"),
    (["CLIP", "--range", "0:40"], "range.out_of_bounds"),
    (["CLIP", "--range", "8:3"], "range.invalid"),
    (["CLIP", "--range", "first:last"], "range.invalid"),
    (["CLIP", "--edit", "no_such_edit=2"], "edit.unknown"),
    (["CLIP", "--edit", "age=0@x,3@4"], "edit.invalid"),
    (["CLIP", "--option", "pti.steps=lots"], "document.field"),
])
def test_submit_refusals_exit_nonzero_with_a_clear_message(ex, clip, tmp_path, args,
                                                            code):
    media = {"MISSING": str(tmp_path / "nope.mov"), "CLIP": str(clip)}
    argv = [media.get(a, a) for a in args]
    out = cli("submit", *argv, "--exchange", str(ex))
    assert out.returncode == 2, out
    assert f"[{code}]" in out.stderr and out.stdout == ""
    if code == "media.missing":
        assert "nope.mov" in out.stderr
    if code == "range.out_of_bounds":
        assert "12 frames" in out.stderr
    if code == "edit.unknown":
        assert "no_such_edit" in out.stderr and "age" in out.stderr
    for sub in ("new", "tmp"):
        assert not (ex / sub).exists() or list((ex / sub).iterdir()) == []


def test_submit_probes_media_and_builds_the_job(ex, clip, capsys):
    assert main(["submit", str(clip), "--exchange", str(ex), "--range", "2:10",
                 "--edit", "age=0@2,-4@5,-4@8,0@9", "--edit", "smile=1.5",
                 "--face", "1", "--kind", "align-preview", "--profile", "tiny",
                 "--option", "pti.steps=40", "--option", "stitch.l1=true",
                 "--copy-media"]) == 0
    out = capsys.readouterr()
    job = the_job(ex)
    assert out.out.strip() == job.id
    assert (job.range.start, job.range.end, job.range.rate) == (2, 10, Fraction(25))
    assert job.kind == "align-preview" and job.subject.index == 1
    age, smile = job.edits
    assert age.keyframes == (Keyframe(2, 0.0), Keyframe(5, -4.0), Keyframe(8, -4.0),
                             Keyframe(9, 0.0))
    assert (smile.name, smile.strength, smile.keyframes) == ("smile", 1.5, ())
    assert job.options == {"pti": {"steps": 40}, "stitch": {"l1": True},
                           "profile": "tiny"}
    assert job.source.path == "media/clip.mp4"
    assert (ex / "new" / job.id / "media" / "clip.mp4").read_bytes() == \
        clip.read_bytes()


def test_submit_media_outside_the_exchange_needs_a_media_root(ex, clip, capsys):
    assert main(["submit", str(clip), "--exchange", str(ex)]) == 0
    err = capsys.readouterr().err
    job = the_job(ex)
    assert job.source.path == str(clip.resolve())
    assert f"--media-root {clip.resolve().parent}" in err
    assert (job.range.start, job.range.end) == (0, 12)


def test_submit_media_inside_the_exchange_is_referenced(ex, clip, capsys):
    Exchange(ex).ensure()
    (ex / "media").mkdir()
    inside = ex / "media" / "plate.mp4"
    inside.write_bytes(clip.read_bytes())
    assert main(["submit", str(inside), "--exchange", str(ex)]) == 0
    assert "--media-root" not in capsys.readouterr().err
    assert the_job(ex).source.path == str(inside.resolve())


def test_status_and_cancel_of_a_queued_job(ex, clip, capsys):
    assert main(["submit", str(clip), "--exchange", str(ex), "--id", "shot-1"]) == 0
    capsys.readouterr()
    assert main(["status", "--exchange", str(ex), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert {k: entry[k] for k in ("id", "state", "progress", "error")} == {
        "id": "shot-1", "state": "queued", "progress": 0.0, "error": None}
    assert main(["cancel", "--exchange", str(ex), "shot-1"]) == 0
    assert capsys.readouterr().out.strip() == "shot-1: cancelled"
    assert main(["status", "--exchange", str(ex), "shot-1"]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["status", "--exchange", str(ex), "nope"]) == 2
    assert "[job.not_found]" in capsys.readouterr().err
    assert main(["submit", str(clip), "--exchange", str(ex), "--id", "shot-1"]) == 2
    assert "[job.exists]" in capsys.readouterr().err


@pytest.mark.slow
def test_submit_wait_json_with_a_running_engine(ex, clip, tmp_path):
    logdir = tmp_path / "log"
    logdir.mkdir()
    engine = start_engine(ex, logdir, "--poll", "0.1", "--media-root",
                          str(clip.parent))
    try:
        wait_until(lambda: (ex / "new").is_dir(), 60, "engine start")
        out = subprocess.run(
            [sys.executable, "-m", "host_bridge.cli", "submit", str(clip),
             "--exchange", str(ex), "--range", "0:3", "--wait", "--json",
             "--timeout", "120"],
            capture_output=True, text=True, cwd=ROOT, env=engine_env(logdir),
            timeout=180)
    finally:
        stop(engine, signal.SIGTERM)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["state"] == "done" and data["progress"] == 1.0
    assert data["result"]["frames"] == 3
    assert f"{data['id']}: done" in out.stderr  # progress lines go to stderr
