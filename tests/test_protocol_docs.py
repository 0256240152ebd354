"""docs/protocol.md must not drift from the code: every document, every field,
every schema version, every job state, every folder and every error code."""

from __future__ import annotations

import importlib
import pkgutil
import re
from fractions import Fraction
from typing import Any

import pytest

from engine_harness_util import ROOT
from fsexchange import documents as d
from fsexchange.errors import ERROR_CODES
from fsexchange.exchange import FOLDERS, RESERVED_NAMES

DOC = (ROOT / "docs" / "protocol.md").read_text()


def samples() -> dict[str, d._Document]:
    """One instance of every document with every nested list populated."""
    rng = d.FrameRange(0, 2, Fraction(24), "01:00:00:00")
    job = d.Job(id="j", source=d.Source("m.mov"), range=rng,
                subject=d.Subject(index=0),
                edits=(d.Edit("age", 1.0, (d.Keyframe(0, 1.0),)),
                       d.Edit("text_a_face", 2.0, space="text", text="a face")))
    track = d.FaceTrack(Fraction(24), (4, 4), (d.TrackFrame(0, False),))
    frame = d.FrameOutput(0, "output/a.png", "0" * 64)
    result = d.Result(job_id="j", state="failed",
                      stages=(d.StageTiming("track", 1.0),), frames=(frame,),
                      error={"code": "internal", "message": "m", "stage": None,
                             "frame": None, "field": None},
                      variants=(d.Variant("age -8", (("age", -8.0),),
                                          "output/sweep/r00_age-8", (frame,)),))
    return {"Job": job, "FaceTrack": track, "Progress": d.Progress("j", "running"),
            "Result": result, "Lease": d.Lease("j", "w", 1, 0.0),
            "StageDone": d.StageDone("track", 1.0)}


def flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Field paths of a document dict; a list of maps contributes the keys of all
    its maps (``edits.name``)."""
    out = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        out.add(path)
        maps = [value] if isinstance(value, dict) else (
            [v for v in value if isinstance(v, dict)] if isinstance(value, list)
            else [])
        for m in maps:
            if m:
                out |= flatten(m, path + ".")
    return out


def doc_sections() -> dict[tuple[str, int], set[str]]:
    """(name, major) -> documented fields; the heading's minor must be the code's."""
    sections = {}
    parts = re.split(r"^### `facestitch\.(\w+)/(\d+)(?:\.(\d+))?`\s*$", DOC,
                     flags=re.M)
    for i in range(1, len(parts), 4):
        name, major, minor = parts[i], int(parts[i + 1]), int(parts[i + 2] or 0)
        body = parts[i + 3].split("\n## ", 1)[0]
        cls = d.DOCUMENT_TYPES.get(name)
        assert cls is None or minor == cls.MINOR, f"{name}/{major}.{minor} documented"
        sections[(name, major)] = set(re.findall(r"^\| `([^`]+)` \|", body,
                                                 flags=re.M))
    return sections


def normalise(fields: set[str]) -> set[str]:
    # "edits[].name" documents "edits" as a list of maps
    return {f.replace("[]", "") for f in fields}


def test_every_document_type_is_documented_at_its_version():
    sections = doc_sections()
    assert {name for name, _ in sections} == set(d.DOCUMENT_TYPES)
    for name, cls in d.DOCUMENT_TYPES.items():
        assert (name, cls.VERSION) in sections, f"{cls.schema()} not in the doc"
    for name, major, minor in re.findall(r"facestitch\.(\w+)/(\d+)(?:\.(\d+))?",
                                         DOC):
        cls = d.DOCUMENT_TYPES.get(name)
        assert cls is not None and int(major) == cls.VERSION, f"{name}/{major}"
        assert int(minor or 0) <= cls.MINOR, f"{name}/{major}.{minor}"


@pytest.mark.parametrize("name", sorted(d.DOCUMENT_TYPES))
def test_every_field_is_documented_and_no_other(name):
    cls = d.DOCUMENT_TYPES[name]
    documented = normalise(doc_sections()[(name, cls.VERSION)])
    in_code = flatten(samples()[name].to_dict())
    assert documented - in_code == set(), f"{name}: documented but not in the code"
    assert in_code - documented == set(), f"{name}: in the code but not documented"


def all_error_codes() -> set[str]:
    import engine
    import host_bridge

    for pkg in (engine, host_bridge):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)
    return set(ERROR_CODES)


def test_every_error_code_is_documented_and_no_other():
    section = DOC.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    codes = all_error_codes()
    assert codes - documented == set(), "error codes missing from docs/protocol.md"
    assert documented - codes == set(), "documented error codes that do not exist"


def test_states_folders_kinds_formats_and_reserved_names_appear():
    layout = DOC.split("## Folder layout", 1)[1].split("### A job folder", 1)[0]
    for folder in FOLDERS:
        assert f"\n  {folder}/" in layout, folder
    machine = DOC.split("## The state machine", 1)[1].split("\n## ", 1)[0]
    for state in d.JOB_STATES:
        assert f"`{state}`" in machine, state
    for word in (*RESERVED_NAMES, *d.JOB_KINDS, *d.OUTPUT_FORMATS):
        assert f"`{word}`" in DOC, word


def test_engine_and_client_flags_appear():
    from engine.commands.engine import build_parser as engine_parser

    for action in engine_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert flag in DOC, flag
    for cmd in ("facestitch submit", "facestitch status --json", "facestitch cancel"):
        assert cmd in DOC
