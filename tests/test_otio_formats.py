"""`facestitch otio` into the formats other editors open: each file is written by its
real OpenTimelineIO adapter, read back by the same adapter, and checked for the same
source ranges (and record positions where the format keeps them)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote, urlparse

import opentimelineio as otio
import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.client import job_status
from fsexchange.documents import Job, Subject, load_document
from fsexchange.errors import HostError
from host_bridge.cli import main as cli
from host_bridge.otio_export import FORMATS, build_timeline, file_url, write_timeline
from host_bridge.resolve import open_session
from host_bridge.roundtrip import SendOptions, send_shot
from test_resolve_roundtrip import run_engine

NTSC = Fraction(24000, 1001)
FAST = SendOptions(kind="align-preview", handles=2, subject=Subject(),
                   track_locally=False)


def _sent_job(root: Path, rate: Fraction, media_tc: str):
    """A done job sent from a timeline at 01:00:00:00: the clip at record +10, left
    offset 3, 8 frames, handles 2."""
    clip = write_clip(root / "A001_C002.mov", render_frames(ClipSpec(frames=16)), rate)
    resolve = FakeResolve(rate=rate)
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(clip, rate=rate, start_timecode=media_tc)
    item = timeline.place(mpi, record=timeline.GetStartFrame() + 10, duration=8,
                          left_offset=3)
    exchange = root / "exchange"
    sent = send_shot(open_session(resolve), exchange, item, FAST)
    run_engine(exchange, root)
    status = job_status(exchange, sent.job_id)
    job = load_document(status.folder / "job.msgpack", Job)
    return exchange, job, build_timeline(job, status.result, status.folder)


@pytest.fixture(scope="module")
def ntsc(tmp_path_factory):
    return _sent_job(tmp_path_factory.mktemp("ntsc"), NTSC, "10:00:00:00")


@pytest.fixture(scope="module")
def pal(tmp_path_factory):
    return _sent_job(tmp_path_factory.mktemp("pal"), Fraction(25), "10:00:00:00")


def ranges(timeline: otio.schema.Timeline) -> list[tuple[int, int]]:
    """(source start frame, frames) of every clip, track by track."""
    return [(c.source_range.start_time.to_frames(), c.source_range.duration.to_frames())
            for c in timeline.find_clips()]


def placed(timeline: otio.schema.Timeline) -> list[tuple[int, int]]:
    return [(c.range_in_parent().start_time.to_frames(),
             c.range_in_parent().duration.to_frames()) for c in timeline.find_clips()]


def url_path(url: str) -> Path:
    parts = urlparse(url)
    assert parts.scheme == "file", url
    return Path(unquote(parts.path))


def test_every_format_names_its_adapter_and_extra():
    installed = set(otio.adapters.available_adapter_names())
    for suffix, fmt in FORMATS.items():
        # make setup installs every adapter (the otio and fcpx extras)
        assert fmt.adapter in installed, (suffix, fmt.adapter)
        assert fmt.extra in ("otio", "fcpx")
    assert file_url("/a b/c#1.png", "localhost") == "file://localhost/a%20b/c%231.png"
    assert file_url("/a/c.png") == "file:///a/c.png"


def test_edl_one_file_per_track_with_timeline_record_timecodes(ntsc, tmp_path):
    _, job, tl = ntsc
    written = write_timeline(tl, tmp_path / "shot.edl")
    assert [p.name for p in written] == ["shot.V1.edl", "shot.V2.edl"]
    reels = []
    for path, _track in zip(written, tl.tracks):
        text = path.read_text()
        [event] = re.findall(r"^001\s+(\S+)\s+V\s+C\s+(\S+) (\S+) (\S+) (\S+)$", text,
                             re.M)
        reel, src_in, src_out, rec_in, rec_out = event
        reels.append(reel)
        # source in the media's timecode (10:00:00:00 + 3), record in the timeline's
        assert (src_in, src_out) == ("10:00:00:03", "10:00:00:11")
        assert (rec_in, rec_out) == ("01:00:00:10", "01:00:00:18")
        back = otio.adapters.read_from_file(str(path), rate=float(NTSC))
        assert ranges(back) == [(864003, 8)] == ranges(tl)[len(reels) - 1:len(reels)]
        [clip] = back.find_clips()
        assert Path(clip.media_reference.target_url).is_file()
    assert reels[0] != reels[1] and reels[1].endswith("FS")  # conform by reel works
    assert "A001_C002_fs.0864001.png" in written[1].read_text()


def test_edl_of_the_layer_alone(ntsc, tmp_path):
    _, _, tl = ntsc
    [path] = write_timeline(tl, tmp_path / "layer.edl", tracks="layer")
    back = otio.adapters.read_from_file(str(path), rate=float(NTSC))
    [clip] = back.find_clips()
    assert clip.name.endswith("FaceStitch") and ranges(back) == [(864003, 8)]


def test_aaf_reads_back_with_the_same_ranges_and_a_timecode_track(ntsc, tmp_path):
    aaf2 = pytest.importorskip("aaf2")
    _, _, tl = ntsc
    [path] = write_timeline(tl, tmp_path / "shot.aaf")
    back = otio.adapters.read_from_file(str(path))
    assert back.global_start_time.to_frames() == 86400
    assert ranges(back) == ranges(tl) == [(864003, 8), (864003, 8)]
    assert placed(back) == placed(tl) == [(10, 8), (10, 8)]
    for clip in back.find_clips():
        assert url_path(clip.media_reference.target_url).is_file()
    with aaf2.open(str(path)) as f:  # Resolve refuses AAFs without one (OTIO #766)
        [comp] = list(f.content.compositionmobs())
        assert any(slot.media_kind == "Timecode" for slot in comp.slots)


def test_fcp7_xml_has_file_urls_and_a_sequence_format(ntsc, tmp_path):
    _, _, tl = ntsc
    [path] = write_timeline(tl, tmp_path / "shot.xml")
    root = ET.parse(path).getroot()
    urls = [e.text for e in root.iter("pathurl")]
    assert len(urls) == 2
    for url in urls:  # the form Premiere writes and relinks
        assert url.startswith("file://localhost/")
        assert url_path(url).is_file()
    fmt = root.find("./project/children/sequence/media/video/format")
    chars = fmt.find("samplecharacteristics")
    assert (chars.findtext("width"), chars.findtext("height")) == ("320", "240")
    back = otio.adapters.read_from_file(str(path))
    assert back.global_start_time.to_frames() == 86400
    assert ranges(back) == ranges(tl)
    assert placed(back) == placed(tl)


def test_fcpx_at_an_integer_rate(pal, tmp_path):
    _, _, tl = pal
    [path] = write_timeline(tl, tmp_path / "shot.fcpxml")
    root = ET.parse(path).getroot()
    srcs = [a.get("src") for a in root.iter("asset")]
    assert len(srcs) == 2 and all(url_path(s).is_file() for s in srcs)
    back = otio.adapters.read_from_file(str(path))
    assert ranges(back) == ranges(tl) == [(900003, 8), (900003, 8)]
    assert placed(back) == placed(tl) == [(10, 8), (10, 8)]


def test_fcpx_refuses_ntsc_rates_in_one_line(ntsc, tmp_path):
    _, _, tl = ntsc
    with pytest.raises(HostError) as err:
        write_timeline(tl, tmp_path / "shot.fcpxml")
    assert "integer frame rates" in err.value.message and "\n" not in err.value.message
    assert not list(tmp_path.iterdir())


def test_sequence_references_go_only_where_the_format_holds_them(ntsc, tmp_path):
    exchange, job, _ = ntsc
    status = job_status(exchange, job.id)
    seq = build_timeline(job, status.result, status.folder, shape="sequence")
    with pytest.raises(HostError, match="image-sequence"):
        write_timeline(seq, tmp_path / "shot.xml")
    write_timeline(seq, tmp_path / "shot.otio")
    both = build_timeline(job, status.result, status.folder, shape="both")
    [xml] = write_timeline(both, tmp_path / "both.xml")  # the active one is external
    assert ranges(otio.adapters.read_from_file(str(xml))) == ranges(both)


def test_adapter_errors_are_one_readable_line(ntsc, tmp_path):
    _, _, tl = ntsc
    broken = tl.deepcopy()
    # an offline layer: the AAF adapter's validator fails over several lines
    broken.tracks[1][-1].media_reference = otio.schema.MissingReference()
    with pytest.raises(HostError) as err:
        write_timeline(broken, tmp_path / "shot.aaf")
    message = err.value.message
    assert message.startswith("the AAF adapter could not write shot.aaf: ")
    assert "\n" not in message and len(message) < 320
    assert not list(tmp_path.iterdir())  # no partial file, no temporary left


def test_a_missing_adapter_says_which_extra_installs_it(ntsc, tmp_path, monkeypatch):
    _, _, tl = ntsc
    names = [n for n in otio.adapters.available_adapter_names() if n != "fcpx_xml"]
    monkeypatch.setattr(otio.adapters, "available_adapter_names", lambda: names)
    with pytest.raises(HostError, match=r"pip install 'facestitch\[fcpx\]'"):
        write_timeline(tl, tmp_path / "shot.fcpxml")


def test_cli_writes_each_format_and_refuses_bad_input_in_one_line(ntsc, tmp_path,
                                                                  capsys):
    exchange, job, _ = ntsc
    base = ["otio", "--exchange", str(exchange), job.id]
    assert cli(base + ["--out", str(tmp_path / "l.edl"), "--tracks", "layer"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "l.edl").is_file()
    assert cli(base + ["--out", str(tmp_path / "shot.mov")]) == 2
    err = capsys.readouterr().err
    assert "use one of .otio" in err and err.count("\n") == 1 and "Traceback" not in err
    # a missing folder is found before the timeline is built (issue 14)
    assert cli(base + ["--out", str(tmp_path / "no" / "such" / "shot.aaf")]) == 2
    err = capsys.readouterr().err
    assert "[io.path]" in err and "such does not exist" in err
    assert err.count("\n") == 1
