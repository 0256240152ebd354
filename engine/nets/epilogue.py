"""A synthesis layer's epilogue in one pass each way: ``lrelu(y + b + s * n)``.

After its convolution a StyleGAN2 synthesis layer adds its bias (where the
convolution did not), adds its noise image times the learned strength, and applies
the leaky ReLU (the sqrt(2) gain rides on the convolution, engine/nets/ops.py).
Eagerly these are up to three passes over the layer's output forward and three
backward (the leaky ReLU's gradient, the bias gradient's sum, the noise
gradient's sum), and at the high resolutions they are memory-bound: at 1024 px a
layer's output is 32 channels of 1024 x 1024, and in a bfloat16 PTI step on two
CPU cores the element-wise work of the 512 and 1024 px blocks took about a fifth
of the step (docs/pipeline.md "Where the time goes", "Fused epilogue").

Here the forward is one generated kernel (read the convolution's output, write the
activation) and the backward another (read the incoming gradient and the saved
activation, write the gradient and, in the same loop, the per-sample per-channel
sums that give the bias and noise-strength gradients). The kernels are generated
by TorchInductor (``torch.compile``) from the plain torch expressions below, one
compilation per shape, layout and dtype, on first use in a process (a few seconds
each; inductor keeps them in its on-disk cache for the next process). Arithmetic
is float32 inside the kernel whatever the tensors' dtype; for float32 tensors the
values are the eager ones up to the order of the two additions' rounding, for
bfloat16 the activation is rounded once instead of after every operation.

Only where it pays and is known to work: on the CPU (CUDA keeps the eager
operations until the fused kernels are measured on a GPU: ``bench/epilogue.py``
times both there, with ``FACESTITCH_FUSED_EPILOGUE=all`` turning the Triton
kernels inductor generates on for CUDA too), for outputs of at
least :data:`MIN_ELEMENTS` elements (a smaller layer is not memory-bound, and
every distinct shape costs a compilation), without an activation clamp, outside
``torch.func`` transforms (:func:`engine.nets.ops.plain_layout`) and outside
:func:`engine.nets.ops.reference_ops`. If inductor cannot compile (no C++ compiler
on the machine), the process logs it once and stays eager.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["MIN_ELEMENTS", "applies", "bias_noise_lrelu", "enabled", "failure",
           "kernel_calls"]

log = logging.getLogger(__name__)

#: outputs smaller than this (elements, all samples) stay eager: fused are the
#: 128 px layers of the official channel counts and up (256 x 128 x 128 is 4.2 M;
#: 32 x 1024 x 1024 is 33.6 M), where the passes are memory-bound; a smaller
#: layer gains little and would cost one more compilation (docs/pipeline.md
#: "Fused epilogue")
MIN_ELEMENTS = 1 << 22

#: kernels generated per direction at most (shapes x variants x dtypes)
RECOMPILE_LIMIT = 64

#: leaky ReLU slope of every StyleGAN2 synthesis layer
SLOPE = 0.2

_lock = threading.Lock()
_compiled: dict[Callable[..., Any], Callable[..., Any]] = {}
_broken: list[str] = []  # why inductor failed in this process, once it has
_calls = [0]  # generated-kernel calls in this process (both directions)


def enabled(device: Any = "cpu") -> bool:
    """Whether this process fuses epilogues on ``device`` at all: not after
    inductor failed here; ``FACESTITCH_FUSED_EPILOGUE`` in the environment is
    ``0`` (never), ``1`` or unset (on the CPU, where it was measured to pay) or
    ``all`` (on every device: CUDA takes Triton kernels, for measuring them)."""
    mode = os.environ.get("FACESTITCH_FUSED_EPILOGUE", "1")
    if _broken or mode == "0":
        return False
    return mode == "all" or torch.device(device).type == "cpu"


def kernel_calls() -> int:
    """How many times this process has run a generated epilogue kernel (forward
    and backward calls; a benchmark's proof that its fused rows were fused)."""
    return _calls[0]


def failure() -> str | None:
    """Why the kernels could not be generated in this process, if they could
    not (from then on every epilogue is computed eagerly)."""
    return _broken[0] if _broken else None


def applies(y_shape: Any, device: torch.device, clamp: float | None,
            eager_only: bool) -> bool:
    """Whether a layer whose convolution output has ``y_shape`` takes the fused
    epilogue (module docstring); ``eager_only``: under ``plain_layout`` or
    ``reference_ops``."""
    return (clamp is None and not eager_only and math.prod(y_shape) >= MIN_ELEMENTS
            and enabled(device))


# --- the expressions inductor turns into kernels ---------------------------------


def _forward(y: Tensor, bias: Tensor | None, noise: Tensor | None,
             strength: Tensor | None) -> Tensor:
    # y [N, C, H, W]; bias [N or 1, C] (already times the gain); noise [H, W];
    # strength [N or 1] (already times the gain)
    z = y.float()
    if bias is not None:
        z = z + bias[:, :, None, None]
    if noise is not None:
        z = z + strength[:, None, None, None] * noise
    return F.leaky_relu(z, SLOPE).to(y.dtype)


def _backward(g: Tensor, out: Tensor, noise: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
    # the leaky ReLU's gradient from its output (positive slope: the sign is the
    # input's), then per sample and channel the sums the bias and the noise
    # strength need, over the same pass: [N, C] each
    gi = torch.where(out > 0, g.float(), g.float() * SLOPE)
    sums = gi.sum(dim=(2, 3))
    ns = (gi * noise).sum(dim=(2, 3)) if noise is not None else None
    return gi.to(g.dtype), sums, ns


def _kernel(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` through its kernel for these shapes, strides and dtypes
    (generated on first use); eagerly under a dispatch mode (a profiler's, the
    benchmark's counters: inductor does not trace through those) and for good
    once generation failed in this process."""
    if _broken or _get_current_dispatch_mode() is not None:
        return fn(*args)
    compiled = _compiled.get(fn)
    if compiled is None:
        with _lock:
            compiled = _compiled.get(fn)
            if compiled is None:
                import torch._inductor.config as inductor_config

                # compile in this process: no pool of compile workers left behind
                inductor_config.compile_threads = 1
                compiled = _compiled[fn] = torch.compile(fn, dynamic=False,
                                                         fullgraph=True)
    try:
        # one kernel per shape and variant: a 1024 px generator has a dozen per
        # direction, more than dynamo's default of 8 per function
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            out = compiled(*args)
        _calls[0] += 1
        return out
    except Exception as exc:  # noqa: BLE001 - no compiler, a codegen failure
        with _lock:
            if not _broken:
                _broken.append(f"{type(exc).__name__}: {exc}"[:500])
                log.warning("fused epilogue unavailable, computing it eagerly "
                            "(%s)", _broken[0])
        return fn(*args)


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """Whether ``a``'s strides address its elements as ``b``'s do: the same shape
    and the same stride on every dimension longer than 1 (a batch of one may
    carry any stride)."""
    return a.shape == b.shape and all(
        sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


class _BiasNoiseLrelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: Tensor, bias: Tensor | None, noise: Tensor | None,
                strength: Tensor | None, gain: float) -> Tensor:
        b = None if bias is None else (bias * gain).float().reshape(
            -1, y.shape[1]).detach()
        s = None if noise is None else (strength * gain).float().reshape(-1).detach()
        nz = None if noise is None else noise.float().detach()
        out = _kernel(_forward, y.detach(), b, nz, s)
        ctx.save_for_backward(out, nz)
        ctx.gain = gain
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.strength_shape = None if strength is None else strength.shape
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        out, nz = ctx.saved_tensors
        if g.stride() != out.stride():  # the layout the kernel was made for
            g = (g.as_strided(out.shape, out.stride()) if _same_layout(g, out)
                 else torch.empty_like(out).copy_(g))
        gi, sums, ns = _kernel(_backward, g, out, nz)
        gb = gs = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[1]:
            gb = (sums if len(ctx.bias_shape) == 2 else sums.sum(0)) * ctx.gain
            gb = gb.reshape(ctx.bias_shape)
        if ns is not None and ctx.needs_input_grad[3]:
            gs = (ns.sum(1) if len(ctx.strength_shape) == 1 else ns.sum()) * ctx.gain
            gs = gs.reshape(ctx.strength_shape)
        return gi, gb, None, gs, None


def bias_noise_lrelu(y: Tensor, bias: Tensor | None, noise: Tensor | None,
                     strength: Tensor | None, gain: float) -> Tensor:
    """``leaky_relu(y + gain * bias + gain * strength * noise, 0.2)`` in one pass
    forward and one backward (module docstring).

    Args:
        y: a convolution's fresh output ``[N, C, H, W]`` (any layout; the result
            has the same).
        bias: ``[C]`` shared or ``[N, C]`` per sample, or None (the convolution
            added it).
        noise: the layer's constant noise ``[H, W]`` (not trained), or None.
        strength: its strength, ``[]`` shared or ``[N]`` per sample (with noise).
        gain: the factor bias and noise carry (the layer's sqrt(2)).
    """
    if noise is not None and strength is None:
        raise ValueError("a noise image needs its strength")
    return _BiasNoiseLrelu.apply(y, bias, noise, strength, gain)
