"""Edit strength curves (keyframes, easing, hold), combined edits, S-space edits and
unknown edit names — numpy only, no networks."""

from __future__ import annotations

import numpy as np
import pytest

from engine.models.directions import Direction
from engine.stages.edit import (apply_s_edits, apply_w_edits, check_edits, freeze_fine,
                         strength_curve)
from fsexchange.documents import Edit, Keyframe
from fsexchange.errors import EditUnknown


def _kf(*pairs):
    return tuple(Keyframe(f, s) for f, s in pairs)


def test_constant_strength_without_keyframes():
    assert strength_curve(Edit("age", -4.0), [0, 7, 1000]).tolist() == [-4.0] * 3


def test_values_at_keyframes_and_hold_outside():
    e = Edit("age", keyframes=_kf((1001, 0.0), (1024, -4.0), (1080, -4.0),
                                  (1100, 0.0)))
    frames = [990, 1001, 1024, 1050, 1080, 1100, 1200]
    assert strength_curve(e, frames).tolist() == [0.0, 0.0, -4.0, -4.0, -4.0, 0.0, 0.0]


def test_smooth_easing_is_smoothstep():
    e = Edit("age", keyframes=_kf((0, 0.0), (100, 10.0)), ease="smooth")
    s = strength_curve(e, [0, 25, 50, 75, 100])
    t = np.array([0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(s, 10 * (3 * t ** 2 - 2 * t ** 3))
    assert s[1] == pytest.approx(1.5625)  # eases in: slower than linear at the start
    # zero slope at both keyframes: the first step is tiny compared with linear
    s1 = strength_curve(e, [1, 99])
    assert s1[0] < 0.01 and 10 - s1[1] < 0.01


def test_linear_and_hold():
    lin = Edit("age", keyframes=_kf((0, 0.0), (10, 5.0), (20, -5.0)), ease="linear")
    np.testing.assert_allclose(strength_curve(lin, [0, 5, 10, 15, 20]),
                               [0.0, 2.5, 5.0, 0.0, -5.0])
    hold = Edit("age", keyframes=_kf((0, 1.0), (10, 5.0)), ease="hold")
    assert strength_curve(hold, [-3, 0, 9, 10, 11]).tolist() == [1, 1, 1, 5, 5]


def test_single_keyframe_holds_everywhere():
    e = Edit("age", keyframes=_kf((5, 3.0),))
    assert strength_curve(e, [0, 5, 9]).tolist() == [3.0, 3.0, 3.0]


def _w_dir(name: str, vec: np.ndarray, layers=None) -> Direction:
    return Direction(name=name, vector=vec, layers=layers, recommended=(-5, 5),
                     space="w", source="test", licence="test", test_data=True)


def test_w_edits_combine_by_summing_scaled_directions():
    rng = np.random.default_rng(0)
    piv = rng.standard_normal((3, 4, 8)).astype(np.float32)
    da, dg = rng.standard_normal(8), rng.standard_normal((4, 8))
    dirs = {"age": _w_dir("age", da), "gender": _w_dir("gender", dg),
            "pose": _w_dir("pose", da, layers=(0, 1))}
    edits = [Edit("age", keyframes=_kf((10, 0.0), (12, 4.0)), ease="linear"),
             Edit("gender", -2.0), Edit("pose", 2.0)]
    out = apply_w_edits(piv, edits, dirs, [10, 11, 12])
    k = np.array([0.0, 2.0, 4.0])
    pose = np.zeros((4, 8))
    pose[:2] = da
    want = piv + (k[:, None, None] / 2) * da + (-2.0 / 2) * dg + (2.0 / 2) * pose
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_s_edits_touch_conv_styles_only():
    styles = [np.ones((2, 3), np.float32), np.ones((2, 3), np.float32),
              np.ones((2, 5), np.float32)]
    is_rgb = [False, True, False]
    vec = np.arange(8, dtype=np.float64)  # conv channels: 3 + 5
    d = Direction(name="lipstick", vector=vec, layers=None, recommended=(-10, 10),
                  space="s", source="test", licence="test", test_data=True,
                  step_scale=1.0)
    out = apply_s_edits(styles, [Edit("lipstick", 2.0, space="s")],
                        {"lipstick": d}, [0, 1], is_rgb)
    np.testing.assert_allclose(out[0], 1 + 2 * vec[:3][None].repeat(2, 0))
    np.testing.assert_allclose(out[1], 1.0)  # ToRGB untouched
    np.testing.assert_allclose(out[2], 1 + 2 * vec[3:][None].repeat(2, 0))


def test_freeze_fine_layers_uses_the_mean_over_frames():
    piv = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    out = freeze_fine(piv, 2)
    np.testing.assert_array_equal(out[:, :2], piv[:, :2])
    np.testing.assert_allclose(out[0, 2:], piv[:, 2:].mean(0))
    assert freeze_fine(piv, None) is piv


def test_unknown_edit_names_the_installed_ones():
    dirs = {"age": _w_dir("age", np.ones(8)), "smile": _w_dir("smile", np.ones(8))}
    with pytest.raises(EditUnknown) as err:
        check_edits([Edit("age", 1.0), Edit("wings", 2.0)], dirs)
    assert err.value.code == "edit.unknown"
    assert "wings" in err.value.message and "age, smile" in err.value.message
    assert err.value.field == "edits[1].name"
    with pytest.raises(EditUnknown, match="S-space"):  # no S-space data installed
        check_edits([Edit("lipstick", 2.0, space="s")], dirs)
