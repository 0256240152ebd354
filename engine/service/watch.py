"""Wake the engine when jobs or cancel requests arrive (watchdog, with polling).

Events are only hints: on every wake-up (and on every poll) the engine rescans the
folders itself, so a missed event costs latency, never a job. Network shares
(SMB/NFS) deliver no events at all, which is why the engine always polls too.

Which events wake us (docs/environment.md "watchdog and msgpack"): ``moved`` and
``closed`` events, and the
watched folder's own ``modified`` event, which is how inotify reports a job folder
renamed in from ``tmp/`` (watchdog reports the entry itself as ``created`` because
``tmp/`` is not watched). ``created`` never wakes us: a created file may still be
half-written.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Sequence

__all__ = ["FolderWatch"]

log = logging.getLogger(__name__)


class _QuietStopRace(logging.Filter):
    """watchdog logs an ERROR when events arrive while its observer stops; that is
    harmless here (we are shutting down), so keep it out of the engine log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStopRace())


class FolderWatch:
    """Sets ``wake`` when something arrives in one of ``folders`` (non-recursive).

    Args:
        folders: the folders to watch (``new/``, ``cancel/``).
        wake: the event the engine loop waits on.
    """

    def __init__(self, folders: Sequence[Path], wake: threading.Event) -> None:
        self.folders = [Path(f) for f in folders]
        self.wake = wake
        self._observer = None

    def start(self) -> bool:
        """Start watching; False (and the engine just polls) if watchdog is missing
        or the platform refuses (inotify limits)."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.info("watchdog is not installed; polling only")
            return False

        wake = self.wake
        roots = {os.path.normpath(str(f)) for f in self.folders}

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                kind = event.event_type
                if kind in ("moved", "closed") or (
                        kind == "modified" and event.is_directory
                        and os.path.normpath(str(event.src_path)) in roots):
                    wake.set()

        observer = Observer()
        try:
            for folder in self.folders:
                observer.schedule(_Handler(), str(folder), recursive=False)
            observer.start()
        except Exception as exc:  # noqa: BLE001 - OSError, inotify limits...
            log.warning("cannot watch %s (%s); polling only",
                        ", ".join(map(str, self.folders)), exc)
            try:
                observer.stop()
            except Exception:  # noqa: BLE001
                pass
            return False
        self._observer = observer
        log.info("watching %s with %s", ", ".join(map(str, self.folders)),
                 type(observer).__name__)
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None

    def __enter__(self) -> "FolderWatch":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
