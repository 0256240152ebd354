"""`facestitch otio`: the round trip as an OpenTimelineIO timeline, frame-accurate."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import opentimelineio as otio
import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.client import job_status, submit_job
from fsexchange.documents import FrameRange, Job, OutputSpec, Source, Subject, \
    load_document
from host_bridge.cli import main as cli
from host_bridge.otio_export import build_timeline, write_timeline
from host_bridge.resolve import open_session
from host_bridge.roundtrip import SendOptions, send_shot
from host_stages import result_pixel
from test_resolve_roundtrip import run_engine

NTSC = Fraction(24000, 1001)
FAST = SendOptions(kind="align-preview", handles=2, subject=Subject(),
                   track_locally=False)


@pytest.fixture(scope="module")
def resolve_job(tmp_path_factory):
    """A done job sent from a 23.976 timeline at 01:00:00:00: the clip (media TC
    10:00:00:00) at record 86410, left offset 3, 8 frames, handles 2."""
    root = tmp_path_factory.mktemp("otio")
    clip = write_clip(root / "A001_C002.mov", render_frames(ClipSpec(frames=16)), NTSC)
    resolve = FakeResolve(rate=NTSC)
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(clip, rate=NTSC, start_timecode="10:00:00:00")
    item = timeline.place(mpi, record=86410, duration=8, left_offset=3)
    exchange = root / "exchange"
    sent = send_shot(open_session(resolve), exchange, item, FAST)
    run_engine(exchange, root)
    status = job_status(exchange, sent.job_id)
    return exchange, status, load_document(status.folder / "job.msgpack", Job)


def test_timeline_places_the_result_above_the_clip(resolve_job, tmp_path):
    exchange, status, job = resolve_job
    [out] = write_timeline(build_timeline(job, status.result, status.folder),
                           tmp_path / "rt.otio")
    tl = otio.adapters.read_from_file(str(out))
    assert tl.global_start_time.to_frames() == 86400
    assert tl.global_start_time.to_timecode() == "01:00:00:00"
    assert [t.name for t in tl.tracks] == ["Video 1", "Video 2"]
    tc_origin = 10 * 3600 * 24  # 10:00:00:00 at 23.976 (nominal 24)
    for track in tl.tracks:
        clip = track[-1]
        placed = clip.range_in_parent()
        assert (placed.start_time.to_frames(), placed.duration.to_frames()) == (10, 8)
        assert clip.source_range.start_time.to_frames() == tc_origin + 3
        assert clip.source_range.start_time.rate == pytest.approx(24000 / 1001)
    original, layer = tl.tracks[0][-1], tl.tracks[1][-1]
    assert original.media_reference.target_url == str(Path(job.source.path).resolve())
    assert not original.media_reference.target_url.startswith("file:")
    meta = layer.metadata["facestitch"]
    assert meta["job_id"] == job.id and meta["alpha"] == "straight"
    assert meta["premultiplied"] is False and list(meta["rate"]) == [24000, 1001]
    ref = layer.media_reference  # default shape: the first frame (Resolve imports it)
    assert isinstance(ref, otio.schema.ExternalReference)
    assert ref.target_url.endswith(f"A001_C002_fs.{tc_origin + 1:07d}.png")
    assert Path(ref.target_url).is_file()
    assert ref.available_range.start_time.to_frames() == tc_origin + 1
    assert ref.available_range.duration.to_frames() == 12


def test_image_sequence_shape_maps_every_frame_to_its_file(resolve_job, tmp_path):
    exchange, status, job = resolve_job
    tl = build_timeline(job, status.result, status.folder, shape="both")
    layer = tl.tracks[1][-1]
    assert set(layer.media_references()) == {"DEFAULT_MEDIA", "image_sequence"}
    assert layer.active_media_reference_key == "DEFAULT_MEDIA"
    seq = layer.media_references()["image_sequence"]
    rng = layer.source_range
    for k in range(rng.duration.to_frames()):
        t = rng.start_time + otio.opentime.RationalTime(k, rng.start_time.rate)
        number = seq.frame_for_time(t)
        path = Path(seq.target_url_for_image_number(number - seq.start_frame))
        rgb = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert rgb[120, 160, 2] == result_pixel(3 + k)  # BGRA: red, 16-bit
    only = build_timeline(job, status.result, status.folder, shape="sequence")
    assert isinstance(only.tracks[1][-1].media_reference,
                      otio.schema.ImageSequenceReference)


def test_cli_writes_the_file_and_refuses_unknown_formats(resolve_job, tmp_path, capsys):
    exchange, status, job = resolve_job
    out = tmp_path / "shot.otio"
    assert cli(["otio", "--exchange", str(exchange), job.id, "--out", str(out)]) == 0
    assert "8 frames" in capsys.readouterr().out and out.is_file()
    assert cli(["otio", "--exchange", str(exchange), job.id,
                "--out", str(tmp_path / "x.mp4")]) == 2
    assert "use one of .otio" in capsys.readouterr().err


def test_a_job_without_editor_context_uses_the_source_timecode(tmp_path):
    clip = write_clip(tmp_path / "plate.mov", render_frames(ClipSpec(frames=6)),
                      Fraction(25))
    exchange = tmp_path / "exchange"
    job = Job(id="plain-job", source=Source(str(clip)),
              range=FrameRange(1, 5, Fraction(25), "00:10:00:00"), kind="align-preview",
              output=OutputSpec(name="plate"))
    submit_job(exchange, job)
    run_engine(exchange, tmp_path)
    status = job_status(exchange, job.id)
    tl = build_timeline(job, status.result, status.folder)
    assert tl.global_start_time.to_timecode() == "00:10:00:01"
    for track in tl.tracks:
        assert len(track) == 1 and track[0].source_range.duration.to_frames() == 4


def test_cli_explains_a_job_that_is_not_done(tmp_path, capsys):
    exchange = tmp_path / "exchange"
    job = Job(id="queued-job", source=Source("/nowhere.mov"),
              range=FrameRange(0, 4, Fraction(25)))
    submit_job(exchange, job)
    assert cli(["otio", "--exchange", str(exchange), job.id, "--out",
                str(tmp_path / "x.otio")]) == 2
    assert "queued" in capsys.readouterr().err
