"""Reference ops for the StyleGAN2 family, in plain PyTorch.

Written from the published descriptions (Karras et al. 2020, "Analyzing and Improving
the Image Quality of StyleGAN"; docs/models.md "Generator arithmetic"), not from
NVIDIA's source. There
are no fused CUDA kernels here and nothing compiles at import time.

Every function is ``torch.func`` friendly: no in-place updates of inputs or
parameters, no ``.item()``, no data-dependent Python control flow, so
``functional_call`` with substituted (or stacked per-sample) parameters works.
``vmap`` only inside :func:`plain_layout`: the convolutions otherwise ask for
channels-last layouts, which vmap cannot query; per-frame copies normally go in as
per-sample parameters instead (:func:`modulated_conv2d`).

Conventions (the NVIDIA ones, so ``G_ema`` tensors load unchanged):

- FIR filters are stored normalised (sum 1) as 2-D ``[kh, kw]`` buffers; the gain
  (4 for 2x up-sampling) is applied where the filter is used.
- ``padding`` for :func:`upfirdn2d` is ``(x0, x1, y0, y1)``; negative values crop.
- Conv weights are ``[out, in, kh, kw]`` and carry no equalised-LR gain (modulated
  convs demodulate, which cancels any constant gain); fully connected layers store
  raw weights and apply ``lr_mul / sqrt(in)`` at run time.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "lrelu_agc",
    "normalize_2nd_moment",
    "modulated_conv2d",
    "grouped_layout",
    "to_grouped",
    "shared_weight",
    "grouped_weight_layout",
    "stored_weight",
    "weight_from_storage",
    "modulated_weight",
    "channels_last",
    "plain_layout",
    "reference_ops",
    "conv_transpose",
    "LRELU_GAIN",
]

#: leaky-ReLU(0.2) output gain that keeps unit variance (StyleGAN "def_gain").
LRELU_GAIN = math.sqrt(2.0)

# True inside plain_layout(): tensors keep their default (NCHW) layout
_PLAIN = contextvars.ContextVar("facestitch_plain_layout", default=False)


@contextlib.contextmanager
def plain_layout() -> Iterator[None]:
    """Within the block the network leaves every tensor in its default layout
    instead of asking for channels-last (which ``torch.func.vmap`` cannot query):
    the stitching stage's ``vmap`` formulation renders per-frame copies this way.
    Values are the same; only speed differs."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last layout (a no-op copy-wise when it already is), or
    ``x`` itself inside :func:`plain_layout`.

    A batch of one gets the canonical stride on its size-1 batch axis (a view):
    the grouped layout's ``[N, C, H, W] -> [1, N*C, H, W]`` reshape leaves that
    stride at ``N*C`` instead of ``N*C*H*W``, which means nothing for the
    addressing, but with one thread oneDNN's backward of a grouped 1x1
    convolution read such an input wrongly: the ToRGB weight gradients of the
    stitcher's stacked copies came out wrong (torch 2.13 CPU; two threads were
    right; ``tests/test_nets_ops.py``)."""
    if _PLAIN.get():
        return x
    x = x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 4 and x.shape[0] == 1:
        c, h, w = x.shape[1:]
        canonical = (c * h * w, 1, w * c, c)
        if x.stride() != canonical:
            x = _Restride.apply(x, canonical)
    return x


class _Restride(torch.autograd.Function):
    """``x`` viewed with other strides on size-1 axes only (same addresses); the
    gradient passes through unchanged (any strides are fine for it)."""

    @staticmethod
    def forward(x: Tensor, strides: tuple[int, ...]) -> Tensor:
        return x.as_strided(x.shape, strides)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        return g, None


def setup_filter(f: Sequence[float] | Tensor, normalize: bool = True) -> Tensor:
    """A separable 1-D FIR ``f`` as its normalised 2-D outer product ``[k, k]``.

    ``setup_filter([1, 3, 3, 1])`` is the StyleGAN2 resampling filter (sum 1).
    """
    t = torch.as_tensor(f, dtype=torch.float32)
    if t.ndim == 1:
        t = torch.outer(t, t)
    if t.ndim != 2:
        raise ValueError(f"filter must be 1-D or 2-D, got shape {tuple(t.shape)}")
    if normalize:
        t = t / t.sum()
    return t


def upfirdn2d(x: Tensor, f: Tensor, up: int = 1, down: int = 1,
              padding: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0,
              flip_filter: bool = False) -> Tensor:
    """Up-sample by zero insertion, pad, FIR filter, down-sample (pure PyTorch).

    Args:
        x: ``[N, C, H, W]``.
        f: 2-D filter ``[kh, kw]`` (separable filters are given as their outer
            product); applied as a true convolution unless ``flip_filter``.
        up, down: integer factors (same on both axes).
        padding: ``(x0, x1, y0, y1)`` applied after zero insertion; negative crops.
        gain: overall signal gain; the filter is multiplied by it (a 2-D filter
            carries the whole gain, so 2x up-sampling uses ``gain=4``).

    Returns:
        ``[N, C, (H*up + y0 + y1 - kh) // down + 1,
        (W*up + x0 + x1 - kw) // down + 1]``.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N, C, H, W], got {tuple(x.shape)}")
    n, c, h, w = x.shape
    x0, x1, y0, y1 = (int(p) for p in padding)
    if up > 1:  # zero insertion: [N, C, H, 1, W, 1] -> pad the unit axes -> merge
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    conv_pad = (0, 0)
    if x0 == x1 >= 0 and y0 == y1 >= 0:
        # symmetric zero padding rides on the convolution: F.pad wrote a padded copy
        # (a fill and a copy, and a slice + copy in the backward) of the up-sampling
        # convs' largest maps
        conv_pad = (y0, x0)
    else:
        x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
        if min(x0, x1, y0, y1) < 0:
            hh, ww = x.shape[2], x.shape[3]
            x = x[:, :, max(-y0, 0): hh - max(-y1, 0), max(-x0, 0): ww - max(-x1, 0)]
    f = f.to(dtype=x.dtype, device=x.device) * gain
    if not flip_filter:  # conv2d correlates; a true convolution flips the filter
        f = f.flip([0, 1])
    kh, kw = f.shape
    # One depthwise conv (oneDNN on the CPU). It beats kh*kw shifted multiply-adds
    # at every size we run, batch 1 included: 2-5x on fwd+bwd for 8-64 px maps
    # with 3-512 channels (torch 2.13, 2 cores; measured for issue 5).
    weight = f[None, None].expand(c, 1, kh, kw).contiguous()
    x = F.conv2d(x, weight, padding=conv_pad, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """FIR up-sampling by ``up``, centred: ``[N, C, H, W] -> [N, C, H*up, W*up]``."""
    kw = f.shape[-1]
    p0 = (kw + up - 1) // 2
    p1 = (kw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def lrelu_agc(x: Tensor, gain: float = LRELU_GAIN, clamp: float | None = None,
              slope: float = 0.2, inplace: bool = False) -> Tensor:
    """``leaky_relu(x, 0.2) * gain``, then optionally clamped to ``[-clamp, clamp]``.

    ``inplace`` overwrites ``x`` (the caller's fresh, unsaved tensor; not under
    :func:`plain_layout`, where ``torch.func.vmap`` runs): no new activation is
    allocated, and the backward reads the output (the slope is positive)."""
    x = F.leaky_relu(x, slope, inplace=inplace and not _PLAIN.get())
    if gain != 1.0:  # the synthesis layers fold their gain into the conv: no pass
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` along ``dim`` (StyleGAN's pixel norm of z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _demod_coefficients(w2: Tensor, styles: Tensor) -> Tensor:
    # w2 [O, I] = sum_k weight[o, i, k]^2, styles [N, I] -> [N, O]; 1 / ||w * s||
    # over (I, kh, kw) = rsqrt(sum_i s[n, i]^2 * w2[o, i]): one [N, I] x [I, O]
    # product instead of N modulated copies of the weight (same value up to
    # rounding).
    return (styles.square() @ w2.t() + 1e-8).rsqrt()


class _SharedWeight(torch.autograd.Function):
    """The weight side of the activation-scaling path in one pass each way.

    Forward: the shared weight ``W [O, I, kh, kw]`` as the convolution reads it
    (transposed to ``[I, O, kh, kw]`` for the up-sampling one, in the autocast
    dtype, in the input's memory format), and ``w2 [O, I] = sum_k W^2`` for the
    demodulation. Backward: the convolution's weight gradient (transposed back)
    plus the demodulation's ``2 W dL/dw2`` in one pass, in ``W``'s dtype and
    layout. Through autograd the same took about a dozen passes over the weight
    per layer and step: the cast and a layout copy forward, the layout copy
    again in the convolution's backward, the cast back, ``square``'s backward,
    and the accumulation of the two gradients, strided when the up-sampling
    convolution's gradient arrives transposed (the 512-channel layers' 2.4 M
    elements each; 8 % of a bfloat16 PTI step at 256 px, official channels).
    """

    @staticmethod
    def forward(W: Tensor, dtype: torch.dtype, transposed: bool,
                memory_format: torch.memory_format, demodulate: bool
                ) -> tuple[Tensor, Tensor | None]:
        if transposed and memory_format == torch.channels_last and W.is_contiguous():
            # [I, O, kh, kw] channels-last is W's memory transposed as a matrix
            # [O, I*kh*kw] -> [I*kh*kw, O]: torch's blocked 2-D transpose
            o, i, kh, kw = W.shape
            wb = _transpose2d(W.to(dtype).view(o, i * kh * kw)).view(
                i, kh, kw, o).permute(0, 3, 1, 2)
        else:
            w = W.transpose(0, 1) if transposed else W
            wb = torch.empty(w.shape, dtype=dtype, device=W.device,
                             memory_format=memory_format).copy_(w)
        return wb, _kernel_sums_of_squares(W) if demodulate else None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        W, _, transposed, _, _ = inputs
        ctx.transposed = transposed
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(W)

    @staticmethod
    def backward(ctx: Any, g_wb: Tensor | None, g_w2: Tensor | None) -> tuple:
        (W,) = ctx.saved_tensors
        if g_wb is None and g_w2 is None:
            return None, None, None, None, None
        # in W's layout (contiguous, or stored_weight's order): what the
        # optimiser reads without a copy
        out = torch.empty_like(W)
        if g_wb is not None and ctx.transposed:
            i, o, kh, kw = g_wb.shape
            if g_wb.is_contiguous(memory_format=torch.channels_last) \
                    and W.is_contiguous():
                # back from [I, kh, kw, O] memory to W's [O, I, kh, kw] as one 2-D
                # transpose (2.6 instead of 9.0 ms through the strided view, in
                # bfloat16 for 512 channels, gradient step included)
                g_wb = _transpose2d(g_wb.permute(0, 2, 3, 1).reshape(
                    i * kh * kw, o)).view(o, i, kh, kw)
            else:
                g_wb = g_wb.transpose(0, 1)
        if g_w2 is None:
            out.copy_(g_wb)
        elif g_wb is None:
            torch.mul(W, 2.0 * g_w2[:, :, None, None].to(W.dtype), out=out)
        else:  # d/dW sum_k W^2 = 2 W
            torch.addcmul(g_wb, W, g_w2[:, :, None, None].to(W.dtype), value=2.0,
                          out=out)
        return out, None, None, None, None


def _kernel_sums_of_squares(W: Tensor) -> Tensor:
    """``w2 [O, I] = sum_k W^2`` of a weight ``[O, I, kh, kw]``, one pass over W
    in its own memory order. Contiguous: as a product (square + sum wrote and read
    a squared copy: 3.5 % of a bfloat16 PTI step at batch 1, measured side by
    side). Stored in :func:`stored_weight`'s order: the kernel is the middle of
    the storage (``[O, kh*kw, I]`` or, transposed, ``[I, kh*kw, O]``), summed
    there (0.56 ms for 512 channels; the product first copies such a W, 2.3 ms,
    and ``square().sum`` over a transposed one's strided kernel dimensions took
    8.3 ms)."""
    o, i, kh, kw = W.shape
    if W.is_contiguous():
        v = W.reshape(o, i, kh * kw)
        return torch.einsum("oik,oik->oi", v, v)
    for order, transposed in (((0, 2, 3, 1), False), ((1, 2, 3, 0), True)):
        s = W.permute(*order)
        if s.is_contiguous():
            v = s.view(s.shape[0], kh * kw, s.shape[3])
            w2 = torch.linalg.vecdot(v, v, dim=1)
            return w2.t() if transposed else w2
    return W.square().sum(dim=(2, 3))


def _transpose2d(m: Tensor) -> Tensor:
    """``m.t()`` as a new contiguous matrix: ``contiguous`` of a transposed 2-D
    tensor takes torch's cache-blocked transpose, where a strided N-D copy walks
    one side element by element."""
    return m.t().contiguous()


def shared_weight(weight: Tensor, x: Tensor, *, transposed: bool,
                  demodulate: bool) -> tuple[Tensor, Tensor | None]:
    """``(w, w2)``: the shared ``weight [O, I, kh, kw]`` as a convolution of ``x``
    reads it (``[I, O, kh, kw]`` when ``transposed``; the autocast dtype when
    autocast is on; channels-last when ``x`` is, since oneDNN otherwise copies one
    side to the other's layout forward and backward), and ``w2 [O, I]``, the sums
    of squares over the kernel for :func:`_demod_coefficients` (None unless
    ``demodulate``). See :class:`_SharedWeight`."""
    dev = weight.device.type
    dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
             else x.dtype)
    fmt = (torch.channels_last if x.ndim == 4 and not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last)
           else torch.contiguous_format)
    if _PLAIN.get():  # torch.func.vmap: plain autograd ops
        w = (weight.transpose(0, 1) if transposed else weight).to(dtype)
        return w, weight.square().sum(dim=[2, 3]) if demodulate else None
    with torch.autocast(dev, enabled=False):
        return _SharedWeight.apply(weight, dtype, transposed, fmt, demodulate)


class _ModulatedWeight(torch.autograd.Function):
    """Per-sample modulated (and demodulated) conv weights with few passes.

    ``w[n, o, i, k] = W[n, o, i, k] * s[n, i] * d[n, o] * gain`` with
    ``d[n, o] = (sum_{i, k} (W[n, o, i, k] s[n, i])^2 + 1e-8)^-1/2`` (1 when not
    demodulating), written straight into the layout and dtype of the grouped
    convolution (``[N*O, I, kh, kw]`` channels-last, or ``[N*I, O, kh, kw]`` for the
    transposed one; bfloat16 under autocast). Autograd through the elementwise
    formula took ~15 passes over the weights per step plus layout copies and casts;
    here the forward reads the weights twice and writes once, and the backward is
    the closed form (derivation in its comments): three passes. Only the small
    ``[N, O, I]`` sums and ``[N, O]`` coefficients are kept beside the weights.
    """

    @staticmethod
    def forward(W: Tensor, s: Tensor, demodulate: bool, gain: float,
                transposed: bool, out_dtype: torch.dtype
                ) -> tuple[Tensor, Tensor, Tensor]:
        n, o, i, kh, kw = W.shape
        # sum_k W^2 per (n, o, i) (linalg.vector_norm is 60x slower on these
        # strided weights than square + sum, torch 2.13 CPU)
        n2 = W.square().sum(dim=(3, 4))  # [N, O, I]
        if demodulate:
            d = (torch.einsum("ni,noi->no", s.square(), n2) + 1e-8).rsqrt()
        else:
            d = torch.ones((n, o), dtype=W.dtype, device=W.device)
        factor = s[:, None, :] * (d * gain)[:, :, None]  # [N, O, I]
        w = W * factor[:, :, :, None, None]  # in W's layout
        # conv_transpose2d reads [in, out/groups, kh, kw] per group
        shape = (n * i, o, kh, kw) if transposed else (n * o, i, kh, kw)
        out = torch.empty(shape, dtype=out_dtype, device=W.device,
                          memory_format=torch.channels_last)
        view = (out.view(n, i, o, kh, kw).transpose(1, 2) if transposed
                else out.view(n, o, i, kh, kw))
        if view.stride() == w.stride() and out_dtype == w.dtype:
            # already the convolution's layout (W is stored so): a view
            out = (w.transpose(1, 2) if transposed else w).reshape(shape)
        else:
            # a cast (bfloat16) and/or a layout change; torch.mul(..., out=bfloat16)
            # directly is 6x slower than multiply-then-copy (torch 2.13 CPU)
            view.copy_(w)
        return out, n2, d  # n2, d: small, kept for the backward

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        W, s, demodulate, gain, transposed, _ = inputs
        _, n2, d = output
        ctx.demodulate, ctx.gain, ctx.transposed = demodulate, gain, transposed
        ctx.mark_non_differentiable(n2, d)
        ctx.save_for_backward(W, s, n2, d)

    @staticmethod
    def backward(ctx: Any, g_out: Tensor, *_: Any) -> tuple:
        W, s, n2, d = ctx.saved_tensors
        n, o, i, kh, kw = W.shape
        g = (g_out.view(n, i, o, kh, kw).transpose(1, 2) if ctx.transposed
             else g_out.view(n, o, i, kh, kw))
        gain = ctx.gain
        # A[n,o,i] = sum_k g W: the one reduction the closed form needs
        A = (g * W).sum(dim=(3, 4), dtype=W.dtype)
        factor = s[:, None, :] * (d * gain)[:, :, None]
        gW = gs = None
        if ctx.demodulate:
            # dL/dd[n,o] = gain sum_i s_i A[n,o,i];  dd/dW = -d^3 s_i^2 W;
            # dd/ds_i = -d^3 s_i n2[n,o,i]
            B = gain * torch.einsum("ni,noi->no", s, A)  # [N, O]
            Bd3 = B * d.pow(3)
            if ctx.needs_input_grad[0]:
                c2 = -Bd3[:, :, None] * s.square()[:, None, :]  # [N, O, I]
                gW = torch.addcmul(W * c2[..., None, None], g,
                                   factor[..., None, None])
            if ctx.needs_input_grad[1]:
                gs = (gain * torch.einsum("no,noi->ni", d, A)
                      - s * torch.einsum("no,noi->ni", Bd3, n2))
        else:
            if ctx.needs_input_grad[0]:
                gW = g * factor[..., None, None]
            if ctx.needs_input_grad[1]:
                gs = gain * A.sum(dim=1)
        return gW, gs, None, None, None, None


def modulated_weight(weight: Tensor, styles: Tensor, *, demodulate: bool = True,
                     gain: float = 1.0, transposed: bool = False) -> Tensor:
    """Per-sample weights ``[N, O, I, kh, kw]`` modulated by ``styles [N, I]``,
    demodulated and scaled by ``gain``, as the grouped convolution's weight:
    ``[N*O, I, kh, kw]`` (``[N*I, O, kh, kw]`` when ``transposed``) channels-last,
    in the autocast dtype when autocast is on. Exact; see :class:`_ModulatedWeight`.
    """
    dev = weight.device.type
    out_dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                 else weight.dtype)
    styles = styles.to(weight.dtype)
    with torch.autocast(dev, enabled=False):
        return _ModulatedWeight.apply(weight, styles, demodulate, float(gain),
                                      transposed, out_dtype)[0]


class _ToGrouped(torch.autograd.Function):
    """``x [N, C, H, W]`` in any layout as the grouped convolution's input
    ``[1, N*C, H, W]`` channels-last, in one copy each way (the gradient comes back
    in ``x``'s own layout). ``reshape`` + ``contiguous`` took two copies forward
    and two backward where a layer that scales activations (batch-major
    channels-last) hands on to one with per-sample weights: 58 ms of a 0.95 s
    bfloat16 PTI step at 256 px (official channels, 64 px boundary)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        out = torch.empty((1, n * c, h, w), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        out.view(n, c, h, w).copy_(x)  # the inner C runs are contiguous both sides
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        (x,) = inputs
        ctx.like = torch.empty_like(x, device="meta")  # x's shape, dtype, layout

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        n, c, h, w = ctx.like.shape
        return torch.empty_like(ctx.like, device=g.device).copy_(g.reshape(n, c, h, w))


def to_grouped(x: Tensor) -> Tensor:
    """``x [N, C, H, W]`` as ``[1, N*C, H, W]`` channels-last: a view when ``x``
    already is in :func:`grouped_layout`, one copy otherwise (:class:`_ToGrouped`);
    inside :func:`plain_layout` a plain reshape."""
    n, c, h, w = x.shape
    if _PLAIN.get():
        return x.reshape(1, n * c, h, w)
    try:
        v = x.view(1, n * c, h, w)
    except RuntimeError:  # not a view: the layout differs
        v = None
    if v is not None and v.is_contiguous(memory_format=torch.channels_last):
        return channels_last(v)  # canonical strides on the batch axis (a view)
    return _ToGrouped.apply(x)


def grouped_layout(x: Tensor) -> Tensor:
    """``x [N, C, H, W]`` laid out so that ``x.reshape(1, N*C, H, W)`` is a
    channels-last view: the layout grouped convolutions read and write, so a stack
    of per-sample layers passes activations on without copies."""
    n, c, h, w = x.shape
    return x.reshape(1, n * c, h, w).contiguous(
        memory_format=torch.channels_last).view(n, c, h, w)


def stored_weight(weight: Tensor, transposed: bool = False) -> Tensor:
    """Per-sample weights ``[N, O, I, kh, kw]`` as a contiguous tensor in the
    memory order the grouped convolution reads: ``[N, O, kh, kw, I]``, or
    ``[N, I, kh, kw, O]`` for the transposed (up-sampling) one; a single weight
    ``[O, I, kh, kw]`` likewise without ``N``, the order a batch-1 convolution
    reads (channels-last). Optimisers update it as a plain contiguous tensor (the
    fused Adam copies any other layout, both ways, every step);
    :func:`weight_from_storage` is the view the network takes."""
    if weight.ndim == 4:
        return weight.permute(*((1, 2, 3, 0) if transposed else (0, 2, 3, 1))
                              ).contiguous()
    order = (0, 2, 3, 4, 1) if transposed else (0, 1, 3, 4, 2)
    return weight.permute(*order).contiguous()


def weight_from_storage(storage: Tensor, transposed: bool = False) -> Tensor:
    """The ``[N, O, I, kh, kw]`` (or ``[O, I, kh, kw]``) view of
    :func:`stored_weight`'s tensor."""
    if storage.ndim == 4:
        return storage.permute(3, 0, 1, 2) if transposed \
            else storage.permute(0, 3, 1, 2)
    return storage.permute(0, 4, 1, 2, 3) if transposed \
        else storage.permute(0, 1, 4, 2, 3)


def grouped_weight_layout(weight: Tensor, transposed: bool = False) -> Tensor:
    """Per-sample weights ``[N, O, I, kh, kw]`` laid out so that the grouped
    convolution of :func:`modulated_conv2d` (``transposed``: its up-sampling one)
    reads them without a copy; values unchanged."""
    return weight_from_storage(stored_weight(weight, transposed), transposed)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *,
                     demodulate: bool = True, up: int = 1, padding: int = 0,
                     resample_filter: Tensor | None = None,
                     noise: Tensor | None = None,
                     fused: bool | str | None = None, bias: Tensor | None = None,
                     gain: float = 1.0) -> Tensor:
    """StyleGAN2 modulated convolution (per-sample weights, optional demodulation),
    with the layer's bias and noise.

    ``y[n] = gain * (conv(x[n], weight * s[n]) * d[n] + bias + noise)`` with
    ``s[n]`` scaling input channels and ``d[n, o] = 1 / sqrt(sum((weight[o] *
    s[n])^2) + 1e-8)`` when ``demodulate``.

    ``gain`` and ``bias`` are folded into the convolution where they can be (the
    weight factor; oneDNN's fused bias), which saves passes over the activations:
    a StyleGAN layer's ``lrelu(z) * sqrt(2)`` is computed as ``lrelu(sqrt(2) * z)``
    (the leaky ReLU is positively homogeneous).

    Args:
        x: ``[N, I, H, W]``.
        weight: ``[O, I, kh, kw]`` shared, or ``[N, O, I, kh, kw]`` per sample (the
            stitching stage tunes one copy of the network per frame; per-sample
            weights always take the grouped path).
        styles: ``[N, I]``.
        up: 1 (plain "same" conv with ``padding``) or 2 (stride-2 transposed conv
            followed by the FIR ``resample_filter`` with gain 4; output ``2H x 2W``).
        noise: added after demodulation, broadcast against ``[N, O, H', W']``.
        fused: True = one grouped convolution with per-sample weights computed by
            plain autograd ops; ``"modulated"`` = the same through
            :func:`modulated_weight`'s closed-form backward (the shared weight
            seen as per-sample); False = scale activations instead (``conv(x * s)
            * d``); ``"hybrid"`` = per layer, whichever side is smaller
            (:func:`_hybrid`); all exact. None picks grouped (plain ops) for batch 1,
            activation scaling otherwise. Per-sample weights always take
            :func:`modulated_weight`.
        bias: ``[O]`` shared or ``[N, O]`` per sample.
        gain: a positive output scale.

    Returns:
        ``[N, O, H * up, W * up]``.
    """
    n = x.shape[0]
    out_c, in_c, kh, kw = weight.shape[-4:]
    if fused == "hybrid":
        fused = _hybrid(x, weight, up)
    if fused == "modulated" and weight.ndim == 4:
        # the shared weight as per-sample weights (a view): modulated_weight's
        # three passes instead of plain autograd's dozen at the official channel
        # counts; its gradient sums over the samples (expand's backward)
        weight = weight.unsqueeze(0).expand(n, -1, -1, -1, -1)
    per_sample = weight.ndim == 5
    if fused is None or per_sample:
        fused = n == 1 or per_sample
    fused = bool(fused)

    if fused and per_sample:
        # styles, demodulation and gain folded into the per-sample weights in one
        # pass, written in the dtype and layout the grouped convolution reads
        w = modulated_weight(weight, styles, demodulate=demodulate, gain=gain,
                             transposed=up != 1)
    elif fused:
        # [N, O, I, kh, kw]: the modulated (and demodulated) weights of each sample.
        # Plain autograd ops: at batch 1 (the reference loops) they beat
        # modulated_weight's custom backward, whose fixed cost per call outweighs
        # the passes it saves on weights this small (14 % slower per step).
        w = weight.unsqueeze(0) * styles[:, None, :, None, None]
        if demodulate:  # 1 / ||w * s|| over (I, kh, kw), from the modulated w
            scale = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() * gain
        else:
            scale = torch.full((n, out_c), gain, device=w.device, dtype=w.dtype)
        if demodulate or gain != 1.0:
            w = w * scale[:, :, None, None, None]
        w = _channels_last(w.transpose(1, 2).reshape(n * in_c, out_c, kh, kw)
                           if up != 1 else w.reshape(n * out_c, in_c, kh, kw))
    if fused:
        # [1, N*I, H, W] channels-last: a view when x comes from a grouped conv
        # (see grouped_layout); oneDNN's grouped convs are 1.5-2x faster on it
        # than on NCHW in float32 and 2-3x in bfloat16 (2 cores, issue 5).
        # The weights too (modulated_weight writes them so): from a weight with
        # NCHW strides oneDNN returns an NCHW output.
        xg = to_grouped(x)
        if up == 1:
            b = None
            if bias is not None:  # the convolution adds it (no extra pass)
                b = (bias * gain).reshape(n * out_c) if bias.ndim == 2 \
                    else (bias * gain).repeat(n)
                bias = None
            if kh == kw == 1 and _PLAIN.get():
                # under vmap (plain_layout) a 1x1 convolution as a matrix
                # product: vmap turns a per-frame conv2d into a grouped one whose
                # weight gradient oneDNN gets wrong with one thread (see
                # channels_last), and it cannot restride vmap's own reshapes
                y = torch.einsum("noi,nihw->nohw", w.reshape(n, out_c, in_c),
                                 x).reshape(1, n * out_c, x.shape[2], x.shape[3])
                if b is not None:
                    y = y + b[None, :, None, None].to(y.dtype)
            else:
                y = F.conv2d(xg, w, b, padding=padding, groups=n)
        else:
            y = _upconv(xg, w, up, padding, resample_filter, groups=n)
        y = y.reshape(n, out_c, y.shape[2], y.shape[3])
        if bias is not None:
            y = y + _per_channel(bias * gain).to(y.dtype)
    else:
        # styles and coefficients follow x's dtype: under bfloat16 autocast a float32
        # factor would promote the whole activation to float32 (and the next conv
        # would cast it back): two extra passes over the largest tensors
        xs = x * styles[:, :, None, None].to(x.dtype)
        w, w2 = shared_weight(weight, xs, transposed=up != 1, demodulate=demodulate)
        if up == 1:
            y = F.conv2d(xs, w, padding=padding)
        else:
            y = _upconv(xs, w, up, padding, resample_filter, groups=1)
        dcoefs = _demod_coefficients(w2, styles) if demodulate else None  # [N, O]
        if dcoefs is None and gain != 1.0:
            dcoefs = torch.full((n, out_c), 1.0, device=y.device)
        if dcoefs is not None:
            scale = (dcoefs * gain)[:, :, None, None].to(y.dtype)
            y = y * scale if bias is None else torch.addcmul(
                _per_channel(bias * gain).to(y.dtype), y, scale)  # one pass
        elif bias is not None:
            y = y + _per_channel(bias).to(y.dtype)
    if noise is not None:
        y = y + (noise * gain).to(y.dtype)
    return y


#: ``fused="hybrid"``: activations are scaled instead of weights modulated where
#: the layer's input and output hold fewer than this many times the weight's
#: elements (the weight side costs more passes per element: the modulated copy,
#: its layout copy and cast, and their backward; and the grouped convolution of
#: per-sample weights runs slower than a batched one). 8 since the up-sampling
#: convolutions became input gradients and freed memory is kept: factors 2, 4,
#: 8, 16 measured side by side, see docs/pipeline.md "Formulations"
HYBRID_FACTOR = 8.0


def _hybrid(x: Tensor, weight: Tensor, up: int) -> bool | str:
    """The ``fused`` mode ``"hybrid"`` picks for one layer: the cheaper side to
    modulate, by element counts. Per sample, folding styles into the weight
    touches ``O*I*kh*kw`` elements several times; scaling the activations
    (``conv(x * s) * d``) touches the input and the output. At the official
    channel counts the low-resolution layers (512 channels at 4-64 px) have more
    weight than activation, the high-resolution ones the reverse, so no single
    mode is cheapest for the whole network. Per-sample weights (stitching's
    stacked copies) have no activation side."""
    if weight.ndim == 5:
        return "modulated"
    out_c, in_c, kh, kw = weight.shape
    acts = x.shape[2] * x.shape[3] * (in_c + up * up * out_c)
    if acts < HYBRID_FACTOR * out_c * in_c * kh * kw:
        return False
    return True if x.shape[0] == 1 else "modulated"


def _channels_last(w: Tensor) -> Tensor:
    """A conv weight ``[O, I, kh, kw]`` with channels-last strides, 1x1 kernels
    included: ``contiguous(memory_format=channels_last)`` leaves a contiguous 1x1
    weight at strides ``(I, 1, 1, 1)``, from which oneDNN returns an NCHW output
    (and the backward converts the gradients: the ToRGB layers ran fwd+bwd 5x
    slower at 64 px, torch 2.13 CPU)."""
    if _PLAIN.get():
        return w
    if w.shape[-2:] == (1, 1) and w.stride()[-2:] != (w.shape[1], w.shape[1]):
        return torch.empty(w.shape, dtype=w.dtype, device=w.device,
                           memory_format=torch.channels_last).copy_(w)
    return w.contiguous(memory_format=torch.channels_last)


def _per_channel(bias: Tensor) -> Tensor:
    """A bias ``[C]`` (shared) or ``[N, C]`` (per sample) shaped to add to
    ``[N, C, H, W]``."""
    return bias[:, :, None, None] if bias.ndim == 2 else bias[None, :, None, None]


# True inside reference_ops(): the reference code's own operations
_REFERENCE = contextvars.ContextVar("facestitch_reference_ops", default=False)


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Within the block the network computes with the operations the reference
    implementation calls where ours differ only in speed (``conv_transpose2d``
    for the up-sampling convolutions, see :class:`_TransposedConv`): the
    benchmark's re-creation of the reference loops runs so. Values are the same
    up to rounding."""
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


class _TransposedConv(torch.autograd.Function):
    """``conv_transpose2d(x, w, stride=s, groups=g)`` (no padding) computed as the
    input gradient of the strided convolution it transposes, which oneDNN runs
    2.4x faster in bfloat16 than its transposed-convolution forward (12 vs 29 ms
    for 512 -> 256 channels at 64 -> 129 px, batch 2, 2 cores); the backward is
    that convolution itself (input gradient) and its weight gradient, the same
    kernels the transposed convolution's own backward runs. Exact in float64
    (tests/test_nets_ops.py)."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, stride: int, groups: int) -> Tensor:
        n, _, h, wd = x.shape
        k_h, k_w = w.shape[-2:]
        out_c = w.shape[1] * groups
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)
        # the strided convolution's input: only its shape and layout are read
        # (never written or touched, so it costs no memory traffic)
        z = torch.empty((n, out_c, (h - 1) * stride + k_h, (wd - 1) * stride + k_w),
                        dtype=x.dtype, device=x.device, memory_format=fmt)
        return torch.ops.aten.convolution_backward(
            x, z, w, None, [stride, stride], [0, 0], [1, 1], False, [0, 0], groups,
            [True, False, False])[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, w, stride, groups = inputs
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.groups = stride, groups

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        s = ctx.stride
        gx = gw = None
        if ctx.needs_input_grad[0]:  # the strided convolution of g
            gx = F.conv2d(g, w, stride=s, groups=ctx.groups)
        if ctx.needs_input_grad[1]:  # its weight gradient, g as input, x as output
            gw = torch.ops.aten.convolution_backward(
                x, g, w, None, [s, s], [0, 0], [1, 1], False, [0, 0], ctx.groups,
                [False, True, False])[1]
        return gx, gw, None, None


def own_operations() -> bool:
    """Whether operations of our own (custom autograd functions, generated
    kernels) may run here: everywhere but inside :func:`reference_ops` (the
    reference's operations) and :func:`plain_layout` (``torch.func.vmap``, which
    has no rule for them)."""
    return not (_REFERENCE.get() or _PLAIN.get())


def conv_transpose(x: Tensor, w: Tensor, stride: int, groups: int = 1) -> Tensor:
    """``F.conv_transpose2d(x, w, stride=stride, groups=groups)`` through
    :class:`_TransposedConv` where :func:`own_operations`, else through
    ``conv_transpose2d`` itself. Under autocast in the autocast dtype, as
    ``conv_transpose2d``."""
    if not own_operations():
        return F.conv_transpose2d(x, w, stride=stride, groups=groups)
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, w = x.to(dt), w.to(dt)
    elif w.dtype != x.dtype:
        raise TypeError(f"conv_transpose: input {x.dtype} and weight {w.dtype}")
    with torch.autocast(dev, enabled=False):
        return _TransposedConv.apply(x, w, int(stride), int(groups))


def _upconv(x: Tensor, wt: Tensor, up: int, padding: int,
            resample_filter: Tensor | None, groups: int) -> Tensor:
    """Stride-``up`` transposed conv (unflipped kernel) + FIR, as in StyleGAN2's
    up-sampling convs. ``wt`` is in ``conv_transpose2d`` layout."""
    if resample_filter is None:
        raise ValueError("up-sampling modulated conv needs a resample_filter")
    k = wt.shape[-1]
    fk = resample_filter.shape[-1]
    y = conv_transpose(x, wt, up, groups)
    # Transposed conv output is (H-1)*up + k; the FIR pads bring it to H*up with the
    # same centring as "zero-insert, FIR, 'same' conv" (docs/models.md "Generator
    # arithmetic").
    p0 = padding + (fk + up - 1) // 2 - (k - 1)
    p1 = padding + (fk - up) // 2 - (k - up)
    return upfirdn2d(y, resample_filter, padding=(p0, p1, p0, p1), gain=up * up)
