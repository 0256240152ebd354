"""Bad command lines (issue 14, defects 7 and 12): OS problems are one line
naming the path and the problem, exit status 2, no traceback, and they are found
before any long work starts (each case below would otherwise fail differently
first: the media given is not media, the job does not exist). Real ``facestitch``
processes; permission cases run without root's capabilities."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine_harness_util import ROOT, write_test_clip
from fsexchange.exchange import Exchange
from hostile import permissions_bind, without_root_powers

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes"),
              pytest.mark.slow]

PERMS = permissions_bind()


def facestitch(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "host_bridge.cli",
                           *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout,
                          preexec_fn=without_root_powers)


def one_line_error(p: subprocess.CompletedProcess, code: str, *words: str) -> str:
    err = p.stderr.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith(("INFO", "WARNING"))]
    assert p.returncode == 2, (p.returncode, p.stdout, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert f"[{code}]" in lines[0], lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ex = Exchange(d / "ex").ensure().root
    afile = d / "afile"
    afile.write_text("a file, not a folder")
    notmedia = d / "notmedia.mp4"
    notmedia.write_bytes(b"not a movie at all")
    readonly = Exchange(d / "readonly").ensure().root
    for sub in [readonly, *readonly.iterdir()]:
        sub.chmod(0o555)
    rofolder = d / "rofolder"
    rofolder.mkdir()
    rofolder.chmod(0o555)
    clip = write_test_clip(d / "clip.mp4", frames=4)
    yield {"ex": ex, "afile": afile, "notmedia": notmedia, "readonly": readonly,
           "rofolder": rofolder, "dir": d, "clip": clip}
    for sub in [readonly, *readonly.iterdir(), rofolder]:
        sub.chmod(0o755)


def test_exchange_that_is_missing_or_a_file(place):
    missing = place["dir"] / "missing"
    one_line_error(facestitch("status", "--exchange", missing), "io.path",
                   "does not exist")
    one_line_error(facestitch("cancel", "--exchange", missing, "j"), "io.path")
    one_line_error(facestitch("status", "--exchange", place["afile"]), "io.path",
                   "not a folder")
    one_line_error(facestitch("engine", "--exchange", place["afile"], "--once"),
                   "io.path", "not a folder")
    one_line_error(facestitch("submit", place["notmedia"], "--exchange",
                              place["afile"], "--edit", "age=-4"), "io.path")


@pytest.mark.skipif(not PERMS, reason="permission bits do not bind here")
def test_read_only_exchange_is_refused_at_once(place):
    ro = place["readonly"]
    one_line_error(facestitch("engine", "--exchange", ro, "--once"),
                   "io.permission", str(ro / "tmp"))
    # before the media is even looked at (it is not media)
    one_line_error(facestitch("submit", place["notmedia"], "--exchange", ro,
                              "--edit", "age=-4"), "io.permission")


def test_output_paths_are_checked_before_the_work(place):
    d, notmedia = place["dir"], place["notmedia"]
    one_line_error(facestitch("otio", "no-such-job", "--exchange", place["ex"],
                              "--out", d / "nodir" / "x.otio"),
                   "io.path", "does not exist")
    one_line_error(facestitch("preview", notmedia, "--out", place["afile"]),
                   "io.path", "not a folder")
    one_line_error(facestitch("metrics", "--source", notmedia, "--edited",
                              notmedia, "--svg", d / "nodir" / "x.svg"),
                   "io.path", "--svg")
    one_line_error(facestitch("ofx", "build", "--out", place["afile"] / "sub"),
                   "io.path", "not a folder")
    if PERMS:
        one_line_error(facestitch("ofx", "build", "--out", place["rofolder"]),
                       "io.permission")


def test_bad_values_on_the_command_line(place):
    ex, clip = place["ex"], place["clip"]
    for edit in ("age=nan", "age=inf", "age=1e9", "age=0@0,nan@2"):
        one_line_error(facestitch("submit", clip, "--exchange", ex, "--edit", edit,
                                  "--kind", "stitch"), "edit.invalid")
    for option in ("align.resolution=1048576", "pti.steps=1000000000000000",
                   "pti.lr=NaN", "align.center_sigma=Infinity", "pti.lr=0"):
        one_line_error(facestitch("submit", clip, "--exchange", ex, "--edit",
                                  "age=-4", "--option", option), "document.field",
                       "options.")
    assert not list((ex / "new").iterdir())
    one_line_error(facestitch("ofx", "build", "--out", place["dir"] / "b",
                              "--cc", "no-such-compiler-1234"), "host.error",
                   "no-such-compiler-1234")
    one_line_error(facestitch("models", "add", "mine", place["dir"]), "model.format",
                   "is a folder")
