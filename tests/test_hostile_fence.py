"""Fenced writes (issue 14, defect 10): a worker that lost its job to another
worker never writes into the new owner's folder. The job folder keeps its path
(``cur/<id>``) across a takeover, so without a fence a stalled worker's PTI
checkpoint (saved as it aborts) or its stage's DONE record landed in the new
owner's folder. Each such write first checks the claim's lease epoch
(``StageContext.fence``, bound by the runner).

Real folders, a real second claim through the exchange, the runner in-process.
"""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from engine.service.runner import RunnerSettings, run_job
from engine.stages.contract import Stage, StageAborted, StageContext, save_checkpoint
from engine_harness_util import no_leaked_threads  # noqa: F401 (fixture)
from fsexchange.client import submit_job
from fsexchange.documents import FrameRange, Job, Lease, Source, load_document
from fsexchange.exchange import Exchange

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

THIEF: list[Exchange] = []


def _take_over(ctx: StageContext) -> None:
    """What another engine does once this worker stalled past its lease."""
    thief = THIEF[0]
    assert thief.requeue(ctx.job_dir, reason="expired", grace=0)
    assert thief.claim(ctx.job.id, "thief", lease_seconds=600).epoch == 2


class CheckpointOnAbort(Stage):
    """Trains until aborted, then saves its checkpoint, as the PTI stage does."""

    name = "train"

    def run(self, ctx: StageContext):
        _take_over(ctx)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ctx.check_abort()  # the lease monitor notices the loss
                time.sleep(0.01)
            raise AssertionError("the lost lease was never noticed")
        except StageAborted:
            save_checkpoint(ctx.stage_dir(self.name) / "checkpoint.pt",
                            {"pass": 3}, fence=ctx.fence)
            raise


class FinishesAfterTakeover(Stage):
    """Completes normally after the takeover: its DONE record must not land."""

    name = "quick"

    def run(self, ctx: StageContext):
        _take_over(ctx)
        return {"frames": 1}


def _claimed(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    job = Job(id="fenced", source=Source("media/clip.txt"),
              range=FrameRange(0, 1, Fraction(25)))
    submit_job(ex, job, attachments={"media/clip.txt": b"not read"})
    THIEF[:] = [Exchange(ex.root)]
    claim = ex.claim("fenced", "victim", lease_seconds=30)
    assert claim is not None and claim.epoch == 1
    return ex, claim


@pytest.mark.parametrize("stage, heartbeat, written", [
    ("CheckpointOnAbort", 0.05, "stages/train/checkpoint.pt"),
    ("FinishesAfterTakeover", 60.0, "stages/quick/DONE.msgpack")])
def test_a_worker_that_lost_its_lease_writes_nothing_into_the_new_owners_folder(
        tmp_path, monkeypatch, stage, heartbeat, written):
    # The source is never probed by these stages; skip the media checks.
    monkeypatch.setattr("engine.service.runner._check_paths", lambda *a: None)
    ex, claim = _claimed(tmp_path)
    settings = RunnerSettings(device="cpu", heartbeat=heartbeat, worker="victim",
                              pipelines={"stitch": (f"test_hostile_fence:{stage}",)})
    assert run_job(ex, claim, settings) == "lost"
    folder = ex.dir("cur") / "fenced"  # the thief's now, at the same path
    assert load_document(folder / "lease.msgpack", Lease).worker == "thief"
    assert not (folder / written).exists(), f"the old owner wrote {written}"
    assert not (folder / "result.msgpack").exists()
