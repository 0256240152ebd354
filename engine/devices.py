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

__all__ = ["valid_device", "resolve_device", "native_bf16", "resolve_dtype",
           "exact_float32"]

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


def exact_float32() -> None:
    """Make float32 mean IEEE float32 in this process, on every backend.

    PyTorch lets cuDNN run float32 convolutions as TensorFloat-32 by default on
    Ampere and later GPUs (a 10-bit mantissa: an H100 takes a StyleGAN2
    convolution at bfloat16-like precision while the job says float32), and
    oneDNN can be switched to compute float32 in bfloat16 on CPUs. The reference
    recipe's float32 is the precision the reference's results were produced in
    (GPUs without TF32), StyleGAN2's own training code turns TF32 off for the same
    reason, and the benchmark's same-arithmetic check would pass a TF32 row
    against a TF32 re-creation without a word. So every compute process turns
    TF32 off for cuDNN convolutions and CUDA matrix products, and keeps oneDNN's
    float32 at IEEE; bfloat16 work is unaffected (the precision option chooses it,
    labelled). The CUDA switches are set through their long-standing attributes:
    PyTorch refuses to read those once the newer ``fp32_precision`` ones have been
    set differently for convolutions and RNNs, and libraries still read them."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # the backend-wide setting too: an operation left at "none" follows it
    torch.backends.mkldnn.fp32_precision = "ieee"
    torch.backends.mkldnn.conv.fp32_precision = "ieee"
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
