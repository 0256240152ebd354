"""Devices and training precision, resolved in one place.

``"auto"`` device means CUDA when torch sees a GPU, else the CPU; ``"auto"``
precision means bfloat16 where the device computes it natively (CUDA GPUs that
report bf16 support; CPUs with AVX512-BF16 or AMX-BF16), float32 elsewhere
(measured speed-ups: docs/pipeline.md, "Speed"). torch is imported only when
something must be asked of it, so the engine's job loop starts without it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

__all__ = ["valid_device", "resolve_device", "native_bf16", "resolve_dtype"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def valid_device(device: str) -> bool:
    """Whether ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    return bool(_DEVICE.match(str(device)))


def resolve_device(device: Any = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if torch sees a GPU, else ``"cpu"``; others pass
    through after a syntax check.

    Raises:
        ValueError: not auto, cpu, cuda or cuda:N.
    """
    device = str(device)
    if not valid_device(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device != "auto":
        return device
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16(device: Any) -> bool:
    """Whether ``device`` computes bfloat16 natively (not by float32 emulation):
    CUDA devices that report bf16 support; CPUs with AVX512-BF16 or AMX-BF16 (read
    from /proc/cpuinfo; other systems: False)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: Any) -> str:
    """``options.dtype`` -> ``"float32"`` or ``"bfloat16"`` for ``device``."""
    if dtype == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return dtype
