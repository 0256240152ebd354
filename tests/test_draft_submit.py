"""Asking for drafts: the sweep and frame grammars, ``build_job``'s checks, and
``facestitch submit`` / ``facestitch ofx submit`` with ``--draft``, which refuse
a malformed sweep or an edit that is not installed before anything is queued."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine_harness_util import write_test_clip
from fsexchange.client import build_job
from fsexchange.documents import (PRIORITY_DRAFT, Edit, FrameRange, Job, Source,
                                  load_document)
from fsexchange.errors import EditInvalid, RangeInvalid
from fsexchange.grammar import (format_sweep, parse_edit_spec, parse_frames,
                                parse_sweep, sweep_row_folder, sweep_row_label,
                                sweep_rows)
from host_bridge.cli import main


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=12)


def test_sweep_grammar():
    (age,) = parse_sweep("age=-8:8:5")
    assert age.strengths == (-8.0, -4.0, 0.0, 4.0, 8.0)
    assert parse_sweep("smile=0:1:3")[0].strengths == (0.0, 0.5, 1.0)
    assert parse_sweep("pose=2:2:1")[0].strengths == (2.0,)
    grid = parse_sweep(["age=-8:8:3", "smile=0:2:2"])
    assert format_sweep(grid) == "age=-8:8:3; smile=0:2:2"
    assert parse_sweep(format_sweep(grid)) == grid
    rows = sweep_rows(grid)  # the first edit varies slowest
    assert rows[:3] == [(("age", -8.0), ("smile", 0.0)), (("age", -8.0),
                                                          ("smile", 2.0)),
                        (("age", 0.0), ("smile", 0.0))]
    assert len(rows) == 6 and sweep_rows(()) == [()]
    assert sweep_row_label(rows[1]) == "age -8, smile 2"
    assert sweep_row_folder(1, rows[1]) == "r01_age-8_smile+2"
    assert sweep_row_folder(0, ()) == "r00_edit"
    assert sweep_row_label((), (Edit("age", -4.0),)) == "age -4"
    for bad in ("age", "age=1:2", "age=a:2:3", "age=1:2:0", "age=1:2:17",
                "age=0:1:1", "age=0:1:2; age=2:3:2", "a b=0:1:2",
                "age=0:1:16; smile=0:1:16", "age=nan:1:2"):
        with pytest.raises(EditInvalid):
            parse_sweep(bad)
    assert parse_frames("40, 10,24,10") == (10, 24, 40)
    for bad in ("x", "-1,2", ","):
        with pytest.raises(RangeInvalid):
            parse_frames(bad)


def test_draft_edit_specs_mix_sweeps_and_fixed_edits():
    c = parse_edit_spec("age=-8:8:5, smile=1", draft=True, known=["age", "smile"])
    assert c.kind == "draft" and [e.name for e in c.edits] == ["smile"]
    assert [a.name for a in c.sweep] == ["age"]
    with pytest.raises(EditInvalid, match="both swept"):
        parse_edit_spec("age=-8:8:5; age=2", draft=True)
    with pytest.raises(EditInvalid):  # a sweep is not an edit of a full job
        parse_edit_spec("age=-8:8:5")


def test_build_job_checks_drafts():
    src, rng = Source("m.mov"), FrameRange(0, 10, Fraction(25))
    job = build_job(source=src, range=rng, kind="draft",
                    options={"draft": {"sweep": "age=-8:8:5"}})
    assert job.priority == PRIORITY_DRAFT
    assert build_job(source=src, range=rng, edits=(Edit("age", 1.0),)).priority == 0
    assert build_job(source=src, range=rng, kind="draft", edits=(Edit("age", 1.0),),
                     priority=-3).priority == -3
    with pytest.raises(EditInvalid, match="a draft renders an edit"):
        build_job(source=src, range=rng, kind="draft")
    with pytest.raises(EditInvalid) as err:
        build_job(source=src, range=rng, kind="draft",
                  options={"draft": {"sweep": "age=1"}})
    assert err.value.field == "options.draft.sweep"
    with pytest.raises(EditInvalid, match="both swept"):
        build_job(source=src, range=rng, kind="draft", edits=(Edit("age", 1.0),),
                  options={"draft": {"sweep": "age=-1:1:3"}})
    with pytest.raises(Exception) as err:
        build_job(source=src, range=rng, kind="draft", edits=(Edit("age", 1.0),),
                  priority=500)
    assert err.value.field == "priority"


def _the_job(ex: Path) -> Job:
    (folder,) = (ex / "new").iterdir()
    return load_document(folder / "job.msgpack", Job)


def test_submit_draft_builds_a_high_priority_draft(clip, tmp_path, capsys):
    ex = tmp_path / "ex"
    assert main(["submit", str(clip), "--exchange", str(ex), "--draft",
                 "--sweep", "age=-8:8:5", "--sweep", "smile=0:2:2",
                 "--edit", "yaw=1", "--frames", "3,9", "--draft-pti", "4",
                 "--profile", "tiny"]) == 0
    job = _the_job(ex)
    assert capsys.readouterr().out.strip() == job.id
    assert job.kind == "draft" and job.priority == PRIORITY_DRAFT
    assert [e.name for e in job.edits] == ["yaw"]
    assert job.options["draft"] == {"sweep": "age=-8:8:5; smile=0:2:2",
                                    "frames": [3, 9], "pti_steps": 4}


def test_submit_no_stitch_and_priority(clip, tmp_path):
    ex = tmp_path / "ex"
    assert main(["submit", str(clip), "--exchange", str(ex), "--edit", "age=-4",
                 "--no-stitch", "--priority", "7"]) == 0
    job = _the_job(ex)
    assert (job.kind, job.priority, job.options) == (
        "stitch", 7, {"stitch": {"tune": False}, "refine": {"enabled": True}})


@pytest.mark.parametrize("args,code", [
    (["--draft", "--sweep", "age=-8:8"], "edit.invalid"),
    (["--draft", "--sweep", "age=-8:8:0"], "edit.invalid"),
    (["--draft", "--sweep", "no_such_edit=-1:1:3"], "edit.unknown"),
    (["--draft", "--edit", "no_such_edit=1"], "edit.unknown"),
    (["--draft"], "edit.invalid"),  # nothing to render
    (["--draft", "--sweep", "age=0:1:2", "--edit", "age=1"], "edit.invalid"),
    (["--sweep", "age=-8:8:5", "--edit", "age=1"], "document.field"),  # no --draft
    (["--draft", "--edit", "age=1", "--frames", "3,40"], "range.out_of_bounds"),
    (["--draft", "--edit", "age=1", "--frames", "three"], "range.invalid"),
    (["--draft", "--edit", "age=1", "--no-stitch"], "document.field"),
    (["--edit", "age=1", "--priority", "101"], "document.field"),
])
def test_submit_refuses_bad_drafts_before_queueing(clip, tmp_path, capsys, args,
                                                   code):
    ex = tmp_path / "ex"
    assert main(["submit", str(clip), "--exchange", str(ex), *args]) == 2
    err = capsys.readouterr().err
    assert f"[{code}]" in err, err
    if code == "edit.unknown":
        assert "no_such_edit" in err and "age" in err  # names the installed ones
    assert not (ex / "new").exists() or list((ex / "new").iterdir()) == []


def test_ofx_submit_can_ask_for_a_draft(tmp_path, capsys):
    from engine.media.video import encode_rgba
    from fsexchange.fsutil import atomic_write_bytes

    export = tmp_path / "export"
    export.mkdir()
    for n in range(1000, 1006):
        atomic_write_bytes(export / f"frame.{n:07d}.pam",
                           encode_rgba("pam", np.zeros((8, 8, 4), np.uint16)))
    ex = tmp_path / "ex"
    assert main(["ofx", "submit", str(export), "--exchange", str(ex), "--rate", "25",
                 "--draft", "--sweep", "age=-4:4:3", "--frames", "0,5"]) == 0
    out = capsys.readouterr().out
    job = _the_job(ex)
    assert job.kind == "draft" and job.priority == PRIORITY_DRAFT
    assert job.options["draft"] == {"sweep": "age=-4:4:3", "frames": [0, 5]}
    results = ex.resolve() / "done" / job.id / "output" / "sweep"
    for folder, label in (("r00_age-4", "age -4"), ("r01_age0", "age 0"),
                          ("r02_age+4", "age 4")):
        assert f"Results folder  {results / folder}  ({label})" in out
    assert main(["ofx", "submit", str(export), "--exchange", str(ex), "--rate", "25",
                 "--draft", "--sweep", "age=-4:4"]) == 2
    assert "[edit.invalid]" in capsys.readouterr().err
