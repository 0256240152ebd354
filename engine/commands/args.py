"""argparse types the engine's commands share, so a malformed device is refused
by the parser itself (exit 2, the flag named) like any other bad argument."""

from __future__ import annotations

import argparse

__all__ = ["device", "devices"]


def device(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N."""
    from engine.devices import valid_device

    if not valid_device(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got "
                                         f"{text!r}")
    return text


def devices(text: str) -> tuple[str, ...]:
    """``--devices``: a list for data-parallel PTI and refinement
    (:func:`engine.stages.parallel.parse_devices` says what is refused)."""
    from engine.stages.parallel import parse_devices

    try:
        return parse_devices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
