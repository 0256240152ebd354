"""The base install is the bridge and the protocol, msgpack and nothing else: the
wheel built from this tree goes into a fresh virtual environment (no index: the
wheel and msgpack only), where submit, status and cancel run, the Resolve menu
scripts send a shot to a fake Resolve, and the commands that need an extra say how
to install it in one line.

Real processes throughout: ``pip wheel``, ``python -m venv``, ``pip install``, the
installed ``facestitch`` script. About 15 s on 2 cores."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
#: what an editor's Python must not need
OPTIONAL = ("torch", "numpy", "cv2", "av", "opentimelineio", "watchdog", "scipy")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the base wheel and msgpack, nothing else."""
    tmp = tmp_path_factory.mktemp("base")
    src = tmp / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("fsexchange", "host_bridge", "engine", "plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp / "wheels"
    _check(_run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                 "--no-build-isolation", "-w", str(wheels), str(src)]))
    msgpack = importlib.metadata.version("msgpack")
    _check(_run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                 "--only-binary=:all:", "-d", str(wheels), f"msgpack=={msgpack}"]))
    venv = tmp / "venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)]))
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    _check(_run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                 "--no-index", "--find-links", str(wheels), "facestitch"]))
    return venv


def _bin(venv: Path, name: str) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / name)


def test_the_base_install_holds_facestitch_and_msgpack_only(base_venv):
    out = _check(_run([_bin(base_venv, "python"), "-c", textwrap.dedent("""
        import importlib.metadata, importlib.util, json
        dists = sorted(d.metadata["Name"].lower()
                       for d in importlib.metadata.distributions())
        print(json.dumps([dists, [m for m in %r if importlib.util.find_spec(m)]]))
    """ % (OPTIONAL,))], cwd=base_venv))
    dists, importable = json.loads(out.stdout)
    assert dists == ["facestitch", "msgpack"]
    assert importable == []


def test_submit_status_cancel_from_the_base_install(base_venv, tmp_path):
    fs = _bin(base_venv, "facestitch")
    exchange = tmp_path / "exchange"
    clip = tmp_path / "plate.mov"
    clip.write_bytes(b"not probed here: the engine machine reads it")
    out = _check(_run([fs, "submit", str(clip), "--exchange", str(exchange), "--range",
                       "0:4", "--rate", "25", "--kind", "align-preview", "--id",
                       "base-job"], cwd=tmp_path))
    assert out.stdout.split() == ["base-job"]
    status = json.loads(_check(_run([fs, "status", "--exchange", str(exchange),
                                     "--json"], cwd=tmp_path)).stdout)
    assert [(j["id"], j["state"]) for j in status] == [("base-job", "queued")]
    _check(_run([fs, "cancel", "--exchange", str(exchange), "base-job"], cwd=tmp_path))
    status = json.loads(_check(_run([fs, "status", "--exchange", str(exchange),
                                     "base-job", "--json"], cwd=tmp_path)).stdout)
    assert status["state"] == "cancelled"

    # bad input and missing extras: one line, exit 2, no traceback
    for argv, expect in (
            (["submit", str(tmp_path / "missing.mov"), "--exchange", str(exchange),
              "--range", "0:4", "--rate", "25"], "missing.mov"),
            (["otio", "--exchange", str(exchange), "base-job", "--out",
              str(tmp_path / "x.otio")], "pip install 'facestitch[otio]'"),
            (["preview", str(clip), "--out", str(tmp_path / "p")],
             "pip install 'facestitch[engine]'")):
        proc = _run([fs, *argv], cwd=tmp_path)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


RESOLVE_DRIVER = textwrap.dedent("""
    import importlib.util, runpy, sys
    from fractions import Fraction

    scripts, tests, clip = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.append(tests)  # the fake Resolve only: FaceStitch is the installed wheel
    from fake_resolve import FakeResolve
    import host_bridge

    resolve = FakeResolve(rate=Fraction(25))
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_virtual_media("plate.mov", {
        "File Path": clip, "Type": "Video", "FPS": 25.0, "Frames": "12",
        "Start TC": "01:00:00:00"})
    item = timeline.place(mpi, record=90010, duration=6, left_offset=2)
    timeline.set_playhead(90012)
    for name in ("Send Shot", "List Jobs", "Import Results"):
        print("== " + name, flush=True)
        runpy.run_path(f"{scripts}/FaceStitch {name}.py",
                       init_globals={"resolve": resolve, "fusion": resolve.fusion},
                       run_name="__main__")
    print("HOST_BRIDGE", host_bridge.__file__)
    print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in %r))
""" % (OPTIONAL,))


def test_resolve_menu_scripts_run_from_the_base_install(base_venv, tmp_path):
    exchange = tmp_path / "exchange"
    clip = tmp_path / "plate.mov"
    clip.write_bytes(b"a clip file")
    config = tmp_path / "bridge.json"
    config.write_text(json.dumps({"exchange": str(exchange), "edit": "preview",
                                  "ui": "console", "handles": 1}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["FACESTITCH_BRIDGE_CONFIG"] = str(config)
    proc = _check(_run([_bin(base_venv, "python"), "-c", RESOLVE_DRIVER,
                        str(ROOT / "resolve_scripts"), str(TESTS), str(clip)],
                       cwd=tmp_path, env=env, stdin=subprocess.DEVNULL))
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    send = out.split("== Send Shot", 1)[1].split("== List Jobs", 1)[0]
    assert "sent 'plate.mov' on V1" in send
    listing = out.split("== List Jobs", 1)[1].split("== Import Results", 1)[0]
    assert "'plate.mov' (align-preview) queued" in listing
    assert "still working" in out.split("== Import Results", 1)[1]
    assert str(base_venv) in out.split("HOST_BRIDGE", 1)[1].split()[0]
    assert out.split("LOADED", 1)[1].strip() == "[]"
    [job] = (exchange / "new").iterdir()
    assert job.name.startswith("resolve-")
