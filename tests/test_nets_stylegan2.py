"""StyleGAN2 generator: layout, semantics, determinism, torch.func friendliness."""

from __future__ import annotations

import math
import re

import pytest
import torch

from engine.nets.ops import normalize_2nd_moment
from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16,
             mapping_layers=2)


def _small(seed: int = 0, **kw) -> Generator:
    torch.manual_seed(seed)
    g = Generator(**{**SMALL, **kw}).eval()
    with torch.no_grad():  # non-trivial noise strengths and biases
        for name, p in g.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "affine" in name else 0.0))
    return g


def test_official_layout_matches_nvidia_g_ema_keys():
    """docs/models.md "G_ema keys and shapes" key patterns and shapes at 1024 px
    (built on 'meta')."""
    with torch.device("meta"):
        g = Generator(**OFFICIAL_GENERATOR_KWARGS)
    sd = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert g.num_ws == 18 and g.num_styles == 26
    ch = {r: min(32768 // r, 512) for r in [2 ** i for i in range(2, 11)]}
    assert ch[128] == 256 and ch[1024] == 32
    for i in range(8):
        assert sd[f"mapping.fc{i}.weight"] == (512, 512)
        assert sd[f"mapping.fc{i}.bias"] == (512,)
    assert sd["mapping.w_avg"] == (512,)
    assert sd["synthesis.b4.const"] == (512, 4, 4)
    assert sd["synthesis.b4.conv1.weight"] == (512, 512, 3, 3)
    assert sd["synthesis.b4.conv1.noise_strength"] == ()
    assert sd["synthesis.b4.conv1.noise_const"] == (4, 4)
    for r in [2 ** i for i in range(3, 11)]:
        assert sd[f"synthesis.b{r}.resample_filter"] == (4, 4)
        assert sd[f"synthesis.b{r}.conv0.weight"] == (ch[r], ch[r // 2], 3, 3)
        assert sd[f"synthesis.b{r}.conv0.affine.weight"] == (ch[r // 2], 512)
        assert sd[f"synthesis.b{r}.conv0.noise_const"] == (r, r)
        assert sd[f"synthesis.b{r}.conv1.weight"] == (ch[r], ch[r], 3, 3)
        assert sd[f"synthesis.b{r}.conv1.affine.weight"] == (ch[r], 512)
        assert sd[f"synthesis.b{r}.torgb.weight"] == (3, ch[r], 1, 1)
        assert sd[f"synthesis.b{r}.torgb.bias"] == (3,)
        assert sd[f"synthesis.b{r}.torgb.affine.weight"] == (ch[r], 512)
        assert sd[f"synthesis.b{r}.torgb.affine.bias"] == (ch[r],)
    for k in sd:  # every conv layer has bias, noise_strength, resample_filter
        m = re.match(r"(synthesis\.b\d+\.conv[01])\.", k)
        if m:
            for leaf in ("bias", "noise_strength", "resample_filter", "affine.bias"):
                assert f"{m.group(1)}.{leaf}" in sd
    n_params = sum(p.numel() for p in g.parameters())
    assert 30_000_000 < n_params < 30_500_000  # StyleGAN2 config F G: ~30.0 M
    assert [c for c in g.style_channels if c] and len(g.style_channels) == 26
    # conv style channels sum to StyleCLIP's 6048 (docs/reference.md "Editing")
    assert sum(c for c, t in zip(g.style_channels, g.style_is_torgb) if not t) == 6048


@pytest.mark.parametrize("res,num_ws", [(4, 2), (8, 4), (32, 8), (64, 10)])
def test_shapes_at_several_resolutions(res, num_ws):
    g = _small(img_resolution=res)
    z = torch.randn(2, 16)
    ws = g.mapping(z)
    assert ws.shape == (2, num_ws, 16) == (2, g.num_ws, g.w_dim)
    img = g.synthesis(ws)
    assert img.shape == (2, 3, res, res)
    assert len(g.styles(ws)) == g.num_styles == (num_ws - 1) + num_ws // 2


def test_mapping_semantics_and_truncation():
    g = _small()
    z = torch.randn(3, 16)
    x = normalize_2nd_moment(z)
    for i in range(2):
        fc = getattr(g.mapping, f"fc{i}")
        w = fc.weight * (0.01 / math.sqrt(16))
        x = torch.nn.functional.leaky_relu(x @ w.T + fc.bias * 0.01, 0.2) * math.sqrt(2)
    ws = g.mapping(z)
    assert torch.allclose(ws, x[:, None].expand(-1, g.num_ws, -1), atol=1e-5)
    g.mapping.w_avg.copy_(torch.randn(16))
    wt = g.mapping(z, truncation_psi=0.5)
    assert torch.allclose(wt, g.mapping.w_avg + 0.5 * (ws - g.mapping.w_avg), atol=1e-5)
    wc = g.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(wc[:, :2], wt[:, :2]) and torch.allclose(wc[:, 2:], ws[:, 2:])


def test_w_indexing_torgb_shares_next_conv0_index():
    """b4 uses w[0] (conv1), w[1] (torgb); b{r}.torgb uses the index of b{2r}.conv0."""
    g = _small()
    layers = g.synthesis.style_layers
    idx = {(b, n): i for b, n, _, i in layers}
    assert idx[("b4", "conv1")] == 0 and idx[("b4", "torgb")] == 1
    assert idx[("b8", "conv0")] == 1 and idx[("b8", "conv1")] == 2
    for r in (8, 16):
        assert idx[(f"b{r}", "torgb")] == idx[(f"b{2 * r}", "conv0")]
    assert idx[("b32", "torgb")] == g.num_ws - 1
    # changing only w[k] changes exactly the styles that read index k
    ws = g.mapping(torch.randn(1, 16))
    base = g.styles(ws)
    ws2 = ws.clone()
    ws2[:, 3] += 1.0
    changed = [not torch.equal(a, b) for a, b in zip(base, g.styles(ws2))]
    assert changed == [i == 3 for _, _, _, i in layers]


def test_styles_path_equals_ws_path_and_torgb_gain():
    g = _small()
    ws = g.mapping(torch.randn(2, 16))
    styles = g.styles(ws)
    assert torch.equal(g.synthesis(ws), g.synthesis_from_styles(styles))
    # ToRGB's style is scaled by 1/sqrt(C_in) inside (docs/reference.md "Generator")
    torgb = g.synthesis.b4.torgb
    assert torgb.weight_gain == pytest.approx(1 / math.sqrt(16))
    x = torch.randn(2, 16, 4, 4)
    s = torgb.affine(ws[:, 1])
    want = torch.einsum("nchw,oc,nc->nohw", x, torgb.weight[:, :, 0, 0],
                        s / 4.0) + torgb.bias[None, :, None, None]
    assert torch.allclose(torgb(x, ws[:, 1]), want, atol=1e-5)


def test_noise_modes():
    g = _small()
    ws = g.mapping(torch.randn(1, 16))
    a = g.synthesis(ws, noise_mode="const")
    assert torch.equal(a, g.synthesis(ws, noise_mode="const"))
    n = g.synthesis(ws, noise_mode="none")
    assert not torch.allclose(a, n)
    torch.manual_seed(5)
    r1 = g.synthesis(ws, noise_mode="random")
    r2 = g.synthesis(ws, noise_mode="random")
    assert not torch.allclose(r1, r2)
    with torch.no_grad():
        for m in g.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.zero_()
    assert torch.allclose(g.synthesis(ws, noise_mode="const"),
                          g.synthesis(ws, noise_mode="none"))
    with pytest.raises(ValueError):
        g.synthesis(ws, noise_mode="bogus")


def test_determinism_and_fused_paths_agree():
    g1, g2 = _small(seed=3), _small(seed=3)
    z = torch.randn(4, 16)
    assert torch.equal(g1(z), g2(z))
    ws = g1.mapping(z)
    a = g1.synthesis(ws, fused=True)
    b = g1.synthesis(ws, fused=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_functional_call_over_stacked_parameter_sets():
    """What stitching tuning does: per-frame parameter copies, stacked along a
    leading axis, rendered in one call (grouped convolutions)."""
    from torch.func import functional_call

    g = _small()
    params = {k: v.detach() for k, v in g.named_parameters()}
    buffers = {k: v for k, v in g.named_buffers()}
    ws = g.mapping(torch.randn(3, 16)).detach()
    # 1. functional_call with a modified parameter dict
    p2 = {k: v + 0.01 * torch.randn_like(v) for k, v in params.items()}
    out = functional_call(g.synthesis, {**{k[len("synthesis."):]: v for k, v in
                                            p2.items() if k.startswith("synthesis.")},
                                        **{k[len("synthesis."):]: v for k, v in
                                           buffers.items()
                                           if k.startswith("synthesis.")}},
                          (ws[:1],))
    assert out.shape == (1, 3, 32, 32)
    assert not torch.allclose(out, g.synthesis(ws[:1]))
    # 2. three stacked parameter sets (affines shared) == three separate calls
    syn = {k[len("synthesis."):]: v for k, v in params.items()
           if k.startswith("synthesis.")}
    syn_b = {k[len("synthesis."):]: v for k, v in buffers.items()
             if k.startswith("synthesis.")}
    per_frame = [k for k in syn if ".affine." not in k]
    assert any(k.endswith(".const") for k in per_frame)
    assert any(k.endswith(".noise_strength") for k in per_frame)
    sets = [{k: v + 0.05 * torch.randn_like(v) for k, v in syn.items()}
            for _ in range(3)]
    for s in sets[1:]:  # the affines are shared (not stacked)
        s.update({k: sets[0][k] for k in syn if k not in per_frame})
    stacked = {k: torch.stack([s[k] for s in sets]) if k in per_frame else sets[0][k]
               for k in syn}
    for noise_mode in ("const", "none"):
        batched = functional_call(g.synthesis, {**stacked, **syn_b}, (ws,),
                                  {"noise_mode": noise_mode})
        assert batched.shape == (3, 3, 32, 32)
        for i in range(3):
            single = functional_call(g.synthesis, {**sets[i], **syn_b},
                                     (ws[i:i + 1],), {"noise_mode": noise_mode})[0]
            assert torch.allclose(batched[i], single, atol=1e-5)
    # gradients reach every frame's copy, and only from that frame's image
    leaves = {k: (v.clone().requires_grad_(True) if k in per_frame else v)
              for k, v in stacked.items()}
    img = functional_call(g.synthesis, {**leaves, **syn_b}, (ws,))
    img[1].square().mean().backward()
    grad = leaves["b32.conv1.weight"].grad
    assert grad is not None and grad[1].abs().sum() > 0
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_forward_does_not_modify_inputs_or_parameters():
    g = _small()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    z = torch.randn(2, 16)
    z0 = z.clone()
    img = g(z, truncation_psi=0.7)
    img.mean().backward()
    assert torch.equal(z, z0)
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("fused", [True, False, "hybrid", "modulated"])
def test_conv_order_weights_train_as_the_plain_parameters(fused):
    """ConvOrderWeights (what PTI and the refinement train): the same network,
    state_dict and outputs; each re-stored weight views a contiguous alias in its
    convolution's order; Adam over the aliases, with the gradients handed over
    as views, takes the plain network's steps (float64: up to the order of the
    sums), in every modulation path; a checkpoint's moments in the old layout
    are brought into the aliases' order."""
    from adam_steps import step_plain_and_conv_order
    from engine.nets.ops import stored_weight
    from engine.nets.stylegan2 import ConvOrderWeights, SynthesisLayer

    plain = _small(seed=5).double().train()
    ours = _small(seed=5).double().train()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    order = ConvOrderWeights(ours.synthesis)
    after = ours.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    layers = [m for m in ours.synthesis.modules() if isinstance(m, SynthesisLayer)]
    assert len(order.pairs) == len(layers) > 0
    for layer, (p, alias, transposed) in zip(layers, order.pairs):
        assert layer.weight is p and p.shape == (layer.out_channels,
                                                 layer.in_channels, 3, 3)
        assert alias.is_contiguous() and alias.data_ptr() == p.data_ptr()
        assert transposed == (layer.up != 1)
        assert torch.equal(alias, stored_weight(p.detach(), transposed))
    with torch.no_grad():
        ws = plain.mapping(torch.randn(2, 16, dtype=torch.float64))
    target = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    opts = [torch.optim.Adam(plain.synthesis.parameters(), lr=1e-2, fused=True),
            torch.optim.Adam(order.optimised(ours.synthesis.parameters()), lr=1e-2,
                             fused=True)]
    params = set(map(id, ours.synthesis.parameters()))
    assert sum(id(t) not in params for t in opts[1].param_groups[0]["params"]) \
        == len(order.pairs)
    def views(order):  # the aliases' gradients view the parameters': no copies
        for p, alias, _ in order.pairs:
            assert alias.grad.data_ptr() == p.grad.data_ptr()

    for _ in range(3):
        step_plain_and_conv_order(plain, ours, order, opts, ws, target, fused,
                                  views)
    for (k, a), b in zip(plain.synthesis.state_dict().items(),
                         ours.synthesis.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)
    # moments saved in the parameters' layout (an earlier release's checkpoint)
    saved = opts[0].state_dict()
    opts[1].load_state_dict(saved)
    order.restore_moments(opts[1].state)
    for (_p, alias, transposed), q in zip(order.pairs, [
            m.weight for m in plain.synthesis.modules()
            if isinstance(m, SynthesisLayer)]):
        st, want = opts[1].state[alias], opts[0].state[q]
        assert st["exp_avg"].shape == alias.shape
        assert torch.equal(st["exp_avg"], stored_weight(want["exp_avg"], transposed))
