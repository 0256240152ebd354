"""The OpenFX shim under the render arguments a host varies: render scale (proxy),
draft quality, interactive renders, and renders running at the same time (several
frames at once, and one frame split into windows, as HostFrameThreading allows).
Export writes only full-resolution final renders; everything else is skipped or
refused with a message on the effect."""

from __future__ import annotations

import platform
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from host_bridge.ofx import build_bundle
from ofx_host import OfxTestHost
from test_ofx_shim import H, W, over, random_source, read_pam16, result_frame, \
    write_pam16

pytestmark = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")) or platform.machine() not in (
        "x86_64", "AMD64"),
    reason="needs a C compiler and an x86-64 machine (ctypes varargs, see ofx_host.py)")

EXPORT, COMPOSITE = 0, 1
SHORT = "OfxBitDepthShort"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("ofx"))


def loaded(bundle, **kwargs) -> OfxTestHost:
    host = OfxTestHost(bundle.binary, **kwargs)
    host.load()
    host.describe()
    return host


@pytest.fixture
def host(bundle):
    host = loaded(bundle)
    yield host
    assert not host.outstanding_images, "the shim leaked images"
    host.unload()


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_threading_is_declared_as_it_is(host):
    props = host.descriptor.props.values
    # the shim threads nothing itself; renders keep no state between calls
    assert props["OfxImageEffectPluginPropHostFrameThreading"] == [1]
    assert props["OfxImageEffectPluginRenderThreadSafety"] == [
        "OfxImageEffectRenderFullySafe"]


def test_a_proxy_render_is_refused_with_a_message_on_the_effect(host, tmp_path):
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)},
                                depth=SHORT)
    half = random_source(SHORT, seed=1)[0][::2, ::2].copy()  # what a proxy hands over
    out = inst.render(3.0, half, scale=(0.5, 0.5), check=False)
    assert inst.status == 1  # kOfxStatFailed: nothing written
    np.testing.assert_array_equal(out, half)  # the picture still passes through
    assert files(tmp_path) == []
    handle = host._handle(inst.effect)
    kind, text = host.persistent[handle]
    assert kind == "OfxMessageError" and "0.5 x 0.5 scale" in text
    assert "frame 3" in text and "full resolution" in text
    assert host.messages == []  # persistent, not a dialog per frame

    full, exact = random_source(SHORT, seed=2)
    inst.render(3.0, full)  # at full scale it is written, and the message goes
    np.testing.assert_array_equal(read_pam16(tmp_path / "frame.0000003.pam"), exact)
    assert handle not in host.persistent


def test_a_host_with_message_suite_v1_is_told_once_per_run(bundle, tmp_path):
    host = loaded(bundle, message_versions=(1,))
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)})
    src = random_source("OfxBitDepthFloat")[0]
    for t in range(3):
        inst.render(float(t), src, scale=(1.0, 0.5), check=False)
        assert inst.status == 1
    assert [kind for kind, _ in host.messages] == ["OfxMessageError"]
    inst.render(5.0, src)
    inst.render(6.0, src, scale=(0.25, 0.25), check=False)
    assert len(host.messages) == 2 and files(tmp_path) == ["frame.0000005.pam"]


@pytest.mark.parametrize("flags", [{"draft": 1}, {"interactive": 1},
                                   {"draft": 1, "interactive": 1}])
def test_draft_and_interactive_renders_export_nothing(host, tmp_path, flags):
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)},
                                depth=SHORT)
    src = random_source(SHORT, seed=4)[0]
    np.testing.assert_array_equal(inst.render(7.0, src, **flags), src)
    assert inst.status == 0 and files(tmp_path) == []
    assert host.messages == [] and host.persistent == {}


def test_a_host_without_the_optional_properties_exports(host, tmp_path):
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)},
                                depth=SHORT)
    src, exact = random_source(SHORT, seed=5)
    inst.render(2.0, src, draft=None, interactive=None)
    np.testing.assert_array_equal(read_pam16(tmp_path / "frame.0000002.pam"), exact)


def test_composite_at_half_scale_samples_the_full_size_result(host, tmp_path):
    res = np.concatenate([np.concatenate([result_frame(s), result_frame(s + 1)], 1)
                          for s in (0, 2)], 0)  # 2H x 2W, a full-resolution result
    write_pam16(tmp_path / "facestitch.0000004.pam", res)
    inst = host.create_instance({"mode": COMPOSITE, "resultsFolder": str(tmp_path)})
    src = np.zeros((H, W, 4), np.float32)
    src[..., 3] = 1
    out = inst.render(4.0, src, scale=(0.5, 0.5))
    expect = over(res[1::2, 1::2], src.astype(np.float64), 1.0)  # nearest samples
    assert np.abs(out - expect).max() <= 1 / 65535


def test_many_frames_render_at_once(host, tmp_path):
    inst = host.create_instance({"mode": EXPORT, "exportFolder": str(tmp_path)},
                                depth=SHORT)
    sources = {t: random_source(SHORT, seed=10 + t) for t in range(24)}

    def render(t: int) -> np.ndarray:
        return inst.render(float(t), sources[t][0])

    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = dict(zip(sources, pool.map(render, sources)))
    for t, (src, exact) in sources.items():
        np.testing.assert_array_equal(outputs[t], src)
        written = read_pam16(tmp_path / f"frame.{t:07d}.pam")
        np.testing.assert_array_equal(written, exact)
    assert len(files(tmp_path)) == 24  # no temporary file left behind


@pytest.mark.parametrize("mode", [EXPORT, COMPOSITE])
def test_one_frame_split_into_windows_at_once(host, tmp_path, mode):
    write_pam16(tmp_path / "facestitch.0000009.pam", result_frame(5))
    inst = host.create_instance({"mode": mode, "exportFolder": str(tmp_path / "x"),
                                 "resultsFolder": str(tmp_path)}, depth=SHORT)
    (tmp_path / "x").mkdir()
    src, exact = random_source(SHORT, seed=6)
    whole = inst.render(9.0, src)
    bands = [(0, y, W, y + 2) for y in range(0, H, 2)]  # 3 windows, 3 threads
    for _ in range(5):
        np.testing.assert_array_equal(inst.render(9.0, src, windows=bands), whole)
    if mode == EXPORT:  # three renders wrote the same frame, each by its own rename
        assert files(tmp_path / "x") == ["frame.0000009.pam"]
        np.testing.assert_array_equal(read_pam16(tmp_path / "x" / "frame.0000009.pam"),
                                      exact)
