"""PTI pieces on the tiny generator: gradient checkpointing, the locality
regulariser, the bounded target cache, mid-pass resume, batch-1 equivalence."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fsexchange.options import PTIConfig
from engine.models.modelset import build_tiny
from engine.nets.lpips import LPIPS
from engine.stages.pti import PTITuner, TargetCache
from adam_steps import close_steps


class _Clip:
    def __init__(self, crops):
        self.crops = crops
        self.reads = 0

    def crop(self, f):
        self.reads += 1
        return self.crops[f]


@pytest.fixture(scope="module")
def nets():
    G, _ = build_tiny()
    lp = LPIPS("alex", backbone="random", heads="uniform", seed=1)
    with torch.no_grad():
        ws = G.mapping(torch.randn(5, G.z_dim, generator=torch.Generator()
                                   .manual_seed(3)), truncation_psi=0.7)
        imgs = G.synthesis(G.mapping(torch.randn(5, G.z_dim))).clamp(-1, 1)
    crops = [((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
             for im in imgs]
    return G, lp, ws.numpy().astype(np.float32), crops


def test_gradient_checkpointing_gives_the_same_gradients(nets):
    G, _, ws, _ = nets
    G = G.train()
    G.synthesis.requires_grad_(True)
    w = torch.from_numpy(ws[:2])
    grads = []
    for ck in (False, True):
        G.zero_grad()
        G.synthesis(w, checkpointing=ck).square().mean().backward()
        grads.append([p.grad.clone() for p in G.synthesis.parameters()])
    G.synthesis.requires_grad_(False)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_target_cache_is_bounded_and_rereads(nets):
    G, lp, _, crops = nets
    clip = _Clip(crops)
    tc = TargetCache(clip, 64, "cpu", lp, limit=2)
    x, feats = tc.batch([0, 1, 2])
    assert x.shape == (3, 3, 64, 64) and len(feats) == 5
    assert len(tc.cache) == 2 and clip.reads == 3
    x2, f2 = tc.batch([2, 0])
    assert clip.reads == 4  # frame 2 was not kept: read again; frame 0 cached
    assert all(f in tc.cache for f in (0, 1))
    torch.testing.assert_close(x2[0], x[2])
    torch.testing.assert_close(f2[0][1], feats[0][0])
    with torch.no_grad():  # cached features are LPIPS's own features of the crop
        torch.testing.assert_close(lp.feature_maps(x[:1])[3], feats[3][:1])


def _run(tuner, steps=None):
    n = 0
    while not tuner.done and (steps is None or n < steps):
        tuner.step()
        n += 1
    return tuner


def test_resume_mid_pass_equals_uninterrupted(nets):
    G, lp, ws, crops = nets
    cfg = PTIConfig(steps=3, batch_size=2, lr=1e-3)

    def tuner():
        return PTITuner(G, lp, ws, range(5), TargetCache(_Clip(crops), 64, "cpu", lp,
                                                         8), cfg, seed=7)

    whole = _run(tuner())
    first = _run(tuner(), steps=4)  # stops inside pass 2 (3 batches per pass)
    assert first.state["pass"] == 1 and first.state["batch"] == 1
    saved = first.state_dict()
    second = tuner()
    second.load_state_dict(saved)
    _run(second)
    assert second.state["passes"] == whole.state["passes"]
    for a, b in zip(whole.G.state_dict().values(), second.G.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_batch_one_without_scaling_is_the_reference_loop(nets):
    """Batch 1 in order of the seeded permutation takes the reference's steps: with
    one frame there is nothing to permute, so it matches a plain loop step for step
    (up to the order of float sums: the tuner keeps its conv weights in the
    convolutions' memory order, see close_steps)."""
    G, lp, ws, crops = nets
    cfg = PTIConfig(steps=2, batch_size=1, lr=1e-3)
    t = _run(PTITuner(G, lp, ws[:1], [0], TargetCache(_Clip(crops), 64, "cpu", lp, 8),
                      cfg))
    ref = G.__class__(**G.init_kwargs)
    ref.load_state_dict(G.state_dict())
    ref.requires_grad_(False)
    ref.synthesis.requires_grad_(True)
    opt = torch.optim.Adam(ref.synthesis.parameters(), lr=1e-3)
    x = TargetCache(_Clip(crops), 64, "cpu", lp, 8).batch([0])[0]
    for _ in range(2):
        img = ref.synthesis(torch.from_numpy(ws[:1]))
        loss = 10 * (img - x).square().mean() + lp(img, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    close_steps([a.detach() for a in t.G.synthesis.parameters()],
                [b.detach() for b in ref.synthesis.parameters()], 1e-3, 2)


def test_locality_regulariser_adds_a_term(nets):
    G, lp, ws, crops = nets
    base = PTIConfig(steps=1, batch_size=5, lr=1e-3)
    losses = []
    for reg in (False, True):
        t = PTITuner(G, lp, ws, range(5), TargetCache(_Clip(crops), 64, "cpu", lp, 8),
                     replace(base, steps=2, locality_reg=reg), seed=1)
        losses.append((t.step(), t.step()))
    # step 1: the tuned G is still the original one, so the term is 0 (and so is
    # its gradient); step 2 is the same step plus a positive regulariser
    assert losses[1][0] == losses[0][0]
    assert losses[1][1] > losses[0][1]
