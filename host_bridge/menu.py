"""What the Resolve menu scripts run (``resolve_scripts/``, Workspace > Scripts).

Each script is a thin shim that puts the FaceStitch install on ``sys.path`` and calls
``run(ACTION, globals())`` with the ``resolve``/``fusion``/``bmd`` globals Resolve
injects. Actions:

- ``send``: the clip under the playhead (or the flagged/coloured clips, per the
  ``selection`` setting) goes out as a job; the editor picks the edit and, when a
  shot holds several faces, the face;
- ``import``: every finished job of this timeline comes back above its shot
  (newest per shot; a re-run replaces the earlier layer); failures are explained;
- ``list``: the jobs of this timeline and where they stand;
- ``draft`` ("FaceStitch Preview Edit"): a draft of the clip under the playhead
  (the first of the selection): the editor types an edit or a sweep
  (``age=-8:8:5``), the draft jumps the engine's queue, and when it is done (within
  ``draft_wait`` seconds) the editor picks a strength from its sheet and that
  strength's frames go on above the clip. A draft still running then is placed
  (middle strength) by ``import`` later.

Errors never escape as tracebacks: the editor gets a message saying what to do.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fsexchange.errors import FaceStitchError
from fsexchange.options import refine_options

from host_bridge.config import BridgeConfig, config_path
from host_bridge.engine_cli import installed_edit_names
from host_bridge.faces import describe_faces
from host_bridge.resolve.connect import find_resolve, open_session
from host_bridge.resolve.shot import pick_items
from fsexchange.grammar import format_sweep
from host_bridge.roundtrip import (Cancelled, SendOptions, follow, import_draft,
                                   import_finished, send_items, send_shot,
                                   timeline_jobs)
from host_bridge.ui import Prompter, make_prompter

__all__ = ["ACTIONS", "run", "installed_edits"]

log = logging.getLogger(__name__)

ACTIONS = ("send", "import", "list", "draft", "panel")
TITLE = "FaceStitch"


def installed_edits(cfg: BridgeConfig) -> tuple[str, ...]:
    """Edit names to offer: those of the engine installed on this machine (display
    only: the engine machine decides), else the configured list."""
    try:
        names = installed_edit_names()
    except FaceStitchError as exc:  # an engine here without its models
        log.debug("edit list not available here: %s", exc)
        names = None
    return names if names is not None else cfg.edits


def _send(session: Any, cfg: BridgeConfig, ui: Prompter) -> tuple[str, bool]:
    exchange = cfg.require_exchange()
    items = pick_items(session, cfg.selection)
    default = cfg.edit or ("preview" if cfg.kind == "align-preview" else "")
    choice = ui.choose_edit(installed_edits(cfg), default)
    if choice is None:
        raise Cancelled("Nothing was sent.")
    options = dict(cfg.options)
    if choice.kind == "stitch":  # the dialog's no-refine word, else the settings
        options = refine_options(options, cfg.refine if choice.refine is None
                                 else choice.refine)
    opts = SendOptions(kind=choice.kind, edits=choice.edits, handles=cfg.handles,
                       options=options, track_locally=cfg.track_locally)

    def choose_face(shot: Any, found: Any) -> int | None:
        return ui.choose_face(shot.describe(), describe_faces(found))

    sent, problems = send_items(session, exchange, items, opts, choose_face=choose_face)
    lines = [s.describe() for s in sent]
    lines += [w for s in sent for w in s.warnings]
    lines += problems
    if sent:
        lines.append("Run 'FaceStitch Import Results' when the engine is done.")
    return "\n".join(lines), bool(sent)


def _draft(session: Any, cfg: BridgeConfig, ui: Prompter) -> tuple[str, bool]:
    exchange = cfg.require_exchange()
    item = pick_items(session, cfg.selection)[0]  # one clip: the one at hand
    choice = ui.choose_edit(installed_edits(cfg), cfg.draft_edit or cfg.edit,
                            draft=True)
    if choice is None:
        raise Cancelled("Nothing was sent.")
    options = dict(cfg.options)
    if choice.sweep:
        options["draft"] = {**dict(options.get("draft") or {}),
                            "sweep": format_sweep(choice.sweep)}
    # no handles (the draft frames spread over what the editor sees); the engine
    # tracks just the draft frames, faster than tracking the shot here
    opts = SendOptions(kind="draft", edits=choice.edits, handles=0, options=options,
                       track_locally=False, job_prefix="resolve-draft")

    def choose_face(shot: Any, found: Any) -> int | None:
        return ui.choose_face(shot.describe(), describe_faces(found))

    sent = send_shot(session, exchange, item, opts, choose_face=choose_face)
    lines = [sent.describe(), *sent.warnings]
    try:
        status = follow(exchange, sent.job_id, timeout=cfg.draft_wait, poll=0.25)
    except TimeoutError:
        lines.append(f"The draft is not done after {cfg.draft_wait:g} s (the engine "
                     "finishes the jobs it is running first). 'FaceStitch Import "
                     "Results' places it (the middle strength) once it is done.")
        return "\n".join(lines), True
    result = status.result
    assert result is not None and status.folder is not None
    labels = [v.label for v in result.variants]
    row = len(labels) // 2
    sheet = status.folder / result.outputs.get("sheet", "output/sweep.png")
    if len(labels) > 1:
        chosen = ui.choose_strength(str(sheet), labels)
        if chosen is None:
            lines.append(f"Nothing was placed; the strengths are in {sheet}.")
            return "\n".join(lines), True
        row = chosen
    placed = import_draft(session, exchange, sent.job_id, row=row,
                          opacity=cfg.opacity)
    what = f" ({labels[row]})" if labels else ""
    lines.append(f"placed {len(placed)} draft frame(s){what} above the clip; the "
                 f"strengths side by side: {sheet}")
    lines += [w for p in placed for w in p.warnings]
    return "\n".join(lines), True


def open_panel(cfg: BridgeConfig) -> str:
    """Start the exchange's panel unless one runs, open it in the browser; what
    to tell the editor."""
    from host_bridge.panel.launch import ensure_panel, open_browser, panel_python

    exchange = cfg.require_exchange()
    state, started = ensure_panel(exchange, panel_python(cfg.panel_python),
                                  config_path().parent,
                                  python_path=cfg.python_path)
    url = str(state["url"])
    opened = open_browser(url)
    how = "started" if started else "already running"
    where = "opened in your browser" if opened else "open this address in a browser"
    return f"The FaceStitch panel ({how}, process {state['pid']}): {where}:\n{url}"


def run(action: str, namespace: Mapping[str, Any] | None = None, *,
        prompter: Prompter | None = None, config: BridgeConfig | None = None) -> int:
    """Run one menu action; returns 0 on success, 1 when cancelled, 2 on an error
    the editor was told about, 3 on an unexpected one (also logged)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    ui = prompter
    try:
        cfg = config or BridgeConfig.load()
        ui = ui or make_prompter(namespace, prefer=cfg.ui)
        if action == "panel":  # no Resolve session needed
            ui.show(TITLE, open_panel(cfg))
            return 0
        session = open_session(find_resolve(namespace))
        if action in ("send", "draft"):
            text, ok = (_send if action == "send" else _draft)(session, cfg, ui)
            ui.show(TITLE, text, error=not ok)
            return 0 if ok else 2
        if action == "import":
            report = import_finished(session, cfg.require_exchange(),
                                     opacity=cfg.opacity)
            ui.show(TITLE, report.summary(), error=bool(report.failed))
            return 2 if report.failed and not report.placed else 0
        jobs = timeline_jobs(session, cfg.require_exchange())
        ui.show(TITLE, "\n".join(tj.describe() for tj in jobs)
                or "No FaceStitch jobs for this timeline.")
        return 0
    except Cancelled as exc:
        (ui or make_prompter(namespace)).show(TITLE, exc.message)
        return 1
    except FaceStitchError as exc:
        (ui or make_prompter(namespace)).show(TITLE, exc.message, error=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - the editor must see something
        log.exception("FaceStitch %s failed", action)
        (ui or make_prompter(namespace)).show(
            TITLE, f"Unexpected error: {exc!r}. Please report it with Resolve's "
                   "console output (Workspace > Console).", error=True)
        return 3

