"""The tolerance of two trainings that take the same Adam steps in another order
of float sums (a formulation, a memory layout): shared by the recipe and PTI
tests."""

from __future__ import annotations

import torch


def close_steps(a, b, lr, steps):
    """Two networks' weights (lists of tensors) after the same ``steps`` Adam steps:
    equal up to float rounding. Adam divides by sqrt(v), so where a gradient is
    near zero, the rounding of another formulation's sums can flip its sign, and
    the two updates (each at most lr per step) then differ by up to 2 lr per step.
    So: no element beyond that, few beyond lr/20 (1 in 10^4), and the whole
    network's mean difference below a thousandth of one step (an element that
    takes a step moves by about lr; rounding alone leaves an ulp or two, which is
    2.4e-7 at the unit-sized weights, and any wrong factor in a formulation moves
    whole tensors by a fraction of lr)."""
    d = torch.cat([(x - y).abs().flatten() for x, y in zip(a, b)])
    assert float(d.max()) <= 2 * steps * lr
    assert float((d > lr / 20).float().mean()) < 1e-4
    assert float(d.mean()) < lr / 1000


def step_plain_and_conv_order(plain, ours, order, opts, ws, target, fused,
                              after_hand_over=None):
    """One Adam step of a plain network and of one whose conv weights are
    ``order`` (stylegan2.ConvOrderWeights), each on the mean-square error of its
    synthesis at ``ws`` against ``target``; ``opts``: their two optimisers.
    ``after_hand_over(order)`` runs once the aliases hold their gradients."""
    for G, opt in zip((plain, ours), opts):
        opt.zero_grad(set_to_none=True)
        if G is ours:
            order.zero_grad()
        (G.synthesis(ws, fused=fused) - target).square().mean().backward()
        if G is ours:
            order.hand_over_grads()
            if after_hand_over is not None:
                after_hand_over(order)
        opt.step()
