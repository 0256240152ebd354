"""engine.media.video: frame-accurate reading, sequences, writers, naming,
media errors."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clips import ClipSpec, read_stamp, render_frames, write_clip
from engine.media import video
from fsexchange import media
from fsexchange.documents import FrameRange, Job, OutputSpec, Source
from fsexchange.errors import (
    MediaCorrupt,
    MediaMissing,
    MediaUnsupported,
    RangeInvalid,
    RangeOutOfBounds,
)
from fsexchange.timecode import frames_to_timecode, timecode_to_frames

RANGES = [(0, 1), (5, 9), (11, 30), (29, 30), (17, 18)]


@pytest.fixture(scope="module")
def frames():
    return render_frames(ClipSpec(frames=30, stamp=True))


@pytest.fixture(scope="module")
def clips(tmp_path_factory, frames):
    d = tmp_path_factory.mktemp("clips")
    return {
        # lossless, 1 ms Matroska time base (23.976 is not exact there)
        "ffv1": write_clip(d / "a.mkv", frames, Fraction(24000, 1001), codec="ffv1",
                           start_timecode="01:00:00:00"),
        # H.264 with B-frames in MP4: pts != dts, seeks land on keyframes
        "h264": write_clip(d / "b.mp4", frames, Fraction(25),
                           start_timecode="10:00:10:05"),
        # QuickTime with a tmcd track
        "mov": write_clip(d / "c.mov", frames, Fraction(24000, 1001),
                          start_timecode="00:59:59:12"),
    }


@pytest.mark.parametrize("kind", ["ffv1", "h264", "mov"])
def test_ranges_match_a_full_decode(clips, frames, kind):
    full = dict(video.read_frames(clips[kind]))
    assert sorted(full) == list(range(30))
    assert [read_stamp(full[i]) for i in range(30)] == list(range(30))
    if kind == "ffv1":
        assert all(np.array_equal(full[i], frames[i]) for i in range(30))
    for start, end in RANGES:
        got = list(video.read_frames(clips[kind], start, end))
        assert [i for i, _ in got] == list(range(start, end))
        for i, img in got:
            assert np.array_equal(img, full[i]), (kind, start, end, i)


@pytest.mark.parametrize("kind,rate,tc", [
    ("ffv1", Fraction(24000, 1001), "01:00:00:00"),
    ("h264", Fraction(25), "10:00:10:05"),
    ("mov", Fraction(24000, 1001), "00:59:59:12")])
def test_timecodes_and_output_numbers_round_trip(clips, kind, rate, tc):
    info = media.probe(clips[kind])
    assert (info.rate, info.start_timecode, info.frame_count) == (rate, tc, 30)
    job = Job(id="j", source=Source(str(clips[kind])),
              range=FrameRange(4, 20, info.rate, info.start_timecode))
    for index in range(4, 20):
        name = video.output_name(job, index, "png")
        number = int(name.split(".")[1])
        # output number -> timecode -> media index -> the decoded frame's stamp
        frame_tc = frames_to_timecode(number, rate)
        assert frame_tc == media.index_to_timecode(info, index)
        back = media.timecode_to_index(info, frame_tc)
        assert back == index
        (i, img), = video.read_frames(clips[kind], back, back + 1)
        assert read_stamp(img) == index
    start_number = Job(id="j", source=Source("x"), range=FrameRange(4, 20, rate, tc),
                       output=OutputSpec(start_number=1001, name="shot"))
    assert video.output_name(start_number, 4, ".exr") == "shot.0001001.exr"
    assert video.output_name(start_number, 19, "exr") == "shot.0001016.exr"
    assert timecode_to_frames(tc, rate) + 4 == int(
        video.output_name(job, 4, "png").split(".")[1])


def test_timecode_before_the_media_is_out_of_bounds(clips):
    info = media.probe(clips["ffv1"])
    with pytest.raises(RangeOutOfBounds):
        media.timecode_to_index(info, "00:59:59:23")


def test_media_errors_have_their_own_codes(tmp_path, clips):
    data = Path(clips["h264"]).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.mov").write_bytes(np.random.default_rng(0).bytes(20000))
    for name in ("truncated.mp4", "junk.mov"):
        with pytest.raises(MediaCorrupt) as exc:
            list(video.read_frames(tmp_path / name))
        assert exc.value.code == "media.corrupt"
    with pytest.raises(MediaMissing) as exc:
        media.probe(tmp_path / "nothing.mov")
    assert exc.value.code == "media.missing"
    with pytest.raises(RangeInvalid) as exc:
        video.read_frames(clips["h264"], 7, 7)
    assert exc.value.code == "range.invalid"
    with pytest.raises(RangeOutOfBounds) as exc:
        video.read_frames(clips["h264"], 20, 31)
    assert exc.value.code == "range.out_of_bounds"
    assert "30 frames" in exc.value.message


def _write_raw(path: Path, images, rate, *, codec="libx264", pix_fmt="yuv444p",
               pts=None, rotation=None, time_base=None, options=None):
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate)
        s.height, s.width = images[0].shape[:2]
        s.pix_fmt = pix_fmt
        s.options = options or {}
        if time_base:
            s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, img in enumerate(images):
            fmt = "rgb48le" if img.dtype == np.uint16 else "rgb24"
            f = av.VideoFrame.from_ndarray(img, format=fmt)
            if pts is not None:
                f.pts, f.time_base = pts[i], time_base
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_variable_frame_rate_is_refused(tmp_path):
    imgs = [np.zeros((48, 64, 3), np.uint8)] * 12
    pts = [0, 40, 80, 120, 160, 240, 280, 360, 400, 440, 520, 560]  # ms, 25 fps nominal
    path = _write_raw(tmp_path / "vfr.mkv", imgs, 25, codec="ffv1", pix_fmt="bgr0",
                      pts=pts, time_base=Fraction(1, 1000))
    with pytest.raises(MediaUnsupported) as exc:
        media.probe(path)
    assert exc.value.code == "media.unsupported"
    assert "variable frame rate" in exc.value.message and "conform" in exc.value.message


def test_rotation_metadata_is_applied_and_odd_sizes_work(tmp_path):
    img = np.zeros((47, 65, 3), np.uint8)
    img[:8, :8] = 255  # a marker in the stored top-left corner
    path = _write_raw(tmp_path / "rot.mp4", [img] * 3, 25, rotation=90)
    info = media.probe(path)
    assert (info.width, info.height) == (47, 65)
    (_, out), = video.read_frames(path, 1, 2)
    assert out.shape == (65, 47, 3)
    ys, xs = np.nonzero(out[:, :, 0] > 128)
    # 90° counter-clockwise for display: the stored top-left lands bottom-left
    assert ys.min() > 50 and xs.max() < 12


def test_ten_bit_source_decodes_to_sixteen_bits(tmp_path):
    ramp = (np.linspace(0, 65535, 256)[None, :, None] * np.ones((64, 1, 3))).astype(
        np.uint16)
    path = _write_raw(tmp_path / "ten.mkv", [ramp] * 2, 25, pix_fmt="yuv444p10le",
                      options={"qp": "0"})  # lossless 10-bit H.264
    info = media.probe(path)
    assert info.bit_depth == 10
    (_, img16), = video.read_frames(path, 0, 1, depth=16)
    (_, img8), = video.read_frames(path, 0, 1)
    assert img16.dtype == np.uint16 and img8.dtype == np.uint8
    row = img16[32, :, 1].astype(np.int64)
    # 10-bit precision survives: more distinct levels than 8 bits could carry
    assert len(np.unique(row)) > 200 and np.any(row % 257 != 0)
    assert np.abs(row - ramp[32, :, 1]).max() < 65535 * 4 / 1023


def test_pam16_sequence_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    seq = tmp_path / "seq"
    seq.mkdir()
    truth = [rng.integers(0, 65536, (21, 33, 4), dtype=np.uint16) for _ in range(5)]
    for i, img in enumerate(truth):
        video.write_rgba(seq / f"plate.{1001 + i:07d}.pam", img)
    (seq / "notes.txt").write_text("sidecars are ignored")
    info = media.probe(seq, Fraction(25))
    assert (info.kind, info.frame_count, info.first_number, info.rate) == (
        "sequence", 5, 1001, Fraction(25))
    assert info.bit_depth == 16 and info.has_alpha
    got = list(video.read_frames(seq, 1, 4, alpha=True, depth=16))
    assert [i for i, _ in got] == [1, 2, 3]
    for i, img in got:
        assert np.array_equal(img, truth[i])
    header = (b"P7\nWIDTH 33\nHEIGHT 21\nDEPTH 4\nMAXVAL 65535\n"
              b"TUPLTYPE RGB_ALPHA\nENDHDR\n")
    data = (seq / "plate.0001001.pam").read_bytes()
    assert data.startswith(header) and len(data) == len(header) + 21 * 33 * 4 * 2
    first_sample = np.array(truth[0][0, 0, :1], ">u2").tobytes()  # big-endian
    assert data[len(header):len(header) + 2] == first_sample


def test_sequence_gaps_and_mixed_names_are_refused(tmp_path):
    seq = tmp_path / "s"
    seq.mkdir()
    img = np.zeros((4, 4, 3), np.uint8)
    for n in (1, 2, 4):
        video.write_rgba(seq / f"a.{n:04d}.png", img)
    with pytest.raises(MediaUnsupported, match="gaps.*3"):
        media.probe(seq)
    video.write_rgba(seq / "a.0003.png", img)
    assert media.probe(seq).frame_count == 4
    video.write_rgba(seq / "b.0005.png", img)
    with pytest.raises(MediaUnsupported, match="mixed"):
        media.probe(seq)


def test_png_sequence_numeric_order(tmp_path):
    seq = tmp_path / "s"
    seq.mkdir()
    frames = render_frames(ClipSpec(frames=12, stamp=True, size=(128, 96)))
    for i, f in enumerate(frames):  # unpadded numbers: 8, 9, 10 sort numerically
        import cv2

        cv2.imwrite(str(seq / f"f{8 + i}.png"), f[:, :, ::-1])
    got = list(video.read_frames(seq))
    assert [read_stamp(img) for _, img in got] == list(range(12))


def test_writers(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 65536, (19, 23, 4), dtype=np.uint16)
    video.write_rgba(tmp_path / "x.png", rgba)
    assert np.array_equal(video.read_image(tmp_path / "x.png"), rgba)
    video.write_rgba(tmp_path / "x.pam", rgba)
    assert np.array_equal(video.read_image(tmp_path / "x.pam"), rgba)
    video.write_rgba(tmp_path / "x.exr", rgba)
    exr = video.read_image(tmp_path / "x.exr")  # float, premultiplied
    straight = rgba.astype(np.float64) / 65535
    alpha = straight[..., 3:]
    expect = np.concatenate([straight[..., :3] * alpha, alpha], 2)
    assert exr.dtype == np.float32 and np.abs(exr - expect).max() < 1e-3
    # ProRes 4444 keeps alpha (lossy). Mattes are smooth, so test a smooth matte:
    # white noise is the codec's worst case and made this check depend on encoder
    # rounding details.
    yy, xx = np.mgrid[0:19, 0:23]
    matte = np.zeros((19, 23, 4), np.uint16)
    matte[..., 0] = xx * 65535 // 22
    matte[..., 1] = yy * 65535 // 18
    matte[..., 2] = 30000
    matte[..., 3] = (xx + yy) * 65535 // 40
    with video.MovieWriter(tmp_path / "m.mov", Fraction(24), (23, 19),
                           codec="prores_ks", alpha=True) as mw:
        for _ in range(3):
            mw.write(matte)
    info = media.probe(tmp_path / "m.mov")
    assert info.has_alpha and info.frame_count == 3
    (_, back), = video.read_frames(tmp_path / "m.mov", 2, 3, alpha=True, depth=16)
    err = np.abs(back.astype(int) - matte)
    assert err[..., 3].max() < 256  # within 1/256 of full range (measured: 75)
    assert err[..., :3].max() < 512  # measured: 133
    # H.264 preview of an odd size, at the source rate
    with video.MovieWriter(tmp_path / "p.mp4", Fraction(24000, 1001), (23, 19)) as mw:
        for i in range(4):
            mw.write(np.full((19, 23, 3), 40 * i, np.uint8))
    info = media.probe(tmp_path / "p.mp4")
    assert info.frame_count == 4 and info.rate == Fraction(24000, 1001)
    assert not list(tmp_path.glob(".*"))  # temporary files were published or removed


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_streaming_memory_is_flat(tmp_path):
    frames = render_frames(ClipSpec(frames=4, size=(640, 480)))
    path = tmp_path / "long.mp4"
    with video.MovieWriter(path, Fraction(25), (640, 480)) as mw:
        for i in range(240):
            mw.write(frames[i % 4])
    rss = {}
    for index, _img in video.read_frames(path, depth=16):  # 1.8 MB per frame
        if index in (20, 239):
            rss[index] = _rss()
    grew = (rss[239] - rss[20]) / 1e6
    print(f"RSS growth from frame 20 to 239 (220 frames, 405 MB decoded): "
          f"{grew:.1f} MB")
    assert grew < 40
