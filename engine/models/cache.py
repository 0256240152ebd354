"""Loaded networks kept between jobs in a running engine's worker process.

A draft takes seconds; loading the official networks takes several of them (the
1024 px generator, e4e, LPIPS, BiSeNet). Drafts therefore take their networks from
this cache (:func:`engine.models.modelset.cached_models`, and the face parser and
the face detector of ``engine.stages.draft``), which a worker process keeps across
jobs.

Safe with the store changing underneath: every entry carries a *fingerprint*
(size and modification time, to the nanosecond, of every file it was loaded from,
:func:`files_fingerprint`), computed again on every lookup; a file installed,
replaced or removed since makes the entry stale and it is loaded again. Stat calls
only: a lookup costs microseconds, never a hash of a gigabyte.

Small on purpose (:data:`CAPACITY` entries, least recently used dropped first), and
emptied by :func:`clear` whenever a stage loads networks outside the cache (a full
job), so a worker never holds two model sets in GPU memory at once.

Thread-safe (one lock); entries are shared, so users must not modify them (the
stages copy what they tune: PTI deep-copies the generator).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

__all__ = ["CAPACITY", "cached", "clear", "files_fingerprint", "stats"]

log = logging.getLogger(__name__)

#: Entries kept: a model set, a face parser, a face detector, one spare.
CAPACITY = 4

_lock = threading.Lock()
_entries: "OrderedDict[Hashable, tuple[Hashable, Any]]" = OrderedDict()
_stats = {"hits": 0, "loads": 0}


def files_fingerprint(paths: Iterable[str | os.PathLike[str]], *,
                      skip: Iterable[str] = ()) -> tuple:
    """``(path, size, mtime_ns)`` of every file under ``paths`` (files or folders,
    walked; folder names in ``skip`` are left out), sorted; a missing path counts
    as ``(path, -1, -1)``."""
    skipped = set(skip)
    out: list[tuple[str, int, int]] = []
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            try:
                st = root.stat()
                out.append((str(root), st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((str(root), -1, -1))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skipped]
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue  # removed while we walked: the next lookup sees it
                out.append((p, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def cached(key: Hashable, fingerprint: Callable[[], Hashable],
           load: Callable[[], Any]) -> Any:
    """The value cached under ``key`` if its fingerprint is still current, else
    ``load()`` (cached with the fingerprint taken *after* loading, since loading
    may itself write files, e.g. the tiny networks on first use)."""
    now = fingerprint()
    with _lock:
        hit = _entries.get(key)
        if hit is not None and hit[0] == now:
            _entries.move_to_end(key)
            _stats["hits"] += 1
            return hit[1]
        _entries.pop(key, None)  # stale: drop it before loading its replacement
    log.info("loading %s (%s)", key, "changed on disk" if hit is not None
             else "not cached")
    value = load()
    with _lock:
        _entries[key] = (fingerprint(), value)
        _entries.move_to_end(key)
        while len(_entries) > CAPACITY:
            _entries.popitem(last=False)
        _stats["loads"] += 1
    return value


def clear() -> None:
    """Drop every entry (their memory goes when nothing else holds them)."""
    with _lock:
        _entries.clear()


def stats() -> dict[str, int]:
    """``{"hits", "loads", "entries"}`` since the process started."""
    with _lock:
        return {**_stats, "entries": len(_entries)}
