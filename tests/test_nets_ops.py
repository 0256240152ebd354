"""Reference ops against direct, hand-written computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.nets.ops import (
    LRELU_GAIN,
    conv_transpose,
    grouped_layout,
    lrelu_agc,
    modulated_conv2d,
    modulated_weight,
    normalize_2nd_moment,
    reference_ops,
    setup_filter,
    shared_weight,
    stored_weight,
    to_grouped,
    upfirdn2d,
    upsample2d,
    weight_from_storage,
)
from engine.nets.stylegan2 import FullyConnectedLayer


pytestmark = pytest.mark.usefixtures("one_thread")


def _upfirdn_direct(x: np.ndarray, f: np.ndarray, up: int, down: int,
                    pad: tuple[int, int, int, int], gain: float) -> np.ndarray:
    """Textbook loops: zero-stuff, pad, true 2-D convolution ('valid'), decimate."""
    n, c, h, w = x.shape
    x0, x1, y0, y1 = pad
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    z = np.pad(z, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    z = z[:, :, max(-y0, 0): z.shape[2] - max(-y1, 0),
          max(-x0, 0): z.shape[3] - max(-x1, 0)]
    kh, kw = f.shape
    f = f * gain
    oh, ow = z.shape[2] - kh + 1, z.shape[3] - kw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            # true convolution: out[i, j] = sum z[i + a, j + b] * f[kh-1-a, kw-1-b]
            patch = z[:, :, i:i + kh, j:j + kw]
            out[:, :, i, j] = (patch * f[::-1, ::-1]).sum(axis=(2, 3))
    return out[:, :, ::down, ::down]


def test_setup_filter_is_normalised_outer_product():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    assert torch.allclose(f[0], torch.tensor([1, 3, 3, 1]) / 64.0)


@pytest.mark.parametrize("up,down,pad,gain,shape", [
    (1, 1, (1, 2, 2, 1), 1.0, (2, 3, 5, 6)),
    (2, 1, (2, 1, 2, 1), 4.0, (2, 3, 5, 6)),
    (1, 2, (1, 1, 1, 1), 1.0, (2, 3, 5, 6)),
    (2, 1, (-1, 2, 0, -1), 4.0, (2, 3, 5, 6)),
    (1, 1, (2, 1, 1, 2), 1.0, (1, 2, 44, 46)),  # large map: depthwise-conv path
    # symmetric pads ride on the convolution's own padding (x and y may differ)
    (1, 1, (2, 2, 1, 1), 1.0, (2, 3, 9, 7)),
    (2, 1, (1, 1, 2, 2), 4.0, (2, 3, 5, 6)),
])
def test_upfirdn2d_matches_direct_loops(up, down, pad, gain, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    f = rng.standard_normal((4, 3))  # asymmetric: catches a missing flip
    got = upfirdn2d(torch.tensor(x), torch.tensor(f), up=up, down=down, padding=pad,
                    gain=gain).numpy()
    want = _upfirdn_direct(x, f, up, down, pad, gain)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_upsample2d_keeps_constant_images_constant():
    x = torch.full((1, 2, 4, 4), 0.75)
    y = upsample2d(x, setup_filter([1, 3, 3, 1]))
    assert y.shape == (1, 2, 8, 8)
    # away from the zero-padded border the 2x FIR up-sampling has unit DC gain
    assert torch.allclose(y[:, :, 2:-2, 2:-2], torch.tensor(0.75))


def test_lrelu_in_place_gives_the_same_values_and_gradients():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = []
    for inplace in (False, True):
        y = lrelu_agc(x * 1.5, gain=1.0, clamp=2.0, inplace=inplace)
        out.append((y, torch.autograd.grad(y, x, g)[0]))
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_lrelu_gain_and_clamp():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(lrelu_agc(x), torch.tensor([-0.4, 0.0, 3.0]) * math.sqrt(2))
    assert LRELU_GAIN == pytest.approx(math.sqrt(2))
    assert lrelu_agc(x * 100, clamp=1.0).abs().max() == 1.0


def test_normalize_2nd_moment():
    z = torch.tensor([[3.0, 4.0]])
    want = z / math.sqrt((9 + 16) / 2)
    assert torch.allclose(normalize_2nd_moment(z), want, atol=1e-6)


def test_equalised_fc_gain():
    fc = FullyConnectedLayer(4, 3, lr_mul=0.01, bias_init=2.0)
    x = torch.randn(5, 4)
    w_eff = fc.weight * 0.01 / math.sqrt(4)
    b_eff = fc.bias * 0.01
    assert torch.allclose(fc(x), x @ w_eff.T + b_eff, atol=1e-6)
    # raw weights are stored divided by lr_mul (init std 1 / lr_mul)
    big = FullyConnectedLayer(256, 256, lr_mul=0.01)
    assert 80 < big.weight.std().item() < 120
    lrelu = FullyConnectedLayer(4, 3, activation="lrelu")
    ref = F.leaky_relu(x @ (lrelu.weight / 2).T + lrelu.bias, 0.2) * math.sqrt(2)
    assert torch.allclose(lrelu(x), ref, atol=1e-6)


def _modconv_reference(x, weight, styles, demodulate, up, padding, f):
    """Explicit per-sample loop: modulate, demodulate, then a plain conv per sample;
    up-sampling written as zero insertion + flipped 'full' conv + FIR."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n][None, :, None, None]
        if demodulate:
            w = w / torch.sqrt((w ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xn = x[n:n + 1]
        if up == 1:
            outs.append(F.conv2d(xn, w, padding=padding))
        else:
            # transposed conv == zero-stuff by 2, then correlate with the spatially
            # flipped kernel padded by k-1 ('full')
            k = w.shape[-1]
            z = torch.zeros(1, xn.shape[1], xn.shape[2] * 2 - 1, xn.shape[3] * 2 - 1,
                            dtype=x.dtype)
            z[:, :, ::2, ::2] = xn
            y = F.conv2d(F.pad(z, [k - 1] * 4), w.flip([2, 3]))
            outs.append(upfirdn2d(y, f, padding=(1, 1, 1, 1), gain=4))
    return torch.cat(outs)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_matches_per_sample_conv(up, demodulate, fused):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, padding=1,
                           resample_filter=f, fused=fused)
    want = _modconv_reference(x, weight, styles, demodulate, up, 1, f)
    assert got.shape == (3, 6, 5 * up, 5 * up)
    assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("mode", ["fused", "activations", "per_sample"])
def test_modulated_conv_bias_noise_gain_and_per_sample_weights(up, demodulate, mode):
    """gain * (conv + bias + noise), with the bias and gain folded into the
    convolution; per-sample weights equal separate calls with each sample's."""
    torch.manual_seed(3)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(3, 6, 4, 3, 3, dtype=torch.float64)  # one per sample
    styles = torch.randn(3, 4, dtype=torch.float64)
    bias = torch.randn(3, 6, dtype=torch.float64)
    noise = torch.randn(3, 1, 5 * up, 5 * up, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    gain = 2 ** 0.5
    want = torch.cat([
        gain * (_modconv_reference(x[i:i + 1], weight[i], styles[i:i + 1], demodulate,
                                   up, 1, f) + bias[i, None, :, None, None]
                + noise[i:i + 1]) for i in range(3)])
    kw = dict(demodulate=demodulate, up=up, padding=1, resample_filter=f, gain=gain)
    if mode == "per_sample":
        got = modulated_conv2d(x, weight, styles, noise=noise, bias=bias, **kw)
    else:  # shared weights: one sample at a time
        got = torch.cat([modulated_conv2d(
            x[i:i + 1], weight[i], styles[i:i + 1], noise=noise[i:i + 1],
            bias=bias[i], fused=mode == "fused", **kw) for i in range(3)])
    assert torch.allclose(got, want, atol=1e-10)


def _modulated_weight_formula(W, s, demodulate, gain):
    """The textbook per-sample formula, through plain autograd: [N, O, I, kh, kw]."""
    w = W * s[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    return w * gain


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k", [3, 1])
def test_modulated_weight_values_and_closed_form_gradients(transposed, demodulate, k):
    """The custom backward (closed form) equals autograd through the formula, for
    the weights and the styles, in the stored layout the stitcher uses."""
    torch.manual_seed(4)
    n, o, i = 3, 5, 4
    W0 = torch.randn(n, o, i, k, k, dtype=torch.float64)
    W = weight_from_storage(stored_weight(W0, transposed), transposed)
    W = W.detach().requires_grad_(True)
    s = (torch.rand(n, i, dtype=torch.float64) + 0.5).requires_grad_(True)
    gain = 1.7
    got = modulated_weight(W, s, demodulate=demodulate, gain=gain,
                           transposed=transposed)
    # the convolution's weight: [N*O, I, k, k] (transposed: [N*I, O, k, k]),
    # channels-last
    assert got.is_contiguous(memory_format=torch.channels_last)
    got5 = (got.view(n, i, o, k, k).transpose(1, 2) if transposed
            else got.view(n, o, i, k, k))
    want = _modulated_weight_formula(W, s, demodulate, gain)
    assert torch.allclose(got5, want, atol=1e-12)
    g = torch.randn_like(want)
    gW, gs = torch.autograd.grad((got5 * g).sum(), [W, s])
    wW, ws = torch.autograd.grad((want * g).sum(), [W, s])
    assert torch.allclose(gW, wW, atol=1e-10)
    assert torch.allclose(gs, ws, atol=1e-10)
    # and gradcheck's finite differences agree
    assert torch.autograd.gradcheck(
        lambda a, b: modulated_weight(a, b, demodulate=demodulate, gain=gain,
                                      transposed=transposed), (W, s))


def test_modulated_weight_under_autocast_is_bfloat16_in_conv_layout():
    torch.manual_seed(5)
    W = torch.randn(2, 6, 4, 3, 3)
    s = torch.rand(2, 4) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = modulated_weight(W, s)
    assert got.dtype == torch.bfloat16 and got.shape == (12, 4, 3, 3)
    want = _modulated_weight_formula(W, s, True, 1.0).reshape(12, 4, 3, 3)
    assert torch.allclose(got.float(), want, rtol=1e-2, atol=1e-3)


def test_per_sample_modulated_conv_gradients_match_separate_samples():
    """Gradients of the grouped per-sample path (custom weight backward, channels-
    last gradient hand-off) equal those of one shared-weight call per sample."""
    torch.manual_seed(6)
    f = setup_filter([1, 3, 3, 1]).double()
    for up, k in ((1, 3), (2, 3), (1, 1)):
        x = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
        W = torch.randn(3, 6, 4, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
        s = torch.rand(3, 4, dtype=torch.float64) + 0.5
        kw = dict(up=up, padding=k // 2, resample_filter=f, gain=1.3,
                  demodulate=k == 3)
        y = modulated_conv2d(x, W, s, bias=b, **kw)
        g = torch.randn_like(y)
        got = torch.autograd.grad((y * g).sum(), [x, W, b])
        ys = torch.cat([modulated_conv2d(x[j:j + 1], W[j], s[j:j + 1], bias=b[j],
                                         fused=True, **kw) for j in range(3)])
        want = torch.autograd.grad((ys * g).sum(), [x, W, b])
        for a, c in zip(got, want):
            assert torch.allclose(a, c, atol=1e-10)


def test_demodulation_normalises_output_scale():
    # unit-variance input, any styles: demodulated outputs have ~unit variance
    torch.manual_seed(2)
    x = torch.randn(2, 64, 16, 16)
    w = torch.randn(32, 64, 3, 3)
    s = torch.rand(2, 64) * 10
    y = modulated_conv2d(x, w, s, padding=1)
    assert 0.7 < y.std().item() < 1.3


@pytest.mark.parametrize("k", [1, 3])
def test_grouped_conv_gradients_with_one_thread(one_thread, k):
    """float32 per-sample weights behind a grouped convolution, one CPU thread, the
    input in the grouped layout a previous grouped layer hands on (batch stride
    N*C after the reshape): with one thread oneDNN computed wrong 1x1 weight
    gradients from such an input (engine/nets/ops.py, channels_last)."""
    torch.manual_seed(7)
    n, c, o, r = 3, 64, 3, 8
    prev = grouped_layout(torch.randn(n, c, r, r))  # as a grouped conv leaves it
    x = prev.detach().abs().requires_grad_(True)
    W = (torch.randn(n, o, c, k, k) / c ** 0.5).requires_grad_(True)
    s = torch.rand(n, c) + 0.5
    y = modulated_conv2d(x, W, s, padding=k // 2, demodulate=k == 3)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), [x, W])
    ys = torch.cat([modulated_conv2d(x[j:j + 1].contiguous(), W[j], s[j:j + 1],
                                     padding=k // 2, demodulate=k == 3, fused=False)
                    for j in range(n)])
    want = torch.autograd.grad((ys * g).sum(), [x, W])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("up", [1, 2])
def test_shared_weight_through_the_closed_form_modulation(up):
    """``fused="modulated"``: a shared weight seen as per-sample weights (the PTI
    formulation ``modulated``) gives the values and gradients of the plain paths."""
    torch.manual_seed(8)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(2, 4, dtype=torch.float64) + 0.5).requires_grad_(True)
    kw = dict(up=up, padding=1, resample_filter=f, gain=1.3)
    outs = []
    for fused in ("modulated", True, False):
        y = modulated_conv2d(x, W, s, fused=fused, **kw)
        outs.append([y, *torch.autograd.grad(y.square().sum(), [x, W, s])])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.allclose(a, b, atol=1e-9)


def test_hybrid_picks_a_side_per_layer_and_computes_the_same():
    """``fused="hybrid"`` (the PTI and stitching formulation ``hybrid``) scales the
    activations where they are smaller than the weight and modulates the weight
    elsewhere; values and gradients equal the plain paths' (float64), on a
    network that has layers of both kinds."""
    from engine.nets.ops import HYBRID_FACTOR, _hybrid
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

    G = Generator(**dict(OFFICIAL_GENERATOR_KWARGS, img_resolution=64,
                         channel_base=4096, channel_max=32, w_dim=32, z_dim=32)
                  ).double().requires_grad_(False)
    G.synthesis.requires_grad_(True)
    # 32 channels everywhere: with HYBRID_FACTOR 8, 8 * 32*32*9 weights outweigh
    # the input and output activations (r*r*64, or in*in*(32 + 4*32) for the
    # up-sampling layers) up to 32 px, at 64 px the reverse; the 1x1 ToRGB
    # weights are always the smaller side
    assert HYBRID_FACTOR == 8.0
    w3 = torch.zeros(32, 32, 3, 3, dtype=torch.float64)
    assert _hybrid(torch.zeros(1, 32, 32, 32), w3, 1) is False
    assert _hybrid(torch.zeros(1, 32, 64, 64), w3, 1) is True
    assert _hybrid(torch.zeros(2, 32, 64, 64), w3, 1) == "modulated"
    assert _hybrid(torch.zeros(1, 32, 16, 16), w3, 2) is False
    assert _hybrid(torch.zeros(1, 32, 32, 32), w3, 2) is True  # 4x the output
    assert _hybrid(torch.zeros(2, 32, 16, 16), w3[None].expand(2, -1, -1, -1, -1),
                   1) == "modulated"  # per-sample weights: no activation side
    torch.manual_seed(9)
    ws = G.mapping(torch.randn(2, 32, dtype=torch.float64))
    outs = []
    for fused in ("hybrid", True, False):
        for n in (1, 2):
            img = G.synthesis(ws[:n], fused=fused)
            grads = torch.autograd.grad(img.square().sum(),
                                        list(G.synthesis.parameters()))
            outs.append((fused, n, [img, *grads]))
    for _, n, got in outs[2:]:
        want = outs[n - 1][2]
        for a, b in zip(want, got):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stored", [False, True])
def test_shared_weight_is_the_plain_ops_in_one_pass_each_way(transposed, demodulate,
                                                              layout, stored):
    """The activation-scaling path's weight side (:class:`_SharedWeight`): the
    convolution's weight (transposed for the up-sampling one) and the kernel sums
    of squares, with the gradients of the plain ops, returned in the parameter's
    dtype and layout; the weight comes in the input's layout. ``stored``: the
    parameter is the view of a weight kept in the convolution's order
    (:func:`stored_weight`, as stitching keeps each frame's copy), whose gradient
    must come back in that order (the optimiser then copies nothing)."""
    torch.manual_seed(11)
    W = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    if stored:
        S = stored_weight(W.detach(), transposed).requires_grad_(True)
        W = weight_from_storage(S, transposed)
        assert torch.equal(W, weight_from_storage(stored_weight(W, transposed),
                                                  transposed))
        assert S.is_contiguous() and not W.is_contiguous()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, w2 = shared_weight(W, x, transposed=transposed, demodulate=demodulate)
    plain = W.transpose(0, 1) if transposed else W
    assert torch.equal(w, plain)
    assert w.is_contiguous(memory_format=torch.channels_last
                           if layout == "channels_last" else torch.contiguous_format)
    g = torch.randn_like(w)
    if demodulate:
        torch.testing.assert_close(w2, W.square().sum(dim=[2, 3]), rtol=1e-14,
                                   atol=0)  # summed in another order
        g2 = torch.randn_like(w2)
        got = torch.autograd.grad([w, w2], W, [g, g2])[0]
        want = torch.autograd.grad([plain, W.square().sum(dim=[2, 3])], W, [g, g2])[0]
    else:
        assert w2 is None
        got = torch.autograd.grad(w, W, g)[0]
        want = torch.autograd.grad(plain, W, g)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.dtype == W.dtype and got.stride() == W.stride()
    # only one of the two used: the other gradient is absent, not zeros
    if demodulate:
        only = torch.autograd.grad(shared_weight(W, x, transposed=transposed,
                                                 demodulate=True)[1].sum(), W)[0]
        torch.testing.assert_close(only, 2 * W.detach())


def test_shared_weight_under_autocast_is_cast_once_into_the_convolution_layout():
    W = torch.randn(8, 4, 3, 3, requires_grad=True)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w, w2 = shared_weight(W, x, transposed=False, demodulate=True)
    assert w.dtype == torch.bfloat16 and w2.dtype == torch.float32
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(w, W.detach().bfloat16())
    (gw,) = torch.autograd.grad(w.float().sum() + w2.sum(), W)
    assert gw.dtype == torch.float32
    torch.testing.assert_close(gw, 1 + 2 * W.detach())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_to_grouped_copies_once_and_hands_the_gradient_back_in_the_input_layout(
        layout):
    torch.manual_seed(12)
    fmt = (torch.channels_last if layout == "channels_last"
           else torch.contiguous_format)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(
        memory_format=fmt).requires_grad_(True)
    y = to_grouped(x)
    assert y.shape == (1, 12, 5, 6) and y.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(y, x.reshape(1, 12, 5, 6))
    g = torch.randn(1, 12, 5, 6, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, g.reshape(3, 4, 5, 6))
    assert gx.stride() == x.stride()
    # already in the grouped layout: a view, no copy
    xg = grouped_layout(x.detach())
    assert to_grouped(xg).data_ptr() == xg.data_ptr()


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_transposed_convolution_as_the_strided_convolutions_input_gradient(groups,
                                                                          layout):
    """:class:`_TransposedConv` (the up-sampling convolutions' forward as the
    input gradient of the strided convolution) gives ``conv_transpose2d``'s
    values and gradients, in float64 to the last bit; under ``reference_ops``
    ``conv_transpose2d`` itself runs."""
    torch.manual_seed(13)
    fmt = (torch.channels_last if layout == "channels_last"
           else torch.contiguous_format)
    x = torch.randn(2, 4 * groups, 5, 6, dtype=torch.float64).contiguous(
        memory_format=fmt).requires_grad_(True)
    w = torch.randn(4 * groups, 3, 3, 3, dtype=torch.float64).requires_grad_(True)
    g = torch.randn(2, 3 * groups, 11, 13, dtype=torch.float64)
    got = conv_transpose(x, w, 2, groups)
    want = F.conv_transpose2d(x, w, stride=2, groups=groups)
    assert got.shape == want.shape == (2, 3 * groups, 11, 13)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, [x, w], g),
                    torch.autograd.grad(want, [x, w], g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)
    xb, wb = x.detach().bfloat16(), w.detach().bfloat16()
    with reference_ops():
        assert torch.equal(conv_transpose(xb, wb, 2, groups),
                           F.conv_transpose2d(xb, wb, stride=2, groups=groups))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = conv_transpose(x.detach().float(), w.detach().float(), 2, groups)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), want.float(), rtol=2e-2, atol=5e-2)
