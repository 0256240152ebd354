"""The OpenFX shim from Python: build it into a standard ``.ofx.bundle`` with the
system C compiler, and turn the frames its Export mode wrote into a job.

Bundle layout (OpenFX 1.5, docs/hosts.md "OpenFX bundle layout and discovery")::

    FaceStitch.ofx.bundle/Contents/Info.plist
    FaceStitch.ofx.bundle/Contents/Resources/org.facestitch.ofxshim.svg
    FaceStitch.ofx.bundle/Contents/<ARCH>/FaceStitch.ofx

The C sources live in ``plugins/ofx_shim/`` (in a source checkout) or next to this
package when installed (package data). Torch-free and numpy-free.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from fsexchange.client import build_job
from fsexchange.documents import Edit, FrameRange, Job, OutputSpec, Source, Subject
from fsexchange.errors import HostError, MediaMissing
from fsexchange.fsutil import open_regular

__all__ = ["PLUGIN_ID", "BUNDLE_NAME", "PARAMS", "OfxBuild", "bundle_arch",
           "target_arch", "find_compiler", "source_dir", "build_bundle",
           "exported_frames", "build_ofx_job"]

log = logging.getLogger(__name__)

PLUGIN_ID = "org.facestitch.ofxshim"  # must match PLUGIN_ID in facestitch_ofx.c
BUNDLE_NAME = "FaceStitch"
#: parameter names the shim defines (facestitch_ofx.c, P_* macros)
PARAMS = ("mode", "exportFolder", "resultsFolder", "resultName", "frameOffset",
          "opacity")
_SOURCES = ("facestitch_ofx.c",)
_HEADERS = ("ofx_min.h",)

_INFO_PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" \
"http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>CFBundleDevelopmentRegion</key><string>English</string>
  <key>CFBundleExecutable</key><string>{name}.ofx</string>
  <key>CFBundleIdentifier</key><string>{ident}</string>
  <key>CFBundleInfoDictionaryVersion</key><string>6.0</string>
  <key>CFBundleName</key><string>{name}</string>
  <key>CFBundlePackageType</key><string>BNDL</string>
  <key>CFBundleShortVersionString</key><string>{version}</string>
  <key>CFBundleVersion</key><string>{version}</string>
  <key>CFBundleSignature</key><string>????</string>
</dict>
</plist>
"""

_ICON_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" \
viewBox="0 0 128 128"><rect width="128" height="128" rx="16" fill="#1d2733"/>\
<circle cx="64" cy="58" r="30" fill="none" stroke="#f2b84b" stroke-width="8"/>\
<path d="M24 112 h80" stroke="#f2b84b" stroke-width="8" stroke-dasharray="10 6"/></svg>
"""


@dataclass(frozen=True)
class OfxBuild:
    """What :func:`build_bundle` produced."""

    bundle: Path  # .../FaceStitch.ofx.bundle
    binary: Path  # .../Contents/<ARCH>/FaceStitch.ofx
    arch: str
    compiler: str
    command: tuple[str, ...]


def bundle_arch(system: str | None = None, machine: str | None = None) -> str:
    """The OpenFX architecture folder name for this machine (docs/hosts.md "OpenFX
    bundle layout and discovery")."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Darwin":
        return "MacOS"  # universal folder; MacOS-x86-64 is deprecated
    if system == "Windows":
        if machine in ("arm64", "aarch64"):
            return "Win-arm64ec"
        return "Win64" if sys.maxsize > 2**32 else "Win32"
    if system == "Linux":
        if machine in ("x86_64", "amd64"):
            return "Linux-x86-64"
        if machine in ("i386", "i486", "i586", "i686", "x86"):
            return "Linux-x86"
        return f"Linux-{machine}"  # recommended form, e.g. Linux-aarch64
    raise HostError(f"no OpenFX architecture folder is defined for {system} {machine}")


_X86 = ("i386", "i486", "i586", "i686", "x86")


def target_arch(compiler: str, system: str | None = None) -> str:
    """The bundle folder for the code ``compiler`` produces, from its target triple
    (``CC -dumpmachine``, which gcc and clang both answer): a cross compiler, or an
    x64 toolchain running under emulation on Windows ARM, builds for its target,
    not for this machine. Falls back to :func:`bundle_arch` when the compiler does
    not say.

    Windows on ARM (OpenFX 1.5 packaging; docs/hosts.md section 2.1): the hosts
    there (Resolve, Vegas) are ARM64EC processes, which load ARM64EC or x64
    plug-ins but never native ARM64 ones; so ARM64EC goes into ``Win-arm64ec``,
    x64 into ``Win64``, and a native ARM64 build is refused.

    Raises:
        HostError: a target no OpenFX host can load.
    """
    system = system or platform.system()
    try:
        triple = subprocess.run([compiler, "-dumpmachine"], capture_output=True,
                                text=True, timeout=60).stdout.strip().lower()
    except (OSError, subprocess.SubprocessError):
        triple = ""
    if not triple:
        return bundle_arch(system)
    cpu = triple.split("-", 1)[0]
    if system == "Windows" or "mingw" in triple or "windows" in triple:
        if cpu == "arm64ec":
            return "Win-arm64ec"
        if cpu in ("x86_64", "amd64"):
            return "Win64"
        if cpu in _X86:
            return "Win32"
        if cpu in ("aarch64", "arm64"):
            raise HostError(
                f"{Path(compiler).name} builds native ARM64 Windows code ({triple}), "
                "which no OpenFX host loads: Resolve and Vegas on Windows ARM are "
                "ARM64EC and load ARM64EC or x64 plug-ins. Build with an ARM64EC "
                "compiler (llvm-mingw's arm64ec-w64-mingw32-clang) or an x64 one "
                "(the Win64 plug-in runs under emulation): --cc COMPILER")
        raise HostError(f"no OpenFX folder is defined for Windows on {cpu} ({triple})")
    if system == "Darwin" or "apple" in triple:
        return "MacOS"
    if cpu in ("x86_64", "amd64"):
        return "Linux-x86-64"
    if cpu in _X86:
        return "Linux-x86"
    return f"Linux-{cpu}"  # Linux-$(uname -m), e.g. Linux-aarch64


def source_dir() -> Path:
    """Where the shim's C sources are: the checkout's ``plugins/ofx_shim``, or the
    copy a wheel installs as data files under ``<prefix>/share/facestitch/ofx_shim``
    (``[tool.setuptools.data-files]`` in pyproject.toml)."""
    here = Path(__file__).resolve().parent
    shared = Path(sys.prefix) / "share" / "facestitch" / "ofx_shim"
    for cand in (here.parent / "plugins" / "ofx_shim", shared):
        if all((cand / f).is_file() for f in _SOURCES + _HEADERS):
            return cand
    raise HostError("the OpenFX shim sources (plugins/ofx_shim/facestitch_ofx.c) are "
                    "not installed; build from a FaceStitch source checkout")


def find_compiler(cc: str | None = None) -> str:
    """The C compiler: the ``cc`` argument (only it: a compiler asked for is never
    silently replaced), else ``$CC``, then cc, gcc, clang on ``PATH``."""
    if cc:
        found = shutil.which(cc)
        if not found:
            raise HostError(f"C compiler {cc!r} not found (--cc names a compiler on "
                            "PATH or its path)")
        return found
    for cand in [os.environ.get("CC", "")] + ["cc", "gcc", "clang"]:
        if cand and shutil.which(cand):
            return shutil.which(cand)  # type: ignore[return-value]
    raise HostError("no C compiler found (tried $CC, cc, gcc, clang); install one, "
                    "e.g. 'apt install gcc' or Xcode's command-line tools")


def _link_flags(system: str) -> list[str]:
    if system == "Darwin":
        return ["-bundle"]
    if system == "Windows":  # MinGW gcc/clang
        return ["-shared", "-static-libgcc"]
    return ["-shared", "-fPIC"]


def build_bundle(out_dir: str | os.PathLike[str], *, cc: str | None = None,
                 extra_flags: tuple[str, ...] = (), version: str = "1.0") -> OfxBuild:
    """Compile the shim and lay out ``FaceStitch.ofx.bundle`` in ``out_dir``.

    The bundle is assembled in a temporary sibling folder and moved into place, so a
    host scanning ``out_dir`` never sees a half-built plugin; an existing bundle is
    replaced.

    Args:
        out_dir: folder receiving ``FaceStitch.ofx.bundle`` (e.g. ``/usr/OFX/Plugins``).
        cc: compiler to use (default: ``$CC``, then cc, gcc, clang).
        extra_flags: appended to the compiler command line.
        version: written into Info.plist.

    Raises:
        HostError: no compiler, or compilation failed (its output is in the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = source_dir()
    compiler = find_compiler(cc)
    system = platform.system()
    arch = target_arch(compiler, system)
    stage = Path(tempfile.mkdtemp(prefix=".FaceStitch.build.", dir=out))
    try:
        bundle = stage / f"{BUNDLE_NAME}.ofx.bundle"
        contents = bundle / "Contents"
        (contents / arch).mkdir(parents=True)
        (contents / "Resources").mkdir()
        binary = contents / arch / f"{BUNDLE_NAME}.ofx"
        cmd = [compiler, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
               "-fvisibility=hidden", *_link_flags(system),
               "-o", str(binary), *(str(src / f) for f in _SOURCES), "-lm",
               *extra_flags]
        log.info("compiling the OpenFX shim: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise HostError(f"compiling the OpenFX shim failed ({compiler}, exit "
                            f"{proc.returncode}):\n"
                            f"{proc.stderr.strip() or proc.stdout}")
        (contents / "Info.plist").write_text(
            _INFO_PLIST.format(name=BUNDLE_NAME, ident=PLUGIN_ID, version=version))
        (contents / "Resources" / f"{PLUGIN_ID}.svg").write_text(_ICON_SVG)
        final = out / bundle.name
        if final.exists():
            old = out / f".{bundle.name}.old.{os.getpid()}"
            final.rename(old)
            bundle.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            bundle.rename(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    built = final / "Contents" / arch / binary.name
    return OfxBuild(final, built, arch, compiler,
                    tuple(str(built) if c == str(binary) else c for c in cmd))


# ---- jobs from the shim's Export mode ----------------------------------------------

_EXPORTED = re.compile(r"^frame\.(\d{7})\.pam$")


def exported_frames(folder: str | os.PathLike[str]) -> list[int]:
    """File numbers of ``frame.NNNNNNN.pam`` written by the shim's Export mode,
    checked to be one contiguous run.

    Raises:
        MediaMissing: no exported frames. HostError: gaps (frames the host never
        rendered).
    """
    path = Path(folder)
    numbers = sorted(int(m[1]) for p in (path.iterdir() if path.is_dir() else ())
                     if (m := _EXPORTED.match(p.name)))
    if not numbers:
        raise MediaMissing(f"no frame.NNNNNNN.pam files in {path}: render the shot "
                           "with the FaceStitch effect in Export mode first")
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise HostError(f"{len(missing)} frame(s) missing in {path} ({shown}): render "
                        "the whole range with the effect in Export mode (the host "
                        "renders only the frames it shows)")
    check_frame_sizes(path, numbers)
    return numbers


def _pam_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PAM header, None when it is not one."""
    try:  # never blocks on a pipe named like a frame
        with open_regular(path, follow_symlinks=True) as fh:
            head = fh.read(512)
    except OSError:
        return None
    words = head.split(b"ENDHDR", 1)[0].split()
    if not words or words[0] != b"P7":
        return None
    fields = dict(zip(words[1::2], words[2::2]))
    try:
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    except (KeyError, ValueError):
        return None


def check_frame_sizes(folder: str | os.PathLike[str], numbers: list[int]) -> None:
    """Refuse exported frames of different sizes: proxy renders (which an older shim
    wrote at the reduced size) mixed with full-resolution ones.

    Raises:
        HostError: naming the first frame whose size differs from the first one's.
    """
    path = Path(folder)
    first = _pam_size(path / f"frame.{numbers[0]:07d}.pam")
    for n in numbers[1:]:
        size = _pam_size(path / f"frame.{n:07d}.pam")
        if size != first:
            raise HostError(
                f"the exported frames in {path} differ in size (frame {numbers[0]}: "
                f"{_size_text(first)}, frame {n}: {_size_text(size)}): some were "
                "rendered at a proxy or reduced resolution. Render the whole range "
                "again at full resolution with the effect in Export mode")


def _size_text(size: tuple[int, int] | None) -> str:
    return "unreadable" if size is None else f"{size[0]}x{size[1]}"


def build_ofx_job(folder: str | os.PathLike[str], job_id: str, rate: Fraction, *,
                  kind: str = "stitch", edits: tuple[Edit, ...] = (),
                  subject: Subject = Subject(), source_path: str | None = None,
                  options: dict | None = None, priority: int | None = None,
                  refine: bool | None = None) -> Job:
    """A job for frames exported by the shim. Results are ``pam16`` numbered like the
    exported frames (``start_number`` = the first file number), so Composite mode
    reads them back with the same Frame offset that Export used.

    Args:
        source_path: what ``Job.source.path`` says (default: the folder, absolute;
            the engine reads it when it lies under the exchange or a media root).
        refine: False skips the temporal refinement (``--no-refine``).
    """
    numbers = exported_frames(folder)
    return build_job(
        job_id=job_id, kind=kind,
        source=Source(source_path or str(Path(folder).resolve()), "sequence"),
        range=FrameRange(0, len(numbers), rate), subject=subject, edits=edits,
        options=options, output=OutputSpec(format="pam16", name="facestitch",
                                           start_number=numbers[0]),
        host={"app": "ofx", "plugin": PLUGIN_ID, "first_number": numbers[0],
              "frames": len(numbers)}, priority=priority, refine=refine)
