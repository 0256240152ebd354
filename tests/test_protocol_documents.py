"""The one document loader: golden files, upgrades, unknown keys, version and
field errors that name the file, size limits."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Mapping

import msgpack
import pytest

from fsexchange import documents as d
from fsexchange.documents import (DOCUMENT_TYPES, UPGRADES, Edit, FrameRange, Job,
                                  Keyframe, Lease, OutputSpec, Progress, Result,
                                  Source, StageDone, Subject, decode_document,
                                  load_document, register_upgrade)
from fsexchange.errors import (DocumentError, DocumentFieldError, DocumentNotMsgpack,
                               DocumentTooLarge, DocumentVersionError)

# A Job/1 as FaceStitch 0.1 wrote it (msgpack, base64). Never regenerate this: it
# is the promise that old job files stay readable with the same meaning.
GOLDEN_JOB_V1 = base64.b64decode("""
jKZzY2hlbWGwZmFjZXN0aXRjaC5Kb2IvMaJpZKpzaG90MDEwLXYxpGtpbmSmc3RpdGNopnNvdXJj
ZYKkcGF0aK9tZWRpYS9wbGF0ZS5tb3aka2luZKV2aWRlb6VyYW5nZYSlc3RhcnQKo2VuZDqkcmF0
ZZLNXcDNA+muc3RhcnRfdGltZWNvZGWrMDE6MDA6MDA6MDCnc3ViamVjdISlaW5kZXjApXBvaW50
kwzLQIQEAAAAAADLQHaAAAAAAACjYm94wKV0cmFja8ClZWRpdHORhaRuYW1lo2FnZahzdHJlbmd0
aMvAEAAAAAAAAKlrZXlmcmFtZXOSkgrLAAAAAAAAAACSHsvAEAAAAAAAAKVzcGFjZaF3pGVhc2Wm
c21vb3Rop29wdGlvbnOCp3Byb2ZpbGWkdGlueaNwdGmBpXN0ZXBzKKZvdXRwdXSEpmZvcm1hdKNl
eHKkbmFtZadzaG90MDEwrHN0YXJ0X251bWJlcs0D6adwcmV2aWV3wqRob3N0gqNhcHCncmVzb2x2
Zah0aW1lbGluZadlZGl0IHYzp2NyZWF0ZWS0MjAyNi0xMS0yMVQwODowMDowMFqseF9mdXR1cmVf
a2V5gaRrZXB0ww==""")


def test_golden_job_v1_reads_with_the_same_meaning():
    job = decode_document(GOLDEN_JOB_V1, Job, source="golden.msgpack")
    assert job == Job(
        id="shot010-v1", kind="stitch", source=Source("media/plate.mov", "video"),
        range=FrameRange(10, 58, Fraction(24000, 1001), "01:00:00:00"),
        subject=Subject(point=(12.0, 640.5, 360.0)),
        edits=(Edit("age", -4.0, (Keyframe(10, 0.0), Keyframe(30, -4.0))),),
        options={"profile": "tiny", "pti": {"steps": 40}},
        output=OutputSpec("exr", "shot010", 1001, False),
        host={"app": "resolve", "timeline": "edit v3"},
        created="2026-11-21T08:00:00Z")
    assert job.range.start_frame_number == 86400
    assert job.priority == d.PRIORITY_NORMAL  # Job/1.0 -> 1.1: from the kind
    # unknown keys survive a read-modify-write round trip, byte for byte; written
    # back, the document is a Job/1.1 with the priority the upgrade gave it
    assert job.extra == {"x_future_key": {"kept": True}}
    assert msgpack.unpackb(job.to_bytes()) == {
        **msgpack.unpackb(GOLDEN_JOB_V1), "schema": "facestitch.Job/1.1",
        "priority": 0}


@pytest.mark.parametrize("doc", [
    Progress("j", "running", "track", 0, 4, 0.25, "frame 3", "w", "t"),
    Result(job_id="j", state="done"),
    Lease("j", "host:1:ab", 2, 1.5e9, reclaims=1, released="expired"),
    StageDone("track", 1.25, {"frames": 3}, ("w",), {"models": {}}),
])
def test_round_trip_of_every_document(doc):
    again = decode_document(doc.to_bytes(), type(doc))
    assert again == doc
    assert decode_document(doc.to_bytes()) == doc  # any known type


@dataclass(frozen=True)
class Widget(d._Document):
    """A test-only document at major 3, with upgrades from 1 and 2."""

    NAME: ClassVar[str] = "Widget"
    VERSION: ClassVar[int] = 3

    size: int
    label: str = ""
    extra: dict[str, Any] = d.field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Widget":
        f = d._Fields(data, "", ("schema", "size", "label"))
        return cls(f.get("size", int), f.get("label", str, ""), extra=f.extra())

    def body(self) -> dict[str, Any]:
        return {"size": self.size, "label": self.label}


@pytest.fixture
def widget(monkeypatch):
    monkeypatch.setitem(DOCUMENT_TYPES, "Widget", Widget)
    monkeypatch.setattr(d, "UPGRADES", dict(UPGRADES))

    @register_upgrade("Widget", 1)
    def _1_to_2(doc: dict) -> dict:  # 1 -> 2: "width" became "size"
        doc["size"] = doc.pop("width")
        return doc

    @register_upgrade("Widget", 2)
    def _2_to_3(doc: dict) -> dict:  # 2 -> 3: "label" added
        doc.setdefault("label", "unnamed")
        return doc

    return Widget


def pack(**data) -> bytes:
    return msgpack.packb(data)


def test_old_majors_are_upgraded_step_by_step(widget, tmp_path):
    p = tmp_path / "widget.msgpack"
    p.write_bytes(pack(schema="facestitch.Widget/1", width=7, note="hi"))
    w = load_document(p, Widget)
    assert (w.size, w.label, w.extra) == (7, "unnamed", {"note": "hi"})
    assert w.to_dict()["schema"] == "facestitch.Widget/3"
    assert decode_document(pack(schema="facestitch.Widget/2", size=2)).size == 2


def test_unknown_major_is_rejected_naming_the_file_and_versions(widget, tmp_path):
    p = tmp_path / "widget.msgpack"
    p.write_bytes(pack(schema="facestitch.Widget/4", size=1))
    with pytest.raises(DocumentVersionError) as err:
        load_document(p, Widget)
    assert "widget.msgpack" in err.value.message
    assert "Widget/1..3" in err.value.message
    assert err.value.code == "document.version"


def test_newer_job_major_is_rejected(tmp_path):
    p = tmp_path / "job.msgpack"
    p.write_bytes(pack(schema="facestitch.Job/2", id="x"))
    with pytest.raises(DocumentVersionError, match=r"job\.msgpack.*Job/1\.\.1"):
        load_document(p, Job)


def test_job_minor_versions_upgrade_and_newer_minors_are_read_as_they_are():
    base = job_dict()
    del base["priority"]
    old = {**base, "schema": "facestitch.Job/1"}
    assert decode_document(pack(**old), Job).priority == d.PRIORITY_NORMAL
    draft = {**old, "kind": "draft"}
    assert decode_document(pack(**draft), Job).priority == d.PRIORITY_DRAFT
    # a 1.1 document without the key gets the kind's default; with it, its value
    assert decode_document(pack(**{**draft, "schema": "facestitch.Job/1.1"}),
                           Job).priority == d.PRIORITY_DRAFT
    low = decode_document(pack(**{**draft, "schema": "facestitch.Job/1.1",
                                  "priority": -5}), Job)
    assert low.priority == -5 and low.to_dict()["schema"] == "facestitch.Job/1.1"
    # a newer minor of a known major only adds keys: read, kept, written back
    newer = decode_document(pack(**{**old, "schema": "facestitch.Job/1.7",
                                    "x_later": 1}), Job)
    assert newer.extra == {"x_later": 1}
    with pytest.raises(DocumentFieldError, match="priority") as err:
        decode_document(pack(**{**old, "priority": 1000}), Job)
    assert err.value.field == "priority"
    for bad in ("facestitch.Job/1.", "facestitch.Job/1.x", "facestitch.Job/.1"):
        with pytest.raises(DocumentFieldError, match="schema"):
            decode_document(pack(**{**old, "schema": bad}), Job)


def test_a_missing_minor_upgrade_step_is_an_error(monkeypatch):
    monkeypatch.delitem(d.MINOR_UPGRADES, ("Job", 1, 0))
    data = {**job_dict(), "schema": "facestitch.Job/1"}
    with pytest.raises(DocumentVersionError, match=r"no upgrade from Job/1\.0"):
        decode_document(pack(**data), Job, source="j.msgpack")


def test_missing_upgrade_step_is_an_error(widget, monkeypatch):
    monkeypatch.delitem(d.UPGRADES, ("Widget", 2))
    with pytest.raises(DocumentVersionError, match="no upgrade from Widget/2"):
        decode_document(pack(schema="facestitch.Widget/1", width=1), Widget,
                        source="w.msgpack")


def job_dict(**changes) -> dict:
    data = Job(id="j", source=Source("m.mov"),
               range=FrameRange(0, 4, Fraction(25))).to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize("change,field", [
    ({"range": {"start": 0, "end": "4", "rate": [25, 1]}}, "range.end"),
    ({"range": {"start": 5, "end": 4, "rate": [25, 1]}}, "range.end"),
    ({"range": {"start": 0, "end": 4, "rate": [25, 0]}}, "range.rate"),
    ({"edits": [{"name": "age", "strength": "old"}]}, "edits[0].strength"),
    ({"edits": [{"name": "age", "keyframes": [[3, 1], [1, 2]]}]},
     "edits[0].keyframes"),
    ({"kind": "deepfake"}, "kind"),
    ({"id": "../escape"}, "id"),
    ({"source": {"kind": "video"}}, "source.path"),
    ({"output": {"name": "../x"}}, "output.name"),
    ({"subject": {"index": 1, "box": [0, 1, 2, 3, 4]}}, "subject"),
])
def test_field_errors_name_the_file_and_the_field(change, field):
    with pytest.raises(DocumentFieldError) as err:
        decode_document(msgpack.packb(job_dict(**change)), Job, source="job.msgpack")
    assert err.value.field == field
    assert err.value.message.startswith("job.msgpack: ")


def test_not_msgpack_not_a_map_wrong_type_and_too_large(tmp_path):
    with pytest.raises(DocumentNotMsgpack, match="x.msgpack"):
        decode_document(b"\xc1\xc1", Job, source="x.msgpack")
    with pytest.raises(DocumentError) as err:
        decode_document(msgpack.packb([1, 2]), Job, source="x.msgpack")
    assert err.value.code == "document.malformed"
    with pytest.raises(DocumentVersionError, match="expected facestitch.Job/1"):
        decode_document(Result(job_id="j", state="done").to_bytes(), Job)
    with pytest.raises(DocumentFieldError, match="schema"):
        decode_document(msgpack.packb({"id": "j"}), Job)
    p = tmp_path / "job.msgpack"
    p.write_bytes(msgpack.packb(job_dict(pad="x" * Job.MAX_BYTES)))
    with pytest.raises(DocumentTooLarge, match="job.msgpack"):
        load_document(p, Job)
