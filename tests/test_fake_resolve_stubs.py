"""tests/fake_resolve.py against the published API: ``fusionscript-stubs`` 21.0.0 (the
Resolve 21.0 scripting README as typed stubs, installed by the dev extra).

Every API method the fake implements must exist on the matching stub class and
accept every argument count the stubs allow (their ``@overload`` variants together);
the fake may be more lenient (the stubs mark many optional arguments as required).
Every Resolve call the bridge makes must be a real API name. The stubs are read with
``ast`` from the installed ``.pyi`` files, never imported."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import math
import re
from pathlib import Path

import pytest

import fake_resolve as fr

ROOT = Path(__file__).resolve().parents[1]

#: fake class -> stub class
CLASSES = {
    fr.FakeResolve: "Resolve", fr.FakeProjectManager: "ProjectManager",
    fr.FakeProject: "Project", fr.FakeMediaPool: "MediaPool", fr.FakeFolder: "Folder",
    fr.FakeMediaPoolItem: "MediaPoolItem", fr.FakeTimeline: "Timeline",
    fr.FakeTimelineItem: "TimelineItem", fr.FakeFusion: "Fusion",
}

Arity = tuple[int, float]  # (fewest, most) positional arguments after self

#: real names the stubs lack, each with where it is documented or measured
NOT_IN_STUBS = {
    "GetResolve": "fusion.GetResolve() / app.GetResolve(): how menu scripts reach "
                  "Resolve, as OpenRoto, AYON and AutoSubs do (resolve/connect.py); "
                  "the stubs type the Resolve README's API and leave Fusion's own "
                  "class empty",
}


def _stub_file() -> Path:
    try:
        files = importlib.metadata.files("fusionscript-stubs") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("fusionscript-stubs is not installed: make setup (the dev extra)")
    [pyi] = [f for f in files if f.name == "fusionscript.pyi"]
    return Path(pyi.locate()).resolve()


def _arity(fn: ast.FunctionDef) -> Arity:
    args = fn.args
    positional = [*args.posonlyargs, *args.args][1:]  # drop self
    most = math.inf if args.vararg else len(positional)
    return len(positional) - len(args.defaults), most


def stub_api() -> dict[str, dict[str, list[Arity]]]:
    """class -> method -> arities of its variants (overloads), from the .pyi."""
    tree = ast.parse(_stub_file().read_text())
    out: dict[str, dict[str, list[Arity]]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = out.setdefault(node.name, {})
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name[:1].isupper():
                    methods.setdefault(fn.name, []).append(_arity(fn))
    return out


def fake_api(cls: type) -> dict[str, Arity]:
    out = {}
    for name in dir(cls):
        attr = inspect.getattr_static(cls, name, None)
        if not name[:1].isupper() or not inspect.isfunction(attr):
            continue  # constants (COMPOSITE_NORMAL...) and test helpers
        params = list(inspect.signature(attr).parameters.values())[1:]
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            most = math.inf
        else:
            most = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                       for p in params)
        fewest = sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                         p.POSITIONAL_OR_KEYWORD)
                     for p in params)
        out[name] = (fewest, most)
    return out


@pytest.fixture(scope="module")
def stubs():
    return stub_api()


def test_the_stubs_are_the_21_0_api(stubs):
    assert importlib.metadata.version("fusionscript-stubs") == "21.0.0"
    assert set(CLASSES.values()) <= set(stubs)
    assert "DeleteRenderPreset" in stubs["Project"]
    assert "GetSourceStartFrame" in stubs["TimelineItem"]


def mismatches(cls: type, stub: dict[str, list[Arity]]) -> list[str]:
    problems = []
    for name, (fewest, most) in sorted(fake_api(cls).items()):
        if name not in stub:
            if name not in NOT_IN_STUBS:
                problems.append(f"{name}: not in the Resolve API")
            continue
        s_fewest = min(a[0] for a in stub[name])
        s_most = max(a[1] for a in stub[name])
        if fewest > s_fewest:
            problems.append(f"{name}: the fake needs {fewest} arguments, a real call "
                            f"may pass {s_fewest}")
        if most < s_most:
            problems.append(f"{name}: the fake takes at most {most} arguments, the API "
                            f"allows {s_most}")
    return problems


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_fake_methods_exist_and_take_the_stub_arguments(stubs, cls):
    problems = mismatches(cls, stubs[CLASSES[cls]])
    assert not problems, f"{cls.__name__} vs {CLASSES[cls]}:\n" + "\n".join(problems)


def test_the_check_catches_a_wrong_fake(stubs):
    class Wrong:
        def GetStart(self):  # the API passes subframe_precision
            return 0

        def GetClipProperty(self, key, extra):  # needs more than a real call gives
            return ""

        def GetSelection(self):  # no such API
            return []

    assert mismatches(Wrong, stubs["TimelineItem"]) == [
        "GetClipProperty: not in the Resolve API",
        "GetSelection: not in the Resolve API",
        "GetStart: the fake takes at most 0 arguments, the API allows 1"]
    assert mismatches(Wrong, stubs["MediaPoolItem"])[0] == (
        "GetClipProperty: the fake needs 2 arguments, a real call may pass 1")


def test_every_resolve_call_the_bridge_makes_is_in_the_api(stubs):
    real = {name for methods in stubs.values() for name in methods}
    sources = [*sorted((ROOT / "host_bridge" / "resolve").glob("*.py")),
               ROOT / "host_bridge" / "roundtrip.py"]
    called = set()
    for path in sources:
        text = path.read_text()
        called |= set(re.findall(r"\.([A-Z][A-Za-z0-9]+)\(", text))
        called |= set(re.findall(r'has_api\([^,]+, "([A-Za-z0-9]+)"\)', text))
    called -= {"TemporaryDirectory"}  # tempfile, not Resolve
    assert len(called) > 40
    assert sorted(called - real - set(NOT_IN_STUBS)) == []
