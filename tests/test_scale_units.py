"""One unit of one stage (``facestitch stage run``): shards then a final unit give
the frames and the result of a single-process run; units are idempotent; bad input
is refused with a message naming what is missing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from scale_util import (N, clip, comparable, frame_hashes, job_folder, reference,
                        result_of)
from test_pipeline_helpers import ROOT


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host_bridge.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("units")


def test_parse_shard():
    from engine.stages.contract import Shard
    from engine.stages.units import parse_shard

    assert parse_shard("0/4") == Shard(0, 4) and str(parse_shard("3/4")) == "3/4"
    for bad, words in (("4/4", "out of range"), ("2/0", "at least 1"),
                       ("1", "expected I/N"), ("a/b", "expected I/N")):
        with pytest.raises(ValueError, match=words):
            parse_shard(bad)
    # the blocks of N shards cover the items once, in order, whole batches each
    for total in range(0, 9):
        for n in range(1, 6):
            items = [i for k in range(n) for i in Shard(k, n).items(total)]
            assert items == list(range(total))


def test_shard_out_of_range_is_refused(work):
    folder = job_folder(work, clip(work / "c0"), "bad-shard")
    r = _cli("stage", "run", str(folder), "stitch_tune", "--shard", "5/4")
    assert r.returncode == 2
    assert "--shard 5/4 is out of range: shards of 4 are numbered 0 to 3" in r.stderr


def test_unit_before_its_earlier_stages_names_them(work):
    folder = job_folder(work, clip(work / "c1"), "early")
    r = _cli("stage", "run", str(folder), "invert", "--shard", "0/2")
    assert r.returncode == 2, r.stderr
    assert "[stage.not_ready]" in r.stderr
    assert "track, align are not complete" in r.stderr
    assert f"facestitch stage run {folder} track" in r.stderr
    assert not (folder / "stages" / "invert").exists()  # nothing was written
    r = _cli("stage", "list", str(folder))
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [(s["stage"], s["split"], s["complete"]) for s in listed["stages"]] == [
        ("track", "frames", False), ("align", "frames", False),
        ("invert", "frames", False), ("pti", "one", False), ("edit", "one", False),
        ("refine", "one", False),
        ("stitch_tune", "frames", False), ("paste", "frames", False),
        ("report", "one", False)]


def test_shard_of_a_one_unit_stage_and_unknown_stage(work):
    from engine.stages.units import run_unit
    from engine.stages.contract import Shard
    from fsexchange.errors import DocumentError, PipelineUnavailable

    folder = job_folder(work, clip(work / "c2"), "one-unit")
    with pytest.raises(PipelineUnavailable, match="stitch jobs have no stage 'pt'"):
        run_unit(folder, "pt")
    with pytest.raises(ValueError, match="stage pti runs as one unit"):
        run_unit(folder, "pti", Shard(0, 2))
    with pytest.raises(DocumentError, match="is not a job folder"):
        run_unit(work, "track")


@pytest.mark.slow
def test_shards_then_final_units_equal_single_process(work, tmp_path):
    """Every stage unit by unit (the frame stages as 2 shards, one of them run
    twice) in a bare job folder: byte-identical frames and the same Result/1 as
    the single-process engine."""
    from engine.service.runner import build_result
    from engine.stages.contract import Shard
    from engine.stages.pipeline import stages_for
    from engine.stages.units import run_unit
    from engine.stages.outputs import JobFiles

    c = clip(tmp_path / "clip")
    ref = reference(tmp_path, c, "same")
    folder = job_folder(tmp_path, c, "same")
    stages = stages_for("stitch")
    for stage in stages:
        if stage.split == "frames":
            for i in (1, 0):
                out = run_unit(folder, stage.name, Shard(i, 2), device="cpu",
                               threads=1)
                assert not out.skipped
            again = run_unit(folder, stage.name, Shard(0, 2), device="cpu")
            assert again.skipped  # a finished shard is not recomputed
            assert JobFiles(folder).done(stage.name) is None
        run_unit(folder, stage.name, device="cpu", threads=1)
        assert JobFiles(folder).done(stage.name) is not None
    assert json.loads((folder / "stages" / "compute.json").read_text()) == {
        "threads": 1}
    assert run_unit(folder, "paste", device="cpu").skipped

    files = JobFiles(folder)
    done = [(files.done(s.name), False) for s in stages]
    got = build_result("same", "done", done)
    want = result_of(ref)
    assert comparable(got) == comparable(want)
    assert len(got.frames) == N
    for f in got.frames:  # the files themselves, byte for byte
        data = (folder / f.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256
    assert {f.frame: f.sha256 for f in got.frames} == frame_hashes(ref)
    # the preview movie was encoded by the final unit from the shards' composites
    assert ((folder / "output" / "preview.mp4").read_bytes()
            == (ref / "output" / "preview.mp4").read_bytes())
