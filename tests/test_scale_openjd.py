"""``facestitch farm template``: the Open Job Description template validates with
``openjd-model``, and ``openjd run`` (the ``openjd-cli`` runtime, every step and
task in local sessions, one process per task) runs a real job through it with the
single-process run's frames and Result/1; a failing farm task publishes the job
to ``failed/`` with its error."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scale_util import (clip, comparable, frame_hashes, reference,
                        result_of, scale_job)
from test_pipeline_helpers import ROOT, submit

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openjd") is None,
                                reason="needs the farm extra (openjd-cli)")

BIN = Path(sys.executable).parent


def _template(out: Path, shards: int = 2) -> Path:
    r = subprocess.run([str(BIN / "facestitch"), "farm", "template", "--out",
                        str(out), "--shards", str(shards), "--command",
                        str(BIN / "facestitch")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return out / "template.yaml"


def _openjd_run(template: Path, exchange: Path, job_id: str, cwd: Path
                ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return subprocess.run(
        [str(BIN / "openjd"), "run", str(template), "-p", f"Exchange={exchange}",
         "-p", f"JobId={job_id}", "-p", "Device=cpu", "-p",
         f"FaceStitch={BIN / 'facestitch'}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_template_validates_and_has_the_pipeline_steps(tmp_path):
    import yaml  # openjd-model's own dependency

    from engine.commands.farm import job_template, validate_template

    path = _template(tmp_path / "bundle", shards=3)
    doc = yaml.safe_load(path.read_text())
    assert doc == job_template("stitch", 3)
    validate_template(doc, {"Exchange": "/x", "JobId": "j"})
    names = [s["name"] for s in doc["steps"]]
    assert names == ["claim", "track", "track merge", "align", "align merge",
                     "invert",
                     "invert merge", "pti",
                     "edit", "refine", "stitch_tune", "stitch_tune merge", "paste",
                     "paste merge", "report", "publish"]
    by_name = {s["name"]: s for s in doc["steps"]}
    shard = by_name["stitch_tune"]
    assert shard["parameterSpace"]["taskParameterDefinitions"] == [
        {"name": "Shard", "type": "INT", "range": "0-2"}]
    assert "{{Task.Param.Shard}}/3" in shard["script"]["actions"]["onRun"]["args"]
    for prev, step in zip(names, names[1:]):
        assert by_name[step]["dependencies"] == [{"dependsOn": prev}]
    params = {p["name"] for p in doc["parameterDefinitions"]}
    assert {"Exchange", "JobId"} <= params
    assert (path.parent / "parameter_values.yaml").is_file()
    r = subprocess.run([str(BIN / "openjd"), "check", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "passes validation" in r.stdout, r.stderr


@pytest.mark.slow
def test_openjd_run_gives_the_single_process_frames(tmp_path):
    from fsexchange.client import job_status

    c = clip(tmp_path / "clip")
    ref = reference(tmp_path, c, "ref")
    ex = tmp_path / "ex"
    submit(ex, scale_job("farmed"), c)
    template = _template(tmp_path / "bundle")
    r = _openjd_run(template, ex, "farmed", tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "Session ended successfully" in r.stdout
    st = job_status(ex, "farmed")
    assert st.state == "done", st.error
    assert frame_hashes(st.folder) == frame_hashes(ref)
    assert comparable(result_of(st.folder)) == comparable(result_of(ref))
    shards = st.folder / "stages" / "stitch_tune" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["0-of-2.msgpack",
                                                       "1-of-2.msgpack"]


@pytest.mark.slow
def test_a_failing_farm_task_publishes_the_failure(tmp_path):
    from dataclasses import replace

    from fsexchange.client import job_status
    from fsexchange.documents import Subject

    c = clip(tmp_path / "clip")
    ex = tmp_path / "ex"
    job = replace(scale_job("nobody"), subject=Subject(point=(0, 2.0, 2.0)))
    submit(ex, job, c)
    template = _template(tmp_path / "bundle")
    r = _openjd_run(template, ex, "nobody", tmp_path)
    assert r.returncode != 0
    st = job_status(ex, "nobody")
    assert st.state == "failed"
    assert st.error["code"] == "face.subject_invalid" and st.error["stage"] == "track"
    assert "no face contains the point" in st.error["message"]
