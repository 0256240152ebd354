"""The runner: stages, DONE checkpoints, results, progress, errors as data.

In-process engine runs (``serve(once=True)``) with the small real stages of
``tests/engine_harness.py`` on a real PyAV clip.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fsexchange.options import PipelineConfig
from engine.service.runner import RunnerSettings, run_job
from engine.stages.contract import Stage, StageContext
from engine.service.worker import EngineOptions, serve
from engine_harness import PIPELINES
from engine_harness_util import (count, events, make_job,  # noqa: F401 (fixture)
                                 no_leaked_threads, submit, write_test_clip)
from fsexchange.client import job_status, submit_job
from fsexchange.documents import Lease, Progress, Result, load_document
from fsexchange.exchange import Exchange

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

GATE = threading.Event()  # set: the gate stage requests an engine shutdown
STOP = threading.Event()


class GateStage(Stage):
    """Between hash and deliver: simulates a SIGTERM arriving in the middle."""

    name = "gate"

    def run(self, ctx: StageContext):
        if GATE.is_set():
            STOP.set()
            ctx.check_abort()
        return {"frames": 0}


class ThiefStage(Stage):
    """Another worker takes the job over (as after a lease expiry) mid-stage."""

    name = "thief"
    exchange: Exchange | None = None

    def run(self, ctx: StageContext):
        assert self.exchange is not None
        self.exchange.requeue(ctx.job_dir, reason="expired", grace=0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ctx.check_abort()
            time.sleep(0.01)
        raise AssertionError("the lost lease was never noticed")


GATED = {"stitch": ("engine_harness:HashStage", "test_engine_runner:GateStage",
                    "engine_harness:DeliverStage")}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=8)


@pytest.fixture
def logdir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    monkeypatch.setenv("FS_HARNESS_LOG", str(d))
    return d


def drain(exchange: Path, pipelines=PIPELINES, **kw) -> int:
    opts = EngineOptions(exchange=exchange, once=True, device="cpu",
                         use_watchdog=False, **kw)
    return serve(opts, pipelines=pipelines)


def test_good_job_result_progress_and_config(tmp_path, clip, logdir):
    ex = tmp_path / "ex"
    submit(ex, clip, "good", frames=5)
    assert drain(ex) == 1
    folder = ex / "done" / "good"
    result = load_document(folder / "result.msgpack", Result)
    assert result.state == "done" and result.error is None
    assert [(s.name, s.frames, s.resumed) for s in result.stages] == [
        ("hash", 5, False), ("deliver", 5, False)]
    assert [f.frame for f in result.frames] == [0, 1, 2, 3, 4]
    for f in result.frames:
        assert (folder / f.path).is_file() and len(f.sha256) == 64
    assert result.outputs == {"summary": "output/summary.txt"}
    assert result.warnings == ("harness: hashed, not edited",)
    assert result.models == {"harness": {"label": "sha256 of decoded frames"}}
    progress = load_document(folder / "progress.msgpack", Progress)
    assert (progress.state, progress.fraction) == ("done", 1.0)
    config = json.loads((folder / "config.json").read_text())
    # the recipe is recorded resolved: fast on the tiny profile (no official models)
    assert config == dict(PipelineConfig.from_options({}, device="cpu").to_dict(),
                          recipe="fast")
    assert (folder / "stages" / "hash" / "DONE.msgpack").is_file()
    assert job_status(ex, "good").to_dict()["result"]["frames"] == 5


def test_shutdown_releases_and_resume_skips_done_stages(tmp_path, clip, logdir):
    ex = tmp_path / "ex"
    submit(ex, clip, "j1", frames=4)
    GATE.set()
    STOP.clear()
    try:
        opts = EngineOptions(exchange=ex, once=True, device="cpu", use_watchdog=False)
        assert serve(opts, pipelines=GATED, stop_event=STOP) == 0
    finally:
        GATE.clear()
    assert job_status(ex, "j1").state == "queued"  # released, not lost
    lease = load_document(ex / "new" / "j1" / "lease.msgpack", Lease)
    assert lease.released == "shutdown"
    assert drain(ex, GATED) == 1
    result = load_document(ex / "done" / "j1" / "result.msgpack", Result)
    assert [(s.name, s.resumed) for s in result.stages] == [
        ("hash", True), ("gate", False), ("deliver", False)]
    rows = events(logdir, "j1")
    assert count(rows, "hash", "start") == 1  # the completed stage never re-ran
    assert count(rows, "hash", "frame") == 4
    assert count(rows, "deliver", "end") == 1


def test_lost_lease_publishes_nothing(tmp_path, clip, logdir):
    ex = Exchange(tmp_path / "ex").ensure()
    submit(ex.root, clip, "j1", frames=2)
    ThiefStage.exchange = ex
    claim = ex.claim("j1", "A", lease_seconds=30)
    settings = RunnerSettings(device="cpu", heartbeat=0.05, worker="A",
                              pipelines={"stitch": ("test_engine_runner:ThiefStage",)})
    assert run_job(ex, claim, settings) == "lost"
    assert job_status(ex.root, "j1").state == "queued"
    assert not (ex.dir("new") / "j1" / "result.msgpack").exists()
    assert list(ex.dir("cur").iterdir()) == []


def test_cancel_request_before_start(tmp_path, clip, logdir):
    ex = Exchange(tmp_path / "ex").ensure()
    submit(ex.root, clip, "j1", frames=2)
    ex.request_cancel("j1")
    assert drain(ex.root) == 1
    status = job_status(ex.root, "j1")
    assert status.state == "cancelled" and status.error["code"] == "cancelled"
    assert events(logdir, "j1") == []
    assert not ex.cancel_requested("j1")


def test_a_job_that_keeps_killing_workers_fails(tmp_path, clip, logdir):
    ex = Exchange(tmp_path / "ex").ensure()
    submit(ex.root, clip, "j1", frames=2)
    lease = Lease(job_id="j1", worker="", epoch=3, expires=0.0, reclaims=3,
                  released="expired")
    (ex.dir("new") / "j1" / "lease.msgpack").write_bytes(lease.to_bytes())
    assert drain(ex.root) == 1
    status = job_status(ex.root, "j1")
    assert (status.state, status.error["code"]) == ("failed", "job.crashed")
    assert events(logdir, "j1") == []


@pytest.mark.parametrize("fail,code,stage", [("internal", "internal", "hash"),
                                             ("face", "face.not_found", "hash")])
def test_stage_errors_become_data(tmp_path, clip, logdir, fail, code, stage, caplog):
    ex = tmp_path / "ex"
    submit(ex, clip, "bad", frames=2, fail=fail)
    submit(ex, clip, "good", frames=2)
    assert drain(ex) == 2
    bad = job_status(ex, "bad")
    assert (bad.state, bad.error["code"], bad.error["stage"]) == ("failed", code, stage)
    assert job_status(ex, "good").state == "done"
    if code == "internal":
        assert "deliberate internal failure" in caplog.text  # traceback logged
        assert "Traceback" in caplog.text


def test_invalid_options_name_the_field(tmp_path, clip, logdir):
    ex = tmp_path / "ex"
    job = make_job("j1", frames=2)
    object.__setattr__(job, "options", {"pti": {"steps": "many"}})
    submit_job(ex, job, attachments={"media/clip.mp4": clip})
    drain(ex)
    status = job_status(ex, "j1")
    assert status.error["code"] == "document.field"
    assert status.error["field"] == "options.pti.steps"


def test_unknown_kind_is_pipeline_unavailable(tmp_path, clip, logdir):
    ex = tmp_path / "ex"
    job = make_job("j1", frames=2)
    object.__setattr__(job, "kind", "align-preview")
    submit_job(ex, job, attachments={"media/clip.mp4": clip})
    drain(ex, {"stitch": PIPELINES["stitch"]})
    assert job_status(ex, "j1").error["code"] == "pipeline.unavailable"


def test_a_precision_the_device_cannot_compute_fails_before_any_stage(
        tmp_path, clip, logdir):
    """``dtype: tf32`` on a CPU engine: refused with its own code before the first
    stage (nothing hashed), the job after it served."""
    ex = tmp_path / "ex"
    job = make_job("tf32", frames=2)
    object.__setattr__(job, "options", {"dtype": "tf32"})
    submit_job(ex, job, attachments={"media/clip.mp4": clip})
    submit(ex, clip, "good", frames=2)
    assert drain(ex) == 2
    status = job_status(ex, "tf32")
    assert (status.state, status.error["code"], status.error["field"]) == (
        "failed", "device.precision_unsupported", "options.dtype")
    assert "compute capability 8.0" in status.error["message"]
    assert events(logdir, "tf32") == []
    assert job_status(ex, "good").state == "done"
