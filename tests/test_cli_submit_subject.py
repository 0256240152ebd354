"""``facestitch submit``: timecode ranges and choosing the subject by point or box."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clips import ClipSpec, render_frames, write_clip
from fsexchange.documents import Job, load_document
from host_bridge.cli import main


@pytest.fixture(scope="module")
def tc_clip(tmp_path_factory) -> Path:
    """A 25 fps clip whose first frame is 01:00:00:00 (timecode 90000 in frames)."""
    frames = render_frames(ClipSpec(frames=10, size=(160, 120), face_scale=0.4))
    return write_clip(tmp_path_factory.mktemp("tc") / "tc.mov", frames, Fraction(25),
                      start_timecode="01:00:00:00")


def submitted(ex: Path) -> Job:
    (folder,) = (ex / "new").iterdir()
    return load_document(folder / "job.msgpack", Job)


def test_timecode_range_maps_to_media_indices(tc_clip, tmp_path, capsys):
    ex = tmp_path / "ex"
    assert main(["submit", str(tc_clip), "--exchange", str(ex), "--kind",
                 "align-preview", "--range", "01:00:00:02-01:00:00:07"]) == 0
    job = submitted(ex)
    assert (job.range.start, job.range.end) == (2, 7)
    assert job.range.start_timecode == "01:00:00:00"
    assert job.range.start_frame_number + job.range.start == 90002


@pytest.mark.parametrize("rng,code", [
    ("00:59:59:24-01:00:00:03", "range.invalid"),  # before the media starts
    ("01:00:00:03-01:00:01:05", "range.out_of_bounds"),  # past its 10 frames
    ("01:00:00:03-01:00:00:30", "range.invalid"),  # frame 30 does not exist at 25
])
def test_bad_timecode_ranges_are_refused(tc_clip, tmp_path, capsys, rng, code):
    ex = tmp_path / "ex"
    assert main(["submit", str(tc_clip), "--exchange", str(ex), "--range", rng]) == 2
    assert f"[{code}]" in capsys.readouterr().err
    assert not (ex / "new").exists() or not any((ex / "new").iterdir())


def test_face_point_and_box_become_the_subject(tc_clip, tmp_path, capsys):
    ex = tmp_path / "p"
    assert main(["submit", str(tc_clip), "--exchange", str(ex), "--kind",
                 "align-preview", "--face-point", "3:80.5,60"]) == 0
    assert submitted(ex).subject.point == (3.0, 80.5, 60.0)
    ex = tmp_path / "b"
    assert main(["submit", str(tc_clip), "--exchange", str(ex), "--kind",
                 "align-preview", "--face-box", "0:50,30,110,90"]) == 0
    assert submitted(ex).subject.box == (0.0, 50.0, 30.0, 110.0, 90.0)


@pytest.mark.parametrize("args", [
    ["--face", "0", "--face-point", "0:1,2"],
    ["--face-point", "0:1"],
    ["--face-box", "0:10,10,5,20"],
    ["--face-point", "x:1,2"],
])
def test_bad_subjects_are_refused(tc_clip, tmp_path, capsys, args):
    ex = tmp_path / "ex"
    assert main(["submit", str(tc_clip), "--exchange", str(ex), *args]) == 2
    assert "[face.subject_invalid]" in capsys.readouterr().err


def test_recipe_goes_into_the_job_options(tc_clip, tmp_path):
    ex = tmp_path / "ex"
    assert main(["submit", str(tc_clip), "--exchange", str(ex), "--kind",
                 "align-preview", "--recipe", "reference"]) == 0
    assert submitted(ex).options["recipe"] == "reference"
