"""StyleGAN2 generator (config F, 'skip' ToRGB) in our own code.

Written from the paper (Karras et al. 2020) and the behaviour described in
docs/models.md "G_ema keys and shapes" and "Generator arithmetic"; no NVIDIA or
rosinality source is reproduced. Parameter and
buffer names follow NVIDIA's ``G_ema`` layout, so the tensors read from ``ffhq.pkl``
load with ``strict=True`` unchanged (rosinality keys are converted in
``engine.models.checkpoints``).

The network is parameterised by resolution and channel widths, so a 32–64 px
instance builds in milliseconds::

    G = Generator(z_dim=64, w_dim=64, img_resolution=32, channel_base=1024,
                  channel_max=64, mapping_layers=2)
    ws = G.mapping(torch.randn(1, 64), truncation_psi=0.7)   # [1, 8, 64]
    img = G.synthesis(ws)                                    # [1, 3, 32, 32]

Style space: ``G.styles(ws)`` returns the per-layer affine outputs (26 at 1024 px:
17 convs + 9 ToRGB, in block order ``b4.conv1, b4.torgb, b8.conv0, b8.conv1,
b8.torgb, ...``); ``G.synthesis_from_styles(styles)`` renders them. ToRGB layers
still multiply their style by ``1/sqrt(C_in)`` inside (docs/reference.md "Generator").

Per-frame copies: every synthesis parameter may carry a leading batch axis
(``weight [N, O, I, k, k]``, ``bias [N, O]``, ``noise_strength [N]``,
``const [N, C, 4, 4]``, the affines' ``weight [N, C, w_dim]`` and ``bias [N, C]``);
``torch.func.functional_call`` with such stacks renders N frames through N
different networks in one pass of grouped convolutions (the stitching stage tunes
one copy per frame this way). All forward code is ``torch.func`` friendly (no
in-place ops on parameters or inputs, no ``.item()``); under
:func:`engine.nets.ops.plain_layout` it also runs inside ``torch.func.vmap``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from engine.nets import epilogue
from engine.nets.ops import (
    LRELU_GAIN,
    channels_last,
    grouped_layout,
    lrelu_agc,
    modulated_conv2d,
    normalize_2nd_moment,
    own_operations,
    setup_filter,
    stored_weight,
    upsample2d,
    weight_from_storage,
)

__all__ = [
    "FullyConnectedLayer",
    "MappingNetwork",
    "SynthesisLayer",
    "ToRGBLayer",
    "SynthesisBlock",
    "SynthesisNetwork",
    "Generator",
    "ConvOrderWeights",
    "NOISE_MODES",
    "OFFICIAL_GENERATOR_KWARGS",
]

NOISE_MODES = ("const", "random", "none")

#: FFHQ-1024 config F (docs/models.md "Expected FFHQ-1024 configuration").
OFFICIAL_GENERATOR_KWARGS: dict[str, Any] = dict(
    z_dim=512, w_dim=512, img_resolution=1024, img_channels=3, channel_base=32768,
    channel_max=512, mapping_layers=8, mapping_lr_mul=0.01, conv_clamp=None,
    resample_filter=[1, 3, 3, 1], w_avg_beta=0.995,
)


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer.

    Stores raw weights; the effective weight is ``W * lr_mul / sqrt(in)`` and the
    effective bias ``b * lr_mul`` (docs/models.md "Generator arithmetic").
    ``activation`` is
    ``"linear"`` or ``"lrelu"`` (leaky-ReLU 0.2 times sqrt(2)).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str = "linear") -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = (nn.Parameter(torch.full([out_features], float(bias_init)))
                     if bias else None)
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if w.ndim == 3:  # per-sample copies (see Generator): w [N, O, I], b [N, O]
            y = torch.bmm(w, x.unsqueeze(2)).squeeze(2)  # [N, O]
            x = y if b is None else y + b
        else:
            x = torch.nn.functional.linear(x, w, b)
        if self.activation == "lrelu":
            x = lrelu_agc(x)
        return x

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, "
                f"activation={self.activation}")


class MappingNetwork(nn.Module):
    """z -> w: second-moment normalisation, ``num_layers`` lrelu FC layers with
    ``lr_mul`` 0.01, broadcast to ``num_ws``, truncation around ``w_avg``."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_mul: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta  # kept for completeness; we never train G here
        features = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(
                features[i], features[i + 1], lr_mul=lr_mul, activation="lrelu"))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Tensor, truncation_psi: float | Tensor = 1.0,
                truncation_cutoff: int | None = None) -> Tensor:
        """``z [N, z_dim] -> ws [N, num_ws, w_dim]``; ``w = w_avg + psi (w - w_avg)``
        on the first ``truncation_cutoff`` layers (all when None)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}], got {tuple(z.shape)}")
        x = normalize_2nd_moment(z)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).expand(-1, self.num_ws, -1)  # [N, num_ws, w_dim]
        if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
            return x
        w_avg = self.w_avg.to(x.dtype)
        xt = w_avg + truncation_psi * (x - w_avg)
        if truncation_cutoff is None or truncation_cutoff >= self.num_ws:
            return xt
        return torch.cat([xt[:, :truncation_cutoff], x[:, truncation_cutoff:]], dim=1)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x up-sampling), noise, bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 resolution: int, *, kernel_size: int = 3, up: int = 1,
                 use_noise: bool = True, conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.padding = kernel_size // 2
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const",
                fused: bool | str | None = None) -> Tensor:
        return self.forward_style(x, self.affine(w), noise_mode, fused)

    def forward_style(self, x: Tensor, styles: Tensor, noise_mode: str = "const",
                      fused: bool | str | None = None) -> Tensor:
        """``x [N, I, r/up, r/up]``, ``styles [N, I]`` -> ``[N, O, r, r]``."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}")
        # lrelu(z) * sqrt(2) computed as lrelu(sqrt(2) * z): the gain rides on the
        # convolution's weights, the bias on the convolution (engine/nets/ops.py)
        clamp = self.conv_clamp * LRELU_GAIN if self.conv_clamp is not None else None
        const = self.use_noise and noise_mode == "const"
        out_shape = (x.shape[0], self.out_channels, x.shape[2] * self.up,
                     x.shape[3] * self.up)
        # bias (where no convolution absorbs it), noise and leaky ReLU in one pass
        # each way (engine/nets/epilogue.py): an up-sampling convolution's bias
        # would otherwise be a pass of its own
        fuse = noise_mode != "random" and epilogue.applies(
            out_shape, x.device, clamp, not own_operations())
        conv_bias = None if fuse and self.up != 1 else self.bias
        noise = None
        # per-sample parameters (a stack of per-frame copies, see Generator): a
        # leading batch axis on weight [N, O, I, k, k], noise_strength [N], bias [N, O]
        strength = self.noise_strength
        if self.use_noise and strength.ndim == 1:
            strength = strength[:, None, None, None]
        if const and not fuse:
            noise = self.noise_const * strength
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution],
                                device=x.device, dtype=x.dtype) * strength
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up,
                             padding=self.padding,
                             resample_filter=self.resample_filter, noise=noise,
                             fused=fused, bias=conv_bias, gain=LRELU_GAIN)
        if fuse:
            return epilogue.bias_noise_lrelu(
                x, self.bias if conv_bias is None else None,
                self.noise_const if const else None,
                self.noise_strength if const else None, LRELU_GAIN)
        return lrelu_agc(x, gain=1.0, clamp=clamp, inplace=True)  # x: fresh

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, "
                f"resolution={self.resolution}, up={self.up}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation; style scaled by ``1/sqrt(C_in)``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, *,
                 kernel_size: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, w: Tensor, fused: bool | str | None = None) -> Tensor:
        return self.forward_style(x, self.affine(w), fused)

    def forward_style(self, x: Tensor, styles: Tensor,
                      fused: bool | str | None = None) -> Tensor:
        x = modulated_conv2d(x, self.weight, styles * self.weight_gain,
                             demodulate=False, fused=fused, bias=self.bias)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (const | up-conv0) -> conv1 -> ToRGB, skip image path."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 resolution: int, img_channels: int, *,
                 conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = (1, 3, 3, 1),
                 use_noise: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.img_channels = resolution, img_channels
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution,
                                                   resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution,
                                        up=2, use_noise=use_noise,
                                        conv_clamp=conv_clamp,
                                        resample_filter=resample_filter)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    use_noise=use_noise, conv_clamp=conv_clamp,
                                    resample_filter=resample_filter)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim,
                                conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def layer_names(self) -> list[str]:
        return (["conv1"] if self.in_channels == 0 else ["conv0", "conv1"]) + ["torgb"]

    def forward_styles(self, x: Tensor | None, img: Tensor | None,
                       styles: Sequence[Tensor], batch: int, noise_mode: str,
                       fused: bool | str | None = None) -> tuple[Tensor, Tensor]:
        """``styles`` are this block's affine outputs in :meth:`layer_names` order."""
        r = self.resolution
        if self.in_channels == 0:
            if self.const.ndim == 4:  # per-sample copies: [N, C, r, r]
                x = grouped_layout(self.const)
            else:  # channels-last from here on: oneDNN's convs (fwd and bwd) are
                # faster on it, most of all in bfloat16 (issue 5)
                x = channels_last(self.const.unsqueeze(0).expand(batch, -1, -1, -1))
            x = self.conv1.forward_style(x, styles[0], noise_mode, fused)
        else:
            assert x is not None and x.shape[1:] == (self.in_channels, r // 2, r // 2)
            x = self.conv0.forward_style(x, styles[0], noise_mode, fused)
            x = self.conv1.forward_style(x, styles[1], noise_mode, fused)
        y = self.torgb.forward_style(x, styles[-1], fused)
        if img is not None:
            img = upsample2d(img, self.resample_filter) + y
        else:
            img = y
        assert x.shape[1:] == (self.out_channels, r, r)
        assert img.shape[1:] == (self.img_channels, r, r)
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, in={self.in_channels}, " \
               f"out={self.out_channels}"


class SynthesisNetwork(nn.Module):
    """ws ``[N, num_ws, w_dim]`` -> image ``[N, C, R, R]`` (blocks ``b4`` .. ``bR``)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3, *,
                 channel_base: int = 32768, channel_max: int = 512,
                 conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = (1, 3, 3, 1),
                 use_noise: bool = True) -> None:
        super().__init__()
        log2 = int(round(math.log2(img_resolution)))
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got "
                             f"{img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = (w_dim, img_resolution,
                                                              img_channels)
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        self.channels = {r: min(channel_base // r, channel_max)
                         for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            in_c = self.channels[r // 2] if r > 4 else 0
            block = SynthesisBlock(in_c, self.channels[r], w_dim, r, img_channels,
                                   conv_clamp=conv_clamp,
                                   resample_filter=resample_filter,
                                   use_noise=use_noise)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last ToRGB
        # (block, layer, style channels, ws index) for each style vector, in order.
        self.style_layers: list[tuple[str, str, int, int]] = []
        w_idx = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            for j, name in enumerate(block.layer_names()):
                layer = getattr(block, name)
                self.style_layers.append((f"b{r}", name, layer.in_channels, w_idx + j))
            w_idx += block.num_conv

    @property
    def num_styles(self) -> int:
        return len(self.style_layers)

    def styles(self, ws: Tensor) -> list[Tensor]:
        """Per-layer affine outputs ``[N, C_l]`` (raw: ToRGB's 1/sqrt(C) is later)."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got "
                             f"{tuple(ws.shape)}")
        out = []
        for block, name, _, idx in self.style_layers:
            layer = getattr(getattr(self, block), name)
            out.append(layer.affine(ws[:, idx]))
        return out

    def synthesis_from_styles(self, styles: Sequence[Tensor],
                              noise_mode: str = "const",
                              fused: bool | str | None = None, *,
                              checkpointing: bool = False) -> Tensor:
        """Render from per-layer styles. With ``checkpointing`` each block runs under
        ``torch.utils.checkpoint``: activations are recomputed in backward (about a
        third more compute for a fraction of the activation memory, for 6–8 GB
        GPUs)."""
        if len(styles) != self.num_styles:
            raise ValueError(f"expected {self.num_styles} style tensors, got "
                             f"{len(styles)}")
        batch = styles[0].shape[0]
        x = img = None
        k = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            n = block.num_conv + block.num_torgb
            args = (x, img, styles[k:k + n], batch, noise_mode, fused)
            if checkpointing:
                from torch.utils.checkpoint import checkpoint

                x, img = checkpoint(block.forward_styles, *args, use_reentrant=False)
            else:
                x, img = block.forward_styles(*args)
            k += n
        assert img is not None
        return img

    def forward(self, ws: Tensor, noise_mode: str = "const",
                fused: bool | str | None = None, *,
                checkpointing: bool = False) -> Tensor:
        return self.synthesis_from_styles(self.styles(ws), noise_mode, fused,
                                          checkpointing=checkpointing)


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> ws) and ``synthesis`` (ws -> image).

    Args:
        z_dim, w_dim: latent sizes (512 official).
        img_resolution: output size, a power of two (1024 official).
        img_channels: 3.
        channel_base, channel_max: channels at resolution r are
            ``min(channel_base // r, channel_max)`` (32768 and 512 official).
        mapping_layers, mapping_lr_mul: 8 and 0.01 official.
        conv_clamp: optional activation clamp (None for FFHQ config F).
        resample_filter: 1-D FIR taps ([1, 3, 3, 1]).
        use_noise: whether conv layers have noise inputs.
        w_avg_beta: recorded only (training statistic of NVIDIA's code).

    ``init_kwargs`` holds these arguments, JSON-serialisable, for our own
    checkpoint format (``engine.models.checkpoints.save_network``).
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 1024,
                 img_channels: int = 3, *, channel_base: int = 32768,
                 channel_max: int = 512, mapping_layers: int = 8,
                 mapping_lr_mul: float = 0.01, conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = (1, 3, 3, 1),
                 use_noise: bool = True, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(
            z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution,
            img_channels=img_channels, channel_base=channel_base,
            channel_max=channel_max, mapping_layers=mapping_layers,
            mapping_lr_mul=mapping_lr_mul, conv_clamp=conv_clamp,
            resample_filter=[float(v) for v in resample_filter], use_noise=use_noise,
            w_avg_beta=w_avg_beta)
        self.z_dim, self.w_dim = z_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base=channel_base,
            channel_max=channel_max, conv_clamp=conv_clamp,
            resample_filter=resample_filter, use_noise=use_noise)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws,
                                      num_layers=mapping_layers,
                                      lr_mul=mapping_lr_mul, w_avg_beta=w_avg_beta)

    @property
    def num_styles(self) -> int:
        """Number of style vectors (26 at 1024 px)."""
        return self.synthesis.num_styles

    @property
    def style_channels(self) -> list[int]:
        """Channels of each style vector, in :meth:`styles` order."""
        return [c for _, _, c, _ in self.synthesis.style_layers]

    @property
    def style_is_torgb(self) -> list[bool]:
        return [name == "torgb" for _, name, _, _ in self.synthesis.style_layers]

    def styles(self, ws: Tensor) -> list[Tensor]:
        """ws ``[N, num_ws, w_dim]`` -> list of ``num_styles`` tensors ``[N, C_l]``."""
        return self.synthesis.styles(ws)

    def synthesis_from_styles(self, styles: Sequence[Tensor],
                              noise_mode: str = "const",
                              fused: bool | str | None = None) -> Tensor:
        """Render from per-layer styles (S space); ``[N, C, R, R]`` in about [-1, 1]."""
        return self.synthesis.synthesis_from_styles(styles, noise_mode, fused)

    def forward(self, z: Tensor, truncation_psi: float | Tensor = 1.0,
                noise_mode: str = "const") -> Tensor:
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode=noise_mode)

    def extra_repr(self) -> str:
        return (f"resolution={self.img_resolution}, z_dim={self.z_dim}, "
                f"w_dim={self.w_dim}, num_ws={self.num_ws}")


class ConvOrderWeights:
    """A synthesis network's 3x3 convolution weights kept, for training, in the
    memory order their convolutions read (engine/nets/ops.py
    :func:`~engine.nets.ops.stored_weight`: channels-last, the up-sampling ones
    transposed).

    Each :class:`SynthesisLayer`'s ``weight`` is replaced, in place, by a
    parameter of the same shape ``[O, I, kh, kw]`` and values that views a
    contiguous tensor in that order, its *alias*; ``state_dict`` and everything
    that reads the weight are unchanged. Why: the activation-scaling path casts
    the weight into the convolution's layout every step and brings its gradient
    back, which from a contiguous ``[O, I, kh, kw]`` is a transposing copy each
    way (1.1 ms instead of 0.3 per 512-channel weight and pass, 2.1 with the
    up-sampling layers' transposition), and the demodulation's sums of squares
    read it too (docs/pipeline.md "Speed").

    The optimiser must update the aliases (:meth:`optimised`), not the
    parameters: torch's fused Adam copies a non-contiguous parameter, its
    gradient and its moments to contiguous memory and back on every step (27
    instead of 14 ms for nine 512-channel weights, 97 when transposed).
    :meth:`hand_over_grads` gives each alias its parameter's gradient (a view:
    the gradient arrives in the parameter's layout) before the step;
    :meth:`zero_grad` clears both.
    """

    def __init__(self, synthesis: nn.Module) -> None:
        # (parameter, alias, transposed) per re-stored weight
        self.pairs: list[tuple[nn.Parameter, Tensor, bool]] = []
        for layer in synthesis.modules():
            if not isinstance(layer, SynthesisLayer):
                continue
            old, transposed = layer.weight, layer.up != 1
            alias = stored_weight(old.detach(), transposed)
            layer.weight = nn.Parameter(weight_from_storage(alias, transposed),
                                        requires_grad=old.requires_grad)
            self.pairs.append((layer.weight, alias.requires_grad_(old.requires_grad),
                               transposed))

    def optimised(self, params: Iterable[Tensor]) -> list[Tensor]:
        """``params`` with each re-stored weight replaced by its alias: what the
        optimiser updates."""
        alias = {id(p): a for p, a, _ in self.pairs}
        return [alias.get(id(p), p) for p in params]

    def hand_over_grads(self) -> None:
        """Each alias's gradient from its parameter's (a view when the gradient
        came in the parameter's layout, as the convolutions return it)."""
        for p, alias, transposed in self.pairs:
            alias.grad = None if p.grad is None else stored_weight(p.grad, transposed)

    def zero_grad(self) -> None:
        for p, alias, _ in self.pairs:
            p.grad = alias.grad = None

    def restore_moments(self, state: dict[Any, dict[str, Any]]) -> None:
        """An optimiser's per-parameter ``state`` (after ``load_state_dict``) in
        the aliases' order: a checkpoint written before weights were kept in the
        convolutions' order holds them as ``[O, I, kh, kw]``."""
        for p, alias, transposed in self.pairs:
            for k, v in state.get(alias, {}).items():
                if isinstance(v, Tensor) and v.shape == p.shape != alias.shape:
                    state[alias][k] = stored_weight(v, transposed)
