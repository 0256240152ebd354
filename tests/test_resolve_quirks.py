"""The bridge against Resolve's measured quirks (docs/hosts.md "Scripting calls and
their quirks" to "Render-based export"): None returns,
silently dropped or phantom appends, inclusive-endFrame builds, occupied and locked
tracks, shots trimmed or moved after sending, and the render-based export with the
user's render settings restored."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.client import job_status
from fsexchange.documents import Job, Subject, load_document
from fsexchange.errors import HostError, MediaMissing
from host_bridge.resolve import ResultMedia, open_session, pick_items, place_result, \
    read_shot, resolve_rate
from host_bridge.resolve.connect import Edition, constant, find_resolve, has_api
from host_bridge.resolve.shot import timeline_rate
from host_bridge.roundtrip import SendOptions, import_finished, send_shot
from host_stages import result_pixel
from test_resolve_roundtrip import run_engine

FAST = SendOptions(kind="align-preview", handles=2, subject=Subject(),
                   track_locally=False)
RATE = Fraction(25)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plate")
    return write_clip(folder / "plate.mov", render_frames(ClipSpec(frames=16)), RATE)


def make(plate, **fake):
    resolve = FakeResolve(rate=RATE, **fake)
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(plate, rate=RATE, start_timecode="02:00:00:00")
    item = timeline.place(mpi, record=timeline.GetStartFrame() + 10, duration=8,
                          left_offset=3)
    timeline.set_playhead(item.GetStart())
    return resolve, timeline, item


@pytest.fixture(scope="module")
def done(plate, tmp_path_factory):
    """A finished job for the shot geometry of :func:`make` (source frames 1..12)."""
    exchange = tmp_path_factory.mktemp("ex")
    resolve, timeline, item = make(plate)
    sent = send_shot(open_session(resolve), exchange, item, FAST)
    run_engine(exchange, plate.parent)
    status = job_status(exchange, sent.job_id)
    return sent.job_id, ResultMedia.from_result(status.folder, status.result)


def place(resolve, item, done, **kw):
    session = open_session(resolve)
    host = read_shot(session, item, handles=2).host_dict()
    return place_result(session, host, done[1], done[0], **kw)


# ---- the fake itself follows the documented traps ----------------------------------

def test_fake_models_the_documented_traps(plate):
    resolve, timeline, item = make(plate)
    assert hasattr(item, "NoSuchCall") and item.NoSuchCall() is None
    assert "GetStart" in dir(item) and "NoSuchCall" not in dir(item)
    assert not has_api(item, "NoSuchCall") and has_api(item, "GetStart")
    assert constant(resolve, "COMPOSITE_NORMAL", 9) == 0
    assert constant(resolve, "NO_SUCH_CONSTANT", 7) == 7  # the proxy gives a callable
    assert timeline.GetStartFrame() == 90000 and item.GetStart() == 90010
    assert item.GetEnd() - item.GetStart() == item.GetDuration() == 8  # exclusive end
    timeline.set_playhead(90000)
    assert timeline.GetCurrentVideoItem() is None
    assert not item.AddMarker(8, "Red", "x", "", 1, "")  # clip markers are relative
    project = resolve.project
    assert not project.SetRenderSettings({"MarkIn": 1,
                                          "ReplaceExistingFilesInPlace": True})
    assert project.render_settings()["settings"]["MarkIn"] is None  # all or nothing
    pool = project.GetMediaPool()
    timeline.AddTrack("video")
    mpi = item.GetMediaPoolItem()
    [ghost] = pool.AppendToTimeline([{"mediaPoolItem": mpi, "startFrame": 0,
                                      "endFrame": 4, "mediaType": 1, "trackIndex": 1,
                                      "recordFrame": 90012}])  # overlaps the shot
    assert ghost.GetDuration() is None and len(timeline.items(1)) == 1


def test_rates_and_editions():
    assert resolve_rate("23.976") == Fraction(24000, 1001)
    assert resolve_rate(29.97) == Fraction(30000, 1001)
    assert resolve_rate("59.94 DF") == Fraction(60000, 1001)
    assert resolve_rate("25") == 25 and resolve_rate(24.0) == 24
    with pytest.raises(HostError):
        resolve_rate("fast")
    resolve = FakeResolve(rate=Fraction(30000, 1001), studio=False, version=(19, 1, 3))
    resolve.project.SetSetting("timelineFrameRate", "29.97 DF")
    resolve.project.add_timeline("T")
    session = open_session(resolve)
    assert timeline_rate(session) == (Fraction(30000, 1001), True)
    assert not session.edition.studio and session.edition.at_least(19, 1)
    assert not session.edition.at_least(20, 3)
    assert Edition.of(FakeResolve()).studio
    assert resolve.fusion.UIManager is None  # free 19.1+: no UIManager


def test_find_resolve_lookup_order():
    resolve = FakeResolve()
    assert find_resolve({"resolve": resolve}) is resolve
    assert find_resolve({"fusion": resolve.fusion}) is resolve
    assert find_resolve({"app": resolve.fusion, "resolve": None}) is resolve
    with pytest.raises(HostError, match="External scripting"):
        find_resolve({}, external=False)


# ---- picking shots -----------------------------------------------------------------

def test_nothing_under_the_playhead(plate):
    resolve, timeline, item = make(plate)
    timeline.set_playhead(timeline.GetStartFrame())
    with pytest.raises(HostError, match="playhead"):
        pick_items(open_session(resolve), "playhead")


def test_flagged_and_coloured_items(plate, done):
    resolve, timeline, item = make(plate)
    mpi = item.GetMediaPoolItem()
    other = timeline.place(mpi, record=90030, duration=4, left_offset=0)
    third = timeline.place(mpi, record=90040, duration=4, left_offset=0, track=2)
    item.AddFlag("Blue")
    third.AddFlag("Green")
    other.SetClipColor("Orange")
    session = open_session(resolve)
    assert pick_items(session, "flagged") == [item, third]
    assert pick_items(session, "flagged:Green") == [third]
    assert pick_items(session, "color:Orange") == [other]
    placed = place(resolve, item, done).item
    placed.AddFlag("Blue")  # our own result layers are never picked
    assert pick_items(session, "flagged:Blue") == [item]
    with pytest.raises(HostError, match="Red flag"):
        pick_items(session, "flagged:Red")


def test_broken_item_is_refused(plate):
    resolve, timeline, item = make(plate)
    broken = timeline.place(item.GetMediaPoolItem(), record=90030, duration=4,
                            broken=True)
    with pytest.raises(HostError, match="broken"):
        read_shot(open_session(resolve), broken)


# ---- placement quirks ----------------------------------------------------------------

@pytest.mark.parametrize("version, expect_track", [((21, 0, 3), 2), ((19, 1, 3), 3)])
def test_occupied_track_above_gets_a_new_track(plate, done, version, expect_track):
    resolve, timeline, item = make(plate, version=version)
    title = timeline.place(None, record=90012, duration=30, track=2, name="Title",
                           frames=lambda i: np.zeros((240, 320, 3), np.uint8))
    placement = place(resolve, item, done)
    assert placement.track_index == expect_track
    assert timeline.GetTrackCount("video") == 3
    assert title in timeline.items(3 if expect_track == 2 else 2)  # untouched
    assert timeline.GetTrackName("video", expect_track) == "FaceStitch"
    [placed] = timeline.items(expect_track)
    assert (placed.GetStart(), placed.GetDuration()) == (90010, 8)


def test_locked_track_above_is_not_used(plate, done):
    resolve, timeline, item = make(plate)
    timeline.AddTrack("video")
    timeline._tracks[1]["locked"] = True
    assert place(resolve, item, done).track_index == 2  # a new track inserted at V2
    assert timeline.GetIsTrackLocked("video", 3) and not timeline.items(3)


def test_inclusive_end_frame_builds_are_corrected_by_reading_back(plate, done):
    resolve, timeline, item = make(plate, end_inclusive=True)
    placement = place(resolve, item, done)
    [placed] = timeline.items(2)
    assert (placed.GetStart(), placed.GetDuration()) == (90010, 8) == (
        placement.record_start, placement.duration)


def test_a_phantom_append_is_retried_then_reported(plate, done):
    resolve, timeline, item = make(plate, phantom_appends=1)
    assert place(resolve, item, done).duration == 8
    resolve, timeline, item = make(plate, phantom_appends=5)
    with pytest.raises(HostError, match="did not place the result"):
        place(resolve, item, done)
    assert timeline.items(2) == []


def test_the_result_follows_a_shot_trimmed_after_sending(plate, done):
    resolve, timeline, item = make(plate)
    session = open_session(resolve)
    host = read_shot(session, item, handles=2).host_dict()
    # the editor trims one frame off the head (inside the handles) and moves the clip
    item._start, item._left, item._duration = 90021, 4, 7
    placement = place_result(session, host, done[1], done[0])
    [placed] = timeline.items(2)
    assert (placed.GetStart(), placed.GetDuration(), placed.GetLeftOffset()) == (
        90021, 7, 3)
    assert placed.pixels_at(90021)[120, 160, 0] == result_pixel(4) >> 8
    assert not placement.warnings
    # extended past the processed frames (12 and 13 were never rendered)
    item._duration = 10
    placement = place_result(session, host, done[1], done[0])
    assert placement.duration == 9 and placement.replaced == 1
    assert any("send it again" in w for w in placement.warnings)


def test_deleted_shot_places_at_the_recorded_position(plate, done):
    resolve, timeline, item = make(plate)
    session = open_session(resolve)
    host = read_shot(session, item, handles=2).host_dict()
    timeline._tracks[0]["items"].clear()
    placement = place_result(session, host, done[1], done[0])
    assert (placement.record_start, placement.duration) == (90010, 8)
    assert any("not found" in w for w in placement.warnings)


def test_the_jobs_timeline_is_used_and_the_current_one_restored(plate, done):
    resolve, timeline, item = make(plate)
    session = open_session(resolve)
    host = read_shot(session, item, handles=2).host_dict()
    other = resolve.project.add_timeline("Other")
    resolve.project.SetCurrentTimeline(other)
    session = open_session(resolve)
    place_result(session, host, done[1], done[0])
    assert len(timeline.items(2)) == 1 and other.GetTrackCount("video") == 1
    assert resolve.project.GetCurrentTimeline() is other
    resolve.project._timelines.remove(timeline)
    with pytest.raises(HostError, match="not in this project"):
        place_result(session, host, done[1], done[0])


# ---- export by rendering -------------------------------------------------------------

def compound_shot(plate_frames, **fake):
    resolve = FakeResolve(rate=RATE, **fake)
    timeline = resolve.project.add_timeline("Edit 1")
    compound = resolve.project.add_virtual_media(
        "Compound Clip 1", {"Type": "Compound", "File Path": "", "FPS": 25.0,
                            "Frames": "16", "Resolution": "320x240"},
        frames=lambda i: plate_frames[i])
    # a background clip on V1 must not leak into the export (other tracks disabled)
    timeline.place(None, record=90000, duration=40, track=1, name="BG",
                   frames=lambda i: np.full((240, 320, 3), 200, np.uint8))
    item = timeline.place(compound, record=90010, duration=8, left_offset=3, track=2)
    return resolve, timeline, item


def test_compound_clip_is_exported_by_rendering_and_settings_restored(tmp_path):
    frames = render_frames(ClipSpec(frames=16))
    resolve, timeline, item = compound_shot(frames)
    project = resolve.project
    project.SetRenderSettings({"TargetDir": "/the/users/deliveries", "CustomName": "x"})
    before = (project.render_settings(), project.GetRenderPresetList())
    session = open_session(resolve)
    exchange = tmp_path / "exchange"
    sent = send_shot(session, exchange, item, FAST)
    assert sent.shot.export == "render" and "Compound" in sent.shot.export_reason
    assert (project.render_settings(), project.GetRenderPresetList()) == before
    assert project.GetTimelineCount() == 1 and project.GetCurrentTimeline() is timeline
    assert project.GetRenderJobList() == []

    folder = job_status(exchange, sent.job_id).folder
    job = load_document(folder / "job.msgpack", Job)
    assert job.source.path == "media/render" and job.source.kind == "sequence"
    assert (job.range.start, job.range.end, job.range.rate) == (0, 8, RATE)
    assert job.range.start_timecode == "01:00:00:10"  # the record timecode
    pngs = sorted((folder / "media" / "render").iterdir())
    assert [p.name for p in pngs] == [f"frame.{90010 + i:07d}.png" for i in range(8)]
    import cv2

    first = cv2.imread(str(pngs[0]))[:, :, ::-1]
    assert np.abs(first.astype(int) - frames[3]).max() == 0  # V2 alone, frame 3

    run_engine(exchange, tmp_path)
    [placement] = import_finished(session, exchange).placed
    assert (placement.record_start, placement.duration, placement.track_index) == (
        90010, 8, 3)
    [placed] = timeline.items(3)
    assert placed.GetLeftOffset() == 0
    assert placed.pixels_at(90017)[120, 160, 0] == result_pixel(7) >> 8


def test_generator_without_media_pool_item_is_rendered(tmp_path):
    resolve = FakeResolve(rate=RATE)
    timeline = resolve.project.add_timeline("Edit 1")
    item = timeline.place(None, record=90000, duration=3, name="Solid Color",
                          frames=lambda i: np.full((240, 320, 3), 50 + i, np.uint8))
    assert item.GetMediaPoolItem() is None
    sent = send_shot(open_session(resolve), tmp_path / "ex", item, FAST)
    assert sent.shot.export == "render" and "generator" in sent.shot.export_reason


def test_a_failed_export_render_still_restores_the_settings(tmp_path):
    frames = render_frames(ClipSpec(frames=16))
    resolve, timeline, item = compound_shot(frames, render_drop_frames=(90013,))
    project = resolve.project
    before = (project.render_settings(), project.GetRenderPresetList())
    with pytest.raises(HostError, match="produced 7 frames, the shot has 8"):
        send_shot(open_session(resolve), tmp_path / "ex", item, FAST)
    assert (project.render_settings(), project.GetRenderPresetList()) == before
    assert project.GetTimelineCount() == 1 and project.GetCurrentTimeline() is timeline
    assert not (tmp_path / "ex" / "new").exists() or not any(
        (tmp_path / "ex" / "new").iterdir())


def test_media_the_engine_cannot_decode_is_rendered_offline_media_refused(tmp_path):
    resolve = FakeResolve(rate=RATE)
    timeline = resolve.project.add_timeline("Edit 1")
    (tmp_path / "dpx").mkdir()
    (tmp_path / "clip.braw").write_bytes(b"raw")
    cases = {"DPX": str(tmp_path / "dpx" / "plate.[1001-1010].dpx"),
             "BRAW": str(tmp_path / "clip.braw")}
    session = open_session(resolve)
    for n, (name, path) in enumerate(cases.items()):
        mpi = resolve.project.add_virtual_media(name, {
            "File Path": path, "Type": "Video", "FPS": 25.0, "Frames": "10"})
        item = timeline.place(mpi, record=90000 + 20 * n, duration=5)
        shot = read_shot(session, item)
        assert shot.export == "render", name
        assert ("dpx sequences" if name == "DPX" else ".braw") in shot.export_reason
    gone = resolve.project.add_virtual_media("gone", {
        "File Path": str(tmp_path / "nope" / "clip.braw"), "Type": "Video",
        "FPS": 25.0})
    item = timeline.place(gone, record=90100, duration=5)
    with pytest.raises(MediaMissing, match="offline"):  # never render "Media Offline"
        read_shot(session, item)
