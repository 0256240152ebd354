"""The Resolve menu scripts and what the editor sees: the shims, the prompters
(console, Fusion UIManager, none on the free edition), settings and installation."""

from __future__ import annotations

import json
import runpy
from fractions import Fraction
from pathlib import Path

import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.client import list_jobs
from fsexchange.errors import EditInvalid, EditUnknown, HostError
from host_bridge import menu
from host_bridge.config import BridgeConfig, config_path
from host_bridge.resolve_install import SCRIPTS, install, script_folder, shim_source
from fsexchange.grammar import parse_edit_spec
from host_bridge.ui import ConsolePrompter, FusionPrompter, make_prompter
from test_resolve_roundtrip import run_engine

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A prompter that answers from a script and records what it was shown."""

    def __init__(self, edit="preview", face=0):
        self.edit, self.face, self.shown, self.faces = edit, face, [], []

    def choose_edit(self, names, default):
        return None if self.edit is None else parse_edit_spec(self.edit)

    def choose_face(self, shot, faces):
        self.faces.append((shot, list(faces)))
        return self.face

    def show(self, title, text, *, error=False):
        self.shown.append((error, text))


@pytest.fixture
def bridge_env(tmp_path, monkeypatch):
    cfg = tmp_path / "bridge.json"
    monkeypatch.setenv("FACESTITCH_BRIDGE_CONFIG", str(cfg))
    monkeypatch.delenv("FACESTITCH_EXCHANGE", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return cfg


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("menu")
    return write_clip(folder / "plate.mov", render_frames(ClipSpec(frames=8)),
                      Fraction(25))


def resolve_with_shot(plate, **fake):
    resolve = FakeResolve(rate=Fraction(25), **fake)
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(plate, rate=Fraction(25))
    item = timeline.place(mpi, record=90000 + 5, duration=4, left_offset=2)
    timeline.set_playhead(90006)
    return resolve, timeline, item


def test_menu_scripts_are_the_generated_shims():
    files = sorted(p.name for p in (ROOT / "resolve_scripts").glob("*.py"))
    assert files == sorted(SCRIPTS)
    for name, action in SCRIPTS.items():
        assert (ROOT / "resolve_scripts" / name).read_text() == shim_source(action)


def test_a_menu_script_sends_and_imports_like_resolve_runs_it(plate, tmp_path,
                                                              bridge_env, capsys):
    """Run the real shim files with the globals Resolve injects (free edition: no
    UIManager, no terminal: configured defaults and console messages)."""
    exchange = tmp_path / "exchange"
    bridge_env.write_text(json.dumps({"exchange": str(exchange), "edit": "preview",
                                      "handles": 1, "track_locally": False,
                                      "python_path": [str(ROOT)]}))
    resolve, timeline, item = resolve_with_shot(plate, studio=False, version=(19, 1, 3))
    injected = {"resolve": resolve, "fusion": resolve.fusion, "bmd": object()}
    runpy.run_path(str(ROOT / "resolve_scripts" / "FaceStitch Send Shot.py"),
                   init_globals=injected)
    out = capsys.readouterr().out
    assert "using the configured edit preview" in out and "sent 'plate.mov'" in out
    [status] = list_jobs(exchange)
    run_engine(exchange, plate.parent)
    runpy.run_path(str(ROOT / "resolve_scripts" / "FaceStitch Import Results.py"),
                   init_globals=injected)
    assert f"placed job {status.id} on V2 at 01:00:00:05 (4 frames)" in \
        capsys.readouterr().out
    runpy.run_path(str(ROOT / "resolve_scripts" / "FaceStitch List Jobs.py"),
                   init_globals=injected)
    assert "done, on the timeline" in capsys.readouterr().out


def test_the_editor_is_told_what_went_wrong(plate, tmp_path, bridge_env):
    resolve, timeline, item = resolve_with_shot(plate)
    ui = Recorder()
    ns = {"resolve": resolve}
    assert menu.run("send", ns, prompter=ui) == 2  # no exchange configured
    assert "No exchange folder is configured" in ui.shown[-1][1]
    assert str(bridge_env) in ui.shown[-1][1]

    cfg = BridgeConfig(exchange=tmp_path / "ex", track_locally=False)
    timeline.set_playhead(90000)  # nothing under the playhead
    assert menu.run("send", ns, prompter=ui, config=cfg) == 2
    assert ui.shown[-1] == (True, ui.shown[-1][1]) and "playhead" in ui.shown[-1][1]

    timeline.set_playhead(90006)
    ui.edit = None  # the editor cancels the edit dialog
    assert menu.run("send", ns, prompter=ui, config=cfg) == 1
    assert ui.shown[-1] == (False, "Nothing was sent.")

    offline = resolve.project.add_virtual_media("B.mov", {
        "File Path": str(tmp_path / "B.mov"), "Type": "Video", "FPS": 25.0,
        "Frames": "10"})
    timeline.place(offline, record=90020, duration=5)
    timeline.set_playhead(90021)
    ui.edit = "age=-4"
    assert menu.run("send", ns, prompter=ui, config=cfg) == 2
    assert "offline" in ui.shown[-1][1] and "Relink" in ui.shown[-1][1]

    assert menu.run("import", {}, prompter=ui, config=cfg) == 2  # no Resolve at all
    assert "Resolve was not found" in ui.shown[-1][1]


def test_choosing_among_two_faces_through_the_menu(tmp_path, bridge_env):
    pytest.importorskip("dlib")
    clip = write_clip(tmp_path / "two.mov",
                      render_frames(ClipSpec(frames=4, second_face=True)), Fraction(25))
    resolve, timeline, item = resolve_with_shot(clip)
    ui = Recorder(edit="age=-4", face=1)
    cfg = BridgeConfig(exchange=tmp_path / "ex", track_locally=False, handles=0)
    assert menu.run("send", {"resolve": resolve}, prompter=ui, config=cfg) == 0
    [(shot, faces)] = ui.faces
    assert "'two.mov' on V1 at 01:00:00:05" in shot
    assert len(faces) == 2 and faces[0].startswith("Face 1: left")
    [status] = list_jobs(tmp_path / "ex")
    from fsexchange.documents import Job, load_document

    job = load_document(status.folder / "job.msgpack", Job)
    assert job.kind == "stitch" and job.edits[0].name == "age"
    assert job.edits[0].strength == -4.0
    assert 120 < job.subject.point[1] < 200  # face 2: the astronaut, centre


def test_console_prompter_dialogue():
    answers = iter(["bogus", "age=-4, smile=2", "5", "2", "q"])
    printed = []
    ui = ConsolePrompter(interactive=True, input_fn=lambda _: next(answers),
                         print_fn=printed.append)
    choice = ui.choose_edit(["age", "smile"], "preview")
    assert choice.kind == "stitch"
    assert [e.name for e in choice.edits] == ["age", "smile"]
    assert any("unknown edit 'bogus'" in p for p in printed)
    assert ui.choose_face("shot", ["a", "b"]) == 1  # "5" refused, then "2"
    assert ui.choose_face("shot", ["a", "b"]) is None  # q
    quiet = ConsolePrompter(interactive=False, print_fn=printed.append)
    assert quiet.choose_edit([], "preview").kind == "align-preview"
    with pytest.raises(HostError, match="set \"edit\""):
        quiet.choose_edit([], "")


def test_parse_edit_spec():
    assert parse_edit_spec(" preview ").kind == "align-preview"
    c = parse_edit_spec("age=-8; pose=1.5")
    assert [(e.name, e.strength) for e in c.edits] == [("age", -8.0), ("pose", 1.5)]
    with pytest.raises(EditUnknown, match="unknown edit 'gender'"):
        parse_edit_spec("gender=2", known=["age"])
    for bad in ("", "age=x", "a b=1", "age"):
        with pytest.raises(EditInvalid):
            parse_edit_spec(bad)
    # the same grammar as 'facestitch submit --edit': keyframes, several edits
    c = parse_edit_spec("age=0@10,-4@20, smile=2")
    assert [e.name for e in c.edits] == ["age", "smile"]
    assert [(k.frame, k.strength) for k in c.edits[0].keyframes] == [(10, 0.0),
                                                                      (20, -4.0)]


class FakeUI:
    """Just enough of Fusion's UIManager/UIDispatcher protocol to drive a dialog:
    RunLoop clicks the first button."""

    def __getattr__(self, kind):
        return lambda *args: {"kind": kind, "args": args}


class FakeDispatcher:
    def __init__(self, ui):
        self.windows = []

    def AddWindow(self, props, layout):
        win = FakeWindow(props, layout)
        self.windows.append(win)
        return win

    def RunLoop(self):
        win = self.windows[-1]
        first = [r for r in win.layout["args"][0] if r["kind"] == "HGroup"][0]
        getattr(win.On, first["args"][0][0]["args"][0]["ID"]).Clicked(None)

    def ExitLoop(self):
        self.exited = True


class FakeWindow:
    class _On:
        def __getattr__(self, name):
            value = type("Handlers", (), {})()
            object.__setattr__(self, name, value)
            return value

    def __init__(self, props, layout):
        self.props, self.layout, self.On = props, layout, self._On()
        self.items = {"Choice": type("Combo", (), {"CurrentIndex": 1,
                                                   "AddItem": lambda s, x: None})(),
                      "Text": type("Edit", (), {"Text": "smile=2"})()}

    def GetItems(self):
        return self.items

    def Show(self):
        pass

    def Hide(self):
        pass


def test_fusion_prompter_on_studio_and_none_on_free(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    studio = FakeResolve(studio=True)
    bmd = type("Bmd", (), {"UIDispatcher": staticmethod(FakeDispatcher)})()
    studio.fusion.UIManager = FakeUI()
    ui = make_prompter({"fusion": studio.fusion, "bmd": bmd})
    assert isinstance(ui, FusionPrompter)
    assert ui.choose_face("shot", ["a", "b"]) == 1
    assert [e.name for e in ui.choose_edit(["smile"], "").edits] == ["smile"]
    ui.show("FaceStitch", "done")
    free = FakeResolve(studio=False)
    assert isinstance(make_prompter({"fusion": free.fusion, "bmd": bmd}),
                      ConsolePrompter)
    assert isinstance(make_prompter({"fusion": studio.fusion, "bmd": bmd},
                                    prefer="console"), ConsolePrompter)


def test_settings_file(tmp_path, bridge_env, monkeypatch):
    assert config_path() == bridge_env
    assert BridgeConfig.load().exchange is None  # no file: defaults
    bridge_env.write_text(json.dumps({"exchange": "~/ex", "handles": 4, "future": 1}))
    cfg = BridgeConfig.load()
    assert cfg.exchange == Path("~/ex").expanduser() and cfg.handles == 4
    assert cfg.extra == {"future": 1}
    monkeypatch.setenv("FACESTITCH_EXCHANGE", str(tmp_path / "other"))
    assert BridgeConfig.load().exchange == tmp_path / "other"
    bridge_env.write_text(json.dumps({"handles": "eight"}))
    with pytest.raises(HostError, match="'handles' has the wrong type"):
        BridgeConfig.load()
    bridge_env.write_text("{not json")
    with pytest.raises(HostError, match="not valid JSON"):
        BridgeConfig.load()


def test_install_writes_the_scripts_and_points_them_here(tmp_path, bridge_env):
    done = install(exchange=str(tmp_path / "ex"), folder=tmp_path / "Scripts" / "Edit")
    assert sorted(p.name for p in (tmp_path / "Scripts" / "Edit").iterdir()) == sorted(
        SCRIPTS)
    data = json.loads(bridge_env.read_text())
    assert data["python_path"][0] == str(ROOT)
    assert data["exchange"] == str((tmp_path / "ex").resolve())
    assert any("menu script" in line for line in done)
    assert script_folder(system="Linux").parts[-5:] == (
        "share", "DaVinciResolve", "Fusion", "Scripts", "Edit")
    assert "Support" in script_folder(system="Windows").parts
    assert str(script_folder(True, "Darwin")).startswith("/Library/Application Support")
