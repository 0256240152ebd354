"""engine.stages.mask: reference morphology (docs/reference.md "Stitching tuning"),
scaling, hull fallback."""

from __future__ import annotations

import numpy as np
import pytest

from engine.stages import mask
from fsexchange.options import MaskConfig
from fsexchange.errors import DocumentFieldError, ModelMissing


def _square(size: int, a: int, b: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[a:b, a:b] = True
    return m


def test_stitch_masks_at_1024_follow_the_reference():
    # foreground 300..699 at 1024 = 150..349 at the 512 work size
    full, border, content = mask.stitch_masks(_square(1024, 300, 700))
    for a in (full, border, content):
        assert a.shape == (1024, 1024) and a.dtype == np.float32
        assert a.min() >= 0 and a.max() <= 1
    # full = dilate(M, 51x51) at 512: 125..374, i.e. 1024 px ~250..749
    assert full[500, 252] == 1 and full[500, 746] == 1
    assert full[500, 246] == 0 and full[500, 752] == 0
    # border = full - M (M is far from the crop edge): the 25 px ring at 512
    assert border[500, 270] == 1 and border[500, 500] == 0 and border[500, 240] == 0
    # content = M - border = M here
    assert content[500, 500] == 1 and content[500, 290] == 0
    np.testing.assert_allclose(content + border, np.maximum(full, content), atol=1e-6)
    # paste alpha is the same dilated mask (no blur by default)
    np.testing.assert_array_equal(mask.paste_alpha(_square(1024, 300, 700)), full)


def test_mask_touching_the_crop_edge_goes_to_the_border():
    m = _square(1024, 0, 400)  # touches the top-left edges
    full, border, content = mask.stitch_masks(m)
    # E = within 25 px (at 512) of the edge: mask pixels there are border, not content
    assert border[10, 200] == 1 and content[10, 200] == 0
    assert border[200, 200] == 0 and content[200, 200] == 1


def test_align_corners_upsampling_matches_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    img = rng.random((32, 32)).astype(np.float32)
    ours = mask._upsample_align_corners(img, 64)
    ref = F.interpolate(torch.from_numpy(img)[None, None], size=(64, 64),
                        mode="bilinear", align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_sizes_scale_from_1024():
    # R = 256: work size 128, outer radius 25 * 256/1024 = 6 (rounded)
    m = _square(256, 100, 156)  # 50..77 at 128
    full, border, content = mask.stitch_masks(m)
    wide = full[128] > 0.5
    assert wide.sum() == pytest.approx((56 + 2 * 6 * 2), abs=3)
    assert mask.stitch_masks(_square(64, 20, 44))[0].shape == (64, 64)
    # a bigger outer dilation widens the alpha
    a50 = mask.paste_alpha(m).sum()
    a100 = mask.paste_alpha(m, MaskConfig(outer_dilation=100)).sum()
    assert a100 > a50


def test_feathered_alpha_is_soft_and_inside_the_hard_one():
    m = _square(512, 150, 350)
    hard = mask.paste_alpha(m)
    soft = mask.paste_alpha(m, MaskConfig(feather=True))
    assert soft.shape == hard.shape and soft.max() <= 1 and soft.min() >= 0
    assert soft.sum() < hard.sum()
    assert ((soft > 0.01) & (soft < 0.99)).sum() > 1000  # a real gradient
    assert soft[256, 256] == pytest.approx(1.0, abs=1e-3)


def test_hull_mask_covers_face_and_forehead():
    lm = np.zeros((68, 2))
    t = np.linspace(0, np.pi, 17)
    lm[0:17] = np.stack([50 - 30 * np.cos(t), 50 + 30 * np.sin(t)], 1)  # jaw
    lm[17:27] = np.stack([np.linspace(25, 75, 10), np.full(10, 35.0)], 1)  # brows
    lm[36:48] = (50.0, 45.0)
    m = mask.hull_mask(lm, 100)
    assert m.dtype == bool and m.shape == (100, 100)
    assert m[60, 50] and m[36, 50]  # cheeks and brows
    assert m[25, 50]  # forehead above the brows
    assert not m[5, 5] and not m[95, 50]


def test_mask_builder_sources(tmp_path):
    b = mask.MaskBuilder(MaskConfig(), 64)
    assert b.source == "hull"
    with pytest.raises(ModelMissing, match="79999_iter.pth"):
        mask.MaskBuilder(MaskConfig(parser="bisenet"), 64)
    with pytest.raises(DocumentFieldError):
        mask.MaskBuilder(MaskConfig(parser="sam"), 64)
    assert mask.MaskBuilder(MaskConfig(parser="hull"), 64,
                            parser_path=tmp_path / "x.pth").source == "hull"


def test_foreground_classes():
    labels = np.arange(19).reshape(1, 19)
    fg = mask.foreground_from_labels(labels)[0]
    assert not fg[0] and not fg[16] and not fg[18]
    assert fg[1] and fg[17] and fg[14] and fg[6]  # skin, hair, neck, glasses


# --- fidelity to STIT (issue 16): feather border, edge band, whole-image border ------


def _stit_feather(full: np.ndarray, r: int) -> np.ndarray:
    """STIT's paste_image_mask(radius=r) on the full mask, as its code does it: an
    8-bit mask, cv2.erode with border value 0, cv2.GaussianBlur with sigma 0."""
    import cv2

    u8 = np.rint(full * 255).astype(np.uint8)
    k = (2 * r + 1, 2 * r + 1)
    eroded = cv2.erode(u8, np.ones(k), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.GaussianBlur(eroded, k, sigmaX=0).astype(np.float32) / 255


def test_feathered_alpha_fades_out_at_the_crop_edge_as_stit():
    # a face with a neck that runs out of the crop's bottom edge
    m = np.zeros((1024, 1024), bool)
    m[300:1024, 350:674] = True
    soft = mask.paste_alpha(m, MaskConfig(feather=True))
    full = mask.paste_alpha(m)
    assert full[1000:1024, 512].min() == 1.0  # the hard alpha is opaque there
    col = soft[1000:1024, 512]
    # STIT: 0.0-0.43 over rows 1000-1023 (erosion treats outside the crop as 0)
    assert col[-1] < 0.01 and 0.3 < col[0] < 0.5
    assert np.all(np.diff(col) <= 1e-6)
    np.testing.assert_allclose(soft, _stit_feather(full, 25), atol=2.5 / 255)
    assert soft[600, 512] == pytest.approx(1.0, abs=1e-3)


def test_feather_radius_follows_the_outer_dilation():
    assert mask.feather_radius(MaskConfig(), 1024) == 25
    assert mask.feather_radius(MaskConfig(outer_dilation=80), 1024) == 40
    assert mask.feather_radius(MaskConfig(), 256) == 6


def test_border_band_follows_the_outer_dilation_unless_set():
    m = _square(1024, 0, 600)  # touches the top and left edges
    for outer in (50, 100):
        _, border, content = mask.stitch_masks(m, MaskConfig(outer_dilation=outer))
        band = outer // 2  # at the 512 work size: rows < band are border
        assert border[2 * band - 6, 300] == 1 and content[2 * band - 6, 300] == 0
        assert border[2 * band + 6, 300] == 0 and content[2 * band + 6, 300] == 1
    _, border, _ = mask.stitch_masks(m, MaskConfig(outer_dilation=100, border_band=20))
    assert border[14, 300] == 1 and border[26, 300] == 0
    assert MaskConfig().border_band is None


def test_whole_image_border_is_everything_outside_the_face():
    m = _square(1024, 300, 700)
    full, border, content = mask.stitch_masks(m, MaskConfig(whole_image_border=True))
    full0, border0, content0 = mask.stitch_masks(m)
    np.testing.assert_array_equal(full, full0)  # paste-back keeps the dilated mask
    np.testing.assert_array_equal(content, content0)
    assert border[500, 100] == 1 and border0[500, 100] == 0  # far outside the ring
    assert border[20, 20] == 1 and border[500, 500] == 0
    # border = 1 - M and content = M at the work size: together, the whole crop
    np.testing.assert_allclose(border + content, 1.0, atol=1e-5)
