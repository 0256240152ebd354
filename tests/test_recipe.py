"""Recipes (options.recipe) and formulations on the tiny profile: the reference
recipe's PTI is a batch-1 float32 loop step for step; stitching from W-space edits
trains the style affines and every formulation matches a per-frame deep-copy loop;
the measured formulation is recorded in the model store and reused."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from fsexchange.errors import DocumentFieldError
from fsexchange.options import (PTI_FORMULATIONS, STITCH_FORMULATIONS, PipelineConfig,
                                PTIConfig, StitchConfig, resolve_recipe)
from engine.models.formulations import FormulationRecords
from engine.nets.lpips import LPIPS
from engine.stages.formulation import Choice, choose, formulation_key
from engine.stages.pti import PTITuner, TargetCache, pti_candidates
from engine.stages.recipe import TrainingPlan, pti_plan, stitch_plan
from engine.stages.stitch_tune import (BatchedStitcher, EditLatents, stitch_candidates,
                                       tune_reference)
from adam_steps import close_steps
from tiny_training import CropClip, pti_nets
from tiny_training import stitch_inputs as tiny_stitch_inputs

# tiny networks: one thread (tests/conftest.py, one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

# float32 stitching copies agree within the order of float sums
ATOL = 2e-4


@pytest.fixture(scope="module")
def nets():
    return pti_nets()


# --- options and plans -----------------------------------------------------------


def test_recipe_option_and_its_resolution():
    assert PipelineConfig.from_options({}).recipe == "auto"
    assert PipelineConfig.from_options({"recipe": "reference"}).recipe == "reference"
    with pytest.raises(DocumentFieldError, match="options.recipe"):
        PipelineConfig.from_options({"recipe": "quick"})
    with pytest.raises(DocumentFieldError, match="options.stitch.formulation"):
        PipelineConfig.from_options({"stitch": {"formulation": "magic"}})
    assert resolve_recipe("auto", "official") == "reference"
    assert resolve_recipe("auto", "tiny") == "fast"
    assert resolve_recipe("fast", "official") == "fast"


def test_plans_of_the_two_recipes(tmp_path):
    cfg = PipelineConfig.from_options({"pti": {"batch_size": 4, "formulation":
                                               "scaled"},
                                       "stitch": {"batch_size": 3,
                                                  "formulation": "loop"}})
    ref = pti_plan(cfg, "reference", resolution=64, device="cpu", frames=10)
    assert (ref.batch_size, ref.lr, ref.shuffle, ref.dtype) == (1, 3e-5, False,
                                                                "float32")
    fast = pti_plan(cfg, "fast", resolution=64, device="cpu", frames=10)
    assert (fast.batch_size, fast.lr, fast.shuffle) == (4, 4 * 3e-5, True)
    assert fast.formulation == "scaled"  # the option names it: nothing measured
    # an explicit dtype wins over the recipe's precision
    bf = replace(cfg, dtype="bfloat16")
    assert pti_plan(bf, "reference", resolution=64, device="cpu",
                    frames=10).dtype == "bfloat16"
    st = stitch_plan(cfg, "reference", resolution=64, device="cpu", frames=10)
    assert (st.batch_size, st.dtype, st.formulation) == (3, "float32", "loop")
    # resolved once: a resumed attempt reads settings.json, whatever it is told now
    first = pti_plan(cfg, "fast", resolution=64, device="cpu", frames=10,
                     stage_dir=tmp_path)
    again = pti_plan(replace(cfg, pti=replace(cfg.pti, batch_size=2)), "reference",
                     resolution=64, device="cpu", frames=10, stage_dir=tmp_path)
    assert again == first
    assert json.loads((tmp_path / "settings.json").read_text()) == first.to_dict()


def test_tf32_is_a_labelled_precision_refused_where_the_device_lacks_it(tmp_path):
    """``dtype: tf32`` is accepted by the options, never chosen by ``auto``, and a
    plan for a device without TensorFloat-32 (this CPU) is refused with its own
    code before anything is written or switched."""
    from fsexchange.errors import PrecisionUnsupported
    from engine.devices import check_dtype, resolve_dtype, tensor_float32

    cfg = PipelineConfig.from_options({"dtype": "tf32"})
    assert cfg.dtype == "tf32"
    with pytest.raises(DocumentFieldError, match="auto, float32, tf32 or bfloat16"):
        PipelineConfig.from_options({"dtype": "float16"})
    assert resolve_dtype("auto", "cpu") in ("float32", "bfloat16")
    for dtype in ("float32", "bfloat16"):
        check_dtype(dtype, "cpu")
        assert resolve_dtype(dtype, "cpu") == dtype
    for plan in (pti_plan, stitch_plan):
        with pytest.raises(PrecisionUnsupported) as err:
            plan(cfg, "reference", resolution=64, device="cpu", frames=4,
                 stage_dir=tmp_path)
        assert err.value.code == "device.precision_unsupported"
        assert err.value.field == "options.dtype"
        assert "cpu" in err.value.message
        assert not (tmp_path / "settings.json").exists()
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with tensor_float32("cpu", "float32"), tensor_float32("cpu", "bfloat16"):
        assert (torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(PrecisionUnsupported):
        with tensor_float32("cpu", "tf32"):
            raise AssertionError("entered without TensorFloat-32")
    assert (torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32) == before


# --- PTI -------------------------------------------------------------------------


def _reference_plan(lr, formulation="modulated"):
    return TrainingPlan(recipe="reference", batch_size=1, dtype="float32", lr=lr,
                        shuffle=False, formulation=formulation)


@pytest.mark.parametrize("formulation", PTI_FORMULATIONS)
def test_reference_pti_is_a_batch_one_float32_loop_step_for_step(nets, formulation):
    """What STIT runs (docs/reference.md "PTI"): one Adam step per frame, frames in
    order, batch 1, float32, LPIPS of the rendered frame against its crop; in every
    formulation the recipe may be computed with. The lr is raised from 3e-5 so
    that a step moves the weights far above float rounding (the comparison would
    pass trivially otherwise)."""
    G, lp, ws, crops = nets
    lr, n, passes = 2e-3, 3, 2
    cfg = PTIConfig(steps=passes, lr=lr)
    tuner = PTITuner(G, lp, ws[:n], range(n),
                     TargetCache(CropClip(crops), 64, "cpu", lp, 8), cfg,
                     plan=_reference_plan(lr, formulation))
    ref = G.__class__(**G.init_kwargs)
    ref.load_state_dict(G.state_dict())
    ref.train().requires_grad_(False)
    ref.synthesis.requires_grad_(True)
    opt = torch.optim.Adam(ref.synthesis.parameters(), lr=lr)  # the for-loop Adam
    x = TargetCache(CropClip(crops), 64, "cpu", lp, 8).batch(list(range(n)))[0]
    w = torch.from_numpy(ws[:n])
    start = [p.detach().clone() for p in ref.synthesis.parameters()]
    for p_ in range(passes):
        for i in range(n):  # in order
            img = ref.synthesis(w[i:i + 1])
            loss = 10 * (img - x[i:i + 1]).square().mean() + lp(img, x[i:i + 1]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ours = tuner.step()
            # rel 1e-4: an element whose gradient rounds to the other sign moves
            # by 2 lr more (see close_steps), which shows in the next losses
            assert ours == pytest.approx(float(loss.detach()), rel=1e-4), (p_, i)
            close_steps([p.detach() for p in tuner.G.synthesis.parameters()],
                         [p.detach() for p in ref.synthesis.parameters()], lr,
                         p_ * n + i + 1)
    assert tuner.done and tuner.steps_run == n * passes
    moved = float(torch.cat([(p.detach() - s).abs().flatten() for p, s in zip(
        ref.synthesis.parameters(), start)]).mean())
    assert moved > 1000 * 1e-7  # the tolerance is small against the steps taken
    # the fast recipe's shuffled mini-batches do not take these steps
    fast = PTITuner(G, lp, ws[:n], range(n),
                    TargetCache(CropClip(crops), 64, "cpu", lp, 8),
                    replace(cfg, batch_size=n), seed=0)
    while not fast.done:
        fast.step()
    assert max(float((a - b).abs().max()) for a, b in zip(
        fast.G.synthesis.parameters(), ref.synthesis.parameters())) > 1e-4


def test_pti_formulations_compute_the_same_step(nets):
    """The PTI formulations (engine/stages/formulation.py) are ways of computing
    one mini-batch step: same losses, same weights after it. A mini-batch of 2, so
    ``loop`` adds two per-frame gradients where the others take one batch-2
    backward."""
    G, lp, ws, crops = nets
    out = []
    for form in PTI_FORMULATIONS:
        plan = replace(_reference_plan(1e-3), formulation=form, batch_size=2)
        t = PTITuner(G, lp, ws[:2], range(2),
                     TargetCache(CropClip(crops), 64, "cpu", lp, 8),
                     PTIConfig(steps=1, lr=1e-3), plan=plan)
        out.append(([t.step(), t.step()], [p.detach() for p in
                                           t.G.synthesis.parameters()]))
    for other in out[1:]:
        assert out[0][0] == pytest.approx(other[0], rel=1e-5)
        # at batch 2 the sums over samples also run in another order in each
        # formulation (2 of 36864 elements of one weight moved 1e-4 here)
        close_steps(out[0][1], other[1], 1e-3, 2)


# --- stitching -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stitch_inputs():
    return tiny_stitch_inputs()


@pytest.mark.parametrize("arch", ["tiny", "official at 32 px"])
def test_trainable_parameters_rule_matches_a_probe_backward(stitch_inputs, arch):
    """The stitcher names the parameters it trains by a rule (everything from ws;
    all but the affines from styles); a backward through the generator must give
    exactly those a gradient, on both architectures."""
    from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator
    from engine.stages.stitch_tune import _render_module, _trainable_names

    G = stitch_inputs[0] if arch == "tiny" else Generator(
        **dict(OFFICIAL_GENERATOR_KWARGS, img_resolution=32)).requires_grad_(False)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim))
        styles = [s.detach() for s in G.styles(ws)]
    for inputs in (EditLatents(ws=ws), EditLatents(styles=styles)):
        module = _render_module(G, inputs.from_styles)
        leaves = {k: v.detach().clone().requires_grad_(True)
                  for k, v in module.named_parameters()}
        out = torch.func.functional_call(module, leaves, (inputs.arg(),))
        grads = torch.autograd.grad(out.sum(), list(leaves.values()),
                                    allow_unused=True)
        probed = [k for k, g in zip(leaves, grads) if g is not None]
        assert _trainable_names(module, inputs) == probed
        assert any(".affine." in f".{k}" for k in probed) != inputs.from_styles


def test_w_space_stitching_trains_the_affines_as_stit_does(stitch_inputs):
    G, ws, target, border, content = stitch_inputs
    cfg = StitchConfig(steps=5)
    st = BatchedStitcher(G, cfg)
    st.tune(EditLatents(ws=ws[:1]), target[:1], border[:1], content[:1])
    assert any(k.endswith("affine.weight") for k in st.names)
    with torch.no_grad():
        styles = [s.detach() for s in G.styles(ws)]
    ss = BatchedStitcher(G, cfg)
    ss.tune(EditLatents(styles=[s[:1] for s in styles]), target[:1], border[:1],
            content[:1])
    # S-space edits render from styles: the affines get no gradient there
    assert not any("affine" in k for k in ss.names)
    assert set(ss.names) < set(st.names)
    # the reference loop: from ws the affines train, which changes the result
    a = tune_reference(G, ws[:1], target[:1], border[:1], content[:1], cfg)
    b = tune_reference(G, [s[:1] for s in styles], target[:1], border[:1],
                       content[:1], cfg)
    assert (a.images - b.images).abs().max().item() > 10 * ATOL


@pytest.mark.parametrize("formulation", STITCH_FORMULATIONS)
def test_every_formulation_matches_a_per_frame_deep_copy_loop(stitch_inputs,
                                                              formulation):
    """The STIT loop (a deep copy and a torch Adam per frame, rendering from w, the
    affines trainable) against B copies at once, with one frame stopping early."""
    G, ws, target, border, content = stitch_inputs
    with torch.no_grad():
        own = G.synthesis(ws[:1])
    tgt = target.clone()
    tgt[0] = own[0]  # frame 0: border loss 0 at step 0, stops before any update
    cfg = StitchConfig(steps=6, border_loss_threshold=1e-6)
    ref = tune_reference(G, ws, tgt, border, content, cfg)
    ours = BatchedStitcher(G, cfg, formulation=formulation).tune(
        EditLatents(ws=ws), tgt, border, content)
    diff = (ours.images - ref.images).abs().max().item()
    print(f"\n{formulation}: max |image diff| vs the per-frame loop {diff:.2e}; "
          f"border loss {ref.before} -> {ref.after}")
    assert ours.steps == ref.steps == [0, 6, 6]
    assert diff < ATOL
    np.testing.assert_allclose(ours.curves[1], ref.curves[1], rtol=1e-4, atol=1e-6)
    assert all(a < b for a, b in zip(ref.after[1:], ref.before[1:]))
    assert all(not p.requires_grad for p in G.parameters())


# --- formulation records ---------------------------------------------------------


def _counted(make: Any) -> tuple[list[int], Any]:
    """``make(n)`` (a formulation candidates factory) that records each batch it
    is asked to measure: the list of calls and the counting factory."""
    calls: list[int] = []

    def candidates(n: int) -> Any:
        calls.append(n)
        return make(n)

    return calls, candidates


def test_formulation_measured_once_and_recorded(stitch_inputs, tmp_path):
    G = stitch_inputs[0]
    records = FormulationRecords(tmp_path)
    plan = {"batch_size": 2, "dtype": "float32"}
    calls, candidates = _counted(stitch_candidates(G, StitchConfig(), "cpu",
                                                   "float32"))
    first = choose("stitch", G, plan, "cpu", candidates, extra="ws",
                   records=records)
    assert first.name in STITCH_FORMULATIONS and calls == [2]
    key = formulation_key("stitch", "cpu", "float32", G, 2, "ws")
    entry = json.loads(records.path.read_text())["entries"][key]
    assert entry["choice"] == first.name and set(entry["seconds"]) == set(
        STITCH_FORMULATIONS)
    assert entry["seconds"][first.name] == min(entry["seconds"].values())
    # per frame: the step's seconds over the frames it computed
    assert first.frame_seconds == entry["seconds"][first.name] / 2
    # the record answers the next job without measuring
    assert choose("stitch", G, plan, "cpu", candidates, extra="ws",
                  records=records) == first and calls == [2]
    # another batch or precision is another machine state: measured on its own
    pti = choose("pti", G, {"batch_size": 1, "dtype": "float32"}, "cpu",
                 pti_candidates(G, _lpips(), "cpu", "float32"), records=records)
    assert pti.name in PTI_FORMULATIONS
    assert len(json.loads(records.path.read_text())["entries"]) == 2


@pytest.mark.parametrize("damage", [
    {"choice": "magic"}, {"seconds": {}}, {"seconds": "fast"},
    {"measured_batch": 0}, {"measured_batch": "two"}])
def test_a_damaged_record_is_measured_again(stitch_inputs, tmp_path, damage):
    """The model store is the user's folder: a record edited or damaged by hand
    (an unknown formulation, seconds missing, a batch of 0) is measured again,
    never trusted or fatal."""
    G = stitch_inputs[0]
    records = FormulationRecords(tmp_path)
    plan = {"batch_size": 1, "dtype": "float32"}
    calls, candidates = _counted(pti_candidates(G, _lpips(), "cpu", "float32"))
    first = choose("pti", G, plan, "cpu", candidates, records=records)
    key = formulation_key("pti", "cpu", "float32", G, 1)
    records.put(key, {**records.get(key), **damage})
    again = choose("pti", G, plan, "cpu", candidates, records=records)
    assert calls == [1, 1] and again.name in PTI_FORMULATIONS
    assert records.get(key)["choice"] == again.name != "magic"
    assert first.frame_seconds > 0


def _lpips():
    return LPIPS("alex", backbone="random", heads="uniform", seed=1)


# --- the fast recipe's mini-batch: used where it pays -------------------------------


def _scripted(frame_seconds: dict[int, float]):
    """A ``choose`` that answers from a table of per-frame seconds by batch (the
    rule's unit test; the measurement behind it is tested above and below)."""
    asked: list[int] = []

    def choose_(d: dict[str, Any]) -> Choice:
        asked.append(int(d["batch_size"]))
        return Choice(f"at{d['batch_size']}", frame_seconds[int(d["batch_size"])])

    return asked, choose_


@pytest.mark.parametrize("batch_1, expect", [(1.5, 4), (1.12, 4), (1.08, 1),
                                            (0.9, 1)])
def test_fast_pti_batches_only_where_batching_pays(tmp_path, batch_1, expect):
    """Batch 4 at 1.0 s a frame against batch 1 at ``batch_1``: the mini-batch is
    kept only when it is faster by more than BATCHING_GAIN (10 %); otherwise PTI
    runs at batch 1 at the reference learning rate, with batch 1's formulation,
    and settings.json records the comparison."""
    cfg = PipelineConfig.from_options({"pti": {"batch_size": 0}})
    asked, choose_ = _scripted({4: 1.0, 1: batch_1})
    plan = pti_plan(cfg, "fast", resolution=64, device="cpu", frames=4,
                    stage_dir=tmp_path, choose=choose_)
    assert asked == [4, 1]
    assert plan.batch_size == expect and plan.formulation == f"at{expect}"
    assert plan.lr == pytest.approx(cfg.pti.lr * expect) and plan.shuffle
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved["batching"] == {"batch": 4, "frame_seconds": 1.0,
                                 "batch_1_frame_seconds": batch_1,
                                 "gain": round(batch_1 - 1.0, 4)}
    assert TrainingPlan.from_dict(saved) == plan


def test_a_chosen_batch_or_formulation_is_not_second_guessed():
    """An explicit ``pti.batch_size`` or ``pti.formulation`` is the user's: no
    comparison with batch 1 (the formulation is measured at the given batch, or
    not at all); the reference recipe measures batch 1 only; a data-parallel
    stage keeps its mini-batch."""
    slow_batching = {4: 1.0, 1: 0.5}
    asked, choose_ = _scripted(slow_batching)
    cfg = PipelineConfig.from_options({"pti": {"batch_size": 4}})
    plan = pti_plan(cfg, "fast", resolution=64, device="cpu", frames=4,
                    choose=choose_)
    assert (plan.batch_size, plan.formulation, asked) == (4, "at4", [4])
    asked, choose_ = _scripted(slow_batching)
    cfg = PipelineConfig.from_options({"pti": {"formulation": "scaled"}})
    plan = pti_plan(cfg, "fast", resolution=64, device="cpu", frames=4,
                    choose=choose_)
    assert plan.formulation == "scaled" and asked == []
    asked, choose_ = _scripted(slow_batching)
    plan = pti_plan(PipelineConfig.from_options({}), "reference", resolution=64,
                    device="cpu", frames=4, choose=choose_)
    assert (plan.batch_size, asked) == (1, [1])
    # several devices split each mini-batch between them: it always pays there
    asked, choose_ = _scripted(slow_batching)
    plan = pti_plan(PipelineConfig.from_options({}), "fast", resolution=64,
                    device="cpu", frames=4, choose=choose_, devices=2)
    assert (plan.batch_size, plan.formulation, asked) == (4, "at4", [4])


def test_fast_pti_batching_measured_on_the_network(nets, tmp_path):
    """End to end on the tiny network: the fast recipe's plan measures the whole
    PTI step at batch 4 and at batch 1 once (two records), and its batch follows
    the recorded per-frame seconds."""
    from engine.stages import recipe

    G, lp = nets[0], nets[1]
    records = FormulationRecords(tmp_path / "store")
    cfg = PipelineConfig.from_options({"pti": {"batch_size": 0}})
    calls, candidates = _counted(pti_candidates(G, lp, "cpu", "float32"))
    plan = pti_plan(cfg, "fast", resolution=64, device="cpu", frames=4,
                    stage_dir=tmp_path,
                    choose=lambda d: choose("pti", G, d, "cpu", candidates,
                                            records=records))
    assert calls == [4, 1]
    entries = json.loads(records.path.read_text())["entries"]
    per_frame = {e["measured_batch"]: e["seconds"][e["choice"]] / e["measured_batch"]
                 for e in entries.values()}
    pays = per_frame[1] / per_frame[4] - 1 > recipe.BATCHING_GAIN
    assert plan.batch_size == (4 if pays else 1)
    assert json.loads((tmp_path / "settings.json").read_text())["batching"][
        "frame_seconds"] == pytest.approx(per_frame[4])



def test_a_record_of_other_kernels_is_measured_again(stitch_inputs, tmp_path,
                                                     monkeypatch):
    """A release that changes how the formulations compute raises
    KERNELS_REVISION: the records measured on the old kernels no longer answer."""
    from engine.stages import formulation

    G = stitch_inputs[0]
    records = FormulationRecords(tmp_path)
    plan = {"batch_size": 1, "dtype": "float32"}
    calls, candidates = _counted(pti_candidates(G, _lpips(), "cpu", "float32"))
    choose("pti", G, plan, "cpu", candidates, records=records)
    key = formulation_key("pti", "cpu", "float32", G, 1)
    assert key.endswith(f"|kernels {formulation.KERNELS_REVISION}")
    choose("pti", G, plan, "cpu", candidates, records=records)
    assert calls == [1]
    monkeypatch.setattr(formulation, "KERNELS_REVISION",
                        formulation.KERNELS_REVISION + 1)
    choose("pti", G, plan, "cpu", candidates, records=records)
    assert calls == [1, 1]
    assert len(json.loads(records.path.read_text())["entries"]) == 2
