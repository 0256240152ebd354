""""FaceStitch Preview Edit" against the fake Resolve (tests/fake_resolve.py) and a
real engine running the draft pipeline (tiny profile) in a thread: the editor
types a sweep, the draft comes back, the chosen strength's frames land above the
clip at their record frames; a draft that takes too long is placed by "Import
Results" later (middle strength), replacing the earlier one."""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from clips import ClipSpec, render_frames, write_clip
from fake_resolve import FakeResolve
from fsexchange.client import list_jobs, wait_job
from fsexchange.documents import Job, load_document
from fsexchange.grammar import parse_edit_spec
from host_bridge import menu
from host_bridge.config import BridgeConfig
from host_bridge.resolve import open_session
from host_bridge.resolve.place import parse_tag
from host_bridge.roundtrip import import_finished

pytestmark = pytest.mark.slow  # real engines / whole pipelines

RECORD = 90000 + 5  # 01:00:00:05 at 25 fps


class Editor:
    """A prompter that answers like an editor and records what it was shown."""

    def __init__(self, edit: str, strength: int | None) -> None:
        self.edit, self.strength = edit, strength
        self.shown: list[tuple[bool, str]] = []
        self.sheets: list[tuple[str, list[str]]] = []
        self.drafts: list[bool] = []

    def choose_edit(self, names, default, *, draft=False):
        self.drafts.append(draft)
        return parse_edit_spec(self.edit, known=names, draft=draft)

    def choose_face(self, shot, faces):
        return 0

    def choose_strength(self, sheet, labels):
        self.sheets.append((sheet, list(labels)))
        return self.strength

    def show(self, title, text, *, error=False):
        self.shown.append((error, text))


@pytest.fixture
def engine(tmp_path):
    """A running engine (watching the exchange) in a thread of this process."""
    from engine.service.worker import EngineOptions, serve

    ex = tmp_path / "exchange"
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(EngineOptions(
        ex, media_roots=(tmp_path,), device="cpu", use_watchdog=False,
        poll_interval=0.1),), kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    yield ex
    stop.set()
    thread.join(60)
    assert not thread.is_alive()


def _shot(tmp_path: Path):
    plate = write_clip(tmp_path / "plate.mov", render_frames(ClipSpec(frames=8)),
                       Fraction(25))
    resolve = FakeResolve(rate=Fraction(25))
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_media(plate, rate=Fraction(25))
    timeline.place(mpi, record=RECORD, duration=4, left_offset=2)
    timeline.set_playhead(RECORD + 1)
    return resolve, timeline


def _stills(timeline) -> list[tuple[int, int, str, str]]:
    """(record frame, duration, file path, job) of each FaceStitch layer on V2."""
    out = []
    for it in timeline.items(2):
        [(_, marker)] = it.GetMarkers().items()
        out.append((it.GetStart(), it.GetDuration(),
                    it.GetMediaPoolItem().GetClipProperty("File Path"),
                    parse_tag(marker["customData"])["job"]))
    return out


def test_preview_edit_places_the_chosen_strength(tmp_path, engine):
    resolve, timeline = _shot(tmp_path)
    ui = Editor("age=-4:4:3", strength=2)
    cfg = BridgeConfig(exchange=engine, track_locally=False, draft_wait=300,
                       options={"profile": "tiny"})
    assert menu.run("draft", {"resolve": resolve}, prompter=ui, config=cfg) == 0, \
        ui.shown
    assert ui.drafts == [True]
    [(sheet, labels)] = ui.sheets
    assert labels == ["age -4", "age 0", "age 4"] and Path(sheet).is_file()
    [status] = list_jobs(engine)
    job = load_document(status.folder / "job.msgpack", Job)
    assert (job.kind, job.priority) == ("draft", 50)
    assert (job.range.start, job.range.end) == (2, 6)  # the clip as cut, no handles
    # the source colour space is the one the fake Resolve's clip reports
    assert job.options == {"profile": "tiny", "draft": {"sweep": "age=-4:4:3"},
                           "colour": {"source": "Rec.709"}}
    # the 4 frames of the clip (5 asked, 4 there), each at its own record frame,
    # from the chosen strength's folder, tagged with the job
    stills = _stills(timeline)
    assert [(s[0], s[1]) for s in stills] == [(RECORD + i, 1) for i in range(4)]
    assert all("/output/sweep/r02_age+4/" in s[2] and s[3] == job.id for s in stills)
    assert "placed 4 draft frame(s) (age 4)" in ui.shown[-1][1]
    assert not ui.shown[-1][0]
    # Import Results leaves a placed draft alone
    assert import_finished(open_session(resolve), engine).already == [job.id]


def test_a_slow_draft_is_placed_by_import_results(tmp_path, engine):
    resolve, timeline = _shot(tmp_path)
    cfg = BridgeConfig(exchange=engine, track_locally=False,
                       options={"profile": "tiny"})
    first = Editor("age=-4:4:3", strength=0)
    assert menu.run("draft", {"resolve": resolve}, prompter=first,
                    config=cfg) == 0
    placed = _stills(timeline)
    assert len(placed) == 4 and "r00_age-4" in placed[0][2]
    # the next draft is not waited for: Import Results places it when it is done
    late = Editor("smile=-2:2:3", strength=None)
    cfg0 = BridgeConfig(exchange=engine, track_locally=False, draft_wait=0,
                        options={"profile": "tiny"})
    assert menu.run("draft", {"resolve": resolve}, prompter=late, config=cfg0) == 0
    assert "is not done after 0 s" in late.shown[-1][1] and late.sheets == []
    newest = re.search(r"as job (\S+)", late.shown[-1][1])[1]
    done = wait_job(engine, newest, timeout=300)
    assert done.state == "done", done.error
    report = import_finished(open_session(resolve), engine)
    assert len(report.placed) == 4 and not report.failed
    stills = _stills(timeline)  # replaced: the middle strength of the new draft
    assert len(stills) == 4
    assert all("/output/sweep/r01_smile0/" in s[2] and s[3] == newest for s in stills)
