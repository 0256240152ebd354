"""Batched stitching tuning (stacked per-frame generator copies through grouped
convolutions) against the reference's loop (one deep copy and one torch Adam per
frame), the masked loss, per-frame early stop, bfloat16, and the fused Adam."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fsexchange.options import StitchConfig
from engine.stages.mask import stitch_masks
from engine.nets.stylegan2 import Generator
from engine.stages.stitch_tune import BatchedStitcher, masked_loss, tune_reference
from engine.models.store import TINY_GENERATOR_KWARGS

# Independence within float tolerance: the stacked copies run as one grouped
# convolution, which sums in a different order than per-frame calls.
ATOL = 2e-4


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    G = Generator(**TINY_GENERATOR_KWARGS).eval().requires_grad_(False)
    R = G.img_resolution
    with torch.no_grad():
        ws = G.mapping(torch.randn(3, G.z_dim), truncation_psi=0.7)
        target = G.synthesis(G.mapping(torch.randn(3, G.z_dim))).clamp(-1, 1)
        styles = [s.detach() for s in G.styles(ws)]
    yy, xx = np.mgrid[:R, :R]
    face = ((xx - R / 2) ** 2 / (0.3 * R) ** 2 + (yy - R / 2) ** 2 / (0.4 * R) ** 2) < 1
    _, border, content = (torch.from_numpy(np.stack([m] * 3))
                          for m in stitch_masks(face))
    return G, styles, target, border, content


def test_masked_loss_is_the_reference_formula():
    a = torch.rand(2, 3, 5, 5)
    b = torch.rand(2, 3, 5, 5)
    m = torch.rand(2, 5, 5)
    want = ((a * m[:, None] - b * m[:, None]) ** 2).sum((1, 2, 3)) / m.sum((1, 2))
    torch.testing.assert_close(masked_loss(a, b, m), want)
    l1 = (a * m[:, None] - b * m[:, None]).abs().sum((1, 2, 3)) / m.sum((1, 2))
    torch.testing.assert_close(masked_loss(a, b, m, l1=True), l1)


def test_batched_equals_one_generator_per_frame(setup):
    G, styles, target, border, content = setup
    cfg = StitchConfig(steps=6)
    sl = slice(0, 2)
    ours = BatchedStitcher(G, cfg).tune([s[sl] for s in styles], target[sl],
                                        border[sl], content[sl])
    ref = tune_reference(G, [s[sl] for s in styles], target[sl], border[sl],
                         content[sl], cfg)
    diff = (ours.images - ref.images).abs().max().item()
    print(f"\nbatched vs per-frame reference, 2 frames x 6 steps: max |image diff| "
          f"{diff:.2e}; border loss {ref.before} -> {ref.after}")
    assert diff < ATOL
    np.testing.assert_allclose(ours.curves, ref.curves, rtol=1e-4, atol=1e-6)
    assert ours.steps == ref.steps == [6, 6]
    assert all(a < b for a, b in zip(ours.after, ours.before))
    # each frame alone in its own batch gives the same frame
    alone = BatchedStitcher(G, cfg).tune([s[1:2] for s in styles], target[1:2],
                                         border[1:2], content[1:2])
    assert (alone.images[0] - ours.images[1]).abs().max().item() < ATOL
    # the PTI generator itself is untouched
    assert all(not p.requires_grad for p in G.parameters())


def test_early_stop_per_frame(setup):
    """A frame whose border already matches stops before its first update and keeps
    its weights; the others in the batch go on."""
    G, styles, target, border, content = setup
    with torch.no_grad():
        own = G.synthesis_from_styles([s[:1] for s in styles])
    tgt = target.clone()
    tgt[0] = own[0]  # frame 0: border loss 0 at step 0
    cfg = StitchConfig(steps=5, border_loss_threshold=1e-6)
    ours = BatchedStitcher(G, cfg).tune(styles, tgt, border, content)
    ref = tune_reference(G, styles, tgt, border, content, cfg)
    assert ours.steps == ref.steps == [0, 5, 5]
    assert len(ours.curves[0]) == 1 and len(ours.curves[1]) == 5
    assert (ours.images[0] - own[0]).abs().max().item() < 1e-5
    assert (ours.images - ref.images).abs().max().item() < ATOL
    # a threshold above every loss stops every frame at once: untuned output
    stop = BatchedStitcher(G, replace(cfg, border_loss_threshold=1e9)).tune(
        styles, tgt, border, content)
    assert stop.steps == [0, 0, 0]


def test_bfloat16_tunes_like_float32(setup):
    """Mixed precision (options.dtype bfloat16) reaches the reference's border loss;
    the delivered crops are rendered in float32."""
    G, styles, target, border, content = setup
    cfg = StitchConfig(steps=8)
    ref = tune_reference(G, styles, target, border, content, cfg)
    bf = BatchedStitcher(G, cfg, "bfloat16").tune(styles, target, border, content)
    assert bf.images.dtype == torch.float32
    rel = np.abs(np.array(bf.after) - np.array(ref.after)) / np.array(ref.after)
    gain_ref = np.array(ref.before) - np.array(ref.after)
    gain_bf = np.array(bf.before) - np.array(bf.after)
    print(f"\nborder loss after 8 steps: reference {ref.after}, bfloat16 {bf.after}")
    assert rel.max() < 0.02
    assert np.all(gain_bf > 0.8 * gain_ref)
    assert (bf.images - ref.images).abs().max().item() < 0.05


def test_fused_adam_step_with_gradients_in_another_layout():
    """torch's fused CPU Adam reads a gradient as if laid out like its parameter;
    _adam_step brings gradients to the parameter layout, so the update equals
    torch.optim.Adam whatever layout autograd returned."""
    from engine.nets.ops import grouped_weight_layout
    from engine.stages.stitch_tune import _adam_step

    torch.manual_seed(4)
    p0 = grouped_weight_layout(torch.randn(3, 8, 8, 3, 3))
    b0 = torch.randn(3, 8)
    params = [p0.clone(), b0.clone()]
    m1 = [torch.zeros_like(t) for t in params]
    m2 = [torch.zeros_like(t) for t in params]
    ref = [p0.clone().contiguous().requires_grad_(True),
           b0.clone().requires_grad_(True)]
    opt = torch.optim.Adam(ref, lr=1e-2)
    for t in range(1, 4):
        g = torch.randn(3, 8, 8, 3, 3)
        grads = [g.contiguous(), torch.randn(3, 8)]  # not the parameter's layout
        assert grads[0].stride() != params[0].stride()
        _adam_step(params, grads, m1, m2, t, 1e-2, (0.9, 0.999), 1e-8)
        for r, gg in zip(ref, grads):
            r.grad = gg.clone()
        opt.step()
        for a, b in zip(params, ref):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layout"):
        _adam_step(params, grads, [m.contiguous() for m in m1], m2, 4, 1e-2,
                   (0.9, 0.999), 1e-8)
