"""Measured formulations in the model store: ``<store>/speed/formulations.json``.

Which way of computing a training step is fastest (engine/stages/formulation.py)
depends on the device, the precision and the network's size, not on the job, so it
is measured once per (device, dtype, architecture, batch) and kept here beside the
weights. The file is small JSON (``facestitch.Formulations/1``)::

    {"schema": "facestitch.Formulations/1",
     "entries": {"<key>": {"choice": "loop", "seconds": {"grouped": 1.9, ...},
                           "measured_batch": 2, "rounds": 3, "settled": true,
                           "margin": 0.12, "tie": false, "measured_at": "...",
                           "torch": "2.13.0"}}}

``rounds``, ``settled``, ``margin`` and ``tie`` say how the choice was reached
(rounds timed; whether the leader held or the round limit ended it; the
runner-up's lead, and whether it was too small to call, see
``engine.stages.formulation.measure``). Records written
before those fields existed lack them and are still read.

Delete the file (or an entry) to measure again; a job option
(``pti.formulation``, ``stitch.formulation``) overrides the record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fsexchange.fsutil import atomic_write_bytes

from engine.models.store import store_home

__all__ = ["FormulationRecords", "SCHEMA"]

log = logging.getLogger(__name__)

SCHEMA = "facestitch.Formulations/1"


class FormulationRecords:
    """Read and add measured formulations.

    Args:
        home: the store root (default :func:`engine.models.store.store_home`).
    """

    def __init__(self, home: str | Path | None = None) -> None:
        self.path = Path(home if home is not None else store_home()) / "speed" / \
            "formulations.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"schema": SCHEMA, "entries": {}}
        except (OSError, ValueError) as exc:  # damaged: measure again
            log.warning("%s is unreadable (%s); measuring again", self.path, exc)
            return {"schema": SCHEMA, "entries": {}}
        if data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
            log.warning("%s: unknown schema %r; measuring again", self.path,
                        data.get("schema"))
            return {"schema": SCHEMA, "entries": {}}
        return data

    def get(self, key: str) -> dict[str, Any] | None:
        """The record for ``key``, or None."""
        entry = self._read()["entries"].get(key)
        return entry if isinstance(entry, dict) and "choice" in entry else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Add or replace ``key`` (written atomically; a concurrent writer's entry
        may be lost, which only means one more measurement later)."""
        data = self._read()
        data["entries"][key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, (json.dumps(data, indent=1, sort_keys=True)
                                       + "\n").encode())
