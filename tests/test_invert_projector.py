"""The W projector (invert.method "projector", docs/reference.md "Inversion by
optimisation") on the tiny profile: the schedule, the fit, batching, determinism, the
stage's files, the warm start and resuming."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from clips import face_image
from engine.models.modelset import build_tiny
from engine.nets.lpips import LPIPS
from engine.stages.contract import StageAborted, StageContext
from engine.stages.invert import (_frame_seed, project_w, projector_schedule,
                                  w_statistics)
from engine.stages.pipeline import run_pipeline, stages_for
from fsexchange.errors import DocumentFieldError
from fsexchange.options import PipelineConfig
from test_pipeline_helpers import RATE, make_clip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nets():
    G, _ = build_tiny()
    lp = LPIPS("alex", backbone="random", heads="uniform", seed=1)
    return G.eval().requires_grad_(False), lp


def _targets(n: int = 2) -> torch.Tensor:
    """Real faces (astronaut, Grace Hopper) at the tiny generator's 64 px."""
    imgs = [cv2.resize(face_image(name), (64, 64), interpolation=cv2.INTER_AREA)
            for name in ("astronaut", "grace_hopper")[:n]]
    x = torch.from_numpy(np.stack(imgs).astype(np.float32)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def test_schedule_follows_the_reference():
    assert projector_schedule(0, 50, 0.01) == (0.0, pytest.approx(0.05))
    lr, noise = projector_schedule(25, 50, 0.01)
    assert lr == pytest.approx(0.01) and noise == pytest.approx(0.05 * (1 - 0.5 / 0.75)
                                                                ** 2)
    lr, noise = projector_schedule(49, 50, 0.01)
    assert 0 < lr < 0.001 and noise == 0.0
    # the ramp-up: linear over the first 5 %
    assert projector_schedule(1, 100, 0.01)[0] == pytest.approx(0.01 * 0.2)


@pytest.mark.slow
def test_projection_fits_real_crops_better_than_its_start(nets):
    G, lp = nets
    w_avg, w_std = w_statistics(G, 600)
    assert w_avg.shape == (64,) and w_std > 0
    x = _targets(2)
    init = w_avg[None].expand(2, -1)
    pivots, before, after = project_w(G, lp, x, init, steps=50, lr=0.01,
                                      w_std=w_std, seeds=[1, 2])
    assert pivots.shape == (2, G.num_ws, G.w_dim) and pivots.dtype == np.float32
    assert np.allclose(pivots, pivots[:, :1])  # one w in W, on every layer
    print(f"\nprojector loss per frame: {before} -> {after}")
    assert np.all(after < 0.8 * before)
    with torch.no_grad():
        mse0 = (G.synthesis(init[:, None].expand(-1, G.num_ws, -1)) - x).square()
        mse1 = (G.synthesis(torch.from_numpy(pivots)) - x).square()
    assert mse1.mean() < mse0.mean()


@pytest.mark.slow
def test_batches_and_reruns_give_the_same_pivots(nets):
    G, lp = nets
    w_avg, w_std = w_statistics(G, 600)
    x = _targets(2)
    kw = dict(steps=12, lr=0.01, w_std=w_std)
    both, _, _ = project_w(G, lp, x, w_avg[None].expand(2, -1), seeds=[5, 6], **kw)
    one, _, _ = project_w(G, lp, x[:1], w_avg[None], seeds=[5], **kw)
    two, _, _ = project_w(G, lp, x[1:], w_avg[None], seeds=[6], **kw)
    # equal up to float rounding: a batched convolution sums in another order
    np.testing.assert_allclose(both, np.concatenate([one, two]), atol=1e-3)
    assert np.abs(both - np.concatenate([one, two])).mean() < 1e-4
    again, _, _ = project_w(G, lp, x, w_avg[None].expand(2, -1), seeds=[5, 6], **kw)
    np.testing.assert_array_equal(both, again)
    other, _, _ = project_w(G, lp, x, w_avg[None].expand(2, -1), seeds=[7, 8], **kw)
    assert not np.allclose(both, other)  # the seed drives the perturbation
    assert _frame_seed(0, 3) != _frame_seed(0, 4) != _frame_seed(1, 3)


# --- the stage ------------------------------------------------------------------------

N = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("projector_clip"), N)


def _context(tmp_path, clip, name, invert, abort=lambda: False) -> StageContext:
    from fsexchange.documents import FrameRange, Job, Source

    job_dir = tmp_path / name
    (job_dir / "media").mkdir(parents=True)
    shutil.copy(clip, job_dir / "media" / "clip.mp4")
    options = {"profile": "tiny", "device": "cpu", "seed": 3,
               "invert": {"method": "projector", "projector_steps": 16, **invert}}
    job = Job(id=name, source=Source("media/clip.mp4"), range=FrameRange(0, N, RATE),
              options=options)
    return StageContext(job=job, job_dir=job_dir,
                        config=PipelineConfig.from_options(options), abort_fn=abort)


def _invert(ctx: StageContext) -> dict:
    done = run_pipeline(stages_for("stitch", until="invert"), ctx)
    return done[-1][0].facts


@pytest.mark.slow
def test_projector_stage_writes_pivots_and_losses_and_resumes(tmp_path, clip):
    ctx = _context(tmp_path, clip, "whole", {"batch_size": 2})
    facts = _invert(ctx)
    files = ctx.files.invert
    pivots, frames = files.pivots(), files.frames()
    assert frames == list(range(N)) and pivots.shape == (N, 10, 64)
    rec = files.projector()
    assert rec["method"] == "projector" and rec["steps"] == 16 and rec["lr"] == 0.01
    assert rec["frames"] == frames and len(rec["loss_after"]) == N
    assert all(a < b for a, b in zip(rec["loss_after"], rec["loss_before"]))
    assert facts["method"] == "projector" and facts["batch_size"] == 2
    assert facts["projector_loss_after"] < facts["projector_loss_before"]
    assert not files.parts_dir.exists()

    # stopped after the first batch, then resumed: the same pivots
    calls = {"n": 0}

    def abort() -> bool:
        parts = tmp_path / "resumed" / "stages" / "invert" / "parts"
        calls["n"] += 1
        return parts.is_dir() and any(parts.glob("*.npy"))

    ctx2 = _context(tmp_path, clip, "resumed", {"batch_size": 2}, abort)
    with pytest.raises(StageAborted):
        _invert(ctx2)
    assert len(list(ctx2.files.invert.parts_dir.glob("*.npy"))) == 1
    ctx2.abort_fn = lambda: False
    _invert(ctx2)
    np.testing.assert_array_equal(ctx2.files.invert.pivots(), pivots)
    assert ctx2.files.invert.projector() == rec

    # one frame at a time gives the same pivots (batching does not change them)
    ctx3 = _context(tmp_path, clip, "single", {"batch_size": 1})
    _invert(ctx3)
    single = ctx3.files.invert.pivots()
    np.testing.assert_allclose(single, pivots, atol=1e-3)
    assert np.abs(single - pivots).mean() < 1e-4

    # the warm start: every frame after the first starts at its predecessor's pivot
    ctx4 = _context(tmp_path, clip, "warm", {"batch_size": 4,
                                             "use_last_w_pivots": True})
    facts4 = _invert(ctx4)
    warm = ctx4.files.invert.projector()
    assert facts4["batch_size"] == 1 and warm["use_last_w_pivots"] is True
    assert warm["loss_before"][0] == pytest.approx(rec["loss_before"][0], rel=1e-5)
    assert np.mean(warm["loss_before"][1:]) < np.mean(rec["loss_before"][1:])


def test_unknown_method_is_a_field_error(tmp_path, clip):
    ctx = _context(tmp_path, clip, "bad", {})
    ctx = StageContext(job=ctx.job, job_dir=ctx.job_dir, config=PipelineConfig
                       .from_options({**ctx.job.options,
                                      "invert": {"method": "optimise"}}))
    from engine.stages.invert import InvertStage

    with pytest.raises(DocumentFieldError) as exc:
        InvertStage().run(ctx)
    assert exc.value.field == "options.invert.method"
