"""Messages a user reads (issue 14, defect 12), in-process: a huge error message
keeps ``progress.msgpack`` within its own 64 KiB limit; ``status`` finds what it
lists, even a job whose folder name is no valid id."""

from __future__ import annotations

from fractions import Fraction

import pytest

from engine.service.runner import RunnerSettings, run_job
from engine.stages.contract import Stage, StageContext
from engine_harness_util import no_leaked_threads  # noqa: F401 (fixture)
from fsexchange.client import submit_job
from fsexchange.documents import (FrameRange, Job, Progress, Result, Source,
                                  load_document)
from fsexchange.errors import NoFaceFound
from fsexchange.exchange import Exchange
from host_bridge.cli import main as cli

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


class Verbose(Stage):
    name = "verbose"

    def run(self, ctx: StageContext):
        ctx.report(0.5, "x" * 200_000)
        raise NoFaceFound("no face; details: " + "y" * 200_000)


def test_a_huge_message_keeps_progress_within_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.service.runner._check_paths", lambda *a: None)
    ex = Exchange(tmp_path / "ex").ensure()
    submit_job(ex, Job(id="loud", source=Source("m.mov"),
                       range=FrameRange(0, 1, Fraction(25))))
    claim = ex.claim("loud", "w", lease_seconds=30)
    settings = RunnerSettings(device="cpu", worker="w", progress_interval=0.0,
                              pipelines={"stitch": ("test_hostile_messages:Verbose",)})
    assert run_job(ex, claim, settings) == "failed"
    folder = ex.dir("failed") / "loud"
    assert (folder / "progress.msgpack").stat().st_size <= Progress.MAX_BYTES
    progress = load_document(folder / "progress.msgpack", Progress)
    assert progress.state == "failed" and progress.message.startswith("no face")
    result = load_document(folder / "result.msgpack", Result)
    assert result.error["code"] == "face.not_found"
    assert 1000 < len(result.error["message"]) <= 16384


def test_status_finds_every_job_it_lists(tmp_path, capsys):
    ex = Exchange(tmp_path / "ex").ensure()
    (ex.dir("failed") / "odd name (copy)").mkdir()
    assert cli(["status", "--exchange", str(ex.root)]) == 0
    assert "odd name (copy)" in capsys.readouterr().out
    assert cli(["status", "--exchange", str(ex.root), "odd name (copy)"]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "result.msgpack cannot be read: it is missing" in out
    assert cli(["status", "--exchange", str(tmp_path / "nowhere")]) == 2
    assert "[io.path]" in capsys.readouterr().err
