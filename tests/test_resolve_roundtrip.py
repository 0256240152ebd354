"""The Resolve round trip against the fake Resolve (tests/fake_resolve.py), a real
exchange folder, the real engine runner and real media files.

Shots go out through ``send_shot`` and come back through ``import_finished``; the
engine runs cheap stages (tests/host_stages.py) except where a test says otherwise.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.client import job_status
from fsexchange.documents import Job, Subject, load_document
from fsexchange.errors import HostError, MediaMissing
from fsexchange.timecode import timecode_to_frames
from host_bridge.resolve import open_session, pick_items, read_shot
from host_bridge.resolve.place import parse_tag
from host_bridge.roundtrip import SendOptions, follow, import_finished, import_job, \
    send_shot, timeline_jobs
from host_stages import result_pixel

CHEAP = {"stitch": ("host_stages:SolidPasteStage",),
         "align-preview": ("host_stages:SolidPasteStage",)}
NTSC = Fraction(24000, 1001)
MEDIA_TC = "14:03:10:05"
FAST = SendOptions(kind="align-preview", handles=2, subject=Subject(),
                   track_locally=False)


def run_engine(exchange: Path, media_root: Path, pipelines=CHEAP) -> int:
    from engine.service.worker import EngineOptions, serve

    return serve(EngineOptions(exchange, once=True, media_roots=(media_root,),
                               device="cpu", use_watchdog=False, poll_interval=0.05),
                 pipelines=pipelines)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    frames = render_frames(ClipSpec(frames=16))
    return {Fraction(25): write_clip(folder / "plate25.mov", frames, Fraction(25)),
            NTSC: write_clip(folder / "plate2398.mov", frames, NTSC),
            "root": folder}


def shot_on_timeline(clip: Path, rate: Fraction, *, left: int = 3, duration: int = 8,
                     record_offset: int = 10, **fake):
    """A timeline starting at 01:00:00:00 with one clip cut in on V1."""
    resolve = FakeResolve(rate=rate, **fake)
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(clip, rate=rate, start_timecode=MEDIA_TC)
    item = timeline.place(mpi, record=timeline.GetStartFrame() + record_offset,
                          duration=duration, left_offset=left)
    timeline.set_playhead(item.GetStart() + 2)
    return resolve, timeline, item


@pytest.mark.parametrize("rate", [NTSC, Fraction(25)], ids=["23.976", "25"])
def test_round_trip_lands_at_the_exact_record_frame(clips, tmp_path, rate):
    resolve, timeline, item = shot_on_timeline(clips[rate], rate)
    tl_start = timeline.GetStartFrame()
    assert tl_start == (86400 if rate == NTSC else 90000)  # absolute frames
    session = open_session(resolve)
    [picked] = pick_items(session, "playhead")
    exchange = tmp_path / "exchange"
    sent = send_shot(session, exchange, picked, FAST)

    job = load_document(job_status(exchange, sent.job_id).folder / "job.msgpack", Job)
    assert (job.range.start, job.range.end) == (1, 13)  # left 3 - 2 .. 3 + 8 + 2
    assert job.range.rate == rate  # exact rational: 24000/1001, not 23.976
    assert job.range.start_timecode == MEDIA_TC
    assert job.source.path == str(clips[rate]) and job.output.start_number is None
    assert job.host["record_start"] == tl_start + 10
    assert job.host["timeline_start_frame"] == tl_start
    assert job.host["timeline_start_timecode"] == "01:00:00:00"
    assert (job.host["source_in"], job.host["source_out"]) == (3, 11)
    assert job.host["handles"] == [2, 2] and job.host["track_index"] == 1

    assert run_engine(exchange, clips["root"]) == 1
    report = import_finished(session, exchange)
    assert not report.failed and len(report.placed) == 1
    placement = report.placed[0]
    assert (placement.record_start, placement.duration) == (tl_start + 10, 8)
    assert placement.track_index == 2 and timeline.GetTrackCount("video") == 2

    [placed] = timeline.items(2)
    assert (placed.GetStart(), placed.GetEnd(), placed.GetDuration()) == (
        tl_start + 10, tl_start + 18, 8)
    assert placed.GetLeftOffset() == 2  # source frame 3 in a result starting at 1
    clip = placed.GetMediaPoolItem()
    first = timecode_to_frames(MEDIA_TC, rate) + 1  # numbered by source timecode
    assert clip.GetClipProperty("File Name") == (
        f"{clips[rate].stem}_fs.[{first:07d}-{first + 11:07d}].png")
    assert clip.GetClipProperty("Alpha mode") == "Straight"
    assert placed.GetProperty("CompositeMode") == resolve.COMPOSITE_NORMAL
    assert placed.GetProperty("Opacity") == 100.0
    [(frame_id, marker)] = placed.GetMarkers().items()
    assert frame_id == 0 and parse_tag(marker["customData"])["job"] == sent.job_id
    # frame-accurate: each record frame shows the result of its own source frame
    for record in range(tl_start + 10, tl_start + 18):
        source_frame = 3 + record - (tl_start + 10)
        assert placed.pixels_at(record)[120, 160, 0] == result_pixel(source_frame) >> 8
    # the bin, and the editor's current folder left as it was
    pool = resolve.project.GetMediaPool()
    [bin_] = pool.GetRootFolder().GetSubFolderList()
    assert bin_.GetName() == "FaceStitch" and bin_.GetClipList() == [clip]
    assert pool.GetCurrentFolder() is pool.GetRootFolder()


def test_rerun_replaces_the_previous_result(clips, tmp_path):
    resolve, timeline, item = shot_on_timeline(clips[Fraction(25)], Fraction(25),
                                               flaky_delete=True)
    session = open_session(resolve)
    exchange = tmp_path / "exchange"
    first = send_shot(session, exchange, item, FAST)
    run_engine(exchange, clips["root"])
    assert len(import_finished(session, exchange).placed) == 1
    # the editor sends the shot again twice; both finish; only the newest lands
    send_shot(session, exchange, item, FAST)
    newest = send_shot(session, exchange, item, FAST)
    run_engine(exchange, clips["root"])
    resolve.OpenPage("color")  # DeleteClips needs the Edit page: the bridge opens it
    report = import_finished(session, exchange)
    assert [p.job_id for p in report.placed] == [newest.job_id]
    assert report.placed[0].replaced == 1
    [placed] = timeline.items(2)
    assert parse_tag(placed.GetMarkers()[0]["customData"])["job"] == newest.job_id
    assert timeline.GetTrackCount("video") == 2
    # nothing new: nothing moves; asked again: replaced, still one layer
    assert import_finished(session, exchange).already == [newest.job_id]
    again = import_job(session, exchange, first.job_id)
    assert again.replaced == 1 and len(timeline.items(2)) == 1


def test_engine_failure_reaches_the_editor_with_what_to_do(clips, tmp_path):
    resolve, timeline, item = shot_on_timeline(clips[Fraction(25)], Fraction(25))
    session = open_session(resolve)
    exchange = tmp_path / "exchange"
    sent = send_shot(session, exchange, item, FAST)
    run_engine(exchange, clips["root"], {"align-preview": ("host_stages:NoFaceStage",)})
    report = import_finished(session, exchange)
    assert not report.placed and len(report.failed) == 1
    text = report.failed[0]
    assert sent.job_id in text and "'plate25.mov'" in text
    assert "no face was found" in text and "What to do:" in text
    assert "align-preview" in text and "face.not_found" in text
    with pytest.raises(HostError, match="What to do"):
        import_job(session, exchange, sent.job_id)
    with pytest.raises(HostError, match="no face was found"):
        follow(exchange, sent.job_id, timeout=5)
    [listed] = timeline_jobs(session, exchange)
    assert "failed: no face was found" in listed.describe()
    assert timeline.GetTrackCount("video") == 1  # nothing placed


def test_media_the_engine_cannot_reach_is_explained(clips, tmp_path):
    resolve, timeline, item = shot_on_timeline(clips[Fraction(25)], Fraction(25))
    session = open_session(resolve)
    exchange = tmp_path / "exchange"
    send_shot(session, exchange, item, FAST)
    run_engine(exchange, tmp_path / "elsewhere")  # not allowed to read the clip
    [text] = import_finished(session, exchange).failed
    assert "--media-root" in text and "path.escape" in text


def test_offline_media_is_refused_at_send_time(clips, tmp_path):
    resolve = FakeResolve(rate=Fraction(25))
    timeline = resolve.project.add_timeline("Edit 1")
    offline = resolve.project.add_virtual_media("A001_C003.mov", {
        "File Path": str(tmp_path / "gone" / "A001_C003.mov"), "Type": "Video",
        "FPS": 25.0, "Frames": "100", "Start TC": "10:00:00:00"})
    item = timeline.place(offline, record=timeline.GetStartFrame(), duration=20)
    with pytest.raises(MediaMissing, match="offline.*Relink"):
        send_shot(open_session(resolve), tmp_path / "exchange", item, FAST)
    assert not (tmp_path / "exchange" / "new").exists() or not any(
        (tmp_path / "exchange" / "new").iterdir())


@pytest.mark.slow
def test_shot_with_two_faces_uses_the_editors_choice(clips, tmp_path):
    pytest.importorskip("dlib")
    clip = write_clip(tmp_path / "two.mov",
                      render_frames(ClipSpec(frames=10, second_face=True)),
                      Fraction(25))
    resolve, timeline, item = shot_on_timeline(clip, Fraction(25), left=2, duration=6)
    session = open_session(resolve)
    seen = {}

    def choose(shot, found):
        seen["faces"] = found
        # the astronaut: the smaller face, in the middle of the frame
        return min(found.faces, key=lambda f: abs(f.centre[0] - 160)).index

    exchange = tmp_path / "exchange"
    # crops at 256 px keep the real engine fast (no generator is loaded to size them)
    opts = SendOptions(kind="align-preview", handles=1,
                       options={"align": {"resolution": 256}})
    sent = send_shot(session, exchange, item, opts, choose_face=choose)
    found = seen["faces"]
    assert len(found.faces) == 2 and found.frame == 2 and sent.faces == 2
    picked = min(found.faces, key=lambda f: abs(f.centre[0] - 160))
    assert picked.index == 1  # Subject.index order: largest first
    assert sent.subject.point[0] == 2
    x0, y0, x1, y1 = picked.box
    assert x0 <= sent.subject.point[1] <= x1 and y0 <= sent.subject.point[2] <= y1
    # tracked here (dlib on this CPU): the track follows the chosen face
    assert sent.tracked_locally and sent.subject.track == "facetrack.msgpack"
    folder = job_status(exchange, sent.job_id).folder
    from fsexchange.documents import FaceTrack

    track = load_document(folder / "facetrack.msgpack", FaceTrack)
    assert [f.frame for f in track.frames] == list(range(1, 9))
    for fr in track.frames:
        assert fr.present and 110 < (fr.box[0] + fr.box[2]) / 2 < 210

    # the real engine (align-preview: track from the attachment, align, paste)
    pipelines = {"align-preview": ("engine.stages.track:TrackStage",
                                   "engine.stages.align:AlignStage",
                                   "engine.stages.paste:PasteStage")}
    assert run_engine(exchange, tmp_path, pipelines) == 1
    status = job_status(exchange, sent.job_id)
    assert status.state == "done", status.error
    [placement] = import_finished(session, exchange).placed
    assert (placement.record_start, placement.duration) == (item.GetStart(), 6)
    [placed] = timeline.items(2)
    assert placed.GetLeftOffset() == 1 and placed.GetDuration() == 6
    assert len(status.result.frames) == 8


def test_without_a_chooser_the_largest_face_is_taken_with_a_warning(tmp_path):
    pytest.importorskip("dlib")
    clip = write_clip(tmp_path / "two.mov",
                      render_frames(ClipSpec(frames=4, second_face=True)), Fraction(25))
    resolve, timeline, item = shot_on_timeline(clip, Fraction(25), left=0, duration=4)
    sent = send_shot(open_session(resolve), tmp_path / "ex", item,
                     SendOptions(handles=0, track_locally=False))
    assert sent.faces == 2 and sent.subject.point is not None
    assert any("largest" in w for w in sent.warnings)


def test_read_shot_clamps_handles_to_the_media(clips):
    resolve, timeline, item = shot_on_timeline(clips[Fraction(25)], Fraction(25),
                                               left=1, duration=14)
    shot = read_shot(open_session(resolve), item, handles=5)
    assert (shot.source_in, shot.source_out) == (1, 15)
    assert (shot.handle_in, shot.handle_out) == (1, 1)  # 16-frame media
    assert (shot.range_start, shot.range_end) == (0, 16)
    assert shot.record_timecode == "01:00:00:10"
