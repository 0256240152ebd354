"""Asking the editor: which edit, which face, and showing results or errors.

Three implementations of one small :class:`Prompter` protocol, chosen by
:func:`make_prompter`:

- :class:`FusionPrompter`: Fusion's UIManager dialogs, inside Resolve Studio (the
  free edition lost UIManager in 19.1: ``fusion.UIManager`` is None there);
- :class:`TkPrompter`: tkinter dialogs where tkinter imports and a display exists;
- :class:`ConsolePrompter`: prompts on a terminal, or, with no terminal (a menu
  script on the free edition), the configured defaults and messages printed to
  Resolve's console (Workspace > Console).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Mapping, Protocol, Sequence

from fsexchange.errors import EditInvalid, EditUnknown, HostError
from fsexchange.grammar import EditChoice, parse_edit_spec

__all__ = ["Prompter", "ConsolePrompter",
           "TkPrompter", "FusionPrompter", "make_prompter"]

log = logging.getLogger(__name__)

class Prompter(Protocol):
    def choose_edit(self, names: Sequence[str], default: str) -> EditChoice | None:
        """The edit to run (None: cancelled). ``names``: installed edits, if known."""

    def choose_face(self, shot: str, faces: Sequence[str]) -> int | None:
        """Index into ``faces`` (None: cancelled)."""

    def show(self, title: str, text: str, *, error: bool = False) -> None:
        ...


def _edit_prompt(names: Sequence[str]) -> str:
    listed = ", ".join(names) if names else "see 'facestitch edits' on the engine"
    return ("Edit to apply as NAME=STRENGTH (several: comma separated), or 'preview' "
            "to check the face track only. Add '; no-refine' to skip the temporal "
            f"refinement.\nEdits: {listed}")


class ConsolePrompter:
    """Terminal prompts; without a terminal, the defaults (logged) and printed
    messages."""

    def __init__(self, *, interactive: bool | None = None,
                 input_fn: Callable[[str], str] = input,
                 print_fn: Callable[[str], None] = print) -> None:
        if interactive is None:
            interactive = bool(getattr(sys.stdin, "isatty", lambda: False)())
        self.interactive = interactive
        self.input = input_fn
        self.print = print_fn

    def choose_edit(self, names: Sequence[str], default: str) -> EditChoice | None:
        if not self.interactive:
            if not default:
                raise HostError("no terminal to ask for the edit: set \"edit\" (e.g. "
                                "\"age=-4\" or \"preview\") in the bridge settings")
            self.print(f"FaceStitch: using the configured edit {default}")
            return parse_edit_spec(default, known=names)
        self.print(_edit_prompt(names))
        while True:
            answer = self.input(f"Edit [{default}]: ").strip() or default
            if answer.lower() in ("q", "quit", "cancel"):
                return None
            try:
                return parse_edit_spec(answer, known=names)
            except (EditInvalid, EditUnknown) as exc:
                self.print(exc.message)

    def choose_face(self, shot: str, faces: Sequence[str]) -> int | None:
        if not self.interactive:
            self.print(f"FaceStitch: {len(faces)} faces in {shot}; taking face 1 "
                       "(the largest)")
            return 0
        self.print(f"{len(faces)} faces in {shot}:")
        for line in faces:
            self.print(f"  {line}")
        while True:
            answer = self.input("Which face? [1] (q to skip this shot): ").strip() or "1"
            if answer.lower() in ("q", "quit", "cancel"):
                return None
            if answer.isdigit() and 1 <= int(answer) <= len(faces):
                return int(answer) - 1
            self.print(f"answer a number from 1 to {len(faces)}")

    def show(self, title: str, text: str, *, error: bool = False) -> None:
        self.print(f"{title}{' error' if error else ''}: {text}")


class TkPrompter:
    """tkinter dialogs (a hidden root per dialog, on top of Resolve)."""

    def __init__(self) -> None:
        import tkinter
        from tkinter import messagebox, simpledialog

        self.tk, self.messagebox, self.simpledialog = tkinter, messagebox, simpledialog

    def _root(self) -> Any:
        root = self.tk.Tk()
        root.withdraw()
        root.attributes("-topmost", True)
        return root

    def choose_edit(self, names: Sequence[str], default: str) -> EditChoice | None:
        root = self._root()
        try:
            while True:
                answer = self.simpledialog.askstring("FaceStitch", _edit_prompt(names),
                                                     initialvalue=default, parent=root)
                if answer is None:
                    return None
                try:
                    return parse_edit_spec(answer, known=names)
                except (EditInvalid, EditUnknown) as exc:
                    self.messagebox.showerror("FaceStitch", exc.message, parent=root)
        finally:
            root.destroy()

    def choose_face(self, shot: str, faces: Sequence[str]) -> int | None:
        root = self._root()
        try:
            answer = self.simpledialog.askinteger(
                "FaceStitch", f"{len(faces)} faces in {shot}:\n" + "\n".join(faces)
                + "\n\nWhich face?", initialvalue=1, minvalue=1, maxvalue=len(faces),
                parent=root)
        finally:
            root.destroy()
        return None if answer is None else answer - 1

    def show(self, title: str, text: str, *, error: bool = False) -> None:
        root = self._root()
        try:
            (self.messagebox.showerror if error else self.messagebox.showinfo)(
                title, text, parent=root)
        finally:
            root.destroy()


class FusionPrompter:
    """Fusion UIManager dialogs (Resolve Studio; docs/hosts.md "Studio and the free edition")."""

    def __init__(self, fusion: Any, bmd: Any) -> None:
        self.ui = fusion.UIManager
        self.disp = bmd.UIDispatcher(self.ui)

    def _dialog(self, title: str, label: str, *, choices: Sequence[str] | None = None,
                text: str | None = None, buttons: tuple[str, ...] = ("OK", "Cancel")
                ) -> dict[str, Any] | None:
        ui, disp = self.ui, self.disp
        rows = [ui.Label({"ID": "Message", "Text": label, "WordWrap": True})]
        if choices is not None:
            rows.append(ui.ComboBox({"ID": "Choice"}))
        if text is not None:
            rows.append(ui.LineEdit({"ID": "Text", "Text": text}))
        rows.append(ui.HGroup([ui.Button({"ID": b, "Text": b}) for b in buttons]))
        height = 120 + 18 * label.count("\n") + 30 * (choices is not None) + \
            30 * (text is not None)
        win = disp.AddWindow({"ID": "FaceStitchDialog", "WindowTitle": title,
                              "Geometry": [300, 200, 520, height]}, ui.VGroup(rows))
        items = win.GetItems()
        for choice in choices or ():
            items["Choice"].AddItem(choice)
        result: dict[str, Any] = {}

        def accept(ev: Any) -> None:
            result["ok"] = True
            if choices is not None:
                result["index"] = int(items["Choice"].CurrentIndex)
            if text is not None:
                result["text"] = str(items["Text"].Text)
            disp.ExitLoop()

        def close(ev: Any) -> None:
            disp.ExitLoop()

        setattr(getattr(win.On, buttons[0]), "Clicked", accept)  # win.On.OK.Clicked = ...
        for other in buttons[1:]:
            setattr(getattr(win.On, other), "Clicked", close)
        win.On.FaceStitchDialog.Close = close
        win.Show()
        disp.RunLoop()
        win.Hide()
        return result if result.get("ok") else None

    def choose_edit(self, names: Sequence[str], default: str) -> EditChoice | None:
        label = _edit_prompt(names)
        while True:
            answer = self._dialog("FaceStitch: send shot", label, text=default)
            if answer is None:
                return None
            try:
                return parse_edit_spec(answer["text"], known=names)
            except (EditInvalid, EditUnknown) as exc:
                label = f"{exc.message}\n\n{_edit_prompt(names)}"
                default = answer["text"]

    def choose_face(self, shot: str, faces: Sequence[str]) -> int | None:
        answer = self._dialog("FaceStitch: which face?",
                              f"{len(faces)} faces in {shot}. Pick the one to edit:",
                              choices=faces)
        return None if answer is None else answer["index"]

    def show(self, title: str, text: str, *, error: bool = False) -> None:
        self._dialog(f"{title}{': error' if error else ''}", text, buttons=("OK",))


def _has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def make_prompter(namespace: Mapping[str, Any] | None = None, *, prefer: str = "auto"
                  ) -> Prompter:
    """The best prompter here: Fusion UIManager (Studio) > tkinter > console.

    Args:
        namespace: the menu script's globals (``fusion``/``fu`` and ``bmd``).
        prefer: "auto", or force "fusion", "tk" or "console" (bridge.json "ui").
    """
    ns = dict(namespace or {})
    fusion = ns.get("fusion") or ns.get("fu")
    bmd = ns.get("bmd")
    if prefer in ("auto", "fusion") and fusion is not None and bmd is not None:
        try:
            if fusion.UIManager is not None:  # None on the free edition since 19.1
                return FusionPrompter(fusion, bmd)
        except Exception as exc:  # noqa: BLE001 - a proxy without UIManager
            log.info("no Fusion UIManager: %s", exc)
    if prefer in ("auto", "tk") and _has_display():
        try:
            return TkPrompter()
        except ImportError:
            pass
    return ConsolePrompter()
