"""The ``facestitch`` command: a table of subcommands, each its own module.

Each subcommand module exposes ``main(argv: list[str]) -> int`` with its own
argparse parser (``prog="facestitch NAME"``), and is imported only when that
subcommand runs. Bridge-side modules stay torch-free; engine-side ones import torch
lazily inside ``main``. Errors of the FaceStitch hierarchy print as one readable line
and exit 2; so do operating-system errors (a missing folder, a read-only share, a
full disk), as the typed error :func:`fsexchange.errors.io_error` makes of them.
Commands check the paths they will write before long work starts.
"""

from __future__ import annotations

import importlib
import logging
import sys

__all__ = ["COMMANDS", "MISSING_EXTRA", "missing_extra_message", "main"]

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "submit": ("host_bridge.commands.submit",
               "submit a clip as a job to an exchange folder"),
    "status": ("host_bridge.commands.status", "show the state of jobs"),
    "cancel": ("host_bridge.commands.cancel", "cancel a queued or running job"),
    "panel": ("host_bridge.panel.command",
              "the job panel in a browser: progress, results, cancel, retry"),
    "engine": ("engine.commands.engine", "run the watched-folder engine"),
    "stage": ("engine.commands.stage", "run one unit of one stage of a job folder"),
    "farm": ("engine.commands.farm", "render farms: OpenJD template, claim, publish"),
    "demo": ("engine.commands.demo", "run the full round trip on a real-face clip"),
    "preview": ("engine.commands.preview",
                "track + align + identity paste-back of a clip"),
    "edits": ("engine.commands.edits", "list the installed edits"),
    "faces": ("engine.commands.faces", "list or track the faces of a clip (JSON)"),
    "models": ("engine.commands.models", "list, verify, install, fetch and add models"),
    "metrics": ("engine.commands.metrics",
                "temporal identity and warping-error metrics"),
    "ofx": ("host_bridge.commands.ofx", "build the OpenFX shim bundle"),
    "otio": ("host_bridge.commands.otio",
             "write an OpenTimelineIO round trip of a job"),
    "resolve-install": ("host_bridge.resolve_install",
                        "install the DaVinci Resolve menu scripts and settings"),
}


#: third-party top-level module -> the extra (pyproject.toml) that installs it; a
#: command whose import or run hits one of these says how to install it instead of
#: printing a traceback (the base install is msgpack only)
MISSING_EXTRA: dict[str, str] = {
    "torch": "engine", "torchvision": "engine", "numpy": "engine", "cv2": "engine",
    "av": "engine", "scipy": "engine", "skimage": "engine", "watchdog": "engine",
    "lpips": "engine", "dlib": "engine", "face_recognition_models": "engine",
    "OpenEXR": "engine", "opentimelineio": "otio", "ray": "ray", "openjd": "farm",
    "starlette": "panel", "uvicorn": "panel",
}


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line saying which extra installs the module ``exc`` names, or None when it
    is not a known optional dependency (then it is a bug and keeps its traceback)."""
    top = (exc.name or "").split(".")[0]
    extra = MISSING_EXTRA.get(top)
    if extra is None:
        return None
    return (f"this command needs the Python package '{top}', which is not installed in "
            f"{sys.executable}: pip install 'facestitch[{extra}]'")


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: facestitch COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'facestitch COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fsexchange.errors import FaceStitchError, io_error

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from fsexchange import __version__

        print(f"facestitch {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"facestitch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except FaceStitchError as exc:
        print(f"facestitch {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # no traceback for a path or disk problem
        print(f"facestitch {name}: error: {io_error(exc, doing='running')}",
              file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"facestitch {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
