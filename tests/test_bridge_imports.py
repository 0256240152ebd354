"""The bridge side never needs the engine, torch, numpy, OpenCV, PyAV or
OpenTimelineIO: every module of ``fsexchange`` and ``host_bridge`` imports, and the
CLI's help runs, in a process where those packages cannot be imported. The one
exception is ``host_bridge.otio_export``, which is the ``otio`` extra (``facestitch
otio`` imports it only when it runs). tests/test_base_install.py checks the same in
a real fresh virtual environment holding the base wheel alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from engine_harness_util import ROOT

BLOCKED = ("engine", "torch", "torchvision", "numpy", "cv2", "av", "opentimelineio")
#: modules that are an optional extra themselves (pyproject.toml)
EXTRA_MODULES = ("host_bridge.otio_export",)

SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))
    EXTRA_MODULES = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set()

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in the bridge test")
            return None

    sys.meta_path.insert(0, Blocker())
    names = []
    for pkg_name in ("fsexchange", "host_bridge"):
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if info.name in EXTRA_MODULES:
                continue
            importlib.import_module(info.name)
            names.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    from host_bridge.cli import main
    for argv in (["--help"], ["status", "--help"], ["submit", "--help"],
                 ["cancel", "--help"], ["otio", "--help"]):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        assert rc == 0, (argv, rc)
    print("IMPORTED", " ".join(names))
""")


def test_bridge_imports_without_engine_torch_numpy_cv2_av():
    out = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(BLOCKED),
                          ",".join(EXTRA_MODULES)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    imported = out.stdout.split("IMPORTED", 1)[1].split()
    for name in ("fsexchange.client", "fsexchange.exchange", "fsexchange.documents",
                 "fsexchange.grammar", "fsexchange.media", "fsexchange.options",
                 "host_bridge.faces", "host_bridge.menu", "host_bridge.roundtrip",
                 "host_bridge.cli", "host_bridge.commands.submit",
                 "host_bridge.commands.status", "host_bridge.commands.cancel",
                 "host_bridge.commands.otio"):
        assert name in imported
    assert "usage: facestitch COMMAND" in out.stdout
    assert "facestitch status" in out.stdout


def test_blocker_really_blocks():
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace(
        'for pkg_name in ("fsexchange", "host_bridge")', 'import numpy\nfor pkg_name '
        'in ()'), ",".join(BLOCKED)], capture_output=True, text=True, cwd=ROOT,
        timeout=120)
    assert out.returncode != 0 and "blocked in the bridge test" in out.stderr


ENGINE_SCRIPT = SCRIPT.replace(
    'for pkg_name in ("fsexchange", "host_bridge")',
    'import engine.service.worker, engine.service.runner, engine.service.watch, '
    'engine.commands.engine\n'
    'for pkg_name in ()').replace(
    '["status", "--help"]', '["engine", "--help"]')


def test_engine_loop_imports_without_torch():
    """The engine process starts (and runs torch-free stages) without torch; only
    the stages that need it import it."""
    out = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, "torch,torchvision"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "facestitch engine" in out.stdout
