"""Edit directions as data: files, metadata, tiny synthetic set, deltas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.models.directions import (
    Direction,
    available_edits,
    conv_style_channels,
    ensure_tiny_directions,
    load_direction,
    save_direction,
)
from engine.models.store import TINY_NUM_WS, W_DIRECTION_NAMES, Store
from fsexchange.errors import ModelFormatError


def _d(vec, **kw) -> Direction:
    base = dict(name="x", vector=np.asarray(vec, float), layers=None,
                recommended=(-1.0, 1.0), space="w", source="s", licence="l",
                test_data=True)
    base.update(kw)
    return Direction(**base)


def test_directions_module_is_torch_free():
    code = ("import sys, engine.models.directions, engine.models.store; "
            "engine.models.directions.available_edits('tiny'); "
            "print('torch' in sys.modules)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True, env=env)
    assert out.stdout.strip() == "False"


def test_tiny_directions_are_seeded_marked_and_stable(tmp_path):
    a = available_edits("tiny", store=Store(tmp_path / "a"))
    b = available_edits("tiny", store=Store(tmp_path / "b"))
    assert set(W_DIRECTION_NAMES) <= set(a)
    assert a["lipstick"].space == "s"
    for name in W_DIRECTION_NAMES:
        d = a[name]
        assert d.test_data and d.space == "w" and "TEST DATA" in d.source
        assert d.vector.shape == (TINY_NUM_WS, 64)
        assert np.array_equal(d.vector, b[name].vector)
        assert np.allclose(d.vector, d.vector[:1])  # identical rows, like STIT
    assert np.linalg.norm(a["age"].vector[0]) == pytest.approx(0.731)
    assert a["age"].recommended == (-8.0, 8.0)
    assert not np.allclose(a["age"].vector, a["smile"].vector)
    # created once: files are not rewritten on the next call
    f = tmp_path / "a" / "directions" / "tiny" / "age.npy"
    mtime = f.stat().st_mtime_ns
    ensure_tiny_directions(Store(tmp_path / "a"))
    assert f.stat().st_mtime_ns == mtime


def test_stit_direction_file_semantics(tmp_path):
    """STIT: float64 [18, 512] identical rows; w_edit = w + (strength / 2) d."""
    v = np.random.default_rng(1).standard_normal(512)
    arr = np.repeat(v[None], 18, axis=0)
    np.save(tmp_path / "smile.npy", arr)
    d = load_direction(tmp_path / "smile.npy")  # no sidecar: defaults
    assert d.name == "smile" and d.space == "w" and d.step_scale == 0.5
    assert d.recommended == (-3.0, 3.0)
    delta = d.delta_w(2.0, 18)
    assert delta.dtype == np.float32 and delta.shape == (18, 512)
    assert np.allclose(delta, np.repeat(v[None], 18, 0) * 1.0, atol=1e-6)
    # identical rows broadcast to another num_ws; [w_dim] vectors too
    assert d.delta_w(2.0, 14).shape == (14, 512)
    flat = _d(v, name="flat")
    assert np.allclose(flat.delta_w(-4.0, 3), np.repeat(-2 * v[None], 3, 0), atol=1e-6)
    with pytest.raises(ValueError):
        flat.delta_w(1.0)
    # layer restriction
    lay = _d(v, layers=(0, 2))
    out = lay.delta_w(2.0, 4)
    assert np.allclose(out[[1, 3]], 0) and np.allclose(out[0], v, atol=1e-6)


def test_save_and_load_round_trip_with_sidecar(tmp_path):
    d = _d(np.arange(8.0), name="tilt", layers=(1, 2), recommended=(-5.0, 2.5),
           source="me", licence="CC0", test_data=False, description="desc")
    p = save_direction(tmp_path, d)
    meta = json.loads((tmp_path / "tilt.json").read_text())
    assert meta["format"] == "facestitch.Direction/1"
    back = load_direction(p)
    assert back.to_dict() == {**d.to_dict(), "path": str(p)}
    assert np.array_equal(back.vector, d.vector)


def test_pickled_or_bad_arrays_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object),
            allow_pickle=True)
    with pytest.raises(ModelFormatError):
        load_direction(tmp_path / "obj.npy")
    np.save(tmp_path / "ints.npy", np.arange(4))
    with pytest.raises(ModelFormatError):
        load_direction(tmp_path / "ints.npy")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(ModelFormatError):
        load_direction(tmp_path / "nan.npy")
    np.save(tmp_path / "v.npy", np.zeros(4))
    (tmp_path / "v.json").write_text(json.dumps({"format": "facestitch.Direction/9"}))
    with pytest.raises(ModelFormatError, match="Direction/1"):
        load_direction(tmp_path / "v.npy")


def test_s_space_direction_split_per_layer():
    chans = conv_style_channels(1024, 32768, 512)
    assert len(chans) == 17 and sum(chans) == 6048
    assert chans[:10] == [512] * 10 and chans[10:] == [256, 256, 128, 128, 64, 64, 32]
    # tiny generator: styles are conv/torgb interleaved per block
    style_channels = [4, 4, 4, 4, 4, 2, 2, 2]  # b4.conv1, b4.torgb, b8: c0 c1 rgb, ...
    is_rgb = [False, True, False, False, True, False, False, True]
    d = _d(np.ones(18), space="s", step_scale=1.0)  # wrong length: 16 conv channels
    with pytest.raises(ValueError):
        d.delta_s(1.0, style_channels, is_rgb)
    vec = np.arange(1.0, 17.0)  # 4 + 4 + 4 + 2 + 2 conv channels
    d = _d(vec, space="s", step_scale=1.0)
    out = d.delta_s(10.0, style_channels, is_rgb)
    assert [o.shape[0] for o in out] == style_channels
    assert not out[1].any() and not out[4].any() and not out[7].any()
    assert np.allclose(np.concatenate([o for o, r in zip(out, is_rgb) if not r]),
                       10 * vec)
    with pytest.raises(ValueError):
        d.delta_w(1.0, 4)


def test_official_profile_without_directions_is_empty(tmp_path):
    assert available_edits("official", store=Store(tmp_path)) == {}


def test_models_add_installs_w_and_s_directions(tmp_path, capsys):
    from host_bridge.cli import main

    s_vec = np.random.default_rng(2).standard_normal(6048)
    np.save(tmp_path / "lip.npy", s_vec)
    assert main(["models", "add", "lipstick", str(tmp_path / "lip.npy")]) == 0
    assert "S-space direction lipstick" in capsys.readouterr().out
    w_vec = np.random.default_rng(3).standard_normal(512)
    np.save(tmp_path / "tan.npy", w_vec)
    assert main(["models", "add", "tan", str(tmp_path / "tan.npy")]) == 0
    edits = available_edits("official")
    assert edits["lipstick"].space == "s" and edits["lipstick"].step_scale == 1.0
    assert edits["tan"].space == "w" and edits["tan"].vector.shape == (512,)
    assert not edits["tan"].test_data
    np.save(tmp_path / "bad.npy", np.zeros(100))
    assert main(["models", "add", "bad", str(tmp_path / "bad.npy"), "--space",
                 "s"]) == 2
    assert "6048" in capsys.readouterr().err
