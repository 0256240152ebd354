"""``facestitch preview`` end to end: frame numbers, outputs, the input left alone."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import pytest

from clips import ClipSpec, read_stamp, render_frames, write_clip, write_sequence
from engine.media import video
from fsexchange import media
from fsexchange.documents import FaceTrack, load_document
from host_bridge.cli import main as cli


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("rate,tc,args,first", [
    (Fraction(24000, 1001), "01:00:00:00", [], 86403),  # numbered by source timecode
    (Fraction(25), "10:00:00:00", ["--start-number", "1001"], 1001),
])
def test_preview_command(tmp_path, capsys, rate, tc, args, first):
    spec = ClipSpec(frames=16, second_face=True, drift=(10.0, 5.0), rotate=6.0,
                    stamp=True)
    clip = write_clip(tmp_path / "shot.mov", render_frames(spec), rate,
                      start_timecode=tc)
    before = _sha(clip)
    out = tmp_path / "preview"
    rc = cli(["preview", str(clip), "--out", str(out), "--range", "3:15", "--face", "1",
              "--resolution", "64", "--backend", "dlib", *args])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "preview.mp4") in printed and "contact_sheet.png" in printed
    frames = sorted((out / "frames").iterdir())
    numbers = [int(p.name.split(".")[1]) for p in frames]
    assert numbers == list(range(first, first + 12))
    for n, path in zip(range(3, 15), frames):
        rgba = video.read_image(path)
        # the stamp corner lies outside the alpha: it is the source frame, exactly
        assert rgba[0, 0, 3] == 0 and read_stamp(rgba) == n
        assert (rgba[..., 3] > 0).any()
    info = media.probe(out / "preview.mp4")
    assert info.frame_count == 12 and info.rate == rate
    assert [read_stamp(img) for _, img in video.read_frames(out / "preview.mp4")] == \
        list(range(3, 15))
    assert (out / "contact_sheet.png").stat().st_size > 1000
    track = load_document(out / "facetrack.msgpack", FaceTrack)
    assert [f.frame for f in track.frames] == list(range(3, 15))
    assert track.subject["index"] == 1 and track.subject["faces_at_first"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "facetrack.msgpack", "frames", "network_view.png",
        "preview.mp4", "report.html"]
    assert "report.html" in printed
    assert _sha(clip) == before


def test_preview_refuses_to_write_into_the_source(tmp_path, capsys):
    frames = render_frames(ClipSpec(frames=3, size=(128, 96)))
    seq = write_sequence(tmp_path / "plate", frames)
    listing = sorted(p.name for p in seq.iterdir())
    rc = cli(["preview", str(seq), "--out", str(seq / "out")])
    assert rc == 2
    assert "never written" in capsys.readouterr().err
    assert sorted(p.name for p in seq.iterdir()) == listing


def test_preview_reports_bad_ranges_and_missing_faces(tmp_path, capsys):
    hidden = render_frames(ClipSpec(frames=4, hide=(0, 4)))
    clip = write_clip(tmp_path / "c.mp4", hidden, Fraction(25))
    assert cli(["preview", str(clip), "--out", str(tmp_path / "o"), "--range",
                "2:9"]) == 2
    assert "range.out_of_bounds" in capsys.readouterr().err
    assert cli(["preview", str(clip), "--out", str(tmp_path / "o"),
                "--resolution", "64", "--backend", "dlib"]) == 2
    assert "face.not_found" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]
