"""The text tower of CLIP (Radford et al. 2021), with OpenAI's parameter names.

Only what StyleCLIP's global directions need (docs/reference.md "StyleCLIP global
directions"): token ids in, one embedding per text out. The parameters are named as
in OpenAI's released models, so the text part of their state dict loads as it is
(:func:`text_tower_from_state`; ``engine.models.formats.clip`` reads it out of
``ViT-B-32.pt`` without running the file's code):

===================================================  ==========================
``token_embedding.weight``                           ``[vocab, width]``
``positional_embedding``                             ``[context, width]``
``transformer.resblocks.{i}.ln_1.weight/bias``       ``[width]``
``transformer.resblocks.{i}.attn.in_proj_weight``    ``[3 · width, width]`` (q, k, v)
``transformer.resblocks.{i}.attn.in_proj_bias``      ``[3 · width]``
``transformer.resblocks.{i}.attn.out_proj.weight``   ``[width, width]`` (+ bias)
``transformer.resblocks.{i}.ln_2.weight/bias``       ``[width]``
``transformer.resblocks.{i}.mlp.c_fc.weight``        ``[4 · width, width]`` (+ bias)
``transformer.resblocks.{i}.mlp.c_proj.weight``      ``[width, 4 · width]`` (+ bias)
``ln_final.weight/bias``                             ``[width]``
``text_projection``                                  ``[width, embed]``
===================================================  ==========================

ViT-B/32: vocab 49,408, context 77, width 512, 8 heads (width / 64, as OpenAI's
loader infers them), 12 blocks, embed 512. A block is pre-norm: ``x + attn(ln_1(x))``
with causal self-attention, then ``x + mlp(ln_2(x))`` with the "quick GELU"
``x · sigmoid(1.702 x)``. The text's feature is the final-norm output at its
end-of-text token (the largest id in a row) times ``text_projection``. Layer norms
run in float32 whatever the weights' dtype.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsexchange.errors import ModelFormatError

__all__ = ["CLIPTextTransformer", "TEXT_KEYS", "text_tower_state",
           "text_tower_from_state"]

#: Prefixes of the text tower's keys in a full CLIP state dict.
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
             "text_projection")


class _LayerNorm(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class _Attention(nn.Module):
    """Multi-head self-attention with q, k, v in one ``in_proj`` (OpenAI's names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, W], causal
        b, n, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class _MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # quick GELU


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = _LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = _LayerNorm(width)
        self.mlp = _MLP(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class CLIPTextTransformer(nn.Module):
    """CLIP's text encoder.

    Args:
        vocab_size, context_length, width, heads, layers, embed_dim: the
            architecture (ViT-B/32: 49408, 77, 512, 8, 12, 512).

    ``forward(tokens [N, context] int64) -> [N, embed_dim]`` (not normalised).
    """

    def __init__(self, vocab_size: int = 49408, context_length: int = 77,
                 width: int = 512, heads: int = 8, layers: int = 12,
                 embed_dim: int = 512) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width)
                                                 * 0.01)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_final = _LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim)
                                            * width ** -0.5)

    @property
    def embed_dim(self) -> int:
        return int(self.text_projection.shape[1])

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"tokens must be [N, {self.context_length}], got "
                             f"{tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding  # [N, L, W]
        x = self.ln_final(self.transformer(x))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection


def text_tower_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The text tower's entries of a full CLIP state dict (the vision tower, the
    logit scale and the archive's size constants are left out)."""
    return {k: v for k, v in state.items() if k.startswith(TEXT_KEYS)}


def text_tower_from_state(state: Mapping[str, Tensor]) -> CLIPTextTransformer:
    """Build the text encoder that ``state`` (OpenAI's key names, text keys or the
    whole model) describes and load it strictly, in float32, eval mode.

    The sizes are read from the shapes as OpenAI's loader reads them; heads =
    width / 64 (at least 1, for stand-ins narrower than 64).

    Raises:
        ModelFormatError: keys or shapes that are not a CLIP text tower.
    """
    text = text_tower_state(state)
    try:
        vocab, width = text["token_embedding.weight"].shape
        context = text["positional_embedding"].shape[0]
        embed = text["text_projection"].shape[1]
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelFormatError(f"not a CLIP text tower: {exc!r} is missing or has "
                               "the wrong shape (expected OpenAI's key names)"
                               ) from None
    blocks = "transformer.resblocks."
    layers = len({k.split(".")[2] for k in text if k.startswith(blocks)})
    if layers == 0:
        raise ModelFormatError("not a CLIP text tower: no transformer.resblocks")
    net = CLIPTextTransformer(int(vocab), int(context), int(width),
                              max(1, int(width) // 64), layers, int(embed))
    try:
        net.load_state_dict({k: v.float() for k, v in text.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError("the CLIP text weights do not match OpenAI's text "
                               f"tower: {str(exc).splitlines()[0][:300]}") from None
    return net.eval().requires_grad_(False)
