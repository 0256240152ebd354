"""``facestitch ofx build --out DIR [--cc CC]``: compile the OpenFX shim bundle."""

from __future__ import annotations

import argparse

from host_bridge.ofx import PARAMS, build_bundle

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch ofx",
        description="Build the FaceStitch OpenFX shim (Export / Composite) with the "
                    "system C compiler into FaceStitch.ofx.bundle. Install by copying the "
                    "bundle into an OpenFX plugin folder (see docs/hosts.md).")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="compile and lay out FaceStitch.ofx.bundle")
    b.add_argument("--out", required=True,
                   help="folder to receive FaceStitch.ofx.bundle, e.g. /usr/OFX/Plugins")
    b.add_argument("--cc", default=None, help="C compiler (default: $CC, cc, gcc, clang)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    build = build_bundle(args.out, cc=args.cc)
    print(f"built {build.bundle}")
    print(f"  binary    {build.binary} ({build.arch}, {build.compiler})")
    print(f"  parameters: {', '.join(PARAMS)}")
    print("Restart the host (Resolve, Nuke, Natron...) so that it rescans its plugins.")
    return 0
