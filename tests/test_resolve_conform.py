"""Shots whose source frames the bridge cannot know are refused, never sent with a
guessed range: mixed-rate clips (a 50p clip on a 25p timeline) and retimed clips
(speed changes, freeze frames). Each refusal says why and what to do. Export renders
clean up their temporary render preset where the Resolve version can."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.errors import HostError
from host_bridge.resolve import open_session, read_shot
from host_bridge.resolve.render import DELETE_PRESET_SINCE
from host_bridge.roundtrip import SendOptions, send_items, send_shot

FAST = SendOptions(kind="align-preview", handles=2, track_locally=False)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conform")
    return write_clip(folder / "plate50.mov", render_frames(ClipSpec(frames=24)),
                      Fraction(50))


def timeline_with(plate, *, media_rate=Fraction(25), speed=1, version=(21, 0, 3, 5)):
    resolve = FakeResolve(rate=Fraction(25), version=version)
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(plate, rate=media_rate,
                                    start_timecode="01:00:00:00")
    item = timeline.place(mpi, record=90010, duration=8, left_offset=4, speed=speed)
    return resolve, timeline, item


def test_the_fake_models_what_resolve_reports_for_such_items(plate):
    _, _, mixed = timeline_with(plate, media_rate=Fraction(50))
    # left offset in timeline frames, source frames in media frames (end inclusive):
    # 8 frames at 25 fps show 16 frames of the 50p media
    assert (mixed.GetLeftOffset(), mixed.GetSourceStartFrame(),
            mixed.GetSourceEndFrame()) == (2, 4, 19)
    _, _, fast = timeline_with(plate, speed=2)
    assert (fast.GetLeftOffset(), fast.GetSourceStartFrame(), fast.GetSourceEndFrame(),
            fast.GetRightOffset()) == (4, 4, 20, 4)


def test_a_mixed_rate_clip_is_refused_with_what_to_do(plate, tmp_path):
    resolve, _, item = timeline_with(plate, media_rate=Fraction(50))
    exchange = tmp_path / "exchange"
    with pytest.raises(HostError) as err:
        send_shot(open_session(resolve), exchange, item, FAST)
    message = err.value.message
    assert "'plate50.mov' runs at 50 fps on a 25 fps timeline" in message
    assert "does not guess" in message and "Render in Place" in message
    assert not (exchange / "new").exists() or not any((exchange / "new").iterdir())


@pytest.mark.parametrize("speed, shows", [(2, "16 source frames in 8"),
                                          (Fraction(1, 2), "4 source frames in 8"),
                                          (0, "0 source frames in 8")],
                         ids=["200%", "50%", "freeze"])
def test_a_retimed_clip_is_refused(plate, speed, shows):
    resolve, _, item = timeline_with(plate, speed=speed)
    with pytest.raises(HostError) as err:
        read_shot(open_session(resolve), item, handles=2)
    assert "speed change" in err.value.message and shows in err.value.message
    assert "Render in Place" in err.value.message


def test_a_retime_is_caught_without_the_19_0_2_source_frame_calls(plate):
    resolve, _, item = timeline_with(plate, speed=2, version=(18, 6, 6, 7))
    assert "GetSourceStartFrame" not in dir(item)
    assert item.GetSourceStartFrame() is None  # an older Resolve: a missing call
    with pytest.raises(HostError, match=r"offsets \(4 \+ 8 \+ 4 frames\) do not add up "
                                        r"to the media's 24 frames"):
        read_shot(open_session(resolve), item)


def test_an_unretimed_clip_at_the_timeline_rate_still_goes_out(plate, tmp_path):
    resolve, _, item = timeline_with(plate)
    shot = read_shot(open_session(resolve), item, handles=2)
    assert (shot.source_in, shot.source_out, shot.handle_in, shot.handle_out) == (
        4, 12, 2, 2)
    assert shot.warnings == ()


def test_one_refused_shot_does_not_stop_the_others(plate, tmp_path):
    resolve, timeline, good = timeline_with(plate)
    mpi50 = resolve.project.add_media(plate, rate=Fraction(50))
    fast = timeline.place(mpi50, record=90030, duration=6, left_offset=0, speed=2)
    sent, problems = send_items(open_session(resolve), tmp_path / "exchange",
                                [good, fast], FAST)
    assert [s.shot.item_name for s in sent] == ["plate50.mov"]
    assert sent[0].shot.record_start == 90010
    [problem] = problems
    assert problem.startswith("'plate50.mov' was not sent: ") and "50 fps" in problem


def test_a_retimed_compound_clip_is_rendered_not_refused(tmp_path):
    frames = render_frames(ClipSpec(frames=16))
    resolve = FakeResolve(rate=Fraction(25))
    timeline = resolve.project.add_timeline("Edit 1")
    compound = resolve.project.add_virtual_media(
        "Compound Clip 1", {"Type": "Compound", "File Path": "", "FPS": 50.0,
                            "Frames": "16"}, frames=lambda i: frames[i])
    item = timeline.place(compound, record=90010, duration=6, left_offset=2, speed=2)
    sent = send_shot(open_session(resolve), tmp_path / "exchange", item, FAST)
    # the render bakes the speed change in: record frames, no source range guessed
    assert sent.shot.export == "render"
    assert (sent.shot.source_in, sent.shot.source_out) == (0, 6)


def _compound_export(version):
    frames = render_frames(ClipSpec(frames=16))
    resolve = FakeResolve(rate=Fraction(25), version=version)
    timeline = resolve.project.add_timeline("Edit 1")
    compound = resolve.project.add_virtual_media(
        "Compound Clip 1", {"Type": "Compound", "File Path": "", "FPS": 25.0,
                            "Frames": "16"},
        frames=lambda i: np.asarray(frames[i]))
    item = timeline.place(compound, record=90010, duration=4, left_offset=2)
    return resolve, item


def test_the_temporary_render_preset_is_deleted_from_19_1(tmp_path):
    resolve, item = _compound_export(DELETE_PRESET_SINCE + (0, 1))
    before = resolve.project.GetRenderPresetList()
    sent = send_shot(open_session(resolve), tmp_path / "exchange", item, FAST)
    assert resolve.project.GetRenderPresetList() == before
    assert not any("preset" in w for w in sent.warnings)


def test_before_19_1_the_preset_is_left_and_named_for_the_editor(tmp_path):
    resolve, item = _compound_export((18, 6, 6, 7))
    project = resolve.project
    assert "DeleteRenderPreset" not in dir(project)
    before = project.GetRenderPresetList()
    sent = send_shot(open_session(resolve), tmp_path / "exchange", item, FAST)
    [left] = set(project.GetRenderPresetList()) - set(before)
    assert left.startswith("FaceStitch restore")
    [note] = [w for w in sent.warnings if "preset" in w]
    assert f"delete the preset '{left}' on the Deliver page" in note
    assert "DeleteRenderPreset" not in project._calls_missing  # not even tried
