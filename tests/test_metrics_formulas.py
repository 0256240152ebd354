"""The metrics on a known pair of videos against direct implementations of the
formulas (docs/reference.md "Warping error", "Identity metrics TL-ID and TG-ID"),
the identity network choice, the labels, and ``--compare-paper``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clips import ClipSpec, render_frames, write_clip
from engine.media.video import read_frames
from engine.quality.flow import flow_backend, to_unit
from engine.quality.identity import Box, DlibEmbedder, build_iresnet
from engine.quality.metrics import DEFINITIONS, temporal_metrics
from engine.quality.paper import PAPER_FIGURES, comparison
from engine.models.store import models_root
from host_bridge.cli import main as cli

N = 7


# --- direct implementations ----------------------------------------------------------


def _resample(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """FlowNet2's Resample2d as Lai et al. use it: ``img`` at ``p + flow(p)``,
    bilinear in float64, sample positions clamped to the image."""
    h, w = flow.shape[:2]
    img = np.asarray(img, np.float64)
    img = img[..., None] if img.ndim == 2 else img
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = xx + flow[..., 0], yy + flow[..., 1]
    x0, y0 = np.floor(x), np.floor(y)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    xa, ya = x0.astype(int), y0.astype(int)
    xl, xr = np.clip(xa, 0, w - 1), np.clip(xa + 1, 0, w - 1)
    yt, yb = np.clip(ya, 0, h - 1), np.clip(ya + 1, 0, h - 1)
    top = (1 - ax) * img[yt, xl] + ax * img[yt, xr]
    bottom = (1 - ax) * img[yb, xl] + ax * img[yb, xr]
    return (1 - ay) * top + ay * bottom


def _lai_occlusion(fw_flow: np.ndarray, bw_flow: np.ndarray) -> np.ndarray:
    """Lai et al.'s ``detect_occlusion(fw_flow, bw_flow)``, which their evaluation
    calls with the flows swapped: (flow t+1 -> t, flow t -> t+1). 1 = occluded."""
    def mag(f):
        return f[..., 0] ** 2 + f[..., 1] ** 2

    fw_flow_w = _resample(fw_flow, bw_flow)
    mask1 = mag(fw_flow_w + bw_flow) > 0.01 * (mag(fw_flow_w) + mag(bw_flow)) + 0.5
    grad = np.zeros(bw_flow.shape[:2])
    for c in range(2):
        u = bw_flow[..., c]
        du, dv = np.zeros_like(u), np.zeros_like(u)
        du[:, :-1] = u[:, :-1] - u[:, 1:]
        dv[:-1, :] = u[:-1, :] - u[1:, :]
        grad += du ** 2 + dv ** 2
    mask2 = grad > 0.01 * mag(bw_flow) + 0.002
    return (mask1 | mask2).astype(np.float64)


def _lai_warp_error(img1, img2, fw, bw) -> float:
    """``evaluate_WarpError.py`` for one pair: frames in [0, 1], a 3-channel
    non-occlusion mask, ``Σ (M·(warp(img2) − img1))² / Σ M``."""
    noc = np.repeat(1.0 - _lai_occlusion(bw, fw)[..., None], 3, axis=2)
    diff = (_resample(img2, fw) - img1) * noc
    n = noc.sum() or diff.size
    return float(np.sum(diff ** 2) / n)


def _identity_ratios(es: np.ndarray, ee: np.ndarray, frames: list[int]
                     ) -> tuple[float, float]:
    """TL-ID and TG-ID from the full similarity matrices: R = S_edit / S_src,
    TL = mean of R over pairs (t, t+1), TG = mean of R off the diagonal."""
    r = (ee @ ee.T) / (es @ es.T)
    tl = np.mean([r[k, k + 1] for k in range(len(frames) - 1)
                  if frames[k + 1] == frames[k] + 1])
    return float(tl), float(r[~np.eye(len(frames), dtype=bool)].mean())


# --- a known pair of videos -----------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("formulas")
    src = render_frames(ClipSpec(frames=N, rotate=4, zoom=0.05))
    rng = np.random.default_rng(7)
    edited = []
    for i, f in enumerate(src):
        g = f.astype(np.float32)
        g[70:170, 110:210] *= 1.0 + 0.12 * (-1) ** i  # a flickering face region
        g += rng.normal(0, 3, g.shape)
        edited.append(np.clip(g, 0, 255).astype(np.uint8))
    a = write_clip(d / "source.mkv", src, codec="ffv1")
    b = write_clip(d / "edited.mkv", edited, codec="ffv1")
    return {"source": a, "edited": b, "dir": d,
            "src": [f for _, f in read_frames(a, 0, N)],
            "ed": [f for _, f in read_frames(b, 0, N)]}


@pytest.mark.slow
def test_metrics_match_direct_implementations_of_the_formulas(pair):
    src, ed = pair["src"], pair["ed"]
    m = temporal_metrics(src, ed)
    assert m.frames == N and m.frames_without_face == 0
    assert m.backends["identity"] == "dlib-resnet-v1"  # no ArcFace installed here

    # E_warp: flows on the source pair, Lai et al.'s occlusion test and error
    flow = flow_backend("dis")
    direct_ed, direct_src = [], []
    for t in range(N - 1):
        fw, bw = (f.astype(np.float64) for f in flow.pair(src[t], src[t + 1]))
        direct_ed.append(_lai_warp_error(to_unit(ed[t]), to_unit(ed[t + 1]), fw, bw))
        direct_src.append(_lai_warp_error(to_unit(src[t]), to_unit(src[t + 1]), fw,
                                          bw))
    # OpenCV's bilinear interpolates with 1/32-pixel weights where Resample2d is
    # exact: per pair the two agree to a fraction of a percent
    np.testing.assert_allclose(m.per_frame["warp_error"][1:], direct_ed, rtol=1e-2)
    np.testing.assert_allclose(m.per_frame["warp_error_source"][1:], direct_src,
                               rtol=1e-2)
    assert m.warp_error == pytest.approx(np.mean(direct_ed), rel=5e-3)
    assert m.warp_error_source == pytest.approx(np.mean(direct_src), rel=5e-3)
    assert m.warp_error > 3 * m.warp_error_source  # the flicker shows

    # TL-ID / TG-ID: full matrices from the measured faces
    emb = DlibEmbedder()
    frames = [i for i, b in enumerate(m.boxes["source"]) if b is not None]
    es = np.stack([emb.embed(src[i], Box(*m.boxes["source"][i])) for i in frames])
    ee = np.stack([emb.embed(ed[i], Box(*m.boxes["edited"][i])) for i in frames])
    tl, tg = _identity_ratios(es.astype(np.float64), ee.astype(np.float64), frames)
    assert m.tl_id == pytest.approx(tl, rel=1e-6)
    assert m.tg_id == pytest.approx(tg, rel=1e-6)
    assert m.tl_id < 1.0


def test_results_say_what_they_measure(pair):
    m = temporal_metrics(pair["src"][:3], pair["src"][:3])
    d = m.to_dict()
    assert d["definitions"] == DEFINITIONS
    assert "Lai et al. 2018" in d["definitions"]["warp_error"]
    assert "source frame t to t+1" in d["definitions"]["warp_error"]
    assert d["identity_network"].startswith("dlib ResNet")
    assert "papers use ArcFace" in d["identity_network"]
    assert "boxes" not in d and len(m.boxes["source"]) == 3


def _install_tiny_arcface() -> None:
    import torch

    torch.manual_seed(0)
    net = build_iresnet([1, 1, 1, 1], 16)
    state = {k: (torch.randn_like(v) * 0.05 if v.dtype.is_floating_point
                 and "running" not in k else v) for k, v in net.state_dict().items()}
    folder = models_root() / "arcface"
    folder.mkdir(parents=True)
    torch.save(state, folder / "backbone.pth")


def test_arcface_is_used_when_installed(pair):
    frames = pair["src"][:2]
    assert temporal_metrics(frames, frames).backends["identity"] == "dlib-resnet-v1"
    _install_tiny_arcface()
    m = temporal_metrics(frames, frames)
    assert m.backends["identity"].startswith("arcface-iresnet")
    assert m.to_dict()["identity_network"].startswith("ArcFace (backbone.pth)")


@pytest.mark.slow
def test_compare_paper_prints_published_figures_with_caveats(pair, capsys):
    rc = cli(["metrics", "--source", str(pair["source"]), "--edited",
              str(pair["edited"]), "--range", "0:3", "--compare-paper"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "E_warp" in out and "as defined by Lai et al. 2018" in out
    assert "identity network: dlib ResNet" in out
    assert "published figures beside ours" in out
    assert "STIT 0.996" in out and "PTI 0.901" in out and "direct editing 0.0076" in out
    assert "not ArcFace as in the papers" in out and "not been re-checked" in out
    rc = cli(["metrics", "--source", str(pair["source"]), "--edited",
              str(pair["edited"]), "--range", "0:3", "--compare-paper", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0
    rows = {r["metric"]: r for r in d["paper"]["rows"]}
    assert rows["tl_id"]["ours"] == d["tl_id"]
    assert [f["value"] for f in rows["warp_error"]["published"]] == [0.0031, 0.0076]
    assert len(d["paper"]["caveats"]) >= 4


def test_comparison_caveats_follow_the_backends():
    ours = {"tl_id": 0.99, "tg_id": 0.95, "warp_error": 0.004,
            "warp_error_source": 0.002,
            "backends": {"identity": "arcface-onnx:w600k_r50.onnx",
                         "flow": "raft-large:raft-things.pth"}}
    c = comparison(ours)
    text = " ".join(c["caveats"])
    assert "as the papers do" in text and "raft-large" in text and "0.00200" in text
    assert sum(len(r["published"]) for r in c["rows"]) == len(PAPER_FIGURES)
