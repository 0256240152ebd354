"""Colour facts without pixels: names, Resolve's Input Color Space, the assumptions
for untagged files, the chromaticities table against OpenColorIO, the bridge's
``--colour`` and the fake Resolve's property."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fsexchange.colour import (SOURCE_NAMES, ColourTags, assumed_tags,
                               canonical_source, from_resolve_name, tag_conflicts)
from fsexchange.errors import ColourUnknown
from fsexchange.media import MediaInfo
from fsexchange.options import ColourConfig, PipelineConfig


@pytest.mark.parametrize("value,expect", [
    ("Rec.709 Gamma 2.4", "Rec.709"), ("Rec.709 (Scene)", "Rec.709"),
    ("sRGB", "sRGB"), ("Rec.2020 Gamma 2.4", "Rec.2020"),
    ("Rec.2100 ST2084", "Rec.2100 PQ"), ("Rec.2100 HLG", "Rec.2100 HLG"),
    ("ARRI LogC3", "ARRI LogC3"), ("ARRI LogC4", "ARRI LogC4"),
    ("Sony S-Gamut3.Cine/S-Log3", "S-Log3"),
    ("Sony S-Gamut3/S-Log3", "S-Log3 S-Gamut3"),
    ("Panasonic V-Gamut/V-Log", "V-Log"), ("ACEScct", "ACEScct"), ("ACEScg", "ACEScg"),
    ("", None), (None, None), ("Project", None), ("Bypass", None),
    ("Canon Cinema Gamut/Canon Log 2", None)])
def test_resolve_input_colour_space_names(value, expect):
    assert from_resolve_name(value) == expect


def test_user_names_are_forgiving():
    assert canonical_source("logc3") == "ARRI LogC3"
    assert canonical_source("rec 2020 pq") == "Rec.2100 PQ"
    assert canonical_source("S-LOG3") == "S-Log3"
    assert canonical_source("no such space") is None
    assert all(canonical_source(n) == n for n in SOURCE_NAMES)


def test_assumptions_for_untagged_files():
    hd, notes = assumed_tags(ColourTags(), 1920, 1080)
    assert (hd.matrix, hd.primaries, hd.transfer, hd.range) == (
        "bt709", "bt709", "bt709", "tv")
    assert any("BT.709 (HD)" in n for n in notes)
    sd, _ = assumed_tags(ColourTags(), 720, 576)
    assert sd.matrix == "smpte170m" and sd.range == "tv"
    full, _ = assumed_tags(ColourTags(range="pc"), 1920, 1080)
    assert full.range == "pc"
    rgb, _ = assumed_tags(ColourTags(rgb=True), 1920, 1080)
    assert rgb.matrix == "rgb" and rgb.range == "pc"
    png, _ = assumed_tags(ColourTags(), 640, 480, "sequence")
    assert png.transfer == "iec61966-2-1"
    exr, _ = assumed_tags(ColourTags(transfer="linear"), 640, 480, "sequence")
    assert exr.transfer == "linear"


def test_contradictory_tags_are_named():
    notes = tag_conflicts(ColourTags("bt709", "bt709", "smpte2084", "tv"))
    assert notes and "assuming Rec.2100 PQ" in notes[0]
    assert tag_conflicts(ColourTags("bt2020nc", "bt2020", "smpte2084", "tv")) == []
    assert tag_conflicts(ColourTags("bt709", "bt709", "bt709", "tv")) == []


def test_colour_is_a_validated_options_section():
    cfg = PipelineConfig.from_options({"colour": {"source": "ARRI LogC3"}})
    assert cfg.colour == ColourConfig(source="ARRI LogC3")
    assert cfg.to_dict()["colour"]["source"] == "ARRI LogC3"
    from fsexchange.errors import DocumentFieldError

    with pytest.raises(DocumentFieldError) as err:
        PipelineConfig.from_options({"colour": {"sauce": "x"}})
    assert err.value.field == "options.colour.sauce"


# --- OpenColorIO ---------------------------------------------------------------------


def _info(tags: ColourTags = ColourTags(), kind: str = "video") -> MediaInfo:
    return MediaInfo(Path("/clip.mov"), kind, 1920, 1080, 10, Fraction(24), None, 10,
                     False, colour=tags)


def test_every_name_resolves_in_the_builtin_config():
    from engine.media.colour import load_config, pipeline_for, resolve_space

    cfg = load_config("")
    for name, space in SOURCE_NAMES.items():
        assert resolve_space(cfg, name) == space
        p, _ = pipeline_for(ColourConfig(source=name), _info())
        assert p.source == space and p.chromaticities is not None, name
    assert resolve_space(cfg, "lin_ap1") == "ACEScg"  # the config's own aliases
    with pytest.raises(ColourUnknown) as err:
        pipeline_for(ColourConfig(source="Kodak Vision3"), _info())
    assert err.value.code == "colour.unknown"
    assert err.value.field == "options.colour.source"


def test_chromaticities_agree_with_the_configs_matrices():
    """The EXR ``chromaticities`` we write are the gamuts OCIO converts with:
    OCIO's linear-X -> linear Rec.709 matrix equals the one built from our xy
    values (both D65, or both ACES white through the same adaptation)."""
    import PyOpenColorIO as OCIO

    from engine.media.colour import CHROMATICITIES, _xyz_to_rgb, load_config

    cfg = load_config("")
    to709 = _xyz_to_rgb(CHROMATICITIES["Linear Rec.709 (sRGB)"])
    for name, chroma in CHROMATICITIES.items():
        if chroma[6:] != CHROMATICITIES["Linear Rec.709 (sRGB)"][6:]:
            continue  # ACES white: OCIO adapts to D65, our matrix would not
        proc = cfg.getProcessor(OCIO.ColorSpaceTransform(
            src=name, dst="Linear Rec.709 (sRGB)")).getDefaultCPUProcessor()
        eye = np.eye(3, dtype=np.float32).copy()
        proc.applyRGB(eye)
        ours = to709 @ np.linalg.inv(_xyz_to_rgb(chroma))
        # Rec.2020, P3, V-Gamut agree to 1e-7; ARRI and Sony gamuts to 0.006 (OCIO
        # uses the vendors' matrices to ACES, adapted with their own CAT); one wrong
        # primary moves an entry by more than 0.03.
        np.testing.assert_allclose(eye.T, ours, atol=0.01, err_msg=name)


def test_detection_from_tags():
    from engine.media.colour import detect_source

    assert detect_source(_info(ColourTags("bt2020nc", "bt2020", "smpte2084",
                                          "tv")))[0] == "Rec.2100 PQ"
    assert detect_source(_info(ColourTags("bt2020nc", "bt2020", "arib-std-b67",
                                          "tv")))[0] == "Rec.2100 HLG"
    assert detect_source(_info(ColourTags("bt2020nc", "bt2020", "bt2020-10",
                                          "tv")))[0] == "Rec.2020"
    assert detect_source(_info())[0] == "Rec.709"
    exr = ColourTags("rgb", "", "linear", "pc",
                     (0.713, 0.293, 0.165, 0.830, 0.128, 0.044, 0.32168, 0.33767),
                     True)
    assert detect_source(_info(exr, "sequence"))[0] == "ACEScg"
    assert detect_source(_info(ColourTags(transfer="linear", rgb=True),
                               "sequence"))[0] == "Linear Rec.709"


def test_a_choice_the_tags_contradict_is_warned_about():
    from engine.media.colour import pipeline_for

    pq = ColourTags("bt2020nc", "bt2020", "smpte2084", "tv")
    p, notes = pipeline_for(ColourConfig(source="ARRI LogC3"), _info(pq))
    assert p.source == "ARRI LogC3 (EI800)"
    assert any("tagged PQ" in n and "'ARRI LogC3'" in n for n in notes)
    # camera log is routinely tagged BT.709: no warning for that
    _, notes = pipeline_for(ColourConfig(source="S-Log3"),
                            _info(ColourTags("bt709", "bt709", "bt709", "tv")))
    assert notes == []


def test_a_facility_config_from_a_file(tmp_path):
    """A config file ($OCIO / --ocio-config / options.colour.config) is used as it
    is: its own names, its default display and view."""
    import PyOpenColorIO as OCIO

    from engine.media.colour import pipeline_for
    from fsexchange.errors import ColourConfigError

    builtin = OCIO.Config.CreateFromBuiltinConfig(
        "studio-config-v2.2.0_aces-v1.3_ocio-v2.4")
    path = tmp_path / "facility.ocio"
    path.write_text(builtin.serialize())
    p, _ = pipeline_for(ColourConfig(source="ACEScct", config=str(path)), _info())
    assert p.config_path == str(path) and p.view == "ACES 1.0 - SDR Video"
    out = p.to_network(np.full((2, 2, 3), 0.4135, np.float32))  # ACEScct mid grey
    assert 0.3 < float(out.mean()) < 0.5
    with pytest.raises(ColourConfigError):
        pipeline_for(ColourConfig(config=str(tmp_path / "missing.ocio")), _info())


# --- the bridge ----------------------------------------------------------------------


def test_submit_colour_flag(tmp_path):
    from host_bridge.commands.submit import build_parser, job_from_args

    from clips import ClipSpec, render_frames, write_clip

    clip = write_clip(tmp_path / "c.mp4", render_frames(ClipSpec(frames=3)))
    notes: list[str] = []
    args = build_parser().parse_args([str(clip), "--exchange", str(tmp_path / "ex"),
                                      "--kind", "align-preview", "--colour", "LogC3",
                                      "--option", "colour.view=X"])
    job, _ = job_from_args(args, notes)
    assert job.options["colour"] == {"source": "LogC3", "view": "X"}
    args = build_parser().parse_args([str(clip), "--exchange", str(tmp_path / "ex"),
                                      "--kind", "align-preview", "--color",
                                      "Studio Log"])
    job, _ = job_from_args(args, notes)
    assert job.options["colour"]["source"] == "Studio Log"
    assert any("not one of FaceStitch's names" in n for n in notes)


@pytest.mark.parametrize("value,expect", [("ARRI LogC3", "ARRI LogC3"),
                                          ("", None), (None, None)])
def test_resolve_clip_colour_space_goes_into_the_job(tmp_path, value, expect):
    from fake_resolve import FakeResolve
    from host_bridge.resolve import open_session, read_shot
    from host_bridge.roundtrip import SendOptions, shot_job

    from clips import ClipSpec, render_frames, write_clip
    from fsexchange.documents import Source, Subject

    clip = write_clip(tmp_path / "a.mov", render_frames(ClipSpec(frames=6)),
                      Fraction(25))
    resolve = FakeResolve(rate=Fraction(25))
    tl = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(clip, rate=Fraction(25),
                                    input_color_space=value)
    assert mpi.GetClipProperty("Input Color Space") == value  # as given
    assert mpi.GetClipProperty()["Input Color Space"] == value
    item = tl.place(mpi, record=tl.GetStartFrame(), duration=4, left_offset=1)
    shot = read_shot(open_session(resolve), item)
    assert shot.input_colour == (value or None)
    job = shot_job(shot, "j1", SendOptions(kind="align-preview"),
                   source=Source(str(clip)), subject=Subject())
    assert job.options.get("colour", {}).get("source") == expect
    assert job.host["input_color_space"] == (value or None)
    # the editor's own choice wins over the clip's
    job = shot_job(shot, "j2", SendOptions(kind="align-preview", options={
        "colour": {"source": "S-Log3"}}), source=Source(str(clip)), subject=Subject())
    assert job.options["colour"]["source"] == "S-Log3"


def test_unknown_resolve_colour_space_is_reported(tmp_path):
    from fake_resolve import FakeResolve
    from host_bridge.resolve import open_session, read_shot

    from clips import ClipSpec, render_frames, write_clip

    clip = write_clip(tmp_path / "a.mov", render_frames(ClipSpec(frames=4)),
                      Fraction(25))
    resolve = FakeResolve(rate=Fraction(25))
    tl = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(clip, rate=Fraction(25),
                                    input_color_space="Canon Cinema Gamut/Canon Log 2")
    item = tl.place(mpi, record=tl.GetStartFrame(), duration=3, left_offset=0)
    shot = read_shot(open_session(resolve), item)
    assert shot.colour_source is None
    assert any("has no equivalent" in w for w in shot.warnings)


@pytest.mark.parametrize("name", ["ARRI LogC3", "S-Log3", "V-Log", "ACEScct",
                                  "Rec.2100 PQ", "Rec.2100 HLG"])
def test_colour_round_trip_alone(name):
    """Source (10-bit) -> network space, stored at 8 bits as the aligned crops are
    -> back: the colour part of the identity paste's error, without resampling
    (docs/colour.md "Tolerances")."""
    from engine.media.colour import pipeline_for

    p, _ = pipeline_for(ColourConfig(source=name), _info())
    rng = np.random.default_rng(1)
    display = rng.uniform(0.05, 0.95, (128, 128, 3)).astype(np.float32)
    src = np.round(np.clip(p.from_network(display), 0, 1) * 1023) / 1023  # 10-bit
    net = np.round(p.to_network(src) * 255) / 255  # the 8-bit crop
    back = p.from_network(net)
    err = np.abs(back - src) * 1023
    mean, p99 = float(err.mean()), float(np.percentile(err, 99))
    print(f"\n{name}: colour round trip alone, 10-bit codes: mean {mean:.2f} "
          f"p99 {p99:.2f}")
    assert mean <= 1.0 and p99 <= 4.0
