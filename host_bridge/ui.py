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
    def choose_edit(self, names: Sequence[str], default: str, *,
                    draft: bool = False) -> EditChoice | None:
        """The edit to run (None: cancelled). ``names``: installed edits, if known.
        ``draft``: for a draft, whose items may also be sweeps (``age=-8:8:5``)."""

    def choose_face(self, shot: str, faces: Sequence[str]) -> int | None:
        """Index into ``faces`` (None: cancelled)."""

    def choose_strength(self, sheet: str, labels: Sequence[str]) -> int | None:
        """Index into ``labels``, a draft's rows (None: place nothing); ``sheet``
        is the picture showing them side by side."""

    def show(self, title: str, text: str, *, error: bool = False) -> None:
        ...


def _edit_prompt(names: Sequence[str], draft: bool = False) -> str:
    listed = ", ".join(names) if names else "see 'facestitch edits' on the engine"
    if draft:
        return ("Edit to preview as NAME=STRENGTH, or several strengths as "
                "NAME=FROM:TO:COUNT (age=-8:8:5 shows -8, -4, 0, 4, 8); several "
                f"edits comma separated.\nEdits: {listed}")
    return ("Edit to apply as NAME=STRENGTH (several: comma separated), or 'preview' "
            "to check the face track only. Add '; no-refine' to skip the temporal "
            f"refinement.\nEdits: {listed}")


def _strength_prompt(sheet: str, labels: Sequence[str]) -> str:
    rows = "\n".join(f"  {i + 1}: {label}" for i, label in enumerate(labels))
    return (f"The draft is done; its strengths side by side: {sheet}\n{rows}\n"
            "Which one goes on the timeline?")


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

    def choose_edit(self, names: Sequence[str], default: str, *,
                    draft: bool = False) -> EditChoice | None:
        if not self.interactive:
            if not default:
                key = "draft_edit" if draft else "edit"
                raise HostError(f"no terminal to ask for the edit: set \"{key}\" "
                                "(e.g. \"age=-4\"" + (", \"age=-8:8:5\"" if draft
                                                      else " or \"preview\"")
                                + ") in the bridge settings")
            self.print(f"FaceStitch: using the configured edit {default}")
            return parse_edit_spec(default, known=names, draft=draft)
        self.print(_edit_prompt(names, draft))
        while True:
            answer = self.input(f"Edit [{default}]: ").strip() or default
            if answer.lower() in ("q", "quit", "cancel"):
                return None
            try:
                return parse_edit_spec(answer, known=names, draft=draft)
            except (EditInvalid, EditUnknown) as exc:
                self.print(exc.message)

    def choose_strength(self, sheet: str, labels: Sequence[str]) -> int | None:
        middle = len(labels) // 2
        if not self.interactive:
            self.print(f"FaceStitch: placing the middle strength, {labels[middle]} "
                       f"(all of them: {sheet})")
            return middle
        self.print(_strength_prompt(sheet, labels))
        while True:
            answer = self.input(f"Strength [{middle + 1}] (q: place nothing): "
                                ).strip() or str(middle + 1)
            if answer.lower() in ("q", "quit", "cancel"):
                return None
            if answer.isdigit() and 1 <= int(answer) <= len(labels):
                return int(answer) - 1
            self.print(f"answer a number from 1 to {len(labels)}")

    def choose_face(self, shot: str, faces: Sequence[str]) -> int | None:
        if not self.interactive:
            self.print(f"FaceStitch: {len(faces)} faces in {shot}; taking face 1 "
                       "(the largest)")
            return 0
        self.print(f"{len(faces)} faces in {shot}:")
        for line in faces:
            self.print(f"  {line}")
        while True:
            answer = (self.input("Which face? [1] (q to skip this shot): ").strip()
                      or "1")
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

    def choose_edit(self, names: Sequence[str], default: str, *,
                    draft: bool = False) -> EditChoice | None:
        root = self._root()
        try:
            while True:
                answer = self.simpledialog.askstring(
                    "FaceStitch", _edit_prompt(names, draft), initialvalue=default,
                    parent=root)
                if answer is None:
                    return None
                try:
                    return parse_edit_spec(answer, known=names, draft=draft)
                except (EditInvalid, EditUnknown) as exc:
                    self.messagebox.showerror("FaceStitch", exc.message, parent=root)
        finally:
            root.destroy()

    def choose_strength(self, sheet: str, labels: Sequence[str]) -> int | None:
        root = self._root()
        try:
            answer = self.simpledialog.askinteger(
                "FaceStitch", _strength_prompt(sheet, labels),
                initialvalue=len(labels) // 2 + 1, minvalue=1, maxvalue=len(labels),
                parent=root)
        finally:
            root.destroy()
        return None if answer is None else answer - 1

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
    """Fusion UIManager dialogs (Resolve Studio; docs/hosts.md "Studio and the free
    edition")."""

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

        getattr(win.On, buttons[0]).Clicked = accept  # win.On.OK.Clicked = ...
        for other in buttons[1:]:
            getattr(win.On, other).Clicked = close
        win.On.FaceStitchDialog.Close = close
        win.Show()
        disp.RunLoop()
        win.Hide()
        return result if result.get("ok") else None

    def choose_edit(self, names: Sequence[str], default: str, *,
                    draft: bool = False) -> EditChoice | None:
        label = _edit_prompt(names, draft)
        title = "FaceStitch: preview edit" if draft else "FaceStitch: send shot"
        while True:
            answer = self._dialog(title, label, text=default)
            if answer is None:
                return None
            try:
                return parse_edit_spec(answer["text"], known=names, draft=draft)
            except (EditInvalid, EditUnknown) as exc:
                label = f"{exc.message}\n\n{_edit_prompt(names, draft)}"
                default = answer["text"]

    def choose_strength(self, sheet: str, labels: Sequence[str]) -> int | None:
        answer = self._dialog("FaceStitch: which strength?",
                              _strength_prompt(sheet, labels), choices=labels)
        return None if answer is None else answer["index"]

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
