"""``facestitch metrics`` on real files (movies, PNG sequences, RGBA results)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clips import ClipSpec, render_frames, write_clip, write_sequence
from fsexchange.grammar import parse_range
from fsexchange.errors import RangeInvalid
from host_bridge.cli import main as cli

N = 8


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics_cli")
    src = render_frames(ClipSpec(frames=N))
    other = render_frames(ClipSpec(frames=N, face="grace_hopper"))
    edited = [other[i] if 3 <= i < 5 else f for i, f in enumerate(src)]
    return {
        "src": write_clip(d / "plate.mp4", src, codec="ffv1"),
        "edited": write_sequence(d / "edited", edited, start=1001),
        "short": write_sequence(d / "short", edited[:5], start=1001),
        "dir": d,
        "frames": src,
    }


def _run(capsys, *argv):
    rc = cli(["metrics", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_on_a_movie_and_a_sequence(media, capsys, tmp_path):
    svg = tmp_path / "plot.svg"
    rc, out, _ = _run(capsys, "--source", media["src"], "--edited", media["edited"],
                      "--json", "--svg", svg)
    assert rc == 0
    d = json.loads(out)
    for key in ("tl_id", "tg_id", "tl_id_raw", "tg_id_raw", "tl_id_source_raw",
                "tg_id_source_raw", "warp_error", "warp_error_source", "frames",
                "frames_without_face"):
        assert key in d, key
    assert d["frames"] == N and d["range"] == [0, N] and d["frames_without_face"] == 0
    assert d["tg_id"] < 0.98 and d["warp_error"] > 10 * d["warp_error_source"]
    assert svg.read_text().startswith("<svg")


@pytest.mark.slow
def test_readable_summary_and_ranges(media, capsys):
    rc, out, _ = _run(capsys, "--source", media["src"], "--edited", media["src"],
                      "--range", "2:6", "--flow", "farneback")
    assert rc == 0
    assert "frames 2..5 (4)" in out and "TL-ID          1.0000" in out
    assert "TG-ID          1.0000" in out and "frames without a face: 0 of 4" in out
    # an edited clip exactly as long as the range is read whole
    rc, out, _ = _run(capsys, "--source", media["src"], "--edited", media["short"],
                      "--range", "3:8", "--json")
    assert rc == 0 and json.loads(out)["frames"] == 5


@pytest.mark.slow
def test_rgba_result_sequence_is_composited(media, capsys):
    from engine.media.video import write_rgba

    folder = media["dir"] / "rgba"
    folder.mkdir()
    for i, f in enumerate(media["frames"]):
        rgba = np.zeros(f.shape[:2] + (4,), np.uint16)
        rgba[:40, :40] = (65535, 0, 0, 65535)  # an opaque red corner, clear elsewhere
        write_rgba(folder / f"facestitch.{1001 + i:07d}.png", rgba)
    rc, out, _ = _run(capsys, "--source", media["src"], "--edited", folder, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["tl_id"] == pytest.approx(1.0)  # the face is the plate's
    assert d["warp_error"] > d["warp_error_source"]  # the static red block is not


def test_mismatches_fail_with_one_clear_line(media, capsys, tmp_path):
    rc, _, err = _run(capsys, "--source", media["src"], "--edited", media["short"])
    assert rc == 2 and "[metrics.length_mismatch]" in err and "has 5 frames" in err
    small = write_sequence(tmp_path / "small", [f[:200, :300] for f in media["frames"]])
    rc, _, err = _run(capsys, "--source", media["src"], "--edited", small)
    assert rc == 2 and "[metrics.size_mismatch]" in err and "300x200" in err
    rc, _, err = _run(capsys, "--source", media["src"], "--edited", media["src"],
                      "--range", "4:20")
    assert rc == 2 and "[range.out_of_bounds]" in err
    rc, _, err = _run(capsys, "--source", tmp_path / "nope.mov", "--edited", small)
    assert rc == 2 and "[media.missing]" in err


def test_parse_range():
    assert parse_range("3:10") == (3, 10)
    for bad in ("3", "a:b", "5:5", "-1:4"):
        with pytest.raises(RangeInvalid):
            parse_range(bad)
