"""The colour round trip on real-face clips: Rec.709, and the same clip encoded to
ARRI LogC3, S-Log3 and Rec.2100 PQ with OpenColorIO in the test (the inverse of
the view that renders it as the Rec.709 clip: footage whose display rendering is
that clip), as 10-bit ProRes 422 HQ like a camera or a conform writes it.

Each goes through align-preview: pixels outside the alpha are the source's own bit
for bit; the unedited face comes back within the stated tolerance at the source's
bit depth; what the networks see of the log and HDR versions is, in statistics,
the Rec.709 version (and the log code values themselves are not). Written movies
are decoded by their tags the way editors' tools do and compared with the PNG16
output of the same job. An EXR source keeps values above 1; EXR output carries its
attributes. A tiny-profile stitch job runs on the LogC3 clip. Tolerances: see
docs/colour.md "Tolerances" (the figures printed here are the ones listed there).
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clips import ClipSpec, render_frames
from engine.media import video
from engine.media.composite import composite_over
from engine.stages.align import AlignStage
from engine.stages.contract import StageContext
from engine.stages.paste import PasteStage
from engine.stages.track import TrackStage
from fsexchange import media
from fsexchange.colour import ColourTags
from fsexchange.documents import FrameRange, Job, OutputSpec, Source
from fsexchange.options import PipelineConfig

pytestmark = pytest.mark.slow

RATE = Fraction(25)
TC = "01:00:00:00"
N = 6
SIZE = (320, 240)
BT709 = ColourTags("bt709", "bt709", "bt709", "tv")
PQ_TAGS = ColourTags("bt2020nc", "bt2020", "smpte2084", "tv")
#: name -> (OCIO colour space of the built-in config, the file's tags, the job's
#: options.colour.source; "" = detected from the tags)
ENCODINGS = {
    "rec709": (None, BT709, ""),
    "logc3": ("ARRI LogC3 (EI800)", BT709, "ARRI LogC3"),  # cameras tag log as 709
    "slog3": ("S-Log3 S-Gamut3.Cine", BT709, "S-Log3"),
    "pq": ("Rec.2100-PQ - Display", PQ_TAGS, ""),
}
#: Stated tolerances (docs/colour.md "Tolerances").
NETWORK_STATS = 2.0  # |mean|, |std| of the networks' crops vs Rec.709's (8-bit)
IDENTITY_EXTRA = 1.5  # extra mean error inside alpha over Rec.709's (10-bit codes)


def _encode(rgb8: np.ndarray, space: str | None) -> np.ndarray:
    """Rec.709 display code values -> ``space`` (float), with OCIO directly: the
    inverse of the built-in config's Rec.709 SDR view; for PQ, then its own HDR
    view forward."""
    import PyOpenColorIO as OCIO

    x = np.ascontiguousarray(rgb8.astype(np.float32) / 255.0)
    if space is None:
        return x
    cfg = OCIO.Config.CreateFromBuiltinConfig(
        "studio-config-v5.0.0_aces-v2.1_ocio-v2.6")
    display = "Rec.1886 Rec.709 - Display"
    sdr = cfg.getDefaultView(display)
    if space.endswith("- Display"):  # HDR: scene light through its own view
        t = OCIO.GroupTransform([
            OCIO.DisplayViewTransform(src="ACES2065-1", display=display, view=sdr,
                                      direction=OCIO.TRANSFORM_DIR_INVERSE),
            OCIO.DisplayViewTransform(src="ACES2065-1", display=space,
                                      view=cfg.getDefaultView(space))])
        proc = cfg.getProcessor(t)
    else:
        proc = cfg.getProcessor(OCIO.DisplayViewTransform(src=space, display=display,
                                                          view=sdr),
                                OCIO.TRANSFORM_DIR_INVERSE)
    proc.getDefaultCPUProcessor().applyRGB(x)
    return x


@pytest.fixture(scope="module")
def frames():
    return render_frames(ClipSpec(frames=N, size=SIZE, face_scale=0.6))


@pytest.fixture(scope="module")
def clips(tmp_path_factory, frames):
    d = tmp_path_factory.mktemp("colourclips")
    out = {}
    for name, (space, tags, _) in ENCODINGS.items():
        path = d / f"{name}.mov"
        with video.MovieWriter(path, RATE, SIZE, codec="prores_ks", colour=tags) as mw:
            for f in frames:
                mw.write(video.to_depth(np.clip(_encode(f, space), 0, 1), 16))
        out[name] = path
    return out


def _run(job_dir: Path, clip: Path, name: str, output: OutputSpec = OutputSpec(),
         n: int = N):
    job_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, job_dir / clip.name)
    colour = ENCODINGS[name][2]
    options = {"align": {"resolution": 128}, "track": {"backend": "dlib"},
               "metrics": {"enabled": False}}
    if colour:
        options["colour"] = {"source": colour}
    job = Job(id=name, kind="align-preview", source=Source(clip.name),
              range=FrameRange(0, n, RATE, TC), options=options, output=output)
    ctx = StageContext(job=job, job_dir=job_dir,
                       config=PipelineConfig.from_options(options))
    facts = {s.name: s.run(ctx) for s in (TrackStage(), AlignStage(), PasteStage())}
    return job, ctx, facts


@pytest.fixture(scope="module")
def previews(tmp_path_factory, clips):
    d = tmp_path_factory.mktemp("colourjobs")
    return {name: _run(d / name, clips[name], name) for name in ENCODINGS}


def test_clip_tags_read_back(clips):
    for name, (_, tags, _) in ENCODINGS.items():
        info = media.probe(clips[name])
        assert (info.colour.matrix, info.colour.primaries, info.colour.transfer,
                info.colour.range) == (tags.matrix, tags.primaries, tags.transfer,
                                       tags.range), name
        assert info.bit_depth == 10


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_outside_alpha_bit_exact_inside_within_tolerance(previews, clips, name):
    job, ctx, facts = previews[name]
    src = dict(video.read_frames(clips[name], depth=16))
    errs = []
    for f in facts["paste"]["frames"]:
        rgba = video.read_image(ctx.job_dir / f["path"])
        off = rgba[..., 3] == 0
        np.testing.assert_array_equal(rgba[off, :3], src[f["frame"]][off])
        on = rgba[..., 3] == 65535  # fully inside: the layer alone is seen
        if f["edited"]:
            assert on.sum() > 500
            # 10-bit code values (the source's depth)
            errs.append(np.abs(rgba[on, :3].astype(float) - src[f["frame"]][on]
                               ) / 64.0)
    err = np.concatenate(errs)
    mean, p99 = float(err.mean()), float(np.percentile(err, 99))
    print(f"\n{name}: identity paste inside alpha, |layer - source| in 10-bit codes:"
          f" mean {mean:.2f}, p99 {p99:.1f}")
    previews[name][2]["_identity"] = (mean, p99)
    # resampling (the bilinear warp to a 128 px crop and back, at 8 bits)
    # dominates: the Rec.709 clip, with no colour conversion, shows ~13 codes
    assert mean < 20.0 and p99 < 120.0
    if name != "rec709" and "_identity" in previews["rec709"][2]:
        base = previews["rec709"][2]["_identity"][0]
        assert mean < base + IDENTITY_EXTRA, (mean, base)
    assert any("network_view" in k for k in facts["paste"]["outputs"])


def _crop_stats(ctx) -> np.ndarray:
    clip = ctx.files.align.clip()
    px = np.concatenate([clip.crop(f)[clip.mask(f)] for f in clip.frames])
    return np.concatenate([px.mean(0), px.std(0)]).astype(float)  # [6], 8-bit


@pytest.mark.parametrize("name", ["logc3", "slog3", "pq"])
def test_networks_see_the_rec709_picture(previews, clips, name, frames):
    base = _crop_stats(previews["rec709"][1])
    got = _crop_stats(previews[name][1])
    dist = float(np.abs(got - base).max())
    # what the networks would see without the view transform: the code values
    raw = np.concatenate([np.clip(_encode(f, ENCODINGS[name][0]), 0, 1).reshape(
        -1, 3) for f in frames]) * 255
    ref = np.concatenate([f.reshape(-1, 3) for f in frames]).astype(float)
    naive = float(np.abs(np.concatenate([raw.mean(0) - ref.mean(0),
                                         raw.std(0) - ref.std(0)])).max())
    print(f"\n{name}: network crops vs Rec.709's, worst |mean|/|std| difference "
          f"{dist:.2f} levels (the code values as they are: {naive:.1f})")
    assert dist <= NETWORK_STATS
    assert naive > 5 * NETWORK_STATS  # the test would see a missing conversion
    assert previews[name][2]["align"]["colour"]["kind"] in ("scene", "hdr")


def test_pq_is_detected_from_its_tags(previews):
    assert previews["pq"][2]["align"]["colour"]["source"] == "Rec.2100-PQ - Display"
    assert previews["rec709"][2]["align"]["colour"]["kind"] == "identity"


def _decode_by_tags(path: Path, matrix: str | None = None) -> list[np.ndarray]:
    """Decode a movie the way editors' tools do: by its tags, Rec.709 video range
    where it has none, with accurate rounding (swscale's fast default alone shifts
    8-bit 4:2:0 by 1.5 levels), at the stream's depth; RGB(A) float in 8-bit code
    values. ``matrix`` overrides the tag (to show what a wrong one does)."""
    from av.video.reformatter import Interpolation as Interp

    flags = (Interp.BICUBIC | Interp.ACCURATE_RND | Interp.FULL_CHR_H_INT
             | Interp.FULL_CHR_H_INP)
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        matrix = matrix or {1: "itu709", 6: "itu601", 5: "itu601", 9: "bt2020"}.get(
            int(cc.colorspace), "itu709")
        rng = "JPEG" if int(cc.color_range) == 2 else "MPEG"
        for fr in c.decode(s):
            alpha = any(x.is_alpha for x in fr.format.components)
            deep = max(x.bits for x in fr.format.components) > 8
            fmt = ("rgba64le" if alpha else "rgb48le") if deep else (
                "rgba" if alpha else "rgb24")
            arr = fr.to_ndarray(format=fmt, src_colorspace=matrix,
                                src_color_range=rng, interpolation=flags)
            out.append(arr.astype(np.float64) / (257 if deep else 1))
    return out


@pytest.fixture(scope="module")
def hd_job(tmp_path_factory, frames):
    """An untagged 8-bit H.264 HD clip (editors decode it as Rec.709) through
    align-preview twice: PNG16 frames, and ProRes 4444 plus the H.264 preview."""
    from clips import write_clip

    d = tmp_path_factory.mktemp("hd")
    hd = render_frames(ClipSpec(frames=3, size=(1280, 720), face_scale=1.6))
    clip = write_clip(d / "hd.mp4", hd, RATE)
    assert media.probe(clip).colour.matrix == ""  # untagged
    png = _run(d / "png", clip, "rec709", n=3)
    mov = _run(d / "mov", clip, "rec709", OutputSpec(format="prores4444"), n=3)
    return clip, png, mov


def test_prores_and_preview_match_png16_when_decoded_by_their_tags(hd_job):
    clip, (_, pctx, pfacts), (_, mctx, mfacts) = hd_job
    movie = mctx.job_dir / mfacts["paste"]["outputs"]["movie"]
    preview = mctx.job_dir / mfacts["paste"]["outputs"]["preview"]
    for path in (movie, preview):  # HD without tags: Rec.709, tagged so
        c = media.probe(path).colour
        assert (c.matrix, c.primaries, c.transfer, c.range) == (
            "bt709", "bt709", "bt709", "tv"), (path.name, c)
    pngs = [video.read_image(pctx.job_dir / f["path"]).astype(np.float64) / 257
            for f in pfacts["paste"]["frames"]]
    src = [f.astype(np.float64) for _, f in video.read_frames(clip)]
    face = [p[..., 3] > 0 for p in pngs]
    # ProRes 4444: every pixel, and the face
    got = _decode_by_tags(movie)
    d = np.concatenate([np.abs(g - p).reshape(-1) for g, p in zip(got, pngs)])
    df = np.concatenate([np.abs(g - p)[m].reshape(-1)
                         for g, p, m in zip(got, pngs, face)])
    print(f"\nProRes 4444 vs PNG16: mean {d.mean():.3f} p99 "
          f"{np.percentile(d, 99):.2f}; face mean {df.mean():.3f} p99 "
          f"{np.percentile(df, 99):.2f} (8-bit code values)")
    assert d.mean() <= 0.5 and np.percentile(d, 99) <= 2
    assert df.mean() <= 0.5 and np.percentile(df, 99) <= 2
    # the old encoding (BT.601 matrix) decoded as Rec.709 would fail this test
    old = []
    for p in pngs:
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(
            (p * 257).round().astype(np.uint16)), format="rgba64le")
        y = f.reformat(format="yuva444p10le", dst_colorspace="itu601")
        old.append(y.to_ndarray(format="rgba64le", src_colorspace="itu709",
                                src_color_range="MPEG").astype(np.float64) / 257)
    bad = np.concatenate([np.abs(o - p)[m].reshape(-1)
                          for o, p, m in zip(old, pngs, face)])
    assert bad.mean() > 0.5 or np.percentile(bad, 99) > 2
    # H.264 preview (8-bit 4:2:0, crf 18): its compression error alone exceeds the
    # per-pixel figures (docs/colour.md "Tolerances"), so the colour is judged as
    # the per-channel signed mean over the face, which a matrix or range error
    # moves and compression noise does not
    import cv2

    comp = [composite_over(p.astype(np.float32) / 255, s.astype(np.float32) / 255
                           ).astype(np.float64) * 255 for p, s in zip(pngs, src)]

    def measure(got):
        bias = np.abs(np.mean([(g - c)[m].mean(0)
                               for g, c, m in zip(got, comp, face)], axis=0)).max()
        px = np.concatenate([np.abs(g - c)[m].reshape(-1)
                             for g, c, m in zip(got, comp, face)])
        blocks = np.concatenate([np.abs(cv2.blur(g.astype(np.float32), (16, 16))
                                        - cv2.blur(c.astype(np.float32), (16, 16))
                                        )[m].reshape(-1)
                                 for g, c, m in zip(got, comp, face)])
        return bias, px, blocks

    bias, px, blocks = measure(_decode_by_tags(preview))
    print(f"H.264 preview vs composited PNG16 in the face: colour bias "
          f"{bias:.3f}; pixels mean {px.mean():.2f} p99 {np.percentile(px, 99):.1f}; "
          f"16x16 blocks mean {blocks.mean():.3f} p99 {np.percentile(blocks, 99):.2f}")
    assert bias <= 0.5 and blocks.mean() <= 1.0
    wrong, _, _ = measure(_decode_by_tags(preview, matrix="itu601"))
    assert wrong > 1.0  # what a BT.601 / BT.709 mix-up looks like here


def test_ten_bit_source_keeps_its_depth(previews, tmp_path, clips):
    _, ctx, _ = previews["logc3"]
    preview = ctx.job_dir / "output" / "preview.mp4"
    info = media.probe(preview)
    assert info.bit_depth == 10  # yuv420p10le
    assert (info.colour.matrix, info.colour.transfer) == ("bt709", "bt709")
    job, ctx2, facts = _run(tmp_path / "pq4444", clips["pq"], "pq",
                            OutputSpec(format="prores4444", preview=False))
    movie = media.probe(ctx2.job_dir / facts["paste"]["outputs"]["movie"])
    assert (movie.colour.matrix, movie.colour.primaries, movie.colour.transfer,
            movie.colour.range) == ("bt2020nc", "bt2020", "smpte2084", "tv")
    assert movie.has_alpha and movie.bit_depth >= 10


def test_exr_source_keeps_values_above_one(tmp_path, frames):
    """A scene-linear ACEScg EXR sequence, exposed so the face goes above 1:
    pass-through keeps those values; EXR output carries chromaticities, frame rate
    and timecode."""
    import OpenEXR

    from engine.media.colour import CHROMATICITIES

    seq = tmp_path / "plate"
    seq.mkdir()
    ap1 = CHROMATICITIES["ACEScg"]
    for i, f in enumerate(frames):
        lin = (f.astype(np.float32) / 255) ** 2.4 * 4.0  # bright: up to 4.0
        rgba = np.concatenate([lin, np.ones(lin.shape[:2] + (1,), np.float32)], 2)
        video.write_rgba(seq / f"plate.{1001 + i:07d}.exr", rgba,
                         attributes=video.exr_attributes(chromaticities=ap1))
    info = media.probe(seq)
    assert info.colour.transfer == "linear" and info.colour.chromaticities
    src = dict(video.read_frames(seq, depth=32))
    assert max(float(s.max()) for s in src.values()) > 3.0  # not clipped on read
    d = tmp_path / "job"
    d.mkdir()
    shutil.copytree(seq, d / "plate")
    options = {"align": {"resolution": 128}, "track": {"backend": "dlib"},
               "metrics": {"enabled": False}}
    job = Job(id="exr", kind="align-preview", source=Source("plate", "sequence"),
              range=FrameRange(0, N, RATE, TC), options=options,
              output=OutputSpec(format="exr"))
    ctx = StageContext(job=job, job_dir=d, config=PipelineConfig.from_options(options))
    facts = {s.name: s.run(ctx) for s in (TrackStage(), AlignStage(), PasteStage())}
    assert facts["align"]["colour"]["source"] == "ACEScg"
    worst, above = 0.0, 0
    for f in facts["paste"]["frames"]:
        path = d / f["path"]
        exr = video.read_image(path)
        with OpenEXR.File(str(path)) as fh:
            h = fh.header()
            np.testing.assert_allclose(h["chromaticities"], ap1, atol=1e-6)
            assert h["framesPerSecond"] == RATE
            assert h["timeCode"].frame == f["frame"]
        full = exr[..., 3] == 1.0
        s = src[f["frame"]][..., :3]
        if f["edited"]:
            # fully inside: the unedited face, in the source's own linear values
            rel = np.abs(exr[full, :3] - s[full]) / np.maximum(s[full], 0.05)
            worst = max(worst, float(np.median(rel)))
            above += int((exr[full, :3] > 1.0).sum())
    print(f"\nEXR identity paste: median relative error {worst:.3f}; "
          f"{above} values above 1 inside the face")
    assert above > 1000 and worst < 0.05


def test_contradictory_tags_warn_naming_the_assumption(tmp_path, frames):
    clip = tmp_path / "odd.mov"
    odd = ColourTags("bt709", "bt709", "smpte2084", "tv")  # PQ with 709 primaries
    with video.MovieWriter(clip, RATE, SIZE, codec="prores_ks", colour=odd) as mw:
        for f in frames[:N]:
            mw.write(f)
    ENCODINGS["odd"] = (None, odd, "")
    try:
        _, ctx, facts = _run(tmp_path / "j", clip, "odd")
    finally:
        del ENCODINGS["odd"]
    assert any("contradictory colour tags" in w and "assuming Rec.2100 PQ" in w
               for w in ctx.warnings), ctx.warnings
    assert facts["align"]["colour"]["source"] == "Rec.2100-PQ - Display"


def test_tiny_stitch_job_on_log_footage(clips, tmp_path):
    """The whole STIT pipeline (tiny profile) on the LogC3 clip, through the
    engine: the networks get the rendering, the layer is back in LogC3, outside
    the alpha bit for bit."""
    from fsexchange.client import job_status, submit_job
    from fsexchange.documents import Edit
    from test_pipeline_helpers import FAST_OPTIONS, run_engine_inprocess

    ex = tmp_path / "ex"
    options = dict(FAST_OPTIONS, colour={"source": "ARRI LogC3"},
                   pti={"steps": 3, "lr": 1e-3, "batch_size": 3},
                   stitch={"steps": 4, "batch_size": 2}, metrics={"enabled": False})
    job = Job(id="log1", kind="stitch", source=Source("media/logc3.mov"),
              range=FrameRange(0, N, RATE), edits=(Edit("smile", 2.0),),
              options=options)
    submit_job(ex, job, attachments={"media/logc3.mov": clips["logc3"]})
    assert run_engine_inprocess(ex) == 1
    st = job_status(ex, "log1")
    assert st.state == "done", st.error
    src = dict(video.read_frames(clips["logc3"], depth=16))
    edited = 0
    for fr in st.result.frames:
        rgba = video.read_image(st.folder / fr.path)
        off = rgba[..., 3] == 0
        np.testing.assert_array_equal(rgba[off, :3], src[fr.frame][off])
        edited += fr.edited
    assert edited == N
    report = (st.folder / "output" / "report.html").read_text()
    assert "network view" in report and "ARRI LogC3 (EI800)" in report
    import json

    config = json.loads((st.folder / "config.json").read_text())
    assert config["colour"]["source"] == "ARRI LogC3"


def test_preview_command_shows_the_network_view(clips, tmp_path):
    from engine.commands.preview import run_preview

    res = run_preview(clips["slog3"], tmp_path / "out", end=3,
                      options={"align": {"resolution": 128},
                               "track": {"backend": "dlib"},
                               "colour": {"source": "S-Log3"}})
    view = video.read_image(res["network_view"])
    h, w = view.shape[:2]
    left, right = view[:, : w // 2].astype(float), view[:, w // 2:].astype(float)
    # the log code values are flat; the rendering has the contrast of the picture
    assert right.std() > 1.3 * left.std()
