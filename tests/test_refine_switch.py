"""The temporal refinement's on/off switch on every client: ``facestitch submit
--no-refine``, ``facestitch ofx submit --no-refine``, the Resolve dialog's edit spec
(``age=-4; no-refine``) and the bridge settings (``"refine": false``); each job
document records the choice as ``options.refine.enabled``."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clips import ClipSpec, render_frames, write_clip
from fsexchange.client import build_job, list_jobs
from fsexchange.documents import Edit, FrameRange, Job, Source, load_document
from fsexchange.errors import DocumentFieldError
from fsexchange.grammar import parse_edit_spec
from fsexchange.options import PipelineConfig, refine_options
from host_bridge import menu
from host_bridge.cli import main
from host_bridge.config import BridgeConfig


def _job(folder: Path) -> Job:
    return load_document(folder / "job.msgpack", Job)


def _only_job(ex: Path) -> Job:
    (status,) = list_jobs(ex)
    return _job(status.folder)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("sw") / "clip.mp4",
                      render_frames(ClipSpec(frames=6, size=(64, 48))))


def test_options_default_on_and_validated():
    cfg = PipelineConfig.from_options({})
    assert cfg.refine.enabled and cfg.refine.flow == "auto"
    # the README's in-domain settings (docs/reference.md "Refinement settings")
    r = cfg.refine
    assert (r.lr_w, r.epochs_w, r.lr_g, r.epochs_g) == (1e-3, 10, 1e-4, 3)
    assert (r.reg_frame, r.reg_g, r.weight_cycle, r.weight_photo) == (0.2, 100, 10, 1)
    assert (r.weight_out_mask_w, r.weight_out_mask_g, r.flow_scale) == (0.5, 7.5, 4)
    assert (r.residual_scale, r.visibility_k, r.locality_alpha) == (0.04, 5.0, 30.0)
    assert (r.locality_l2, r.locality_lpips, r.freeze_fine_layers) == (0.1, 0.1, 8)
    off = PipelineConfig.from_options({"refine": {"enabled": False, "epochs_g": 5}})
    assert not off.refine.enabled and off.refine.epochs_g == 5
    for bad, field in (({"flow": "farneback"}, "options.refine.flow"),
                       ({"epochs_w": "ten"}, "options.refine.epochs_w"),
                       ({"lr_g": -1}, "options.refine.lr_g"),
                       ({"nope": 1}, "options.refine.nope")):
        with pytest.raises(DocumentFieldError) as ei:
            PipelineConfig.from_options({"refine": bad})
        assert ei.value.field == field


def test_build_job_records_the_choice():
    src, rng = Source("media/clip.mp4"), FrameRange(0, 4, Fraction(25))
    edit = (Edit("age", -4.0),)
    assert build_job(source=src, range=rng, edits=edit).options == {
        "refine": {"enabled": True}}
    assert build_job(source=src, range=rng, edits=edit, refine=False).options == {
        "refine": {"enabled": False}}
    # an option given as --option refine.enabled=false is kept; the switch wins
    job = build_job(source=src, range=rng, edits=edit,
                    options={"refine": {"enabled": False, "epochs_g": 2}})
    assert job.options["refine"] == {"enabled": False, "epochs_g": 2}
    assert build_job(source=src, range=rng, edits=edit, refine=True,
                     options={"refine": {"enabled": False}}
                     ).options["refine"]["enabled"] is True
    # align-preview jobs have no refinement stage: nothing recorded
    assert build_job(source=src, range=rng, kind="align-preview").options == {}
    assert refine_options(None) == {"refine": {"enabled": True}}


def test_submit_cli(clip, tmp_path, capsys):
    ex = tmp_path / "ex"
    assert main(["submit", str(clip), "--exchange", str(ex), "--edit", "age=-4",
                 "--no-refine", "--copy-media"]) == 0
    job = _only_job(ex)
    assert job.options["refine"] == {"enabled": False}
    assert PipelineConfig.from_options(job.options).refine.enabled is False
    ex2 = tmp_path / "ex2"
    assert main(["submit", str(clip), "--exchange", str(ex2), "--edit", "age=-4",
                 "--copy-media"]) == 0
    assert _only_job(ex2).options["refine"] == {"enabled": True}


def test_ofx_submit_cli(tmp_path, capsys):
    from engine.media.video import encode_rgba

    ex = tmp_path / "ex"
    export = ex / "ofx-export" / "shot"
    export.mkdir(parents=True)
    for i, frame in enumerate(render_frames(ClipSpec(frames=3, size=(64, 48)))):
        (export / f"frame.{1000 + i:07d}.pam").write_bytes(encode_rgba(".pam", frame))
    assert main(["ofx", "submit", str(export), "--exchange", str(ex), "--rate", "25",
                 "--edit", "age=-4", "--no-refine"]) == 0
    assert _only_job(ex).options["refine"] == {"enabled": False}


def test_edit_spec_word():
    c = parse_edit_spec("age=-4; no-refine")
    assert c.refine is False and [e.name for e in c.edits] == ["age"]
    assert c.spec == "age=-4; no-refine"
    c = parse_edit_spec("age=0@1,-4@5, no-refine")
    assert c.refine is False and len(c.edits[0].keyframes) == 2
    assert parse_edit_spec("age=-4;refine").refine is True
    assert parse_edit_spec("age=-4").refine is None


def test_bridge_settings(tmp_path):
    assert BridgeConfig.from_dict({}).refine is True
    cfg = BridgeConfig.from_dict({"refine": False})
    assert cfg.refine is False and "refine" not in cfg.extra
    from fsexchange.errors import HostError

    with pytest.raises(HostError, match="'refine' has the wrong type"):
        BridgeConfig.from_dict({"refine": "no"})


class _Prompter:
    def __init__(self, edit: str) -> None:
        self.edit, self.shown = edit, []

    def choose_edit(self, names, default):
        return parse_edit_spec(self.edit)

    def choose_face(self, shot, faces):
        return 0

    def show(self, title, text, *, error=False):
        self.shown.append((error, text))


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("plate") / "plate.mov",
                      render_frames(ClipSpec(frames=8)), Fraction(25))


@pytest.mark.parametrize("settings,spec,want", [
    (True, "age=-4; no-refine", False), (False, "age=-4", False),
    (False, "age=-4; refine", True)])
def test_resolve_send_records_the_switch(plate, tmp_path, settings, spec, want):
    from fake_resolve import FakeResolve

    resolve = FakeResolve(rate=Fraction(25))
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(plate, rate=Fraction(25))
    timeline.place(mpi, record=90000 + 5, duration=4, left_offset=2)
    timeline.set_playhead(90006)
    cfg = BridgeConfig(exchange=tmp_path / "ex", track_locally=False, refine=settings,
                       options={"pti": {"steps": 3}})
    ui = _Prompter(spec)
    ns = {"resolve": resolve}
    assert menu.run("send", ns, prompter=ui, config=cfg) == 0, ui.shown
    job = _only_job(tmp_path / "ex")
    assert job.options == {"pti": {"steps": 3}, "refine": {"enabled": want},
                           "colour": {"source": "Rec.709"}}  # the fake clip's
