"""A shot out and back through the OpenFX path: the shim's Export mode writes the
source frames, ``facestitch ofx submit`` makes a job of them, the real engine runs
align-preview, and Composite mode lays the result over the source, pixel-exact."""

from __future__ import annotations

import platform
import shutil

import numpy as np
import pytest

from clips import ClipSpec, render_frames
from fsexchange.client import job_status
from host_bridge.cli import main as cli
from host_bridge.ofx import build_bundle, exported_frames
from ofx_host import OfxTestHost
from test_ofx_shim import over, read_pam16
from test_resolve_roundtrip import run_engine

pytestmark = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")) or platform.machine() not in (
        "x86_64", "AMD64"), reason="needs a C compiler and an x86-64 machine")

REAL = {"align-preview": ("engine.stages.track:TrackStage",
                          "engine.stages.align:AlignStage",
                          "engine.stages.paste:PasteStage")}


def test_export_submit_engine_composite(tmp_path, capsys):
    bundle = build_bundle(tmp_path / "plugins")
    host = OfxTestHost(bundle.binary)
    host.load()
    host.describe()
    exchange = tmp_path / "exchange"
    export = exchange / "ofx-export" / "shot1"  # under the exchange: readable by it
    export.mkdir(parents=True)
    frames = [np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]).astype(np.uint16)
              * 257 for f in render_frames(ClipSpec(frames=6))]
    exporter = host.create_instance({"mode": 0, "exportFolder": str(export),
                                     "frameOffset": 1000}, depth="OfxBitDepthShort")
    for t, rgba in enumerate(frames):
        np.testing.assert_array_equal(exporter.render(float(t), rgba), rgba)
    assert exported_frames(export) == list(range(1000, 1006))

    assert cli(["ofx", "submit", str(export), "--exchange", str(exchange), "--rate",
                "25", "--kind", "align-preview", "--option",
                "align.resolution=256"]) == 0
    job_id = capsys.readouterr().out.split()[0]
    assert run_engine(exchange, tmp_path, REAL) == 1
    status = job_status(exchange, job_id)
    assert status.state == "done", status.error
    results = status.folder / "output"
    assert sorted(p.name for p in results.glob("*.pam")) == [
        f"facestitch.{n:07d}.pam" for n in range(1000, 1006)]

    compositor = host.create_instance({"mode": 1, "resultsFolder": str(results),
                                       "frameOffset": 1000, "opacity": 1.0},
                                      depth="OfxBitDepthShort")
    for t, rgba in enumerate(frames):
        out = compositor.render(float(t), rgba)
        res = read_pam16(results / f"facestitch.{1000 + t:07d}.pam")
        assert res[..., 3].max() == 65535 and res[..., 3].min() == 0  # a face matte
        expect = np.round(over(res, rgba / 65535.0, 1.0) * 65535)
        assert np.abs(out.astype(np.int64) - expect).max() <= 1
        # identity paste-back: RGB equals the source where alpha is 0 (exactly)
        clear = res[..., 3] == 0
        np.testing.assert_array_equal(out[clear], rgba[clear])
    assert not host.outstanding_images
