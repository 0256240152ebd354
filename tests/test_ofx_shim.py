"""The OpenFX shim, built with the system C compiler and driven by tests/ofx_host.py.

Pixels are checked exactly: Export writes the exact source samples (16-bit), Composite
matches straight-alpha "over" to 1/65535, and a missing, truncated or malformed result
passes the source through bit for bit.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from host_bridge.ofx import BUNDLE_NAME, PARAMS, PLUGIN_ID, build_bundle, bundle_arch
from ofx_host import OfxError, OfxTestHost

pytestmark = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")) or platform.machine() not in (
        "x86_64", "AMD64"),
    reason="needs a C compiler and an x86-64 machine (ctypes varargs, see ofx_host.py)")

EXPORT, COMPOSITE = 0, 1
H, W = 6, 9  # small, odd-sized frames catch row/column mix-ups


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("ofx"))


@pytest.fixture
def host(bundle):
    host = OfxTestHost(bundle.binary)
    host.load()
    host.describe()
    yield host
    assert not host.outstanding_images, "the shim leaked images"
    host.unload()


# ---- PAM helpers (the format the engine writes for Job.output.format == "pam16") ----

def write_pam16(path: Path, rgba: np.ndarray) -> None:
    h, w = rgba.shape[:2]
    header = (f"P7\nWIDTH {w}\nHEIGHT {h}\nDEPTH 4\nMAXVAL 65535\n"
              "TUPLTYPE RGB_ALPHA\nENDHDR\n").encode()
    path.write_bytes(header + rgba.astype(">u2").tobytes())


def read_pam16(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    end = raw.index(b"ENDHDR\n") + len(b"ENDHDR\n")
    fields = dict(line.split(" ", 1) for line in raw[:end].decode().split("\n")[1:-2])
    assert fields["DEPTH"] == "4" and fields["MAXVAL"] == "65535"
    assert fields["TUPLTYPE"] == "RGB_ALPHA"
    h, w = int(fields["HEIGHT"]), int(fields["WIDTH"])
    return np.frombuffer(raw[end:], ">u2").reshape(h, w, 4).astype(np.uint16)


def random_source(depth: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A source frame in ``depth`` and its exact 16-bit value."""
    rng = np.random.default_rng(seed)
    k16 = rng.integers(0, 65536, (H, W, 4), dtype=np.uint32).astype(np.uint16)
    if depth == "OfxBitDepthFloat":  # k/65535 as float32 rounds back to k exactly
        return (k16 / 65535.0).astype(np.float32), k16
    if depth == "OfxBitDepthShort":
        return k16, k16
    k8 = (k16 >> 8).astype(np.uint8)
    return k8, k8.astype(np.uint16) * 257


def over(result16: np.ndarray, source: np.ndarray, opacity: float) -> np.ndarray:
    """Straight result over a premultiplied (here opaque) source, float64."""
    r = result16.astype(np.float64) / 65535.0
    a = r[..., 3:4] * opacity
    out = np.empty(source.shape, np.float64)
    out[..., :3] = r[..., :3] * a + source[..., :3] * (1 - a)
    out[..., 3:] = a + source[..., 3:] * (1 - a)
    return out


# ---- the bundle and the description --------------------------------------------------

def test_bundle_layout(bundle):
    contents = bundle.bundle / "Contents"
    assert bundle.bundle.name == f"{BUNDLE_NAME}.ofx.bundle"
    assert bundle.binary == contents / bundle_arch() / f"{BUNDLE_NAME}.ofx"
    assert bundle.binary.is_file()
    assert f"<string>{PLUGIN_ID}</string>" in (contents / "Info.plist").read_text()
    assert (contents / "Resources" / f"{PLUGIN_ID}.svg").is_file()
    # rebuilding into the same folder replaces the bundle, leaves no build folders
    again = build_bundle(bundle.bundle.parent)
    assert again.binary.is_file()
    assert sorted(p.name for p in bundle.bundle.parent.iterdir()) == \
        [bundle.bundle.name]


def test_bundle_arch_names():
    assert bundle_arch("Linux", "x86_64") == "Linux-x86-64"
    assert bundle_arch("Linux", "aarch64") == "Linux-aarch64"
    assert bundle_arch("Darwin", "arm64") == "MacOS"


def test_describe(host):
    desc = host.descriptor
    props = desc.props.values
    assert host.plugin.pluginIdentifier.decode() == PLUGIN_ID
    assert host.plugin.pluginApi == b"OfxImageEffectPluginAPI"
    assert props["OfxPropLabel"] == ["FaceStitch"]
    assert "OfxImageEffectContextFilter" in props["OfxImageEffectPropSupportedContexts"]
    assert set(props["OfxImageEffectPropSupportedPixelDepths"]) == {
        "OfxBitDepthFloat", "OfxBitDepthShort", "OfxBitDepthByte"}
    assert props["OfxImageEffectPropSupportsTiles"] == [0]
    assert set(desc.clips) == {"Source", "Output"}
    for clip in desc.clips.values():
        assert clip.props.values["OfxImageEffectPropSupportedComponents"] == [
            "OfxImageComponentRGBA"]
    assert tuple(desc.params) == PARAMS
    mode = desc.params["mode"]
    assert mode.type == "OfxParamTypeChoice"
    assert mode.props.values["OfxParamPropChoiceOption"] == ["Export", "Composite"]
    assert mode.props.values["OfxParamPropDefault"] == [COMPOSITE]
    for name in ("exportFolder", "resultsFolder"):
        assert desc.params[name].props.values["OfxParamPropStringMode"] == [
            "OfxParamStringIsDirectoryPath"]
    assert desc.params["opacity"].props.values["OfxParamPropDefault"] == [1.0]


def test_load_refuses_a_host_without_a_required_suite(bundle):
    host = OfxTestHost(bundle.binary, omit_suites=("OfxParameterSuite",))
    with pytest.raises(OfxError) as err:
        host.load()
    assert err.value.status == 4  # kOfxStatErrMissingHostFeature
    # the message suite is optional
    host = OfxTestHost(bundle.binary, omit_suites=("OfxMessageSuite",))
    host.load()
    host.describe()


# ---- Export --------------------------------------------------------------------------

@pytest.mark.parametrize("depth", ["OfxBitDepthFloat", "OfxBitDepthShort",
                                   "OfxBitDepthByte"])
def test_export_writes_exact_source_frames_named_by_time(host, tmp_path, depth):
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path),
                                 "frameOffset": 86400}, depth=depth)
    for t in (0.0, 1.0, 7.0):
        src, exact16 = random_source(depth, seed=int(t))
        out = inst.render(t, src)
        np.testing.assert_array_equal(out, src)  # the source passes through
        pam = tmp_path / f"frame.{86400 + int(t):07d}.pam"
        np.testing.assert_array_equal(read_pam16(pam), exact16)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frame.0086400.pam", "frame.0086401.pam", "frame.0086407.pam"]
    inst.destroy()


def test_export_frames_read_back_through_the_engine(host, tmp_path):
    video = pytest.importorskip("engine.media.video")
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)},
                                depth="OfxBitDepthShort")
    sources = [random_source("OfxBitDepthShort", seed=s)[0] for s in range(3)]
    for t, src in enumerate(sources):
        inst.render(float(t), src)
    frames = dict(video.read_frames(tmp_path, alpha=True, depth=16))
    for i, src in enumerate(sources):
        np.testing.assert_array_equal(frames[i], src)


def test_export_without_a_folder_fails_with_a_message(host):
    inst = host.create_instance({"mode": EXPORT, "exportFolder": ""})
    src, _ = random_source("OfxBitDepthFloat")
    out = inst.render(3.0, src, check=False)
    assert inst.status == 1  # kOfxStatFailed
    np.testing.assert_array_equal(out, src)  # still passed through
    assert any("Export folder" in text for _, text in host.messages)


def test_export_to_an_unwritable_folder_reports_the_path(host, tmp_path):
    missing = tmp_path / "no" / "such"
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(missing)})
    inst.render(1.0, random_source("OfxBitDepthFloat")[0], check=False)
    assert inst.status == 1
    assert any(str(missing) in text for kind, text in host.messages
               if kind == "OfxMessageError")


def test_abort_stops_without_leaving_a_partial_file(bundle, tmp_path):
    host = OfxTestHost(bundle.binary, abort_fn=lambda: True)
    host.load()
    host.describe()
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)})
    inst.render(1.0, random_source("OfxBitDepthFloat")[0])
    assert list(tmp_path.iterdir()) == []
    assert not host.outstanding_images and host.images_fetched == 2


# ---- Composite -----------------------------------------------------------------------

def result_frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    res = rng.integers(0, 65536, (H, W, 4), dtype=np.uint32).astype(np.uint16)
    res[0, :, 3] = 0  # fully transparent row: the source shows through exactly
    res[1, :, 3] = 65535  # fully opaque row
    return res


@pytest.mark.parametrize("opacity", [1.0, 0.37])
def test_composite_float_matches_straight_over(host, tmp_path, opacity):
    res = result_frame(0)
    write_pam16(tmp_path / "shot_fs.0001012.pam", res)
    inst = host.create_instance({"mode": COMPOSITE, "resultsFolder": str(tmp_path),
                                 "resultName": "shot_fs", "frameOffset": 1000,
                                 "opacity": opacity})
    src, _ = random_source("OfxBitDepthFloat", seed=5)
    src[..., 3] = 1.0  # an opaque plate
    out = inst.render(12.0, src)
    expect = over(res, src.astype(np.float64), opacity)
    assert np.abs(out - expect).max() <= 1 / 65535
    np.testing.assert_array_equal(out[0], src[0])  # alpha 0: exact source
    if opacity == 1.0:
        assert np.abs(out[1] - res[1] / 65535.0).max() <= 1e-6


def test_composite_short_is_exact_to_one_code_value(host, tmp_path):
    res = result_frame(1)
    write_pam16(tmp_path / "facestitch.0000004.pam", res)
    inst = host.create_instance({"mode": COMPOSITE, "resultsFolder": str(tmp_path),
                                 "opacity": 0.8}, depth="OfxBitDepthShort")
    src, _ = random_source("OfxBitDepthShort", seed=9)
    src[..., 3] = 65535
    out = inst.render(4.0, src)
    expect = np.round(over(res, src / 65535.0, 0.8) * 65535)
    assert np.abs(out.astype(np.int64) - expect).max() <= 1


def test_composite_reads_the_frame_for_each_time(host, tmp_path):
    for n in (20, 21, 22):
        frame = np.zeros((H, W, 4), np.uint16)
        frame[..., 0] = n * 1000
        frame[..., 3] = 65535
        write_pam16(tmp_path / f"facestitch.{n:07d}.pam", frame)
    inst = host.create_instance({"mode": COMPOSITE, "resultsFolder": str(tmp_path)})
    src = np.zeros((H, W, 4), np.float32)
    src[..., 3] = 1
    for t in (22.0, 20.0, 21.0, 20.4):  # out of order; 20.4 rounds to 20
        out = inst.render(t, src)
        assert np.allclose(out[..., 0], round(t) * 1000 / 65535.0, atol=1e-7)


def test_composite_passes_the_source_through_where_no_valid_result_exists(host,
                                                                          tmp_path):
    good = result_frame(2)
    write_pam16(tmp_path / "facestitch.0000001.pam", good)
    full = (tmp_path / "facestitch.0000001.pam").read_bytes()
    (tmp_path / "facestitch.0000002.pam").write_bytes(full[:-10])  # truncated
    (tmp_path / "facestitch.0000003.pam").write_bytes(
        full.replace(b"DEPTH 4", b"DEPTH 3"))  # malformed
    (tmp_path / "facestitch.0000004.pam").write_bytes(b"")  # empty
    inst = host.create_instance({"mode": COMPOSITE, "resultsFolder": str(tmp_path)},
                                depth="OfxBitDepthShort")
    src, _ = random_source("OfxBitDepthShort", seed=3)
    assert not np.array_equal(inst.render(1.0, src), src)  # the good one composites
    for t in (2.0, 3.0, 4.0, 5.0):  # truncated, malformed, empty, missing
        np.testing.assert_array_equal(inst.render(t, src), src)
    # and with no results folder at all
    inst.set_param("resultsFolder", "")
    np.testing.assert_array_equal(inst.render(1.0, src), src)


def test_composite_reads_the_engines_pam16(host, tmp_path):
    video = pytest.importorskip("engine.media.video")
    res = result_frame(3)
    video.write_rgba(tmp_path / "facestitch.0000009.pam", res)
    np.testing.assert_array_equal(read_pam16(tmp_path / "facestitch.0000009.pam"), res)
    inst = host.create_instance({"mode": COMPOSITE, "resultsFolder": str(tmp_path)})
    src = np.zeros((H, W, 4), np.float32)
    src[..., 3] = 1
    out = inst.render(9.0, src)
    assert np.abs(out - over(res, src.astype(np.float64), 1.0)).max() <= 1 / 65535


def test_cli_builds_the_bundle(tmp_path, capsys):
    from host_bridge.cli import main

    assert main(["ofx", "build", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{BUNDLE_NAME}.ofx.bundle" / "Contents" / bundle_arch()
            / f"{BUNDLE_NAME}.ofx").is_file()
    assert "built" in capsys.readouterr().out
