"""Building the OpenFX bundle for the compiler's target, and the bridge's checks on the
frames the shim exported.

The bundle folder follows the code the compiler produces (its ``-dumpmachine``
triple), not the machine: on Windows ARM the hosts are ARM64EC, so ARM64EC goes into
``Win-arm64ec``, x64 into ``Win64``, and native ARM64 (which no host loads) is
refused. Compilers for other targets are stand-in scripts that answer
``-dumpmachine`` as those compilers do and "compile" by writing the output file.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from fsexchange.errors import HostError
from host_bridge.cli import main as cli
from host_bridge.ofx import build_bundle, bundle_arch, exported_frames, target_arch
from test_ofx_shim import write_pam16

pytestmark = pytest.mark.skipif(os.name == "nt", reason="stand-in compilers are sh")


def compiler_for(folder: Path, triple: str) -> str:
    """A stand-in C compiler for ``triple``."""
    path = folder / f"{triple}-cc"
    path.write_text(f"""#!/bin/sh
if [ "$1" = -dumpmachine ]; then echo {triple}; exit 0; fi
while [ $# -gt 0 ]; do
  if [ "$1" = -o ]; then shift; echo "built for {triple}" > "$1"; fi
  shift
done
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize("triple, arch", [
    ("arm64ec-w64-windows-gnu", "Win-arm64ec"),     # llvm-mingw arm64ec
    ("arm64ec-pc-windows-msvc", "Win-arm64ec"),     # clang --target=arm64ec
    ("x86_64-w64-mingw32", "Win64"),                # also on Windows ARM: emulated x64
    ("i686-w64-mingw32", "Win32"),
])
def test_windows_folders_follow_the_target(tmp_path, triple, arch):
    assert target_arch(compiler_for(tmp_path, triple), "Windows") == arch


def test_native_arm64_windows_is_refused_with_what_to_use(tmp_path):
    cc = compiler_for(tmp_path, "aarch64-w64-mingw32")
    with pytest.raises(HostError) as err:
        target_arch(cc, "Windows")
    message = err.value.message
    assert "native ARM64" in message and "ARM64EC" in message and "--cc" in message
    # bundle_arch still names the folder the host machine scans
    assert bundle_arch("Windows", "ARM64") == "Win-arm64ec"


@pytest.mark.parametrize("triple, arch", [
    ("x86_64-linux-gnu", "Linux-x86-64"), ("aarch64-linux-gnu", "Linux-aarch64"),
    ("i686-linux-gnu", "Linux-x86"), ("arm64-apple-darwin23.0.0", "MacOS")])
def test_unix_folders_follow_the_target(tmp_path, triple, arch):
    system = "Darwin" if "apple" in triple else "Linux"
    assert target_arch(compiler_for(tmp_path, triple), system) == arch


def test_the_real_compiler_builds_for_this_machine():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    assert target_arch(cc) == bundle_arch()


def test_a_cross_compiler_fills_its_own_folder(tmp_path):
    build = build_bundle(tmp_path / "out", cc=compiler_for(tmp_path,
                                                           "aarch64-linux-gnu"))
    assert build.arch == "Linux-aarch64"
    assert build.binary == (tmp_path / "out" / "FaceStitch.ofx.bundle" / "Contents" /
                            "Linux-aarch64" / "FaceStitch.ofx")
    assert build.binary.read_text().strip() == "built for aarch64-linux-gnu"


def test_exported_frames_of_different_sizes_are_refused(tmp_path, capsys):
    full = np.zeros((6, 8, 4), np.uint16)
    for n in (100, 101, 103):
        write_pam16(tmp_path / f"frame.{n:07d}.pam", full)
    write_pam16(tmp_path / "frame.0000102.pam", full[::2, ::2])  # a proxy render
    with pytest.raises(HostError) as err:
        exported_frames(tmp_path)
    assert "frame 100: 8x6, frame 102: 4x3" in err.value.message
    assert "full resolution" in err.value.message
    (tmp_path / "frame.0000102.pam").unlink()
    write_pam16(tmp_path / "frame.0000102.pam", full)
    assert exported_frames(tmp_path) == [100, 101, 102, 103]
    # through the command: one line, exit 2
    write_pam16(tmp_path / "frame.0000104.pam", full[:, :4])
    assert cli(["ofx", "submit", str(tmp_path), "--exchange", str(tmp_path / "x"),
                "--rate", "25", "--kind", "align-preview"]) == 2
    err_text = capsys.readouterr().err
    assert "differ in size" in err_text and err_text.count("\n") == 1
