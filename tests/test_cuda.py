"""The training loops on a CUDA GPU (marked ``gpu``: skipped where torch sees none,
as on CI; run them on a GPU machine with ``bench/gpu_check.sh``).

What the CPU suite proves for the CPU, checked again where the kernels differ:
float32 is IEEE float32 (cuDNN would otherwise take float32 convolutions as
TF32); the reference recipe's PTI on the GPU takes the CPU's steps; the conv-order
weights train as the plain parameters; every stitching formulation matches the
reference's per-frame loop; bfloat16 trains like float32; the labelled tf32
precision trains its steps, forward and backward, in TensorFloat-32 and like
float32; the fast recipe measures its formulation and batch on the GPU; and the
benchmark runs there (with its tf32 rows)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fsexchange.options import (PTI_FORMULATIONS, STITCH_FORMULATIONS, PipelineConfig,
                                StitchConfig)
from engine.models.formulations import FormulationRecords
from engine.stages.formulation import choose
from engine.stages.pti import TargetCache, pti_candidates
from engine.stages.recipe import TrainingPlan, pti_plan
from engine.stages.stitch_tune import BatchedStitcher, EditLatents, tune_reference
from adam_steps import close_steps, step_plain_and_conv_order
from bench_run import run_pipeline_bench
from tiny_training import CropClip, pti_nets, pti_tuner
from tiny_training import stitch_inputs as tiny_stitch_inputs

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
CUDA = "cuda"
# float32 stitching copies agree within the order of float sums (as on the CPU)
ATOL = 2e-4


@pytest.fixture(scope="module")
def nets():
    from engine.devices import exact_float32

    exact_float32()  # as every compute process (engine/stages/compute.py)
    return pti_nets()


def test_float32_is_ieee_float32_on_the_gpu(tmp_path):
    """A 512-channel convolution in float32 on the GPU within float32 rounding of
    float64 (TF32, cuDNN's default on Ampere and later, is off by ~1e-3)."""
    from engine.stages.compute import pin_threads

    pin_threads(tmp_path)
    x = torch.randn(1, 512, 32, 32, dtype=torch.float64)
    w = torch.randn(512, 512, 3, 3, dtype=torch.float64) / 48
    exact = torch.nn.functional.conv2d(x, w, padding=1)
    got = torch.nn.functional.conv2d(x.float().to(CUDA), w.float().to(CUDA),
                                     padding=1).cpu().double()
    assert float((got - exact).abs().max() / exact.abs().max()) < 1e-5


@pytest.mark.parametrize("formulation", PTI_FORMULATIONS)
def test_reference_pti_on_the_gpu_takes_the_cpus_steps(nets, formulation):
    G, lp, ws, crops = nets
    crops = crops[:3]
    plan = TrainingPlan(recipe="reference", batch_size=1, dtype="float32", lr=2e-3,
                        shuffle=False, formulation=formulation)
    cpu = pti_tuner(G, lp, ws, crops, "cpu", plan)
    gpu = pti_tuner(G, lp, ws, crops, CUDA, plan)
    for k in range(6):
        assert gpu.step() == pytest.approx(cpu.step(), rel=1e-4), k
        close_steps([p.detach().cpu() for p in gpu.G.synthesis.parameters()],
                    [p.detach() for p in cpu.G.synthesis.parameters()], 2e-3, k + 1)
    assert gpu.done and cpu.done


@pytest.mark.parametrize("fused", [True, False, "hybrid", "modulated"])
def test_conv_order_weights_train_as_the_plain_parameters_on_the_gpu(nets, fused):
    """The fused CUDA Adam over the conv-order aliases takes the plain
    parameters' steps (the CPU test's check, float32 on the GPU)."""
    from engine.nets.stylegan2 import ConvOrderWeights

    torch.manual_seed(0)  # the same latents and target on every run
    G = nets[0]
    plain = copy.deepcopy(G).to(CUDA).train()
    ours = copy.deepcopy(G).to(CUDA).train()
    order = ConvOrderWeights(ours.synthesis)
    with torch.no_grad():
        ws = plain.mapping(torch.randn(2, G.z_dim, device=CUDA))
    target = torch.randn(2, 3, G.img_resolution, G.img_resolution, device=CUDA)
    opts = [torch.optim.Adam(plain.synthesis.parameters(), lr=1e-3, fused=True),
            torch.optim.Adam(order.optimised(ours.synthesis.parameters()), lr=1e-3,
                             fused=True)]
    for step in range(3):
        step_plain_and_conv_order(plain, ours, order, opts, ws, target, fused)
        close_steps([p.detach().cpu() for p in ours.synthesis.parameters()],
                    [p.detach().cpu() for p in plain.synthesis.parameters()], 1e-3,
                    step + 1)


@pytest.fixture(scope="module")
def stitch_inputs(nets):
    return tiny_stitch_inputs(CUDA)


@pytest.mark.parametrize("formulation", STITCH_FORMULATIONS)
def test_every_stitching_formulation_matches_the_per_frame_loop_on_the_gpu(
        stitch_inputs, formulation):
    G, ws, target, border, content = stitch_inputs
    cfg = StitchConfig(steps=6)
    ref = tune_reference(G, ws, target, border, content, cfg)
    ours = BatchedStitcher(G, cfg, formulation=formulation).tune(
        EditLatents(ws=ws), target, border, content)
    assert (ours.images - ref.images).abs().max().item() < ATOL
    np.testing.assert_allclose(ours.curves, ref.curves, rtol=1e-4, atol=1e-6)
    assert all(a < b for a, b in zip(ref.after, ref.before))


def test_bfloat16_trains_like_float32_on_the_gpu(nets, stitch_inputs):
    """Mixed precision on the GPU: PTI's losses follow float32's, and stitching
    reaches the reference loop's border loss (the CPU test's criteria)."""
    G, lp, ws, crops = nets
    losses = {}
    for dtype in ("float32", "bfloat16"):
        plan = TrainingPlan(recipe="fast", batch_size=2, dtype=dtype, lr=2e-3,
                            shuffle=True, formulation="hybrid")
        t = pti_tuner(G, lp, ws, crops, CUDA, plan, passes=3)
        losses[dtype] = [t.step() for _ in range(6)]
    assert all(np.isfinite(losses["bfloat16"]))
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=3e-2)
    Gs, ws_, target, border, content = stitch_inputs
    cfg = StitchConfig(steps=8)
    ref = tune_reference(Gs, ws_, target, border, content, cfg)
    bf = BatchedStitcher(Gs, cfg, "bfloat16").tune(EditLatents(ws=ws_), target,
                                                   border, content)
    assert bf.images.dtype == torch.float32
    rel = np.abs(np.array(bf.after) - np.array(ref.after)) / np.array(ref.after)
    assert rel.max() < 0.02
    assert np.all(np.array(bf.before) - np.array(bf.after)
                  > 0.8 * (np.array(ref.before) - np.array(ref.after)))


class ConvSwitches(TorchDispatchMode):
    """Records, per convolution operator called (forward and backward alike:
    the mode stays active while autograd runs the backward), the TF32 switch
    cuDNN reads at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("convolution", "convolution_backward"):
            self.calls.append((name, torch.backends.cudnn.allow_tf32))
        return func(*args, **(kwargs or {}))

    @property
    def seen(self) -> set[tuple[str, bool]]:
        return set(self.calls)

    def runs(self) -> list[bool]:
        """The switch's values in call order, repeats merged."""
        return [on for i, (_, on) in enumerate(self.calls)
                if i == 0 or self.calls[i - 1][1] != on]


def test_tf32_steps_run_in_tensor_float32_and_train_like_float32(nets,
                                                                 stitch_inputs):
    """``dtype: tf32``: every convolution of a PTI and a stitching step, forward
    and backward, runs with TF32 on (float32's with it off), the switch is off
    again after them; PTI's losses follow float32's and stitching reaches the
    reference loop's border loss."""
    from engine.devices import tf32_capable

    if not tf32_capable(CUDA):
        pytest.skip("this GPU has no TensorFloat-32 (compute capability < 8.0)")
    G, lp, ws, crops = nets
    both = {("convolution", True), ("convolution_backward", True)}
    losses = {}
    for dtype in ("float32", "tf32"):
        plan = TrainingPlan(recipe="reference", batch_size=1, dtype=dtype, lr=2e-3,
                            shuffle=False, formulation="modulated")
        t = pti_tuner(G, lp, ws, crops[:3], CUDA, plan)
        with ConvSwitches() as mode:
            losses[dtype] = [t.step() for _ in range(6)]
        on = dtype == "tf32"
        assert mode.seen == {(n, on) for n, _ in both}, dtype
        assert torch.backends.cudnn.allow_tf32 is False
    np.testing.assert_allclose(losses["tf32"], losses["float32"], rtol=1e-2)
    Gs, ws_, target, border, content = stitch_inputs
    cfg = StitchConfig(steps=8)
    ref = tune_reference(Gs, ws_, target, border, content, cfg)
    with ConvSwitches() as mode:
        tf = BatchedStitcher(Gs, cfg, "tf32").tune(EditLatents(ws=ws_), target,
                                                   border, content)
    # the float32 render of the interior target, every step in TF32, the float32
    # render of the delivered crops (an up-sampling convolution runs as a
    # convolution's input gradient, so the renders call convolution_backward too)
    assert mode.runs() == [False, True, False]
    assert {c for c in mode.calls if c[1]} == both
    assert torch.backends.cudnn.allow_tf32 is False
    rel = np.abs(np.array(tf.after) - np.array(ref.after)) / np.array(ref.after)
    assert rel.max() < 0.02


def test_tf32_refinement_steps_run_in_tensor_float32(nets):
    """The temporal refinement under ``dtype: tf32``: both phases' steps (the
    latent mapper's, then the generator's), forward and backward, in TF32."""
    from fsexchange.options import RefineConfig
    from engine.devices import tf32_capable
    from engine.stages.refine import (FlowSource, RefineInputs, RefineTuner,
                                      anchor_index, working_size)

    if not tf32_capable(CUDA):
        pytest.skip("this GPU has no TensorFloat-32 (compute capability < 8.0)")
    G, lp, ws, crops = nets
    G, lp = copy.deepcopy(G).to(CUDA), copy.deepcopy(lp).to(CUDA)
    offsets = np.random.default_rng(0).normal(0, 0.1, ws.shape).astype(np.float32)
    rin = RefineInputs(list(range(len(ws))), ws + offsets, offsets, None,
                       anchor_index(len(ws)))
    cfg = RefineConfig(flow="dis", epochs_w=1, epochs_g=1, batch_size=3)
    sources = TargetCache(CropClip(crops), working_size(G.img_resolution, cfg),
                          CUDA, lp, 8)
    tuner = RefineTuner(G, lp, rin, sources, cfg, FlowSource("dis", "dis"),
                        device=CUDA, dtype="tf32")
    with ConvSwitches() as mode:
        phases = [tuner.step()["phase"] for _ in range(2)]
    assert phases == [1, 2] and tuner.done
    assert mode.seen == {("convolution", True), ("convolution_backward", True)}
    assert torch.backends.cudnn.allow_tf32 is False


def test_fast_recipe_measures_its_formulation_and_batch_on_the_gpu(nets, tmp_path):
    G, lp = nets[0].to(CUDA), nets[1].to(CUDA)
    records = FormulationRecords(tmp_path / "store")
    # automatic batch and formulation: both measured (a 64 px network: the GPU
    # holds all 4 frames)
    cfg = PipelineConfig.from_options({"pti": {"batch_size": 0}})
    plan = pti_plan(cfg, "fast", resolution=G.img_resolution, device=CUDA,
                    frames=4, stage_dir=tmp_path,
                    choose=lambda d: choose("pti", G, d, CUDA, pti_candidates(
                        G, lp, CUDA, d["dtype"]), records=records))
    entries = json.loads(records.path.read_text())["entries"]
    assert entries and all(k.startswith("pti") and "cuda:" in k for k in entries)
    assert plan.formulation in PTI_FORMULATIONS
    assert plan.batch_size in (1, 4) and plan.batching["frame_seconds"] > 0


@pytest.mark.slow
def test_bench_official_architecture_on_the_gpu(tmp_path):
    out = tmp_path / "figures.json"
    run_pipeline_bench(
        ["--arch", "official", "--size", "64", "--frames", "2", "--pti-passes", "1",
         "--stitch-steps", "2", "--rounds", "2", "--device", CUDA, "--json",
         str(out)], tmp_path / "home")
    fig = json.loads(out.read_text())
    assert not fig["failures"] and fig["heap_reserved_gib"] == 0
    from engine.devices import tf32_capable

    if tf32_capable(CUDA):  # --dtypes auto adds the labelled tf32 rows
        dtypes = {r["dtype"] for r in fig["pti"]["rows"]}
        assert "tf32" in dtypes
    for part in ("pti", "stitch"):
        for r in fig[part]["rows"]:
            assert r["tflops"] > 0 and r["job_frames_per_minute"] > 0
    assert set(fig["shot_minutes_300_frames"]) >= {"re-creation", "fast/bfloat16"}


@pytest.mark.slow  # Triton kernels for each layer shape; gpu_check's epilogue part
def test_fused_epilogue_kernels_compute_the_eager_values_on_the_gpu():
    """The Triton kernels inductor generates for the fused epilogue (on CUDA only
    with ``FACESTITCH_FUSED_EPILOGUE=all`` until they are measured there) run for
    the large layers and give the eager float32 image and gradients; bfloat16 runs
    them too (bench/epilogue.py's checks)."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import epilogue as bench

    for dtype in ("float32", "bfloat16"):
        row = bench.measure(256, 1, dtype, torch.device(CUDA), 1, "hybrid")
        assert bench.check(row) == [], row
        assert row["kernel_calls_per_step"] == 8  # the 128 and 256 px layers
